"""The fault matrix: AWS failures injected at the transport (``tests/helpers/faults.py``: moto's
``before-send`` handler answers with real AWS error responses, refused connections or
timeouts), jobs SIGKILLed midway against a moto server, duplicate concurrent deliveries and
clock skew. Every test asserts what a client, an operator or a reader observes: status codes,
problem details, /health, what the tables and buckets hold once the fault is lifted.

Scenario: injected fault -> observed outcome

1. predictions table down (refused, read timeout, 500, throttled past the retries) -> 503
   with Retry-After, /health critical, nothing stored; the retry with the key completes.
   Fails mid-batch (later BatchWriteItems refused, or stored with their answers lost) -> 503
   and the batch undone, or (undo refused too) the key's retry completes it exactly. Flaky
   (80% of requests refused) -> every 200's predictions stored, each exactly once. Throttling
   the retries absorb (ProvisionedThroughputExceeded, ThrottlingException, UnprocessedItems)
   -> 200, stored, nothing visible.
2. cache table down (refused, throttled, 503) -> predictions go on (the same forecast,
   stored), /health degraded, the cache left alone for a while.
3. S3 down while the API loads models (SlowDown, 500, refused, timeout) -> the last good set
   keeps serving; a container without models is critical until S3 answers.
4. a damaged ONNX file (truncated in the bucket, on disk, in transit) -> refused by its
   checksum (or by onnxruntime), never served: the old set or the fallback answers.
5. `smartgrid backup` and `smartgrid models publish` SIGKILLed midway (moto server, slow S3)
   -> the backup is listed incomplete and restore uses the complete one; the champion pointer
   and the API's set are unchanged.
6. one ingestion event delivered twice at once (two threads) -> processed once.
7. clock skew: UTC offsets and a DST change -> the UTC forecast; readings from the future ->
   422 naming the field, a meter file rejected naming the rows; small skew accepted.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from smartgrid.catalog import PROBLEM_JSON
from smartgrid.config import BUNDLED_MODEL_DIR
from smartgrid.engine.model_files import BASELINE_FORECAST, LOAD_FORECAST
from tests.helpers.apigw import Client, app_client
from tests.helpers.bodies import vary
from tests.helpers.faults import (
    DYNAMODB_INTERNAL,
    DYNAMODB_UNAVAILABLE,
    REFUSED,
    RESPONSE_LOST,
    S3_INTERNAL,
    SLOW_DOWN,
    THROTTLING,
    THROUGHPUT_EXCEEDED,
    TIMEOUT,
    AwsFaults,
    Call,
    Latency,
    SlowMotoServer,
    Truncated,
    Unprocessed,
)
from tests.helpers.ingestion import put
from tests.helpers.paths import ROOT


@pytest.fixture
def faults():
    with AwsFaults() as f:
        yield f


def stored_ids(user: str = "alice") -> set[str]:
    from smartgrid.store.tables import PredictionItem

    return {p.prediction_id for p in PredictionItem.query(user, consistent_read=True)}


def ids_of(r: Any) -> list[str]:
    body = r.json()
    if "results" in body:
        return [x["prediction"]["prediction_id"] for x in body["results"] if x["status"] == "ok"]
    return [body["prediction_id"]]


def is_503(r: Any) -> bool:
    return (
        r.status == 503
        and r.headers["content-type"].startswith(PROBLEM_JSON)
        and int(r.headers["retry-after"]) > 0
        and r.json()["type"].endswith("dependency-unavailable")
    )


# ============================================================ 1, 2: DynamoDB down, slow, throttled
@pytest.fixture
def api(lambda_handler) -> Client:
    return Client(lambda_handler, "rest")


@pytest.fixture
def service(lambda_handler):
    from smartgrid.api import handler as module

    return module.app.state.service


@pytest.fixture
def tables():
    from smartgrid.config import get_settings

    s = get_settings()
    return s.predictions_table, s.cache_table, s.idempotency_table


@pytest.mark.parametrize(
    "fault", [REFUSED, TIMEOUT, DYNAMODB_INTERNAL, THROUGHPUT_EXCEEDED], ids=lambda f: f.name.replace(" ", "-")
)
def test_predictions_table_down_serves_unstored_is_critical_and_stores_nothing(
    api, example_body, faults, tables, fault
):
    """Forecasts are still served, marked not stored and without an id (nothing acknowledged
    that was not stored); a client that sent an Idempotency-Key asked for a durable record and
    gets a 503 to retry."""
    predictions, _, _ = tables
    rule = faults.dynamodb(fault, predictions)
    single = api.post("/predict/single", example_body)
    batch = api.post("/predict/batch", {"requests": [vary(example_body, 0.1), vary(example_body, 0.2)]})
    keyed = api.post("/predict/single", vary(example_body, 0.3), headers={"Idempotency-Key": "k-1"})
    assert is_503(keyed), keyed.text
    served = [single.json()] + [x["prediction"] for x in batch.json()["results"]]
    assert single.status == batch.status == 200 and len(served) == 3
    for p in served:
        assert p["stored"] is False and p["prediction_id"] is None and len(p["forecast"]) == 24
    health = api.get("/health", user=None)
    assert health.status == 503
    assert health.json()["status"] == "critical" and health.json()["database"] == "disconnected"
    assert health.json()["cache"] == "connected"
    # botocore retried before giving up: each write was attempted 3 times (pynamodb's 1 + 2 retries)
    writes = [c for c in faults.calls("dynamodb", table=predictions) if c.operation == "BatchWriteItem"]
    assert rule.injected == rule.matched and len(writes) >= 3 * 3

    faults.clear()
    assert stored_ids() == set()  # nothing acknowledged, nothing stored
    again = api.post("/predict/single", vary(example_body, 0.3), headers={"Idempotency-Key": "k-1"})
    assert again.status == 200, again.text
    assert stored_ids() == set(ids_of(again))
    assert api.get("/health", user=None).json()["status"] == "ok"


def _puts(c: Call) -> bool:
    """BatchWriteItem calls that put items (predictions, cache entries), not the undo's deletes."""
    requests = (c.body or {}).get("RequestItems", {}).values()
    return c.operation == "BatchWriteItem" and any("PutRequest" in i for items in requests for i in items)


