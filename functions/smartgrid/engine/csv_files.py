"""CSV files of readings: reading them (optionally gzipped) into ``data.Readings``, reading and
validating in one step, and writing a CSV without leaving a partial file behind.

The values are parsed and checked by ``data.readings_from_records``, so a CSV file and an API
body give the same problems for the same values; row numbers in messages are 1-based data
rows, the header not counted.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from smartgrid.engine.data import Readings, Series, readings_from_records, validate
from smartgrid.errors import DataValidationError, Problem


def _read_text(path: Path) -> str:
    source = str(path)
    if not path.is_file():
        raise DataValidationError([Problem("file_not_found", f"file not found: {path}")], source)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataValidationError([Problem("bad_gzip", f"not a valid gzip file: {exc}")], source) from exc
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataValidationError([Problem("bad_encoding", f"not UTF-8 text: {exc}")], source) from exc


def read_csv(path: str | Path) -> Readings:
    """Read a CSV (optionally gzipped) with columns timestamp, load[, temperature]."""
    return _parse_csv(Path(path), required=("timestamp", "load"))


def read_temperature_csv(path: str | Path) -> Readings:
    """Read a temperature forecast: columns timestamp, temperature (load is NaN)."""
    return _parse_csv(Path(path), required=("timestamp", "temperature"))


def _parse_csv(path: Path, required: tuple[str, ...]) -> Readings:
    source = str(path)
    text = _read_text(path)
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        raise DataValidationError([Problem("empty_file", "the file is empty (no header)")], source)
    cols = [h.strip().lower() for h in header]
    missing = [c for c in required if c not in cols]
    if missing:
        raise DataValidationError(
            [
                Problem(
                    "missing_column",
                    f"header {header!r} lacks required column(s) {missing}; expected {','.join(required)}",
                )
            ],
            source,
        )
    i_ts = cols.index("timestamp")
    i_load = cols.index("load") if "load" in cols else None
    i_temp = cols.index("temperature") if "temperature" in cols else None
    ts_raw: list[str] = []
    load_raw: list[str] = []
    temp_raw: list[str] = []
    row_numbers: list[int] = []
    problems: list[Problem] = []
    width = len(cols)
    for rowno, row in enumerate(reader, start=1):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) < width:
            problems.append(Problem("short_row", f"row {rowno}: expected {width} fields, got {len(row)}", (rowno,)))
            row = row + [""] * (width - len(row))
        row_numbers.append(rowno)
        ts_raw.append(row[i_ts])
        load_raw.append(row[i_load] if i_load is not None else "nan")
        if i_temp is not None:
            temp_raw.append(row[i_temp])
    if problems:
        raise DataValidationError(problems, source)
    if not ts_raw:
        raise DataValidationError([Problem("no_rows", "the file has a header but no readings")], source)
    readings = readings_from_records(
        ts_raw,
        load_raw if i_load is not None else [0.0] * len(ts_raw),
        temp_raw if i_temp is not None else None,
        source,
        row_numbers,
    )
    if i_load is None:
        readings.load[:] = np.nan
    return readings


def load_series(path: str | Path, **kwargs: object) -> Series:
    """Read and validate a CSV file in one step."""
    return validate(read_csv(path), **kwargs)  # type: ignore[arg-type]


def write_csv_atomic(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Write a CSV via a temporary file and a rename, so no partial file is left behind."""
    from smartgrid.engine.atomic import atomic_write_text

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())
