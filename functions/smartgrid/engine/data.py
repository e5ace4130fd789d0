"""Load data: readings from Python values, validating them, and putting them on a regular grid
(CSV files are read and written by ``csv_files``).

Timestamps are held as ``numpy.datetime64[s]`` in UTC (naive input means UTC). Row numbers
in messages are 1-based data rows, i.e. the header is not counted: "row 1" is the first
reading. Everything here is numpy and the standard library, so the API can use it too.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import cast

import numpy as np

from smartgrid.errors import DataValidationError, InsufficientHistoryError, Problem

MIN_RESOLUTION_S = 5 * 60
MAX_RESOLUTION_S = 60 * 60
DAY_S = 86_400
MAX_LOAD_MW = 1e7  # above any grid on Earth (the largest are ~1e6 MW): a unit or parsing error
MAX_TEMPERATURE_C = 65.0
MIN_TEMPERATURE_C = -70.0
# The most readings an API request may send for one series, and the most steps of the regular grid
# they may span (gaps included): three readings decades apart would otherwise make a grid of
# millions of steps (gigabytes for a batch, minutes of CPU for anomaly detection).
MAX_READINGS = 20_000
_MAX_ROWS_LISTED = 8


def _rows_text(rows: Sequence[int]) -> str:
    shown = ", ".join(str(r) for r in rows[:_MAX_ROWS_LISTED])
    more = f" and {len(rows) - _MAX_ROWS_LISTED} more" if len(rows) > _MAX_ROWS_LISTED else ""
    return f"row{'s' if len(rows) > 1 else ''} {shown}{more}"


def iso(ts: np.datetime64) -> str:
    return str(ts.astype("datetime64[s]")) + "Z"


def iso_all(ts: np.ndarray) -> list[str]:
    """``iso`` for a whole array, in one numpy call."""
    return [t + "Z" for t in np.datetime_as_string(ts.astype("datetime64[s]"), unit="s").tolist()]


@dataclass
class Readings:
    """Raw readings in input order, with their 1-based source rows."""

    timestamps: np.ndarray  # datetime64[s], UTC
    load: np.ndarray  # float64 MW
    temperature: np.ndarray | None  # float64 deg C, NaN where blank; None if no column
    rows: np.ndarray  # int64, 1-based data row of each reading
    source: str = "input"

    def __len__(self) -> int:
        return int(self.load.shape[0])


@dataclass(frozen=True)
class Gap:
    after_row: int
    start: np.datetime64  # first missing timestamp
    missing_steps: int

    def describe(self, step_s: int) -> str:
        end = self.start + np.timedelta64((self.missing_steps - 1) * step_s, "s")
        return (
            f"gap after row {self.after_row}: {self.missing_steps} missing reading(s) "
            f"from {iso(self.start)} to {iso(end)}"
        )


@dataclass
class Series:
    """Validated readings on a regular grid. Missing readings (if allowed) are NaN."""

    start: np.datetime64  # datetime64[s] of the first step
    step_s: int  # resolution in seconds
    load: np.ndarray  # float64, length n
    temperature: np.ndarray | None  # float64, length n, or None
    gaps: list[Gap] = field(default_factory=list)
    filled_steps: int = 0
    source: str = "input"

    @property
    def n(self) -> int:
        return int(self.load.shape[0])

    @property
    def steps_per_day(self) -> int:
        return DAY_S // self.step_s

    @property
    def resolution_minutes(self) -> int:
        return self.step_s // 60

    @property
    def timestamps(self) -> np.ndarray:
        return self.start + np.arange(self.n, dtype="int64") * np.timedelta64(self.step_s, "s")

    @property
    def end(self) -> np.datetime64:
        return self.start + np.timedelta64((self.n - 1) * self.step_s, "s")

    def slice(self, lo: int, hi: int) -> Series:
        temp = None if self.temperature is None else self.temperature[lo:hi]
        return Series(
            start=self.start + np.timedelta64(lo * self.step_s, "s"),
            step_s=self.step_s,
            load=self.load[lo:hi],
            temperature=temp,
            source=self.source,
        )

    @property
    def missing_report(self) -> str:
        missing = int(np.isnan(self.load).sum())
        return (
            f"{len(self.gaps)} gap(s), {sum(g.missing_steps for g in self.gaps)} missing "
            f"reading(s), {self.filled_steps} filled by interpolation, {missing} left missing"
        )


# --------------------------------------------------------------------------- parsing


def parse_timestamp(text: str) -> np.datetime64:
    """ISO 8601 to UTC ``datetime64[s]``. Naive means UTC; offsets are converted."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is not None:
        dt = dt.astimezone(UTC).replace(tzinfo=None)
    return np.datetime64(dt.replace(microsecond=0), "s")


