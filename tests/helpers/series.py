"""Load data as files and on other grids: CSV files from rows or a series, and an hourly
series interpolated to a finer resolution."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from smartgrid.engine.data import Series


def write_csv(path: Path, rows: list[tuple], header: str = "timestamp,load") -> Path:
    """``rows`` as a CSV file under ``header`` (gzipped when the name ends in .gz)."""
    text = header + "\n" + "\n".join(",".join(str(v) for v in r) for r in rows) + "\n"
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def series_to_csv(series: Series, path: Path) -> Path:
    """A series' known readings (and temperatures, if it has them) as a CSV file."""
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
