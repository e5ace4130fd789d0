"""Every AWS call of the backup job and of ``smartgrid restore``: DynamoDB (describe, scan,
on-demand backups, batch writes) through the raw client, so items stay in DynamoDB's JSON
(the portable copy is that format, whatever the pynamodb models say), and S3 objects of the
models and backups buckets. The domain (``smartgrid.domain.backup``) decides what to call and
checks what comes back; nothing here interprets a backup."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

from smartgrid.config import Settings
from smartgrid.store.aws import client, is_missing

BATCH_WRITE_LIMIT = 25  # DynamoDB's maximum requests per BatchWriteItem
PART_BYTES = 16 << 20  # checked uploads go up in parts of this size (S3: >= 5 MiB, <= 10,000 parts)
_MAX_UNPROCESSED_RETRIES = 8


# ------------------------------------------------------------------------------ DynamoDB
def describe_table(name: str, settings: Settings) -> dict[str, Any] | None:
    """The table's description, or None when it does not exist."""
    from botocore.exceptions import ClientError

    try:
        table: dict[str, Any] = client("dynamodb", settings).describe_table(TableName=name)["Table"]
    except ClientError as exc:
        if is_missing(exc):
            return None
        raise
    return table


def scan_items(name: str, settings: Settings, *, keys_only: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """Every item of the table (consistent reads, all pages), in DynamoDB JSON. With
    ``keys_only`` only those attributes are read."""
    kwargs: dict[str, Any] = {"TableName": name, "ConsistentRead": True}
    if keys_only:
        kwargs["ProjectionExpression"] = ", ".join(f"#k{i}" for i in range(len(keys_only)))
        kwargs["ExpressionAttributeNames"] = {f"#k{i}": k for i, k in enumerate(keys_only)}
    for page in client("dynamodb", settings).get_paginator("scan").paginate(**kwargs):
        yield from page.get("Items", [])


def has_items(name: str, settings: Settings) -> bool:
    """Whether the table holds at least one item (one page of at most one item per call:
    an empty page with a LastEvaluatedKey goes on)."""
    ddb = client("dynamodb", settings)
    kwargs: dict[str, Any] = {"TableName": name, "Limit": 1, "ConsistentRead": True}
    while True:
        page = ddb.scan(**kwargs)
        if page.get("Items"):
            return True
        if not page.get("LastEvaluatedKey"):
            return False
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def create_backup(table: str, backup_name: str, settings: Settings) -> str:
    """A DynamoDB on-demand backup of the table (point in time, kept by DynamoDB until
    deleted); returns its ARN."""
    details = client("dynamodb", settings).create_backup(TableName=table, BackupName=backup_name)["BackupDetails"]
    arn: str = details["BackupArn"]
    return arn


def list_user_backups(table: str, created_before: datetime, settings: Settings) -> Iterator[dict[str, Any]]:
    """The table's on-demand (``USER``) backups created before the time, as ListBackups
    summaries (``BackupArn``, ``BackupName``, ``BackupCreationDateTime``, ``BackupType`` ...)."""
    pages = client("dynamodb", settings).get_paginator("list_backups")
    for page in pages.paginate(TableName=table, TimeRangeUpperBound=created_before, BackupType="USER"):
        yield from page.get("BackupSummaries", [])


def delete_backup(arn: str, settings: Settings) -> None:
    client("dynamodb", settings).delete_backup(BackupArn=arn)


def batch_write(table: str, requests: list[dict[str, Any]], settings: Settings) -> None:
    """BatchWriteItem of ``PutRequest``/``DeleteRequest`` entries, 25 a call, unprocessed
    ones retried with backoff; raises if DynamoDB keeps leaving some unprocessed."""
    ddb = client("dynamodb", settings)
    for lo in range(0, len(requests), BATCH_WRITE_LIMIT):
        pending: dict[str, list[dict[str, Any]]] = {table: requests[lo : lo + BATCH_WRITE_LIMIT]}
        for attempt in range(_MAX_UNPROCESSED_RETRIES + 1):
            pending = ddb.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}
            if not pending:
                break
            if attempt == _MAX_UNPROCESSED_RETRIES:
                left = sum(map(len, pending.values()))
                raise RuntimeError(f"DynamoDB left {left} write(s) to {table} unprocessed")
            time.sleep(min(0.05 * 2**attempt, 2.0))


