"""Meter-data ingestion: the handler on real-shaped EventBridge S3 events (moto: S3, DynamoDB,
SNS delivering to an SQS subscriber), the bundled models (real onnxruntime), the CLI."""

from __future__ import annotations

import gzip
import io
import json
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from smartgrid.cli.main import app
from smartgrid.domain.ingestion import CLAIM_HOLD_S, readings_csv
from smartgrid.domain.predictions import SeriesInput
from smartgrid.engine.data import Series, iso_all
from smartgrid.observability import logger
from smartgrid.store.tables import ActualsItem, IdempotencyItem
from tests.helpers.apigw import LambdaContext
from tests.helpers.emf import value, values
from tests.helpers.ingestion import put, s3_event
from tests.helpers.stack import Stack

H = 24  # hourly gefcom: steps a day
FORECAST_DAY = 139  # 2006-05-20, the day the test predictions forecast


Env = Stack


@pytest.fixture
def env(stack_with_inbox) -> Env:
    return stack_with_inbox  # tests/conftest.py


@pytest.fixture
def ingestor(env):
    from smartgrid.jobs.ingestion import ingestor as cached

    return cached(env.settings)  # the handler's own, so predictions made here are the ones it sees


@dataclass
class Run:
    result: dict[str, Any] | None
    error: BaseException | None
    emf: dict[str, Any]
    logs: list[dict[str, Any]]


