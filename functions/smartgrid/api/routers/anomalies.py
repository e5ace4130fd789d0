"""POST /anomalies/detect: the anomaly model's score and flag for each reading of a series."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from smartgrid.api import schemas
from smartgrid.api.deps import Service, User
from smartgrid.api.openapi import problem_responses

router = APIRouter(tags=["anomalies"])


@router.post(
    "/anomalies/detect", response_model=schemas.DetectResponse, responses=problem_responses(401, 403, 413, 422, 503)
)
async def detect(body: schemas.DetectRequest, user: User, svc: Service) -> dict[str, Any]:
    return svc.detect(body.timestamps, body.load, body.threshold)
