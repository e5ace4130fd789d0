"""The prediction service: the domain logic behind the API and the CLI's ``serve``.

It validates inputs with the engine (``data.validate``), forecasts with ``Forecaster``,
detects anomalies, and keeps predictions, actuals, the five-minute cache and idempotency
records through a ``Store`` (implemented over DynamoDB in ``smartgrid.store``). It knows
nothing of HTTP: it raises the typed errors of ``errors.py`` and the API maps them. Actuals
are checked against their prediction and compared with its forecast in ``actuals``.

Degraded modes (``docs/requirements.md#degraded-modes``): a cache failure is logged and
counted and the request is served without the cache; a predictions-table failure is critical
(``/health`` says so): what the request wrote is undone and its forecasts are still served,
marked not stored and without ids, so nothing is acknowledged that was not stored. A request
with an Idempotency-Key fails instead with ``DependencyUnavailableError``
(``PartialWriteError`` when the undo fails too: a retry with the same key then completes it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any, cast

import numpy as np
from cachetools import TLRUCache

from smartgrid.catalog import (
    CACHE_ERRORS_TOTAL,
    FALLBACK_FORECASTS_TOTAL,
    MODEL_ANOMALIES_DETECTED,
    MODEL_INFERENCE_DURATION_SECONDS,
    PREDICTIONS_NOT_STORED_TOTAL,
    PREDICTIONS_TOTAL,
)
from smartgrid.config import Settings
from smartgrid.domain.actuals import ActualsResult, actual_values, compare_actuals
from smartgrid.domain.champion import ChampionWatcher
from smartgrid.engine.anomaly import detect as run_detect
from smartgrid.engine.data import MAX_READINGS, FutureLimit, Readings, iso_all, readings_from_records, validate
from smartgrid.engine.features import HolidayCalendar
from smartgrid.engine.forecast import Forecast, Forecaster, ModelSet
from smartgrid.engine.model_files import ANOMALY_DETECTOR, BASELINE_FORECAST, LOAD_FORECAST, MODEL_NAMES
from smartgrid.errors import (
    ConflictError,
    DataValidationError,
    DependencyUnavailableError,
    ForecastUnavailableError,
    NotFoundError,
    PartialWriteError,
    Problem,
)
from smartgrid.observability import logger, metrics
from smartgrid.store.records import Claim, Page, PredictionRecord, Store, new_prediction_id


def utcnow() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------------------- records
@dataclass(frozen=True)
class SeriesInput:
    """One site's recent history, as the API or a caller gives it."""

    timestamps: Sequence[str] | np.ndarray  # ISO 8601 strings or datetime64
    load: Sequence[float]
    temperature: Sequence[float | None] | None = None
    forecast_timestamps: Sequence[str] | None = None  # temperature forecast for the next day
    forecast_temperature: Sequence[float] | None = None
    site_id: str | None = None


@dataclass
class ItemOutcome:
    index: int
    record: PredictionRecord | None = None
    error: DataValidationError | ForecastUnavailableError | None = None


@dataclass
class HealthReport:
    status: str
    uptime: int
    models_loaded: int
    database: str
    cache: str
    timestamp: str


_Parsed = tuple[Readings, Readings | None]


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()).hexdigest()


def _round(values: np.ndarray) -> list[float]:
    rounded: list[float] = np.round(np.asarray(values, dtype="float64"), 3).tolist()
    return rounded


