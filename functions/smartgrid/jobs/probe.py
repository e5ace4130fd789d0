"""Health probe handler (EventBridge Scheduler, every minute): probes the API's /health and
emits ``api_availability`` (1/0) and ``api_probe_latency_seconds``, which the "API down for
1+ minute" alarm watches; logs the body when the status is not ``ok``."""

from __future__ import annotations

from typing import Any

from smartgrid.catalog import API_AVAILABILITY, API_PROBE_LATENCY_SECONDS, HEALTH_PROBE
from smartgrid.config import get_settings
from smartgrid.domain.probe import ProbeResult, probe
from smartgrid.jobs.runner import job
from smartgrid.observability import logger, metrics

# Below the function's timeout, with room to flush metrics.
PROBE_TIMEOUT_S = min(10.0, HEALTH_PROBE.timeout_s / 2)


def report(result: ProbeResult) -> None:
    metrics.add_metric(name=API_AVAILABILITY, unit="Count", value=1 if result.available else 0)
    if result.http_status is not None:
        metrics.add_metric(name=API_PROBE_LATENCY_SECONDS, unit="Seconds", value=round(result.latency_s, 4))
    fields = {
        "url": result.url,
        "available": result.available,
        "http_status": result.http_status,
        "health_status": result.status,
        "latency_s": round(result.latency_s, 4),
    }
    if result.available and result.status == "ok":
        logger.info("api healthy", extra=fields)
    else:
        logger.warning("api not ok", extra={**fields, "body": result.body, "error": result.error})


@job(HEALTH_PROBE)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    settings = get_settings()
    if not settings.api_url:
        raise RuntimeError("SMARTGRID_API_URL is not set: the probe has no API to call")
    result = probe(settings.api_url, PROBE_TIMEOUT_S)
    report(result)
    return {"available": result.available, "http_status": result.http_status, "latency_s": round(result.latency_s, 4)}
