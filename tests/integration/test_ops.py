"""`smartgrid ops check` against moto: the local stack provisioned as the CDK app makes it,
a deployed stack found by its CloudFormation outputs, and each kind of failure marked."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from smartgrid import catalog
from smartgrid.cli.main import app
from smartgrid.config import get_settings
from smartgrid.domain import ops
from smartgrid.domain.backup import run_backup
from smartgrid.domain.champion import publish, record_decision
from smartgrid.store.aws import client, reset_clients
from smartgrid.store.provision import provision


class _Health(BaseHTTPRequestHandler):
    status = "ok"

    def do_GET(self) -> None:
        body = json.dumps({"status": type(self).status}).encode()
        self.send_response(200 if type(self).status != "critical" else 503)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None: ...


@pytest.fixture
def api() -> Iterator[tuple[str, type[_Health]]]:
    handler = type("Health", (_Health,), {"status": "ok"})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


NOW = datetime.now(UTC)


@pytest.fixture
def stack(aws):
    """The local stack after a day of operation: the bundled models published as champion,
    a retraining round recorded, last night's backup written and verified."""
    reset_clients()
    settings = get_settings()
    provision(settings)
    publish(settings, settings.model_dir, reason="first deploy")
    record_decision(
        settings,
        {
            "kind": "retraining",
            "status": "kept",
            "reason": "challenger not better",
            "champion": {"mape": 2.5},
            "challenger": {"mape": 3.1},
            "started_at": (NOW - timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "finished_at": (NOW - timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    )
    run_backup(settings, now=NOW - timedelta(hours=5))
    yield settings
    reset_clients()


def _by_name(checks: list[ops.Check]) -> dict[str, ops.Check]:
    return {c.name: c for c in checks}


def test_a_healthy_stack_is_all_ok(stack, api):
    checks = ops.run(ops.Target(stack, api[0], "smartgrid-test"), now=NOW)
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]
    names = [c.name for c in checks]
    assert names[0] == "api" and names[-1] == "alarms"
    assert {"table predictions", "table actuals", "bucket models", "bucket backups", "bucket meter_data"} <= set(names)
    lines = _by_name(checks)
    assert "verified" in lines["backup"].detail and "5.0 h ago" in lines["backup"].detail
    assert "kept 3 days ago (champion MAPE 2.50%, challenger MAPE 3.10%)" in lines["retraining"].detail
    assert "champion" in lines["models"].detail and "first deploy" in lines["models"].detail
    assert lines["incidents"].ok and lines["incidents"].detail == "none open"


def test_an_open_incident_is_not_ok(stack, api):
    from smartgrid.domain import incidents

    alarm = {
        "AlarmName": "smartgrid-test-api-down",
        "AlarmDescription": "[CRITICAL] the health probe could not get 200 from /health",
        "NewStateValue": "ALARM",
        "OldStateValue": "OK",
        "NewStateReason": "Threshold Crossed: 2 out of the last 2 datapoints were less than the threshold (1.0).",
        "StateChangeTime": (NOW - timedelta(minutes=7)).strftime("%Y-%m-%dT%H:%M:%S.000+0000"),
        "Region": "US East (N. Virginia)",
        "AWSAccountId": "123456789012",
        "Trigger": {
            "MetricName": "api_availability",
            "Namespace": "Smartgrid",
            "Statistic": "MAXIMUM",
            "Dimensions": [{"name": "service", "value": "smartgrid"}, {"name": "job", "value": "health_probe"}],
            "Period": 60,
            "EvaluationPeriods": 2,
            "ComparisonOperator": "LessThanThreshold",
            "Threshold": 1.0,
            "TreatMissingData": "breaching",
        },
    }
    topic = client("sns", stack).create_topic(Name="l3")["TopicArn"]  # the notice goes to L3
    settings = stack.model_copy(update={"alert_topics": {"L1": topic, "L2": topic, "L3": topic}})
    assert incidents.process(incidents.parse_alarm(alarm), settings, owner="test") == "opened"
    lines = _by_name(ops.run(ops.Target(settings, api[0], "smartgrid-test"), now=NOW))
    assert not lines["incidents"].ok
    assert "INC-" in lines["incidents"].detail and "CRITICAL api-down since 0.1 h ago" in lines["incidents"].detail


def test_an_overdue_backup_a_damaged_one_and_no_retraining_are_not_ok(stack, api):
    later = NOW + timedelta(days=40)
    lines = _by_name(ops.run(ops.Target(stack, api[0], "smartgrid-test"), now=later))
    assert not lines["backup"].ok and "overdue" in lines["backup"].detail
    assert not lines["retraining"].ok and "overdue" in lines["retraining"].detail
    # flip a byte in one of the backup's objects, keeping its size: only the sha256 check sees it
    s3 = client("s3", stack)
    key = next(
        o["Key"]
        for o in s3.list_objects_v2(Bucket=stack.backups_bucket)["Contents"]
        if o["Key"].endswith("config.json")
    )
    good = s3.get_object(Bucket=stack.backups_bucket, Key=key)["Body"].read()
    flipped = good[:10] + bytes([good[10] ^ 0x01]) + good[11:]
    assert len(flipped) == len(good) and flipped != good
    s3.put_object(Bucket=stack.backups_bucket, Key=key, Body=flipped)
    lines = _by_name(ops.run(ops.Target(stack, api[0], "smartgrid-test"), now=NOW))
    assert not lines["backup"].ok, lines["backup"]
    detail = lines["backup"].detail
    assert "config.json: sha256 " in detail and "the manifest says" in detail, detail
    assert f"({len(good)} bytes), the manifest says" in detail  # same size: the checksum caught it


def test_each_problem_is_its_own_line(stack, api):
    api[1].status = "degraded"
    cw = client("cloudwatch", stack)
    cw.put_metric_alarm(
        AlarmName="smartgrid-test-api-down",
        MetricName="api_availability",
        Namespace="Smartgrid",
        Statistic="Maximum",
        Period=60,
        EvaluationPeriods=2,
        Threshold=1,
        ComparisonOperator="LessThanThreshold",
    )
    cw.set_alarm_state(AlarmName="smartgrid-test-api-down", StateValue="ALARM", StateReason="probe failed")
    client("dynamodb", stack).update_continuous_backups(
        TableName=stack.actuals_table, PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": False}
    )
    client("s3", stack).delete_bucket(Bucket=stack.meter_data_bucket)
    checks = _by_name(ops.run(ops.Target(stack, api[0], "smartgrid-test"), now=NOW))
    bad = {name for name, c in checks.items() if not c.ok}
    assert bad == {"api", "table actuals", "bucket meter_data", "alarms"}
    assert "degraded" in checks["api"].detail
    assert "PITR DISABLED" in checks["table actuals"].detail
    assert "could not check" in checks["bucket meter_data"].detail
    assert "smartgrid-test-api-down" in checks["alarms"].detail


def test_the_cli_finds_a_deployed_stack_by_its_outputs_and_exits_1_on_a_problem(stack, api):
    names = {s: getattr(stack, s) for s in catalog.OPS_SETTINGS}
    outputs = {catalog.stack_output_key(s): {"Value": v} for s, v in names.items()}
    outputs[catalog.API_URL_OUTPUT] = {"Value": api[0]}
    outputs[catalog.ALARM_PREFIX_OUTPUT] = {"Value": "smartgrid-prod"}
    template = {"Resources": {"Nothing": {"Type": "AWS::CloudFormation::WaitConditionHandle"}}, "Outputs": outputs}
    client("cloudformation", stack).create_stack(StackName="Smartgrid-prod", TemplateBody=json.dumps(template))
    runner = CliRunner()
    ok = runner.invoke(app, ["ops", "check", "--stack", "Smartgrid-prod", "--json"])
    assert ok.exit_code == 0, ok.output
    lines = json.loads(ok.output)
    assert all(line["ok"] for line in lines)
    assert any(api[0] in line["detail"] for line in lines if line["check"] == "api")
    api[1].status = "critical"
    down = runner.invoke(app, ["ops", "check", "--stack", "Smartgrid-prod"])
    assert down.exit_code == 1 and "NOT OK" in down.output


def test_a_stack_without_our_outputs_is_refused(stack):
    template = {"Resources": {"Nothing": {"Type": "AWS::CloudFormation::WaitConditionHandle"}}}
    client("cloudformation", stack).create_stack(StackName="Other", TemplateBody=json.dumps(template))
    res = CliRunner().invoke(app, ["ops", "check", "--stack", "Other"])
    assert res.exit_code == 2 and "is it a smartgrid stack" in res.output
