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
from datetime import UTC, datetime
from pathlib import Path

import boto3
import numpy as np
import pytest
from typer.testing import CliRunner

from smartgrid.cli.main import app as cli_app
from smartgrid.config import Settings, get_settings
from smartgrid.domain import champion as reg
from smartgrid.domain import retraining, training_data
from smartgrid.engine.data import Readings, Series
from smartgrid.engine.features import HolidayCalendar
from smartgrid.engine.model_files import MODEL_NAMES, read_model_bytes
from smartgrid.errors import DependencyUnavailableError, InsufficientHistoryError
from smartgrid.observability import logger
from smartgrid.store import meter_bucket
from smartgrid.store import models_bucket as registry_store
from smartgrid.training.moe import MoEParams
from smartgrid.training.pipeline import train_all
from tests.helpers.apigw import LambdaContext
from tests.helpers.emf import value

# Tests that use trained_dirs (train_all, for real, in the fixture) are marked slow.
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
def settings(registry_settings) -> Settings:
    return registry_settings  # tests/conftest.py


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
    r = training_data.combine([old, new], "site")
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
    put_accepted(settings, "acme/short", csv_bytes(gefcom.slice(69 * DAY + 12, 70 * DAY)))  # 12 hours
    g = training_data.gather(settings)
    assert g.files == g.files_read == 3 and g.files_not_read == 0 and [s.name for s in g.sites] == ["acme/s1"]
    s1 = g.sites[0].series
    assert s1.n == 70 * DAY and g.sites[0].files == 2 and g.sites[0].blanked == []
    np.testing.assert_allclose(s1.load[: 30 * DAY], part1.load[: 30 * DAY], atol=1e-3)
    np.testing.assert_allclose(s1.load[30 * DAY :], corrected.load, atol=1e-3)  # the overlap: newest file
    assert "too_little_history" in g.skipped["acme/short"] or "day(s)" in g.skipped["acme/short"]


def test_a_stuck_meter_blanks_its_stretch_not_the_site(settings, gefcom):
    """Ingestion accepts a file with a flatline (it cannot tell a quiet hour from a stuck meter
    in one file); retraining sets the stretch to NaN and keeps the site, every month."""
    flat = gefcom.slice(0, 20 * DAY)
    flat = Series(flat.start, flat.step_s, flat.load.copy(), flat.temperature)  # (slices are views)
    flat.load[100:108] = 500.0  # 8 identical hours: a stuck meter (flatline_hours is 6)
    flat.load[200:204] = 600.0  # 4 hours: not a flatline
    put_accepted(settings, "acme/s2", csv_bytes(flat))
    (site,) = training_data.gather(settings).sites
    assert site.name == "acme/s2" and site.series.n == 20 * DAY
    assert site.blanked == [
        {"start": "2006-01-05T04:00:00Z", "end": "2006-01-05T11:00:00Z", "readings": 8, "load": 500.0}
    ]
    assert np.isnan(site.series.load[100:108]).all() and np.isfinite(site.series.load[99]).all()
    assert (site.series.load[200:204] == 600.0).all() and np.isfinite(site.series.load[108:]).all()


def _quarter_hourly(series: Series) -> Series:
    """The series at 15-minute resolution (each hour's load repeated)."""
    temp = None if series.temperature is None else np.repeat(series.temperature, 4)
    return Series(series.start, 900, np.repeat(series.load, 4), temp)


