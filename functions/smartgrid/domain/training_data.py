"""The meter data a retraining round (``retraining``) trains and scores on: every site's
accepted readings in the data window, on one grid, validated, flatlines blanked.

The accepted readings of every site (``accepted/<client>/<site_id>/*.csv`` in the meter-data
bucket) are read concurrently (``READ_WORKERS``), newest files first: the data window is the
last ``retrain_holdout_days`` whole days (UTC) plus at most ``retrain_max_days`` days before
them; readings before it are not used, and files stored before it are not read at all (a
file's readings precede its upload). A site's files on one grid (its dominant resolution: the
resolution and phase covering the most time) are concatenated, a timestamp delivered twice
keeping the reading of the newest file; files on another grid are left out and said why. The
result is validated by the engine (``data.validate``), and flatline stretches (a stuck meter:
``flatline_hours`` of one value, which ingestion lets through file by file) are blanked (NaN)
rather than dropping the site; what was blanked or skipped is recorded in ``Gathered`` (and
from there in the decision's ``sites``).
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from smartgrid.config import Settings
from smartgrid.engine.csv_files import read_csv
from smartgrid.engine.data import DAY_S, Readings, Series, flat_runs, infer_step_seconds, iso, validate
from smartgrid.errors import DataValidationError, InsufficientHistoryError, Problem
from smartgrid.observability import logger
from smartgrid.store import meter_bucket as store
from smartgrid.store.meter_bucket import ACCEPTED, MeterKey

READ_WORKERS = 8  # concurrent S3 GetObjects when gathering the accepted files
READ_BATCH = 4 * READ_WORKERS  # files read before the window's start is known better


@dataclass
class Site:
    name: str  # <client>/<site_id>
    series: Series
    files: int
    readings: int
    blanked: list[dict[str, Any]] = field(default_factory=list)  # flatline stretches set to NaN


@dataclass
class Gathered:
    sites: list[Site]
    skipped: dict[str, str]  # site -> why it was left out
    files: int  # files listed under accepted/
    files_read: int = 0
    files_not_read: int = 0  # stored before the data window: not read
    files_skipped: dict[str, str] = field(default_factory=dict)  # file key -> why its readings were not used
    window_start: np.datetime64 | None = None  # readings before it are not used (retrain_max_days)
    max_days: int = 0


# ------------------------------------------------------------------------- gathering
def parse_csv_bytes(data: bytes, source: str) -> Readings:
    """An accepted CSV through the engine's own parser (``csv_files.read_csv``)."""
    fd, tmp = tempfile.mkstemp(suffix=".csv")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        readings = read_csv(tmp)
    except DataValidationError as exc:
        raise DataValidationError(exc.problems, source) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    readings.source = source
    return readings


def combine(parts: list[Readings], source: str) -> Readings:
    """Concatenate a site's files (oldest first); a timestamp present in several keeps the
    reading of the last (newest) file. Sorted by time, rows renumbered 1..n."""
    ts = np.concatenate([p.timestamps.astype("datetime64[s]") for p in parts])
    load = np.concatenate([p.load for p in parts])
    temp = None
    if any(p.temperature is not None for p in parts):
        temp = np.concatenate([p.temperature if p.temperature is not None else np.full(len(p), np.nan) for p in parts])
    # np.unique keeps the first occurrence: look from the end so that the newest file wins.
    _, first_from_end = np.unique(ts[::-1], return_index=True)
    keep = np.sort(len(ts) - 1 - first_from_end)
    keep = keep[np.argsort(ts[keep], kind="stable")]
    return Readings(
        ts[keep],
        load[keep],
        None if temp is None else temp[keep],
        np.arange(1, keep.size + 1, dtype="int64"),
        source,
    )


def _parse(key: str, body: bytes) -> Readings | DataValidationError:
    try:
        return parse_csv_bytes(body, key)
    except DataValidationError as exc:
        return exc


def _step(r: Readings) -> int | None:
    secs = r.timestamps.astype("datetime64[s]").astype("int64")
    return infer_step_seconds(np.diff(np.sort(secs))) if len(r) >= 2 else None


def _window_end(last_s: int) -> int:
    """The holdout's end: the last midnight with a complete day before it (``holdout_window``)."""
    return last_s - last_s % DAY_S


def _read(
    settings: Settings, objects: list[store.ListedObject], span_s: int
) -> tuple[dict[str, Readings | DataValidationError], int]:
    """The files' readings, newest files first, READ_BATCH at a time (concurrently). Once the
    newest reading seen bounds the window's start from below, files stored before that bound
    hold no reading in the window (readings precede their upload) and are not read. Returns
    the parsed files and how many were not read."""
    order = sorted(objects, key=lambda o: (o.last_modified, o.key), reverse=True)
    parsed: dict[str, Readings | DataValidationError] = {}
    latest: int | None = None
    i = 0
    while i < len(order):
        end = min(i + READ_BATCH, len(order))
        if latest is not None:
            floor = _window_end(latest) - span_s
            end = next((k for k in range(i, end) if order[k].last_modified.timestamp() < floor), end)
            if end == i:
                return parsed, len(order) - i
        batch = order[i:end]
        for o, r in zip(
            batch, store.read_meter_many(settings, [o.key for o in batch], _parse, READ_WORKERS), strict=True
        ):
            parsed[o.key] = r
            if isinstance(r, Readings) and len(r):
                step = _step(r) or 0
                last = int(r.timestamps.astype("datetime64[s]").astype("int64").max()) + step
                latest = last if latest is None else max(latest, last)
        i = end
    return parsed, 0


