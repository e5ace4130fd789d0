"""The health probe: GET the deployed API's /health with a timeout, as a client would.

The API is *available* when /health answers 200 within the timeout (``ok`` or ``degraded``:
degraded still serves, docs/requirements.md#health); a 503 (``critical``), another status, a timeout or a
connection failure is not. The body is kept when the status is not ``ok``, for the log."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from smartgrid.errors import DataValidationError, Problem

MAX_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class ProbeResult:
    url: str
    available: bool
    latency_s: float
    http_status: int | None  # None: no HTTP answer (timeout, refused, DNS)
    status: str | None  # /health's "status" field, when the body had one
    body: Any  # the parsed body, or the text, or the error, when not ok
    error: str | None = None


def health_url(api_url: str) -> str:
    if not api_url.startswith(("https://", "http://")):
        problem = Problem("bad_url", f"the API URL must start with https:// or http://: {api_url!r}", field_name="url")
        raise DataValidationError([problem], source="api_url")
    return api_url.rstrip("/") + "/health"


def probe(api_url: str, timeout_s: float) -> ProbeResult:
    url = health_url(api_url)
    request = urllib.request.Request(url, headers={"accept": "application/json", "user-agent": "smartgrid-probe"})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            code, raw = response.status, response.read(MAX_BODY_BYTES)
    except urllib.error.HTTPError as exc:  # a non-2xx answer: still an answer
        code, raw = exc.code, exc.read(MAX_BODY_BYTES)
    except (OSError, http.client.HTTPException) as exc:  # timeout, refused, DNS, TLS, cut off mid-answer
        error = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
        return ProbeResult(url, False, time.perf_counter() - t0, None, None, None, error=error)
    latency = time.perf_counter() - t0
    try:
        body: Any = json.loads(raw)
    except ValueError:
        body = raw.decode("utf-8", "replace")
    status = body.get("status") if isinstance(body, dict) else None
    available = code == 200 and status in ("ok", "degraded")
    return ProbeResult(url, available, latency, code, status, None if status == "ok" else body)