def test_a_site_keeps_its_dominant_grid_and_reports_the_other_files(settings, gefcom):
    hourly1 = put_accepted(settings, "acme/s3", csv_bytes(gefcom.slice(0, 30 * DAY)))
    hourly2 = put_accepted(settings, "acme/s3", csv_bytes(gefcom.slice(30 * DAY, 60 * DAY)))
    quarter = put_accepted(settings, "acme/s3", csv_bytes(_quarter_hourly(gefcom.slice(60 * DAY, 62 * DAY))))
    half = gefcom.slice(62 * DAY, 64 * DAY)
    shifted = put_accepted(
        settings, "acme/s3", csv_bytes(Series(half.start + np.timedelta64(1800, "s"), 3600, half.load, None))
    )
    g = training_data.gather(settings)
    (site,) = g.sites
    assert site.series.step_s == 3600 and site.files == 2 and site.series.n == 60 * DAY
    assert set(g.files_skipped) == {quarter, shifted} and hourly1 not in g.files_skipped
    assert "15-minute grid" in g.files_skipped[quarter] and "dominant one is 60-minute" in g.files_skipped[quarter]
    assert "offset 1800 s" in g.files_skipped[shifted]
    # when the finer files cover more time, they win
    for d in range(0, 60, 10):
        put_accepted(settings, "acme/s4", csv_bytes(_quarter_hourly(gefcom.slice(d * DAY, (d + 10) * DAY))))
    h = put_accepted(settings, "acme/s4", csv_bytes(gefcom.slice(60 * DAY, 70 * DAY)))
    g = training_data.gather(settings)
    s4 = next(s for s in g.sites if s.name == "acme/s4")
    assert s4.series.step_s == 900 and s4.files == 6 and h in g.files_skipped and hourly2 not in g.files_skipped


# ------------------------------------------------------------------------- real training
@pytest.mark.slow
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
    assert d.data_window == {
        "start": "2006-01-01T00:00:00Z",
        "end": "2006-05-30T23:00:00Z",
        "max_days": 730,
        "cut_at": "2004-05-17T00:00:00Z",  # 730 + 14 days before the holdout's end: nothing is cut
    }
    assert cl["training_window"]["end"] < d.holdout_window["start"]  # trained on the days before it
    assert d.sites["trained_on"] == ["acme/s1"] and d.sites["files"] == d.sites["files_read"] == 2
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


@pytest.mark.slow
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
@pytest.mark.slow
def test_without_a_pointer_the_bundled_models_are_the_champion(settings, gefcom, trained_dirs, monkeypatch):
    """No pointer: the API serves the bundled models (model_dir), so the challenger must beat them."""
    fake_training(monkeypatch, trained_dirs["good"])
    put_accepted(settings, "acme/s1", csv_bytes(gefcom))
    bundled_noise = settings.model_copy(update={"model_dir": trained_dirs["noise"]})
    d = retraining.retrain(bundled_noise)
    assert d.status == "promoted" and "bundled models" in d.reason and "challenger MAPE" in d.reason
    ch, cl = d.champion, d.challenger
    assert ch is not None and cl is not None
    assert ch["set_id"] is None and ch["source"] == "bundled" and ch["model_dir"] == str(trained_dirs["noise"])
    assert cl["mape"] < ch["mape"] and ch["days"] == cl["days"] == 14
    new = reg.read_champion(settings)
    assert new is not None and new.previous_set_id is None and new.set_id == cl["set_id"]
    assert reg.read_decision(settings, d.decision_key)["champion"]["source"] == "bundled"  # type: ignore[arg-type]


@pytest.mark.slow
def test_without_a_pointer_better_bundled_models_are_kept(settings, gefcom, trained_dirs, monkeypatch):
    fake_training(monkeypatch, trained_dirs["noise"])
    put_accepted(settings, "acme/s1", csv_bytes(gefcom))
    d = retraining.retrain(settings.model_copy(update={"model_dir": trained_dirs["good"]}))
    assert d.status == "kept" and "bundled models" in d.reason
    assert d.champion["set_id"] is None and d.champion["source"] == "bundled"  # type: ignore[index]
    assert d.challenger["mape"] >= d.champion["mape"]  # type: ignore[index]
    assert reg.read_champion(settings) is None and set_ids(settings) == set()  # nothing promoted or uploaded


