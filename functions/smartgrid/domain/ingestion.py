"""Meter-data ingestion: a CSV file that arrives in the meter-data bucket under
``incoming/<client>/<site_id>/<name>.csv[.gz]`` (layout in ``smartgrid.store.meter_bucket``)
is checked with the engine's parser and validation (``engine.csv_files.read_csv`` and
``engine.data.validate``, the rules of ``smartgrid detect`` and ``forecast``) and then either

- accepted: its readings are stored as CSV under ``accepted/<client>/<site_id>/<sha256>.csv``
  (where retraining finds them), recorded as actuals against the client's predictions for that
  site whose forecast covers them (``PredictionService.record_actuals``: the forecast-error
  metrics), and scanned for anomalies after the site's readings of the week before (from its
  accepted files), when there are two days or more in all; anomalies in the file are
  published to the L1 operations topic and counted (``model_anomalies_detected``);
- rejected: moved to ``rejected/<key>`` beside ``rejected/<key>.report.json``, which lists every
  problem with its rows, and deleted from ``incoming/``. Bad data is an outcome, not a failure:
  it is logged at WARNING and counted (``meter_files_rejected_total``), nothing raises.

Once per content: the accepted readings' digest is claimed in the idempotency table
(``ingest#<client>#<site_id>#<sha256>``) before any work and marked completed after all of it,
so the same file delivered again (the same event, or the same readings under another key) is
a no-op (``duplicate``), or ``in_progress`` while another invocation holds the claim. The
claim's owner is the Lambda invocation (its request id, which Lambda keeps across its own
retries): EventBridge delivers at least once, and a duplicate delivery of an event is a new
invocation, so it never takes over a claim that is still held. Every step is repeatable
(content-addressed writes, merged actuals), so when S3, DynamoDB or SNS fail midway the error
is raised (the event is retried and, in the end, lands in the dead-letter queue) and the
retry converges; the file stays in ``incoming/`` until it is accepted or moved aside, so
nothing is lost.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from smartgrid.catalog import INGESTION, METER_FILES_REJECTED_TOTAL, MODEL_ANOMALIES_DETECTED, Level
from smartgrid.config import Settings
from smartgrid.domain.predictions import PredictionService, utcnow
from smartgrid.engine.csv_files import read_csv
from smartgrid.engine.data import DAY_S, FutureLimit, Series, iso, iso_all, validate
from smartgrid.engine.model_files import ANOMALY_DETECTOR
from smartgrid.errors import (
    DataValidationError,
    DependencyUnavailableError,
    ForecastUnavailableError,
    NotFoundError,
    Problem,
    SmartgridError,
)
from smartgrid.observability import logger, metrics
from smartgrid.store import meter_bucket as meter
from smartgrid.store import notify

# A claim is held this long: past the function's timeout, so only a dead attempt loses it early
# (and then its own retry, carrying the same Lambda request id, takes it over at once; any
# other invocation, e.g. a duplicate EventBridge delivery, only once this window has passed).
CLAIM_HOLD_S = INGESTION.timeout_s + 60
ACTUALS_LOOKBACK = timedelta(days=2)  # predictions made up to two days before the first reading
PREDICTIONS_PAGE = 100
ANOMALIES_LISTED = 10  # flagged readings named in the notification (all are counted)
# The detector compares a reading with its neighbours and the same time on other days. On one
# day alone it flagged 0 to 21 of 24 clean readings (10 days each of gefcom and PJME); on two
# days or more, none. So a file is scanned after the site's readings of the week before it
# (from its accepted files stored lately), and only with two days or more in all.
MIN_DETECT_DAYS = 2
CONTEXT_DAYS = 7
CONTEXT_FILES = 60  # at most this many of the site's latest accepted files are read for them
CONTEXT_STORED_WITHIN = timedelta(days=35)  # ... among those stored this recently
CSV_SUFFIXES = (".csv", ".csv.gz")
EXPECTED = (
    "a CSV file (optionally gzipped) under incoming/<client>/<site_id>/<name>.csv[.gz], with a header "
    "timestamp,load[,temperature]: ISO 8601 timestamps (UTC when no offset is given) in order, on a regular "
    "5- to 60-minute grid, no duplicates; load in MW, not negative; temperature in deg C"
)


class OnceStore(Protocol):
    """The markers' store (``smartgrid.store.predictions_table.DynamoStore``)."""

    def claim_once(self, key: str, owner: str, now: datetime, hold_s: float, keep_s: float) -> Any: ...
    def finish_once(self, key: str, until: float, completed: bool) -> bool: ...


