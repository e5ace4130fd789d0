"""`smartgrid serve --aws-endpoint URL`: the API on an AWS emulator that is already running
(here a ThreadedMotoServer this test starts) instead of the embedded one; the tables and
buckets are provisioned there and the predictions are written there."""

from __future__ import annotations

import json
import subprocess
import sys

import boto3
import pytest
from moto.server import ThreadedMotoServer

from smartgrid.cli.serve import free_port
from tests.helpers.paths import EXAMPLE, ROOT
from tests.helpers.serve import http_call as _call
from tests.helpers.serve import serve_env, serving

pytestmark = pytest.mark.slow  # each test starts `smartgrid serve` in a subprocess


@pytest.fixture
def external_moto():
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def test_serve_uses_an_external_emulator(external_moto):
    port, key = free_port(), "local-external-key-123"
    with serving(port, key, "--aws-endpoint", external_moto, healthy_within_s=25) as served:
        status, p = _call(served.base + "/predict/single", EXAMPLE.read_bytes(), key)
        assert status == 200, p
        assert p["model_kind"] == "primary" and len(p["forecast"]) == 24
    out = served.out

    # the tables were made on the external emulator and the prediction was written there
    ddb = boto3.client(
        "dynamodb",
        endpoint_url=external_moto,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
    assert {"smartgrid-predictions", "smartgrid-cache"} <= set(ddb.list_tables()["TableNames"])
    items = ddb.scan(TableName="smartgrid-predictions")["Items"]
    assert p["prediction_id"] in json.dumps(items)
    s3 = boto3.client(
        "s3", endpoint_url=external_moto, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    assert "smartgrid-models" in {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert f"external AWS emulator at {external_moto}" in out  # the startup print says where the data goes
    assert "external emulator keeps running" in out


def test_serve_says_when_nothing_answers_at_the_endpoint():
    dead = f"http://127.0.0.1:{free_port()}"
    res = subprocess.run(
        [sys.executable, "-m", "smartgrid.cli", "serve", "--port", str(free_port()), "--aws-endpoint", dead],
        cwd=ROOT,
        env=serve_env(),
        capture_output=True,
        text=True,
        timeout=25,
        check=False,
    )
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert f"no AWS emulator answers at {dead}" in out
    assert "Traceback" not in out, out  # a message for the user, not a crash
