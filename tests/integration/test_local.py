"""The README's main command end to end: `smartgrid serve` starts the API on an embedded
moto server (every AWS client through AWS_ENDPOINT_URL) and answers real HTTP."""

from __future__ import annotations

import pytest

from smartgrid.cli.serve import free_port
from tests.helpers.paths import EXAMPLE
from tests.helpers.serve import http_call as _call
from tests.helpers.serve import serving

pytestmark = pytest.mark.slow  # starts `smartgrid serve` in a subprocess


def test_serve_runs_the_api_on_an_embedded_emulator():
    port, key = free_port(), "local-test-key-123"
    with serving(port, key, healthy_within_s=120) as served:
        health = served.health
        assert health["status"] == "ok" and health["models_loaded"] == 3 and health["database"] == "connected"

        status, p = _call(served.base + "/predict/single", EXAMPLE.read_bytes(), key)
        assert status == 200, p
        assert p["model_kind"] == "primary" and len(p["forecast"]) == 24
        status, page = _call(served.base + "/predictions", key=key)
        assert status == 200 and page["items"][0]["prediction_id"] == p["prediction_id"]
        status, prob = _call(served.base + "/models")
        assert status == 401 and prob["status"] == 401
    out = served.out
    assert f"x-api-key: {key}" in out  # the ready-to-paste curl command
    assert "curl" in out and f"localhost:{port}" in out
