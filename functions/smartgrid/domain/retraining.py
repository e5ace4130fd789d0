"""Monthly champion/challenger retraining (``docs/requirements.md#retraining``: "deploy only
if new MAPE is better").

1. Gather every site's accepted readings in the data window (``training_data.gather``): the
   last ``retrain_holdout_days`` whole days (UTC) plus at most ``retrain_max_days`` days before
   them, each site on one grid, validated, flatline stretches blanked (NaN) rather than
   dropping the site; what was blanked or skipped is recorded in the decision's ``sites``.
2. Hold out the most recent ``retrain_holdout_days`` whole days (UTC) of the data; train the
   challenger on the days before (``train_all``).
3. Score champion and challenger on the SAME holdout with the same day-ahead protocol: each
   holdout day forecast at its midnight by ``Forecaster`` from the history before it (the
   observed temperature of the day standing in for its forecast, as in the backtests), MAPE
   of P50 against the actuals, on the points both forecast. With no champion pointer yet, the
   champion is what the API serves then: the bundled models (``settings.model_dir``).
4. Promote only if the challenger's MAPE is lower. Promotion is the registry's single pointer
   switch; the decision is recorded in ``registry/decisions/`` and logged either way, with
   duration and peak memory.

Too little data raises ``InsufficientHistoryError`` after recording a "skipped" decision.
"""

from __future__ import annotations

import contextlib
import resource
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from smartgrid.config import Settings
from smartgrid.domain import champion as reg
from smartgrid.domain.training_data import Gathered, Site, gather
from smartgrid.engine.accuracy import mape
from smartgrid.engine.data import DAY_S, Series, iso
from smartgrid.engine.features import HolidayCalendar
from smartgrid.engine.forecast import Forecaster, ModelSet
from smartgrid.errors import (
    ConflictError,
    InsufficientHistoryError,
    ModelIntegrityError,
    ModelNotFoundError,
    Problem,
    SmartgridError,
)
from smartgrid.observability import logger
from smartgrid.store.meter_bucket import ACCEPTED

# The challenger needs this many whole days before the holdout (as `smartgrid train` asks):
# the mixture of experts keeps a quarter of its training days for its gate and intervals.
MIN_TRAINING_DAYS = 60
PROTOCOL = (
    "each holdout day forecast at its midnight (UTC) from the history before it, with the day's observed "
    "temperature as its forecast; MAPE of P50 against actuals on the points both sets forecast"
)


@dataclass
class Score:
    mape: float | None
    points: int
    days: int
    fallback_days: int  # days the set's fallback answered (its primary model could not)


@dataclass
class Decision:
    status: str  # "promoted" | "kept" | "skipped"
    reason: str
    champion: dict[str, Any] | None = None  # {"set_id", "mape", ...}
    challenger: dict[str, Any] | None = None
    data_window: dict[str, Any] | None = None
    holdout_window: dict[str, Any] | None = None
    sites: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, float] = field(default_factory=dict)
    started_at: str = ""
    finished_at: str = ""
    decision_key: str | None = None
    new_champion: str | None = None

    @property
    def promoted(self) -> bool:
        return self.status == "promoted"

    def to_json(self) -> dict[str, Any]:
        return {"kind": "retraining", "promoted": self.promoted, **asdict(self)}


# ------------------------------------------------------------------------- holdout
def _secs(t: np.datetime64) -> int:
    return int(t.astype("datetime64[s]").astype("int64"))


def holdout_window(sites: list[Site], days: int) -> tuple[np.datetime64, np.datetime64]:
    """[start, end) of the last ``days`` whole days (UTC): ``end`` is the last midnight the
    data reaches with a complete day before it."""
    last = max(_secs(s.series.end) + s.series.step_s for s in sites)
    end = last - last % DAY_S
    return np.datetime64(end - days * DAY_S, "s"), np.datetime64(end, "s")


def _index(series: Series, t: np.datetime64) -> int:
    """Grid index of time ``t`` in ``series`` (may be outside 0..n)."""
    return (_secs(t) - _secs(series.start)) // series.step_s


