"""Champion/challenger retraining on moto: accepted meter data gathered per site (newest
reading of a timestamp wins), real training and evaluation on a GEFCom slice promoting a
better challenger and keeping a better champion, no champion yet, a damaged champion, too
little data (skipped), a crash while promoting, the job handler and the CLI."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import numpy as np
import pytest
from typer.testing import CliRunner

from smartgrid import model_registry as reg
from smartgrid import retraining
from smartgrid.cli import app as cli_app
from smartgrid.config import Settings, get_settings
from smartgrid.data import Readings, Series
from smartgrid.errors import DependencyUnavailableError, InsufficientHistoryError
from smartgrid.features import HolidayCalendar
from smartgrid.observability import logger
from smartgrid.registry import MODEL_NAMES, read_model_bytes
from smartgrid.store import registry_store
from smartgrid.training.moe import MoEParams
from smartgrid.training.pipeline import train_all

from .apigw import LambdaContext
from .emf import value

SMALL = MoEParams(n_estimators=30, num_leaves=15, learning_rate=0.2, threads=1)
DAY = 24  # hourly steps
SCHEDULER_EVENT = {
    "version": "0",
    "id": "0d1f4c2e-7a4b-4f0e-9a8e-3c1b2a5d6e7f",
    "detail-type": "Scheduled Event",
    "source": "aws.scheduler",
    "time": "2026-12-01T00:00:00Z",
    "resources": ["arn:aws:scheduler:us-east-1:123456789012:schedule/default/smartgrid-dev-retraining"],
    "detail": {},
}


def noisy(series: Series, lo: int = 0, hi: int | None = None, seed: int = 0) -> Series:
    """The series with its load between steps lo and hi replaced by noise around its mean:
    data a model learns nothing from (deliberately bad training data)."""
    load = series.load.copy()
    hi = series.n if hi is None else hi
    rng = np.random.default_rng(seed)
    load[lo:hi] = float(np.nanmean(series.load)) * rng.uniform(0.6, 1.4, hi - lo)
    return Series(series.start, series.step_s, load, series.temperature, source="noise")


def csv_bytes(series: Series) -> bytes:
    lines = ["timestamp,load,temperature"] if series.temperature is not None else ["timestamp,load"]
    temp = series.temperature if series.temperature is not None else [None] * series.n
    for t, v, c in zip(series.timestamps, series.load, temp, strict=True):
        lines.append(f"{t}Z,{v:.3f}" + ("" if c is None else f",{c:.2f}"))
    return ("\n".join(lines) + "\n").encode()


def put_accepted(s: Settings, site: str, data: bytes) -> str:
    key = f"accepted/{site}/{hashlib.sha256(data).hexdigest()}.csv"
    boto3.client("s3").put_object(Bucket=s.meter_data_bucket, Key=key, Body=data)
    return key


@pytest.fixture(scope="module")
def trained_dirs(tmp_path_factory, gefcom: Series, calendar: HolidayCalendar) -> dict[str, Path]:
    """Two small model sets trained for real on the first 136 days: one on the GEFCom load,
    one on noise in its place."""
    out = {}
    for name, series in (("good", gefcom.slice(0, 136 * DAY)), ("noise", noisy(gefcom.slice(0, 136 * DAY)))):
        d = tmp_path_factory.mktemp(name)
        train_all([series], d, calendar, SMALL, anomaly_events_per_series=2)
        out[name] = d
    return out


@pytest.fixture
def settings(aws, tmp_path, monkeypatch) -> Settings:
    monkeypatch.setenv("SMARTGRID_MODEL_CACHE_DIR", str(tmp_path / "cache"))
    get_settings.cache_clear()
    s = get_settings()
    s3 = boto3.client("s3", region_name=s.aws_region)
    for bucket in (s.models_bucket, s.meter_data_bucket):
        s3.create_bucket(Bucket=bucket)
    clock = iter(datetime(2026, 12, 1, tzinfo=UTC) + timedelta(seconds=i) for i in range(10_000))
    monkeypatch.setattr(reg, "utcnow", lambda: next(clock))
    yield s
    get_settings.cache_clear()


def fake_training(monkeypatch, source: Path) -> None:
    """train_all copies an already trained set (for the tests about the decision, not the models)."""

    def fake(series_list, out_dir, calendar, params=None, progress=None, anomaly_events_per_series=None):
        shutil.copytree(source, out_dir, dirs_exist_ok=True)
        return {n: read_model_bytes(out_dir, n)[0] for n in MODEL_NAMES}

    monkeypatch.setattr("smartgrid.training.pipeline.train_all", fake)


def publish_champion(s: Settings, directory: Path) -> str:
    return reg.publish(s, directory, reason="test champion").info.set_id


def decisions(s: Settings) -> list[dict]:
    return [reg.read_decision(s, k) for k in reg.list_decisions(s)]


def set_ids(s: Settings) -> set[str]:
    return {k.split("/")[1] for k in registry_store.list_keys(s, reg.SETS_PREFIX)}


# ------------------------------------------------------------------------- gathering
def test_combine_keeps_the_newest_reading_of_a_timestamp():
    t = np.array(["2026-01-01T00", "2026-01-01T01", "2026-01-01T02"], dtype="datetime64[s]")
    old = Readings(t, np.array([1.0, 2.0, 3.0]), None, np.arange(1, 4), "old")
    new = Readings(t[1:][::-1], np.array([30.0, 20.0]), np.array([5.0, 6.0]), np.arange(1, 3), "new")
    r = retraining.combine([old, new], "site")
    assert r.timestamps.tolist() == t.tolist()
    assert r.load.tolist() == [1.0, 20.0, 30.0]
    np.testing.assert_array_equal(r.temperature, [np.nan, 6.0, 5.0])
    assert r.rows.tolist() == [1, 2, 3]


def test_gather_concatenates_a_sites_files_and_leaves_out_bad_sites(settings, gefcom):
    part1, part2 = gefcom.slice(0, 40 * DAY), gefcom.slice(30 * DAY, 70 * DAY)
    put_accepted(settings, "acme/s1", csv_bytes(part1))
    time.sleep(1.05)  # S3's LastModified has one-second resolution: the second file is newer
    corrected = Series(part2.start, part2.step_s, part2.load * 1.01, part2.temperature)
    put_accepted(settings, "acme/s1", csv_bytes(corrected))
    flat = gefcom.slice(0, 20 * DAY)
    flat = Series(flat.start, flat.step_s, flat.load.copy(), flat.temperature)  # (slices are views)
    flat.load[100:120] = 500.0  # 20 identical hours: a flatline
    put_accepted(settings, "acme/s2", csv_bytes(flat))
    g = retraining.gather(settings)
    assert g.files == 3 and [s.name for s in g.sites] == ["acme/s1"]
    s1 = g.sites[0].series
    assert s1.n == 70 * DAY and g.sites[0].files == 2
    np.testing.assert_allclose(s1.load[: 30 * DAY], part1.load[: 30 * DAY], atol=1e-3)
    np.testing.assert_allclose(s1.load[30 * DAY :], corrected.load, atol=1e-3)  # the overlap: newest file
    assert "flatline" in g.skipped["acme/s2"]


# ------------------------------------------------------------------------- real training
def test_retraining_promotes_a_better_challenger(settings, gefcom, trained_dirs):
    champion = publish_champion(settings, trained_dirs["noise"])  # trained on noise: a bad champion
    put_accepted(settings, "acme/s1", csv_bytes(gefcom.slice(0, 80 * DAY)))
    put_accepted(settings, "acme/s1", csv_bytes(gefcom.slice(75 * DAY, gefcom.n)))

    d = retraining.retrain(settings, params=SMALL, anomaly_events_per_series=2)

    assert d.status == "promoted" and d.promoted
    ch, cl = d.champion, d.challenger
    assert ch is not None and cl is not None
    assert ch["set_id"] == champion and cl["mape"] < ch["mape"]
    assert 0 < cl["mape"] < 10 and ch["days"] == cl["days"] == 14 and ch["points"] == cl["points"] == 14 * DAY
    assert d.holdout_window == {"start": "2006-05-17T00:00:00Z", "end": "2006-05-30T23:59:59Z", "days": 14}
    assert d.data_window == {"start": "2006-01-01T00:00:00Z", "end": "2006-05-30T23:00:00Z"}
    assert cl["training_window"]["end"] < d.holdout_window["start"]  # trained on the days before it
    assert d.sites["trained_on"] == ["acme/s1"] and d.sites["files"] == 2
    assert d.resources["duration_s"] > 0 and d.resources["cpu_s"] > 0 and d.resources["peak_rss_mib"] > 50

    new = reg.read_champion(settings)
    assert new is not None and new.set_id == cl["set_id"] == d.new_champion
    assert new.previous_set_id == champion and "challenger MAPE" in new.reason
    info = reg.read_set_info(settings, new.set_id)
    assert info.source == "retraining" and info.mape == cl["mape"]
    assert info.evaluation["holdout_window"] == d.holdout_window
    stored = reg.read_decision(settings, d.decision_key)  # type: ignore[arg-type]
    assert stored["kind"] == "retraining" and stored["promoted"] is True
    assert stored["champion"]["mape"] == ch["mape"] and stored["challenger"]["mape"] == cl["mape"]
    assert stored["holdout_window"] == d.holdout_window and stored["reason"] == d.reason


def test_retraining_keeps_a_better_champion(settings, gefcom, trained_dirs):
    champion = publish_champion(settings, trained_dirs["good"])
    # the challenger's training days are mostly noise; the last 50 days are real
    put_accepted(settings, "acme/s1", csv_bytes(noisy(gefcom, 0, 100 * DAY, seed=1)))

    d = retraining.retrain(settings, params=SMALL, anomaly_events_per_series=2)

    assert d.status == "kept" and not d.promoted
    assert d.challenger["mape"] >= d.champion["mape"]  # type: ignore[index]
    assert d.challenger["set_id"] is None and "kept" in d.reason  # type: ignore[index]
    assert reg.read_champion(settings).set_id == champion  # type: ignore[union-attr]
    assert set_ids(settings) == {champion}  # the challenger was not uploaded
    (_, stored) = decisions(settings)
    assert stored["status"] == "kept" and stored["promoted"] is False
    assert stored["champion"]["mape"] == d.champion["mape"]  # type: ignore[index]


# ------------------------------------------------------------------------- decisions
def test_without_a_champion_the_challenger_becomes_the_first(settings, gefcom, trained_dirs, monkeypatch):
    fake_training(monkeypatch, trained_dirs["good"])
    put_accepted(settings, "acme/s1", csv_bytes(gefcom))
    d = retraining.retrain(settings)
    assert d.status == "promoted" and "no champion yet" in d.reason and d.champion is None
    new = reg.read_champion(settings)
    assert new is not None and new.previous_set_id is None and new.set_id == d.challenger["set_id"]  # type: ignore[index]


def test_a_damaged_champion_is_replaced_by_the_challenger(settings, gefcom, trained_dirs, monkeypatch):
    fake_training(monkeypatch, trained_dirs["good"])
    champion = publish_champion(settings, trained_dirs["noise"])
    boto3.client("s3").put_object(
        Bucket=settings.models_bucket, Key=f"models/{champion}/load_forecast.onnx", Body=b"lost"
    )
    put_accepted(settings, "acme/s1", csv_bytes(gefcom))
    d = retraining.retrain(settings)
    assert d.status == "promoted" and "could not be loaded" in d.reason
    assert "checksum mismatch" in d.champion["error"]  # type: ignore[index]
    assert reg.read_champion(settings).previous_set_id == champion  # type: ignore[union-attr]


def test_not_enough_data_is_skipped_and_recorded(settings, gefcom):
    with pytest.raises(InsufficientHistoryError, match="not enough data"):
        retraining.retrain(settings)  # nothing accepted yet
    put_accepted(settings, "acme/s1", csv_bytes(gefcom.slice(0, 50 * DAY)))  # 36 days before the holdout
    with pytest.raises(InsufficientHistoryError, match="no site has 60 days"):
        retraining.retrain(settings)
    first, second = decisions(settings)
    assert first["status"] == second["status"] == "skipped" and second["promoted"] is False
    assert "36.0 day(s)" in second["sites"]["left_out"]["acme/s1"]
    assert second["holdout_window"]["days"] == 14 and second["resources"]["duration_s"] >= 0
    assert reg.read_champion(settings) is None


def test_a_crash_while_promoting_leaves_the_champion(settings, gefcom, trained_dirs, monkeypatch):
    fake_training(monkeypatch, trained_dirs["good"])
    champion = publish_champion(settings, trained_dirs["noise"])
    before = registry_store.get(settings, reg.CHAMPION_KEY)
    put_accepted(settings, "acme/s1", csv_bytes(gefcom))
    real_put = registry_store.put
    uploaded = []

    def crash_after_first(s, key, *args, **kwargs):
        if key.startswith(reg.SETS_PREFIX):
            uploaded.append(key)
            if len(uploaded) > 1:
                raise DependencyUnavailableError("connection reset")
        return real_put(s, key, *args, **kwargs)

    monkeypatch.setattr(registry_store, "put", crash_after_first)
    with pytest.raises(DependencyUnavailableError):
        retraining.retrain(settings)
    after = registry_store.get(settings, reg.CHAMPION_KEY)
    assert after is not None and before is not None and after.data == before.data
    assert reg.read_champion(settings).set_id == champion  # type: ignore[union-attr]


# ------------------------------------------------------------------------- handler, CLI
def _run_handler(capsys) -> tuple[object, dict, list[dict]]:
    from smartgrid.jobs import retraining as job

    capsys.readouterr()
    buf = io.StringIO()
    handler = logger.registered_handler
    old = handler.setStream(buf)  # type: ignore[attr-defined]
    try:
        try:
            out: object = job.handler(SCHEDULER_EVENT, LambdaContext(function_name="smartgrid-retraining"))
        except Exception as exc:
            out = exc
    finally:
        handler.setStream(old)  # type: ignore[attr-defined]
    (emf,) = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{") and "_aws" in x]
    return out, emf, [json.loads(x) for x in buf.getvalue().splitlines()]


def test_handler_promotes_and_reports(settings, gefcom, trained_dirs, monkeypatch, capsys):
    fake_training(monkeypatch, trained_dirs["good"])
    publish_champion(settings, trained_dirs["noise"])
    put_accepted(settings, "acme/s1", csv_bytes(gefcom))
    out, emf, logs = _run_handler(capsys)
    assert isinstance(out, dict) and out["status"] == "promoted" and out["new_champion"]
    assert value(emf, "job_succeeded_total") == 1 and emf["job"] == "retraining"
    (line,) = [x for x in logs if x["message"] == "retraining promoted"]
    assert line["champion"]["mape"] > line["challenger"]["mape"] and line["resources"]["peak_rss_mib"] > 0


def test_handler_skips_without_data_and_fails_without_bucket(settings, capsys, monkeypatch):
    out, emf, logs = _run_handler(capsys)
    assert isinstance(out, dict) and out["status"] == "skipped" and "not enough data" in out["reason"]
    assert value(emf, "job_succeeded_total") == 1
    assert any(x["message"] == "retraining skipped" and x["level"] == "WARNING" for x in logs)

    monkeypatch.setenv("SMARTGRID_MODELS_BUCKET", "no-such-bucket")
    get_settings.cache_clear()
    out, emf, _ = _run_handler(capsys)
    assert isinstance(out, DependencyUnavailableError)  # the decision cannot be recorded: the job fails
    assert value(emf, "job_failed_total") == 1


def test_cli_retrain(settings, gefcom, trained_dirs, monkeypatch):
    runner = CliRunner()
    r = runner.invoke(cli_app, ["retrain"])
    assert r.exit_code == 2 and "not enough data" in r.output
    fake_training(monkeypatch, trained_dirs["good"])
    put_accepted(settings, "acme/s1", csv_bytes(gefcom))
    r = runner.invoke(cli_app, ["retrain", "--holdout-days", "7", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output[r.output.index("{") :])
    assert d["status"] == "promoted" and d["holdout_window"]["days"] == 7 and d["challenger"]["days"] == 7
    r = runner.invoke(cli_app, ["retrain"])
    assert r.exit_code == 0 and "kept" in r.output  # the same models again: not better
