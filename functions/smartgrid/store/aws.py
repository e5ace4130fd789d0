"""boto3 clients for the data-access layer: one per service and thread, every one honouring
AWS_ENDPOINT_URL and the region from Settings (moto in-process, a moto server, or AWS), with
bounded timeouts and retries. Only ``store/`` calls AWS; the domain calls the store.

Also what every store module shares about AWS answers: ``StoredObject`` (an S3 object read
whole), the ETag's two forms, and the error codes (``error_code``, ``is_missing``,
``is_object_missing``)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from smartgrid.config import Settings, get_settings
from smartgrid.observability import trace_aws_sdk

_local = threading.local()


def client(service: str, settings: Settings | None = None) -> Any:
    """A boto3 client for ``service`` (``s3``, ``dynamodb``, ``sns``, ``cloudwatch``, ...)."""
    import boto3
    from botocore.config import Config

    settings = settings or get_settings()
    key = (service, settings.aws_endpoint_url, settings.aws_region)
    cache: dict[tuple[str, str | None, str], Any] = getattr(_local, "clients", None) or {}
    _local.clients = cache
    if key not in cache:
        trace_aws_sdk()
        cache[key] = boto3.session.Session().client(
            service,
            region_name=settings.aws_region,
            endpoint_url=settings.aws_endpoint_url,
            config=Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 5, "mode": "standard"}),
        )
    return cache[key]


def reset_clients() -> None:
    """Forget this thread's clients (tests that switch endpoints or start a new moto)."""
    _local.clients = {}


# ------------------------------------------------------------------ S3 objects and AWS errors
@dataclass(frozen=True)
class StoredObject:
    """An S3 object read whole: its bytes and its ETag, as the value without the quotes S3
    puts around it (the form S3 event notifications carry; ``etag_condition`` quotes it again
    for a conditional request)."""

    data: bytes
    etag: str


def etag_value(raw: object) -> str:
    """An ETag as S3 answers it (``"<hex>"``, or absent) as its bare value (``<hex>``, or "")."""
    return str(raw or "").strip('"')


def etag_condition(etag: str) -> str:
    """The ETag for an ``If-Match``-style condition: quoted as S3 sent it ("" stays "")."""
    return f'"{etag}"' if etag else etag


def error_code(exc: BaseException) -> str | None:
    """The AWS error code of a botocore ``ClientError`` (``NoSuchKey``, ``404``,
    ``ResourceNotFoundException``, ``PreconditionFailed``, ...); None for any other exception."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    return str((response.get("Error") or {}).get("Code") or "") or None


# The object is not there. HEAD requests (HeadObject, HeadBucket) have no body, so S3 answers
# them with a bare "404"/"NotFound" whether the key or the bucket is missing.
OBJECT_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})
# ... or neither is what should hold it: the bucket (S3) or the table (DynamoDB). Each code
# belongs to one service, so the set is safe for calls to either.
MISSING = OBJECT_MISSING | {"NoSuchBucket", "ResourceNotFoundException"}


def is_missing(exc: BaseException) -> bool:
    """The object, its bucket, or the DynamoDB table does not exist."""
    return error_code(exc) in MISSING


def is_object_missing(exc: BaseException) -> bool:
    """The key is not there: NoSuchKey, or a HEAD request's bare 404 (which a missing bucket
    answers too). A GetObject from a missing bucket (NoSuchBucket) is not this."""
    return error_code(exc) in OBJECT_MISSING
