"""The FastAPI app: routes, authentication, and the one place where errors become HTTP.

Every error response is an RFC 9457 problem-details body (``application/problem+json``)
that names the field. Endpoints are ``async def``: a ``def`` endpoint goes through a thread
pool, which cost 2.4x the CPU per request on Lambda-sized machines (shared/notes).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, Header, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from smartgrid.api import schemas
from smartgrid.catalog import (
    API_REQUEST_DURATION_SECONDS,
    API_REQUESTS_ERRORS_TOTAL,
    API_REQUESTS_TOTAL,
    PROBLEM_BASE,
    PROBLEM_JSON,
)
from smartgrid.config import Settings, get_settings
from smartgrid.domain.predictions import ItemOutcome, PredictionService, SeriesInput, build_service, digest
from smartgrid.engine.model_files import LOAD_FORECAST
from smartgrid.errors import (
    MAX_PROBLEMS_SHOWN,
    AuthError,
    ConflictError,
    DataValidationError,
    DependencyUnavailableError,
    ForecastUnavailableError,
    NotFoundError,
    Problem,
)
from smartgrid.observability import logger, metrics
from smartgrid.store.records import PredictionRecord

# ------------------------------------------------------------------------- problems
CORRELATION_ID = re.compile(r"^[A-Za-z0-9._:/-]{1,128}$")


# The arrays a problem's source names: problems about readings name fields inside them.
SOURCE_FIELDS = ("history", "temperature_forecast")


def _field_errors(exc: DataValidationError, base: str) -> list[dict[str, Any]]:
    """Field paths for a domain error's problems: ``base`` (e.g. ``requests[3]``), then the
    part of the body the problem's source is (``history`` / ``temperature_forecast``)."""
    source = exc.source if exc.source in SOURCE_FIELDS else ""
    prefix = ".".join(x for x in (base, source) if x)
    out = []
    for p in exc.problems[:MAX_PROBLEMS_SHOWN]:
        field = p.field_name or ""
        if not field.endswith("]"):  # the engine names a column; the body names the array
            field = {"timestamp": "timestamps"}.get(field, field)
            if p.rows:
                field = f"{field or 'timestamps'}[{p.rows[0] - 1}]"
        if field == source:  # a problem with the whole part: name it once
            field = ""
        out.append(
            {
                "field": f"{prefix}.{field}" if prefix and field else (field or prefix or None),
                "code": p.code,
                "message": p.message,
                "rows": [r - 1 for r in p.rows[:MAX_PROBLEMS_SHOWN]],  # 0-based indexes into the arrays
            }
        )
    return out


def problem(
    status: int, title: str, detail: str, errors: list[dict[str, Any]] | None = None, code: str | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + (code or title.lower().replace(" ", "-")),
        "title": title,
        "status": status,
        "detail": detail,
        "errors": errors or [],
    }
    cid = logger.get_correlation_id()
    if cid:
        body["correlation_id"] = cid
    return body


def data_problem(exc: DataValidationError, prefix: str) -> dict[str, Any]:
    errors = _field_errors(exc, prefix)
    first = errors[0]["message"] if errors else str(exc)
    more = f" (and {len(exc.problems) - 1} more)" if len(exc.problems) > 1 else ""
    return problem(422, "Invalid data", f"{first}{more}", errors, code="invalid-data")


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def validation_problem(errors: list[Any], prefix: str = "") -> tuple[int, dict[str, Any]]:
    fields = []
    for e in errors[:MAX_PROBLEMS_SHOWN]:
        loc = tuple(e.get("loc", ()))
        if e.get("type") == "json_invalid":
            ctx = e.get("ctx") or {}
            return 400, problem(
                400, "Malformed JSON", f"the body is not valid JSON: {ctx.get('error', 'parse error')}", code="bad-json"
            )
        field = _loc(loc)
        if prefix:
            rest = field.removeprefix("body").removeprefix(".")
            field = f"{prefix}.{rest}" if rest else prefix
        msg = e.get("msg", "invalid")
        if e.get("type") == "extra_forbidden":
            msg = "unknown field"
        elif e.get("type") == "missing" and loc == ("body",):
            msg = "a JSON body is required"
        elif (
            e.get("type") == "string_pattern_mismatch"
            and (e.get("ctx") or {}).get("pattern") == schemas.TIMESTAMP_PATTERN
        ):
            msg = "not an ISO 8601 time from 1900 to 2199 (e.g. 2026-11-27T23:00:00Z)"
        fields.append({"field": field or None, "code": e.get("type", "invalid"), "message": msg, "rows": []})
    detail = "; ".join(f"{f['field']}: {f['message']}" for f in fields[:5])
    if len(errors) > 5:
        detail += f" (and {len(errors) - 5} more)"
    return 422, problem(422, "Invalid request", detail, fields, code="invalid-request")