def _deletes(table: str) -> Any:
    def where(c: Call) -> bool:
        items = (c.body or {}).get("RequestItems", {}).get(table, [])
        return c.operation == "BatchWriteItem" and any("DeleteRequest" in i for i in items)

    return where


@pytest.mark.parametrize("fault", [REFUSED, RESPONSE_LOST], ids=["refused", "response-lost"])
def test_a_batch_that_fails_midway_is_undone(api, example_body, faults, tables, fault):
    """30 items: 60 writes (with their cache entries) in three BatchWriteItem calls. The first
    (25 predictions) is stored, the rest fail (``response-lost``: DynamoDB stores them, the
    answers never come back), and so does the write of the predictions alone that follows. The
    request undoes what it wrote and serves the forecasts marked not stored (with an
    Idempotency-Key: 503); nothing is left half-written."""
    body = {"requests": [vary(example_body, 0.01 * i) for i in range(30)]}
    rule = faults.add(fault, "dynamodb", where=_puts, after=1)
    r = api.post("/predict/batch", body)
    assert rule.injected > 0
    assert r.status == 200 and r.json()["succeeded"] == 30, r.text  # served, marked not stored
    assert all(x["prediction"]["stored"] is False for x in r.json()["results"])
    keyed = api.post("/predict/batch", body, headers={"Idempotency-Key": "b-1"})
    assert is_503(keyed) and "nothing was saved" in keyed.json()["detail"], keyed.text
    faults.clear()
    assert stored_ids() == set()


def test_a_batch_whose_undo_fails_too_is_completed_by_the_retry_with_its_key(api, example_body, faults, tables):
    predictions, _, _ = tables
    body = {"requests": [vary(example_body, 0.01 * i) for i in range(30)]}
    faults.add(REFUSED, "dynamodb", where=_puts, after=1)
    faults.add(REFUSED, "dynamodb", where=_deletes(predictions))
    r = api.post("/predict/batch", body, headers={"Idempotency-Key": "batch-9"})
    assert is_503(r) and "retry with the same Idempotency-Key" in r.json()["detail"], r.text
    faults.clear()
    partial = stored_ids()
    assert len(partial) == 25  # the 503 said so: the first call's predictions are stored
    again = api.post("/predict/batch", body, headers={"Idempotency-Key": "batch-9"})
    assert again.status == 200 and again.json()["succeeded"] == 30
    assert stored_ids() == set(ids_of(again)) and partial <= set(ids_of(again))  # overwritten, not duplicated


