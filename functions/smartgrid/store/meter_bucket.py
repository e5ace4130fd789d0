"""The meter-data bucket's layout (ingestion writes it, retraining reads it).

- ``incoming/<client>/<site_id>/<name>.csv[.gz]``: files as they arrive (the S3 event's key);
- ``accepted/<client>/<site_id>/<sha256>.csv``: readings that passed validation, as CSV
  (``timestamp,load[,temperature]``, ISO 8601 UTC), content-addressed, so the same readings
  stored twice are one object;
- ``rejected/<incoming key>`` and ``rejected/<incoming key>.report.json``: a file that failed
  validation, moved aside with the report saying why.

Two kinds of callers. Ingestion's calls (``read``, ``write``, ``fetch``, ``exists``, ``copy``,
``delete``, ``list_objects``) raise botocore's errors as they come: ingestion names the step
that failed. Retraining's (``meter_objects``, ``read_meter``, ``read_meter_many``) raise
``DependencyUnavailableError`` naming the bucket and key, and list nothing from a missing
bucket.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from smartgrid.catalog import METER_DATA_PREFIX
from smartgrid.config import Settings, get_settings
from smartgrid.errors import DependencyUnavailableError
from smartgrid.store.aws import (
    StoredObject,
    client,
    error_code,
    etag_condition,
    etag_value,
    is_missing,
    is_object_missing,
)

INCOMING = METER_DATA_PREFIX
ACCEPTED = "accepted/"
REJECTED = "rejected/"


@dataclass(frozen=True)
class MeterKey:
    client: str
    site_id: str
    name: str  # the last part of the key

    @classmethod
    def parse(cls, key: str, prefix: str = INCOMING) -> MeterKey:
        """``<prefix><client>/<site_id>/<name>``; ValueError naming the key otherwise."""
        if not key.startswith(prefix):
            raise ValueError(f"{key!r} is not under {prefix!r}")
        parts = key[len(prefix) :].split("/")
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"{key!r} is not {prefix}<client>/<site_id>/<file>")
        return cls(*parts)

    def accepted_key(self, sha256: str) -> str:
        return f"{ACCEPTED}{self.client}/{self.site_id}/{sha256}.csv"


def rejected_key(key: str) -> str:
    """Where a rejected incoming file is moved: ``rejected/<incoming key>``."""
    return f"{REJECTED}{key}"


def report_key(key: str) -> str:
    """The rejection report beside it: ``rejected/<incoming key>.report.json``."""
    return f"{REJECTED}{key}.report.json"


class ListedObject(NamedTuple):
    """An object as a listing names it: its key and when it was stored (LastModified, UTC)."""

    key: str
    last_modified: datetime


def precondition_failed(exc: Exception) -> bool:
    """S3 refused a conditional request: the object is no longer the content it names."""
    return error_code(exc) in ("PreconditionFailed", "412")


def list_keys(prefix: str, settings: Settings | None = None) -> Iterator[str]:
    settings = settings or get_settings()
    pages = client("s3", settings).get_paginator("list_objects_v2")
    for page in pages.paginate(Bucket=settings.meter_data_bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            yield obj["Key"]


def read(key: str, settings: Settings | None = None) -> bytes:
    settings = settings or get_settings()
    body: bytes = client("s3", settings).get_object(Bucket=settings.meter_data_bucket, Key=key)["Body"].read()
    return body


def write(key: str, data: bytes, settings: Settings | None = None, content_type: str = "text/csv") -> None:
    settings = settings or get_settings()
    client("s3", settings).put_object(Bucket=settings.meter_data_bucket, Key=key, Body=data, ContentType=content_type)


def fetch(key: str, settings: Settings | None = None) -> StoredObject | None:
    """The object's bytes and ETag; None when there is no such key (other errors raise, a
    missing bucket among them)."""
    settings = settings or get_settings()
    try:
        response = client("s3", settings).get_object(Bucket=settings.meter_data_bucket, Key=key)
    except Exception as exc:
        if is_object_missing(exc):
            return None
        raise
    return StoredObject(response["Body"].read(), etag_value(response.get("ETag")))


def exists(key: str, settings: Settings | None = None) -> bool:
    settings = settings or get_settings()
    try:
        client("s3", settings).head_object(Bucket=settings.meter_data_bucket, Key=key)
    except Exception as exc:
        if is_object_missing(exc):
            return False
        raise
    return True


def copy(source: str, target: str, settings: Settings | None = None, etag: str | None = None) -> None:
    """Server-side copy inside the bucket (objects up to 5 GB, far above any meter file);
    with ``etag``, only if the source is still that content (else S3 answers 412 and this raises)."""
    settings = settings or get_settings()
    bucket = settings.meter_data_bucket
    extra = {"CopySourceIfMatch": etag_condition(etag)} if etag else {}
    client("s3", settings).copy_object(Bucket=bucket, Key=target, CopySource={"Bucket": bucket, "Key": source}, **extra)


def delete(key: str, settings: Settings | None = None, etag: str | None = None) -> None:
    """Delete ``key``; with ``etag``, only if it is still that content (else 412 raises)."""
    settings = settings or get_settings()
    extra = {"IfMatch": etag_condition(etag)} if etag else {}
    client("s3", settings).delete_object(Bucket=settings.meter_data_bucket, Key=key, **extra)


def list_objects(prefix: str, settings: Settings | None = None) -> Iterator[ListedObject]:
    """The objects under ``prefix`` with their last-modified time (UTC), every page."""
    settings = settings or get_settings()
    pages = client("s3", settings).get_paginator("list_objects_v2")
    for page in pages.paginate(Bucket=settings.meter_data_bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            yield ListedObject(obj["Key"], obj["LastModified"])


# ------------------------------------------------------------- retraining's reads (typed errors)
def meter_objects(settings: Settings, prefix: str) -> list[ListedObject]:
    """The objects under ``prefix`` with their LastModified (retraining keeps the newest
    reading of a timestamp delivered twice); none when the bucket does not exist."""
    out: list[ListedObject] = []
    try:
        out.extend(list_objects(prefix, settings))
    except Exception as exc:
        if is_missing(exc):
            return out
        raise DependencyUnavailableError(f"listing s3://{settings.meter_data_bucket}/{prefix} failed: {exc}") from exc
    return out


def read_meter(settings: Settings, key: str) -> bytes:
    return _read_meter(client("s3", settings), settings, key)


def _read_meter(s3: Any, settings: Settings, key: str) -> bytes:
    try:
        body: bytes = s3.get_object(Bucket=settings.meter_data_bucket, Key=key)["Body"].read()
    except Exception as exc:
        raise DependencyUnavailableError(f"reading s3://{settings.meter_data_bucket}/{key} failed: {exc}") from exc
    return body


def read_meter_many[T](
    settings: Settings, keys: list[str], parse: Callable[[str, bytes], T], workers: int = 8
) -> list[T]:
    """``parse(key, body)`` of each object, in the order of ``keys``, read by ``workers``
    threads sharing one client (boto3 clients are thread-safe; its connection pool holds 10).
    A failed read raises ``DependencyUnavailableError`` (after the reads in flight finish)."""
    if not keys:
        return []
    s3 = client("s3", settings)
    if len(keys) == 1 or workers <= 1:
        return [parse(k, _read_meter(s3, settings, k)) for k in keys]
    with ThreadPoolExecutor(max_workers=min(workers, len(keys)), thread_name_prefix="meter-read") as pool:
        return list(pool.map(lambda k: parse(k, _read_meter(s3, settings, k)), keys))
