"""The incident notifier: SNS-wrapped CloudWatch alarm notifications (metric, metric-math,
composite) become the incident notices of docs/requirements.md#incidents on the level's topic (SQS
inboxes here) and the chat webhook (a local HTTP server); incidents numbered per day under
concurrency, duplicates suppressed, failed deliveries retried under the same id."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from typer.testing import CliRunner

from smartgrid.catalog import ALERTS
from smartgrid.cli.main import app
from smartgrid.config import get_settings
from smartgrid.domain import incidents
from smartgrid.errors import DataValidationError, DependencyUnavailableError
from smartgrid.store import incidents_table as incidents_store
from tests.helpers.apigw import LambdaContext
from tests.helpers.emf import value, values

PREFIX = "smartgrid-dev"
ACCOUNT = "123456789012"
ALARM_TOPIC = f"arn:aws:sns:us-east-1:{ACCOUNT}:smartgrid-dev-alarms"
TEMPLATE_FIELDS = [
    "INCIDENT_ID:",
    "SEVERITY:",
    "SERVICE:",
    "TIME_DETECTED:",
    "DURATION:",
    "USERS_AFFECTED:",
    "DESCRIPTION:",
    "ROOT_CAUSE:",
    "ACTIONS_TAKEN:",
    "STATUS:",
    "RESOLUTION_TIME:",
    "FOLLOW_UP:",
]


# ------------------------------------------------------------------ real-shaped events
def _cw_time(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}+0000"


def metric_trigger(metric: str = "5XXError", threshold: float = 0.05, op: str = "GreaterThanThreshold") -> dict:
    return {
        "MetricName": metric,
        "Namespace": "AWS/ApiGateway",
        "StatisticType": "Statistic",
        "Statistic": "AVERAGE",
        "Unit": None,
        "Dimensions": [{"value": "smartgrid-dev", "name": "ApiName"}, {"value": "v1", "name": "Stage"}],
        "Period": 60,
        "EvaluationPeriods": 5,
        "DatapointsToAlarm": 5,
        "ComparisonOperator": op,
        "Threshold": threshold,
        "TreatMissingData": "notBreaching",
        "EvaluateLowSampleCountPercentile": "",
    }


MATH_TRIGGER = {
    "Period": 300,
    "EvaluationPeriods": 1,
    "DatapointsToAlarm": 1,
    "ComparisonOperator": "GreaterThanThreshold",
    "Threshold": 0.0,
    "TreatMissingData": "notBreaching",
    "EvaluateLowSampleCountPercentile": "",
    "Metrics": [
        {"Expression": "FILL(m0, 0) + FILL(m1, 0)", "Id": "e1", "Label": "backup failures", "ReturnData": True},
        {
            "Id": "m0",
            "MetricStat": {
                "Metric": {
                    "Dimensions": [{"value": "smartgrid", "name": "service"}, {"value": "backup", "name": "job"}],
                    "MetricName": "job_failed_total",
                    "Namespace": "Smartgrid",
                },
                "Period": 300,
                "Stat": "Sum",
            },
            "ReturnData": False,
        },
        {
            "Id": "m1",
            "MetricStat": {
                "Metric": {
                    "Dimensions": [{"value": "smartgrid-dev-backup", "name": "FunctionName"}],
                    "MetricName": "Errors",
                    "Namespace": "AWS/Lambda",
                },
                "Period": 300,
                "Stat": "Sum",
            },
            "ReturnData": False,
        },
    ],
}


def alarm_message(
    alert_id: str = "error-rate-critical",
    state: str = "ALARM",
    at: datetime = datetime(2026, 11, 28, 14, 23, 45, 123000, tzinfo=UTC),
    reason: str | None = None,
    trigger: dict | None = None,
    name: str | None = None,
    description: str | None = None,
    **extra: Any,
) -> dict:
    name = name or f"{PREFIX}-{alert_id}"
    if reason is None:
        reason = (
            "Threshold Crossed: 5 out of the last 5 datapoints [0.07 (28/11/26 14:23:00), 0.06 (28/11/26 14:22:00), "
            "0.09 (28/11/26 14:21:00), 0.08 (28/11/26 14:20:00), 0.06 (28/11/26 14:19:00)] were greater than the "
            "threshold (0.05) (minimum 5 datapoints for OK -> ALARM transition)."
            if state == "ALARM"
            else "Threshold Crossed: 1 out of the last 5 datapoints [0.0 (28/11/26 16:26:00)] was not greater than "
            "the threshold (0.05) (minimum 1 datapoint for ALARM -> OK transition)."
        )
    doc = {
        "AlarmName": name,
        "AlarmDescription": description if description is not None else f"smartgrid {alert_id}",
        "AWSAccountId": ACCOUNT,
        "AlarmConfigurationUpdatedTimestamp": "2026-11-27T10:00:00.000+0000",
        "NewStateValue": state,
        "NewStateReason": reason,
        "StateChangeTime": _cw_time(at),
        "Region": "US East (N. Virginia)",
        "AlarmArn": f"arn:aws:cloudwatch:us-east-1:{ACCOUNT}:alarm:{name}",
        "OldStateValue": "OK" if state == "ALARM" else "ALARM",
        "OKActions": [ALARM_TOPIC],
        "AlarmActions": [ALARM_TOPIC],
        "InsufficientDataActions": [],
        "Trigger": trigger if trigger is not None else metric_trigger(),
        **extra,
    }
    if doc["Trigger"] == {}:
        del doc["Trigger"]
    return doc


def sns_event(*messages: dict) -> dict:
    return {
        "Records": [
            {
                "EventSource": "aws:sns",
                "EventVersion": "1.0",
                "EventSubscriptionArn": f"{ALARM_TOPIC}:2bcfbf39-05c3-41de-beaa-fcfcc21c8f55",
                "Sns": {
                    "Type": "Notification",
                    "MessageId": f"95df01b4-ee98-5cb9-9903-4c221d41eb5{i}",
                    "TopicArn": ALARM_TOPIC,
                    "Subject": f'{m["NewStateValue"]}: "{m["AlarmName"]}" in US East (N. Virginia)'[:100],
                    "Message": json.dumps(m),
                    "Timestamp": "2026-11-28T14:23:46.000Z",
                    "SignatureVersion": "1",
                    "Signature": "EXAMPLE",
                    "SigningCertUrl": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0000.pem",
                    "UnsubscribeUrl": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe",
                    "MessageAttributes": {},
                },
            }
            for i, m in enumerate(messages)
        ]
    }


# ------------------------------------------------------------------ the stack
@dataclass
class Notifier:
    settings: Any
    topics: dict[str, str]
    queues: dict[str, str]

    def inbox(self, level: str) -> list[dict]:
        import boto3

        sqs = boto3.client("sqs")
        got = []
        while True:
            msgs = sqs.receive_message(QueueUrl=self.queues[level], MaxNumberOfMessages=10).get("Messages", [])
            if not msgs:
                return got
            for m in msgs:
                body = json.loads(m["Body"])
                got.append({"subject": body.get("Subject"), "text": body["Message"]})
                sqs.delete_message(QueueUrl=self.queues[level], ReceiptHandle=m["ReceiptHandle"])

    def all_inboxes(self) -> dict[str, list[dict]]:
        return {lv: self.inbox(lv) for lv in self.queues}


def _refresh() -> None:
    from smartgrid.store.aws import reset_clients

    get_settings.cache_clear()
    reset_clients()
    incidents_store.forget_webhook_url()


@pytest.fixture
def notifier(aws, monkeypatch, tmp_path) -> Iterator[Notifier]:
    """Tables provisioned, one topic per escalation level each with an SQS inbox, no runbook file."""
    import boto3

    from smartgrid.store.provision import provision

    sns, sqs = boto3.client("sns"), boto3.client("sqs")
    topics, queues = {}, {}
    for level in ("L1", "L2", "L3"):
        topics[level] = sns.create_topic(Name=f"smartgrid-{level.lower()}")["TopicArn"]
        queues[level] = sqs.create_queue(QueueName=f"inbox-{level.lower()}")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=queues[level], AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sns.subscribe(TopicArn=topics[level], Protocol="sqs", Endpoint=arn)
    monkeypatch.setenv("SMARTGRID_ALERT_TOPICS", json.dumps(topics))
    monkeypatch.setenv("SMARTGRID_RUNBOOK_URL", str(tmp_path / "no-runbook.md"))
    _refresh()
    provision(get_settings())
    yield Notifier(get_settings(), topics, queues)
    _refresh()


@pytest.fixture
def atomic_moto(monkeypatch) -> None:
    """moto checks a condition and writes without a lock, so threads can interleave between
    the two; DynamoDB applies each conditional write and ADD atomically. One lock around
    every moto request restores that (our code's concurrency is what is under test)."""
    from moto.core.responses import BaseResponse

    lock = threading.RLock()
    call = BaseResponse.call_action

    def locked(self: Any) -> Any:
        with lock:
            return call(self)

    monkeypatch.setattr(BaseResponse, "call_action", locked)


def run(event: dict, capsys) -> tuple[dict, dict]:
    """The Lambda handler; its result and its EMF line."""
    from smartgrid.jobs.notifier import handler

    capsys.readouterr()
    result = handler(event, LambdaContext())
    emf = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{") and '"_aws"' in x]
    return result, emf[-1]


def fields(text: str) -> dict[str, str]:
    return {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in text.splitlines() if ":" in line}


def stored(alarm_name: str) -> str | None:
    found = incidents_store.open_incident(get_settings(), alarm_name)
    return found.incident_id if found else None


# ------------------------------------------------------------------ ALARM / OK
def test_alarm_opens_an_incident_and_notifies_its_level(notifier, capsys):
    result, emf = run(sns_event(alarm_message("error-rate-critical")), capsys)
    assert result == {"outcomes": ["opened"]}
    assert value(emf, "incidents_opened_total") == 1 and value(emf, "job_succeeded_total") == 1
    boxes = notifier.all_inboxes()
    assert boxes["L1"] == [] and boxes["L3"] == []
    (msg,) = boxes["L2"]  # error-rate-critical routes to L2
    assert msg["subject"] == "[CRITICAL] SmartGrid API: error-rate-critical (INC-2026-11-28-001)"
    text = msg["text"]
    # the template of docs/requirements.md#incidents: its fields, in its order
    positions = [text.index(f"\n{f}") for f in TEMPLATE_FIELDS]
    assert positions == sorted(positions)
    assert text.splitlines()[1] == "━" * 42
    f = fields(text)
    assert f["INCIDENT_ID"] == "INC-2026-11-28-001"
    assert f["SEVERITY"].startswith("Critical (escalation L2 Alert: Senior DevOps, respond within 15 minutes")
    assert f["SERVICE"] == "SmartGrid API"
    assert f["TIME_DETECTED"] == "2026-11-28 14:23:45 UTC"
    assert f["USERS_AFFECTED"].startswith("All")
    assert f["ROOT_CAUSE"] == "(to be determined)" and f["STATUS"] == "Investigating"
    assert "ACTIONS_TAKEN:\n(none yet)" in text
    description = text.split("DESCRIPTION:\n", 1)[1].split("\n\n", 1)[0]
    assert "More than 5% of API requests failed" in description
    # the most recent datapoint (14:23), not the largest, against the threshold
    assert "5XXError (average) was 0.07 at 14:23 UTC, above the threshold of 0.05 (5 of the last 5" in description
    assert f"RUNBOOK: {notifier.settings.runbook_url}#error-rate-critical" in text
    assert "Page on-call, assess" in text  # the action of its row in docs/requirements.md#escalation
    assert stored(f"{PREFIX}-error-rate-critical") == "INC-2026-11-28-001"


def test_ok_resolves_the_same_incident_with_its_duration(notifier, capsys):
    name = f"{PREFIX}-api-down"
    t0 = datetime(2026, 11, 28, 14, 23, 45, tzinfo=UTC)
    down = alarm_message(
        "api-down",
        at=t0,
        reason="Threshold Crossed: 2 out of the last 2 datapoints [0.0 (28/11/26 14:22:00), 0.0 (28/11/26 14:21:00)] "
        "were less than the threshold (1.0) (minimum 2 datapoints for OK -> ALARM transition).",
        trigger=metric_trigger("api_availability", 1.0, "LessThanThreshold"),
    )
    run(sns_event(down), capsys)
    (opened,) = notifier.inbox("L3")
    assert opened["subject"] == "[CRITICAL] SmartGrid API: api-down (INC-2026-11-28-001)"
    assert fields(opened["text"])["USERS_AFFECTED"] == "All"
    assert "Api_availability (maximum)" not in opened["text"]
    assert "was 0 at 14:22 UTC, below the threshold of 1" in opened["text"]

    result, emf = run(
        sns_event(alarm_message("api-down", "OK", at=t0 + timedelta(hours=2, minutes=3, seconds=5))), capsys
    )
    assert result == {"outcomes": ["resolved"]} and value(emf, "incidents_resolved_total") == 1
    (resolved,) = notifier.inbox("L3")
    assert resolved["subject"] == "[RESOLVED] [CRITICAL] SmartGrid API: api-down (INC-2026-11-28-001)"
    f = fields(resolved["text"])
    assert f["INCIDENT_ID"] == "INC-2026-11-28-001" and f["STATUS"] == "Resolved"
    assert f["DURATION"] == "2 hours 3 minutes"
    assert f["RESOLUTION_TIME"] == "2 hours 3 minutes (resolved 2026-11-28 16:26:50 UTC)"
    assert f["TIME_DETECTED"] == "2026-11-28 14:23:45 UTC"
    assert "- Post-incident review to be scheduled (CRITICAL)" in resolved["text"]
    # kept, resolved; the alarm has no open incident any more
    (inc,) = incidents.list_incidents(get_settings())
    assert inc.status == "RESOLVED" and inc.duration == timedelta(hours=2, minutes=3, seconds=5)
    assert stored(name) is None and incidents.open_incidents(get_settings()) == []
    # the next ALARM of the same alarm is a new incident
    run(sns_event(alarm_message("api-down", at=t0 + timedelta(hours=3))), capsys)
    (again,) = notifier.inbox("L3")
    assert "(INC-2026-11-28-002)" in again["subject"]
    # a second OK (no open incident... after it resolves) sends nothing
    run(sns_event(alarm_message("api-down", "OK", at=t0 + timedelta(hours=3, minutes=5))), capsys)
    result, _ = run(sns_event(alarm_message("api-down", "OK", at=t0 + timedelta(hours=3, minutes=6))), capsys)
    assert result == {"outcomes": ["ignored"]}
    assert [fields(m["text"])["DURATION"] for m in notifier.inbox("L3")] == ["5 minutes"]


def test_a_duplicate_alarm_sends_nothing(notifier, capsys):
    msg = alarm_message("latency-p99-high", trigger=metric_trigger("Latency", 1000))
    run(sns_event(msg), capsys)
    later = alarm_message("latency-p99-high", at=datetime(2026, 11, 28, 15, 0, tzinfo=UTC))
    result, emf = run(sns_event(msg, later), capsys)  # the same event again, and another ALARM
    assert result == {"outcomes": ["duplicate", "duplicate"]}
    assert values(emf, "notification_duplicates_total") == [1, 1]
    (only,) = notifier.inbox("L2")
    assert fields(only["text"])["SEVERITY"].startswith("Warning")
    assert len(incidents.list_incidents(get_settings())) == 1


def test_ok_without_an_open_incident_and_insufficient_data_do_nothing(notifier, capsys):
    result, _ = run(sns_event(alarm_message("memory-high", "OK")), capsys)
    assert result == {"outcomes": ["ignored"]}
    insufficient = alarm_message(
        "memory-high",
        "INSUFFICIENT_DATA",
        reason="Insufficient Data: 1 datapoint was unknown.",
    )
    result, _ = run(sns_event(insufficient), capsys)
    assert result == {"outcomes": ["ignored"]}
    # an open incident stays open through INSUFFICIENT_DATA
    run(sns_event(alarm_message("memory-high")), capsys)
    run(sns_event(insufficient), capsys)
    assert [i.alarm_name for i in incidents.open_incidents(get_settings())] == [f"{PREFIX}-memory-high"]
    assert len(notifier.inbox("L2")) == 1 and notifier.inbox("L1") == []


def test_an_older_ok_does_not_resolve_a_newer_incident(notifier, capsys):
    at = datetime(2026, 11, 28, 14, 0, tzinfo=UTC)
    run(sns_event(alarm_message("api-throttled", at=at)), capsys)
    result, _ = run(sns_event(alarm_message("api-throttled", "OK", at=at - timedelta(minutes=1))), capsys)
    assert result == {"outcomes": ["ignored"]} and len(incidents.open_incidents(get_settings())) == 1


# ------------------------------------------------------------------ alarm shapes
def test_metric_math_alarm(notifier, capsys):
    msg = alarm_message(
        "backup-failed",
        reason="Threshold Crossed: 1 datapoint [1.0 (28/11/26 02:05:00)] was greater than the threshold (0.0).",
        trigger=MATH_TRIGGER,
        at=datetime(2026, 11, 28, 2, 10, 3, tzinfo=UTC),
    )
    run(sns_event(msg), capsys)
    (m,) = notifier.inbox("L2")
    assert m["subject"] == "[CRITICAL] SmartGrid API: backup-failed (INC-2026-11-28-001)"
    assert "Backup failures (FILL(m0, 0) + FILL(m1, 0)) was 1 at 02:05 UTC, above the threshold of 0" in m["text"]
    assert "(metric-math; OK -> ALARM)" in m["text"]
    assert fields(m["text"])["USERS_AFFECTED"].startswith("None directly")


def test_composite_and_unknown_alarms(notifier, capsys):
    composite = alarm_message(
        name=f"{PREFIX}-api-degraded",
        description="[CRITICAL] the API is failing and slow at once",
        reason=f"arn:aws:cloudwatch:us-east-1:{ACCOUNT}:alarm:{PREFIX}-error-rate-critical transitioned to ALARM "
        "at Saturday 28 November, 2026 14:23:45 UTC",
        trigger={},
        AlarmRule=f'ALARM("{PREFIX}-error-rate-critical") AND ALARM("{PREFIX}-latency-p99-high")',
        TriggeringChildren=[{"Arn": f"arn:aws:cloudwatch:us-east-1:{ACCOUNT}:alarm:{PREFIX}-error-rate-critical"}],
    )
    plain = alarm_message(name="someone-elses-alarm", description="disk is full", trigger=metric_trigger("Disk"))
    result, _ = run(sns_event(composite, plain), capsys)
    assert result == {"outcomes": ["opened", "opened"]}
    first, second = notifier.inbox("L2")  # unknown alarms go to L2
    assert first["subject"] == f"[CRITICAL] SmartGrid API: {PREFIX}-api-degraded (INC-2026-11-28-001)"
    assert "is not in the alert table" in first["text"] and "the API is failing and slow at once" in first["text"]
    assert 'Composite alarm rule: ALARM("smartgrid-dev-error-rate-critical") AND' in first["text"]
    assert "(composite; OK -> ALARM)" in first["text"]
    assert first["text"].count("[CRITICAL]") == 0  # the tag is turned into the severity
    assert second["subject"].startswith("[WARNING] SmartGrid API: someone-elses-alarm (INC-2026-11-28-002)")
    assert "Disk (average) was 0.07" in second["text"]


def test_subject_stays_within_100_characters(notifier, capsys):
    name = "x" * 150
    run(sns_event(alarm_message(name=name, description="")), capsys)
    (m,) = notifier.inbox("L2")
    assert len(m["subject"]) <= 100 and m["subject"].endswith("... (INC-2026-11-28-001)")


def test_bad_notifications_are_refused(notifier, capsys):
    from smartgrid.jobs.notifier import handler

    with pytest.raises(DataValidationError, match="not an SNS event"):
        handler({"detail-type": "Scheduled Event"}, LambdaContext())
    event = sns_event(alarm_message())
    event["Records"][0]["Sns"]["Message"] = "hello from a test publish"
    with pytest.raises(DataValidationError, match="not JSON"):
        handler(event, LambdaContext())
    with pytest.raises(DataValidationError, match="missing StateChangeTime"):
        incidents.parse_alarm({"AlarmName": "a", "NewStateValue": "ALARM"})


# ------------------------------------------------------------------ numbering
def test_concurrent_alarms_get_distinct_numbers_per_day(notifier, atomic_moto):
    settings = get_settings()
    day = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
    names = [f"{PREFIX}-custom-{i}" for i in range(12)]
    outcomes: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(names))

    def one(name: str) -> None:
        try:
            barrier.wait()
            change = incidents.parse_alarm(alarm_message(name=name, at=day))
            outcomes.append(incidents.process(change, settings))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and outcomes == ["opened"] * len(names)
    ids = sorted(i.incident_id for i in incidents.list_incidents(settings))
    assert ids == [f"INC-2026-11-28-{n:03d}" for n in range(1, len(names) + 1)]
    assert len(notifier.inbox("L2")) == len(names)
    # the next day starts again at 001, whatever the clock says: the day is the detection's
    change = incidents.parse_alarm(alarm_message(name=names[0] + "-b", at=day + timedelta(days=1, hours=-8, minutes=1)))
    incidents.process(change, settings)
    assert incidents.list_incidents(settings)[0].incident_id == "INC-2026-11-29-001"


def test_racing_invocations_for_one_alarm_open_one_incident(notifier, atomic_moto):
    settings = get_settings()
    change = incidents.parse_alarm(alarm_message("error-rate-warning"))
    outcomes: list[str] = []
    barrier = threading.Barrier(6)

    def one() -> None:
        barrier.wait()
        outcomes.append(incidents.process(change, settings))

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["duplicate"] * 5 + ["opened"]
    assert len(incidents.list_incidents(settings)) == 1 and len(notifier.inbox("L1")) == 1


# ------------------------------------------------------------------ delivery failures
def test_a_failed_publish_raises_and_the_retry_sends_once_under_the_same_id(notifier, capsys, monkeypatch):
    from smartgrid.jobs.notifier import handler

    topics = dict(notifier.topics, L3=notifier.topics["L3"] + "-deleted")  # SNS answers NotFound
    monkeypatch.setenv("SMARTGRID_ALERT_TOPICS", json.dumps(topics))
    _refresh()
    event = sns_event(alarm_message("api-down"))
    capsys.readouterr()
    with pytest.raises(DependencyUnavailableError, match="SNS publish"):
        handler(event, LambdaContext())
    emf = [json.loads(x) for x in capsys.readouterr().out.splitlines() if '"_aws"' in x]
    assert value(emf[-1], "job_failed_total") == 1
    (inc,) = incidents.open_incidents(get_settings())  # opened, not notified
    assert inc.incident_id == "INC-2026-11-28-001" and inc.sent == set()
    assert notifier.inbox("L3") == []
    # Lambda's retry, with SNS back
    monkeypatch.setenv("SMARTGRID_ALERT_TOPICS", json.dumps(notifier.topics))
    _refresh()
    result, emf = run(event, capsys)
    assert result == {"outcomes": ["renotified"]} and "incidents_opened_total" not in emf
    (m,) = notifier.inbox("L3")
    assert "(INC-2026-11-28-001)" in m["subject"]
    # a further delivery of the same event is now a duplicate
    result, _ = run(event, capsys)
    assert result == {"outcomes": ["duplicate"]} and notifier.inbox("L3") == []
    assert [i.incident_id for i in incidents.list_incidents(get_settings())] == ["INC-2026-11-28-001"]


def test_no_topic_for_the_level_is_an_error_not_a_silent_drop(notifier, capsys, monkeypatch):
    monkeypatch.setenv("SMARTGRID_ALERT_TOPICS", json.dumps({"L1": notifier.topics["L1"]}))
    _refresh()
    with pytest.raises(DependencyUnavailableError, match="no SNS topic for escalation level L3"):
        incidents.handle_event(sns_event(alarm_message("api-down")), get_settings())


# ------------------------------------------------------------------ chat webhook
class _Chat(BaseHTTPRequestHandler):
    status = 200
    received: list[dict]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append({"type": self.headers["Content-Type"], "body": json.loads(body)})
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args: object) -> None: ...