def test_a_flaky_predictions_table_never_acknowledges_what_it_did_not_store(api, example_body, faults, tables):
    """80% of the requests to the predictions table are refused (at random, fixed seed; with
    botocore's retries about half the calls fail). A client retries every 503 with its
    Idempotency-Key; after two rounds the table recovers."""
    predictions, _, _ = tables
    rule = faults.dynamodb(REFUSED, predictions, rate=0.8, seed=7)
    requests: dict[str, tuple[str, dict]] = {}
    for i in range(5):
        requests[f"single-{i}"] = ("/predict/single", vary(example_body, 0.05 * (i + 1)))
    for i in range(3):
        requests[f"batch-{i}"] = (
            "/predict/batch",
            {"requests": [vary(example_body, 0.3 + 0.01 * (3 * i + j)) for j in range(3)]},
        )
    acknowledged: set[str] = set()
    final: dict[str, list[str]] = {}
    statuses: list[int] = []
    for round_ in range(6):
        if round_ == 2:
            faults.clear()  # the table recovers
        for key, (path, body) in requests.items():
            if key in final:
                continue
            r = api.post(path, body, headers={"Idempotency-Key": key})
            statuses.append(r.status)
            if r.status == 200:
                final[key] = ids_of(r)
                acknowledged |= set(final[key])
            else:
                assert is_503(r), r.text  # never a 500, never a half answer
    assert rule.injected > 0 and statuses.count(503) > 0  # the faults did bite
    assert set(final) == set(requests)
    table = stored_ids()
    assert acknowledged <= table  # every acknowledged prediction is stored ...
    assert table == {i for ids in final.values() for i in ids} and len(table) == 5 + 9  # ... exactly once
    for key, (path, body) in requests.items():  # and the retries replay the same predictions
        assert ids_of(api.post(path, body, headers={"Idempotency-Key": key})) == final[key]


def test_throttling_that_the_retries_absorb_is_invisible(api, example_body, faults, tables, service):
    predictions, cache, idempotency = tables
    faults.dynamodb(THROUGHPUT_EXCEEDED, predictions, operations={"BatchWriteItem"}, times=2)
    cache_read = faults.dynamodb(THROTTLING, cache, operations={"GetItem"}, times=1)
    claim = faults.dynamodb(THROUGHPUT_EXCEEDED, idempotency, operations={"PutItem"}, times=2)
    r = api.post("/predict/single", example_body, headers={"Idempotency-Key": "t-1"})
    assert r.status == 200, r.text
    assert stored_ids() == set(ids_of(r))
    # each throttled call was retried until it went through: the cache read once, the key's claim twice
    assert (cache_read.injected, cache_read.matched) == (1, 2)
    assert (claim.injected, claim.matched) == (2, 3)
    attempts = [c.operation for c in faults.calls("dynamodb", table=predictions)]
    assert attempts.count("BatchWriteItem") == 3  # two throttled, the third stored
    # BatchWriteItem throttled item by item: its items come back unprocessed twice, then go in
    faults.clear()
    faults.add(Unprocessed(frozenset({cache, predictions})), "dynamodb", operations={"BatchWriteItem"}, times=2)
    r2 = api.post("/predict/single", vary(example_body, 0.4))
    assert r2.status == 200 and set(ids_of(r2)) <= stored_ids()
    service._memory.clear()  # another container: answered from the cache table
    r3 = api.post("/predict/single", vary(example_body, 0.4), user="bob")
    assert r3.json()["cached"] is True and r3.json()["forecast"] == r2.json()["forecast"]
    assert api.get("/health", user=None).json()["status"] == "ok"


@pytest.mark.parametrize("fault", [REFUSED, THROTTLING, DYNAMODB_UNAVAILABLE], ids=lambda f: f.name.replace(" ", "-"))
def test_cache_table_down_predictions_go_on_and_health_is_degraded(api, example_body, faults, tables, service, fault):
    _, cache, _ = tables
    reference = api.post("/predict/single", example_body).json()  # computed with the cache well
    service._memory.clear()  # another container
    rule = faults.dynamodb(fault, cache)
    r = api.post("/predict/single", example_body)
    assert rule.injected > 0
    assert r.status == 200 and r.json()["cached"] is False, r.text
    assert r.json()["forecast"] == reference["forecast"] and r.json()["model"] == LOAD_FORECAST
    health = api.get("/health", user=None)
    assert health.status == 200
    assert health.json()["status"] == "degraded" and health.json()["cache"] == "disconnected"
    assert health.json()["database"] == "connected"
    # after the failure the cache is left alone for a while: no call to it at all
    faults.reset_seen()
    r2 = api.post("/predict/batch", {"requests": [vary(example_body, 0.5), vary(example_body, 0.6)]})
    assert r2.status == 200 and r2.json()["succeeded"] == 2
    assert faults.calls("dynamodb", table=cache) == []
    faults.clear()
    assert stored_ids() == {reference["prediction_id"], *ids_of(r), *ids_of(r2)}
    assert api.get("/health", user=None).json()["status"] == "ok"