def _problem_response(status: int, body: dict[str, Any], headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """The one mapping from typed errors to HTTP responses."""

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, body = validation_problem(list(exc.errors()))
        return _problem_response(status, body)

    @app.exception_handler(DataValidationError)
    async def _data(request: Request, exc: DataValidationError) -> JSONResponse:
        return _problem_response(422, data_problem(exc, ""))

    @app.exception_handler(AuthError)
    async def _auth(request: Request, exc: AuthError) -> JSONResponse:
        title = "Unauthorized" if exc.status == 401 else "Forbidden"
        challenge = {"WWW-Authenticate": "APIKey"} if exc.status == 401 else None  # RFC 9110: a 401 names the scheme
        return _problem_response(exc.status, problem(exc.status, title, str(exc)), challenge)

    @app.exception_handler(NotFoundError)
    async def _not_found(request: Request, exc: NotFoundError) -> JSONResponse:
        return _problem_response(404, problem(404, "Not found", str(exc)))

    @app.exception_handler(ConflictError)
    async def _conflict(request: Request, exc: ConflictError) -> JSONResponse:
        status = 422 if exc.code == "idempotency_key_reused" else 409
        key = exc.code in ("idempotency_key_reused", "request_in_progress")  # about the key: name it
        field = {"field": "header.Idempotency-Key", "code": exc.code, "message": str(exc), "rows": []}
        body = problem(status, "Conflict", str(exc), [field] if key else None, code=exc.code.replace("_", "-"))
        return _problem_response(status, body)

    @app.exception_handler(DependencyUnavailableError)
    @app.exception_handler(ForecastUnavailableError)
    async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
        body = problem(503, "Service unavailable", str(exc), code="dependency-unavailable")
        return _problem_response(503, body, {"Retry-After": "5"})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        title = {404: "Not found", 405: "Method not allowed", 413: "Payload too large"}.get(exc.status_code, "Error")
        return _problem_response(exc.status_code, problem(exc.status_code, title, str(exc.detail)), exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error")
        return _problem_response(500, problem(500, "Internal error", "an unexpected error occurred; it was logged"))


# ------------------------------------------------------------------------- middleware
class RequestContextMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware overhead): correlation id, body-size limit, the
    manual's request metrics and one access-log line per request."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, flush_metrics: bool = False) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.flush_metrics = flush_metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        event = scope.get("aws.event") or {}
        given = headers.get("x-correlation-id", "")
        cid = (
            (given if CORRELATION_ID.match(given) else None)
            or (event.get("requestContext") or {}).get("requestId")
            or str(uuid.uuid4())
        )
        logger.set_correlation_id(cid)
        status = 500
        limit = self.max_body_bytes

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-correlation-id", cid.encode("latin-1"))]
            await send(message)

        try:
            declared = headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                await _send_too_large(send_wrapper, limit)
                return
            # Read the body here (Lambda hands it over whole anyway) so that an oversized
            # one is refused before anything parses it.
            chunks: list[bytes] = []
            received = 0
            more = scope.get("method") not in ("GET", "HEAD")
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    return  # client went away
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > limit:
                    await _send_too_large(send_wrapper, limit)
                    return
                chunks.append(chunk)
                more = message.get("more_body", False)
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
                return await receive()

            await self.app(scope, replay, send_wrapper)
        finally:
            elapsed = time.perf_counter() - t0
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            metrics.add_metric(name=API_REQUESTS_TOTAL, unit="Count", value=1)
            metrics.add_metric(name=API_REQUEST_DURATION_SECONDS, unit="Seconds", value=round(elapsed, 6))
            if status >= 500:
                metrics.add_metric(name=API_REQUESTS_ERRORS_TOTAL, unit="Count", value=1)
            logger.info(
                "request",
                extra={
                    "method": scope.get("method"),
                    "route": path,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                },
            )
            if self.flush_metrics:
                metrics.flush_metrics()


async def _send_too_large(send: Send, limit: int) -> None:
    import json

    body = json.dumps(
        problem(413, "Payload too large", f"the body is larger than {limit} bytes", code="payload-too-large")
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


# ------------------------------------------------------------------------- auth
class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self.mode = settings.auth_mode
        self._by_digest = {d.lower(): user for user, d in settings.api_keys.items()}

    def __call__(self, request: Request, x_api_key: Annotated[str | None, Header()] = None) -> str:
        if self.mode == "api_gateway":
            return self._from_gateway(request)
        if not x_api_key:
            raise AuthError(401, "missing API key: send it in the x-api-key header")
        d = hashlib.sha256(x_api_key.encode()).hexdigest()
        for known, user in self._by_digest.items():
            if hmac.compare_digest(known, d):
                return user
        raise AuthError(403, "invalid API key")

    @staticmethod
    def _from_gateway(request: Request) -> str:
        ctx = (request.scope.get("aws.event") or {}).get("requestContext") or {}
        key_id = (ctx.get("identity") or {}).get("apiKeyId")  # REST API with a usage plan
        if key_id:
            return str(key_id)
        auth = ctx.get("authorizer") or {}
        user = (auth.get("lambda") or {}).get("user_id") or ((auth.get("jwt") or {}).get("claims") or {}).get("sub")
        if user:
            return str(user)
        raise AuthError(401, "missing API key: send it in the x-api-key header")


# The OpenAPI document's security scheme; a missing key is the Authenticator's 401, not FastAPI's.
API_KEY = APIKeyHeader(
    name="x-api-key",
    scheme_name="ApiKey",
    auto_error=False,
    description="The API key (missing: 401, not valid: 403). Behind API Gateway, the gateway checks it.",
)


async def current_user(request: Request, x_api_key: Annotated[str | None, Security(API_KEY)] = None) -> str:
    """The caller's user id, from the API key (never from the body). ``async``: FastAPI runs
    a plain ``def`` dependency in a worker thread, per request."""
    auth: Authenticator = request.app.state.authenticator
    return auth(request, x_api_key)


User = Annotated[str, Depends(current_user)]


async def docs_user(
    request: Request,
    x_api_key: Annotated[str | None, Header()] = None,
    api_key: Annotated[str | None, Query(include_in_schema=False)] = None,
) -> str:
    """For /docs and /openapi.json only: the key may also come as ``?api_key=`` so that a
    browser can open the docs (the operations manual: API docs need an API key)."""
    auth: Authenticator = request.app.state.authenticator
    return auth(request, x_api_key or api_key)


DocsUser = Annotated[str, Depends(docs_user)]


def base_path(request: Request) -> str:
    """The prefix clients put before the app's paths: API Gateway's stage (``/v1``) or a
    custom domain's base path, which Mangum strips from ``event["path"]``; empty locally."""
    event = request.scope.get("aws.event") or {}
    outer = (event.get("requestContext") or {}).get("path") or ""
    inner = event.get("path") or ""
    if inner and outer.endswith(inner):
        return outer[: len(outer) - len(inner)].rstrip("/")
    return request.scope.get("root_path", "").rstrip("/")


def hash_key(key: str) -> str:
    """The digest stored in SMARTGRID_API_KEYS for a key."""
    return hashlib.sha256(key.encode()).hexdigest()


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


def item_problem(error: DataValidationError | ForecastUnavailableError, prefix: str) -> dict[str, Any]:
    if isinstance(error, DataValidationError):
        return data_problem(error, prefix)
    return problem(503, "Service unavailable", str(error), code="dependency-unavailable")


def _outcome_json(o: ItemOutcome, prefix: str) -> dict[str, Any]:
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


# ------------------------------------------------------------------------- the contract
# The error responses each operation documents (the 4XX/5XX catch-alls cover the rest: 400
# malformed JSON, 405, 500). Every one is a problem-details body (``contract`` below).
PROBLEM_STATUSES = {
    401: "The x-api-key header is missing",
    403: "The API key is not valid (or user_id is not the key's user)",
    404: "No such prediction for this API key",
    409: "A request with this Idempotency-Key is still being processed",
    413: "The body is larger than the limit (MAX_BODY_BYTES)",
    422: "The request is invalid; errors[] names each field (idempotency-key-reused: the key came with another body)",
    503: "A dependency is unavailable and nothing was written; retry after Retry-After seconds",
}
PROBLEM_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"required": True, "schema": {"type": "string"}, "description": "APIKey"}},
    503: {"Retry-After": {"required": True, "schema": {"type": "integer", "minimum": 0}, "description": "seconds"}},
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {
        s: {"model": schemas.ProblemDetails, "description": PROBLEM_STATUSES[s]}
        | ({"headers": PROBLEM_HEADERS[s]} if s in PROBLEM_HEADERS else {})
        for s in statuses
    }