@dataclass(frozen=True)
class MeterObject:
    """One object to ingest: what the S3 event names."""

    bucket: str
    key: str
    etag: str | None = None
    size: int | None = None
    # Who owns the ingestion claim: the Lambda invocation's aws_request_id (Lambda's retries of
    # one invocation keep it; a duplicate EventBridge delivery is a new invocation with a new
    # one), or a fresh id for a CLI run.
    owner: str = field(default_factory=lambda: f"local-{uuid.uuid4()}")


@dataclass
class IngestOutcome:
    """``status``: accepted | rejected | duplicate | in_progress | superseded | ignored | missing."""

    status: str
    bucket: str
    key: str
    detail: str = ""
    client: str | None = None
    site_id: str | None = None
    readings: int = 0
    resolution_minutes: int | None = None
    first: str | None = None
    last: str | None = None
    accepted_key: str | None = None
    rejected_key: str | None = None
    report_key: str | None = None
    problems: list[Problem] = field(default_factory=list)
    actuals: list[dict[str, Any]] = field(default_factory=list)  # per prediction: id, points, mae
    anomalies: dict[str, Any] | None = None  # None when not scanned (under MIN_DETECT_DAYS in all)
    notification: str | None = None  # SNS message id

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["problems"] = [_problem_json(p) for p in self.problems]
        return out


def _problem_json(p: Problem) -> dict[str, Any]:
    return {"code": p.code, "message": p.message, "rows": list(p.rows), "field": p.field_name}


def _failure(obj: MeterObject, what: str, exc: Exception) -> DependencyUnavailableError:
    return DependencyUnavailableError(
        f"s3://{obj.bucket}/{obj.key}: {what} failed ({type(exc).__name__}: {exc}); the file stays "
        "in incoming/ and a retry completes the work"
    )


@contextlib.contextmanager
def _stage(obj: MeterObject, what: str) -> Iterator[None]:
    """AWS failures during ``what`` as a DependencyUnavailableError naming the step and the file."""
    try:
        yield
    except SmartgridError:
        raise
    except Exception as exc:
        raise _failure(obj, what, exc) from exc


