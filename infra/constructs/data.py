"""DynamoDB tables (from the pynamodb models' definitions: one source) and the S3 buckets."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_s3 as s3
from constructs import Construct

from smartgrid.catalog import BACKUP_RETENTION_DAYS
from smartgrid.store.tables import table_shapes

from ..settings import DeploySettings

_TYPES = {"S": dynamodb.AttributeType.STRING, "N": dynamodb.AttributeType.NUMBER, "B": dynamodb.AttributeType.BINARY}


def _attribute(key: tuple[str, str]) -> dynamodb.Attribute:
    return dynamodb.Attribute(name=key[0], type=_TYPES[key[1]])


class Data(Construct):
    """``tables``: Settings field (e.g. ``predictions_table``) -> table. Buckets: models
    (versioned: a promoted model never overwrites the last one), backups (expire after 30
    days, docs/requirements.md#backups), meter data (ingestion's input, EventBridge notifications on), and the
    access-log bucket the others log to. All encrypted, SSL-only, public access blocked."""

    def __init__(self, scope: Construct, id: str, *, settings: DeploySettings) -> None:
        super().__init__(scope, id)
        keep = cdk.RemovalPolicy.RETAIN if settings.production else cdk.RemovalPolicy.DESTROY
        self.tables: dict[str, dynamodb.Table] = {}
        for shape in table_shapes():
            table = dynamodb.Table(
                self,
                shape.setting.removesuffix("_table").title(),
                partition_key=_attribute(shape.hash_key),
                sort_key=_attribute(shape.range_key) if shape.range_key else None,
                time_to_live_attribute=shape.ttl_attribute,
                billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
                encryption=dynamodb.TableEncryption.AWS_MANAGED,
                point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                    point_in_time_recovery_enabled=True
                ),
                deletion_protection=settings.production,
                removal_policy=keep,
            )
            self.tables[shape.setting] = table

        self.access_logs = s3.Bucket(
            self,
            "AccessLogs",
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            lifecycle_rules=[s3.LifecycleRule(id="expire-access-logs", expiration=cdk.Duration.days(90))],
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )

        def bucket(name: str, **kwargs: object) -> s3.Bucket:
            return s3.Bucket(
                self,
                name,
                encryption=s3.BucketEncryption.S3_MANAGED,
                enforce_ssl=True,
                block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
                server_access_logs_bucket=self.access_logs,
                server_access_logs_prefix=f"{name.lower()}/",
                removal_policy=cdk.RemovalPolicy.RETAIN,
                **kwargs,  # type: ignore[arg-type]
            )

        self.models = bucket(
            "Models",
            versioned=True,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="expire-replaced-model-versions", noncurrent_version_expiration=cdk.Duration.days(365)
                )
            ],
        )
        self.backups = bucket(
            "Backups",
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="backup-retention",
                    expiration=cdk.Duration.days(BACKUP_RETENTION_DAYS),
                    abort_incomplete_multipart_upload_after=cdk.Duration.days(1),
                )
            ],
        )
        self.meter_data = bucket("MeterData", versioned=True)
        # S3 -> EventBridge for ingestion, set on the bucket itself: CDK's event_bridge_enabled
        # would add a custom-resource Lambda to do the same.
        cfn_meter = self.meter_data.node.default_child
        assert isinstance(cfn_meter, s3.CfnBucket)
        cfn_meter.notification_configuration = s3.CfnBucket.NotificationConfigurationProperty(
            event_bridge_configuration=s3.CfnBucket.EventBridgeConfigurationProperty(event_bridge_enabled=True)
        )