def run(event: dict[str, Any], capsys, request_id: str | None = None) -> Run:
    """The Lambda entry point as Lambda calls it; its EMF line and log lines. Every call is a
    new invocation (a new request id) unless ``request_id`` says otherwise: Lambda's own
    retries of an invocation keep its request id."""
    from smartgrid.jobs.ingestion import handler

    capsys.readouterr()
    buf = io.StringIO()
    h = logger.registered_handler
    old = h.setStream(buf)  # type: ignore[attr-defined]
    result = error = None
    try:
        context = LambdaContext(function_name="smartgrid-ingestion", aws_request_id=request_id or str(uuid.uuid4()))
        result = handler(event, context)
    except Exception as exc:
        error = exc
    finally:
        h.setStream(old)  # type: ignore[attr-defined]
    emf_lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{") and "_aws" in x]
    merged: dict[str, Any] = {}
    for line in emf_lines:  # Powertools flushes early past 100 values of a metric
        for k, v in line.items():
            if k in merged and k != "_aws" and isinstance(merged[k], list | int | float):
                merged[k] = (merged[k] if isinstance(merged[k], list) else [merged[k]]) + (
                    v if isinstance(v, list) else [v]
                )
            else:
                merged[k] = v
    return Run(result, error, merged, [json.loads(x) for x in buf.getvalue().splitlines()])


def messages(env: Env) -> list[dict[str, Any]]:
    import boto3

    sqs = boto3.client("sqs")
    got = sqs.receive_message(QueueUrl=env.queue, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
    return [json.loads(m["Body"]) for m in got]


def keys(env: Env, prefix: str) -> list[str]:
    import boto3

    return [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=env.bucket, Prefix=prefix).get("Contents", [])]


def read(env: Env, key: str) -> bytes:
    import boto3

    body: bytes = boto3.client("s3").get_object(Bucket=env.bucket, Key=key)["Body"].read()
    return body


def csv_of(s: Series, lo_day: int, hi_day: int, spike_at: int | None = None) -> bytes:
    """Days [lo_day, hi_day) of an hourly series as a meter file (timestamp,load); a 1.5x
    spike at hour ``spike_at`` of the slice."""
    part = s.slice(lo_day * H, hi_day * H)
    load = part.load.copy()
    if spike_at is not None:
        load[spike_at] *= 1.5
    lines = ["timestamp,load"] + [f"{t},{v:.1f}" for t, v in zip(iso_all(part.timestamps), load, strict=True)]
    return ("\n".join(lines) + "\n").encode()


def predict(ingestor, s: Series, user: str, site: str, day: int = FORECAST_DAY) -> Any:
    """A prediction of ``day`` made through the service from the 28 days before it."""
    part = s.slice((day - 28) * H, day * H)
    (outcome,) = ingestor.service.predict(
        user,
        [
            SeriesInput(
                timestamps=iso_all(part.timestamps),
                load=part.load.tolist(),
                temperature=part.temperature.tolist() if part.temperature is not None else None,
                site_id=site,
            )
        ],
    )
    assert outcome.record is not None, outcome.error
    return outcome.record


# --------------------------------------------------------------------------- accepted
def test_accepted_file_is_stored_and_recorded_as_actuals(env, ingestor, gefcom, capsys):
    mine = predict(ingestor, gefcom, "alice", "zone-1")
    other_site = predict(ingestor, gefcom, "alice", "zone-2")
    other_user = predict(ingestor, gefcom, "bob", "zone-1")
    assert mine.timestamps[0] == "2006-05-20T00:00:00Z"
    body = csv_of(gefcom, FORECAST_DAY - 1, FORECAST_DAY + 2)  # May 19-21: covers the forecast day
    r = run(put(env, "incoming/alice/zone-1/2006-05-21.csv", body), capsys)
    assert r.error is None, r.error
    out = r.result
    assert out is not None and out["status"] == "accepted", out
    assert out["readings"] == 72 and out["first"] == "2006-05-19T00:00:00Z" and out["last"] == "2006-05-21T23:00:00Z"

    # the readings under accepted/, content-addressed, readable by the engine's parser
    (stored,) = keys(env, "accepted/")
    assert stored == out["accepted_key"] and stored.startswith("accepted/alice/zone-1/") and stored.endswith(".csv")
    from smartgrid.domain.ingestion import parse_file

    again = parse_file(read(env, stored))
    assert again.n == 72 and np.allclose(again.load, np.round(gefcom.load[(FORECAST_DAY - 1) * H :][:72], 1))
    assert keys(env, "incoming/") == ["incoming/alice/zone-1/2006-05-21.csv"]  # the original stays

    # actuals: the 24 forecast steps of alice's zone-1 prediction, nothing for the others
    assert [(a["prediction_id"], a["points"]) for a in out["actuals"]] == [(mine.prediction_id, 24)]
    item = ActualsItem.get("alice", mine.prediction_id)
    day = gefcom.load[FORECAST_DAY * H : (FORECAST_DAY + 1) * H]
    assert [item.actuals[t] for t in mine.timestamps] == pytest.approx(np.round(day, 1).tolist())
    for user, rec in (("alice", other_site), ("bob", other_user)):
        with pytest.raises(ActualsItem.DoesNotExist):
            ActualsItem.get(user, rec.prediction_id)
    # the forecast-error metrics, one value per step, and the job's outcome
    assert len(values(r.emf, "model_prediction_error_absolute")) == 24
    errors = np.abs(np.round(day, 1) - np.array(mine.p50))
    assert sorted(values(r.emf, "model_prediction_error_absolute")) == pytest.approx(sorted(errors), abs=1e-3)
    assert len(values(r.emf, "model_prediction_error_percent")) == 24
    assert value(r.emf, "job_succeeded_total") == 1 and r.emf["job"] == "ingestion"
    assert value(r.emf, "model_anomalies_detected") == out["anomalies"]["flagged"]
    assert any(x["message"] == "meter file accepted" for x in r.logs)


def test_spike_is_published_to_the_operations_topic(env, ingestor, gefcom, capsys):
    body = csv_of(gefcom, 100, 114, spike_at=7 * H + 13)  # two weeks, a 1.5x spike on day 8 at 13:00
    spike = iso_all(gefcom.slice(100 * H, 114 * H).timestamps)[7 * H + 13]
    r = run(put(env, "incoming/alice/zone-1/fortnight.csv", body), capsys)
    assert r.error is None, r.error
    an = r.result["anomalies"]
    assert an["flagged"] >= 1 and "spike" in an["kinds"]
    assert spike in [f["timestamp"] for f in an["first"]]
    assert value(r.emf, "model_anomalies_detected") == an["flagged"]
    (msg,) = messages(env)
    assert msg["Subject"].startswith("smartgrid: ") and "alice/zone-1" in msg["Subject"]
    assert len(msg["Subject"]) <= 100 and msg["MessageId"] == r.result["notification"]
    text = msg["Message"]
    assert f"flagged {an['flagged']} of 336 readings" in text and "spike" in text and spike in text
    assert "incoming/alice/zone-1/fortnight.csv" in text and r.result["accepted_key"] in text


def test_a_short_file_is_accepted_without_detection(env, ingestor, gefcom, capsys):
    part = gefcom.slice(50 * H, 50 * H + 6)
    body = readings_csv(part)  # six hours, with temperature
    r = run(put(env, "incoming/alice/zone-1/morning.csv.gz", gzip.compress(body)), capsys)
    assert r.result["status"] == "accepted" and r.result["anomalies"] is None and r.result["readings"] == 6
    assert "model_anomalies_detected" not in r.emf and messages(env) == []
    assert read(env, r.result["accepted_key"]) == body  # stored as read: same text, temperature kept
    assert body.startswith(b"timestamp,load,temperature\n")


def test_daily_files_are_scanned_after_the_sites_week_before(env, ingestor, gefcom, capsys):
    """One day alone is too little for the detector: the site's accepted readings of the week
    before go in front of it; only the new day's flags count."""
    week = run(put(env, "incoming/alice/zone-1/week.csv", csv_of(gefcom, 100, 107)), capsys)
    assert week.result["status"] == "accepted" and week.result["anomalies"]["flagged"] == 0
    day = run(put(env, "incoming/alice/zone-1/day-107.csv", csv_of(gefcom, 107, 108, spike_at=14)), capsys)
    an = day.result["anomalies"]
    assert an["context_days"] == 7 and [f["timestamp"] for f in an["first"]] == ["2006-04-18T14:00:00Z"]
    assert an["kinds"] == {"spike": 1} and value(day.emf, "model_anomalies_detected") == 1
    (msg,) = messages(env)
    assert (
        "2006-04-18T14:00:00Z  spike" in msg["Message"] and "7 day(s) of the site's earlier readings" in msg["Message"]
    )
    clean = run(put(env, "incoming/alice/zone-1/day-108.csv", csv_of(gefcom, 108, 109)), capsys)
    assert clean.result["anomalies"]["flagged"] == 0 and clean.result["anomalies"]["context_days"] == 7
    assert messages(env) == []
    # another site has no history yet: one day alone is not scanned
    alone = run(put(env, "incoming/alice/zone-9/day-108.csv", csv_of(gefcom, 108, 109)), capsys)
    assert alone.result["status"] == "accepted" and alone.result["anomalies"] is None
    assert "model_anomalies_detected" not in alone.emf


# --------------------------------------------------------------------------- duplicates
def test_the_same_file_twice_is_processed_once(env, ingestor, gefcom, capsys):
    mine = predict(ingestor, gefcom, "alice", "zone-1")
    body = csv_of(gefcom, FORECAST_DAY - 7, FORECAST_DAY + 1, spike_at=3 * H + 10)
    event = put(env, "incoming/alice/zone-1/week.csv", body)
    first = run(event, capsys)
    assert first.result["status"] == "accepted" and first.result["anomalies"]["flagged"] >= 1
    assert len(messages(env)) == 1
    version = ActualsItem.get("alice", mine.prediction_id).version

    # the same event again (EventBridge delivers at least once), then the same readings
    # under another name and compressed
    second = run(event, capsys)
    third = run(put(env, "incoming/alice/zone-1/week-again.csv.gz", gzip.compress(body)), capsys)
    for r in (second, third):
        assert r.error is None and r.result["status"] == "duplicate", r.result
        assert r.result["accepted_key"] == first.result["accepted_key"]
        assert "model_prediction_error_absolute" not in r.emf and "model_anomalies_detected" not in r.emf
        assert value(r.emf, "job_succeeded_total") == 1
    assert ActualsItem.get("alice", mine.prediction_id).version == version  # not written again
    assert messages(env) == []  # no second notification
    assert len(keys(env, "accepted/")) == 1
    marker = IdempotencyItem.get(first.result["accepted_key"].replace("accepted/", "ingest#").replace("/", "#")[:-4])
    assert marker.status == "COMPLETED"

    # the same readings for another site are that site's data
    other = run(put(env, "incoming/alice/zone-2/week.csv", body), capsys)
    assert other.result["status"] == "accepted" and len(keys(env, "accepted/")) == 2


def test_a_duplicate_delivery_while_one_is_processing_is_not_processed(env, ingestor, gefcom, capsys, monkeypatch):
    """EventBridge delivers at least once: a second delivery of the same event (the same event
    id) is another invocation, which must not take over the claim the first one holds."""
    from smartgrid.jobs.ingestion import meter_object
    from smartgrid.store import meter_bucket as meter

    body = csv_of(gefcom, FORECAST_DAY - 7, FORECAST_DAY + 1, spike_at=3 * H + 10)
    event = put(env, "incoming/alice/zone-1/week.csv", body)
    real_write = meter.write
    during: list[Any] = []

    def write_while_duplicate_arrives(key, *a, **kw):
        if key.startswith("accepted/") and not during:  # the first invocation is midway
            during.append(ingestor.ingest(meter_object(event, "request-2")))
        return real_write(key, *a, **kw)

    monkeypatch.setattr(meter, "write", write_while_duplicate_arrives)
    first = run(event, capsys, request_id="request-1")
    assert first.error is None and first.result["status"] == "accepted"
    (dup,) = during
    assert dup.status == "in_progress" and dup.anomalies is None and dup.actuals == []
    assert len(keys(env, "accepted/")) == 1 and len(messages(env)) == 1  # processed and published once
    assert run(event, capsys).result["status"] == "duplicate"  # a later delivery: done before


def test_the_claim_owner_is_the_invocation(env, ingestor):
    """The claim's rules: another owner waits while it is held; the same owner (Lambda's retry
    of the invocation) takes it over at once; another owner takes over a stale claim."""
    from datetime import UTC, datetime, timedelta

    markers, now = ingestor.markers, datetime.now(UTC)
    key = "ingest#alice#zone-1#" + "0" * 64
    held = markers.claim_once(key, "request-1", now, CLAIM_HOLD_S, 3600)
    assert held.state == "claimed"
    busy = markers.claim_once(key, "request-2", now + timedelta(seconds=CLAIM_HOLD_S - 1), CLAIM_HOLD_S, 3600)
    assert busy.state == "busy" and busy.until == held.until
    retry = markers.claim_once(key, "request-1", now + timedelta(seconds=5), CLAIM_HOLD_S, 3600)
    assert retry.state == "claimed" and retry.until > held.until
    assert markers.finish_once(key, held.until, completed=True) is False  # the dead attempt lost it
    late = now + timedelta(seconds=5 + CLAIM_HOLD_S + 1)  # the retry died too: its window passed
    stale = markers.claim_once(key, "request-3", late, CLAIM_HOLD_S, 3600)
    assert stale.state == "claimed" and stale.until > retry.until
    assert markers.finish_once(key, retry.until, completed=True) is False
    assert markers.finish_once(key, stale.until, completed=True) is True
    assert markers.claim_once(key, "request-4", late, CLAIM_HOLD_S, 3600).state == "completed"
    assert IdempotencyItem.get(key).request_digest == "request-3"


# --------------------------------------------------------------------------- rejected
BAD_FILES = {
    "bad_timestamps": (
        "incoming/alice/zone-1/bad-ts.csv",
        b"timestamp,load\n2006-05-19T00:00:00Z,3000\nyesterday,3100\n"
        b"2006-05-19T02:00:00Z,3050\n31/05/2006 03:00,2990\n",
        {"bad_timestamp"},
    ),
    "text_in_load": (
        "incoming/alice/zone-1/text.csv",
        b"timestamp,load\n2006-05-19T00:00:00Z,3000\n2006-05-19T01:00:00Z,n/a\n2006-05-19T02:00:00Z,3050\n",
        {"non_numeric_load"},
    ),
    "wrong_key_layout": (
        "incoming/alice/readings.csv",
        b"timestamp,load\n2006-05-19T00:00:00Z,3000\n2006-05-19T01:00:00Z,3100\n",
        {"bad_key"},
    ),
    "empty_file": ("incoming/alice/zone-1/empty.csv", b"", {"empty_file"}),
    "header_only": ("incoming/alice/zone-1/header.csv", b"timestamp,load\n", {"no_rows"}),
    "not_a_csv": (
        "incoming/alice/zone-1/readings.xlsx",
        b"PK\x03\x04\x14\x00\x06\x00\x08\x00\xa1\xff\xd3",
        {"not_csv", "bad_encoding"},
    ),
    "wrong_columns": ("incoming/alice/zone-1/cols.csv", b"time,kw\n2006-05-19T00:00:00Z,3000\n", {"missing_column"}),
    "several_problems": (
        "incoming/alice/zone-1/several.csv",
        b"timestamp,load\n2006-05-19T00:00:00Z,3000\n2006-05-19T01:00:00Z,-5\n2006-05-19T01:00:00Z,3100\n",
        {"negative_load", "duplicate_timestamp"},
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files_are_moved_aside_with_a_report(env, ingestor, capsys, case):
    key, body, codes = BAD_FILES[case]
    r = run(put(env, key, body), capsys)
    assert r.error is None, r.error  # bad data is an outcome, not a failure
    out = r.result
    assert out["status"] == "rejected" and {p["code"] for p in out["problems"]} == codes, out["problems"]
    assert keys(env, "incoming/") == []  # deleted from incoming ...
    assert read(env, f"rejected/{key}") == body  # ... after the copy: nothing lost
    report = json.loads(read(env, f"rejected/{key}.report.json"))
    assert report["source"] == f"s3://{env.bucket}/{key}" and report["moved_to"] == f"rejected/{key}"
    assert {p["code"] for p in report["problems"]} == codes and report["problem_count"] == len(report["problems"])
    assert all(p["message"] for p in report["problems"]) and "timestamp,load[,temperature]" in report["expected"]
    assert value(r.emf, "meter_files_rejected_total") == 1 and value(r.emf, "job_succeeded_total") == 1
    (warning,) = [x for x in r.logs if x["message"] == "meter file rejected"]
    assert warning["level"] == "WARNING" and warning["report"] == f"rejected/{key}.report.json"
    assert keys(env, "accepted/") == [] and messages(env) == []


def test_a_report_names_the_rows(env, ingestor, capsys):
    key, body, _ = BAD_FILES["bad_timestamps"]
    run(put(env, key, body), capsys)
    report = json.loads(read(env, f"rejected/{key}.report.json"))
    assert [p["rows"] for p in report["problems"]] == [[2], [4]]
    assert "row 2" in report["problems"][0]["message"] and "'yesterday'" in report["problems"][0]["message"]


def test_a_rejected_files_event_delivered_again_is_a_duplicate(env, ingestor, capsys):
    key, body, _ = BAD_FILES["text_in_load"]
    event = put(env, key, body)
    assert run(event, capsys).result["status"] == "rejected"
    again = run(event, capsys)
    assert again.error is None and again.result["status"] == "duplicate"
    assert "meter_files_rejected_total" not in again.emf
    assert keys(env, "rejected/") == [f"rejected/{key}", f"rejected/{key}.report.json"]


def test_objects_outside_incoming_are_ignored(env, ingestor, capsys):
    body = b"timestamp,load\n"
    r = run(put(env, "rejected/incoming/alice/zone-1/x.csv", body), capsys)
    assert r.result["status"] == "ignored" and keys(env, "rejected/") == ["rejected/incoming/alice/zone-1/x.csv"]


def test_events_that_are_not_for_this_function_fail(env, ingestor, capsys):
    wrong_bucket = s3_event("somebody-elses-bucket", "incoming/alice/zone-1/a.csv", "e", 1)
    r = run(wrong_bucket, capsys)
    assert isinstance(r.error, ValueError) and "meter-data bucket" in str(r.error)
    assert value(r.emf, "job_failed_total") == 1
    r = run({"source": "aws.scheduler", "detail-type": "Scheduled Event", "detail": {}}, capsys)
    assert isinstance(r.error, ValueError) and "Object Created" in str(r.error)


def test_keys_with_spaces_arrive_url_encoded(env, ingestor, gefcom, capsys):
    r = run(put(env, "incoming/alice/zone 1/May 19+20.csv", csv_of(gefcom, 10, 12)), capsys)
    assert r.result["status"] == "accepted" and r.result["site_id"] == "zone 1"
    assert r.result["key"] == "incoming/alice/zone 1/May 19+20.csv"


# --------------------------------------------------------------------------- failures
def _s3_error(operation: str) -> Exception:
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": "InternalError", "Message": "We encountered an internal error"}}, operation)


@pytest.mark.parametrize("where", ["accepted_write", "sns_publish", "mark_done"])
def test_a_failure_midway_raises_and_the_retry_converges(env, ingestor, gefcom, capsys, monkeypatch, where):
    from smartgrid.errors import DependencyUnavailableError
    from smartgrid.store import meter_bucket as meter
    from smartgrid.store import notify

    mine = predict(ingestor, gefcom, "alice", "zone-1")
    body = csv_of(gefcom, FORECAST_DAY - 7, FORECAST_DAY + 1, spike_at=3 * H + 10)
    event = put(env, "incoming/alice/zone-1/week.csv", body)
    real_write, real_finish = meter.write, ingestor.markers.finish_once

    def failing_write(key, *a, **kw):
        if key.startswith("accepted/"):
            raise _s3_error("PutObject")
        return real_write(key, *a, **kw)

    def failing_publish(*a, **kw):
        raise _s3_error("Publish")

    def failing_finish(key, until, completed):
        if completed:
            raise _s3_error("UpdateItem")
        return real_finish(key, until, completed)

    with monkeypatch.context() as m:
        if where == "accepted_write":
            m.setattr(meter, "write", failing_write)
        elif where == "sns_publish":
            m.setattr(notify, "publish", failing_publish)
        else:
            m.setattr(ingestor.markers, "finish_once", failing_finish)
        failed = run(event, capsys, request_id="request-1")
    assert isinstance(failed.error, DependencyUnavailableError), failed.error
    assert "incoming/alice/zone-1/week.csv" in str(failed.error) and "retry" in str(failed.error)
    assert value(failed.emf, "job_failed_total") == 1
    assert keys(env, "incoming/") == ["incoming/alice/zone-1/week.csv"]  # nothing lost
    if where == "accepted_write":
        assert keys(env, "accepted/") == []

    if where == "mark_done":  # the claim is still held: a duplicate delivery (a new invocation) waits
        dup = run(event, capsys)
        assert dup.error is None and dup.result["status"] == "in_progress"
    retried = run(event, capsys, request_id="request-1")  # Lambda retries the invocation: the same request id
    assert retried.error is None, retried.error
    assert retried.result["status"] == "accepted"
    assert len(keys(env, "accepted/")) == 1
    item = ActualsItem.get("alice", mine.prediction_id)
    day = gefcom.load[FORECAST_DAY * H : (FORECAST_DAY + 1) * H]
    assert [item.actuals[t] for t in mine.timestamps] == pytest.approx(np.round(day, 1).tolist())
    assert len(messages(env)) == (1 if where == "accepted_write" or where == "sns_publish" else 2)
    assert run(event, capsys).result["status"] == "duplicate"


def test_a_failure_while_moving_a_bad_file_aside_converges(env, ingestor, capsys, monkeypatch):
    from smartgrid.errors import DependencyUnavailableError
    from smartgrid.store import meter_bucket as meter

    key, body, _ = BAD_FILES["bad_timestamps"]
    event = put(env, key, body)

    def failing_delete(*a, **kw):
        raise _s3_error("DeleteObject")

    with monkeypatch.context() as m:
        m.setattr(meter, "delete", failing_delete)
        failed = run(event, capsys)
    assert isinstance(failed.error, DependencyUnavailableError) and "deleting" in str(failed.error)
    assert keys(env, "incoming/") == [key]  # still there: the retry does the move again
    retried = run(event, capsys)
    assert retried.result["status"] == "rejected" and keys(env, "incoming/") == []
    assert read(env, f"rejected/{key}") == body and value(retried.emf, "meter_files_rejected_total") == 1


def test_a_correction_uploaded_while_a_file_is_rejected_is_kept(env, ingestor, gefcom, capsys, monkeypatch):
    """Copy and delete are conditional on the content that was checked (S3 If-Match): a
    corrected upload landing meanwhile is not deleted, and its own event ingests it."""
    from smartgrid.store import meter_bucket as meter
    from smartgrid.store.aws import client

    key, body, _ = BAD_FILES["text_in_load"]
    event = put(env, key, body)
    good = csv_of(gefcom, 10, 12)
    real_copy = meter.copy
    later: list[dict[str, Any]] = []

    def copy_then_replaced(*a, **kw):
        real_copy(*a, **kw)
        later.append(put(env, key, good))  # the client's corrected file lands in between

    seen: list[str | None] = []
    s3 = client("s3", env.settings)

    def spy(params, **_):
        seen.append(params.get("CopySourceIfMatch"))

    s3.meta.events.register("provide-client-params.s3.CopyObject", spy)
    try:
        with monkeypatch.context() as m:
            m.setattr(meter, "copy", copy_then_replaced)
            r = run(event, capsys)
    finally:
        s3.meta.events.unregister("provide-client-params.s3.CopyObject", spy)
    # moto ignores CopySourceIfMatch (S3 honours it): at least check it is sent, with the etag read
    assert seen == [f'"{event["detail"]["object"]["etag"]}"']
    assert r.error is None and r.result["status"] == "rejected" and "newer upload" in r.result["detail"]
    assert read(env, f"rejected/{key}") == body and read(env, key) == good
    assert run(later[0], capsys).result["status"] == "accepted"


# --------------------------------------------------------------------------- CLI
def test_cli_uploads_and_ingests_a_file(env, ingestor, gefcom, tmp_path):
    mine = predict(ingestor, gefcom, "alice", "zone-1")
    path = tmp_path / "2006-05-20.csv"
    path.write_bytes(csv_of(gefcom, FORECAST_DAY, FORECAST_DAY + 1))
    runner = CliRunner()
    r = runner.invoke(
        app, ["ingest", str(path), "--client", "alice", "--site", "zone-1", "--json", str(tmp_path / "o.json")]
    )
    assert r.exit_code == 0, r.output
    assert "accepted" in r.output and mine.prediction_id in r.output and "24" in r.output
    assert keys(env, "incoming/") == ["incoming/alice/zone-1/2006-05-20.csv"]
    assert json.loads((tmp_path / "o.json").read_text())["status"] == "accepted"
    # the same name again would replace a file: refused; the key already there is a duplicate
    again = runner.invoke(app, ["ingest", str(path), "--client", "alice", "--site", "zone-1"])
    assert again.exit_code == 2 and "exists already" in again.output
    dup = runner.invoke(app, ["ingest", "--key", "incoming/alice/zone-1/2006-05-20.csv"])
    assert dup.exit_code == 0 and "duplicate" in dup.output


def test_cli_reports_a_rejected_file(env, ingestor, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(BAD_FILES["bad_timestamps"][1])
    r = CliRunner().invoke(app, ["ingest", str(path), "--client", "alice", "--site", "zone-1"])
    assert r.exit_code == 2
    assert "rejected" in r.output and "row 2" in r.output and "rejected/incoming/alice/zone-1/bad.csv" in r.output


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "either FILE"),
        (["x.csv"], "--client and --site"),
        (["--key", "incoming/a/b/c.csv", "--client", "a"], "names the client"),
        (["missing.csv", "--client", "a", "--site", "b"], "no such file"),
        (["--key", "incoming/alice/zone-1/nothing.csv"], "missing"),
        (["--key", "accepted/alice/zone-1/x.csv"], "ignored"),
    ],
)
def test_cli_refuses_bad_arguments(env, ingestor, args, message):
    r = CliRunner().invoke(app, ["ingest", *args])
    assert r.exit_code == 2 and message in r.output, r.output


def test_cli_says_when_aws_fails(env, ingestor, tmp_path, monkeypatch):
    from smartgrid.store import meter_bucket as meter

    def failing(*a, **kw):
        raise _s3_error("HeadObject")

    monkeypatch.setattr(meter, "exists", failing)
    path = tmp_path / "a.csv"
    path.write_bytes(BAD_FILES["text_in_load"][1])
    r = CliRunner().invoke(app, ["ingest", str(path), "--client", "alice", "--site", "zone-1"])
    assert r.exit_code == 1 and "InternalError" in r.output and "uploading" in r.output