def training_part(series: Series, holdout_start: np.datetime64) -> Series | None:
    cut = min(series.n, max(0, _index(series, holdout_start)))
    return series.slice(0, cut) if cut > 0 else None


def _whole_days(series: Series) -> float:
    return float(np.isfinite(series.load).sum()) * series.step_s / DAY_S


# ------------------------------------------------------------------------- evaluation
Points = dict[tuple[str, int], tuple[np.ndarray, np.ndarray, bool]]  # (site, day) -> actual, p50, fallback


def day_ahead_points(
    models: ModelSet,
    sites: list[Site],
    start: np.datetime64,
    days: int,
    calendar: HolidayCalendar,
    flatline_hours: float,
) -> Points:
    """Every holdout day of every site, forecast at its midnight from the history before it."""
    forecaster = Forecaster(models, calendar, flatline_hours)
    out: Points = {}
    for site in sites:
        s = site.series
        S = DAY_S // s.step_s
        for d in range(days):
            i = _index(s, start + np.timedelta64(d * DAY_S, "s"))
            if i < S or i + S > s.n:
                continue  # no history before the day, or the day is not in the data
            actual = s.load[i : i + S]
            if not np.isfinite(actual).any():
                continue
            temp = None
            if s.temperature is not None and np.isfinite(s.temperature[i : i + S]).all():
                temp = s.temperature[i : i + S]
            try:
                fc = forecaster.forecast(s.slice(0, i), temp)
            except SmartgridError as exc:
                logger.info("holdout day not forecast", extra={"site": site.name, "day": d, "error": str(exc)})
                continue
            out[(site.name, d)] = (actual, fc.p50, fc.fallback_reason is not None)
    return out


def score(points: Points, keys: list[tuple[str, int]]) -> Score:
    if not keys:
        return Score(None, 0, 0, 0)
    y = np.concatenate([points[k][0] for k in keys])
    p = np.concatenate([points[k][1] for k in keys])
    ok = np.isfinite(y) & (y != 0)
    return Score(
        round(mape(y[ok], p[ok]), 4) if ok.any() else None,
        int(ok.sum()),
        len(keys),
        sum(1 for k in keys if points[k][2]),
    )


# ------------------------------------------------------------------------- the run
class _Run:
    """One round's bookkeeping: the decision being built, and wall/CPU time per phase."""

    def __init__(self, settings: Settings, now: datetime | None) -> None:
        self.settings = settings
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        self.phases: dict[str, float] = {}
        self.decision = Decision(status="skipped", reason="", started_at=reg.iso_now(now or reg.utcnow()))

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.phases[f"{name}_s"] = round(time.perf_counter() - t, 2)

    def skip(self, reason: str) -> InsufficientHistoryError:
        self.decision.status, self.decision.reason = "skipped", reason
        self.finish()
        return InsufficientHistoryError([Problem("not_enough_data", reason)], "retraining")

    def finish(self) -> Decision:
        d = self.decision
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        d.resources = {
            "duration_s": round(time.perf_counter() - self.t0, 2),
            "cpu_s": round(time.process_time() - self.c0, 2),
            "peak_rss_mib": round(peak_kib / 1024, 1),
            **self.phases,
        }
        d.finished_at = reg.iso_now(reg.utcnow())
        d.decision_key = reg.record_decision(self.settings, d.to_json())
        (logger.warning if d.status == "skipped" else logger.info)(
            f"retraining {d.status}",
            extra={
                "status": d.status,
                "reason": d.reason,
                "champion": d.champion,
                "challenger": d.challenger,
                "holdout_window": d.holdout_window,
                "resources": d.resources,
                "decision_key": d.decision_key,
            },
        )
        return d


