"""GET /health: the health check of docs/requirements.md#health, without an API key; 200 when
ok or degraded, 503 when critical (a dependency or the models are down)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Response

from smartgrid.api import schemas
from smartgrid.api.deps import Service

router = APIRouter(tags=["operations"])


@router.get(
    "/health",
    response_model=schemas.Health,
    responses={503: {"model": schemas.Health, "description": "Critical: a dependency or the models are down"}},
)
async def health(response: Response, svc: Service) -> dict[str, Any]:
    """The operations manual's health check; no API key needed. 503 when critical."""
    h = svc.health()
    if h.status == "critical":
        response.status_code = 503
    return asdict(h)
