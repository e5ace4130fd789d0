"""cdk-nag (AwsSolutions pack, v3 API) and the findings this design accepts, each with its
reason. Acknowledgements name the exact finding (rule and, for IAM, the action or resource)
on the narrowest construct that raises it; any finding not listed fails ``cdk synth``."""

from __future__ import annotations

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks
from constructs import IConstruct

from .stack import SmartgridStack

XRAY = "X-Ray's PutTraceSegments/PutTelemetryRecords support no resource-level permissions: '*' is the only resource"
XRAY_AND_LIST_BACKUPS = (
    XRAY + "; likewise dynamodb:ListBackups, which the backup calls to prune its own on-demand backups"
)
BASIC_ROLE = (
    "AWSLambdaBasicExecutionRole grants only logs:CreateLogGroup/CreateLogStream/PutLogEvents, which every "
    "function needs for its own log group"
)
PYTHON = (
    "Python 3.12 is deliberate: it is the Python the tests run on (.python-version) and the one the layers' "
    ".pyc files are compiled for; moving up is a change of .python-version, layers and tests together"
)
OBJECTS = (
    "object keys are created at run time (timestamped backup prefixes, model versions, arriving meter files), "
    "so object actions name the bucket's objects; the actions are listed one by one"
)


def _ack(scope: IConstruct, finding: str, reason: str) -> None:
    cdk.Validations.of(scope).acknowledge(cdk.Acknowledgment(id=f"AwsSolutions::{finding}", reason=reason))


def _ref(stack: cdk.Stack, construct: IConstruct, suffix: str = "") -> str:
    """How cdk-nag prints a reference to ``construct``'s Arn: ``<LogicalId.Arn>``."""
    cfn = construct.node.default_child
    assert isinstance(cfn, cdk.CfnElement)
    return f"<{stack.resolve(stack.get_logical_id(cfn))}.Arn>{suffix}"


def add_nag(app: cdk.App, stack: SmartgridStack) -> None:
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    rt = stack.runtime
    for name, fn in rt.functions.items():
        _ack(fn, "AwsSolutions-IAM5[Resource::*]", XRAY_AND_LIST_BACKUPS if name == "backup" else XRAY)
        _ack(
            fn,
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]",
            BASIC_ROLE,
        )
        if name != "retraining":  # the container image brings its own runtime
            _ack(fn, "AwsSolutions-L1", PYTHON)
    for bucket in (stack.data.backups, stack.data.models, stack.data.meter_data):
        for fn in rt.functions.values():
            _ack(fn, f"AwsSolutions-IAM5[Resource::{_ref(stack, bucket, '/*')}]", OBJECTS)
    for table in stack.data.tables.values():
        _ack(
            rt.functions["backup"],
            f"AwsSolutions-IAM5[Resource::{_ref(stack, table, '/backup/*')}]",
            "DynamoDB names each on-demand backup when it is made; the backup deletes only its own old ones",
        )
    _ack(
        rt.functions["backup"],
        f"AwsSolutions-IAM5[Resource::{_ref(stack, stack.data.backups, '/backups/*/manifest.json')}]",
        "the backup may delete only a manifest that failed to read back (any backup id, made at run time)",
    )
    for fn in rt.functions.values():
        _ack(
            fn,
            "AwsSolutions-IAM5[Action::kms:GenerateDataKey*]",
            "publishing to the KMS-encrypted alert topics needs kms:GenerateDataKey*, on the topics' key only",
        )
    for name in stack.jobs.schedules:
        fn = rt.functions[name]
        _ack(
            stack,
            f"AwsSolutions-IAM5[Resource::{_ref(stack, fn, ':*')}]",
            "EventBridge Scheduler's role may invoke this one function and its versions (CDK's LambdaInvoke grant)",
        )
    api = stack.api.rest_api
    _ack(
        api,
        "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs]",
        "API Gateway's account-level logging role needs this AWS-managed policy; it only writes API Gateway logs",
    )
    for finding in ("AwsSolutions-APIG4", "AwsSolutions-COG4"):
        _ack(
            api,
            finding,
            "clients authenticate with API keys (docs/requirements.md#health: an API key for every endpoint but "
            "/health); the usage plan throttles and meters each key; /health is public by design for probes",
        )
    _ack(
        api,
        "AwsSolutions-APIG3",
        "no WAF yet: the API serves known clients with keys, stage and per-key throttling bound the load; "
        "add a web ACL before opening the API to the internet",
    )
