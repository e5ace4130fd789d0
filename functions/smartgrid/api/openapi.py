"""The OpenAPI contract: the error responses each operation documents (``problem_responses``,
from ``PROBLEM_STATUSES``), the app-wide 4XX/5XX catch-alls, and ``install_contract``, which
patches what FastAPI cannot say by itself into the document the app serves at /openapi.json
(error bodies are ``application/problem+json``; the batch limit is a setting). The responses
themselves are made in ``api/problems.py``."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from smartgrid.api import schemas
from smartgrid.catalog import PROBLEM_JSON
from smartgrid.config import Settings

# The app-wide error responses: every operation documents these catch-alls.
APP_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": schemas.ProblemDetails, "description": "Problem details naming the field"},
    "5XX": {"model": schemas.ProblemDetails, "description": "Problem details"},
}
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
# The headers api/problems.py sends with these statuses (UNAUTHORIZED, SERVICE_UNAVAILABLE).
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


def install_contract(app: FastAPI, settings: Settings) -> None:
    """The app's ``openapi()`` returns FastAPI's document patched by ``contract``, made once."""
    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = contract(default_openapi(), settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