@pytest.fixture
def chat(notifier, monkeypatch) -> Iterator[type[_Chat]]:
    import boto3

    handler = type("Chat", (_Chat,), {"status": 200, "received": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    boto3.client("ssm").put_parameter(
        Name="/smartgrid/dev/chat-webhook",
        Type="SecureString",
        Value=f"http://127.0.0.1:{server.server_address[1]}/hooks/T000/B000",
    )
    monkeypatch.setenv("SMARTGRID_CHAT_WEBHOOK_PARAMETER", "/smartgrid/dev/chat-webhook")
    _refresh()
    yield handler
    server.shutdown()
    server.server_close()


def test_the_chat_webhook_gets_the_same_text(notifier, chat, capsys):
    run(sns_event(alarm_message("forecast-error-high")), capsys)
    (m,) = notifier.inbox("L1")
    (post,) = chat.received
    assert post["type"] == "application/json" and post["body"] == {"text": m["text"]}
    run(sns_event(alarm_message("forecast-error-high", "OK", at=datetime(2026, 11, 28, 20, 0, tzinfo=UTC))), capsys)
    assert len(chat.received) == 2 and "STATUS: Resolved" in chat.received[1]["body"]["text"]


def test_a_failing_webhook_raises_and_the_retry_only_repeats_the_chat(notifier, chat, capsys):
    from smartgrid.jobs.notifier import handler

    chat.status = 500
    event = sns_event(alarm_message("ingestion-failed"))
    with pytest.raises(DependencyUnavailableError, match="HTTP 500"):
        handler(event, LambdaContext())
    assert len(notifier.inbox("L2")) == 1 and len(chat.received) == 1
    chat.status = 200
    result, _ = run(event, capsys)
    assert result == {"outcomes": ["renotified"]}
    assert notifier.inbox("L2") == [] and len(chat.received) == 2  # e-mail not repeated


# ------------------------------------------------------------------ runbook, pieces
def test_runbook_first_steps_are_quoted_when_the_file_is_there(notifier, capsys, monkeypatch, tmp_path):
    runbook = tmp_path / "runbook.md"
    runbook.write_text(
        "# Runbook\n\n## api-down\n\nThe API does not answer.\n\n### Diagnose\n- look at the probe logs\n\n"
        "### Mitigate\n1. Check the last deployment\n2. Roll back\n3. Raise concurrency\n4. Call AWS\n\n"
        "## error-rate-critical\n\n### Mitigate\n- something else\n"
    )
    monkeypatch.setenv("SMARTGRID_RUNBOOK_URL", str(runbook))
    _refresh()
    assert incidents.runbook_steps(str(runbook), "api-down") == [
        "Check the last deployment",
        "Roll back",
        "Raise concurrency",
    ]
    assert incidents.runbook_steps(str(runbook), "memory-high") == []
    assert incidents.runbook_steps("https://example.org/runbook.md", "api-down") == []
    run(sns_event(alarm_message("api-down")), capsys)
    (m,) = notifier.inbox("L3")
    assert "FIRST_STEPS:\n1. Check the last deployment\n2. Roll back\n3. Raise concurrency\n" in m["text"]
    assert "Call AWS" not in m["text"] and f"RUNBOOK: {runbook}#api-down" in m["text"]


def test_pieces():
    assert incidents.human_duration(timedelta(minutes=4, seconds=45)) == "5 minutes"
    assert incidents.human_duration(timedelta(seconds=45)) == "45 seconds"
    assert incidents.human_duration(timedelta(minutes=1)) == "1 minute"
    assert incidents.human_duration(timedelta(days=1, hours=4)) == "1 day 4 hours"
    assert incidents.latest_datapoint("no values here") is None
    assert incidents.find_alert(f"{PREFIX}-notification-dead-letters").id == "notification-dead-letters"  # type: ignore[union-attr]
    assert incidents.find_alert(f"{PREFIX}-dead-letters").id == "dead-letters"  # type: ignore[union-attr]
    assert incidents.find_alert("dead-letters-x") is None
    assert all(incidents.find_alert(f"{PREFIX}-{a.id}") is a for a in ALERTS)
    assert incidents.parse_time("2026-11-28T14:23:45.123+0000") == datetime(2026, 11, 28, 14, 23, 45, 123000, UTC)


# ------------------------------------------------------------------ CLI
def test_incidents_list(notifier, capsys, monkeypatch):
    from smartgrid.cli.common import out

    monkeypatch.setattr(out, "_width", 160)
    t0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
    run(sns_event(alarm_message("latency-p99-info", at=t0)), capsys)
    run(sns_event(alarm_message("latency-p99-info", "OK", at=t0 + timedelta(minutes=5))), capsys)
    run(sns_event(alarm_message("api-down", at=t0 + timedelta(hours=1))), capsys)
    runner = CliRunner()
    res = runner.invoke(app, ["incidents", "list", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert [(r["incident_id"], r["status"]) for r in rows] == [
        ("INC-2026-11-28-002", "OPEN"),
        ("INC-2026-11-28-001", "RESOLVED"),
    ]
    assert rows[1]["duration"] == "5 minutes" and rows[1]["severity"] == "INFO"
    assert rows[0]["alarm"] == f"{PREFIX}-api-down" and rows[0]["resolved"] is None
    res = runner.invoke(app, ["incidents", "list", "--open", "--json"])
    assert [r["incident_id"] for r in json.loads(res.stdout)] == ["INC-2026-11-28-002"]
    res = runner.invoke(app, ["incidents", "list"])
    assert res.exit_code == 0 and "INC-2026-11-28-001" in res.stdout and "5 minutes" in res.stdout


def test_unfinished_deliveries_belong_to_their_invocation_until_its_lease_runs_out(notifier, monkeypatch):
    settings = get_settings()
    topics = dict(notifier.topics, L2="arn:aws:sns:us-east-1:123456789012:gone")
    monkeypatch.setenv("SMARTGRID_ALERT_TOPICS", json.dumps(topics))
    _refresh()
    change = incidents.parse_alarm(alarm_message("error-rate-critical"))
    with pytest.raises(DependencyUnavailableError):
        incidents.process(change, get_settings(), owner="request-a")
    monkeypatch.setenv("SMARTGRID_ALERT_TOPICS", json.dumps(notifier.topics))
    _refresh()
    settings = get_settings()
    # another delivery of the alarm (another request) while request-a may still be retried
    assert incidents.process(change, settings, owner="request-b") == "duplicate"
    assert notifier.inbox("L2") == []
    # request-a's lease has run out (its retries ended in the dead-letter queue): b takes over
    later = incidents.time.time() + incidents.DELIVERY_LEASE_S + 1
    monkeypatch.setattr(incidents.time, "time", lambda: later)
    assert incidents.process(change, settings, owner="request-b") == "renotified"
    (m,) = notifier.inbox("L2")
    assert "(INC-2026-11-28-001)" in m["subject"]
    assert incidents.process(change, settings, owner="request-a") == "duplicate"


def test_an_incident_lost_between_marker_and_write_is_restored(notifier, capsys, monkeypatch):
    from smartgrid.store.tables import IncidentItem

    real_save = IncidentItem.save
    calls = {"n": 0}

    def crash_on_incident(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.pk.startswith("INC#"):
            calls["n"] += 1
            raise RuntimeError("Lambda timed out")
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(IncidentItem, "save", crash_on_incident)
    event = sns_event(alarm_message("api-down"))
    with pytest.raises(RuntimeError):
        incidents.handle_event(event, get_settings(), owner="req-1")
    monkeypatch.setattr(IncidentItem, "save", real_save)
    assert incidents.handle_event(event, get_settings(), owner="req-1") == ["renotified"]
    (m,) = notifier.inbox("L3")
    assert "(INC-2026-11-28-001)" in m["subject"] and "DESCRIPTION:\nThe health probe" in m["text"]
    assert [i.incident_id for i in incidents.open_incidents(get_settings())] == ["INC-2026-11-28-001"]
