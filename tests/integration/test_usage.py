"""The monthly usage report: counting a month's predictions per client over a paginated (and
segmented) Scan in moto, the scheduler-driven handler publishing to the L1 topic (an SQS
queue subscribed), and `smartgrid usage`."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from typer.testing import CliRunner

from smartgrid.cli.main import app
from smartgrid.config import get_settings
from smartgrid.domain.usage import Month, month_of_event, report
from smartgrid.observability import logger
from smartgrid.store.records import PredictionRecord, new_prediction_id
from tests.helpers.apigw import LambdaContext
from tests.helpers.emf import value
from tests.helpers.stack import Stack

SCHEDULER_EVENT = {  # what EventBridge Scheduler sends on 1 December 2026, 06:00 UTC
    "version": "0",
    "id": "7f0e5a42-3b53-4b8e-9a0c-6f1d2a1c9e11",
    "detail-type": "Scheduled Event",
    "source": "aws.scheduler",
    "account": "123456789012",
    "time": "2026-12-01T06:00:00Z",
    "region": "us-east-1",
    "resources": ["arn:aws:scheduler:us-east-1:123456789012:schedule/default/smartgrid-dev-usage_report"],
    "detail": {},
}
NOV = Month(2026, 11)
MS = timedelta(milliseconds=1)


Env = Stack


@pytest.fixture
def env(stack_with_inbox) -> Env:
    return stack_with_inbox  # tests/conftest.py


def _record(user: str, when: datetime) -> PredictionRecord:
    return PredictionRecord(
        user_id=user,
        prediction_id=new_prediction_id(when),
        created_at=when,
        inputs_digest="0" * 64,
        model="load_forecast",
        model_version="test",
        fallback_reason=None,
        resolution_minutes=60,
        source="computed",
        timestamps=["2026-11-02T00:00:00Z"],
        p10=[1.0],
        p50=[2.0],
        p90=[3.0],
        site_id="zone-1",
        expires_at=when + timedelta(days=400),
    )


@pytest.fixture
def predictions(env) -> dict[str, int]:
    """Predictions around November 2026, written as the API writes them; November's counts."""
    from smartgrid.store.predictions_table import DynamoStore

    start, end = NOV.start, NOV.end
    recs = [_record("alice", start + timedelta(hours=7 * i, minutes=i)) for i in range(23)]
    recs += [_record("bob", start + timedelta(days=3, hours=11 * i)) for i in range(12)]
    recs += [_record("carol", start - timedelta(days=2, hours=i)) for i in range(5)]  # October
    recs += [_record("dave", end + timedelta(hours=i)) for i in range(3)]  # December
    recs += [
        _record("alice", start),  # the month's first millisecond: in
        _record("bob", end - MS),  # its last: in
        _record("carol", start - MS),  # the millisecond before: out
        _record("dave", end),  # December's first: out
    ]
    DynamoStore(env.settings).save_predictions(recs, {}, datetime.now(UTC))
    return {"alice": 24, "bob": 13}


def messages(env: Env) -> list[dict[str, Any]]:
    import boto3

    got = boto3.client("sqs").receive_message(QueueUrl=env.queue, MaxNumberOfMessages=10).get("Messages", [])
    return [json.loads(m["Body"]) for m in got]


# --------------------------------------------------------------------------- counting
@pytest.mark.parametrize("segments", [1, 4])
def test_counts_a_month_per_client_across_pages(env, predictions, segments):
    result, message_id = report(env.settings, NOV, publish=False, page_size=5, segments=segments)
    assert result.per_client == predictions and list(result.per_client) == ["alice", "bob"]  # most first
    assert result.total == 37 and result.over_threshold is False and message_id is None
    assert result.pages > 47 // 5 and result.scanned == 47  # every page read, every item seen once
    assert result.start == "2026-11-01T00:00:00Z" and result.end == "2026-12-01T00:00:00Z"
    assert messages(env) == []


def test_other_months_and_an_empty_month(env, predictions):
    october, _ = report(env.settings, Month(2026, 10), publish=False, page_size=5)
    assert october.per_client == {"carol": 6}
    december, _ = report(env.settings, Month(2026, 12), publish=False, now=datetime(2027, 1, 1, 6, tzinfo=UTC))
    assert december.per_client == {"dave": 4}
    empty, _ = report(env.settings, Month(2026, 1), publish=False, now=datetime(2026, 12, 1, 6, tzinfo=UTC))
    assert empty.total == 0 and "(none)" in empty.text()


def test_the_manuals_100k_flag(env, predictions):
    result, _ = report(env.settings, NOV, publish=True, threshold=37, now=datetime(2026, 12, 1, 6, tzinfo=UTC))
    assert result.over_threshold is True
    (msg,) = messages(env)
    assert msg["Subject"] == "smartgrid usage 2026-11: 37 predictions (37+ reached)"
    assert "'100k+ predictions processed'): YES" in msg["Message"]


def test_a_month_not_over_and_a_month_past_retention_say_so(env):
    now = datetime(2026, 11, 15, tzinfo=UTC)
    running, _ = report(env.settings, NOV, publish=False, now=now)
    assert running.complete is False and "not over" in running.text() and "so far" in running.subject()
    old, _ = report(env.settings, Month(2025, 1), publish=False, now=now)
    assert old.expired is True and old.complete is True and "expired" in old.text()