# ---------------------------------------------------------------------------- service
class PredictionService:
    def __init__(
        self,
        settings: Settings,
        models: ModelSet,
        store_factory: Callable[[], Store],
        clock: Callable[[], datetime] = utcnow,
        watcher: ChampionWatcher | None = None,
    ) -> None:
        self.settings = settings
        self._store_factory = store_factory
        self.clock = clock
        self.started = time.monotonic()
        self.calendar = HolidayCalendar(settings.holiday_country, settings.holiday_subdivision)
        self._watcher = watcher  # follows the registry's champion pointer (None: these models only)
        self._use_models(models)
        self._cache_down_until = 0.0  # after a cache failure, skip the cache for a while
        self._checks: dict[str, threading.Thread] = {}  # health checks in flight
        # The cache's first tier: this container's memory (entry -> (valid until, value)),
        # in front of the shared cache table. Bounded; entries expire with their validity.
        self._memory: TLRUCache[str, tuple[float, dict[str, Any]]] = TLRUCache(
            maxsize=1024, ttu=lambda _k, v, _now: v[0], timer=lambda: self.clock().timestamp()
        )

    def _use_models(self, models: ModelSet) -> None:
        self.models = models
        self.forecaster = Forecaster(models, self.calendar, self.settings.flatline_hours, max_steps=MAX_READINGS)
        versions = {n: (m.meta.version if (m := models.get(n)) else None) for n in MODEL_NAMES}
        # Part of every cache key: a new model set (or calendar, or flatline rule, which decides
        # primary vs fallback) never serves old forecasts.
        self._model_key = digest(
            [versions, self.settings.holiday_country, self.settings.holiday_subdivision, self.settings.flatline_hours]
        )

    def refresh_models(self) -> None:
        """Swap to a newly promoted model set without a redeploy: the watcher checks the
        champion pointer at most every ``model_refresh_s`` and never raises."""
        if self._watcher is not None and (models := self._watcher.poll()) is not None:
            self._use_models(models)

    @cached_property
    def store(self) -> Store:
        # Created on first use: a cold start that never touches DynamoDB never imports it.
        return self._store_factory()

    # -- predictions
    def predict(
        self,
        user_id: str,
        inputs: list[SeriesInput],
        idempotency_key: str | None = None,
        request_digest: str | None = None,
    ) -> list[ItemOutcome]:
        """Forecast every input; per-item validation errors are returned, not raised.
        All predictions of the request are written, or none. When none could be written (the
        predictions table is down and nothing of the request is left in it), the forecasts are
        still served, each marked ``stored=False`` with no id to quote (nothing is acknowledged
        that was not stored); a request with an Idempotency-Key asked for a durable record and
        gets ``DependencyUnavailableError`` instead. If the table fails mid-write and the undo
        fails too, ``PartialWriteError`` says so and a retry with the same Idempotency-Key
        completes the request without duplicates.
        Batches are batched all the way: one cache read (BatchGetItem), one model run, and
        writes of 25 items a call."""
        self.refresh_models()
        now = self.clock()
        limit = self.future_limit()  # the clock now, also on a retry that takes over a claim
        claim: Claim | None = None
        if idempotency_key is not None:
            claim = self._claim(user_id, idempotency_key, request_digest or "", len(inputs), now)
            if claim.completed:
                return self._replay(user_id, claim, inputs)
            now = claim.created  # the reserved ULIDs encode the first attempt's time
        try:
            parsed = [self._parse(item, limit) for item in inputs]
            keys = [None if isinstance(p, DataValidationError) else self._cache_key(*p) for p in parsed]
            found = self._cache_get([k for k in keys if k is not None], now)
            todo = [i for i, k in enumerate(keys) if k is not None and k not in found]
            computed = dict(zip(todo, self._forecast([cast(_Parsed, parsed[i]) for i in todo]), strict=True))
            fresh: dict[str, dict[str, Any]] = {}
            outcomes: list[ItemOutcome] = []
            records: list[PredictionRecord] = []
            for i, (item, key) in enumerate(zip(inputs, keys, strict=True)):
                p = parsed[i]
                result = p if isinstance(p, DataValidationError) else computed[i] if i in computed else found[key or ""]
                if isinstance(result, DataValidationError | ForecastUnavailableError):
                    outcomes.append(ItemOutcome(i, error=result))
                    continue
                assert key is not None
                if i in computed and not result.pop("transient", False):  # a model failure may pass
                    fresh[key] = result
                pid = claim.prediction_ids[i] if claim else new_prediction_id(now)
                rec = self._record(user_id, pid, key, item, result, "computed" if i in computed else "cache", now)
                rec.idempotency_key = idempotency_key
                records.append(rec)
                outcomes.append(ItemOutcome(i, record=rec))
            if records:
                try:
                    self._save(records, fresh, now)
                except DependencyUnavailableError:
                    if claim is not None:
                        raise
                    for rec in records:
                        rec.stored = False
                    metrics.add_metric(name=PREDICTIONS_NOT_STORED_TOTAL, unit="Count", value=len(records))
                metrics.add_metric(name=PREDICTIONS_TOTAL, unit="Count", value=len(records))
        except BaseException as exc:
            if claim is not None:
                # Something may be stored: keep the claim (and its ids) for a retry to take over
                # at once. Nothing stored: free the key, for a corrected body too.
                self._finish_claim(user_id, idempotency_key or "", claim, keep=isinstance(exc, PartialWriteError))
            raise
        if claim is not None:
            if any(isinstance(o.error, ForecastUnavailableError) for o in outcomes):
                # Not a final answer (a model is missing): a retry recomputes, reusing the ids.
                self._finish_claim(user_id, idempotency_key or "", claim, keep=True)
            else:
                errors = [o.index for o in outcomes if o.error is not None]
                try:
                    self.store.complete(user_id, idempotency_key or "", errors or None, claim.until)
                except Exception:
                    # The predictions are saved under the reserved ids: a retry after the
                    # in-progress window recomputes and overwrites the same items.
                    logger.exception("completing the idempotency record failed")
        return outcomes

    def _record(
        self, user_id: str, pid: str, key: str, item: SeriesInput, fc: dict[str, Any], source: str, now: datetime
    ) -> PredictionRecord:
        if fc["model"] != LOAD_FORECAST:
            metrics.add_metric(name=FALLBACK_FORECASTS_TOTAL, unit="Count", value=1)
        return PredictionRecord(
            user_id=user_id,
            prediction_id=pid,
            created_at=now,
            inputs_digest=key,
            model=fc["model"],
            model_version=fc["model_version"],
            fallback_reason=fc["fallback_reason"],
            resolution_minutes=fc["resolution_minutes"],
            source=source,
            timestamps=fc["timestamps"],
            p10=fc["p10"],
            p50=fc["p50"],
            p90=fc["p90"],
            site_id=item.site_id,
            expires_at=now + timedelta(days=self.settings.prediction_retention_days),
        )

    def future_limit(self) -> FutureLimit:
        """Readings may be stamped at most ``max_clock_skew_s`` after the service's clock."""
        return FutureLimit(self.clock(), self.settings.max_clock_skew_s)

    @staticmethod
    def _parse(item: SeriesInput, limit: FutureLimit) -> _Parsed | DataValidationError:
        """The history (none of it later than ``limit``) and the temperature forecast, which is
        of the future by design."""
        try:
            readings = readings_from_records(item.timestamps, item.load, item.temperature, source="history")
            if (ahead := limit.problem(readings)) is not None:
                raise DataValidationError([ahead], "history")
            future = None
            if item.forecast_timestamps is not None and item.forecast_temperature is not None:
                future = readings_from_records(
                    item.forecast_timestamps,
                    [0.0] * len(item.forecast_timestamps),
                    item.forecast_temperature,
                    source="temperature_forecast",
                )
        except DataValidationError as exc:
            return exc
        return readings, future

    def _cache_key(self, readings: Readings, future: Readings | None) -> str:
        """Digest of the parsed inputs (so ``...Z``, offsets and the compact form of the same
        readings share an entry) and of the model set and calendar that answer them."""
        h = hashlib.sha256(self._model_key.encode())
        for r in (readings, future):
            if r is None:
                h.update(b"|none")
                continue
            h.update(b"|%d|" % len(r))
            h.update(np.ascontiguousarray(r.timestamps, dtype="datetime64[s]").tobytes())
            h.update(np.ascontiguousarray(r.load, dtype="float64").tobytes())
            t = r.temperature
            h.update(b"|t" + np.ascontiguousarray(t, dtype="float64").tobytes() if t is not None else b"|n")
        return h.hexdigest()

    def _forecast(self, items: list[_Parsed]) -> list[dict[str, Any] | DataValidationError | ForecastUnavailableError]:
        if not items:
            return []
        with _inference_timer():
            results = self.forecaster.forecast_many(items)
        return [fc if isinstance(fc, Exception) else _forecast_json(fc) for fc in results]

    def _cache_on(self) -> bool:
        return self.settings.cache_ttl_s > 0 and time.monotonic() >= self._cache_down_until

    def _cache_get(self, keys: list[str], now: datetime) -> dict[str, dict[str, Any]]:
        """Valid entries for ``keys``: this container's memory first, then the cache table."""
        if self.settings.cache_ttl_s <= 0:
            return {}
        t = now.timestamp()
        found: dict[str, dict[str, Any]] = {}
        for k in keys:
            hit = self._memory.get(k)
            if hit is not None and hit[0] >= t:
                found[k] = hit[1]
        missing = [k for k in dict.fromkeys(keys) if k not in found]
        if missing and self._cache_on():
            try:
                shared = self.store.cache_get_many(missing, now)
            except Exception as exc:
                self._cache_failed("read", exc)
                shared = {}
            for k, (until, value) in shared.items():
                self._memory[k] = (until, value)
                found[k] = value
        return found

    def _save(self, records: list[PredictionRecord], fresh: dict[str, dict[str, Any]], now: datetime) -> None:
        cache = fresh if self._cache_on() else {}
        try:
            cached = self.store.save_predictions(records, cache, now)
        except Exception as exc:
            logger.exception("saving predictions failed")
            if self._undo(records):
                raise DependencyUnavailableError("the predictions table is unavailable; nothing was saved") from exc
            raise PartialWriteError(
                "the predictions table is unavailable; some predictions may be stored: retry with the same "
                "Idempotency-Key to complete the request without duplicates"
            ) from exc
        if cache and not cached:
            self._cache_failed("write", RuntimeError("cache table write failed"))
        if self.settings.cache_ttl_s > 0:
            until = now.timestamp() + self.settings.cache_ttl_s
            for k, v in fresh.items():
                self._memory[k] = (until, v)

    def _cache_failed(self, op: str, exc: Exception) -> None:
        # The cache is not critical (docs/requirements.md#degraded-modes): serve without it, but
        # say so, and do not pay a failing call (with its retries) on every request: skip it for
        # a while.
        logger.warning("cache %s failed; serving without the cache", op, extra={"error": repr(exc)})
        metrics.add_metric(name=CACHE_ERRORS_TOTAL, unit="Count", value=1)
        self._cache_down_until = time.monotonic() + self.settings.cache_retry_after_s

    def _claim(self, user_id: str, key: str, request_digest: str, n: int, now: datetime) -> Claim:
        try:
            claim = self.store.claim(user_id, key, request_digest, n, now)
        except (ConflictError, DataValidationError):
            raise
        except Exception as exc:
            logger.exception("idempotency claim failed")
            raise DependencyUnavailableError("the idempotency table is unavailable; nothing was saved") from exc
        if len(claim.prediction_ids) != n:
            raise ConflictError(
                "this Idempotency-Key was used for a request with a different number of items",
                "idempotency_key_reused",
            )
        return claim

    def _finish_claim(self, user_id: str, key: str, claim: Claim, keep: bool) -> None:
        try:
            if keep:
                self.store.expire_claim(user_id, key, claim.until)
            else:
                self.store.release_claim(user_id, key, claim.until)
        except Exception:
            logger.exception("updating the idempotency record failed; its in-progress window ends on its own")

    def _undo(self, records: list[PredictionRecord]) -> bool:
        try:
            self.store.delete_predictions(records)
            return True
        except Exception:
            logger.exception("removing partly saved predictions failed")
            return False

    def _replay(self, user_id: str, claim: Claim, inputs: list[SeriesInput]) -> list[ItemOutcome]:
        """The first response again: stored predictions by id; the items that failed validation
        are validated again (deterministic, and nothing of unbounded size is stored)."""
        failed = set(claim.errors or ())
        wanted = [pid for i, pid in enumerate(claim.prediction_ids) if i not in failed]
        try:
            found = self.store.get_predictions(user_id, wanted) if wanted else {}
        except Exception as exc:
            raise DependencyUnavailableError("the predictions table is unavailable") from exc
        outcomes = []
        for i, pid in enumerate(claim.prediction_ids):
            if i in failed:
                outcomes.append(ItemOutcome(i, error=self._validation_error(inputs[i])))
            elif pid in found:
                outcomes.append(ItemOutcome(i, record=found[pid]))
            else:
                raise DependencyUnavailableError(f"stored prediction {pid} of this idempotent request is missing")
        return outcomes

    def _validation_error(self, item: SeriesInput) -> DataValidationError | ForecastUnavailableError:
        parsed = self._parse(item, self.future_limit())
        if isinstance(parsed, DataValidationError):
            return parsed
        (result,) = self.forecaster.forecast_many([parsed])
        if isinstance(result, Exception):
            return result
        return DataValidationError(
            [
                Problem(
                    "not_reproducible",
                    "this item failed when first sent but passes now; send it again without the Idempotency-Key",
                )
            ],
            "history",
        )

    def list_predictions(self, user_id: str, since: datetime | None, limit: int, cursor: str | None) -> Page:
        try:
            return self.store.list_predictions(user_id, since, limit, cursor)
        except (DataValidationError, NotFoundError):
            raise
        except Exception as exc:
            logger.exception("listing predictions failed")
            raise DependencyUnavailableError("the predictions table is unavailable") from exc

    # -- actuals
    def record_actuals(
        self, user_id: str, prediction_id: str, timestamps: Sequence[str], load: Sequence[float]
    ) -> ActualsResult:
        readings = readings_from_records(timestamps, load, None, source="actuals")
        ahead = self.future_limit().problem(readings)  # a measured load is never of the future
        problems: list[Problem] = [] if ahead is None else [ahead]
        try:
            found = self.store.get_predictions(user_id, [prediction_id])
        except Exception as exc:
            raise DependencyUnavailableError("the predictions table is unavailable") from exc
        pred = found.get(prediction_id)
        if pred is None:
            raise NotFoundError(f"no prediction {prediction_id!r} for this API key")
        values = actual_values(pred, readings, problems)
        try:
            merged = self.store.merge_actuals(user_id, prediction_id, values, self.clock())
        except Exception as exc:
            logger.exception("saving actuals failed")
            raise DependencyUnavailableError("the actuals table is unavailable; nothing was saved") from exc
        return compare_actuals(pred, merged, values)

    # -- anomalies
    def detect(self, timestamps: Sequence[str], load: Sequence[float], threshold: float | None) -> dict[str, Any]:
        self.refresh_models()
        model = self.models.get(ANOMALY_DETECTOR)
        if model is None:
            raise ForecastUnavailableError(
                f"the anomaly model is not loaded: {self.models.errors.get(ANOMALY_DETECTOR)}"
            )
        readings: Readings = readings_from_records(timestamps, load, None, source="readings")
        series = validate(
            readings,
            min_days=1.0,
            flatline_hours=None,
            allow_gaps=True,
            future=self.future_limit(),
            max_steps=MAX_READINGS,
        )
        threshold = threshold or self.settings.anomaly_threshold
        with _inference_timer():
            result = run_detect(series, model, threshold=threshold)
        n_flagged = int(result.flagged.sum())
        metrics.add_metric(name=MODEL_ANOMALIES_DETECTED, unit="Count", value=n_flagged)
        present = ~np.isnan(result.load)
        return {
            "model_version": model.meta.version,
            "threshold": threshold,
            "flagged": n_flagged,
            "readings": [
                {
                    "timestamp": t,
                    "load": float(v) if p else None,
                    "score": round(float(s), 4),
                    "label": k,
                    "anomaly": bool(f),
                }
                for t, v, p, s, k, f in zip(
                    iso_all(result.timestamps),
                    result.load,
                    present,
                    result.score,
                    result.kind,
                    result.flagged,
                    strict=True,
                )
            ],
        }

    # -- health
    def health(self) -> HealthReport:
        """``/health`` (``docs/requirements.md#health``): cheap checks, bounded by
        ``health_timeout_s`` in total."""
        state = {"database": False, "cache": False}
        try:
            store = self.store
            store.prepare()  # client set-up is once per container, not part of the check
            checks = {"database": store.ping_database, "cache": store.ping_cache}
        except Exception:
            logger.exception("store unavailable")
            checks = {}

        def run(name: str, check: Callable[[], None]) -> None:
            try:
                check()
                state[name] = True
            except Exception as exc:
                logger.warning("health check of %s failed", name, extra={"error": repr(exc)})

        # A daemon thread per check, at most one in flight per dependency: a hung check never
        # delays a later /health, and a flood of /health calls cannot pile up threads.
        started: list[tuple[str, threading.Thread]] = []
        for name, check in checks.items():
            previous = self._checks.get(name)
            if previous is not None and previous.is_alive():
                logger.warning("health check of %s still running from an earlier call", name)
                continue
            t = threading.Thread(target=run, args=(name, check), daemon=True, name=f"health-{name}")
            self._checks[name] = t
            t.start()
            started.append((name, t))
        deadline = time.monotonic() + self.settings.health_timeout_s
        for _, t in started:
            t.join(max(0.0, deadline - time.monotonic()))
        up = dict(state)  # a check still running at the deadline counts as down
        for name, t in started:
            if t.is_alive():
                logger.warning("health check of %s timed out", name)
        loaded = {n: self.models.get(n) is not None for n in MODEL_NAMES}
        can_forecast = loaded[LOAD_FORECAST] or loaded[BASELINE_FORECAST]
        if not up["database"] or not can_forecast:
            status = "critical"
        elif not up["cache"] or not all(loaded.values()):
            status = "degraded"
        else:
            status = "ok"
        return HealthReport(
            status=status,
            uptime=int(time.monotonic() - self.started),
            models_loaded=self.models.models_loaded,
            database="connected" if up["database"] else "disconnected",
            cache="connected" if up["cache"] else "disconnected",
            timestamp=self.clock().strftime("%Y-%m-%dT%H:%M:%SZ"),
        )


