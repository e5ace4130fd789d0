"""The CDK app: synthesized offline through the pinned CDK CLI with cdk-nag, checked by
cfn-lint and checkov, and its template's properties asserted against docs/requirements.md.

Template assertions run on an in-process synth without cdk-nag (nag would run again on every
synth); the CLI test runs the app exactly as `npx cdk synth` does, with nag."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from smartgrid import catalog
from smartgrid.catalog import ALERTS, ESCALATION, SCHEDULES, Level
from smartgrid.config import env_var
from smartgrid.store.tables import table_shapes
from tests.helpers.paths import ROOT
from tests.helpers.uv_tools import uv_command, uv_env

pytestmark = pytest.mark.xdist_group("layers")  # the layers are built once, in one worker
# Every test that synthesizes the app (through built_layers, template or prod_template) is
# marked slow: it builds the layers and runs a CDK synth.

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

# The alert table and escalation matrix of docs/requirements.md (#alerts, #escalation), written
# out here on purpose (not read from the catalog): a change to the catalog that drifts from
# docs/requirements.md fails these.
# id -> (threshold as deployed, period s, evaluation periods, level)
MANUAL_ROWS = {
    "api-down": (1, 60, 2, "L3"),  # API down 1+ minute: page on-call (L3: API down)
    "error-rate-critical": (0.05, 60, 5, "L2"),  # error rate > 5% for 5 min (L2: error rate > 5%)
    "capacity-exhausted": (95, 60, 1, "L1"),  # disk > 95%: alert ops (95% of 100 reserved)
    "latency-p99-high": (1000, 60, 5, "L2"),  # P99 > 1 s (L2: latency P99 > 1 s)
    "concurrency-high": (80, 60, 10, "L1"),  # CPU > 80% for 10 min: consider scaling
    "memory-high": (80, 60, 10, "L2"),  # memory > 80% for 10 min (L2: memory > 80%)
    "error-rate-warning": (0.01, 60, 15, "L1"),  # error rate > 1% for 15 min (L1: 1-5%)
    "latency-p99-info": (500, 60, 5, "L1"),  # P99 > 500 ms (L1: 500 ms - 1 s)
    "predictions-volume": (100_000 / 30, 86_400, 1, "L1"),  # 100k+ predictions: monthly report
}


def app_for(tmp: Path, layers: Path, **context: Any) -> Any:
    """An app as `cdk synth` makes it: cdk.json's context (feature flags), then overrides."""
    import aws_cdk as cdk

    base = json.loads((ROOT / "cdk.json").read_text())["context"]
    return cdk.App(outdir=str(tmp), context={**base, "layersDir": str(layers), **context})


def _synth(tmp: Path, layers: Path, **context: Any) -> dict[str, Any]:
    from infra.app import build

    app = app_for(tmp, layers, **context)
    stack = build(app, nag=False)
    return app.synth().get_stack_by_name(stack.stack_name).template


@pytest.fixture(scope="module")
def template(built_layers, tmp_path_factory) -> dict[str, Any]:
    return _synth(tmp_path_factory.mktemp("cdk-dev"), built_layers[0])


@pytest.fixture(scope="module")
def prod_template(built_layers, tmp_path_factory) -> dict[str, Any]:
    return _synth(
        tmp_path_factory.mktemp("cdk-prod"),
        built_layers[0],
        envName="prod",
        production=True,
        alertEmails=json.dumps({"L3": ["oncall@example.com"], "L1": ["ops@example.com"]}),
        apiReservedConcurrency=200,
    )


def resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def props(template: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [v["Properties"] for v in resources(template, kind).values()]


def logical_id(template: dict[str, Any], kind: str, **match: Any) -> str:
    found = [
        k for k, v in resources(template, kind).items() if all(v["Properties"].get(a) == b for a, b in match.items())
    ]
    assert len(found) == 1, (kind, match, found)
    return found[0]


def topic_for(template: dict[str, Any], level: str) -> str:
    return next(
        k
        for k, v in resources(template, "AWS::SNS::Topic").items()
        if f"-{level.lower()}-" in v["Properties"]["TopicName"]
    )


def jobs_dlq(template: dict[str, Any]) -> str:
    return next(k for k in resources(template, "AWS::SQS::Queue") if k.startswith("RuntimeJobsDeadLetters"))


def alarm_topic(template: dict[str, Any]) -> str:
    return next(
        k for k, v in resources(template, "AWS::SNS::Topic").items() if v["Properties"]["TopicName"].endswith("-alarms")
    )


def function_id(template: dict[str, Any], spec: catalog.FunctionSpec) -> str:
    return logical_id(template, "AWS::Lambda::Function", Description=spec.description)


# ------------------------------------------------------------------ the CLI, cdk-nag, cfn-lint
@pytest.mark.slow
def test_cdk_cli_synth_offline_with_nag_cfn_lint_and_checkov_clean(built_layers, tmp_path):
    npx = shutil.which("npx")
    assert npx, "Node.js is needed: the CDK CLI is pinned in package.json (npm ci)"
    assert (ROOT / "node_modules" / "aws-cdk").is_dir(), "run `npm ci` (the README's test command does)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}  # no credentials
    env.update(DOCKER_HOST="unix:///nonexistent", CDK_DISABLE_VERSION_CHECK="1")
    out_dir = tmp_path / "cdk.out"
    run = subprocess.run(
        [
            npx,
            "--no-install",
            "cdk",
            "synth",
            "--quiet",
            "--output",
            str(out_dir),
            "--context",
            f"layersDir={built_layers[0]}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    report = json.loads((out_dir / "validation-report.json").read_text())
    (nag,) = report["pluginReports"]
    assert nag["pluginName"] == "AwsSolutions" and nag["conclusion"] == "success", nag["violations"]
    assert nag["violations"] == []
    # every acknowledged finding names the exact rule and carries a reason, on a construct
    # narrower than the app (no blanket acknowledgements)
    suppressed = nag["suppressedViolations"]
    assert len(suppressed) >= 10
    for finding in suppressed:
        assert finding["acknowledgedId"] == f"AwsSolutions::{finding['ruleName']}"
        assert len(finding["reason"]) >= 60, finding["reason"]
        assert finding["acknowledgedAt"].startswith("Smartgrid-dev")
    templates = sorted(out_dir.glob("*.template.json"))
    assert templates
    # the shared code asset carries the runbook as a file (the package's symlink followed)
    (runbook,) = [p for p in out_dir.glob("asset.*/smartgrid/runbook.md")]
    assert not runbook.is_symlink() and runbook.read_text() == (ROOT / "docs" / "runbook.md").read_text()
    lint = subprocess.run(
        [str(Path(sys.executable).parent / "cfn-lint"), *map(str, templates)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert lint.returncode == 0, lint.stdout[-4000:] + lint.stderr[-4000:]
    _checkov_clean_and_live(templates, tmp_path)


def checkov(directory: Path) -> dict[str, Any]:
    """checkov 3.3 (its own lock in tools/scanners) on every template in ``directory``, offline."""
    scanners = ["run", "--frozen", "--project", str(ROOT / "tools" / "scanners")]
    options = ["--directory", str(directory), "--framework", "cloudformation", "--skip-download", "--output", "json"]
    run = subprocess.run(
        uv_command(*scanners, "checkov", *options),
        env=uv_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode in (0, 1), run.stderr[-4000:]  # 1: failed checks, reported below
    report = json.loads(run.stdout)
    return report if isinstance(report, dict) else {"results": {}, "summary": {}}


def _checkov_clean_and_live(templates: list[Path], tmp_path: Path) -> None:
    """Zero failed checkov checks on the synthesized templates; each accepted finding is a skip
    on its resource with its reason (infra/checkov.py). The same template with the skips taken
    out fails: checkov is live, and the skips are what clears it."""
    scan = tmp_path / "checkov"
    (scan / "as-synthesized").mkdir(parents=True)
    (scan / "without-skips").mkdir()
    for path in templates:
        shutil.copy(path, scan / "as-synthesized" / path.name)
        bare = json.loads(path.read_text())
        for resource in bare["Resources"].values():
            resource.get("Metadata", {}).pop("checkov", None)
        (scan / "without-skips" / path.name).write_text(json.dumps(bare))
    results = checkov(scan)["results"]
    by_dir: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for outcome in ("passed_checks", "failed_checks", "skipped_checks"):
        for check in results.get(outcome, []):
            where = Path(check["file_abs_path"]).parent.name
            by_dir.setdefault(where, {}).setdefault(outcome, []).append(check)
    synthesized = by_dir["as-synthesized"]
    failed = [(c["check_id"], c["resource"]) for c in synthesized.get("failed_checks", [])]
    assert failed == [], failed
    assert len(synthesized["passed_checks"]) > 200
    for check in synthesized["skipped_checks"]:
        assert len(check["check_result"].get("suppress_comment", "")) >= 60, (check["check_id"], check["resource"])
    bare_failed = {c["check_id"] for c in by_dir["without-skips"].get("failed_checks", [])}
    assert bare_failed == {c["check_id"] for c in synthesized["skipped_checks"]}


@pytest.mark.slow
def test_nag_fails_the_synth_on_an_unacknowledged_finding(built_layers, tmp_path):
    """cdk-nag is live: a bucket without SSL enforcement or access logs stops the synth."""
    from aws_cdk import aws_s3 as s3

    from infra.app import build

    app = app_for(tmp_path, built_layers[0])
    stack = build(app, nag=True)
    s3.Bucket(stack, "Careless")
    with pytest.raises(Exception, match=r"Validation failed|AwsSolutions-S"):
        app.synth()


# ------------------------------------------------------------------ alarms
@pytest.mark.parametrize("alert", ALERTS, ids=[a.id for a in ALERTS])
@pytest.mark.slow
def test_each_alert_row_is_one_alarm_with_its_metric_threshold_window_and_level(template, alert):
    from infra.constructs.runtime import handler_exists

    alarms = [p for p in props(template, "AWS::CloudWatch::Alarm") if p["AlarmName"] == f"smartgrid-dev-{alert.id}"]
    if alert.job is not None and not handler_exists(alert.job):
        assert alarms == []  # the job's code has not landed: nothing to alarm on yet
        return
    (alarm,) = alarms
    threshold = alert.threshold * (100 if alert.id in catalog.CONCURRENCY_FRACTION_ALERTS else 1)
    assert alarm["Threshold"] == pytest.approx(threshold)
    assert alarm["EvaluationPeriods"] == alert.evaluation_periods
    assert alarm["DatapointsToAlarm"] == alert.datapoints_to_alarm
    # through the notifier (which routes by the alert's level), or straight to the level's people
    topic = {"Ref": topic_for(template, alert.level.value) if alert.direct else alarm_topic(template)}
    assert alarm["AlarmActions"] == [topic] and alarm["OKActions"] == [topic]
    assert alarm["TreatMissingData"] == alert.missing_data
    refs = alert.metric if isinstance(alert.metric, tuple) else (alert.metric,)
    if len(refs) == 1:
        (ref,) = refs
        assert alarm["MetricName"] == ref.name
        dims = {d["Name"]: d["Value"] for d in alarm["Dimensions"]}
        if ref.namespace is None:  # ours: exactly the dimensions Powertools emits with the metric
            assert dims == (ref.dimensions or catalog.SERVICE_DIMENSIONS)
        else:
            assert set(dims) == set(ref.dimensions)
        assert alarm["Namespace"] == (ref.namespace or "Smartgrid")
        stat_key = "ExtendedStatistic" if ref.statistic.startswith("p") else "Statistic"
        assert alarm[stat_key] == ref.statistic
        assert alarm["Period"] == alert.period_s
    else:
        stats = [m["MetricStat"] for m in alarm["Metrics"] if "MetricStat" in m]
        assert [s["Metric"]["MetricName"] for s in stats] == [r.name for r in refs]
        for st, ref in zip(stats, refs, strict=True):
            dims = {d["Name"]: d["Value"] for d in st["Metric"]["Dimensions"]}
            assert set(dims) == set(ref.dimensions)
            if ref.namespace is None:
                assert dims == ref.dimensions
        assert all(s["Period"] == alert.period_s for s in stats)
        expression = next(m["Expression"] for m in alarm["Metrics"] if "Expression" in m)
        assert expression == "FILL(m0, 0) + FILL(m1, 0)"


@pytest.mark.parametrize("alert_id", sorted(MANUAL_ROWS))
@pytest.mark.slow
def test_the_manuals_alert_table_row_by_row(template, alert_id):
    threshold, period, evaluations, level = MANUAL_ROWS[alert_id]
    alarm = next(p for p in props(template, "AWS::CloudWatch::Alarm") if p["AlarmName"] == f"smartgrid-dev-{alert_id}")
    assert alarm["Threshold"] == pytest.approx(threshold)
    assert alarm["Period"] == period
    assert alarm["EvaluationPeriods"] == evaluations
    assert alarm["AlarmActions"] == [{"Ref": alarm_topic(template)}]  # the notifier routes it to:
    assert next(a for a in ALERTS if a.id == alert_id).level.value == level


@pytest.mark.slow
def test_api_alarms_watch_the_deployed_api_and_function(template):
    alarms = {p["AlarmName"]: p for p in props(template, "AWS::CloudWatch::Alarm")}
    gateway = {d["Name"]: d["Value"] for d in alarms["smartgrid-dev-error-rate-critical"]["Dimensions"]}
    assert gateway == {"ApiName": "smartgrid-dev", "Stage": "v1"}
    assert props(template, "AWS::ApiGateway::RestApi")[0]["Name"] == "smartgrid-dev"
    api_fn = function_id(template, catalog.API)
    (dim,) = alarms["smartgrid-dev-capacity-exhausted"]["Dimensions"]
    assert dim == {"Name": "FunctionName", "Value": {"Ref": api_fn}}
    queue = jobs_dlq(template)
    (dim,) = alarms["smartgrid-dev-dead-letters"]["Dimensions"]
    assert dim["Value"] == {"Fn::GetAtt": [queue, "QueueName"]}


@pytest.mark.slow
def test_concurrency_alarms_follow_the_reserved_concurrency_setting(prod_template):
    alarms = {p["AlarmName"]: p for p in props(prod_template, "AWS::CloudWatch::Alarm")}
    assert alarms["smartgrid-prod-capacity-exhausted"]["Threshold"] == 190  # 95% of 200
    assert alarms["smartgrid-prod-concurrency-high"]["Threshold"] == 160
    api = props(prod_template, "AWS::Lambda::Function")
    assert any(p.get("ReservedConcurrentExecutions") == 200 for p in api)


@pytest.mark.slow
def test_topics_per_escalation_level_encrypted_with_subscriptions(template, prod_template):
    topics = props(template, "AWS::SNS::Topic")
    assert sorted(t["TopicName"].split("-")[2] for t in topics) == ["alarms", "l1", "l2", "l3"]
    assert all("KmsMasterKeyId" in t for t in topics)
    # in dev no email was asked for: the one subscription is the notifier's, to the alarm topic
    notifier = function_id(template, catalog.NOTIFIER)
    (sub,) = props(template, "AWS::SNS::Subscription")
    assert sub["Protocol"] == "lambda" and sub["Endpoint"] == {"Fn::GetAtt": [notifier, "Arn"]}
    assert sub["TopicArn"] == {"Ref": alarm_topic(template)}
    subs = [s for s in props(prod_template, "AWS::SNS::Subscription") if s["Protocol"] == "email"]
    by_endpoint = {s["Endpoint"]: s["TopicArn"]["Ref"] for s in subs}
    assert by_endpoint == {
        "oncall@example.com": topic_for(prod_template, "L3"),
        "ops@example.com": topic_for(prod_template, "L1"),
    }
    for policy in props(template, "AWS::SNS::TopicPolicy"):  # replaces SNS's default policy
        statements = policy["PolicyDocument"]["Statement"]
        (allow,) = [st for st in statements if st["Effect"] == "Allow"]
        assert allow["Principal"] == {"Service": "cloudwatch.amazonaws.com"} and allow["Action"] == "sns:Publish"
        assert "smartgrid-dev-*" in json.dumps(allow["Condition"]["ArnLike"]["aws:SourceArn"])
        assert any(st["Effect"] == "Deny" and "aws:SecureTransport" in json.dumps(st) for st in statements)
    assert len(props(template, "AWS::SNS::TopicPolicy")) == 4
    key = props(template, "AWS::KMS::Key")[0]
    assert key["EnableKeyRotation"] is True
    principals = [s["Principal"] for s in key["KeyPolicy"]["Statement"]]
    assert {"Service": "cloudwatch.amazonaws.com"} in principals  # alarms can publish


@pytest.mark.slow
def test_dashboard_shows_the_operators_signals(template):
    (dash,) = props(template, "AWS::CloudWatch::Dashboard")
    body = json.dumps(dash["DashboardBody"])
    for needle in (
        "Requests",
        "Error rate",
        "p50",
        "p99",
        catalog.MODEL_INFERENCE_DURATION_SECONDS,
        catalog.MODEL_ANOMALIES_DETECTED,
        catalog.MODEL_PREDICTION_ERROR_PERCENT,
        catalog.JOB_FAILED_TOTAL,
        "alarm",
    ):
        assert needle in body, needle


# ------------------------------------------------------------------ schedules and events
@pytest.mark.slow
def test_schedules_are_the_manuals_in_utc_with_retries_and_dead_letters(template):
    from infra.constructs.runtime import handler_exists

    assert handler_exists(catalog.HEALTH_PROBE) and not handler_exists(
        catalog.FunctionSpec("x", "smartgrid.nope.h", 1, 1, "")
    )
    schedules = props(template, "AWS::Scheduler::Schedule")
    expected = {
        catalog.BACKUP: "cron(0 2 * * ? *)",  # daily 02:00
        catalog.RETRAINING: "cron(0 0 1 * ? *)",  # 1st of the month, 00:00
        catalog.HEALTH_PROBE: "rate(1 minute)",
        catalog.USAGE_REPORT: "cron(0 6 1 * ? *)",
    }
    assert {s.job: s.expression for s in SCHEDULES} == expected
    queue = jobs_dlq(template)
    for spec, expression in expected.items():
        fn = function_id(template, spec)
        (schedule,) = [s for s in schedules if s["Target"]["Arn"] == {"Fn::GetAtt": [fn, "Arn"]}]
        assert schedule["ScheduleExpression"] == expression
        assert schedule["State"] == ("ENABLED" if handler_exists(spec) else "DISABLED")
        assert schedule["ScheduleExpressionTimezone"] == "Etc/UTC"
        assert schedule["Target"]["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": [queue, "Arn"]}}
        assert schedule["Target"]["RetryPolicy"]["MaximumRetryAttempts"] >= 2


@pytest.mark.slow
def test_meter_data_arrival_starts_ingestion_through_eventbridge(template):
    from infra.constructs.runtime import handler_exists

    (rule,) = props(template, "AWS::Events::Rule")
    assert rule["State"] == ("ENABLED" if handler_exists(catalog.INGESTION) else "DISABLED")
    pattern = rule["EventPattern"]
    assert pattern["source"] == ["aws.s3"] and pattern["detail-type"] == ["Object Created"]
    assert pattern["detail"]["object"] == {"key": [{"prefix": catalog.METER_DATA_PREFIX}]}
    bucket = pattern["detail"]["bucket"]["name"][0]["Ref"]
    meter = template["Resources"][bucket]["Properties"]
    assert meter["NotificationConfiguration"] == {"EventBridgeConfiguration": {"EventBridgeEnabled": True}}
    (target,) = rule["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": [function_id(template, catalog.INGESTION), "Arn"]}
    assert "DeadLetterConfig" in target and target["RetryPolicy"]["MaximumRetryAttempts"] >= 2
    # no custom resource (CDK's bucket-notifications Lambda) was needed for it
    assert not resources(template, "Custom::S3BucketNotifications")


@pytest.mark.slow
def test_async_jobs_keep_failed_events_in_the_dead_letter_queue(template):
    configs = props(template, "AWS::Lambda::EventInvokeConfig")
    assert len(configs) == len(catalog.JOBS) + 1  # and the notifier
    assert all(c["MaximumRetryAttempts"] == 2 for c in configs)
    queue = jobs_dlq(template)
    for spec in catalog.JOBS:
        fn = template["Resources"][function_id(template, spec)]["Properties"]
        assert fn["DeadLetterConfig"] == {"TargetArn": {"Fn::GetAtt": [queue, "Arn"]}}


# ------------------------------------------------------------------ functions
@pytest.mark.slow
def test_functions_share_one_asset_and_the_layers_each_with_its_handler(template):
    fns = {spec.name: template["Resources"][function_id(template, spec)]["Properties"] for spec in catalog.FUNCTIONS}
    zips = {n: p for n, p in fns.items() if "Handler" in p}
    assert set(zips) == {s.name for s in catalog.FUNCTIONS if not s.container}
    assert len({json.dumps(p["Code"]) for p in zips.values()}) == 1  # one code asset
    for spec in catalog.FUNCTIONS:
        p = fns[spec.name]
        assert p["MemorySize"] == spec.memory_mb and p["Timeout"] == spec.timeout_s
        assert p["EphemeralStorage"] == {"Size": spec.ephemeral_mb}
        assert p["TracingConfig"] == {"Mode": "Active"}
        if spec.container:
            assert p["PackageType"] == "Image" and p["ImageConfig"]["Command"] == [spec.handler]
        else:
            assert p["Handler"] == spec.handler and p["Runtime"] == "python3.12"
            assert len(p["Layers"]) == 2
    assert (ROOT / ".python-version").read_text().strip() == "3.12"
    assert fns["backup"]["EphemeralStorage"] == {"Size": 10_240}  # each table's copy is staged in /tmp
    api = fns["api"]
    assert api["Environment"]["Variables"][env_var("auth_mode")] == "api_gateway"
    assert api["ReservedConcurrentExecutions"] == 100
    assert api["SnapStart"] == {"ApplyOn": "PublishedVersions"}
    env = api["Environment"]["Variables"]
    assert env["POWERTOOLS_METRICS_NAMESPACE"] == catalog.NAMESPACE
    assert env["POWERTOOLS_SERVICE_NAME"] == catalog.SERVICE
    for shape in table_shapes():
        assert env[env_var(shape.setting)]["Ref"] in template["Resources"]
    probe = fns["health_probe"]["Environment"]["Variables"]
    assert env_var("api_url") in probe


@pytest.mark.slow
def test_log_groups_keep_the_manuals_60_days(template):
    groups = props(template, "AWS::Logs::LogGroup")
    assert len(groups) == len(catalog.FUNCTIONS) + 2  # one per function, API access and execution logs
    assert all(g["RetentionInDays"] == 60 for g in groups)


@pytest.mark.parametrize("spec", catalog.FUNCTIONS, ids=[s.name for s in catalog.FUNCTIONS])
def test_handler_strings_resolve_to_functions(spec):
    import importlib

    module, name = spec.handler.rsplit(".", 1)
    assert callable(getattr(importlib.import_module(module), name))


# ------------------------------------------------------------------ IAM
def _statements(template: dict[str, Any], role_of: str) -> list[dict[str, Any]]:
    fn = template["Resources"][role_of]["Properties"]
    role = fn["Role"]["Fn::GetAtt"][0]
    out = []
    for p in props(template, "AWS::IAM::Policy"):
        if {"Ref": role} in p["Roles"]:
            out += p["PolicyDocument"]["Statement"]
    return out


def _as_list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else [v]


@pytest.mark.slow
def test_no_wildcard_resource_where_one_can_be_named(template):
    backup = function_id(template, catalog.BACKUP)
    for fid in resources(template, "AWS::Lambda::Function"):
        for st in _statements(template, fid):
            if "*" in _as_list(st["Resource"]):
                # actions with no resource-level permissions in IAM
                allowed = {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}
                if fid == backup:
                    allowed.add("dynamodb:ListBackups")
                assert set(_as_list(st["Action"])) <= allowed, st
            for action in _as_list(st["Action"]):
                assert action != "*" and not action.endswith(":*"), st


@pytest.mark.slow
def test_each_role_has_only_what_its_code_calls(template):
    def actions(spec: catalog.FunctionSpec) -> set[str]:
        return {a for st in _statements(template, function_id(template, spec)) for a in _as_list(st["Action"])}

    api_tables = ("predictions_table", "actuals_table", "cache_table", "idempotency_table")
    tables = {
        shape.setting: logical_id_of_table(template, shape) for shape in table_shapes() if shape.setting in api_tables
    }
    api_statements = _statements(template, function_id(template, catalog.API))
    dynamo = next(st for st in api_statements if any(a.startswith("dynamodb:") for a in _as_list(st["Action"])))
    assert sorted(r["Fn::GetAtt"][0] for r in dynamo["Resource"]) == sorted(tables.values())
    assert "dynamodb:Scan" not in actions(catalog.API)  # every API access is by key
    assert {a for a in actions(catalog.API) if a.startswith("s3:")} == {"s3:GetObject", "s3:ListBucket"}
    # the probe only calls the API over HTTPS: tracing, and its failed events to the dead-letter queue
    assert actions(catalog.HEALTH_PROBE) == {"xray:PutTraceSegments", "xray:PutTelemetryRecords", "sqs:SendMessage"}
    backup = actions(catalog.BACKUP)
    assert {"dynamodb:Scan", "dynamodb:CreateBackup", "s3:PutObject", "s3:AbortMultipartUpload"} <= backup
    assert not {a for a in backup if a in ("dynamodb:PutItem", "dynamodb:BatchWriteItem", "dynamodb:DeleteItem")}
    # the backup deletes nothing but a manifest that failed to read back (retention is the lifecycle's)
    deletes = [
        st
        for st in _statements(template, function_id(template, catalog.BACKUP))
        if "s3:DeleteObject" in _as_list(st["Action"])
    ]
    (delete,) = deletes
    assert _as_list(delete["Action"]) == ["s3:DeleteObject"]
    assert json.dumps(delete["Resource"]).endswith('/backups/*/manifest.json"]]}')
    assert any(
        "s3:GetObject" in _as_list(st["Action"]) and "DataModels" in json.dumps(st["Resource"])
        for st in _statements(template, function_id(template, catalog.API))
    )  # the API reads the champion model set
    assert "sns:Publish" in actions(catalog.USAGE_REPORT) and "sns:Publish" in actions(catalog.INGESTION)
    assert not {a for a in actions(catalog.RETRAINING) if a.startswith("dynamodb:")}


def logical_id_of_table(template: dict[str, Any], shape: Any) -> str:
    for k, v in resources(template, "AWS::DynamoDB::Table").items():
        keys = {e["KeyType"]: e["AttributeName"] for e in v["Properties"]["KeySchema"]}
        if keys["HASH"] == shape.hash_key[0] and k.startswith("Data" + shape.setting.removesuffix("_table").title()):
            return k
    raise AssertionError(shape)


# ------------------------------------------------------------------ data
@pytest.mark.slow
def test_tables_come_from_the_pynamodb_definitions_with_pitr_and_ttl(template, prod_template):
    for shape in table_shapes():
        t = template["Resources"][logical_id_of_table(template, shape)]
        p = t["Properties"]
        keys = {e["KeyType"]: e["AttributeName"] for e in p["KeySchema"]}
        assert keys["HASH"] == shape.hash_key[0]
        assert keys.get("RANGE") == (shape.range_key[0] if shape.range_key else None)
        types = {a["AttributeName"]: a["AttributeType"] for a in p["AttributeDefinitions"]}
        assert types[shape.hash_key[0]] == shape.hash_key[1]
        assert p["TimeToLiveSpecification"] == {"AttributeName": shape.ttl_attribute, "Enabled": True}
        assert p["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
        assert p["BillingMode"] == "PAY_PER_REQUEST"
        assert p["SSESpecification"]["SSEEnabled"] is True
        assert t["DeletionPolicy"] == "Delete" and not p.get("DeletionProtectionEnabled")  # dev
        prod = prod_template["Resources"][logical_id_of_table(prod_template, shape)]
        assert prod["DeletionPolicy"] == "Retain" and prod["Properties"]["DeletionProtectionEnabled"] is True


@pytest.mark.slow
def test_buckets_encrypted_ssl_only_private_with_the_manuals_retention(template):
    buckets = resources(template, "AWS::S3::Bucket")
    assert len(buckets) == 4  # models, backups, meter data, access logs
    for bid, b in buckets.items():
        p = b["Properties"]
        assert b["DeletionPolicy"] == "Retain"
        assert p["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        assert p["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True,
            "BlockPublicPolicy": True,
            "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True,
        }
        policy = next(x for x in props(template, "AWS::S3::BucketPolicy") if x["Bucket"] == {"Ref": bid})
        assert any(
            s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
            for s in policy["PolicyDocument"]["Statement"]
        )
    backups = next(b["Properties"] for k, b in buckets.items() if k.startswith("DataBackups"))
    (rule,) = backups["LifecycleConfiguration"]["Rules"]
    assert rule["ExpirationInDays"] == 30 and rule["Status"] == "Enabled"  # the 30 days of docs/requirements.md#backups
    assert rule["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    models = next(b["Properties"] for k, b in buckets.items() if k.startswith("DataModels"))
    assert models["VersioningConfiguration"] == {"Status": "Enabled"}


# ------------------------------------------------------------------ API
@pytest.mark.slow
def test_every_route_but_health_needs_an_api_key(template):
    methods = props(template, "AWS::ApiGateway::Method")
    paths = {k: v["Properties"]["PathPart"] for k, v in resources(template, "AWS::ApiGateway::Resource").items()}
    seen = {}
    for m in methods:
        part = paths[m["ResourceId"]["Ref"]]
        seen[(m["HttpMethod"], part)] = m["ApiKeyRequired"]
        assert m["Integration"]["Type"] == "AWS_PROXY"
    assert seen.pop(("GET", "health")) is False
    assert seen and all(seen.values())
    assert len(methods) == len(catalog.API_ROUTES)
    (validator,) = props(template, "AWS::ApiGateway::RequestValidator")
    assert validator["ValidateRequestBody"] is True
    posts = [m for m in methods if m["HttpMethod"] == "POST"]
    assert posts and all(
        m["RequestModels"] == {"application/json": {"Ref": m["RequestModels"]["application/json"]["Ref"]}}
        for m in posts
    )


@pytest.mark.slow
def test_api_gateways_own_rejections_are_problem_details(template):
    """A missing key, throttling, a quota, a bad body: API Gateway answers before the function
    runs, and says so in the same problem-details shape as the app."""
    responses = {p["ResponseType"]: p for p in props(template, "AWS::ApiGateway::GatewayResponse")}
    for kind in ("INVALID_API_KEY", "THROTTLED", "QUOTA_EXCEEDED", "BAD_REQUEST_BODY", "DEFAULT_4XX", "DEFAULT_5XX"):
        r = responses[kind]
        assert r["ResponseParameters"]["gatewayresponse.header.Content-Type"] == f"'{catalog.PROBLEM_JSON}'"
        # the template with API Gateway's variables filled in, as it would send it
        text = r["ResponseTemplates"]["application/json"]
        text = re.sub(r"\$context\.error\.\w+String", '"what API Gateway says"', text)
        body = json.loads(text.replace("$context.requestId", "req-1"))
        assert body["type"].startswith(catalog.PROBLEM_BASE) and body["title"] and body["detail"]
        assert body["correlation_id"] == "req-1"
        if "StatusCode" in r:
            assert body["status"] == int(r["StatusCode"])
    assert responses["INVALID_API_KEY"]["StatusCode"] == "403"
    assert "x-api-key" in responses["INVALID_API_KEY"]["ResponseTemplates"]["application/json"]
    assert responses["THROTTLED"]["StatusCode"] == "429"
    assert responses["THROTTLED"]["ResponseParameters"]["gatewayresponse.header.Retry-After"] == "'1'"


def test_api_routes_in_the_catalog_are_the_apps_routes():
    from smartgrid.api.app import create_app

    app = create_app()
    served = {
        (method, route.path) for route in app.routes for method in getattr(route, "methods", ()) if method != "HEAD"
    }
    assert served == {(r.method, r.path) for r in catalog.API_ROUTES}


@pytest.mark.slow
def test_stage_logs_traces_and_throttles_and_the_usage_plan_meters_each_key(template):
    (stage,) = props(template, "AWS::ApiGateway::Stage")
    assert stage["TracingEnabled"] is True
    fields = json.loads(stage["AccessLogSetting"]["Format"])
    assert fields["apiKeyId"] == "$context.identity.apiKeyId" and "status" in fields
    (settings,) = stage["MethodSettings"]
    assert settings["ThrottlingBurstLimit"] == 1000  # limit_concurrency in docs/requirements.md#performance
    assert settings["DataTraceEnabled"] is False
    (plan,) = props(template, "AWS::ApiGateway::UsagePlan")
    assert plan["Quota"] == {"Limit": 1_000_000, "Period": "MONTH"}
    assert plan["Throttle"] == {"BurstLimit": 100, "RateLimit": 50}
    (key,) = props(template, "AWS::ApiGateway::ApiKey")
    assert key["Name"] == "smartgrid-dev-operator" and key["Enabled"] is True


# ------------------------------------------------------------------ settings
def test_settings_from_context_are_validated():
    from pydantic import ValidationError

    from infra.settings import DeploySettings

    class Node:
        def __init__(self, ctx: dict[str, Any]) -> None:
            self.ctx = ctx

        def try_get_context(self, key: str) -> Any:
            return self.ctx.get(key)

    s = DeploySettings.from_context(
        Node({"envName": "prod", "apiMemoryMb": "3008", "alertEmails": '{"L2": ["a@b.io"]}'})
    )
    assert s.api_memory_mb == 3008 and s.contacts(Level.L2) == ["a@b.io"] and s.contacts(Level.L1) == []
    with pytest.raises(ValidationError, match="not an email address"):
        DeploySettings.from_context(Node({"alertEmails": {"L1": ["nobody"]}}))
    with pytest.raises(ValidationError, match="architecture"):
        DeploySettings.from_context(Node({"architecture": "sparc"}))
    with pytest.raises(ValidationError, match="apiClient"):
        DeploySettings.from_context(Node({"apiClients": ["Bad Name"]}))
    with pytest.raises(FileNotFoundError, match=r"layers/build\.py"):
        DeploySettings(layers_dir=Path("/nonexistent")).layer_zip("runtime")


def test_escalation_levels_are_the_manuals():
    assert [ESCALATION[level].contact for level in Level] == [
        "ops@smartgrid.ai",
        "devops-lead@smartgrid.ai",
        "engineering-lead@smartgrid.ai",
    ]


def test_readme_alarm_table_is_the_catalogs():
    readme = (ROOT / "README.md").read_text()
    copy = readme.split("<!-- alerts:start -->\n", 1)[1].split("<!-- alerts:end -->", 1)[0]
    assert copy == catalog.alert_table_markdown()


@pytest.mark.slow
def test_arm64_deploys_arm64_functions_and_layers(built_layers, tmp_path):
    """`-c architecture=arm64` takes layers/build.py's aarch64 zips. Only the names are read at
    synth, so the x86_64 zips stand in for them here (building aarch64 layers takes ~40 s more)."""
    stand_in = tmp_path / "layers"
    stand_in.mkdir()
    for zipped in built_layers[0].glob("x86_64-*.zip"):
        (stand_in / zipped.name.replace("x86_64-", "aarch64-")).symlink_to(zipped)
    template = _synth(tmp_path / "out", stand_in, architecture="arm64")
    fns = [p for p in props(template, "AWS::Lambda::Function")]
    assert fns and all(p["Architectures"] == ["arm64"] for p in fns)
    assert all(p["CompatibleArchitectures"] == ["arm64"] for p in props(template, "AWS::Lambda::LayerVersion"))


@pytest.mark.slow
def test_outputs_name_what_ops_check_reads(template):
    outputs = template["Outputs"]
    for setting in catalog.OPS_SETTINGS:
        out = outputs[catalog.stack_output_key(setting)]
        assert out["Description"] == env_var(setting)
        assert out["Value"]["Ref"] in template["Resources"]
    assert outputs[catalog.ALARM_PREFIX_OUTPUT]["Value"] == "smartgrid-dev"
    assert "execute-api" in json.dumps(outputs[catalog.API_URL_OUTPUT]["Value"])


@pytest.mark.slow
def test_the_notifier_delivers_to_the_levels_and_fails_into_its_own_queue(template):
    fn = template["Resources"][function_id(template, catalog.NOTIFIER)]["Properties"]
    queues = resources(template, "AWS::SQS::Queue")
    (own,) = [k for k in queues if k.startswith("Notifications")]
    assert fn["DeadLetterConfig"] == {"TargetArn": {"Fn::GetAtt": [own, "Arn"]}}
    levels = json.dumps(fn["Environment"]["Variables"][env_var("alert_topics")])
    assert all(topic_for(template, level) in levels for level in ("L1", "L2", "L3"))
    statements = _statements(template, function_id(template, catalog.NOTIFIER))
    published = [st for st in statements if "sns:Publish" in _as_list(st["Action"])]
    refs = sorted(r["Ref"] for st in published for r in _as_list(st["Resource"]))
    assert refs == sorted(topic_for(template, lv) for lv in ("L1", "L2", "L3"))
    incidents = next(k for k in resources(template, "AWS::DynamoDB::Table") if k.startswith("DataIncidents"))
    assert any(
        "dynamodb:UpdateItem" in _as_list(st["Action"])
        and _as_list(st["Resource"]) == [{"Fn::GetAtt": [incidents, "Arn"]}]
        for st in statements
    )
    # the alarm on the notifier's own failures bypasses it
    alarms = {p["AlarmName"]: p for p in props(template, "AWS::CloudWatch::Alarm")}
    dlq = alarms["smartgrid-dev-notification-dead-letters"]
    assert dlq["AlarmActions"] == [{"Ref": topic_for(template, "L2")}]
    assert dlq["Dimensions"] == [{"Name": "QueueName", "Value": {"Fn::GetAtt": [own, "QueueName"]}}]