def readings_from_records(
    timestamps: Iterable[str | datetime | np.datetime64],
    load: Iterable[object],
    temperature: Iterable[object] | None = None,
    source: str = "input",
    rows: Sequence[int] | None = None,
) -> Readings:
    """Build ``Readings`` from Python values (API bodies, tests). Invalid values raise a
    ``DataValidationError`` naming the rows, exactly as CSV input does."""
    ts_list = timestamps if isinstance(timestamps, np.ndarray) else list(timestamps)
    load_list = list(load)
    temp_list = None if temperature is None else list(temperature)
    problems: list[Problem] = []
    if len(load_list) != len(ts_list) or (temp_list is not None and len(temp_list) != len(ts_list)):
        raise DataValidationError(
            [Problem("length_mismatch", "timestamps, load and temperature differ in length")],
            source,
        )
    rn = list(rows) if rows is not None else list(range(1, len(ts_list) + 1))
    fast = _fast_timestamps(ts_list)
    ts = fast if fast is not None else np.empty(len(ts_list), dtype="datetime64[s]")
    for i, t in enumerate(ts_list if fast is None else ()):
        try:
            if isinstance(t, np.datetime64):
                ts[i] = t.astype("datetime64[s]")
            elif isinstance(t, datetime):
                if t.tzinfo is not None:
                    t = t.astimezone(UTC).replace(tzinfo=None)
                ts[i] = np.datetime64(t.replace(microsecond=0), "s")
            else:
                ts[i] = parse_timestamp(str(t))
        except (ValueError, OverflowError):
            problems.append(
                Problem(
                    "bad_timestamp",
                    f"row {rn[i]}: timestamp {t!r} is not ISO 8601",
                    (rn[i],),
                    "timestamp",
                )
            )
    loads = _floats(load_list, "load", problems, rn)
    temps = None if temp_list is None else _floats(temp_list, "temperature", problems, rn, blank_ok=True)
    if problems:
        raise DataValidationError(problems, source)
    return Readings(ts, loads, temps, np.asarray(rn, dtype="int64"), source)


def _fast_timestamps(values: Sequence[object] | np.ndarray) -> np.ndarray | None:
    """Timestamps all of the form ``YYYY-MM-DD[T ]HH:MM:SS[Z]`` (what API clients send) or
    already ``datetime64``: converted by numpy in one call, 10x faster than one ``datetime``
    each. ``None`` when any value has another form or does not parse; the
    general path then parses (and reports) them one by one."""
    if isinstance(values, np.ndarray) and values.dtype.kind == "M":
        return values.astype("datetime64[s]")
    if not len(values) or set(map(type, values)) != {str}:
        return None
    texts = cast(Sequence[str], values)
    if not set(map(len, texts)) <= {19, 20} or not all(
        t[:4].isdigit() and t[10] in "T " and t[19:] in ("", "Z", "z") for t in texts
    ):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return np.array([t[:19] for t in texts], dtype="datetime64[s]")
    except (ValueError, TypeError, DeprecationWarning):
        return None


