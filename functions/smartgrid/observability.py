"""One Logger, Metrics and Tracer for the whole runtime (Powertools for AWS Lambda).

Service name and metrics namespace come from POWERTOOLS_SERVICE_NAME /
POWERTOOLS_METRICS_NAMESPACE (set by the CDK app from the same constants), defaulting to
``smartgrid`` / ``Smartgrid``; metric names are in ``catalog``, beside the alarms that watch
them. The Tracer imports and patches only what a request uses:
- no auto-patching (it imports botocore and pynamodb at start-up); the data-access layer
  patches botocore when it first creates a client (``trace_aws_sdk``);
- its provider loads the X-Ray SDK on first use. Powertools' default provider imports
  ``aws_xray_sdk.core`` (and with it botocore) when the Tracer is created, even with
  tracing disabled: about 0.5 s of CPU on a cold start here.
"""

from __future__ import annotations

import contextlib
import re
import resource
from collections.abc import Sequence
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter
from aws_lambda_powertools.tracing.base import BaseProvider, BaseSegment

from smartgrid.catalog import MEMORY_UTILIZATION_PERCENT, NAMESPACE, PROCESS_RESIDENT_MEMORY_BYTES, SERVICE


class _NoSegment(BaseSegment):
    """What a disabled tracer records into: nothing."""

    def close(self, end_time: int | None = None) -> None: ...
    def add_subsegment(self, subsegment: Any) -> None: ...
    def remove_subsegment(self, subsegment: Any) -> None: ...
    def put_annotation(self, key: str, value: Any) -> None: ...
    def put_metadata(self, key: str, value: Any, namespace: str = "default") -> None: ...
    def add_exception(self, exception: BaseException, stack: Any, remote: bool = False) -> None: ...


class LazyXrayProvider(BaseProvider):
    """The X-Ray recorder, imported when a trace is first recorded (configured as Powertools
    configures it: subsegments streamed one by one). While tracing is disabled (locally, in
    tests, or by POWERTOOLS_TRACE_DISABLED) it is never imported: Powertools still opens a
    subsegment per invocation and relies on the SDK to ignore it."""

    def __init__(self) -> None:
        self._recorder: Any = None
        self.disabled = False

    @property
    def recorder(self) -> Any:
        if self._recorder is None:
            from aws_xray_sdk.core import xray_recorder

            xray_recorder.configure(streaming_threshold=0)
            self._recorder = xray_recorder
        return self._recorder

    def in_subsegment(self, name: Any = None, **kwargs: Any) -> Any:
        if self.disabled:
            return contextlib.nullcontext(_NoSegment())
        return self.recorder.in_subsegment(name=name, **kwargs)

    def in_subsegment_async(self, name: Any = None, **kwargs: Any) -> Any:
        if self.disabled:
            return contextlib.nullcontext(_NoSegment())
        return self.recorder.in_subsegment_async(name=name, **kwargs)

    def put_annotation(self, key: str, value: Any) -> None:
        if not self.disabled:
            self.recorder.put_annotation(key=key, value=value)

    def put_metadata(self, key: str, value: Any, namespace: str = "default") -> None:
        if not self.disabled:
            self.recorder.put_metadata(key=key, value=value, namespace=namespace)

    def patch(self, modules: Sequence[str]) -> None:
        from aws_xray_sdk.core import patch

        self.recorder  # noqa: B018  (configure the recorder before patching)
        patch(modules)

    def patch_all(self) -> None:
        from aws_xray_sdk.core import patch_all

        self.recorder  # noqa: B018
        patch_all()


REDACTED = "[redacted]"
# Field names whose values are credentials, wherever they appear in a log record (an event's
# headers or query string, API Gateway's request context): compared without case, - or _.
SECRET_FIELDS = frozenset({"xapikey", "apikey", "authorization", "cookie", "setcookie", "token", "password"})
_SECRET_IN_TEXT = re.compile(r"(?i)((?:x-)?api[-_]?key[\"']?\s*[=:]\s*[\"']?)[^\s&\"',;]+")


def redact(value: Any) -> Any:
    """A copy of ``value`` with credential fields and ``api_key=...`` in text masked."""
    if isinstance(value, dict):
        return {
            k: REDACTED if str(k).replace("-", "").replace("_", "").lower() in SECRET_FIELDS else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, BaseException):  # Powertools' stack_trace carries the exception itself
        value = str(value)
    if isinstance(value, str) and "key" in value.lower():
        return _SECRET_IN_TEXT.sub(rf"\1{REDACTED}", value)
    return value


class RedactingFormatter(LambdaPowertoolsFormatter):
    """Powertools' JSON log format, with API keys and other credentials masked in every record,
    so that even a logged event (``POWERTOOLS_LOGGER_LOG_EVENT``) or an exception message
    carries no key."""

    def serialize(self, log: Any) -> str:
        return super().serialize(redact(dict(log)))


logger = Logger(service=SERVICE, logger_formatter=RedactingFormatter())
metrics = Metrics(service=SERVICE, namespace=NAMESPACE)
_provider = LazyXrayProvider()
tracer = Tracer(service=SERVICE, auto_patch=False, provider=_provider)
_provider.disabled = bool(tracer.disabled)

_patched = False


def trace_aws_sdk() -> None:
    """Patch botocore for X-Ray once, when the first AWS client is about to be used."""
    global _patched
    if not _patched:
        _patched = True
        tracer.patch(["botocore"])


def record_memory(context: Any) -> None:
    """The process's peak RSS, and the same against the function's configured memory (Lambda
    publishes no memory metric; the "Memory > 80%" alarm, docs/requirements.md#alerts, watches
    this one)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    metrics.add_metric(name=PROCESS_RESIDENT_MEMORY_BYTES, unit="Bytes", value=peak)
    limit_mb = getattr(context, "memory_limit_in_mb", None)
    if limit_mb:
        metrics.add_metric(
            name=MEMORY_UTILIZATION_PERCENT, unit="Percent", value=round(100 * peak / (int(limit_mb) * 2**20), 2)
        )