def readings_csv(series: Series) -> bytes:
    """The readings as stored under accepted/: ``timestamp,load[,temperature]``, ISO 8601 UTC,
    numbers as the shortest text that reads back exactly; missing readings are left out."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    temp = series.temperature
    w.writerow(["timestamp", "load"] + (["temperature"] if temp is not None else []))
    ts = iso_all(series.timestamps)
    for i in np.flatnonzero(np.isfinite(series.load)).tolist():
        row = [ts[i], repr(float(series.load[i]))]
        if temp is not None:
            row.append("" if np.isnan(temp[i]) else repr(float(temp[i])))
        w.writerow(row)
    return buf.getvalue().encode()


def parse_file(body: bytes, future: FutureLimit | None = None) -> Series:
    """Parse and validate a meter file's bytes with the engine's CSV reader and validation
    (as ``smartgrid detect`` does, but a file may hold less than a day; ``future``: readings
    stamped beyond the clock and its skew tolerance are refused). Raises
    DataValidationError with every problem."""
    with tempfile.TemporaryDirectory(prefix="smartgrid-ingest-") as tmp:
        path = Path(tmp) / "meter.csv"
        path.write_bytes(body)
        try:
            readings = read_csv(path)
        except csv.Error as exc:  # NUL bytes, a field over csv's size limit
            raise DataValidationError([Problem("bad_csv", f"not a readable CSV file: {exc}")]) from exc
    if len(readings) < 2:
        raise DataValidationError(
            [Problem("too_few_readings", "only 1 reading: a file needs at least 2 to tell its resolution", (1,))]
        )
    return validate(readings, min_days=0.0, flatline_hours=None, allow_gaps=True, future=future)


def check(key: str, body: bytes, future: FutureLimit | None = None) -> tuple[meter.MeterKey, Series] | list[Problem]:
    """The key's layout and the file's content: every problem found, or the parsed readings."""
    problems: list[Problem] = []
    mk: meter.MeterKey | None = None
    try:
        mk = meter.MeterKey.parse(key)
    except ValueError as exc:
        problems.append(Problem("bad_key", f"{exc}; meter files go to incoming/<client>/<site_id>/<name>.csv[.gz]"))
    name = key.rsplit("/", 1)[-1]
    if not name.lower().endswith(CSV_SUFFIXES):
        problems.append(Problem("not_csv", f"{name!r} is not a .csv or .csv.gz file"))
    if not body:
        problems.append(Problem("empty_file", "the file is empty (0 bytes)"))
        return problems
    try:
        series = parse_file(body, future)
    except DataValidationError as exc:
        problems.extend(exc.problems)
    if problems or mk is None:
        return problems
    return mk, series


class Ingestor:
    def __init__(
        self,
        settings: Settings,
        service: PredictionService,
        markers: OnceStore,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.service = service
        self.markers = markers
        self.clock = clock

    # -- entry points
    def ingest(self, obj: MeterObject) -> IngestOutcome:
        """Process one object of the meter-data bucket (see the module's docstring)."""
        if obj.bucket != self.settings.meter_data_bucket:
            raise ValueError(
                f"the event names bucket {obj.bucket!r}, but this deployment's meter-data bucket is "
                f"{self.settings.meter_data_bucket!r} (SMARTGRID_METER_DATA_BUCKET)"
            )
        if not obj.key.startswith(meter.INCOMING):
            logger.info("not an incoming meter file; ignored", extra={"key": obj.key})
            return IngestOutcome("ignored", obj.bucket, obj.key, f"only keys under {meter.INCOMING} are ingested")
        with _stage(obj, "reading the file"):
            stored = meter.fetch(obj.key, self.settings)
        if stored is None:
            return self._gone(obj)
        result = check(obj.key, stored.data, FutureLimit(self.clock(), self.settings.max_clock_skew_s))
        if isinstance(result, list):
            return self._reject(obj, stored.etag, len(stored.data), result)
        return self._accept(obj, *result)

    def upload(self, path: Path, client: str, site_id: str) -> MeterObject:
        """Put a local file into incoming/<client>/<site_id>/ (as a meter would) without
        replacing a file of the same name that is there already."""
        key = f"{meter.INCOMING}{client}/{site_id}/{path.name}"
        meter.MeterKey.parse(key)  # ValueError for a client or site with a '/' or empty
        body = path.read_bytes()
        obj = MeterObject(self.settings.meter_data_bucket, key)
        with _stage(obj, "uploading the file"):
            taken = meter.exists(key, self.settings)
        if taken:
            raise ValueError(
                f"s3://{obj.bucket}/{key} exists already (not processed yet?); rename the file, "
                "or ingest that one with --key"
            )
        with _stage(obj, "uploading the file"):
            meter.write(key, body, self.settings)
        return MeterObject(self.settings.meter_data_bucket, key, size=len(body))

    # -- outcomes
    def _gone(self, obj: MeterObject) -> IngestOutcome:
        """The event's object no longer exists: moved aside already (a repeated delivery of a
        rejected file's event), or deleted by someone. Nothing to do either way."""
        report = meter.report_key(obj.key)
        with _stage(obj, "looking for an earlier rejection report"):
            rejected = meter.exists(report, self.settings)
        if rejected:
            logger.info("meter file already rejected; duplicate delivery", extra={"key": obj.key})
            return IngestOutcome(
                "duplicate",
                obj.bucket,
                obj.key,
                "rejected before",
                rejected_key=meter.rejected_key(obj.key),
                report_key=report,
            )
        logger.warning("meter file is gone before it was processed", extra={"key": obj.key})
        return IngestOutcome("missing", obj.bucket, obj.key, "no such key in the bucket")

    def _reject(self, obj: MeterObject, etag: str, size: int, problems: list[Problem]) -> IngestOutcome:
        rk, report_key = meter.rejected_key(obj.key), meter.report_key(obj.key)
        try:
            mk: meter.MeterKey | None = meter.MeterKey.parse(obj.key)
        except ValueError:
            mk = None
        report = {
            "source": f"s3://{obj.bucket}/{obj.key}",
            "etag": etag,
            "size": size,
            "client": mk.client if mk else None,
            "site_id": mk.site_id if mk else None,
            "rejected_at": self.clock().strftime("%Y-%m-%dT%H:%M:%SZ"),
            "moved_to": rk,
            "problem_count": len(problems),
            "problems": [_problem_json(p) for p in problems],
            "expected": EXPECTED,
        }
        # Copy, report, then delete: a failure between them raises and the retry (the file is
        # still in incoming/) does all three again; after the delete, a retry finds the report.
        # Copy and delete are conditional on the content checked: a corrected upload that
        # replaces the file meanwhile is neither reported on nor deleted (its own event comes).
        detail = f"{len(problems)} problem(s); moved to {rk}"
        try:
            meter.copy(obj.key, rk, self.settings, etag=etag or None)
        except Exception as exc:
            if meter.precondition_failed(exc):
                logger.info("meter file replaced while being checked; the new one is processed", extra={"key": obj.key})
                return IngestOutcome("superseded", obj.bucket, obj.key, "replaced by a newer upload while checked")
            raise _failure(obj, "copying the rejected file to rejected/", exc) from exc
        with _stage(obj, "writing the rejection report"):
            meter.write(
                report_key, json.dumps(report, indent=2).encode(), self.settings, content_type="application/json"
            )
        try:
            meter.delete(obj.key, self.settings, etag=etag or None)
        except Exception as exc:
            if not meter.precondition_failed(exc):
                raise _failure(obj, "deleting the rejected file from incoming/", exc) from exc
            detail += "; a newer upload replaced it in incoming/ meanwhile and stays there"
        metrics.add_metric(name=METER_FILES_REJECTED_TOTAL, unit="Count", value=1)
        logger.warning(
            "meter file rejected",
            extra={
                "key": obj.key,
                "moved_to": rk,
                "report": report_key,
                "problem_count": len(problems),
                "problems": [p.message for p in problems[:20]],
            },
        )
        return IngestOutcome(
            "rejected",
            obj.bucket,
            obj.key,
            detail,
            client=mk.client if mk else None,
            site_id=mk.site_id if mk else None,
            rejected_key=rk,
            report_key=report_key,
            problems=problems,
        )

    def _accept(self, obj: MeterObject, mk: meter.MeterKey, series: Series) -> IngestOutcome:
        body = readings_csv(series)
        sha = hashlib.sha256(body).hexdigest()
        present = int(np.isfinite(series.load).sum())
        outcome = IngestOutcome(
            "accepted",
            obj.bucket,
            obj.key,
            client=mk.client,
            site_id=mk.site_id,
            readings=present,
            resolution_minutes=series.resolution_minutes,
            first=iso(series.start),
            last=iso(series.end),
            accepted_key=mk.accepted_key(sha),
        )
        marker = f"ingest#{mk.client}#{mk.site_id}#{sha}"
        keep_s = self.settings.prediction_retention_days * DAY_S
        with _stage(obj, "claiming the file in the idempotency table"):
            claim = self.markers.claim_once(marker, obj.owner, self.clock(), CLAIM_HOLD_S, keep_s)
        if claim.state != "claimed":
            outcome.status = "duplicate" if claim.state == "completed" else "in_progress"
            outcome.detail = (
                "these readings were ingested before"
                if claim.state == "completed"
                else "another delivery of these readings is being processed"
            )
            logger.info("meter file already ingested or in progress", extra={"key": obj.key, "state": claim.state})
            return outcome
        try:
            with _stage(obj, "writing the accepted readings"):
                meter.write(outcome.accepted_key or "", body, self.settings)
            outcome.actuals = self._record_actuals(mk, series)
            outcome.anomalies, outcome.notification = self._anomalies(obj, mk, series, outcome)
        except BaseException:
            try:
                self.markers.finish_once(marker, claim.until, completed=False)  # the next attempt goes at once
            except Exception:
                logger.exception("freeing the ingestion claim failed; it lapses after %d s", CLAIM_HOLD_S)
            raise
        with _stage(obj, "marking the file ingested"):
            if not self.markers.finish_once(marker, claim.until, completed=True):
                logger.warning("another attempt took the ingestion over; it completes it", extra={"key": obj.key})
        outcome.detail = f"{present} readings stored as {outcome.accepted_key}"
        logger.info(
            "meter file accepted",
            extra={
                "key": obj.key,
                "accepted_key": outcome.accepted_key,
                "readings": present,
                "predictions_with_actuals": len(outcome.actuals),
                "anomalies": (outcome.anomalies or {}).get("flagged"),
            },
        )
        return outcome

    # -- steps of an accepted file
    def _record_actuals(self, mk: meter.MeterKey, series: Series) -> list[dict[str, Any]]:
        """Actuals for every prediction of the client for this site whose forecast steps
        the readings cover (through the service: validation, merge and error metrics)."""
        ts = iso_all(series.timestamps)
        values = {t: float(v) for t, v in zip(ts, series.load.tolist(), strict=True) if np.isfinite(v)}
        first = datetime.fromtimestamp(int(series.start.astype("datetime64[s]").astype("int64")), UTC)
        recorded: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            page = self.service.list_predictions(mk.client, first - ACTUALS_LOOKBACK, PREDICTIONS_PAGE, cursor)
            for rec in page.items:
                if rec.site_id != mk.site_id:
                    continue
                steps = [t for t in rec.timestamps if t in values]
                if not steps:
                    continue
                try:
                    result = self.service.record_actuals(
                        mk.client, rec.prediction_id, steps, [values[t] for t in steps]
                    )
                except NotFoundError:
                    continue  # deleted since it was listed
                except DataValidationError as exc:  # not expected: the steps are the forecast's own
                    logger.warning(
                        "actuals not recorded", extra={"prediction_id": rec.prediction_id, "error": str(exc)}
                    )
                    continue
                recorded.append({"prediction_id": rec.prediction_id, "points": len(steps), "mae": result.mae})
            if not page.cursor:
                return recorded
            cursor = page.cursor

    def _anomalies(
        self, obj: MeterObject, mk: meter.MeterKey, series: Series, outcome: IngestOutcome
    ) -> tuple[dict[str, Any] | None, str | None]:
        from smartgrid.engine.anomaly import detect as run_detect

        with _stage(obj, "reading the site's earlier accepted readings"):
            scanned = self._with_context(mk, series, outcome.accepted_key or "")
        if scanned.n * scanned.step_s < MIN_DETECT_DAYS * DAY_S:
            return None, None

        self.service.refresh_models()  # the champion model set, as the API serves it
        model = self.service.models.get(ANOMALY_DETECTOR)
        if model is None:
            raise ForecastUnavailableError(
                f"the anomaly model is not loaded ({self.service.models.errors.get(ANOMALY_DETECTOR)}); "
                "the readings are stored, a retry of the event runs the detection"
            )
        result = run_detect(scanned, model, threshold=self.settings.anomaly_threshold)
        first = iso(series.start)
        flagged = [r for r in result.flagged_rows() if r["timestamp"] >= first]  # this file's readings only
        metrics.add_metric(name=MODEL_ANOMALIES_DETECTED, unit="Count", value=len(flagged))
        kinds = dict(Counter(r["kind"] for r in flagged).most_common())
        summary = {
            "flagged": len(flagged),
            "threshold": self.settings.anomaly_threshold,
            "model_version": model.meta.version,
            "kinds": kinds,
            "first": flagged[:ANOMALIES_LISTED],
            "context_days": round((scanned.n - series.n) * scanned.step_s / DAY_S, 2),
        }
        if not flagged:
            return summary, None
        subject = f"smartgrid: {len(flagged)} anomalies in meter data of {mk.client}/{mk.site_id}"
        with _stage(obj, "publishing the anomalies to the L1 topic"):
            message_id = notify.publish(Level.L1.value, subject, anomaly_message(obj, outcome, summary), self.settings)
        return summary, message_id

    def _with_context(self, mk: meter.MeterKey, series: Series, accepted_key: str) -> Series:
        """The file's readings after the site's readings of the CONTEXT_DAYS before them, from
        its accepted files stored lately (newer files win where they overlap); NaN where none."""
        step = series.step_s
        start = int(series.start.astype("datetime64[s]").astype("int64"))
        stored_since = self.clock() - CONTEXT_STORED_WITHIN
        prefix = f"{meter.ACCEPTED}{mk.client}/{mk.site_id}/"
        recent = sorted(
            ((t, k) for k, t in meter.list_objects(prefix, self.settings) if k != accepted_key and t >= stored_since),
            reverse=True,
        )[:CONTEXT_FILES]
        known: dict[int, float] = {}
        for _, key in reversed(recent):  # oldest first: a later file's reading wins
            stored = meter.fetch(key, self.settings)
            if stored is None:
                continue
            try:
                other = parse_file(stored.data)
            except DataValidationError:  # not expected: this code stored them
                logger.warning("an accepted file does not parse; not used as context", extra={"key": key})
                continue
            secs = other.timestamps.astype("datetime64[s]").astype("int64")
            keep = (secs >= start - CONTEXT_DAYS * DAY_S) & (secs < start) & ((secs - start) % step == 0)
            keep &= np.isfinite(other.load)
            known.update(zip(secs[keep].tolist(), other.load[keep].tolist(), strict=True))
        if not known:
            return series
        lo = min(known)
        before = np.full((start - lo) // step, np.nan)
        for t, v in known.items():
            before[(t - lo) // step] = v
        return Series(np.datetime64(lo, "s"), step, np.concatenate([before, series.load]), None, source=series.source)


def anomaly_message(obj: MeterObject, outcome: IngestOutcome, summary: dict[str, Any]) -> str:
    kinds = ", ".join(f"{k} {n}" for k, n in summary["kinds"].items())
    lines = [
        f"The anomaly detector flagged {summary['flagged']} of {outcome.readings} readings in a meter-data file.",
        "",
        f"client:   {outcome.client}",
        f"site:     {outcome.site_id}",
        f"file:     s3://{obj.bucket}/{obj.key}",
        f"stored:   s3://{obj.bucket}/{outcome.accepted_key}",
        f"readings: {outcome.first} to {outcome.last}, {outcome.resolution_minutes}-minute resolution",
        f"kinds:    {kinds}",
        f"model:    anomaly_detector {summary['model_version']}, threshold {summary['threshold']:g}, "
        f"with {summary['context_days']:g} day(s) of the site's earlier readings as context",
        "",
        f"First {len(summary['first'])} flagged:",
    ]
    lines += [
        f"  {r['timestamp']}  {r['kind']:<11}  load {r['load']:.1f} MW  score {r['score']:.2f}"
        for r in summary["first"]
    ]
    if summary["flagged"] > len(summary["first"]):
        lines.append(
            f"  ... and {summary['flagged'] - len(summary['first'])} more "
            "(smartgrid detect --data on the stored file lists them all)"
        )
    lines += [
        "",
        "Check the meter and the site (a stuck meter, a feeder switched, a scaling error) before the data is used.",
    ]
    return "\n".join(lines) + "\n"


def build_ingestor(settings: Settings) -> Ingestor:
    """The models (the service's), the DynamoDB store and the markers, once per container."""
    from smartgrid.domain.predictions import build_service
    from smartgrid.store.predictions_table import DynamoStore

    return Ingestor(settings, build_service(settings), DynamoStore(settings))