def _floats(
    values: Sequence[object], name: str, problems: list[Problem], rn: list[int], blank_ok: bool = False
) -> np.ndarray:
    # Fast path: plain numbers (bool excluded: type(True) is bool), all finite.
    if set(map(type, values)) <= ({float, int, type(None)} if blank_ok else {float, int}):
        try:
            fast = np.array(values, dtype="float64")  # None -> NaN
        except OverflowError:
            pass
        else:
            if np.isfinite(fast[~np.isnan(fast)] if blank_ok else fast).all():
                return fast
    out = np.empty(len(values), dtype="float64")
    for i, v in enumerate(values):
        if v is None or (isinstance(v, str) and not v.strip()):
            if blank_ok:
                out[i] = np.nan
                continue
            problems.append(Problem(f"missing_{name}", f"row {rn[i]}: {name} is empty", (rn[i],), name))
            out[i] = np.nan
            continue
        try:
            if isinstance(v, bool):
                raise TypeError("a boolean is not a load")
            f = float(v.strip()) if isinstance(v, str) else float(v)  # type: ignore[arg-type]
        except (TypeError, ValueError, OverflowError):
            problems.append(
                Problem(
                    f"non_numeric_{name}",
                    f"row {rn[i]}: {name} {v!r} is not a number",
                    (rn[i],),
                    name,
                )
            )
            f = np.nan
        else:
            if not math.isfinite(f):
                problems.append(
                    Problem(
                        f"non_finite_{name}",
                        f"row {rn[i]}: {name} {v!r} is not finite",
                        (rn[i],),
                        name,
                    )
                )
                f = np.nan
        out[i] = f
    return out


# ------------------------------------------------------------------------ validation


@dataclass(frozen=True)
class FutureLimit:
    """The server's clock and the clock skew it tolerates: readings stamped later than
    ``now + tolerance_s`` are refused (a meter or client clock set wrong, or a time zone
    applied twice: no reading comes from the future)."""

    now: datetime  # aware
    tolerance_s: float

    def problem(self, readings: Readings) -> Problem | None:
        """One problem naming every reading stamped beyond the limit, or None."""
        now = np.datetime64(self.now.astimezone(UTC).replace(tzinfo=None, microsecond=0), "s")
        limit = now + np.timedelta64(int(self.tolerance_s), "s")
        ts = readings.timestamps.astype("datetime64[s]")
        ahead = np.flatnonzero(ts > limit)
        if not ahead.size:
            return None
        rows = readings.rows[ahead].tolist()
        first = ts[ahead[0]]
        lead_s = int((first - now).astype("int64"))
        return Problem(
            "future_timestamp",
            f"timestamp in the future at {_rows_text(rows)} (first: {iso(first)} is {lead_s} s ahead of the "
            f"server clock {iso(now)}; at most {self.tolerance_s:g} s of clock skew is accepted): check the "
            "clock and time zone of the source",
            tuple(rows),
            "timestamp",
        )


def infer_step_seconds(diffs_s: np.ndarray) -> int | None:
    positive = diffs_s[diffs_s > 0]
    if positive.size == 0:
        return None
    values, counts = np.unique(positive, return_counts=True)
    return int(values[np.argmax(counts)])


