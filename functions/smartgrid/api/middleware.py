"""The request-context middleware, pure ASGI (no BaseHTTPMiddleware overhead): it gives each
request its correlation id (echoed as ``x-correlation-id``), refuses a body over the size limit
with a 413 before anything parses it, and records the request metrics of
docs/requirements.md#metrics and one access-log line per request (docs/requirements.md#logs)."""

from __future__ import annotations

import json
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from smartgrid.api.problems import PAYLOAD_TOO_LARGE
from smartgrid.catalog import API_REQUEST_DURATION_SECONDS, API_REQUESTS_ERRORS_TOTAL, API_REQUESTS_TOTAL, PROBLEM_JSON
from smartgrid.observability import logger, metrics

# A caller's x-correlation-id is used only if it looks like an id; otherwise API Gateway's request id.
CORRELATION_ID = re.compile(r"^[A-Za-z0-9._:/-]{1,128}$")


class RequestContextMiddleware:
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
    body = json.dumps(PAYLOAD_TOO_LARGE.body(f"the body is larger than {limit} bytes")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": PAYLOAD_TOO_LARGE.status,
            "headers": [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
