from __future__ import annotations

import contextlib
import copy
import gzip
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from smartgrid.engine.data import Series, load_series
from smartgrid.engine.features import HolidayCalendar

# Settings are read on first use (once per process, as on Lambda): set the environment
# before any test asks for them.
# One LightGBM thread per test worker: pytest runs two workers on two cores (see config.py).
os.environ.setdefault("SMARTGRID_TRAIN_THREADS", "1")

# The API under test: fake AWS credentials (moto), two users' API keys, no X-Ray daemon.
API_KEYS = {"alice": "alice-key-0123456789", "bob": "bob-key-0123456789"}
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "SMARTGRID_AUTH_MODE": "keys",
        "SMARTGRID_API_KEYS": json.dumps({u: hashlib.sha256(k.encode()).hexdigest() for u, k in API_KEYS.items()}),
        "POWERTOOLS_SERVICE_NAME": "smartgrid",
        "POWERTOOLS_METRICS_NAMESPACE": "Smartgrid",
        "POWERTOOLS_TRACE_DISABLED": "true",
    }
)
os.environ.pop("AWS_ENDPOINT_URL", None)

DATA = Path(__file__).parent / "data"


def write_csv(path: Path, rows: list[tuple], header: str = "timestamp,load") -> Path:
    text = header + "\n" + "\n".join(",".join(str(v) for v in r) for r in rows) + "\n"
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def series_to_csv(series: Series, path: Path) -> Path:
    ts = series.timestamps
    if series.temperature is None:
        rows = [(str(t), f"{v:.3f}") for t, v in zip(ts, series.load, strict=True) if np.isfinite(v)]
        return write_csv(path, rows)
    rows = [
        (str(t), f"{v:.3f}", f"{c:.2f}")
        for t, v, c in zip(ts, series.load, series.temperature, strict=True)
        if np.isfinite(v)
    ]
    return write_csv(path, rows, "timestamp,load,temperature")


def upsample(series: Series, minutes: int) -> Series:
    """Linear interpolation of an hourly series to a finer grid (for resolution tests)."""
    k = series.step_s // (minutes * 60)
    n = (series.n - 1) * k + 1
    x = np.arange(n) / k
    base = np.arange(series.n)
    temp = None if series.temperature is None else np.interp(x, base, series.temperature)
    return Series(series.start, minutes * 60, np.interp(x, base, series.load), temp)


@pytest.fixture(scope="session")
def gefcom() -> Series:
    return load_series(DATA / "gefcom_150d.csv.gz")


@pytest.fixture(scope="session")
def pjme() -> Series:
    return load_series(DATA / "pjme_150d.csv.gz")


@pytest.fixture(scope="session")
def calendar() -> HolidayCalendar:
    return HolidayCalendar("US")


# ------------------------------------------------------------------ API fixtures
EXAMPLE = Path(__file__).parent.parent / "examples" / "predict_single.json"


@pytest.fixture(autouse=True)
def _reset_powertools() -> None:
    """Powertools keeps state in module globals: metrics buffer, cold-start flag, correlation id."""
    from aws_lambda_powertools.metrics.provider import cold_start

    from smartgrid.observability import logger, metrics

    metrics.clear_metrics()
    cold_start.reset_cold_start_flag()
    logger.set_correlation_id(None)


@pytest.fixture
def aws():
    """moto's in-process AWS, with the tables created from the code's own definitions."""
    from moto import mock_aws

    from smartgrid.config import get_settings
    from smartgrid.store.tables import create_tables

    with mock_aws():
        create_tables(get_settings())
        yield


def reset_service(svc: Any) -> None:
    """A long-lived app's service as a fresh container has it: the real clock, and nothing of
    an earlier test's in-memory cache tier (it outlives a test's moto tables) or cache outage."""
    from smartgrid.domain.predictions import utcnow

    svc.clock = utcnow
    svc._memory.clear()
    svc._cache_down_until = 0.0


@pytest.fixture
def lambda_handler(aws):
    """The real Lambda entry point (module-level app, models loaded once per process)."""
    from smartgrid.api import handler as module

    reset_service(module.app.state.service)
    return module.handler


@pytest.fixture
def example_body() -> dict:
    return json.loads(EXAMPLE.read_text())


def vary(body: dict, k: float) -> dict:
    """Same shape, other numbers: another forecast (a cache miss)."""
    b = copy.deepcopy(body)
    b["history"]["load"][-1] = round(b["history"]["load"][-1] * (1 + k), 3)
    return b


# ------------------------------------------------------------------ uv (for other projects' locks and tools)
def uv_command(*args: str) -> list[str]:
    """``uv *args``: the uv that runs these tests (``uv run`` names itself in UV), else the one on PATH."""
    uv = os.environ.get("UV") or shutil.which("uv")
    assert uv, "uv is needed (to export the locks, to run checkov from tools/scanners)"
    return [uv, *args]


