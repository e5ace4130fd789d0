"""What every function shares: the two layers (built by layers/build.py, no Docker), one code
asset (the ``smartgrid`` package), the environment from the catalog and the data stores, log
groups with the required 60-day retention (docs/requirements.md#logs), X-Ray, and a factory that builds each function
from its ``FunctionSpec``."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from smartgrid.catalog import LOG_RETENTION_DAYS, NAMESPACE, SERVICE, FunctionSpec
from smartgrid.config import env_var

from ..settings import ROOT, DeploySettings
from .data import Data

RUNTIME = lambda_.Runtime.PYTHON_3_12  # .python-version: the tests' Python, and the layers' .pyc
# What the function asset leaves out: bytecode caches (the package is one import tree, so the
# training modules ship too; only the retraining job imports them).
CODE_EXCLUDE = ["**/__pycache__", "**/*.pyc", "**/.DS_Store"]
# The retraining image's build context is the repository root: only what the image copies.
IMAGE_CONTEXT = [
    "*",
    "!pyproject.toml",
    "!uv.lock",
    "!README.md",
    "!functions",
    "!docs/runbook.md",
    "!infra/retraining.Dockerfile",
]


# CloudWatch Logs accepts only some retention periods; the required 60 days is one of them.
_RETENTION = {30: logs.RetentionDays.ONE_MONTH, 60: logs.RetentionDays.TWO_MONTHS, 90: logs.RetentionDays.THREE_MONTHS}
LOG_RETENTION = _RETENTION[LOG_RETENTION_DAYS]


class Runtime(Construct):
    def __init__(self, scope: Construct, id: str, *, settings: DeploySettings, data: Data) -> None:
        super().__init__(scope, id)
        self.settings = settings
        arch = lambda_.Architecture.ARM_64 if settings.architecture == "arm64" else lambda_.Architecture.X86_64
        self.architecture = arch
        self.layers = [
            lambda_.LayerVersion(
                self,
                f"{name.title()}Layer",
                code=lambda_.Code.from_asset(str(settings.layer_zip(name))),
                compatible_runtimes=[RUNTIME],
                compatible_architectures=[arch],
                description=f"smartgrid {name} dependencies (layers/spec.toml)",
            )
            for name in ("onnxruntime", "runtime")
        ]
        # follow_symlinks: the package's runbook.md is docs/runbook.md (the notifier quotes it)
        self.code = lambda_.Code.from_asset(
            str(ROOT / "functions"), exclude=CODE_EXCLUDE, follow_symlinks=cdk.SymlinkFollowMode.ALWAYS
        )
        # One dead-letter queue for every job's events that failed after retries: schedules
        # that could not invoke, and async invocations (schedules, S3 events) that kept failing.
        self.dead_letters = sqs.Queue(
            self,
            "JobsDeadLetters",
            retention_period=cdk.Duration.days(14),
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
        )
        self.environment: dict[str, str] = {
            "POWERTOOLS_SERVICE_NAME": SERVICE,
            "POWERTOOLS_METRICS_NAMESPACE": NAMESPACE,
            "POWERTOOLS_LOG_LEVEL": "INFO",
            "POWERTOOLS_TRACE_DISABLED": "false" if settings.xray else "true",
            env_var("models_bucket"): data.models.bucket_name,
            env_var("backups_bucket"): data.backups.bucket_name,
            env_var("meter_data_bucket"): data.meter_data.bucket_name,
            **{env_var(setting): table.table_name for setting, table in data.tables.items()},
        }
        self.functions: dict[str, lambda_.Function] = {}

    def function(
        self,
        spec: FunctionSpec,
        *,
        memory_mb: int | None = None,
        environment: Mapping[str, str] | None = None,
        reserved_concurrency: int | None = None,
        snap_start: bool = False,
        asynchronous: bool = False,
        dead_letter_queue: sqs.IQueue | None = None,
    ) -> lambda_.Function:
        """The function for ``spec``. ``asynchronous``: started by events (schedules, S3), so
        it retries twice and then leaves the event in the dead-letter queue."""
        log_group = logs.LogGroup(
            self,
            f"{camel(spec.name)}Logs",
            retention=LOG_RETENTION,
            removal_policy=cdk.RemovalPolicy.RETAIN if self.settings.production else cdk.RemovalPolicy.DESTROY,
        )
        common: dict = dict(
            architecture=self.architecture,
            memory_size=memory_mb or spec.memory_mb,
            timeout=cdk.Duration.seconds(spec.timeout_s),
            ephemeral_storage_size=cdk.Size.mebibytes(spec.ephemeral_mb),
            environment={**self.environment, **(environment or {})},
            log_group=log_group,
            logging_format=lambda_.LoggingFormat.JSON,
            tracing=lambda_.Tracing.ACTIVE if self.settings.xray else lambda_.Tracing.DISABLED,
            reserved_concurrent_executions=reserved_concurrency,
            description=spec.description,
        )
        if asynchronous:
            common.update(
                dead_letter_queue=dead_letter_queue or self.dead_letters,
                retry_attempts=2,
                max_event_age=cdk.Duration.hours(6),
            )
        fn: lambda_.Function
        if spec.container:
            fn = lambda_.DockerImageFunction(
                self,
                camel(spec.name),
                code=lambda_.DockerImageCode.from_image_asset(
                    str(ROOT),
                    file="infra/retraining.Dockerfile",
                    cmd=[spec.handler],
                    exclude=IMAGE_CONTEXT,
                    ignore_mode=cdk.IgnoreMode.DOCKER,
                    platform=_platform(self.settings.architecture),
                ),
                **common,
            )
        else:
            fn = lambda_.Function(
                self,
                camel(spec.name),
                runtime=RUNTIME,
                code=self.code,
                handler=spec.handler,
                layers=self.layers,
                snap_start=lambda_.SnapStartConf.ON_PUBLISHED_VERSIONS if snap_start else None,
                **common,
            )
        self.functions[spec.name] = fn
        return fn


def handler_exists(spec: FunctionSpec) -> bool:
    """Whether the handler's module is in the package. A job whose code has not landed yet is
    deployed but not started (its schedule or rule disabled) and not alarmed on, so that a
    deploy never pages anyone about code that does not exist."""
    module = spec.handler.rsplit(".", 1)[0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def camel(name: str) -> str:
    return "".join(part.title() for part in name.split("_"))


def _platform(architecture: str) -> Any:
    from aws_cdk import aws_ecr_assets as ecr_assets

    return ecr_assets.Platform.LINUX_ARM64 if architecture == "arm64" else ecr_assets.Platform.LINUX_AMD64
