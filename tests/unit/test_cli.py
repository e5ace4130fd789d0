"""End to end through the `smartgrid` command line on a slice of the real data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from smartgrid.cli.main import app
from smartgrid.engine.csv_files import load_series
from smartgrid.engine.data import Series
from smartgrid.engine.model_files import MODEL_NAMES, sha256_hex
from tests.helpers.paths import DATA
from tests.helpers.series import series_to_csv, write_csv

pytestmark = pytest.mark.slow  # `smartgrid train` (the trained_dir fixture) and `smartgrid backtest`

runner = CliRunner()
GEFCOM = DATA / "gefcom_150d.csv.gz"


def run(*args: str | Path) -> object:
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "models"
    res = run("train", "--data", GEFCOM, "--out", out)
    assert res.exit_code == 0, res.output
    return out


def test_train_writes_three_verified_models(trained_dir: Path) -> None:
    for name in MODEL_NAMES:
        meta = json.loads((trained_dir / f"{name}.json").read_text())
        assert meta["sha256"] == sha256_hex((trained_dir / f"{name}.onnx").read_bytes())
        for key in ("name", "version", "created_at", "training_window", "resolution_minutes", "features", "metrics"):
            assert key in meta
        assert meta["resolution_minutes"] == 60
        assert meta["training_window"]["start"] == "2006-01-01T00:00:00Z"
    res = run("models", "list", "--models", trained_dir)
    assert res.exit_code == 0 and "load_forecast" in res.output


def test_forecast_command(trained_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "f.csv"
    res = run("forecast", "--data", GEFCOM, "--models", trained_dir, "--out", out)
    assert res.exit_code == 0, res.output
    lines = out.read_text().splitlines()
    assert lines[0] == "timestamp,p10,p50,p90,model" and len(lines) == 25
    assert lines[1].startswith("2006-05-31T00:00:00Z") and lines[1].endswith("load_forecast")


def test_backtest_json_and_plot(trained_dir: Path, tmp_path: Path) -> None:
    js, png = tmp_path / "bt.json", tmp_path / "bt.png"
    res = run("backtest", "--data", GEFCOM, "--test-days", "20", "--json", js, "--plot", png)
    assert res.exit_code == 0, res.output
    report = json.loads(js.read_text())
    assert report["resolution_minutes"] == 60 and report["test_days"] == 20
    assert set(report["methods"]) >= {"moe", "naive_day", "naive_week"}
    for m in report["methods"].values():
        assert set(m) >= {"mape", "mae", "rmae", "pinball", "coverage_80"}
    assert report["methods"]["moe"]["mape"] < report["methods"]["naive_day"]["mape"]
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_detect_finds_injected_spike(trained_dir: Path, tmp_path: Path) -> None:
    s = load_series(GEFCOM).slice(0, 24 * 60)
    load = s.load.copy()
    load[24 * 45 + 13] *= 1.8
    corrupted = Series(s.start, s.step_s, load, s.temperature)
    js = tmp_path / "d.json"
    res = run("detect", "--data", series_to_csv(corrupted, tmp_path / "c.csv"), "--models", trained_dir, "--json", js)
    assert res.exit_code == 0, res.output
    flagged = {f["timestamp"]: f for f in json.loads(js.read_text())["flagged"]}
    spike_ts = str(s.timestamps[24 * 45 + 13]) + "Z"
    assert spike_ts in flagged and flagged[spike_ts]["kind"] == "spike"
    assert 0.5 <= flagged[spike_ts]["score"] <= 1.0


def test_bad_input_fails_clearly_without_output(trained_dir: Path, tmp_path: Path) -> None:
    t0 = np.datetime64("2024-01-01T00:00:00")
    rows = [(str(t0 + np.timedelta64(i, "h")), 1000 + i % 24) for i in range(24 * 40)]
    rows[200] = (rows[200][0], "oops")
    bad = write_csv(tmp_path / "bad.csv", rows)
    js = tmp_path / "out.json"
    res = runner.invoke(app, ["backtest", "--data", str(bad), "--json", str(js)])
    assert res.exit_code == 2
    assert "row 201: load 'oops' is not a number" in res.output and str(bad) in res.output
    assert not js.exists()
    out_dir = tmp_path / "never"
    res = runner.invoke(app, ["train", "--data", str(bad), "--out", str(out_dir)])
    assert res.exit_code == 2 and not out_dir.exists()
    # a plot that cannot be written: neither the plot nor the JSON is left behind
    (tmp_path / "afile").write_text("")
    res = runner.invoke(
        app,
        [
            "backtest",
            "--data",
            str(GEFCOM),
            "--test-days",
            "5",
            "--json",
            str(js),
            "--plot",
            str(tmp_path / "afile" / "x.png"),
        ],
    )
    assert res.exit_code == 1 and not js.exists() and "afile" in res.output
    res = runner.invoke(app, ["detect", "--data", str(tmp_path / "nope.csv"), "--models", str(trained_dir)])
    assert res.exit_code == 2 and "not found" in res.output


def test_corrupted_model_is_reported(trained_dir: Path, tmp_path: Path) -> None:
    d = tmp_path / "m"
    shutil.copytree(trained_dir, d)
    (d / "anomaly_detector.onnx").write_bytes(b"x")
    res = runner.invoke(app, ["models", "list", "--models", str(d)])
    assert res.exit_code == 3 and "checksum" in res.output
    res = runner.invoke(app, ["detect", "--data", str(GEFCOM), "--models", str(d)])
    assert res.exit_code == 3 and "checksum mismatch" in res.output
