"""Problem details (RFC 9457, ``application/problem+json``): the builders of every error body the
API sends, the table that maps each typed error (``smartgrid.errors``) to its status, title,
problem type and headers, and ``add_exception_handlers``, which installs that table on the app
(the shape of developmentseed/titiler's ``core/errors.py``: a ``DEFAULT_STATUS_CODES`` dict and
one function that installs it). Every error body names the field it is about."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from smartgrid.api.schemas import TIMESTAMP_PATTERN
from smartgrid.catalog import PROBLEM_BASE, PROBLEM_JSON
from smartgrid.errors import (
    MAX_PROBLEMS_SHOWN,
    AuthError,
    ConflictError,
    DataValidationError,
    DependencyUnavailableError,
    ForecastUnavailableError,
    NotFoundError,
)
from smartgrid.observability import logger


# ------------------------------------------------------------------------- bodies
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


@dataclass(frozen=True)
class ErrorResponse:
    """One row of the table: what an error becomes on the wire. ``code`` is the problem type
    after ``PROBLEM_BASE`` (None: the title, lower case, hyphenated)."""

    status: int
    title: str
    code: str | None = None
    headers: Mapping[str, str] | None = None

    def body(self, detail: str, errors: list[dict[str, Any]] | None = None, code: str | None = None) -> dict[str, Any]:
        return problem(self.status, self.title, detail, errors, code or self.code)

    def response(
        self, detail: str, errors: list[dict[str, Any]] | None = None, code: str | None = None
    ) -> JSONResponse:
        return respond(self.status, self.body(detail, errors, code), self.headers)


def respond(status: int, body: dict[str, Any], headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


# ------------------------------------------------------------------------- the table
BAD_JSON = ErrorResponse(400, "Malformed JSON", "bad-json")
BAD_BODY = ErrorResponse(400, "Bad request", "bad-body")  # a direct invoke's base64 body that is not base64
UNAUTHORIZED = ErrorResponse(401, "Unauthorized", headers={"WWW-Authenticate": "APIKey"})  # RFC 9110: names the scheme
FORBIDDEN = ErrorResponse(403, "Forbidden")
NOT_FOUND = ErrorResponse(404, "Not found")
CONFLICT = ErrorResponse(409, "Conflict")
PAYLOAD_TOO_LARGE = ErrorResponse(413, "Payload too large", "payload-too-large")
INVALID_REQUEST = ErrorResponse(422, "Invalid request", "invalid-request")
INVALID_DATA = ErrorResponse(422, "Invalid data", "invalid-data")
SERVICE_UNAVAILABLE = ErrorResponse(503, "Service unavailable", "dependency-unavailable", {"Retry-After": "5"})
INTERNAL_ERROR = ErrorResponse(500, "Internal error")
HTTP_ERROR = ErrorResponse(500, "Error")  # a routing error of another status: that status, this title

# Exception class -> its response. Starlette picks the entry of the nearest class in the
# exception's MRO (a PartialWriteError is a DependencyUnavailableError: 503).
DEFAULT_STATUS_CODES: dict[type[Exception], ErrorResponse] = {
    RequestValidationError: INVALID_REQUEST,  # BAD_JSON when the body is not JSON
    DataValidationError: INVALID_DATA,
    AuthError: FORBIDDEN,  # AUTH_ERRORS by the error's status
    NotFoundError: NOT_FOUND,
    ConflictError: CONFLICT,  # CONFLICT_ERRORS by the error's code; the problem type is the code
    DependencyUnavailableError: SERVICE_UNAVAILABLE,
    ForecastUnavailableError: SERVICE_UNAVAILABLE,
    StarletteHTTPException: HTTP_ERROR,  # routing (404, 405): HTTP_ERRORS by the exception's status
    Exception: INTERNAL_ERROR,
}
# Where the error carries what picks its row.
AUTH_ERRORS: dict[int, ErrorResponse] = {401: UNAUTHORIZED, 403: FORBIDDEN}  # missing key, wrong key
CONFLICT_ERRORS: dict[str, ErrorResponse] = {"idempotency_key_reused": replace(CONFLICT, status=422)}
HTTP_ERRORS: dict[int, ErrorResponse] = {
    404: NOT_FOUND,
    405: ErrorResponse(405, "Method not allowed"),
    413: PAYLOAD_TOO_LARGE,
}
# ConflictError codes that are about the Idempotency-Key header: the body names it as the field.
IDEMPOTENCY_KEY_CODES = ("idempotency_key_reused", "request_in_progress")


# ------------------------------------------------------------------------- field errors
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


def data_problem(exc: DataValidationError, prefix: str) -> dict[str, Any]:
    errors = _field_errors(exc, prefix)
    first = errors[0]["message"] if errors else str(exc)
    more = f" (and {len(exc.problems) - 1} more)" if len(exc.problems) > 1 else ""
    return INVALID_DATA.body(f"{first}{more}", errors)


def item_problem(error: DataValidationError | ForecastUnavailableError, prefix: str) -> dict[str, Any]:
    """The error body of one item of a batch (``prefix`` is ``requests[i]``)."""
    if isinstance(error, DataValidationError):
        return data_problem(error, prefix)
    return SERVICE_UNAVAILABLE.body(str(error))


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
            return BAD_JSON.status, BAD_JSON.body(f"the body is not valid JSON: {ctx.get('error', 'parse error')}")
        field = _loc(loc)
        if prefix:
            rest = field.removeprefix("body").removeprefix(".")
            field = f"{prefix}.{rest}" if rest else prefix
        msg = e.get("msg", "invalid")
        if e.get("type") == "extra_forbidden":
            msg = "unknown field"
        elif e.get("type") == "missing" and loc == ("body",):
            msg = "a JSON body is required"
        elif e.get("type") == "string_pattern_mismatch" and (e.get("ctx") or {}).get("pattern") == TIMESTAMP_PATTERN:
            msg = "not an ISO 8601 time from 1900 to 2199 (e.g. 2026-11-27T23:00:00Z)"
        fields.append({"field": field or None, "code": e.get("type", "invalid"), "message": msg, "rows": []})
    detail = "; ".join(f"{f['field']}: {f['message']}" for f in fields[:5])
    if len(errors) > 5:
        detail += f" (and {len(errors) - 5} more)"
    return INVALID_REQUEST.status, INVALID_REQUEST.body(detail, fields)


# ------------------------------------------------------------------------- handlers
Handler = Callable[[Request, Any], Awaitable[JSONResponse]]


def exception_handler_factory(row: ErrorResponse) -> Handler:
    """The handler of a class whose every error gets ``row``, with the error's message as detail."""

    async def handler(request: Request, exc: Exception) -> JSONResponse:
        return row.response(str(exc))

    return handler


