"""The jobs: each a function with its own least-privilege role, started by an EventBridge
Scheduler schedule (the catalog's expressions, UTC) or by meter data arriving in S3. Failed
events are retried and then kept in the dead-letter queue; none is dropped."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as events_targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_scheduler_targets as scheduler_targets
from aws_cdk import aws_sns as sns
from constructs import Construct

from smartgrid.catalog import (
    BACKUP,
    HEALTH_PROBE,
    INGESTION,
    METER_DATA_PREFIX,
    RETRAINING,
    SCHEDULES,
    USAGE_REPORT,
    Level,
)
from smartgrid.config import env_var

from .data import Data
from .permissions import TABLE_BACKUP, TABLE_READ, TABLE_WRITE, bucket_actions, table_actions
from .runtime import Runtime, camel, handler_exists

# Jobs scan and write in bulk: DynamoDB timeouts longer than the API's (tuned to fail fast).
JOB_ENV = {env_var("dynamodb_read_timeout_s"): "10", env_var("dynamodb_connect_timeout_s"): "3"}


class Jobs(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        runtime: Runtime,
        data: Data,
        topics: dict[Level, sns.ITopic],
        api_url: str,
    ) -> None:
        super().__init__(scope, id)
        topic_env = {
            env_var("alert_topics"): cdk.Stack.of(self).to_json_string({str(k): t.topic_arn for k, t in topics.items()})
        }
        tables = data.tables

        backup = runtime.function(BACKUP, asynchronous=True, environment=JOB_ENV)
        table_actions(backup, list(tables.values()), TABLE_BACKUP)
        # No delete of backups: retention is the bucket's lifecycle, not code. The one delete
        # is of a manifest that did not read back, so that no manifest claims a bad backup.
        bucket_actions(backup, data.backups, ["s3:PutObject", "s3:GetObject", "s3:AbortMultipartUpload"])
        bucket_actions(backup, data.backups, ["s3:DeleteObject"], objects="backups/*/manifest.json")
        bucket_actions(backup, data.models, ["s3:GetObject"])
        # Its own on-demand DynamoDB backups older than the retention are pruned after a
        # successful run (ListBackups has no resource-level permissions).
        backup.add_to_role_policy(iam.PolicyStatement(actions=["dynamodb:ListBackups"], resources=["*"]))
        backup.add_to_role_policy(
            iam.PolicyStatement(
                actions=["dynamodb:DeleteBackup"], resources=[f"{t.table_arn}/backup/*" for t in tables.values()]
            )
        )

        retraining = runtime.function(RETRAINING, asynchronous=True)
        bucket_actions(retraining, data.meter_data, ["s3:GetObject"])
        bucket_actions(retraining, data.models, ["s3:GetObject", "s3:PutObject"])

        probe = runtime.function(HEALTH_PROBE, asynchronous=True, environment={env_var("api_url"): api_url})

        usage = runtime.function(USAGE_REPORT, asynchronous=True, environment={**JOB_ENV, **topic_env})
        table_actions(usage, [tables["predictions_table"]], ["dynamodb:Scan", "dynamodb:DescribeTable"])
        topics[Level.L1].grant_publish(usage)

        ingestion = runtime.function(INGESTION, asynchronous=True, environment={**JOB_ENV, **topic_env})
        bucket_actions(ingestion, data.models, ["s3:GetObject"])  # the champion models, as the API
        # Accepted readings are stored; a rejected file is moved aside (copied, then deleted).
        bucket_actions(ingestion, data.meter_data, ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"])
        table_actions(ingestion, [tables["predictions_table"]], TABLE_READ)
        table_actions(ingestion, [tables["actuals_table"], tables["idempotency_table"]], TABLE_READ + TABLE_WRITE)
        topics[Level.L1].grant_publish(ingestion)

        self.functions: dict[str, lambda_.IFunction] = {
            BACKUP.name: backup,
            RETRAINING.name: retraining,
            HEALTH_PROBE.name: probe,
            USAGE_REPORT.name: usage,
            INGESTION.name: ingestion,
        }

        self.schedules: dict[str, scheduler.Schedule] = {}
        for entry in SCHEDULES:
            self.schedules[entry.job.name] = scheduler.Schedule(
                self,
                f"{camel(entry.job.name)}Schedule",
                description=f"{entry.job.description}: {entry.why}",
                enabled=handler_exists(entry.job),
                schedule=scheduler.ScheduleExpression.expression(entry.expression, cdk.TimeZone.ETC_UTC),
                target=scheduler_targets.LambdaInvoke(
                    self.functions[entry.job.name],
                    dead_letter_queue=runtime.dead_letters,
                    retry_attempts=3,
                    max_event_age=cdk.Duration.hours(1),
                ),
            )

        # Meter data: S3 -> EventBridge -> ingestion, for objects created under the prefix.
        self.ingestion_rule = events.Rule(
            self,
            "MeterDataArrived",
            description="New meter data in the meter-data bucket starts ingestion",
            enabled=handler_exists(INGESTION),
            event_pattern=events.EventPattern(
                source=["aws.s3"],
                detail_type=["Object Created"],
                detail={
                    "bucket": {"name": [data.meter_data.bucket_name]},
                    "object": {"key": [{"prefix": METER_DATA_PREFIX}]},
                },
            ),
            targets=[
                events_targets.LambdaFunction(
                    ingestion,
                    dead_letter_queue=runtime.dead_letters,
                    retry_attempts=3,
                    max_event_age=cdk.Duration.hours(6),
                )
            ],
        )
