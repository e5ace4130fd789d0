"""Lambda entry point for the API: one module-level Mangum adapter over the FastAPI app.

Settings are validated and the models loaded here, once per container (the init phase; with
SnapStart, once per published version, then restored from the snapshot).
Mangum accepts API Gateway REST (v1) and HTTP API (v2) events alike. Decorator order:
context injection, then metrics, then tracer.
"""

from __future__ import annotations

import binascii
import json
import time
from typing import Any

from aws_lambda_powertools.logging import correlation_paths
from mangum import Mangum
from mangum.adapter import DEFAULT_TEXT_MIME_TYPES

from smartgrid.api.app import create_app
from smartgrid.api.problems import BAD_BODY
from smartgrid.catalog import PROBLEM_JSON
from smartgrid.observability import logger, metrics, record_memory, tracer

app = create_app()


def _after_restore() -> None:
    """SnapStart restores this initialised container from a snapshot, perhaps days later:
    uptime counts from the restore, not from the snapshot's init."""
    app.state.service.started = time.monotonic()


try:  # the Lambda runtime's SnapStart hooks (absent elsewhere)
    from snapshot_restore_py import register_after_restore
except ImportError:
    pass
else:
    register_after_restore(_after_restore)
# Problem details are text: without this Mangum would base64-encode them.
asgi_handler = Mangum(app, lifespan="off", text_mime_types=[*DEFAULT_TEXT_MIME_TYPES, PROBLEM_JSON])


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST, clear_state=True)
@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler(capture_response=False)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    try:
        return asgi_handler(event, context)
    except binascii.Error:  # isBase64Encoded with a body that is not base64 (direct invokes only)
        body = BAD_BODY.body("the body is marked base64-encoded but is not")
        return {"statusCode": BAD_BODY.status, "headers": {"content-type": PROBLEM_JSON}, "body": json.dumps(body)}
    finally:
        record_memory(context)