async def _request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    status, body = validation_problem(list(exc.errors()))
    return respond(status, body)


async def _data(request: Request, exc: DataValidationError) -> JSONResponse:
    return respond(INVALID_DATA.status, data_problem(exc, ""))


async def _auth(request: Request, exc: AuthError) -> JSONResponse:
    row = AUTH_ERRORS.get(exc.status) or replace(FORBIDDEN, status=exc.status)
    return row.response(str(exc))


async def _conflict(request: Request, exc: ConflictError) -> JSONResponse:
    row = CONFLICT_ERRORS.get(exc.code, CONFLICT)
    field = {"field": "header.Idempotency-Key", "code": exc.code, "message": str(exc), "rows": []}
    errors = [field] if exc.code in IDEMPOTENCY_KEY_CODES else None
    return row.response(str(exc), errors, code=exc.code.replace("_", "-"))


async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    row = HTTP_ERRORS.get(exc.status_code) or replace(HTTP_ERROR, status=exc.status_code)
    return respond(row.status, row.body(str(exc.detail)), exc.headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error")
    return INTERNAL_ERROR.response("an unexpected error occurred; it was logged")


# The classes whose body is more than the message, or whose row the error picks.
_HANDLERS: dict[type[Exception], Handler] = {
    RequestValidationError: _request_validation,
    DataValidationError: _data,
    AuthError: _auth,
    ConflictError: _conflict,
    StarletteHTTPException: _http,
    Exception: _unexpected,
}


def add_exception_handlers(app: FastAPI) -> None:
    """Install the table: the one place where errors become HTTP responses."""
    for exc_class, row in DEFAULT_STATUS_CODES.items():
        app.add_exception_handler(exc_class, _HANDLERS.get(exc_class) or exception_handler_factory(row))