# ------------------------------------------------------------------------------------ S3
def bucket_exists(bucket: str, settings: Settings) -> bool:
    from botocore.exceptions import ClientError

    try:
        client("s3", settings).head_bucket(Bucket=bucket)
    except ClientError as exc:
        if is_missing(exc):
            return False
        raise
    return True


def list_objects(bucket: str, prefix: str, settings: Settings) -> Iterator[tuple[str, int]]:
    """(key, size) of every object under the prefix, in key order."""
    pages = client("s3", settings).get_paginator("list_objects_v2")
    for page in pages.paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            yield obj["Key"], int(obj["Size"])


def list_folders(bucket: str, prefix: str, settings: Settings) -> list[str]:
    """The 'folders' right under the prefix (common prefixes at the next ``/``)."""
    pages = client("s3", settings).get_paginator("list_objects_v2")
    found = []
    for page in pages.paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
        found += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
    return found


def open_object(bucket: str, key: str, settings: Settings) -> IO[bytes] | None:
    """The object's body as a stream (read it in chunks), or None when it does not exist."""
    from botocore.exceptions import ClientError

    try:
        body: IO[bytes] = client("s3", settings).get_object(Bucket=bucket, Key=key)["Body"]
    except ClientError as exc:
        if is_missing(exc):
            return None
        raise
    return body


def put_object(
    bucket: str, key: str, body: bytes | IO[bytes], settings: Settings, content_type: str = "application/octet-stream"
) -> None:
    """Write an object: bytes in one PutObject, a file through the transfer manager
    (multipart when large)."""
    s3 = client("s3", settings)
    if isinstance(body, bytes):
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)
    else:
        s3.upload_fileobj(body, bucket, key, ExtraArgs={"ContentType": content_type})


@dataclass(frozen=True)
class Uploaded:
    """What S3 says it stored: the object's ChecksumSHA256 (base64; a multipart object's is
    the checksum of its parts' checksums, possibly with a ``-<parts>`` suffix) and each
    part's (empty for a single PutObject)."""

    checksum: str | None
    part_checksums: list[str]


def upload_checked(bucket: str, key: str, body: IO[bytes], settings: Settings, content_type: str) -> Uploaded:
    """Upload the stream from where it stands with S3 checksums (SHA256): botocore sends the
    checksum of the bytes it sends, S3 refuses them if they arrive otherwise and reports what it
    stored. Up to ``PART_BYTES``: one PutObject; beyond: a multipart upload in parts of
    ``PART_BYTES`` (aborted on failure). One part is held in memory at a time."""
    s3 = client("s3", settings)
    first = body.read(PART_BYTES)
    second = body.read(PART_BYTES)
    if not second:
        r = s3.put_object(Bucket=bucket, Key=key, Body=first, ContentType=content_type, ChecksumAlgorithm="SHA256")
        return Uploaded(r.get("ChecksumSHA256"), [])
    upload_id = s3.create_multipart_upload(
        Bucket=bucket, Key=key, ContentType=content_type, ChecksumAlgorithm="SHA256"
    )["UploadId"]
    try:
        parts: list[dict[str, Any]] = []
        chunk, ahead, number = first, second, 1
        del first, second  # one part (and the next) in memory, not every part read so far
        while chunk:
            r = s3.upload_part(
                Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk, ChecksumAlgorithm="SHA256"
            )
            parts.append({"PartNumber": number, "ETag": r["ETag"], "ChecksumSHA256": r.get("ChecksumSHA256", "")})
            chunk, number = ahead, number + 1
            ahead = body.read(PART_BYTES) if ahead else b""
        done = s3.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )
    except BaseException:
        with contextlib.suppress(Exception):  # the failure that brought us here is the one to report
            s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        raise
    checksum = done.get("ChecksumSHA256")
    if checksum is None:  # not in every CompleteMultipartUpload answer (moto): ask for it
        checksum = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED").get("ChecksumSHA256")
    return Uploaded(checksum, [p["ChecksumSHA256"] for p in parts])


def delete_object(bucket: str, key: str, settings: Settings) -> None:
    client("s3", settings).delete_object(Bucket=bucket, Key=key)
