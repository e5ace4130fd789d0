"""The README's main command end to end: `smartgrid serve` starts the API on an embedded
moto server (every AWS client through AWS_ENDPOINT_URL) and answers real HTTP."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from smartgrid.local import free_port

from .conftest import http_call as _call
from .conftest import serve_env

ROOT = Path(__file__).parent.parent


def test_serve_runs_the_api_on_an_embedded_emulator():
    port, key = free_port(), "local-test-key-123"
    env = serve_env()
    proc = subprocess.Popen(
        [sys.executable, "-m", "smartgrid.cli", "serve", "--port", str(port), "--api-key", key],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                status, health = _call(base + "/health")
                if status == 200:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.time() < deadline, "serve did not become healthy"
            time.sleep(0.5)
        assert health["status"] == "ok" and health["models_loaded"] == 3 and health["database"] == "connected"

        status, p = _call(base + "/predict/single", (ROOT / "examples" / "predict_single.json").read_bytes(), key)
        assert status == 200, p
        assert p["model_kind"] == "primary" and len(p["forecast"]) == 24
        status, page = _call(base + "/predictions", key=key)
        assert status == 200 and page["items"][0]["prediction_id"] == p["prediction_id"]
        status, prob = _call(base + "/models")
        assert status == 401 and prob["status"] == 401
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert f"x-api-key: {key}" in out  # the ready-to-paste curl command
    assert "curl" in out and f"localhost:{port}" in out
