from __future__ import annotations

import os

# One LightGBM thread per test worker: pytest runs two workers on two cores (see config.py).
os.environ.setdefault("SMARTGRID_TRAIN_THREADS", "1")

import gzip
from pathlib import Path

import numpy as np
import pytest
from smartgrid.data import Series, load_series
from smartgrid.features import HolidayCalendar

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
