"""S3 calls of the model registry (``smartgrid.model_registry``) and of retraining.

The models bucket holds model sets under ``models/<set id>/`` and the champion pointer and
decisions under ``registry/``. Errors come back typed: a missing object is ``None``, a write
whose condition failed is ``ConflictError``, anything else ``DependencyUnavailableError``
naming the bucket and key. boto3 is imported on first use only (the API's cold start).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from smartgrid.config import Settings
from smartgrid.errors import ConflictError, DependencyUnavailableError
from smartgrid.observability import trace_aws_sdk
from smartgrid.store.aws import client

# Error codes S3 answers for an object or bucket that does not exist.
_MISSING = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}
# A conditional write lost: the object changed (or appeared) since it was read.
_CONDITION = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}

_local = threading.local()
_CHUNK = 256 * 1024  # a body is read in chunks of this size when a deadline bounds the read


@dataclass(frozen=True)
class StoredObject:
    data: bytes
    etag: str


def _code(exc: Exception) -> str | None:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    return str((response.get("Error") or {}).get("Code") or "") or None


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
        return StoredObject(data, str(resp.get("ETag", "")))
    except DependencyUnavailableError:
        raise
    except Exception as exc:
        if _code(exc) in _MISSING:
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
    """Write one object (a single PutObject); returns its ETag. ``if_match``: only if the
    object still has this ETag; ``if_absent``: only if there is no such object yet. A lost
    condition raises ``ConflictError``."""
    kwargs: dict[str, Any] = {"Bucket": settings.models_bucket, "Key": key, "Body": data, "ContentType": content_type}
    if if_match is not None:
        kwargs["IfMatch"] = if_match
    elif if_absent:
        kwargs["IfNoneMatch"] = "*"
    try:
        resp = _s3(settings).put_object(**kwargs)
    except Exception as exc:
        code = _code(exc)
        if code in _CONDITION:
            raise ConflictError(
                f"s3://{settings.models_bucket}/{key} already exists or changed meanwhile; nothing overwritten",
                "changed",
            ) from exc
        if code == "NoSuchBucket":
            raise DependencyUnavailableError(f"the models bucket {settings.models_bucket!r} does not exist") from exc
        raise DependencyUnavailableError(f"writing s3://{settings.models_bucket}/{key} failed: {exc}") from exc
    return str(resp.get("ETag", ""))


def list_keys(settings: Settings, prefix: str) -> Iterator[str]:
    """Keys of the models bucket under ``prefix``, in key order (empty if no bucket)."""
    try:
        for page in (
            _s3(settings).get_paginator("list_objects_v2").paginate(Bucket=settings.models_bucket, Prefix=prefix)
        ):
            for obj in page.get("Contents", []):
                yield obj["Key"]
    except Exception as exc:
        if _code(exc) in _MISSING:
            return
        raise DependencyUnavailableError(f"listing s3://{settings.models_bucket}/{prefix} failed: {exc}") from exc


@dataclass(frozen=True)
class MeterObject:
    key: str
    last_modified: datetime


def meter_objects(settings: Settings, prefix: str) -> list[MeterObject]:
    """Objects of the meter-data bucket under ``prefix`` with their LastModified (retraining
    keeps the newest reading of a timestamp delivered twice)."""
    out: list[MeterObject] = []
    try:
        for page in (
            _s3(settings).get_paginator("list_objects_v2").paginate(Bucket=settings.meter_data_bucket, Prefix=prefix)
        ):
            out.extend(MeterObject(o["Key"], o["LastModified"]) for o in page.get("Contents", []))
    except Exception as exc:
        if _code(exc) in _MISSING:
            return out
        raise DependencyUnavailableError(f"listing s3://{settings.meter_data_bucket}/{prefix} failed: {exc}") from exc
    return out


def read_meter(settings: Settings, key: str) -> bytes:
    return _read_meter(_s3(settings), settings, key)


def _read_meter(s3: Any, settings: Settings, key: str) -> bytes:
    try:
        body: bytes = s3.get_object(Bucket=settings.meter_data_bucket, Key=key)["Body"].read()
    except Exception as exc:
        raise DependencyUnavailableError(f"reading s3://{settings.meter_data_bucket}/{key} failed: {exc}") from exc
    return body


def read_meter_many[T](
    settings: Settings, keys: list[str], parse: Callable[[str, bytes], T], workers: int = 8
) -> list[T]:
    """``parse(key, body)`` of each object of the meter-data bucket, in the order of ``keys``,
    read by ``workers`` threads sharing one client (boto3 clients are thread-safe; its
    connection pool holds 10). A failed read raises ``DependencyUnavailableError`` (after
    the reads in flight finish)."""
    if not keys:
        return []
    s3 = _s3(settings)
    if len(keys) == 1 or workers <= 1:
        return [parse(k, _read_meter(s3, settings, k)) for k in keys]
    with ThreadPoolExecutor(max_workers=min(workers, len(keys)), thread_name_prefix="meter-read") as pool:
        return list(pool.map(lambda k: parse(k, _read_meter(s3, settings, k)), keys))