def _plan(run: _Run, gathered: Gathered, days: int) -> tuple[np.datetime64, list[Series]]:
    """The holdout's first midnight and each site's training part (sites with too few days
    before the holdout are left out, and said why); recorded in the decision."""
    d = run.decision
    left_out = dict(gathered.skipped)
    trained_on: list[str] = []
    d.sites = {
        "files": gathered.files,  # listed under accepted/
        "files_read": gathered.files_read,
        "files_not_read": gathered.files_not_read,  # stored before the data window
        "files_skipped": gathered.files_skipped,  # file -> why its readings were not used
        "readings": sum(s.readings for s in gathered.sites),  # in the window, after dropping repeated timestamps
        "resolution_minutes": {s.name: s.series.resolution_minutes for s in gathered.sites},
        "flatlines_blanked": {s.name: s.blanked for s in gathered.sites if s.blanked},  # set to NaN
        "evaluated_on": [s.name for s in gathered.sites],
        "trained_on": trained_on,
        "left_out": left_out,  # site -> why it was not trained on (invalid data: not evaluated either)
    }
    cap = {
        "max_days": gathered.max_days,  # retrain_max_days: training days before the holdout, at most
        "cut_at": None if gathered.window_start is None else iso(gathered.window_start),
    }
    if not gathered.sites:
        d.data_window = cap
        return np.datetime64(0, "s"), []
    start, end = holdout_window(gathered.sites, days)
    d.data_window = {
        "start": iso(min(s.series.start for s in gathered.sites)),
        "end": iso(max(s.series.end for s in gathered.sites)),
        **cap,
    }
    d.holdout_window = {"start": iso(start), "end": iso(end - np.timedelta64(1, "s")), "days": days}
    train: list[Series] = []
    for site in gathered.sites:
        part = training_part(site.series, start)
        have = 0.0 if part is None else _whole_days(part)
        if part is not None and have >= MIN_TRAINING_DAYS:
            train.append(part)
            trained_on.append(site.name)
        else:
            left_out[site.name] = f"{have:.1f} day(s) of readings before the holdout; {MIN_TRAINING_DAYS} needed"
    return start, train


def _decide(champion: str, problem: str | None, c: Score, h: Score | None) -> tuple[bool, str]:
    """The rule of ``docs/requirements.md#retraining``: promote only if the challenger's MAPE
    is lower. ``champion``: what serves now, in words (a set, or the bundled models)."""
    assert c.mape is not None
    if problem is not None:
        return True, f"{champion} could not be loaded ({problem})"
    if h is None or h.mape is None:
        return True, f"{champion} could not be scored on the holdout"
    if c.mape < h.mape:
        return True, f"challenger MAPE {c.mape:.3f}% < champion MAPE {h.mape:.3f}% ({champion})"
    return False, f"challenger MAPE {c.mape:.3f}% >= champion MAPE {h.mape:.3f}% ({champion}): champion kept"


def _load_champion(
    settings: Settings, champion: reg.Champion | None, work: Path
) -> tuple[ModelSet | None, str | None, dict[str, Any]]:
    """What the API serves now, loaded: the champion set, or with no pointer the bundled
    models. Returns the models (None when they cannot be loaded), the problem, and the
    decision's champion record."""
    if champion is not None:
        record: dict[str, Any] = {"set_id": champion.set_id, "source": "registry"}
        try:
            return reg.load_set(settings, champion.set_id, work / "champion", settings.ort_threads), None, record
        except (ModelIntegrityError, ModelNotFoundError) as exc:  # lost or damaged: not a transient failure
            logger.error("the champion set could not be loaded", extra={"set_id": champion.set_id, "error": str(exc)})
            return None, str(exc), record
    record = {"set_id": None, "source": "bundled", "model_dir": str(settings.model_dir)}
    bundled = ModelSet.load(settings.model_dir, threads=settings.ort_threads)
    if not bundled.models:
        problem = "; ".join(bundled.errors.values()) or f"no model in {settings.model_dir}"
        logger.error("the bundled models could not be loaded", extra={"model_dir": str(settings.model_dir)})
        return None, problem, record
    if bundled.errors:  # scored as they serve: the fallback answers for a missing model
        record["errors"] = dict(bundled.errors)
    return bundled, None, record


