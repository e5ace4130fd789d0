"""Operational constants, each defined once: read by the CDK app (``infra/``) and by the
runtime (through the environment variables the CDK app sets from them).

- metric names and the namespace the functions emit to (EMF, through Powertools);
- the functions: handler strings, memory, timeouts;
- the job schedules (EventBridge Scheduler expressions, UTC);
- the escalation levels and the alert table of docs/requirements.md (#escalation, #alerts),
  as data: one ``Alert`` per row, with the serverless metric that row watches, its threshold,
  period and evaluation window, and the level the escalation matrix routes it to; then the
  alarms the table lacks but a serverless deployment needs.

Plain data, no imports beyond the standard library: the CDK app imports it without loading
the runtime's dependencies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

SERVICE = "smartgrid"
NAMESPACE = "Smartgrid"

# --- Metrics. The required names (docs/requirements.md#metrics), emitted as EMF.
API_REQUESTS_TOTAL = "api_requests_total"
API_REQUEST_DURATION_SECONDS = "api_request_duration_seconds"
API_REQUESTS_ERRORS_TOTAL = "api_requests_errors_total"
MODEL_INFERENCE_DURATION_SECONDS = "model_inference_duration_seconds"
MODEL_ANOMALIES_DETECTED = "model_anomalies_detected"
MODEL_PREDICTION_ERROR_ABSOLUTE = "model_prediction_error_absolute"
PROCESS_RESIDENT_MEMORY_BYTES = "process_resident_memory_bytes"
# Ours: degraded modes, usage, relative forecast error, memory against the function's size.
CACHE_ERRORS_TOTAL = "cache_errors_total"
FALLBACK_FORECASTS_TOTAL = "fallback_forecasts_total"
PREDICTIONS_TOTAL = "predictions_total"  # forecasts served (a batch counts each item)
# forecasts served while the predictions table was down: answered without an id, not recorded
PREDICTIONS_NOT_STORED_TOTAL = "predictions_not_stored_total"
MODEL_PREDICTION_ERROR_PERCENT = "model_prediction_error_percent"  # |actual - P50| / actual * 100
MEMORY_UTILIZATION_PERCENT = "memory_utilization_percent"  # peak RSS / configured memory * 100
# Jobs (dimension ``job``): the outcome each run reports, and the health probe's readings.
JOB_SUCCEEDED_TOTAL = "job_succeeded_total"
JOB_FAILED_TOTAL = "job_failed_total"
API_AVAILABILITY = "api_availability"  # 1 when /health answered 200 within the timeout, else 0
API_PROBE_LATENCY_SECONDS = "api_probe_latency_seconds"
METER_FILES_REJECTED_TOTAL = "meter_files_rejected_total"  # meter-data files moved to rejected/ (bad data)
# Incidents (the notifier): opened, resolved, and ALARM notifications of an already open incident.
INCIDENTS_OPENED_TOTAL = "incidents_opened_total"
INCIDENTS_RESOLVED_TOTAL = "incidents_resolved_total"
NOTIFICATION_DUPLICATES_TOTAL = "notification_duplicates_total"

# The dimensions every runtime metric carries (Powertools adds ``service``); jobs add ``job``.
SERVICE_DIMENSIONS: dict[str, str] = {"service": SERVICE}
JOB_DIMENSION = "job"


# --- Functions: one code asset, one handler string each.
@dataclass(frozen=True)
class FunctionSpec:
    name: str
    handler: str
    memory_mb: int
    timeout_s: int
    description: str
    container: bool = False  # built as a container image (training needs more than a zip holds)
    ephemeral_mb: int = 512  # /tmp (Lambda's default 512 MB; up to 10,240)


# 1769 MB is one full vCPU: a 1000-item batch takes ~4 s of one core (benchmarks/) and the
# API peaks near 170 MB, so memory is bought for CPU, not space. API Gateway's REST
# integration gives up at 29 s.
API = FunctionSpec("api", "smartgrid.api.handler.handler", 1769, 29, "Prediction API (FastAPI through Mangum)")
# The backup stages each table's gzip copy in /tmp before uploading it.
BACKUP = FunctionSpec(
    "backup", "smartgrid.jobs.backup.handler", 1024, 900, "Daily backup of tables, models, config", ephemeral_mb=10_240
)
# Training all three models took 131.7 s wall and 323 MiB peak with 2 threads on 224k rows
# (benchmarks/training_footprint.py); 3538 MB buys two vCPUs. Its dependencies (289 MB) exceed a zip Lambda.
RETRAINING = FunctionSpec(
    "retraining",
    "smartgrid.jobs.retraining.handler",
    3538,
    900,
    "Monthly champion/challenger retraining",
    container=True,
    ephemeral_mb=2048,  # the challenger's files are written to /tmp before upload
)
HEALTH_PROBE = FunctionSpec("health_probe", "smartgrid.jobs.probe.handler", 256, 20, "Probes the API's /health")
USAGE_REPORT = FunctionSpec("usage_report", "smartgrid.jobs.usage.handler", 512, 300, "Monthly usage report")
INGESTION = FunctionSpec("ingestion", "smartgrid.jobs.ingestion.handler", 1769, 300, "Meter data arriving in S3")
# Alarm state changes (SNS, from the alarm topic) become incident notifications to the people
# of the alarm's escalation level (docs/requirements.md#incidents).
NOTIFIER = FunctionSpec(
    "notifier", "smartgrid.jobs.notifier.handler", 512, 60, "Alarm state changes to incident notices"
)
FUNCTIONS: tuple[FunctionSpec, ...] = (API, BACKUP, RETRAINING, HEALTH_PROBE, USAGE_REPORT, INGESTION, NOTIFIER)
JOBS: tuple[FunctionSpec, ...] = (BACKUP, RETRAINING, HEALTH_PROBE, USAGE_REPORT, INGESTION)


# --- The API's routes, as API Gateway exposes them (tests check them against the FastAPI app).
@dataclass(frozen=True)
class Route:
    method: str
    path: str
    api_key: bool = True  # every endpoint but /health needs a key (docs/requirements.md#health)
    json_body: bool = False  # API Gateway rejects a body that is not a JSON object before Lambda runs


API_ROUTES: tuple[Route, ...] = (
    Route("GET", "/health", api_key=False),
    Route("GET", "/models"),
    Route("POST", "/predict/single", json_body=True),
    Route("POST", "/predict/batch", json_body=True),
    Route("POST", "/anomalies/detect", json_body=True),
    Route("POST", "/actuals", json_body=True),
    Route("GET", "/predictions"),
    Route("GET", "/openapi.json"),
    Route("GET", "/docs"),
)
# Every error the API answers, from the app or from API Gateway itself, is RFC 9457 problem details.
PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://smartgrid.dev/problems/"


# --- Schedules (EventBridge Scheduler, evaluated in UTC).
@dataclass(frozen=True)
class Schedule:
    job: FunctionSpec
    expression: str
    why: str


SCHEDULES: tuple[Schedule, ...] = (
    Schedule(BACKUP, "cron(0 2 * * ? *)", "manual: daily backup at 02:00"),
    Schedule(RETRAINING, "cron(0 0 1 * ? *)", "manual: monthly retraining, 1st of the month at 00:00"),
    Schedule(HEALTH_PROBE, "rate(1 minute)", "so that 'API down for 1+ minute' is observable"),
    Schedule(USAGE_REPORT, "cron(0 6 1 * ? *)", "manual: monthly report of predictions processed"),
)
# Meter data: objects created under this prefix of the meter-data bucket start ingestion.
METER_DATA_PREFIX = "incoming/"
# Retention: logs 60 days (docs/requirements.md#logs), backups 30 days (#backups).
LOG_RETENTION_DAYS = 60
BACKUP_RETENTION_DAYS = 30


# --- Escalation (docs/requirements.md#escalation) and alerts (#alerts).
class Level(StrEnum):
    L1 = "L1"
    L2 = "L2"
    L3 = "L3"


@dataclass(frozen=True)
class EscalationLevel:
    level: Level
    name: str
    who: str
    contact: str  # the level's address (docs/requirements.md#escalation); subscriptions come from alertEmails
    response: str


ESCALATION: dict[Level, EscalationLevel] = {
    Level.L1: EscalationLevel(Level.L1, "Warning", "Operations", "ops@smartgrid.ai", "1 hour"),
    Level.L2: EscalationLevel(Level.L2, "Alert", "Senior DevOps", "devops-lead@smartgrid.ai", "15 minutes"),
    Level.L3: EscalationLevel(
        Level.L3, "Critical", "Engineering lead and on-call", "engineering-lead@smartgrid.ai", "5 minutes"
    ),
}


class Severity(StrEnum):
    CRITICAL = "CRITICAL"
    WARNING = "WARNING"
    INFO = "INFO"


@dataclass(frozen=True)
class MetricRef:
    """A CloudWatch metric. ``namespace`` None means ours (NAMESPACE, SERVICE_DIMENSIONS);
    ``dimensions`` values in angle brackets (``<api>``) are filled in by the CDK app with the
    deployed resource's name (a function name, a queue name, the API's name)."""

    name: str
    statistic: str  # CloudWatch statistic: Average, Sum, Maximum, Minimum, p99, ...
    namespace: str | None = None
    dimensions: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Alert:
    id: str
    severity: Severity
    # Its row of docs/requirements.md#alerts ("condition | action"), or "serverless" for the
    # alarms that table lacks.
    requirement: str
    description: str  # what it means, in plain words
    metric: MetricRef | tuple[MetricRef, ...]  # several: their sum (metric math), each missing as 0
    comparison: str  # ">", ">=", "<", "<="
    threshold: float
    period_s: int
    evaluation_periods: int
    datapoints_to_alarm: int
    level: Level
    missing_data: str = "notBreaching"  # breaching | notBreaching | ignore | missing
    unit: str = ""  # of the threshold, for people (ms, %)
    job: FunctionSpec | None = None  # the job whose reports this alarm watches
    # Straight to the level's topic (raw CloudWatch JSON), not through the notifier: for the
    # alarm on the notifier's own failures.
    direct: bool = False
    mapping: str = ""  # for rows with no Lambda meaning: what we watch instead, and why


_API_GATEWAY = "AWS/ApiGateway"
_LAMBDA = "AWS/Lambda"
_API_DIMS = {"ApiName": "<api>", "Stage": "<stage>"}
_API_FN = {"FunctionName": "<api_function>"}


def _errors(job: FunctionSpec) -> tuple[MetricRef, ...]:
    """A job failed: it said so (its failure metric), or it crashed or timed out (Lambda's
    Errors, which a crash before the metric is flushed still counts)."""
    return (
        MetricRef(JOB_FAILED_TOTAL, "Sum", dimensions={**SERVICE_DIMENSIONS, JOB_DIMENSION: job.name}),
        MetricRef("Errors", "Sum", _LAMBDA, {"FunctionName": f"<{job.name}_function>"}),
    )


ALERTS: tuple[Alert, ...] = (
    # ---- The alert table of docs/requirements.md#alerts, row by row.
    Alert(
        "api-down",
        Severity.CRITICAL,
        "API down for 1+ minute | Page on-call immediately",
        "the health probe could not get 200 from /health for two consecutive minutes",
        MetricRef(API_AVAILABILITY, "Maximum", dimensions={**SERVICE_DIMENSIONS, JOB_DIMENSION: HEALTH_PROBE.name}),
        "<",
        1,
        60,
        2,
        2,
        Level.L3,
        missing_data="breaching",  # no probe reading is no proof the API is up
        job=HEALTH_PROBE,
    ),
    Alert(
        "error-rate-critical",
        Severity.CRITICAL,
        "Error rate > 5% for 5 min | Page on-call, assess",
        "more than 5% of API requests failed with a 5xx, every minute for 5 minutes",
        MetricRef("5XXError", "Average", _API_GATEWAY, _API_DIMS),
        ">",
        0.05,
        60,
        5,
        5,
        Level.L2,
    ),
    Alert(
        "capacity-exhausted",
        Severity.CRITICAL,
        "Disk usage > 95% | Alert ops, investigate",
        "the API's concurrent executions reached 95% of its reserved concurrency",
        MetricRef("ConcurrentExecutions", "Maximum", _LAMBDA, _API_FN),
        ">",
        0.95,  # times the reserved concurrency: the CDK app multiplies
        60,
        1,
        1,
        Level.L1,
        mapping=(
            "A Lambda has no disk that fills: its /tmp is scratch space the API does not write, and "
            "DynamoDB and S3 grow without a limit. The resource that does run out, and fails requests "
            "when it does, is the function's reserved concurrency: near 95% of it, the next burst is "
            "throttled. Routed to L1 as the manual's action says (alert ops)."
        ),
    ),
    Alert(
        "latency-p99-high",
        Severity.WARNING,
        "Latency P99 > 1 second | Monitor, investigate",
        "the 99th percentile of API latency was above 1 s in 3 of the last 5 minutes",
        MetricRef("Latency", "p99", _API_GATEWAY, _API_DIMS),
        ">",
        1000,
        60,
        5,
        3,
        Level.L2,
        unit="ms",
    ),
    Alert(
        "concurrency-high",
        Severity.WARNING,
        "CPU > 80% for 10 min | Consider scaling",
        "the API's concurrent executions stayed above 80% of its reserved concurrency for 10 minutes",
        MetricRef("ConcurrentExecutions", "Maximum", _LAMBDA, _API_FN),
        ">",
        0.80,  # times the reserved concurrency
        60,
        10,
        10,
        Level.L1,
        mapping=(
            "Each Lambda invocation has its own CPU share (set by its memory), so no shared CPU "
            "saturates; the shared capacity that 'consider scaling' is about is the reserved "
            "concurrency. Scaling means raising it (context apiReservedConcurrency). Slow CPU per "
            "request shows as latency, which the P99 rows watch."
        ),
    ),
    Alert(
        "memory-high",
        Severity.WARNING,
        "Memory > 80% for 10 min | Consider scaling",
        "the API's peak memory stayed above 80% of the function's memory size for 10 minutes",
        MetricRef(MEMORY_UTILIZATION_PERCENT, "Maximum"),
        ">",
        80,
        60,
        10,
        10,
        Level.L2,
        unit="%",
        mapping=(
            "Lambda publishes no memory metric; the API reports its peak RSS against the configured "
            "memory on every invocation (memory_utilization_percent). Scaling means more memory "
            "(context apiMemoryMb)."
        ),
    ),
    Alert(
        "error-rate-warning",
        Severity.WARNING,
        "Error rate > 1% for 15 min | Investigate root cause",
        "more than 1% of API requests failed with a 5xx, every minute for 15 minutes",
        MetricRef("5XXError", "Average", _API_GATEWAY, _API_DIMS),
        ">",
        0.01,
        60,
        15,
        15,
        Level.L1,
    ),
    Alert(
        "latency-p99-info",
        Severity.INFO,
        "Latency P99 > 500ms | Log and monitor",
        "the 99th percentile of API latency was above 500 ms in 3 of the last 5 minutes",
        MetricRef("Latency", "p99", _API_GATEWAY, _API_DIMS),
        ">",
        500,
        60,
        5,
        3,
        Level.L1,
        unit="ms",
    ),
    Alert(
        "predictions-volume",
        Severity.INFO,
        "100k+ predictions processed | Monthly report",
        "predictions in the last day run at a pace of 100,000 or more a month",
        MetricRef(PREDICTIONS_TOTAL, "Sum"),
        ">=",
        100_000 / 30,
        86_400,
        1,
        1,
        Level.L1,
        mapping=(
            "An alarm looks back at most a day per period; a month's count comes from the monthly "
            "usage report job. The alarm tells ops the day's pace reaches 100k a month."
        ),
    ),
    # ---- What that table lacks and a serverless service needs.
    Alert(
        "api-throttled",
        Severity.WARNING,
        "serverless",
        "the API function throttled invocations (its reserved concurrency was exhausted)",
        MetricRef("Throttles", "Sum", _LAMBDA, _API_FN),
        ">",
        0,
        300,
        1,
        1,
        Level.L2,
    ),
    Alert(
        "backup-failed",
        Severity.CRITICAL,
        "serverless",
        "the daily backup failed or could not verify what it wrote",
        _errors(BACKUP),
        ">",
        0,
        300,
        1,
        1,
        Level.L2,
        job=BACKUP,
    ),
    Alert(
        "backup-missing",
        Severity.CRITICAL,
        "serverless",
        "no verified backup in the last 24 hours",
        MetricRef(JOB_SUCCEEDED_TOTAL, "Sum", dimensions={**SERVICE_DIMENSIONS, JOB_DIMENSION: BACKUP.name}),
        "<",
        1,
        86_400,
        1,
        1,
        Level.L2,
        missing_data="breaching",
        job=BACKUP,
    ),
    Alert(
        "retraining-failed",
        Severity.WARNING,
        "serverless",
        "the monthly retraining failed (the champion model keeps serving)",
        _errors(RETRAINING),
        ">",
        0,
        300,
        1,
        1,
        Level.L1,
        job=RETRAINING,
    ),
    Alert(
        "ingestion-failed",
        Severity.WARNING,
        "serverless",
        "meter-data ingestion failed on a file",
        _errors(INGESTION),
        ">",
        0,
        300,
        1,
        1,
        Level.L2,
        job=INGESTION,
    ),
    Alert(
        "dead-letters",
        Severity.CRITICAL,
        "serverless",
        "a job's event could not be delivered or processed after retries and waits in the dead-letter queue",
        MetricRef("ApproximateNumberOfMessagesVisible", "Maximum", "AWS/SQS", {"QueueName": "<dlq>"}),
        ">",
        0,
        300,
        1,
        1,
        Level.L2,
    ),
    Alert(
        "notification-dead-letters",
        Severity.CRITICAL,
        "serverless",
        "an alarm notification could not be delivered after retries and waits in the notifier's dead-letter queue",
        MetricRef("ApproximateNumberOfMessagesVisible", "Maximum", "AWS/SQS", {"QueueName": "<notifier_dlq>"}),
        ">",
        0,
        60,
        1,
        1,
        Level.L2,
        direct=True,
    ),
    Alert(
        "forecast-error-high",
        Severity.WARNING,
        "serverless",
        "live forecast error (absolute percentage error of P50 against recorded actuals) averaged over 10% "
        "for 6 hours; backtests give 1.5-3.7% (primary) and 4-7% (fallback)",
        MetricRef(MODEL_PREDICTION_ERROR_PERCENT, "Average"),
        ">",
        10,
        3600,
        6,
        6,
        Level.L1,
        unit="%",
    ),
)
# Alerts whose threshold is a fraction of the API's reserved concurrency.
CONCURRENCY_FRACTION_ALERTS = frozenset({"capacity-exhausted", "concurrency-high"})


def _metric_text(metric: MetricRef | tuple[MetricRef, ...]) -> str:
    refs = metric if isinstance(metric, tuple) else (metric,)
    return " + ".join(f"`{r.namespace or NAMESPACE}` {r.name} ({r.statistic})" for r in refs)


def _window(alert: Alert) -> str:
    period = f"{alert.period_s // 3600} h" if alert.period_s >= 3600 else f"{alert.period_s // 60} min"
    if alert.evaluation_periods == 1:
        return period
    if alert.datapoints_to_alarm == alert.evaluation_periods:
        return f"{alert.evaluation_periods} x {period} in a row"
    return f"{alert.datapoints_to_alarm} of {alert.evaluation_periods} x {period}"


def alert_table_markdown() -> str:
    """The alert table as Markdown (``smartgrid alerts``; the README's copy is this output)."""
    lines = [
        "| alarm | severity | manual's row | watches | fires when | window | routed to |",
        "|---|---|---|---|---|---|---|",
    ]
    notes = []
    for a in ALERTS:
        threshold = f"{a.threshold:g}{' ' + a.unit if a.unit and a.unit != '%' else a.unit}"
        if a.id in CONCURRENCY_FRACTION_ALERTS:
            threshold = f"{a.threshold:.0%} of reserved concurrency"
        who = ESCALATION[a.level]
        row = a.requirement.split(" | ")[0] if a.requirement != "serverless" else "(serverless)"
        lines.append(
            f"| `{a.id}` | {a.severity} | {row} "
            f"| {_metric_text(a.metric)} | {a.comparison} {threshold} | {_window(a)} | {a.level} {who.who}"
            f"{' (raw alarm, not through the notifier)' if a.direct else ''} |"
        )
        if a.mapping:
            notes.append(f"- `{a.id}`: {a.mapping}")
    return "\n".join(lines + (["", *notes] if notes else [])) + "\n"


# --- Stack outputs that `smartgrid ops check --stack NAME` reads: the deployed names of what
# Settings points at (tables, buckets), the API's URL and the alarms' name prefix.
API_URL_OUTPUT = "ApiUrl"
ALARM_PREFIX_OUTPUT = "AlarmPrefix"
OPS_SETTINGS = (
    "predictions_table",
    "actuals_table",
    "cache_table",
    "idempotency_table",
    "incidents_table",
    "models_bucket",
    "backups_bucket",
    "meter_data_bucket",
)


def stack_output_key(setting: str) -> str:
    """The CloudFormation output key that carries a Settings field's deployed value."""
    return "Setting" + "".join(part.title() for part in setting.split("_"))