def validate(
    readings: Readings,
    *,
    min_days: float = 1.0,
    flatline_hours: float | None = 6.0,
    fill_gaps_up_to: int = 0,
    allow_gaps: bool = False,
    future: FutureLimit | None = None,
    max_steps: int | None = None,
) -> Series:
    """Check readings and return them on a regular grid.

    Raises ``DataValidationError`` listing every problem: duplicate or unordered
    timestamps, irregular or unsupported resolution, gaps (unless filled or allowed),
    negative loads, flatlines, out-of-range temperatures and too little history.
    ``fill_gaps_up_to``: gaps of at most this many missing steps are linearly interpolated
    (and reported); longer gaps are errors unless ``allow_gaps`` (they stay NaN).
    ``future``: also refuse readings stamped beyond the server's clock and its tolerance.
    ``max_steps``: refuse readings whose grid would have more steps (before making it).
    """
    src = readings.source
    problems: list[Problem] = []
    n = len(readings)
    if n < 2:
        raise InsufficientHistoryError(
            [
                Problem(
                    "too_little_history",
                    f"only {n} reading(s); at least {min_days:g} day(s) needed",
                )
            ],
            src,
        )
    ts = readings.timestamps.astype("datetime64[s]")
    secs = ts.astype("int64")
    rows = readings.rows

    # Values first: they do not depend on order.
    neg = np.flatnonzero(readings.load < 0)
    if neg.size:
        problems.append(
            Problem(
                "negative_load",
                f"negative load at {_rows_text(rows[neg].tolist())} "
                f"(first: {readings.load[neg[0]]:g} MW at {iso(ts[neg[0]])})",
                tuple(rows[neg].tolist()),
                "load",
            )
        )
    if readings.temperature is not None:
        t = readings.temperature
        bad_t = np.flatnonzero((t < MIN_TEMPERATURE_C) | (t > MAX_TEMPERATURE_C))
        if bad_t.size:
            problems.append(
                Problem(
                    "temperature_out_of_range",
                    f"temperature outside [{MIN_TEMPERATURE_C:g}, {MAX_TEMPERATURE_C:g}] deg C at "
                    f"{_rows_text(rows[bad_t].tolist())}",
                    tuple(rows[bad_t].tolist()),
                    "temperature",
                )
            )
    if future is not None and (ahead := future.problem(readings)) is not None:
        problems.append(ahead)

    # Order and duplicates.
    d = np.diff(secs)
    dup = np.flatnonzero(d == 0)
    if dup.size:
        r = rows[dup + 1].tolist()
        problems.append(
            Problem(
                "duplicate_timestamp",
                f"duplicate timestamp at {_rows_text(r)} (first: {iso(ts[dup[0] + 1])} repeats row {rows[dup[0]]})",
                tuple(r),
                "timestamp",
            )
        )
    back = np.flatnonzero(d < 0)
    if back.size:
        r = rows[back + 1].tolist()
        problems.append(
            Problem(
                "unordered_timestamp",
                f"timestamps go backwards at {_rows_text(r)} (first: row {rows[back[0] + 1]} "
                f"{iso(ts[back[0] + 1])} comes after {iso(ts[back[0]])}); sort the data by time",
                tuple(r),
                "timestamp",
            )
        )
    if dup.size or back.size:
        raise DataValidationError(problems, src)

    step = infer_step_seconds(d)
    assert step is not None
    if step < MIN_RESOLUTION_S or step > MAX_RESOLUTION_S or DAY_S % step or 3600 % step:
        problems.append(
            Problem(
                "unsupported_resolution",
                f"inferred resolution {step / 60:g} minutes is not supported: it must be between "
                f"5 and 60 minutes and divide an hour evenly",
                (),
                "timestamp",
            )
        )
        raise DataValidationError(problems, src)
    irregular = np.flatnonzero((secs - secs[0]) % step != 0)
    if irregular.size:
        r = rows[irregular].tolist()
        problems.append(
            Problem(
                "irregular_timestamp",
                f"timestamps off the {step // 60}-minute grid at {_rows_text(r)} (first: {iso(ts[irregular[0]])})",
                tuple(r),
                "timestamp",
            )
        )
        raise DataValidationError(problems, src)

    # Regular grid.
    idx = ((secs - secs[0]) // step).astype("int64")
    total = int(idx[-1]) + 1
    if max_steps is not None and total > max_steps:
        problems.append(
            Problem(
                "span_too_long",
                f"the readings span {total} steps of {step // 60} minutes ({iso(ts[0])} to {iso(ts[-1])}, gaps "
                f"included); at most {max_steps}: send the recent part",
                (),
                "timestamp",
            )
        )
        raise DataValidationError(problems, src)
    load = np.full(total, np.nan)
    load[idx] = readings.load
    temp = None
    if readings.temperature is not None:
        temp = np.full(total, np.nan)
        temp[idx] = readings.temperature
    gaps: list[Gap] = []
    filled = 0
    for j in np.flatnonzero(d > step):
        missing = int(d[j] // step) - 1
        gaps.append(Gap(int(rows[j]), ts[j] + np.timedelta64(step, "s"), missing))
    long_gaps = [g for g in gaps if g.missing_steps > fill_gaps_up_to]
    if long_gaps and not allow_gaps:
        total_missing = sum(g.missing_steps for g in gaps)
        head = f"{len(gaps)} gap(s) with {total_missing} missing reading(s) in total" + (
            f"; gaps of up to {fill_gaps_up_to} step(s) can be filled, these are longer"
            if fill_gaps_up_to
            else "; fill them or allow filling short gaps (--fill-gaps N)"
        )
        problems.append(Problem("gaps", head, tuple(g.after_row for g in long_gaps), "timestamp"))
        problems.extend(Problem("gap", g.describe(step), (g.after_row,), "timestamp") for g in long_gaps[:20])
    short = [g for g in gaps if g.missing_steps <= fill_gaps_up_to]
    if short:
        pos = np.arange(total)
        known = ~np.isnan(load)
        for g in short:
            a = int((g.start.astype("int64") - secs[0]) // step)
            seg = pos[a : a + g.missing_steps]
            load[seg] = np.interp(seg, pos[known], load[known])
            if temp is not None:
                tk = ~np.isnan(temp)
                if tk.any():
                    temp[seg] = np.interp(seg, pos[tk], temp[tk])
            filled += g.missing_steps

    # Flatlines: the same value repeated for a long stretch.
    if flatline_hours is not None:
        min_run = max(3, math.ceil(flatline_hours * 3600 / step))
        for a, b in flat_runs(load, min_run):
            problems.append(
                Problem(
                    "flatline",
                    f"flatline: load stays at {load[a]:g} MW for {b - a} readings "
                    f"({(b - a) * step / 3600:g} h) from {iso(ts[0] + np.timedelta64(a * step, 's'))}"
                    f" (rows {_grid_row(a, idx, rows)}-{_grid_row(b - 1, idx, rows)})",
                    tuple(range(_grid_row(a, idx, rows), _grid_row(b - 1, idx, rows) + 1)),
                    "load",
                )
            )

    days = total * step / DAY_S
    if days < min_days:
        problems.append(
            Problem(
                "too_little_history",
                f"only {days:.2f} day(s) of data from {iso(ts[0])} to {iso(ts[-1])}; "
                f"at least {min_days:g} day(s) needed",
                (),
                "timestamp",
            )
        )
        raise InsufficientHistoryError(problems, src)
    if problems:
        raise DataValidationError(problems, src)
    return Series(ts[0], step, load, temp, gaps, filled, src)


def _grid_row(grid_pos: int, idx: np.ndarray, rows: np.ndarray) -> int:
    k = int(np.searchsorted(idx, grid_pos))
    return int(rows[min(k, len(rows) - 1)])


def flat_runs(values: np.ndarray, min_len: int) -> list[tuple[int, int]]:
    """Half-open [start, end) runs of at least ``min_len`` identical, non-NaN values."""
    if values.size == 0:
        return []
    change = np.ones(values.size, dtype=bool)
    change[1:] = values[1:] != values[:-1]  # NaN != NaN, so NaNs never extend a run
    starts = np.flatnonzero(change)
    ends = np.append(starts[1:], values.size)
    keep = ((ends - starts) >= min_len) & ~np.isnan(values[starts])
    return list(zip(starts[keep].tolist(), ends[keep].tolist(), strict=True))


def run_lengths(values: np.ndarray) -> np.ndarray:
    """For each position, the length of the run of identical values it belongs to."""
    if values.size == 0:
        return np.zeros(0, dtype="int64")
    change = np.ones(values.size, dtype=bool)
    change[1:] = values[1:] != values[:-1]
    starts = np.flatnonzero(change)
    lengths = np.diff(np.append(starts, values.size))
    return np.repeat(lengths, lengths)