def uv_env() -> dict[str, str]:
    """This environment without VIRTUAL_ENV (this test run's venv): uv then uses the project it
    is given (--project) with that project's own environment."""
    return {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}


# ------------------------------------------------------------------ Lambda layers
@pytest.fixture(scope="session")
def built_layers(tmp_path_factory) -> tuple[Path, dict]:
    """The layers, built once per test worker by layers/build.py (no Docker; pip needs the
    package registry). Modules that use it share one xdist group, so one worker builds."""
    import subprocess
    import sys

    out_dir = tmp_path_factory.mktemp("layers")
    root = Path(__file__).parent.parent
    out = subprocess.run(
        [sys.executable, str(root / "layers" / "build.py"), "--out", str(out_dir)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out_dir, json.loads(out.stdout)


# ------------------------------------------------------------------ jobs
@dataclass
class Stack:
    """The local stack as the CDK app makes it (tables, buckets), with the L1 operations
    topic's messages arriving in an SQS queue (moto's alarm actions do not publish, but
    sns.publish to a topic with an SQS subscription delivers)."""

    settings: Any
    queue: str

    @property
    def bucket(self) -> str:
        return str(self.settings.meter_data_bucket)


@pytest.fixture
def stack_with_inbox(aws, monkeypatch) -> Iterator[Stack]:
    import boto3

    from smartgrid.config import get_settings
    from smartgrid.store.aws import reset_clients
    from smartgrid.store.provision import provision

    sns, sqs = boto3.client("sns"), boto3.client("sqs")
    topic = sns.create_topic(Name="smartgrid-l1")["TopicArn"]
    queue = sqs.create_queue(QueueName="ops-inbox")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    monkeypatch.setenv("SMARTGRID_ALERT_TOPICS", json.dumps({"L1": topic}))
    get_settings.cache_clear()
    reset_clients()
    provision(get_settings())
    yield Stack(get_settings(), queue)
    get_settings.cache_clear()
    reset_clients()


@pytest.fixture
def registry_settings(aws, tmp_path, monkeypatch):
    """The provisioned stack for the model registry: API containers check the champion pointer
    on every request, downloaded sets go to tmp_path, and every registry action happens one
    second after the previous one (distinct set ids and decision keys)."""
    from datetime import UTC, datetime, timedelta

    from smartgrid.config import get_settings
    from smartgrid.domain import champion as reg
    from smartgrid.store.aws import reset_clients
    from smartgrid.store.provision import provision

    monkeypatch.setenv("SMARTGRID_MODEL_REFRESH_S", "0")
    monkeypatch.setenv("SMARTGRID_MODEL_CACHE_DIR", str(tmp_path / "cache"))
    get_settings.cache_clear()
    reset_clients()
    s = get_settings()
    provision(s)
    clock = iter(datetime(2026, 12, 1, tzinfo=UTC) + timedelta(seconds=i) for i in range(10_000))
    monkeypatch.setattr(reg, "utcnow", lambda: next(clock))
    yield s
    get_settings.cache_clear()
    reset_clients()


# ------------------------------------------------------------------ a served API over HTTP
def serve_env() -> dict[str, str]:
    """The caller's environment without the tests' AWS/SMARTGRID settings (serve sets its own)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("SMARTGRID_", "AWS_"))}


def http_call(url: str, body: bytes | None = None, key: str | None = None) -> tuple[int, dict]:
    """GET (or POST ``body``) over real HTTP; the status and the JSON body, errors included."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    req.add_header("content-type", "application/json")
    if key:
        req.add_header("x-api-key", key)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@dataclass
class Served:
    base: str  # http://127.0.0.1:PORT
    health: dict  # the first healthy /health answer
    out: str = ""  # what serve printed, once it has stopped


@contextlib.contextmanager
def serving(port: int, key: str, *extra: str, healthy_within_s: float) -> Iterator[Served]:
    """``smartgrid serve`` in a subprocess (the tests' AWS settings left out: it sets its own),
    once /health answers 200; stopped afterwards, its output in ``out``."""
    import subprocess
    import sys
    import time
    import urllib.error

    root = Path(__file__).parent.parent
    proc = subprocess.Popen(
        [sys.executable, "-m", "smartgrid.cli", "serve", "--port", str(port), "--api-key", key, *extra],
        cwd=root,
        env=serve_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    served = Served(f"http://127.0.0.1:{port}", {})
    try:
        deadline = time.monotonic() + healthy_within_s
        while True:
            try:
                status, health = http_call(served.base + "/health")
                if status == 200:
                    served.health = health
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, f"serve did not become healthy within {healthy_within_s:g} s"
            time.sleep(0.25)
        yield served
    finally:
        proc.terminate()
        served.out, _ = proc.communicate(timeout=30)
