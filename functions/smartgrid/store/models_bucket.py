"""S3 calls of the model registry (``smartgrid.domain.champion``) and of retraining.

The models bucket holds model sets under ``models/<set id>/`` and the champion pointer and
decisions under ``registry/``. Errors come back typed: a missing object is ``None``, a write
whose condition failed is ``ConflictError``, anything else ``DependencyUnavailableError``
naming the bucket and key. ETags are bare values (``StoredObject``), quoted again for a
conditional write. boto3 is imported on first use only (the API's cold start).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

from smartgrid.config import Settings
from smartgrid.errors import ConflictError, DependencyUnavailableError
from smartgrid.observability import trace_aws_sdk
from smartgrid.store.aws import StoredObject, client, error_code, etag_condition, etag_value, is_missing

# A conditional write lost: the object changed (or appeared) since it was read.
_CONDITION = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}

_local = threading.local()
_CHUNK = 256 * 1024  # a body is read in chunks of this size when a deadline bounds the read


def _s3(settings: Settings) -> Any:
    return client("s3", settings)


def _quick_s3(settings: Settings) -> Any:
    """A client for the API's pointer check, which runs inside a request: short timeouts and
    one retry, so a slow S3 costs a request about a second, not minutes (the shared client
    waits up to 60 s and retries 5 times, right for jobs)."""
    import boto3
    from botocore.config import Config

    key = (settings.aws_endpoint_url, settings.aws_region)
    cache: dict[tuple[str | None, str], Any] = getattr(_local, "clients", None) or {}
    _local.clients = cache
    if key not in cache:
        trace_aws_sdk()
        cache[key] = boto3.session.Session().client(
            "s3",
            region_name=settings.aws_region,
            endpoint_url=settings.aws_endpoint_url,
            config=Config(connect_timeout=1, read_timeout=2, retries={"max_attempts": 2, "mode": "standard"}),
        )
    return cache[key]


def get(settings: Settings, key: str, quick: bool = False, deadline: float | None = None) -> StoredObject | None:
    """An object of the models bucket, or None when it (or the bucket) does not exist.
    ``quick``: the client with short timeouts (inside an API request). ``deadline``: a
    ``time.monotonic()`` by which the whole read must be done; past it, the body is no
    longer read and ``DependencyUnavailableError`` says so (a slow S3 trickling bytes
    within each socket timeout cannot hold the caller longer)."""
    s3 = _quick_s3(settings) if quick else _s3(settings)
    where = f"s3://{settings.models_bucket}/{key}"
    if deadline is not None and time.monotonic() >= deadline:
        raise DependencyUnavailableError(f"reading {where}: out of time before it started")
    try:
        resp = s3.get_object(Bucket=settings.models_bucket, Key=key)
        body = resp["Body"]
        if deadline is None:
            data = body.read()
        else:
            chunks = []
            for chunk in body.iter_chunks(_CHUNK):
                chunks.append(chunk)
                if time.monotonic() >= deadline:
                    body.close()
                    raise DependencyUnavailableError(f"reading {where}: out of time midway")
            data = b"".join(chunks)
        return StoredObject(data, etag_value(resp.get("ETag")))
    except DependencyUnavailableError:
        raise
    except Exception as exc:
        if is_missing(exc):
            return None
        raise DependencyUnavailableError(f"reading {where} failed: {exc}") from exc


def put(
    settings: Settings,
    key: str,
    data: bytes,
    content_type: str = "application/json",
    *,
    if_match: str | None = None,
    if_absent: bool = False,
) -> str:
    """Write one object (a single PutObject); returns its ETag (the bare value). ``if_match``:
    only if the object still has this ETag; ``if_absent``: only if there is no such object yet. A lost
    condition raises ``ConflictError``."""
    kwargs: dict[str, Any] = {"Bucket": settings.models_bucket, "Key": key, "Body": data, "ContentType": content_type}
    if if_match is not None:
        kwargs["IfMatch"] = etag_condition(if_match)
    elif if_absent:
        kwargs["IfNoneMatch"] = "*"
    try:
        resp = _s3(settings).put_object(**kwargs)
    except Exception as exc:
        code = error_code(exc)
        if code in _CONDITION:
            raise ConflictError(
                f"s3://{settings.models_bucket}/{key} already exists or changed meanwhile; nothing overwritten",
                "changed",
            ) from exc
        if code == "NoSuchBucket":
            raise DependencyUnavailableError(f"the models bucket {settings.models_bucket!r} does not exist") from exc
        raise DependencyUnavailableError(f"writing s3://{settings.models_bucket}/{key} failed: {exc}") from exc
    return etag_value(resp.get("ETag"))


def list_keys(settings: Settings, prefix: str) -> Iterator[str]:
    """Keys of the models bucket under ``prefix``, in key order (empty if no bucket)."""
    try:
        for page in (
            _s3(settings).get_paginator("list_objects_v2").paginate(Bucket=settings.models_bucket, Prefix=prefix)
        ):
            for obj in page.get("Contents", []):
                yield obj["Key"]
    except Exception as exc:
        if is_missing(exc):
            return
        raise DependencyUnavailableError(f"listing s3://{settings.models_bucket}/{prefix} failed: {exc}") from exc