@pytest.mark.slow
def test_unloadable_bundled_models_are_replaced(settings, gefcom, trained_dirs, monkeypatch, tmp_path):
    fake_training(monkeypatch, trained_dirs["good"])
    put_accepted(settings, "acme/s1", csv_bytes(gefcom))
    d = retraining.retrain(settings.model_copy(update={"model_dir": tmp_path / "nothing"}))
    assert d.status == "promoted" and "could not be loaded" in d.reason
    assert d.champion["source"] == "bundled" and d.champion["error"]  # type: ignore[index]
    assert reg.read_champion(settings) is not None


@pytest.mark.slow
def test_training_is_capped_to_the_latest_days_and_old_files_are_not_read(settings, gefcom, trained_dirs, monkeypatch):
    """retrain_max_days: training on at most that many days before the holdout; files stored
    before the window are not even read (their readings precede their upload)."""
    from smartgrid.training import pipeline

    fake_training(monkeypatch, trained_dirs["good"])
    trained: list[list[Series]] = []
    fake = pipeline.train_all

    def spy(series_list, *a, **kw):
        trained.append(series_list)
        return fake(series_list, *a, **kw)

    monkeypatch.setattr(pipeline, "train_all", spy)
    old = put_accepted(settings, "acme/s1", csv_bytes(gefcom.slice(0, 20 * DAY)))
    put_accepted(settings, "acme/s1", csv_bytes(gefcom.slice(20 * DAY, 100 * DAY)))
    put_accepted(settings, "acme/s1", csv_bytes(gefcom.slice(100 * DAY, gefcom.n)))
    # S3's LastModified as a live bucket would have it: each file stored the day after its last reading
    stored = {old: "2006-01-21", "": "2006-05-31"}
    real_objects = meter_bucket.meter_objects

    def dated(s, prefix):
        return [
            meter_bucket.ListedObject(o.key, datetime.fromisoformat(stored.get(o.key, stored[""])).replace(tzinfo=UTC))
            for o in real_objects(s, prefix)
        ]

    monkeypatch.setattr(meter_bucket, "meter_objects", dated)
    monkeypatch.setattr(training_data, "READ_BATCH", 1)  # one file at a time: the window is known after the first
    capped = settings.model_copy(update={"retrain_max_days": 70, "model_dir": trained_dirs["noise"]})
    d = retraining.retrain(capped)

    assert d.status == "promoted"
    assert d.data_window == {
        "start": "2006-03-08T00:00:00Z",  # the holdout (2006-05-17 to 05-30) and 70 days before it
        "end": "2006-05-30T23:00:00Z",
        "max_days": 70,
        "cut_at": "2006-03-08T00:00:00Z",
    }
    assert d.holdout_window == {"start": "2006-05-17T00:00:00Z", "end": "2006-05-30T23:59:59Z", "days": 14}
    assert d.sites["files"] == 3 and d.sites["files_read"] == 2 and d.sites["files_not_read"] == 1
    ((series,),) = trained
    assert str(series.start) == "2006-03-08T00:00:00" and series.n == 70 * DAY
    assert reg.read_decision(settings, d.decision_key)["sites"]["files_not_read"] == 1  # type: ignore[arg-type]


@pytest.mark.slow
def test_a_flatline_is_recorded_in_the_decision(settings, gefcom, trained_dirs, monkeypatch):
    fake_training(monkeypatch, trained_dirs["good"])
    stuck = Series(gefcom.start, gefcom.step_s, gefcom.load.copy(), gefcom.temperature)
    stuck.load[50 * DAY : 50 * DAY + 9] = 2000.0
    put_accepted(settings, "acme/s1", csv_bytes(stuck))
    d = retraining.retrain(settings.model_copy(update={"model_dir": trained_dirs["noise"]}))
    assert d.sites["trained_on"] == ["acme/s1"] and d.status == "promoted"
    ((stretch,),) = d.sites["flatlines_blanked"].values()
    assert stretch["readings"] == 9 and stretch["start"] == "2006-02-20T00:00:00Z"


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_cli_retrain(settings, gefcom, trained_dirs, monkeypatch):
    monkeypatch.setenv("SMARTGRID_MODEL_DIR", str(trained_dirs["noise"]))  # bundled models worse than the challenger
    get_settings.cache_clear()
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
