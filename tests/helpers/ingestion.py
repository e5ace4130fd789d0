"""Meter files arriving: an upload to the meter-data bucket and the EventBridge event S3 then
sends (what the ingestion function receives)."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote_plus

from tests.helpers.stack import Stack


def put(env: Stack, key: str, body: bytes) -> dict[str, Any]:
    """Upload as a meter would, and the EventBridge event S3 then sends (key URL-encoded)."""
    import boto3

    etag = boto3.client("s3").put_object(Bucket=env.bucket, Key=key, Body=body)["ETag"].strip('"')
    return s3_event(env.bucket, key, etag, len(body))


def s3_event(bucket: str, key: str, etag: str, size: int) -> dict[str, Any]:
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Object Created",
        "source": "aws.s3",
        "account": "123456789012",
        "time": "2026-11-28T10:00:00Z",
        "region": "us-east-1",
        "resources": [f"arn:aws:s3:::{bucket}"],
        "detail": {
            "version": "0",
            "bucket": {"name": bucket},
            "object": {"key": quote_plus(key, safe="/"), "size": size, "etag": etag, "sequencer": "0062E99A88DC407460"},
            "request-id": "N4N7GDK58NMKJ12R",
            "requester": "123456789012",
            "source-ip-address": "203.0.113.7",
            "reason": "PutObject",
        },
    }