# ============================================================ 3, 4: models while S3 fails, damaged models
@pytest.fixture
def registry(registry_settings):
    from smartgrid.domain import champion as reg
    from smartgrid.domain.predictions import build_service

    settings = registry_settings
    a = reg.publish(settings, BUNDLED_MODEL_DIR).info.set_id
    svc = build_service(settings)
    return settings, app_client(settings, svc), a


@pytest.mark.parametrize("fault", [SLOW_DOWN, S3_INTERNAL, TIMEOUT], ids=lambda f: f.name.replace(" ", "-"))
def test_s3_down_while_the_api_loads_models_keeps_the_last_good_set(registry, example_body, faults, fault):
    from smartgrid.domain import champion as reg

    settings, api, a = registry
    assert api.post("/predict/single", example_body).json()["model_version"] == a
    b = reg.publish(settings, BUNDLED_MODEL_DIR, reason="a new set").info.set_id
    assert b != a

    pointer = faults.s3(fault, settings.models_bucket)  # the pointer cannot be read
    r = api.post("/predict/single", vary(example_body, 0.1))
    assert r.status == 200 and r.json()["model_version"] == a
    assert api.get("/models").json()["set_id"] == a
    assert pointer.injected >= 2  # botocore retried (the API's quick client: 2 attempts)

    faults.clear()
    objects = faults.s3(fault, settings.models_bucket, key_prefix=f"models/{b}/")  # the pointer reads, the set not
    r = api.post("/predict/single", vary(example_body, 0.2))
    assert r.status == 200 and r.json()["model_version"] == a
    assert objects.injected > 0
    assert not (Path(settings.model_cache_dir) / b).exists()  # nothing half-downloaded

    faults.clear()
    r = api.post("/predict/single", vary(example_body, 0.3))
    assert r.status == 200 and r.json()["model_version"] == b  # S3 is back: the next request swaps


def test_a_container_without_models_is_critical_until_s3_answers(registry_settings, example_body, faults, tmp_path):
    from smartgrid.domain import champion as reg
    from smartgrid.domain.predictions import build_service

    a = reg.publish(registry_settings, BUNDLED_MODEL_DIR).info.set_id
    (tmp_path / "no-models").mkdir()
    settings = registry_settings.model_copy(update={"model_dir": tmp_path / "no-models"})
    api = app_client(settings, build_service(settings))  # no bundled models in this container

    faults.s3(REFUSED, settings.models_bucket)
    health = api.get("/health", user=None)
    assert health.status == 503 and health.json()["status"] == "critical" and health.json()["models_loaded"] == 0
    r = api.post("/predict/single", example_body)
    assert is_503(r), r.text
    from smartgrid.store.tables import PredictionItem

    assert list(PredictionItem.scan()) == []

    faults.clear()
    r = api.post("/predict/single", example_body)
    assert r.status == 200 and r.json()["model_version"] == a and r.json()["model_kind"] == "primary"
    health = api.get("/health", user=None)
    assert health.status == 200 and health.json()["status"] == "ok" and health.json()["models_loaded"] == 3


