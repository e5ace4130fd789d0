"""The meter-data bucket's layout (ingestion writes it, retraining reads it).

- ``incoming/<client>/<site_id>/<name>.csv[.gz]``: files as they arrive (the S3 event's key);
- ``accepted/<client>/<site_id>/<sha256>.csv``: readings that passed validation, as CSV
  (``timestamp,load[,temperature]``, ISO 8601 UTC), content-addressed, so the same readings
  stored twice are one object;
- ``rejected/<incoming key>`` and ``rejected/<incoming key>.report.json``: a file that failed
  validation, moved aside with the report saying why.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from smartgrid.catalog import METER_DATA_PREFIX
from smartgrid.config import Settings, get_settings
from smartgrid.store.aws import client

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


@dataclass(frozen=True)
class StoredObject:
    body: bytes
    etag: str  # without the quotes S3 puts around it


def _code(exc: Exception) -> str | None:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code")
    return None if code is None else str(code)


def _missing(exc: Exception) -> bool:
    return _code(exc) in ("NoSuchKey", "404", "NotFound")


def precondition_failed(exc: Exception) -> bool:
    """S3 refused a conditional request: the object is no longer the content it names."""
    return _code(exc) in ("PreconditionFailed", "412")


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
    """The object's bytes and ETag; None when there is no such key (other errors raise)."""
    settings = settings or get_settings()
    try:
        response = client("s3", settings).get_object(Bucket=settings.meter_data_bucket, Key=key)
    except Exception as exc:
        if _missing(exc):
            return None
        raise
    return StoredObject(response["Body"].read(), str(response.get("ETag", "")).strip('"'))


def exists(key: str, settings: Settings | None = None) -> bool:
    settings = settings or get_settings()
    try:
        client("s3", settings).head_object(Bucket=settings.meter_data_bucket, Key=key)
    except Exception as exc:
        if _missing(exc):
            return False
        raise
    return True


def copy(source: str, target: str, settings: Settings | None = None, etag: str | None = None) -> None:
    """Server-side copy inside the bucket (objects up to 5 GB, far above any meter file);
    with ``etag``, only if the source is still that content (else S3 answers 412 and this raises)."""
    settings = settings or get_settings()
    bucket = settings.meter_data_bucket
    extra = {"CopySourceIfMatch": f'"{etag}"'} if etag else {}
    client("s3", settings).copy_object(Bucket=bucket, Key=target, CopySource={"Bucket": bucket, "Key": source}, **extra)


def delete(key: str, settings: Settings | None = None, etag: str | None = None) -> None:
    """Delete ``key``; with ``etag``, only if it is still that content (else 412 raises)."""
    settings = settings or get_settings()
    extra = {"IfMatch": f'"{etag}"'} if etag else {}
    client("s3", settings).delete_object(Bucket=settings.meter_data_bucket, Key=key, **extra)


def list_objects(prefix: str, settings: Settings | None = None) -> Iterator[tuple[str, datetime]]:
    """Keys under ``prefix`` with their last-modified time (UTC), every page."""
    settings = settings or get_settings()
    pages = client("s3", settings).get_paginator("list_objects_v2")
    for page in pages.paginate(Bucket=settings.meter_data_bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            yield obj["Key"], obj["LastModified"]
