"""What the CDK app creates in AWS, created on an emulator (the local run, tests): the tables
from the pynamodb definitions with point-in-time recovery on, and the three buckets, the
models and meter-data buckets versioned. Idempotent."""

from __future__ import annotations

from smartgrid.config import Settings
from smartgrid.store.aws import client
from smartgrid.store.tables import TABLES, create_tables

BUCKETS = ("models_bucket", "backups_bucket", "meter_data_bucket")


def provision(settings: Settings) -> None:
    create_tables(settings)
    ddb = client("dynamodb", settings)
    for setting in TABLES:
        ddb.update_continuous_backups(
            TableName=getattr(settings, setting),
            PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True},
        )
    s3 = client("s3", settings)
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    for setting in BUCKETS:
        name = getattr(settings, setting)
        if name not in existing:
            if settings.aws_region == "us-east-1":
                s3.create_bucket(Bucket=name)
            else:
                s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": settings.aws_region})
        if setting in ("models_bucket", "meter_data_bucket"):  # versioned in the CDK app too
            s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