def _one_grid(files: list[tuple[store.ListedObject, Readings]], name: str, skipped: dict[str, str]) -> list[Readings]:
    """The site's files on its dominant grid (resolution and phase covering the most time;
    a tie goes to the grid of the newest file); the others are recorded in ``skipped``."""
    grids: dict[tuple[int, int], list[tuple[store.ListedObject, Readings]]] = defaultdict(list)
    for o, r in files:
        step = _step(r) or 0
        phase = int(r.timestamps.astype("datetime64[s]").astype("int64").min()) % step if step else 0
        grids[(step, phase)].append((o, r))

    def weight(g: tuple[int, int]) -> tuple[int, Any]:
        return sum(len(r) for _, r in grids[g]) * g[0], max((o.last_modified, o.key) for o, _ in grids[g])

    best = max(grids, key=weight)
    for g, members in grids.items():
        if g == best:
            continue
        for o, _ in members:
            skipped[o.key] = (
                f"{name}: a {g[0] / 60:g}-minute grid (offset {g[1]} s) while the site's dominant one is "
                f"{best[0] / 60:g}-minute (offset {best[1]} s, {len(grids[best])} file(s)): not used"
            )
    return [r for _, r in grids[best]]


def _since(r: Readings, start_s: int) -> Readings:
    keep = r.timestamps.astype("datetime64[s]").astype("int64") >= start_s
    return Readings(
        r.timestamps[keep],
        r.load[keep],
        None if r.temperature is None else r.temperature[keep],
        np.arange(1, int(keep.sum()) + 1, dtype="int64"),
        r.source,
    )


def blank_flatlines(series: Series, flatline_hours: float) -> list[dict[str, Any]]:
    """Set every flatline (``flatline_hours`` or more of one value, the rule of ``validate``)
    to NaN in place: a stuck meter's stretch, not the site, is left out. Returns what was blanked."""
    min_run = max(3, math.ceil(flatline_hours * 3600 / series.step_s))
    blanked = []
    for a, b in flat_runs(series.load, min_run):
        blanked.append(
            {
                "start": iso(series.start + np.timedelta64(a * series.step_s, "s")),
                "end": iso(series.start + np.timedelta64((b - 1) * series.step_s, "s")),
                "readings": b - a,
                "load": float(series.load[a]),
            }
        )
        series.load[a:b] = np.nan
    return blanked


def gather(settings: Settings) -> Gathered:
    """Every site's accepted readings in the data window, on one grid, validated, flatlines
    blanked (see the module's docstring). A site whose data fails validation is left out
    (and said why), not the whole run."""
    groups: dict[str, list[store.ListedObject]] = defaultdict(list)
    skipped: dict[str, str] = {}
    files_skipped: dict[str, str] = {}
    objects = store.meter_objects(settings, ACCEPTED)
    for obj in objects:
        try:
            mk = MeterKey.parse(obj.key, prefix=ACCEPTED)
        except ValueError as exc:
            logger.warning("unexpected key under accepted/, ignored", extra={"key": obj.key, "error": str(exc)})
            continue
        groups[f"{mk.client}/{mk.site_id}"].append(obj)
    max_days = settings.retrain_max_days
    span_s = (settings.retrain_holdout_days + max_days) * DAY_S
    parsed, not_read = _read(settings, [o for g in groups.values() for o in g], span_s)

    combined: dict[str, tuple[Readings, int]] = {}
    for name in sorted(groups):
        files = sorted(groups[name], key=lambda o: (o.last_modified, o.key))  # oldest first: the newest wins
        read: list[tuple[store.ListedObject, Readings]] = []
        for o in files:
            r = parsed.get(o.key)
            if isinstance(r, DataValidationError):
                files_skipped[o.key] = f"does not parse: {r}"
                logger.warning("accepted file not used in retraining", extra={"key": o.key, "problems": str(r)})
            elif r is not None and len(r):
                read.append((o, r))
        if not read:
            skipped[name] = "no readable file in the data window"
            continue
        parts = _one_grid(read, name, files_skipped)
        combined[name] = (combine(parts, f"{ACCEPTED}{name}/ ({len(parts)} file(s))"), len(parts))

    window_start: int | None = None
    if combined:
        last = max(
            int(r.timestamps[-1].astype("datetime64[s]").astype("int64")) + (_step(r) or 0)
            for r, _ in combined.values()
        )
        window_start = _window_end(last) - span_s
    sites: list[Site] = []
    for name, (readings, n_files) in combined.items():
        assert window_start is not None
        recent = _since(readings, window_start)
        try:
            if len(recent) < 2:
                raise InsufficientHistoryError(
                    [Problem("too_little_history", f"no readings since {iso(np.datetime64(window_start, 's'))}")],
                    readings.source,
                )
            series = validate(recent, min_days=1.0, flatline_hours=None, allow_gaps=True)
        except DataValidationError as exc:
            skipped[name] = str(exc)
            logger.warning("site left out of retraining", extra={"site": name, "problems": str(exc)})
            continue
        blanked = blank_flatlines(series, settings.flatline_hours)
        if blanked:
            logger.warning("flatlines blanked in a site's readings", extra={"site": name, "stretches": len(blanked)})
        sites.append(Site(name, series, n_files, len(recent), blanked))
    return Gathered(
        sites,
        skipped,
        len(objects),
        files_read=len(parsed),
        files_not_read=not_read,
        files_skipped=files_skipped,
        window_start=None if window_start is None else np.datetime64(window_start, "s"),
        max_days=max_days,
    )
