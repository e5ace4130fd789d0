"""Baseline for the API benchmark: POST /predict/single as a typical team would write it.

A plain FastAPI + Mangum + Powertools Lambda handler: boto3 and pynamodb imported eagerly at
the top, the default ``Tracer()`` (auto-patching), ``Logger`` and ``Metrics`` decorators,
pydantic request and response models, ``Mangum(app)`` with its defaults. It does the same
work as the product for one request: checks the API key, validates the body, forecasts with
the same ONNX models through the product's domain code, and saves one item to DynamoDB (its
own table, ``bench-plain-predictions`` unless ``PLAIN_PREDICTIONS_TABLE`` says otherwise).
Used by ``benchmarks/api_benchmark.py``; not part of the product.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse
from mangum import Mangum
from pydantic import BaseModel, Field
from pynamodb.attributes import JSONAttribute, UnicodeAttribute, UTCDateTimeAttribute
from pynamodb.models import Model

import smartgrid
from smartgrid.engine.data import readings_from_records
from smartgrid.engine.features import HolidayCalendar
from smartgrid.engine.forecast import Forecaster, ModelSet
from smartgrid.errors import DataValidationError

logger = Logger()
metrics = Metrics()
tracer = Tracer()

REGION = boto3.session.Session().region_name or "us-east-1"
MODEL_DIR = Path(smartgrid.__file__).parent / "models" / "default"
API_KEYS: dict[str, str] = {v.lower(): k for k, v in json.loads(os.environ.get("SMARTGRID_API_KEYS", "{}")).items()}


class PredictionItem(Model):
    class Meta:
        table_name = os.environ.get("PLAIN_PREDICTIONS_TABLE", "bench-plain-predictions")
        region = REGION
        host = os.environ.get("AWS_ENDPOINT_URL")

    user_id = UnicodeAttribute(hash_key=True)
    prediction_id = UnicodeAttribute(range_key=True)
    created_at = UTCDateTimeAttribute()
    site_id = UnicodeAttribute(null=True)
    model = UnicodeAttribute()
    forecast = JSONAttribute()


class History(BaseModel):
    timestamps: list[str] = Field(min_length=2, max_length=20_000)
    load: list[Annotated[float, Field(ge=0)]] = Field(min_length=2, max_length=20_000)
    temperature: list[Annotated[float, Field(ge=-90, le=70)] | None] | None = None


class PredictRequest(BaseModel):
    site_id: str | None = Field(default=None, max_length=128)
    history: History


class ForecastStep(BaseModel):
    timestamp: str
    p10: float
    p50: float
    p90: float


class Prediction(BaseModel):
    prediction_id: str
    created_at: datetime
    site_id: str | None
    model: str
    model_version: str
    fallback_reason: str | None
    cached: bool
    forecast: list[ForecastStep]


forecaster = Forecaster(ModelSet.load(MODEL_DIR), HolidayCalendar("US"))
app = FastAPI(title="plain smartgrid")


@app.exception_handler(DataValidationError)
async def data_error(request: Request, exc: DataValidationError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=422)


def authenticate(api_key: str | None) -> str:
    user = API_KEYS.get(hashlib.sha256((api_key or "").encode()).hexdigest())
    if user is None:
        raise HTTPException(status_code=403, detail="invalid API key")
    return user


@app.post("/predict/single", response_model=Prediction)
async def predict_single(body: PredictRequest, x_api_key: Annotated[str | None, Header()] = None) -> dict[str, Any]:
    user = authenticate(x_api_key)
    h = body.history
    fc = forecaster.forecast_readings(readings_from_records(h.timestamps, h.load, h.temperature, source="history"))
    rows = fc.rows()
    item = PredictionItem(
        user, str(uuid.uuid4()), created_at=datetime.now(UTC), site_id=body.site_id, model=fc.model, forecast=rows
    )
    item.save()
    metrics.add_metric(name="Predictions", unit=MetricUnit.Count, value=1)
    logger.info("prediction saved", extra={"prediction_id": item.prediction_id, "model": fc.model})
    return {
        "prediction_id": item.prediction_id,
        "created_at": item.created_at,
        "site_id": body.site_id,
        "model": fc.model,
        "model_version": fc.model_version,
        "fallback_reason": fc.fallback_reason,
        "cached": False,
        "forecast": rows,
    }


asgi_handler = Mangum(app)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return asgi_handler(event, context)