def retrain(
    settings: Settings,
    *,
    params: Any = None,
    anomaly_events_per_series: int | None = None,
    now: datetime | None = None,
) -> Decision:
    """One champion/challenger round (see the module's docstring). ``params``: the mixture of
    experts' ``MoEParams`` (default: the production ones with ``settings.train_threads``)."""
    from smartgrid.training.moe import MoEParams
    from smartgrid.training.pipeline import train_all

    run = _Run(settings, now)
    d = run.decision
    calendar = HolidayCalendar(settings.holiday_country, settings.holiday_subdivision)
    days, flat = settings.retrain_holdout_days, settings.flatline_hours

    with run.phase("gather"):
        gathered = gather(settings)
    holdout_start, train_series = _plan(run, gathered, days)
    if not train_series:
        raise run.skip(
            f"not enough data: no site has {MIN_TRAINING_DAYS} days of accepted readings before the last "
            f"{days} days held out for evaluation ({len(gathered.sites)} site(s) with valid data, "
            f"{gathered.files} file(s) under s3://{settings.meter_data_bucket}/{ACCEPTED})"
        )

    champion = reg.read_champion(settings)
    with tempfile.TemporaryDirectory(prefix="smartgrid-retrain-") as tmp:
        work = Path(tmp)
        logger.info("training the challenger", extra={"sites": d.sites["trained_on"], "holdout": d.holdout_window})
        with run.phase("train"):
            metas = train_all(
                train_series,
                work / "challenger",
                calendar,
                params or MoEParams(threads=settings.train_threads),
                anomaly_events_per_series=anomaly_events_per_series,
            )
        challenger = ModelSet.load(work / "challenger", threads=settings.ort_threads)
        if challenger.errors:
            raise ModelIntegrityError(f"the challenger did not load: {'; '.join(challenger.errors.values())}")
        champion_models, problem, held = _load_champion(settings, champion, work)
        d.champion = held
        serving = f"the champion set {champion.set_id}" if champion else f"the bundled models ({settings.model_dir})"

        with run.phase("evaluate"):
            cpts = day_ahead_points(challenger, gathered.sites, holdout_start, days, calendar, flat)
            hpts: Points = {}
            if champion_models is not None:
                hpts = day_ahead_points(champion_models, gathered.sites, holdout_start, days, calendar, flat)
        # the same points for both: the days each set could forecast
        keys = sorted(set(cpts) & set(hpts)) if champion_models is not None else sorted(cpts)
        c_score = score(cpts, keys)
        h_score = score(hpts, keys) if champion_models is not None else None
        d.evaluation = {"protocol": PROTOCOL, "days_scored": len(keys), "points": c_score.points}
        d.challenger = {
            "set_id": None,
            **asdict(c_score),
            "training_window": metas["load_forecast"].training_window,
            "training_rows": metas["load_forecast"].metrics.get("training_rows"),
        }
        held.update(asdict(h_score) if h_score else {})
        if problem:
            held["error"] = problem
        if c_score.mape is None:
            raise run.skip(
                f"not enough data: no day of the last {days} could be forecast and scored (holdout {d.holdout_window})"
            )

        promote, why = _decide(serving, problem, c_score, h_score)
        d.status, d.reason = ("promoted" if promote else "kept"), why
        if promote:
            with run.phase("promote"):
                _promote(settings, d, work / "challenger", champion, c_score, len(keys))
    return run.finish()


def _promote(
    settings: Settings, d: Decision, directory: Path, champion: reg.Champion | None, c: Score, days: int
) -> None:
    """Upload the challenger as a set (verified), then switch the pointer: one PutObject,
    only if the champion is still the one this round compared against."""
    assert d.challenger is not None
    prepared = reg.prepare_set(
        directory,
        source="retraining",
        mape=c.mape,
        evaluation={"protocol": PROTOCOL, "holdout_window": d.holdout_window, "days": days, "points": c.points},
    )
    info = reg.upload_set(settings, prepared)
    d.challenger["set_id"] = info.set_id
    try:
        reg.promote(settings, info.set_id, f"retraining: {d.reason}", champion)
        d.new_champion = info.set_id
    except ConflictError:
        now_champion = reg.read_champion(settings)
        d.status = "kept"
        d.reason = (
            f"{d.reason}; but the champion changed during retraining (now "
            f"{now_champion.set_id if now_champion else 'none'}): not promoted, the next run compares against it "
            f"(set {info.set_id} stays uploaded)"
        )