def contract(spec: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """What FastAPI cannot say by itself: error bodies are ``application/problem+json`` (it
    files every response model under application/json), and the batch limit is a setting."""
    problem_ref = {"$ref": "#/components/schemas/ProblemDetails"}
    for operations in spec["paths"].values():
        for operation in operations.values():
            for response in operation.get("responses", {}).values():
                content = response.get("content", {})
                if content.get("application/json", {}).get("schema") == problem_ref:
                    content[PROBLEM_JSON] = content.pop("application/json")
            operation["responses"] = dict(sorted(operation["responses"].items()))  # 401 ... 4XX, 503, 5XX
    requests = spec["components"]["schemas"]["BatchRequest"]["properties"]["requests"]
    requests["maxItems"] = settings.max_batch_size
    return spec


# ------------------------------------------------------------------------- app
def create_app(
    settings: Settings | None = None, service: PredictionService | None = None, flush_metrics: bool = False
) -> FastAPI:
    settings = settings or get_settings()
    svc = service or build_service(settings)
    app = FastAPI(
        docs_url=None,  # served below, behind the API key
        redoc_url=None,
        openapi_url=None,
        title="smartgrid",
        version="1.0.0",
        summary="Day-ahead load forecasts (P10/P50/P90) and anomaly flags for grid operators",
        responses={
            "4XX": {"model": schemas.ProblemDetails, "description": "Problem details naming the field"},
            "5XX": {"model": schemas.ProblemDetails, "description": "Problem details"},
        },
    )
    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = contract(default_openapi(), settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.state.service = svc
    app.state.authenticator = Authenticator(settings)
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_body_bytes, flush_metrics=flush_metrics)
    install_error_handlers(app)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi_json(user: DocsUser) -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request, user: DocsUser, api_key: Annotated[str | None, Query()] = None) -> HTMLResponse:
        spec = f"{base_path(request)}/openapi.json" + (f"?api_key={quote(api_key)}" if api_key else "")
        return get_swagger_ui_html(openapi_url=spec, title="smartgrid API")

    @app.get(
        "/health",
        response_model=schemas.Health,
        tags=["operations"],
        responses={503: {"model": schemas.Health, "description": "Critical: a dependency or the models are down"}},
    )
    async def health() -> JSONResponse:
        """The operations manual's health check; no API key needed. 503 when critical."""
        h = svc.health()
        body = {
            "status": h.status,
            "uptime": h.uptime,
            "models_loaded": h.models_loaded,
            "database": h.database,
            "cache": h.cache,
            "timestamp": h.timestamp,
        }
        return JSONResponse(body, status_code=503 if h.status == "critical" else 200)

    @app.get("/models", response_model=schemas.ModelList, tags=["models"], responses=problem_responses(401, 403))
    async def models(user: User) -> JSONResponse:
        svc.refresh_models()
        body = {"set_id": svc.models.set_id, "models": svc.models.describe()}
        return JSONResponse(body, headers={"Cache-Control": "max-age=3600"})

    @app.post(
        "/predict/single",
        response_model=schemas.Prediction,
        tags=["predictions"],
        responses=problem_responses(401, 403, 409, 413, 422, 503),
    )
    async def predict_single(
        body: schemas.PredictRequest, user: User, idempotency_key: IdempotencyKey = None
    ) -> JSONResponse:
        req_digest = digest(["single", body.model_dump(mode="json")]) if idempotency_key else None
        (outcome,) = svc.predict(user, [_series_input(body)], idempotency_key, req_digest)
        if outcome.error is not None:
            raise outcome.error  # mapped to 422 / 503 by the error handlers
        assert outcome.record is not None
        return JSONResponse(render_prediction(outcome.record))

    @app.post(
        "/predict/batch",
        response_model=schemas.BatchResponse,
        tags=["predictions"],
        responses=problem_responses(401, 403, 409, 413, 422, 503),
    )
    async def predict_batch(
        body: schemas.BatchRequest, user: User, idempotency_key: IdempotencyKey = None
    ) -> JSONResponse:
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
            results[i] = _outcome_json(o, f"requests[{i}]")
        ordered = [results[i] for i in range(len(body.requests))]
        ok = sum(1 for r in ordered if r["status"] == "ok")
        return JSONResponse({"succeeded": ok, "failed": len(ordered) - ok, "results": ordered})

    @app.post(
        "/anomalies/detect",
        response_model=schemas.DetectResponse,
        tags=["anomalies"],
        responses=problem_responses(401, 403, 413, 422, 503),
    )
    async def detect(body: schemas.DetectRequest, user: User) -> JSONResponse:
        return JSONResponse(svc.detect(body.timestamps, body.load, body.threshold))

    @app.post(
        "/actuals",
        response_model=schemas.ActualsResponse,
        tags=["predictions"],
        responses=problem_responses(401, 403, 404, 413, 422, 503),
    )
    async def actuals(body: schemas.ActualsRequest, user: User) -> JSONResponse:
        res = svc.record_actuals(user, body.prediction_id, body.timestamps, body.load)
        return JSONResponse(
            {
                "prediction_id": res.prediction.prediction_id,
                "model": res.prediction.model,
                "model_version": res.prediction.model_version,
                "count": len(res.points),
                "mae": res.mae,
                "points": res.points,
            }
        )

    @app.get(
        "/predictions",
        response_model=schemas.PredictionPage,
        tags=["predictions"],
        responses=problem_responses(401, 403, 422, 503),
    )
    async def predictions(
        user: User,
        user_id: Annotated[str | None, Query(max_length=128, description="must be the API key's user")] = None,
        since: Annotated[str | None, Query(max_length=40, description="ISO 8601; newest first down to this")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: Annotated[str | None, Query(max_length=64, description="next_cursor of the previous page")] = None,
    ) -> JSONResponse:
        if user_id is not None and user_id != user:
            raise AuthError(403, "user_id does not match the API key's user")
        page = svc.list_predictions(user, _since(since), limit, cursor)
        return JSONResponse(
            {"items": [render_prediction(r) for r in page.items], "next_cursor": page.cursor},
        )

    return app
