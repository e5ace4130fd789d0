"""The API's own documentation: /openapi.json and the Swagger UI page at /docs, both behind the
API key (which a browser may pass as ``?api_key=``), and ``base_path``, the stage prefix the page
must put before /openapi.json behind API Gateway."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from smartgrid.api.deps import DocsUser

router = APIRouter()


def base_path(request: Request) -> str:
    """The prefix clients put before the app's paths: API Gateway's stage (``/v1``) or a
    custom domain's base path, which Mangum strips from ``event["path"]``; empty locally."""
    event = request.scope.get("aws.event") or {}
    outer = (event.get("requestContext") or {}).get("path") or ""
    inner = event.get("path") or ""
    if inner and outer.endswith(inner):
        return outer[: len(outer) - len(inner)].rstrip("/")
    return request.scope.get("root_path", "").rstrip("/")


@router.get("/openapi.json", include_in_schema=False)
async def openapi_json(request: Request, user: DocsUser) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get("/docs", include_in_schema=False)
async def docs(request: Request, user: DocsUser, api_key: Annotated[str | None, Query()] = None) -> HTMLResponse:
    spec = f"{base_path(request)}/openapi.json" + (f"?api_key={quote(api_key)}" if api_key else "")
    return get_swagger_ui_html(openapi_url=spec, title="smartgrid API")