def test_predictions_made_through_the_service_are_counted(env, example_body):
    """The ids the service gives (ULIDs of the request time) are what the report counts."""
    from smartgrid.domain.predictions import SeriesInput, build_service

    svc = build_service(env.settings)
    h = example_body["history"]
    item = SeriesInput(h["timestamps"], h["load"], h["temperature"], site_id="gefcom-zone-1")
    before = datetime.now(UTC)
    svc.predict("erin", [item, item])
    this_month = Month(before.year, before.month)
    result, _ = report(env.settings, this_month, publish=False)
    assert result.per_client == {"erin": 2} and result.complete is False


# --------------------------------------------------------------------------- months
def test_months():
    assert Month.parse("2026-11") == NOV and str(NOV) == "2026-11"
    assert Month(2026, 12).end == datetime(2027, 1, 1, tzinfo=UTC)
    assert Month.previous(datetime(2027, 1, 1, 6, tzinfo=UTC)) == Month(2026, 12)
    assert Month.previous(datetime(2026, 12, 1, 0, 0, tzinfo=UTC)) == NOV
    for bad in ("2026-13", "2026-00", "26-11", "2026/11", "november", ""):
        with pytest.raises(ValueError, match="YYYY-MM"):
            Month.parse(bad)


def test_the_month_an_event_asks_for():
    assert month_of_event(SCHEDULER_EVENT) == NOV
    assert month_of_event({**SCHEDULER_EVENT, "time": "2027-01-01T06:00:00Z"}) == Month(2026, 12)
    assert month_of_event({"month": "2025-02"}) == Month(2025, 2)  # a manual run
    assert month_of_event({}, now=datetime(2026, 3, 1, tzinfo=UTC)) == Month(2026, 2)
    with pytest.raises(ValueError, match="ISO 8601"):
        month_of_event({"time": "yesterday"})


# --------------------------------------------------------------------------- the job
def _run(event: dict[str, Any], capsys) -> tuple[Any, BaseException | None, dict[str, Any], list[dict[str, Any]]]:
    from smartgrid.jobs.usage import handler

    capsys.readouterr()
    buf = io.StringIO()
    h = logger.registered_handler
    old = h.setStream(buf)  # type: ignore[attr-defined]
    result = error = None
    try:
        result = handler(event, LambdaContext(function_name="smartgrid-usage_report"))
    except Exception as exc:
        error = exc
    finally:
        h.setStream(old)  # type: ignore[attr-defined]
    (emf,) = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{") and "_aws" in x]
    return result, error, emf, [json.loads(x) for x in buf.getvalue().splitlines()]


def test_the_scheduled_job_publishes_last_months_report(env, predictions, capsys, monkeypatch):
    from smartgrid.domain import usage

    monkeypatch.setattr(usage, "SCAN_PAGE_SIZE", 4)  # many pages
    monkeypatch.setattr(usage, "utcnow", lambda: datetime(2026, 12, 1, 6, 0, 2, tzinfo=UTC))
    result, error, emf, logs = _run(SCHEDULER_EVENT, capsys)
    assert error is None, error
    assert result["month"] == "2026-11" and result["per_client"] == predictions and result["pages"] > 10
    (msg,) = messages(env)
    assert msg["MessageId"] == result["notification"]
    assert msg["Subject"] == "smartgrid usage 2026-11: 37 predictions"
    text = msg["Message"]
    assert "Predictions processed in 2026-11 (UTC, 2026-11-01T00:00:00Z to 2026-12-01T00:00:00Z): 37" in text
    assert "alice" in text and "24" in text and "bob" in text and "13" in text and "carol" not in text
    assert "'100k+ predictions processed'): no" in text
    (line,) = [x for x in logs if x["message"] == "usage report"]
    assert line["usage"]["total"] == 37 and line["level"] == "INFO"
    assert value(emf, "job_succeeded_total") == 1 and emf["job"] == "usage_report"
    assert [m["Name"] for m in emf["_aws"]["CloudWatchMetrics"][0]["Metrics"]] == ["job_succeeded_total"]


def test_the_job_fails_when_sns_does(env, predictions, capsys, monkeypatch):
    from botocore.exceptions import ClientError

    from smartgrid.store import notify

    def failing(*a, **kw):
        raise ClientError({"Error": {"Code": "InternalError", "Message": "boom"}}, "Publish")

    monkeypatch.setattr(notify, "publish", failing)
    _, error, emf, _ = _run(SCHEDULER_EVENT, capsys)
    assert isinstance(error, ClientError) and value(emf, "job_failed_total") == 1


def test_without_an_l1_topic_the_report_is_logged_only(aws):
    get_settings.cache_clear()
    try:
        result, message_id = report(get_settings(), NOV, publish=True)
    finally:
        get_settings.cache_clear()
    assert message_id is None and result.total == 0


# --------------------------------------------------------------------------- CLI
def test_cli_prints_a_months_report(env, predictions, tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["usage", "--month", "2026-11", "--json", str(tmp_path / "u.json")])
    assert r.exit_code == 0, r.output
    assert "Predictions processed in 2026-11" in r.output and "alice" in r.output and "37" in r.output
    assert json.loads((tmp_path / "u.json").read_text())["per_client"] == predictions
    assert messages(env) == []  # not published unless asked
    sent = runner.invoke(app, ["usage", "--month", "2026-11", "--publish"])
    assert sent.exit_code == 0 and "published to L1" in sent.output
    assert len(messages(env)) == 1


def test_cli_refuses_a_bad_month(env):
    r = CliRunner().invoke(app, ["usage", "--month", "2026-13"])
    assert r.exit_code == 2 and "YYYY-MM" in r.output
