"""The prediction routes: POST /predict/single and /predict/batch (with the Idempotency-Key
header), POST /actuals (measured load against a stored prediction) and GET /predictions (the
caller's stored predictions, newest first), and how a ``PredictionRecord`` renders as the
``Prediction`` body they return."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from pydantic import ValidationError

from smartgrid.api import schemas
from smartgrid.api.deps import AppSettings, Service, User
from smartgrid.api.openapi import problem_responses
from smartgrid.api.problems import item_problem, validation_problem
from smartgrid.domain.predictions import ItemOutcome, SeriesInput, digest
from smartgrid.engine.model_files import LOAD_FORECAST
from smartgrid.errors import AuthError, DataValidationError, Problem
from smartgrid.store.records import PredictionRecord

router = APIRouter(tags=["predictions"])

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=128,
        pattern=r"^[\x21-\x7e]+$",
        description="Retries with the same key and body return the first result instead of predicting again",
    ),
]


# ------------------------------------------------------------------------- rendering
def render_prediction(rec: PredictionRecord) -> dict[str, Any]:
    return {
        "prediction_id": rec.prediction_id if rec.stored else None,
        "stored": rec.stored,
        "created_at": rec.created_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        "site_id": rec.site_id,
        "model": rec.model,
        "model_kind": "primary" if rec.model == LOAD_FORECAST else "fallback",
        "model_version": rec.model_version,
        "fallback_reason": rec.fallback_reason,
        "resolution_minutes": rec.resolution_minutes,
        "cached": rec.source == "cache",
        "forecast": [
            {"timestamp": t, "p10": a, "p50": b, "p90": c}
            for t, a, b, c in zip(rec.timestamps, rec.p10, rec.p50, rec.p90, strict=True)
        ],
    }


def _series_input(req: schemas.PredictRequest) -> SeriesInput:
    tf = req.temperature_forecast
    return SeriesInput(
        timestamps=req.history.timestamp_list(),
        load=req.history.load,
        temperature=req.history.temperature,
        forecast_timestamps=tf.timestamps if tf else None,
        forecast_temperature=tf.temperature if tf else None,
        site_id=req.site_id,
    )


def _batch_item(o: ItemOutcome, prefix: str) -> dict[str, Any]:
    if o.record is not None:
        return {"index": o.index, "status": "ok", "prediction": render_prediction(o.record)}
    assert o.error is not None
    return {"index": o.index, "status": "error", "error": item_problem(o.error, prefix)}


def _since(text: str | None) -> datetime | None:
    """``since`` to an aware UTC datetime, to the millisecond (a returned ``created_at`` can be
    passed back as is); naive means UTC."""
    if text is None:
        return None
    try:
        value = text.strip()
        dt = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value)
        return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    except (ValueError, OverflowError):
        raise DataValidationError(
            [Problem("bad_timestamp", f"since: {text!r} is not ISO 8601", field_name="since")], "query"
        ) from None


# ------------------------------------------------------------------------- routes
@router.post(
    "/predict/single", response_model=schemas.Prediction, responses=problem_responses(401, 403, 409, 413, 422, 503)
)
async def predict_single(
    body: schemas.PredictRequest, user: User, svc: Service, idempotency_key: IdempotencyKey = None
) -> dict[str, Any]:
    req_digest = digest(["single", body.model_dump(mode="json")]) if idempotency_key else None
    (outcome,) = svc.predict(user, [_series_input(body)], idempotency_key, req_digest)
    if outcome.error is not None:
        raise outcome.error  # mapped to 422 / 503 by api/problems.py
    assert outcome.record is not None
    return render_prediction(outcome.record)


@router.post(
    "/predict/batch",
    response_model=schemas.BatchResponse,
    response_model_exclude_unset=True,  # an item has "prediction" or "error", never the other as null
    responses=problem_responses(401, 403, 409, 413, 422, 503),
)
async def predict_batch(
    body: schemas.BatchRequest,
    user: User,
    svc: Service,
    settings: AppSettings,
    idempotency_key: IdempotencyKey = None,
) -> dict[str, Any]:
    if len(body.requests) > settings.max_batch_size:
        raise DataValidationError(
            [
                Problem(
                    "too_many_items",
                    f"a batch holds at most {settings.max_batch_size} requests (MAX_BATCH_SIZE); "
                    f"this one has {len(body.requests)}: split it",
                    field_name="requests",
                )
            ],
            "batch",
        )
    valid: list[tuple[int, SeriesInput]] = []
    results: dict[int, dict[str, Any]] = {}
    for i, raw in enumerate(body.requests):
        try:
            valid.append((i, _series_input(schemas.PredictRequest.model_validate(raw))))
        except ValidationError as exc:
            _, prob = validation_problem(list(exc.errors()), prefix=f"requests[{i}]")
            results[i] = {"index": i, "status": "error", "error": prob}
    req_digest = digest(["batch", body.requests]) if idempotency_key else None
    outcomes = svc.predict(user, [s for _, s in valid], idempotency_key, req_digest) if valid else []
    for (i, _), o in zip(valid, outcomes, strict=True):
        o.index = i
        results[i] = _batch_item(o, f"requests[{i}]")
    ordered = [results[i] for i in range(len(body.requests))]
    ok = sum(1 for r in ordered if r["status"] == "ok")
    return {"succeeded": ok, "failed": len(ordered) - ok, "results": ordered}


@router.post(
    "/actuals", response_model=schemas.ActualsResponse, responses=problem_responses(401, 403, 404, 413, 422, 503)
)
async def actuals(body: schemas.ActualsRequest, user: User, svc: Service) -> dict[str, Any]:
    res = svc.record_actuals(user, body.prediction_id, body.timestamps, body.load)
    return {
        "prediction_id": res.prediction.prediction_id,
        "model": res.prediction.model,
        "model_version": res.prediction.model_version,
        "count": len(res.points),
        "mae": res.mae,
        "points": res.points,
    }


@router.get("/predictions", response_model=schemas.PredictionPage, responses=problem_responses(401, 403, 422, 503))
async def predictions(
    user: User,
    svc: Service,
    user_id: Annotated[str | None, Query(max_length=128, description="must be the API key's user")] = None,
    since: Annotated[str | None, Query(max_length=40, description="ISO 8601; newest first down to this")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=64, description="next_cursor of the previous page")] = None,
) -> dict[str, Any]:
    if user_id is not None and user_id != user:
        raise AuthError(403, "user_id does not match the API key's user")
    page = svc.list_predictions(user, _since(since), limit, cursor)
    return {"items": [render_prediction(r) for r in page.items], "next_cursor": page.cursor}