def _truncate_in_bucket(settings: Any, set_id: str, rewrite_checksums: bool) -> None:
    """Replace the set's primary model with its first half; optionally rewrite the checksums in
    its metadata and set.json to match (so only onnxruntime can tell)."""
    import boto3

    s3 = boto3.client("s3")
    prefix = f"models/{set_id}/"
    onnx = s3.get_object(Bucket=settings.models_bucket, Key=prefix + "load_forecast.onnx")["Body"].read()
    half = onnx[: len(onnx) // 2]
    s3.put_object(Bucket=settings.models_bucket, Key=prefix + "load_forecast.onnx", Body=half)
    if not rewrite_checksums:
        return
    sha = hashlib.sha256(half).hexdigest()
    meta = json.loads(s3.get_object(Bucket=settings.models_bucket, Key=prefix + "load_forecast.json")["Body"].read())
    meta["sha256"] = sha
    meta_bytes = (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode()
    s3.put_object(Bucket=settings.models_bucket, Key=prefix + "load_forecast.json", Body=meta_bytes)
    info = json.loads(s3.get_object(Bucket=settings.models_bucket, Key=prefix + "set.json")["Body"].read())
    info["objects"]["load_forecast.onnx"] = sha
    info["objects"]["load_forecast.json"] = hashlib.sha256(meta_bytes).hexdigest()
    s3.put_object(Bucket=settings.models_bucket, Key=prefix + "set.json", Body=json.dumps(info).encode())


@pytest.mark.parametrize("how", ["truncated-in-bucket", "truncated-checksums-rewritten", "truncated-in-transit"])
def test_a_damaged_model_set_is_never_served(registry, example_body, faults, how):
    from smartgrid.domain import champion as reg

    settings, api, a = registry
    assert api.post("/predict/single", example_body).json()["model_version"] == a
    b = reg.publish(settings, BUNDLED_MODEL_DIR).info.set_id  # the champion from now on
    if how == "truncated-in-transit":
        cut = faults.s3(Truncated(4096), settings.models_bucket, key_prefix=f"models/{b}/load_forecast.onnx")
    else:
        _truncate_in_bucket(settings, b, rewrite_checksums=how == "truncated-checksums-rewritten")
    for k in (0.1, 0.2):  # every request checks the pointer again (SMARTGRID_MODEL_REFRESH_S=0)
        r = api.post("/predict/single", vary(example_body, k))
        assert r.status == 200 and r.json()["model_version"] == a and r.json()["model_kind"] == "primary"
    assert api.get("/models").json()["set_id"] == a
    if how != "truncated-checksums-rewritten":  # refused before anything was written to disk
        assert not (Path(settings.model_cache_dir) / b).exists()
    # (with matching checksums the files are downloaded before onnxruntime refuses them: they stay
    # in the cache directory, never loaded, until a later download of the set replaces them)
    if how == "truncated-in-transit":
        assert cut.injected >= 2  # each request tried again, and was refused again
        faults.clear()  # the bytes arrive whole again: b serves
        assert api.post("/predict/single", vary(example_body, 0.3)).json()["model_version"] == b


@pytest.mark.parametrize("rewrite_checksum", [False, True], ids=["checksum-refuses", "onnxruntime-refuses"])
def test_a_damaged_model_file_on_disk_is_refused_and_the_fallback_serves(aws, example_body, tmp_path, rewrite_checksum):
    import shutil

    from smartgrid.config import get_settings
    from smartgrid.domain.predictions import build_service

    bad = tmp_path / "models"
    shutil.copytree(BUNDLED_MODEL_DIR, bad)
    onnx = bad / "load_forecast.onnx"
    onnx.write_bytes(onnx.read_bytes()[:100_000])
    if rewrite_checksum:
        meta = json.loads((bad / "load_forecast.json").read_text())
        meta["sha256"] = hashlib.sha256(onnx.read_bytes()).hexdigest()
        (bad / "load_forecast.json").write_text(json.dumps(meta))
    settings = get_settings().model_copy(update={"model_dir": bad})
    api = app_client(settings, build_service(settings))
    r = api.post("/predict/single", example_body)
    assert r.status == 200, r.text
    p = r.json()
    assert p["model"] == BASELINE_FORECAST and p["model_kind"] == "fallback"
    assert "load_forecast not loaded" in p["fallback_reason"]
    why = "checksum mismatch" if not rewrite_checksum else "onnxruntime could not load"
    assert why in p["fallback_reason"]
    (primary,) = [m for m in api.get("/models").json()["models"] if m["name"] == LOAD_FORECAST]
    assert primary["loaded"] is False and why in primary["error"]
    health = api.get("/health", user=None).json()
    assert health["status"] == "degraded" and health["models_loaded"] == 2


# ============================================================ 5: jobs killed midway
@pytest.fixture
def moto_server(monkeypatch, tmp_path):
    """A moto server in this process on a free port; this process's settings and clients point
    at it (AWS_ENDPOINT_URL), the stack provisioned as the CDK app makes it."""
    from smartgrid.cli.serve import free_port
    from smartgrid.config import get_settings
    from smartgrid.store.aws import reset_clients
    from smartgrid.store.provision import provision

    server = SlowMotoServer(free_port())
    server.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
    monkeypatch.setenv("SMARTGRID_MODEL_REFRESH_S", "0")
    monkeypatch.setenv("SMARTGRID_MODEL_CACHE_DIR", str(tmp_path / "cache"))
    get_settings.cache_clear()
    reset_clients()
    provision(get_settings())
    try:
        yield server
    finally:
        server.stop()
        get_settings.cache_clear()
        reset_clients()


def _start(*args: str) -> subprocess.Popen:
    """The ``smartgrid`` command (``python -m smartgrid.cli``), as an operator or the job runs it."""
    return subprocess.Popen(
        [sys.executable, "-m", "smartgrid.cli", *args],
        cwd=ROOT,
        env=dict(os.environ),  # AWS_ENDPOINT_URL and the SMARTGRID_* settings of this test
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _kill_when(proc: subprocess.Popen, written: Any, timeout_s: float = 60) -> list[str]:
    """SIGKILL the job as soon as ``written()`` lists something it wrote; what it had written."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = written()
        if found:
            proc.send_signal(signal.SIGKILL)
            out, _ = proc.communicate(timeout=30)
            assert proc.returncode == -signal.SIGKILL, f"the job ended on its own before the kill:\n{out}"
            return list(found)
        assert proc.poll() is None, f"the job ended before writing anything:\n{proc.communicate()[0]}"
        assert time.monotonic() < deadline, "the job wrote nothing in time"
        time.sleep(0.02)


def _keys(bucket: str, prefix: str) -> list[str]:
    from smartgrid.config import get_settings
    from smartgrid.store.aws import client

    out = client("s3", get_settings()).list_objects_v2(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for o in out.get("Contents", [])]


def _cli(*args: str) -> Any:
    from typer.testing import CliRunner

    from smartgrid.cli.main import app

    return CliRunner().invoke(app, list(args))


@pytest.mark.slow  # starts `smartgrid` jobs as subprocesses against a moto server
def test_jobs_killed_midway_leave_no_half_state_for_readers(moto_server, example_body, tmp_path):
    from smartgrid.config import get_settings
    from smartgrid.domain import champion as reg
    from smartgrid.domain.backup import run_backup
    from smartgrid.domain.predictions import build_service

    settings = get_settings()
    a = reg.publish(settings, BUNDLED_MODEL_DIR, reason="first deploy").info.set_id
    champion_before = reg.read_champion(settings)
    api = app_client(settings, build_service(settings))
    first = api.post("/predict/single", example_body)
    assert first.status == 200 and first.json()["model_version"] == a
    complete = run_backup(settings).backup_id

    # -- a backup killed once it has written part of its objects (S3 takes 0.3 s per object)
    time.sleep(max(0.0, 1.05 - (time.time() % 1)))  # the next backup gets the next second's id
    backups = f"/{settings.backups_bucket}/"
    moto_server.delay(lambda method, path: 0.3 if method == "PUT" and path.startswith(backups) else 0)
    job = _start("backup")
    written = _kill_when(job, lambda: [k for k in _keys(settings.backups_bucket, "backups/") if complete not in k])
    moto_server.delay(None)
    killed = written[0].split("/")[1]
    assert killed != complete and not any(k.endswith("manifest.json") for k in written)

    listed = _cli("backups", "list", "--json")
    assert listed.exit_code == 0, listed.output
    status = {b["backup_id"]: b["status"] for b in json.loads(listed.stdout)}
    assert status == {killed: "incomplete", complete: "verified"}
    refused = _cli("backups", "verify", "--backup", killed)
    assert refused.exit_code == 3 and "incomplete" in refused.output
    out = tmp_path / "config.json"
    restored = _cli("restore", "--backup", "latest", "--config", "--config-out", str(out))
    assert restored.exit_code == 0, restored.output
    assert f"restored backup {complete}, verified" in restored.output
    assert json.loads(out.read_text())["predictions_table"] == settings.predictions_table

    # -- a model set publish killed while uploading the set (S3 takes 0.3 s per object)
    sets = f"/{settings.models_bucket}/{reg.SETS_PREFIX}"
    moto_server.delay(lambda method, path: 0.3 if method == "PUT" and path.startswith(sets) else 0)
    job = _start("models", "publish", "--from", str(BUNDLED_MODEL_DIR), "--reason", "killed midway")
    partial = _kill_when(job, lambda: [k for k in _keys(settings.models_bucket, reg.SETS_PREFIX) if a not in k])
    moto_server.delay(None)
    time.sleep(0.4)  # the upload in flight at the kill lands or not; nothing else comes
    orphan = partial[0].split("/")[1]
    assert not any(k.endswith(reg.SET_FILE) for k in _keys(settings.models_bucket, f"models/{orphan}/"))
    assert reg.read_champion(settings) == champion_before  # the pointer never moved
    champion = _cli("models", "champion", "--json")
    assert champion.exit_code == 0 and json.loads(champion.stdout)["champion"]["set_id"] == a
    assert [reg.read_decision(settings, k)["reason"] for k in reg.list_decisions(settings)] == ["first deploy"]
    r = api.post("/predict/single", vary(example_body, 0.1))
    assert r.status == 200 and r.json()["model_version"] == a  # the running API still serves a ...
    fresh = app_client(settings, build_service(settings))  # ... and so does a container started now
    assert fresh.post("/predict/single", vary(example_body, 0.2)).json()["model_version"] == a
    assert fresh.get("/models").json()["set_id"] == a


# ============================================================ 6: the same event twice, at once
def _meter_csv(series: Any, lo_day: int, hi_day: int, spike_at: int | None = None) -> bytes:
    """Days [lo_day, hi_day) of an hourly series as a meter file; a 1.5x spike at ``spike_at``."""
    from smartgrid.engine.data import iso_all

    part = series.slice(lo_day * 24, hi_day * 24)
    load = part.load.copy()
    if spike_at is not None:
        load[spike_at] *= 1.5
    lines = ["timestamp,load"] + [f"{t},{v:.1f}" for t, v in zip(iso_all(part.timestamps), load, strict=True)]
    return ("\n".join(lines) + "\n").encode()


def test_the_same_event_delivered_twice_at_once_is_processed_once(stack_with_inbox, gefcom):
    import boto3

    from smartgrid.domain.predictions import SeriesInput
    from smartgrid.engine.data import iso_all
    from smartgrid.jobs.ingestion import ingestor as cached
    from smartgrid.jobs.ingestion import meter_object
    from smartgrid.store.tables import ActualsItem

    env = stack_with_inbox
    ingestor = cached(env.settings)
    history = gefcom.slice(111 * 24, 139 * 24)
    (made,) = ingestor.service.predict(
        "alice", [SeriesInput(iso_all(history.timestamps), history.load.tolist(), site_id="zone-1")]
    )
    assert made.record is not None
    event = put(env, "incoming/alice/zone-1/week.csv", _meter_csv(gefcom, 132, 140, spike_at=3 * 24 + 10))

    # two invocations of one event (EventBridge delivers at least once), both in flight at once:
    # each claim's conditional write takes 0.3 s, so neither has finished when the other starts
    with AwsFaults(serialize=True) as faults:
        faults.dynamodb(Latency(0.3), env.settings.idempotency_table, operations={"PutItem"})
        start = threading.Barrier(2)
        outcomes: dict[str, Any] = {}

        def deliver(owner: str) -> None:
            start.wait()
            outcomes[owner] = ingestor.ingest(meter_object(event, owner))

        threads = [threading.Thread(target=deliver, args=(f"request-{i}",)) for i in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        claims = [c for c in faults.calls("dynamodb", table=env.settings.idempotency_table) if c.operation == "PutItem"]
    assert len(claims) == 2  # both tried to claim the file
    statuses = sorted(o.status for o in outcomes.values())
    assert statuses[0] == "accepted" and statuses[1] in ("in_progress", "duplicate"), statuses
    s3 = boto3.client("s3")
    accepted = s3.list_objects_v2(Bucket=env.bucket, Prefix="accepted/").get("Contents", [])
    assert len(accepted) == 1  # the readings stored once
    assert ActualsItem.get("alice", made.record.prediction_id).version == 1  # recorded once
    sqs = boto3.client("sqs")
    notices = sqs.receive_message(QueueUrl=env.queue, MaxNumberOfMessages=10).get("Messages", [])
    assert len(notices) == 1  # the anomaly published once
    assert ingestor.ingest(meter_object(event, "request-3")).status == "duplicate"  # a later delivery


# ============================================================ 7: clock skew
def _history_at(body: dict, start: datetime, tz: Any = UTC) -> dict:
    """The example's readings relabelled to start at ``start``, written in ``tz``'s offsets."""
    b = copy.deepcopy(body)
    n = len(b["history"]["timestamps"])
    b["history"]["timestamps"] = [(start + timedelta(hours=i)).astimezone(tz).isoformat() for i in range(n)]
    return b


def test_utc_offsets_and_a_dst_change_give_the_utc_forecast(api, example_body, service, monkeypatch):
    from datetime import timezone
    from zoneinfo import ZoneInfo

    monkeypatch.setattr(service.settings, "cache_ttl_s", 0)  # every forecast computed, none from the cache
    start = datetime(2025, 10, 13, tzinfo=UTC)  # 28 days across the end of US daylight saving (Nov 2)
    utc = _history_at(example_body, start)
    assert utc["history"]["timestamps"][0] == "2025-10-13T00:00:00+00:00"
    plus5 = _history_at(example_body, start, timezone(timedelta(hours=5)))
    new_york = _history_at(example_body, start, ZoneInfo("America/New_York"))
    offsets = {t[-6:] for t in new_york["history"]["timestamps"]}
    assert offsets == {"-04:00", "-05:00"}  # the local clock goes back an hour in the middle
    expected = api.post("/predict/single", utc)
    assert expected.status == 200, expected.text
    for body in (plus5, new_york):
        r = api.post("/predict/single", body)
        assert r.status == 200 and r.json()["cached"] is False, r.text
        assert r.json()["forecast"] == expected.json()["forecast"]
        assert r.json()["forecast"][0]["timestamp"] == "2025-11-10T00:00:00Z"
    # the same local times without their offsets read as UTC: the repeated hour is refused
    naive = copy.deepcopy(new_york)
    naive["history"]["timestamps"] = [t[:-6] for t in new_york["history"]["timestamps"]]
    r = api.post("/predict/single", naive)
    assert r.status == 422 and r.json()["errors"][0]["code"] == "duplicate_timestamp"


def test_readings_from_the_future_are_refused_naming_the_field(api, example_body, service, monkeypatch):
    from smartgrid.config import get_settings

    assert get_settings().max_clock_skew_s == 900
    last = datetime(2006, 5, 30, 23, tzinfo=UTC)  # the example's last reading
    assert example_body["history"]["timestamps"][-1] == "2006-05-30T23:00:00Z"
    earlier = copy.deepcopy(example_body)  # the same history a day earlier: all in the past
    for k in ("timestamps", "load", "temperature"):
        earlier["history"][k] = earlier["history"][k][:-24]

    monkeypatch.setattr(service, "clock", lambda: last - timedelta(minutes=20))  # the last reading: 20 min ahead
    r = api.post("/predict/single", example_body)
    assert r.status == 422 and r.headers["content-type"].startswith(PROBLEM_JSON), r.text
    (err,) = r.json()["errors"]
    assert err["field"] == "history.timestamps[671]" and err["code"] == "future_timestamp"
    assert "1200 s ahead of the server clock 2006-05-30T22:40:00Z" in err["message"]
    batch = api.post("/predict/batch", {"requests": [earlier, example_body]})
    assert batch.status == 200 and batch.json()["succeeded"] == 1
    bad = batch.json()["results"][1]["error"]
    assert bad["status"] == 422 and bad["errors"][0]["field"] == "requests[1].history.timestamps[671]"
    h = example_body["history"]
    detect = api.post("/anomalies/detect", {"timestamps": h["timestamps"], "load": h["load"]})
    assert detect.status == 422 and detect.json()["errors"][0]["field"] == "timestamps[671]"
    assert stored_ids() == set(ids_of(batch))  # nothing stored for the refused items

    monkeypatch.setattr(service, "clock", lambda: last - timedelta(minutes=10))  # within the tolerance
    ok = api.post("/predict/single", example_body)
    assert ok.status == 200, ok.text
    assert api.post("/anomalies/detect", {"timestamps": h["timestamps"], "load": h["load"]}).status == 200

    # actuals of the forecast day: only the hours that have happened (give or take 15 minutes)
    pid, steps = ok.json()["prediction_id"], [p["timestamp"] for p in ok.json()["forecast"]]
    monkeypatch.setattr(service, "clock", lambda: datetime(2006, 5, 31, 5, 50, tzinfo=UTC))
    r = api.post("/actuals", {"prediction_id": pid, "timestamps": steps[:9], "load": [3000.0] * 9})
    assert r.status == 422
    assert [e["field"] for e in r.json()["errors"]] == ["timestamps[7]"]  # 07:00 onwards; 06:00 is 10 min ahead
    assert r.json()["errors"][0]["rows"] == [7, 8]
    r = api.post("/actuals", {"prediction_id": pid, "timestamps": steps[:7], "load": [3000.0] * 7})
    assert r.status == 200 and r.json()["count"] == 7


def test_a_meter_file_from_the_future_is_rejected_naming_the_rows(stack_with_inbox, gefcom, monkeypatch):
    import boto3

    from smartgrid.jobs.ingestion import ingestor as cached
    from smartgrid.jobs.ingestion import meter_object

    env = stack_with_inbox
    ingestor = cached(env.settings)
    body = _meter_csv(gefcom, 132, 134)  # 48 hourly readings, 2006-05-13 and 14
    last = datetime(2006, 5, 14, 23, tzinfo=UTC)
    monkeypatch.setattr(ingestor, "clock", lambda: last - timedelta(hours=2, minutes=30))  # rows 46-48 ahead
    key = "incoming/alice/zone-1/skewed.csv"
    out = ingestor.ingest(meter_object(put(env, key, body)))
    assert out.status == "rejected"
    (problem,) = out.problems
    assert problem.code == "future_timestamp" and problem.rows == (46, 47, 48)
    assert "rows 46, 47, 48" in problem.message
    s3 = boto3.client("s3")
    report = json.loads(s3.get_object(Bucket=env.bucket, Key=f"rejected/{key}.report.json")["Body"].read())
    assert report["problems"][0]["rows"] == [46, 47, 48] and report["problems"][0]["code"] == "future_timestamp"

    monkeypatch.setattr(ingestor, "clock", lambda: last - timedelta(minutes=10))  # within the tolerance
    again = ingestor.ingest(meter_object(put(env, "incoming/alice/zone-1/fine.csv.gz", gzip.compress(body))))
    assert again.status == "accepted" and again.readings == 48
