"""Lambda entry point for the API: one module-level Mangum adapter over the FastAPI app.

Settings are validated and the models loaded here, once per container (the init phase).
Mangum accepts API Gateway REST (v1) and HTTP API (v2) events alike. Decorator order:
context injection, then metrics, then tracer.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.logging import correlation_paths
from mangum import Mangum

from ..observability import logger, metrics, tracer
from .app import create_app

app = create_app()
asgi_handler = Mangum(app, lifespan="off", api_gateway_base_path="/")


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST, clear_state=True)
@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler(capture_response=False)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return asgi_handler(event, context)
