"""The model registry in S3 (moto): publishing a set and the champion pointer, a crash
midway leaving the champion serving, rollback, the CLI, and a running API picking up a
newly promoted set (and surviving a pointer it cannot read)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import boto3
import pytest
from typer.testing import CliRunner

from smartgrid.cli.main import app as cli_app
from smartgrid.config import BUNDLED_MODEL_DIR, Settings
from smartgrid.domain import champion as reg
from smartgrid.engine.model_files import BASELINE_FORECAST, MODEL_NAMES, ModelMetadata, read_model_bytes, save_model
from smartgrid.errors import ConflictError, DependencyUnavailableError, ModelIntegrityError, NotFoundError
from smartgrid.store import models_bucket as registry_store
from smartgrid.store.aws import StoredObject
from tests.helpers.apigw import app_client

runner = CliRunner()


@pytest.fixture
def settings(registry_settings) -> Settings:
    return registry_settings  # tests/conftest.py


def variant(tmp_path: Path, tag: str) -> Path:
    """The bundled models with a different (equivalent) fallback ONNX file: another set."""
    import onnx

    d = tmp_path / f"models-{tag}"
    shutil.copytree(BUNDLED_MODEL_DIR, d)
    meta, data = read_model_bytes(d, BASELINE_FORECAST)
    model = onnx.load_from_string(data)
    model.doc_string = f"variant {tag}"
    save_model(d, ModelMetadata(**{**meta.__dict__, "version": f"v-{tag}"}), model.SerializeToString())
    return d


def keys(s: Settings, prefix: str = "") -> list[str]:
    return list(registry_store.list_keys(s, prefix))


def pointer(s: Settings) -> dict | None:
    obj = registry_store.get(s, reg.CHAMPION_KEY)
    return None if obj is None else json.loads(obj.data)


# ------------------------------------------------------------------------- publish, champion
def test_publish_uploads_a_verified_set_and_makes_it_champion(settings):
    assert reg.read_champion(settings) is None
    p = reg.publish(settings, BUNDLED_MODEL_DIR, reason="first deploy")
    set_id = p.info.set_id
    assert reg.SET_ID_RE.match(set_id)
    assert pointer(settings) == {
        "set_id": set_id,
        "previous_set_id": None,
        "promoted_at": p.champion.promoted_at,
        "reason": "first deploy",
    }
    prefix = f"models/{set_id}/"
    assert sorted(keys(settings, prefix)) == sorted(
        [prefix + "set.json"] + [f"{prefix}{n}.{ext}" for n in MODEL_NAMES for ext in ("onnx", "json")]
    )
    info = reg.read_set_info(settings, set_id)
    assert info.source.startswith("publish from") and info.training_window["start"].startswith("2002")
    assert info.mape is not None and 0 < info.mape < 10  # the bundled model's holdout MAPE
    # one set id for the three models: their metadata carry it as their version
    for name in MODEL_NAMES:
        meta = json.loads(registry_store.get(settings, f"{prefix}{name}.json").data)  # type: ignore[union-attr]
        assert meta["version"] == set_id
        assert meta["sha256"] == read_model_bytes(BUNDLED_MODEL_DIR, name)[0].sha256
        assert info.models[name]["version"] == read_model_bytes(BUNDLED_MODEL_DIR, name)[0].version
    (decision,) = reg.list_decisions(settings)
    d = reg.read_decision(settings, decision)
    assert d["kind"] == "publish" and d["set_id"] == set_id and d["promoted"] is True


def test_publish_refuses_a_damaged_or_missing_directory(settings, tmp_path):
    bad = variant(tmp_path, "bad")
    (bad / "load_forecast.onnx").write_bytes(b"not the model")
    with pytest.raises(ModelIntegrityError, match="checksum mismatch"):
        reg.publish(settings, bad)
    with pytest.raises(Exception, match="not found"):
        reg.publish(settings, tmp_path / "nowhere")
    assert keys(settings) == []  # nothing uploaded, no pointer


def test_a_crash_midway_leaves_the_champion_serving(settings, tmp_path, monkeypatch):
    first = reg.publish(settings, BUNDLED_MODEL_DIR).info.set_id
    before = pointer(settings)
    real_put = registry_store.put
    calls = []

    def crash_after_first(*args, **kwargs):
        calls.append(args[1])
        if len(calls) > 1:
            raise DependencyUnavailableError("network gone")
        return real_put(*args, **kwargs)

    monkeypatch.setattr(registry_store, "put", crash_after_first)
    with pytest.raises(DependencyUnavailableError):
        reg.publish(settings, variant(tmp_path, "b"))
    assert len(calls) == 2 and calls[0].startswith("models/")  # one object uploaded, then the crash
    assert pointer(settings) == before and reg.read_champion(settings).set_id == first  # type: ignore[union-attr]

    # a crash after the whole set is uploaded and verified, at the pointer's PutObject itself
    def fail_pointer(*args, **kwargs):
        if args[1] == reg.CHAMPION_KEY:
            raise DependencyUnavailableError("network gone")
        return real_put(*args, **kwargs)

    monkeypatch.setattr(registry_store, "put", fail_pointer)
    with pytest.raises(DependencyUnavailableError):
        reg.publish(settings, variant(tmp_path, "c"))
    assert pointer(settings) == before


def test_a_set_that_does_not_read_back_as_written_is_not_promoted(settings, tmp_path, monkeypatch):
    reg.publish(settings, BUNDLED_MODEL_DIR)
    before = pointer(settings)
    real_get = registry_store.get

    def corrupt(s, key, quick=False, deadline=None):
        obj = real_get(s, key, quick, deadline)
        if obj is not None and key.endswith("load_forecast.onnx"):
            return StoredObject(obj.data[:-1] + b"x", obj.etag)
        return obj

    monkeypatch.setattr(registry_store, "get", corrupt)
    with pytest.raises(ModelIntegrityError, match=r"checksum mismatch for load_forecast\.onnx"):
        reg.publish(settings, variant(tmp_path, "b"))
    assert pointer(settings) == before


def test_a_concurrent_promotion_is_not_overwritten(settings, tmp_path):
    reg.publish(settings, BUNDLED_MODEL_DIR)
    stale = reg.read_champion(settings)
    b = reg.publish(settings, variant(tmp_path, "b")).info.set_id  # someone else promoted meanwhile
    c = reg.upload_set(settings, reg.prepare_set(variant(tmp_path, "c"), "test")).set_id
    with pytest.raises(ConflictError):
        reg.promote(settings, c, "late", stale)
    assert reg.read_champion(settings).set_id == b  # type: ignore[union-attr]


# ------------------------------------------------------------------------- rollback
def test_rollback_switches_to_the_previous_set_and_back(settings, tmp_path):
    with pytest.raises(NotFoundError, match="nothing to roll back"):
        reg.rollback(settings)
    a = reg.publish(settings, BUNDLED_MODEL_DIR).info.set_id
    with pytest.raises(ConflictError, match="no previous set"):
        reg.rollback(settings)
    b = reg.publish(settings, variant(tmp_path, "b")).info.set_id
    assert pointer(settings)["previous_set_id"] == a  # type: ignore[index]

    r = reg.rollback(settings, reason="b forecasts badly")
    assert pointer(settings) == {
        "set_id": a,
        "previous_set_id": b,
        "promoted_at": r.champion.promoted_at,
        "reason": "b forecasts badly",
    }
    d = reg.read_decision(settings, r.decision_key)
    assert d["kind"] == "rollback" and d["set_id"] == a and d["previous_set_id"] == b
    assert reg.rollback(settings).champion.set_id == b  # a second rollback undoes the first


def test_rollback_refuses_a_damaged_previous_set(settings, tmp_path):
    a = reg.publish(settings, BUNDLED_MODEL_DIR).info.set_id
    reg.publish(settings, variant(tmp_path, "b"))
    before = pointer(settings)
    boto3.client("s3").put_object(Bucket=settings.models_bucket, Key=f"models/{a}/load_forecast.onnx", Body=b"x")
    with pytest.raises(ModelIntegrityError, match="checksum mismatch"):
        reg.rollback(settings)
    assert pointer(settings) == before


# ------------------------------------------------------------------------- CLI
def invoke(*args: str):
    return runner.invoke(cli_app, list(args))


def test_cli_publish_champion_rollback_decisions(settings, tmp_path):
    r = invoke("models", "champion")
    assert r.exit_code == 0 and "no champion" in r.output
    r = invoke("models", "publish", "--from", str(BUNDLED_MODEL_DIR), "--reason", "first deploy")
    assert r.exit_code == 0, r.output
    a = reg.read_champion(settings).set_id  # type: ignore[union-attr]
    assert a in r.output and "first deploy" in r.output
    r = invoke("models", "publish", "--from", str(variant(tmp_path, "b")))
    assert r.exit_code == 0, r.output
    r = invoke("models", "champion", "--json")
    shown = json.loads(r.output)
    assert shown["champion"]["previous_set_id"] == a and shown["set"]["set_id"] == shown["champion"]["set_id"]
    r = invoke("models", "rollback")
    assert r.exit_code == 0 and reg.read_champion(settings).set_id == a  # type: ignore[union-attr]
    r = invoke("models", "decisions")
    assert r.exit_code == 0 and r.output.count("publish") >= 2 and "rollback" in r.output
    r = invoke("models", "champion")
    assert r.exit_code == 0 and a in r.output
    assert invoke("models", "list").exit_code == 0  # the local listing still works


def test_cli_errors_exit_codes(settings, tmp_path):
    r = invoke("models", "rollback")
    assert r.exit_code == 2 and "nothing to roll back" in r.output
    r = invoke("models", "publish", "--from", str(tmp_path / "nowhere"))
    assert r.exit_code == 3 and "not found" in r.output
    boto3.client("s3").delete_bucket(Bucket=settings.models_bucket)
    r = invoke("models", "publish", "--from", str(BUNDLED_MODEL_DIR))
    assert r.exit_code == 1 and "does not exist" in r.output


# ------------------------------------------------------------------------- live pickup
@pytest.fixture
def api(settings):
    from smartgrid.domain.predictions import build_service

    svc = build_service(settings)
    return app_client(settings, svc), svc


def test_without_a_champion_the_bundled_models_serve(api, example_body):
    client, _ = api
    r = client.get("/models")
    assert r.status == 200 and r.json()["set_id"] is None
    assert {m["name"] for m in r.json()["models"] if m["loaded"]} == set(MODEL_NAMES)
    assert client.post("/predict/single", example_body).status == 200


def test_a_running_api_picks_up_a_promoted_set(settings, tmp_path, example_body):
    a = reg.publish(settings, BUNDLED_MODEL_DIR).info.set_id
    from smartgrid.domain.predictions import build_service

    client = app_client(settings, build_service(settings))  # the champion exists: the first request serves it
    r = client.post("/predict/single", example_body)
    assert r.status == 200 and r.json()["model_version"] == a
    assert client.get("/models").json()["set_id"] == a
    cache = Path(settings.model_cache_dir)
    assert (cache / a / "set.json").is_file()

    b = reg.publish(settings, variant(tmp_path, "b")).info.set_id  # promoted while the API runs
    models = client.get("/models").json()
    assert models["set_id"] == b and {m["version"] for m in models["models"]} == {b}
    r = client.post("/predict/single", example_body)
    assert r.status == 200 and r.json()["model_version"] == b and r.json()["cached"] is False
    assert sorted(p.name for p in cache.iterdir()) == [b]  # the old download is pruned

    reg.rollback(settings)
    assert client.get("/models").json()["set_id"] == a


def test_a_failing_pointer_read_or_a_damaged_set_keeps_serving(api, settings, tmp_path, example_body, monkeypatch):
    client, _ = api
    a = reg.publish(settings, BUNDLED_MODEL_DIR).info.set_id
    assert client.get("/models").json()["set_id"] == a

    real_get = registry_store.get

    def s3_down(s, key, quick=False, deadline=None):
        if key == reg.CHAMPION_KEY:
            raise DependencyUnavailableError("s3 is down")
        return real_get(s, key, quick, deadline)

    b = reg.publish(settings, variant(tmp_path, "b")).info.set_id
    monkeypatch.setattr(registry_store, "get", s3_down)
    r = client.get("/models")
    assert r.status == 200 and r.json()["set_id"] == a  # the pointer could not be read: a serves
    r = client.post("/predict/single", example_body)
    assert r.status == 200 and r.json()["model_version"] == a

    # the pointer names a set whose file was damaged after upload: refused, a keeps serving
    monkeypatch.setattr(registry_store, "get", real_get)
    boto3.client("s3").put_object(Bucket=settings.models_bucket, Key=f"models/{b}/load_forecast.onnx", Body=b"x")
    r = client.get("/models")
    assert r.status == 200 and r.json()["set_id"] == a
    assert client.post("/predict/single", example_body).json()["model_version"] == a
    assert not (Path(settings.model_cache_dir) / b).exists()  # nothing half-downloaded left behind


def test_the_pointer_is_checked_at_most_every_model_refresh_s(settings, tmp_path, monkeypatch):
    from smartgrid.engine.forecast import ModelSet

    now = [0.0]
    watcher = reg.ChampionWatcher(settings.model_copy(update={"model_refresh_s": 60}), clock=lambda: now[0])
    calls = []
    real_get = registry_store.get
    monkeypatch.setattr(registry_store, "get", lambda *a, **k: calls.append(a[1]) or real_get(*a, **k))
    assert watcher.poll() is None and calls == [reg.CHAMPION_KEY]  # no champion yet
    a = reg.publish(settings, BUNDLED_MODEL_DIR).info.set_id
    calls.clear()
    now[0] = 59.0
    assert watcher.poll() is None and calls == []  # not due
    now[0] = 60.0
    ms = watcher.poll()
    assert isinstance(ms, ModelSet) and ms.set_id == a and ms.models_loaded == 3
    now[0] = 120.0
    calls.clear()
    assert watcher.poll() is None and calls == [reg.CHAMPION_KEY]  # unchanged: one small GetObject


def test_a_slow_or_failed_download_keeps_serving_and_a_later_poll_succeeds(settings, monkeypatch):
    """The watcher downloads inside a request: with the quick client and a total time budget.
    Out of time, or failing, it keeps the current models and the next poll tries again."""
    import io
    import time

    from smartgrid.engine.forecast import ModelSet
    from smartgrid.observability import logger

    now = [0.0]
    watcher = reg.ChampionWatcher(settings.model_copy(update={"model_refresh_s": 60}), clock=lambda: now[0])
    a = reg.publish(settings, BUNDLED_MODEL_DIR).info.set_id
    calls: list[tuple[str, bool, bool]] = []
    real_get = registry_store.get

    def slow(s, key, quick=False, deadline=None):
        calls.append((key, quick, deadline is not None))
        if key.startswith(reg.SETS_PREFIX):
            time.sleep(0.3)  # a slow S3: each object takes 0.3 s
        return real_get(s, key, quick, deadline)

    monkeypatch.setattr(registry_store, "get", slow)
    monkeypatch.setattr(reg, "WATCHER_DOWNLOAD_BUDGET_S", 0.5)
    buf = io.StringIO()
    handler = logger.registered_handler
    old = handler.setStream(buf)  # type: ignore[attr-defined]
    try:
        started = time.monotonic()
        assert watcher.poll() is None and watcher.set_id is None  # the current (bundled) models keep serving
        assert time.monotonic() - started < 1.5  # stopped at the budget, not after all 7 objects
    finally:
        handler.setStream(old)  # type: ignore[attr-defined]
    assert all(quick for _, quick, _ in calls)  # the pointer and the set: the short-timeout client
    downloads = [c for c in calls if c[0].startswith(reg.SETS_PREFIX)]
    assert 1 <= len(downloads) < 7 and all(has_deadline for *_, has_deadline in downloads)
    assert not (Path(settings.model_cache_dir) / a).exists()  # nothing half-downloaded
    (line,) = [json.loads(x) for x in buf.getvalue().splitlines() if "ran out of time" in x]
    assert line["level"] == "WARNING" and line["champion"] == a and line["budget_s"] == 0.5
    assert "out of time" in line["error"]

    def s3_down(s, key, quick=False, deadline=None):
        if key.startswith(reg.SETS_PREFIX):
            raise DependencyUnavailableError("connection reset")
        return real_get(s, key, quick, deadline)

    monkeypatch.setattr(registry_store, "get", s3_down)
    now[0] = 30.0
    assert watcher.poll() is None  # not due yet
    now[0] = 60.0
    assert watcher.poll() is None and watcher.set_id is None  # failed: still serving the current models

    monkeypatch.setattr(registry_store, "get", real_get)  # S3 is well again
    now[0] = 120.0
    ms = watcher.poll()
    assert isinstance(ms, ModelSet) and ms.set_id == a == watcher.set_id and ms.models_loaded == 3


def test_a_read_past_its_deadline_stops(settings):
    import time

    reg.publish(settings, BUNDLED_MODEL_DIR)
    assert registry_store.get(settings, reg.CHAMPION_KEY, quick=True, deadline=time.monotonic() + 5) is not None
    with pytest.raises(DependencyUnavailableError, match="out of time"):
        registry_store.get(settings, reg.CHAMPION_KEY, quick=True, deadline=time.monotonic() - 1)
