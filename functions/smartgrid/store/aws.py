"""boto3 clients for the data-access layer: one per service and thread, every one honouring
AWS_ENDPOINT_URL and the region from Settings (moto in-process, a moto server, or AWS), with
bounded timeouts and retries. Only ``store/`` calls AWS; the domain calls the store."""

from __future__ import annotations

import threading
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