@contextlib.contextmanager
def _inference_timer() -> Iterator[None]:
    """``model_inference_duration_seconds`` (``docs/requirements.md#metrics``) for the block."""
    t0 = time.perf_counter()
    yield
    metrics.add_metric(name=MODEL_INFERENCE_DURATION_SECONDS, unit="Seconds", value=round(time.perf_counter() - t0, 6))


def _forecast_json(fc: Forecast) -> dict[str, Any]:
    return {
        "model": fc.model,
        "model_version": fc.model_version,
        "fallback_reason": fc.fallback_reason,
        "resolution_minutes": fc.resolution_minutes,
        "timestamps": iso_all(fc.timestamps),
        "p10": _round(fc.p10),
        "p50": _round(fc.p50),
        "p90": _round(fc.p90),
        "transient": fc.transient,
    }


def build_service(settings: Settings) -> PredictionService:
    """Load the models once (per process / Lambda container) and wire the DynamoDB store.
    The bundled models serve until the first request that uses models has checked the
    registry's champion pointer (importing the handler stays free of the AWS SDK); from then
    on the champion set serves when there is one, followed every ``model_refresh_s``."""
    models = ModelSet.load(settings.model_dir, threads=settings.ort_threads)

    def store_factory() -> Store:
        from smartgrid.store.predictions_table import DynamoStore

        return DynamoStore(settings)

    return PredictionService(settings, models, store_factory, watcher=ChampionWatcher(settings, models.set_id))
