"""The health probe job: its handler against a real HTTP server on localhost answering as
/health does (ok, degraded, critical 503, slow, garbage), and against nothing at all."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from smartgrid.cli.main import app
from smartgrid.config import get_settings
from smartgrid.observability import logger
from tests.helpers.apigw import LambdaContext
from tests.helpers.emf import value

SCHEDULER_EVENT = {  # what EventBridge Scheduler sends a Lambda target: the schedule's input
    "version": "0",
    "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
    "detail-type": "Scheduled Event",
    "source": "aws.scheduler",
    "time": "2026-11-28T12:00:00Z",
    "resources": ["arn:aws:scheduler:us-east-1:123456789012:schedule/default/smartgrid-dev-probe"],
    "detail": {},
}


class _Health(BaseHTTPRequestHandler):
    mode = "ok"

    def do_GET(self) -> None:
        if self.path != "/v1/health":
            self.send_response(404)
            self.end_headers()
            return
        mode = type(self).mode
        if mode == "slow":
            time.sleep(1.5)
        if mode == "garbage":
            code, body = 200, b"<html>gateway says hi</html>"
        else:
            status = {"ok": "ok", "slow": "ok", "degraded": "degraded", "critical": "critical"}[mode]
            code = 503 if status == "critical" else 200
            body = json.dumps({"status": status, "uptime": 5, "models_loaded": 3, "database": "connected"}).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None: ...


@pytest.fixture
def api(monkeypatch) -> Iterator[tuple[str, type[_Health]]]:
    handler = type("Health", (_Health,), {"mode": "ok"})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    monkeypatch.setenv("SMARTGRID_API_URL", url)
    get_settings.cache_clear()
    yield url, handler
    server.shutdown()
    server.server_close()
    get_settings.cache_clear()


def _run(capsys, monkeypatch, timeout: float = 5.0) -> tuple[dict, dict, list[dict]]:
    import smartgrid.jobs.probe as job

    monkeypatch.setattr(job, "PROBE_TIMEOUT_S", timeout)
    capsys.readouterr()
    buf = io.StringIO()
    handler = logger.registered_handler
    old = handler.setStream(buf)  # type: ignore[attr-defined]
    try:
        out = job.handler(SCHEDULER_EVENT, LambdaContext())
    finally:
        handler.setStream(old)  # type: ignore[attr-defined]
    (emf,) = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{") and "_aws" in x]
    logs = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert logs[-1]["message"] == "job succeeded"  # the probe ran, whatever the API said
    assert value(emf, "job_succeeded_total") == 1
    # the probe's own line about the API
    return out, emf, [x for x in logs if x["message"] in ("api healthy", "api not ok")]


def test_ok_is_available_with_latency(api, capsys, monkeypatch):
    out, emf, logs = _run(capsys, monkeypatch)
    assert out["available"] is True and out["http_status"] == 200
    assert value(emf, "api_availability") == 1 and 0 < value(emf, "api_probe_latency_seconds") < 5
    (directive,) = emf["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "Smartgrid"
    assert sorted(directive["Dimensions"][0]) == ["job", "service"] and emf["job"] == "health_probe"
    assert logs[-1]["message"] == "api healthy" and logs[-1]["level"] == "INFO"


def test_degraded_is_available_and_logs_the_body(api, capsys, monkeypatch):
    api[1].mode = "degraded"
    out, emf, logs = _run(capsys, monkeypatch)
    assert out["available"] is True and value(emf, "api_availability") == 1
    assert logs[-1]["message"] == "api not ok" and logs[-1]["body"]["status"] == "degraded"


@pytest.mark.parametrize("mode", ["critical", "garbage"])
def test_critical_or_not_health_is_down_and_logged(api, capsys, monkeypatch, mode):
    api[1].mode = mode
    out, emf, logs = _run(capsys, monkeypatch)
    assert out["available"] is False and value(emf, "api_availability") == 0
    assert logs[-1]["level"] == "WARNING" and logs[-1]["body"]
    assert out["http_status"] == (503 if mode == "critical" else 200)


def test_a_slow_api_is_down_after_the_timeout(api, capsys, monkeypatch):
    api[1].mode = "slow"
    t0 = time.perf_counter()
    out, emf, logs = _run(capsys, monkeypatch, timeout=0.3)
    assert time.perf_counter() - t0 < 1.4  # gave up at the timeout, did not wait for the answer
    assert out["available"] is False and out["http_status"] is None
    assert value(emf, "api_availability") == 0 and "api_probe_latency_seconds" not in emf
    assert "timed out" in logs[-1]["error"]


def test_nothing_listening_is_down(monkeypatch, capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("SMARTGRID_API_URL", f"http://127.0.0.1:{port}")
    get_settings.cache_clear()
    try:
        out, emf, logs = _run(capsys, monkeypatch)
    finally:
        get_settings.cache_clear()
    assert out["available"] is False and value(emf, "api_availability") == 0
    assert "refused" in logs[-1]["error"].lower()


def test_the_cli_probes_the_same_way(api):
    runner = CliRunner()
    ok = runner.invoke(app, ["probe", api[0]])
    assert ok.exit_code == 0 and "available" in ok.output
    api[1].mode = "critical"
    down = runner.invoke(app, ["probe", api[0]])
    assert down.exit_code == 1 and "NOT available" in down.output
    bad = runner.invoke(app, ["probe", "ftp://example.com"])
    assert bad.exit_code == 2 and "https://" in bad.output
