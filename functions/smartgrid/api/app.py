"""The FastAPI app: ``create_app`` assembles the routers (``api/routers/``), the request-context
middleware (``api/middleware.py``), the error handlers (``api/problems.py``) and the OpenAPI
contract (``api/openapi.py``). The Lambda entry point (``api/handler.py``) and
``smartgrid serve`` both call it."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from smartgrid.api.auth import Authenticator
from smartgrid.api.middleware import RequestContextMiddleware
from smartgrid.api.openapi import APP_RESPONSES, install_contract
from smartgrid.api.problems import add_exception_handlers
from smartgrid.api.routers import add_routes, anomalies, docs, health, models, predictions
from smartgrid.config import Settings, get_settings
from smartgrid.domain.predictions import PredictionService, build_service


def create_app(
    settings: Settings | None = None, service: PredictionService | None = None, flush_metrics: bool = False
) -> FastAPI:
    """The app over ``service`` (default: built from ``settings``, which default to the
    environment's); ``flush_metrics`` writes the metrics after each request (``smartgrid serve``:
    no Lambda handler to do it)."""
    settings = settings or get_settings()
    svc = service or build_service(settings)
    app = FastAPI(
        docs_url=None,  # served by routers/docs.py, behind the API key
        redoc_url=None,
        openapi_url=None,
        title="smartgrid",
        version="1.0.0",
        summary="Day-ahead load forecasts (P10/P50/P90) and anomaly flags for grid operators",
        responses=APP_RESPONSES,
        # Response models are validated, then written by json.dumps, as every other body
        # (FastAPI's default writes them with pydantic, which spells 1e-07 as 1e-7).
        default_response_class=JSONResponse,
    )
    install_contract(app, settings)
    app.state.settings = settings
    app.state.service = svc
    app.state.authenticator = Authenticator(settings)
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_body_bytes, flush_metrics=flush_metrics)
    add_exception_handlers(app)
    for router in (docs.router, health.router, models.router, predictions.router, anomalies.router):
        add_routes(app, router)
    return app
