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

from ..catalog import METER_DATA_PREFIX
from ..config import Settings, get_settings
from .aws import client

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
