"""Read-only status calls for `smartgrid ops check`: a stack's outputs, tables, buckets and
alarms. Each returns plain data or raises; the domain (``smartgrid.domain.ops``) decides
what is wrong."""

from __future__ import annotations

from typing import Any

from smartgrid.config import Settings
from smartgrid.store.aws import client


def stack_outputs(stack: str, settings: Settings) -> dict[str, str]:
    """OutputKey -> OutputValue of a CloudFormation stack."""
    (described,) = client("cloudformation", settings).describe_stacks(StackName=stack)["Stacks"]
    return {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}


def table_status(name: str, settings: Settings) -> dict[str, Any]:
    ddb = client("dynamodb", settings)
    table = ddb.describe_table(TableName=name)["Table"]
    backups = ddb.describe_continuous_backups(TableName=name)["ContinuousBackupsDescription"]
    pitr = backups.get("PointInTimeRecoveryDescription", {}).get("PointInTimeRecoveryStatus")
    return {"status": table["TableStatus"], "items": table.get("ItemCount", 0), "pitr": pitr}


def bucket_status(name: str, settings: Settings) -> dict[str, Any]:
    s3 = client("s3", settings)
    s3.head_bucket(Bucket=name)
    versioning = s3.get_bucket_versioning(Bucket=name).get("Status", "Disabled")
    return {"versioning": versioning}


def alarms_in_alarm(prefix: str, settings: Settings) -> list[dict[str, Any]]:
    pages = client("cloudwatch", settings).get_paginator("describe_alarms")
    found = []
    for page in pages.paginate(AlarmNamePrefix=prefix, StateValue="ALARM"):
        for alarm in page.get("MetricAlarms", []) + page.get("CompositeAlarms", []):
            found.append(
                {
                    "name": alarm["AlarmName"],
                    "since": alarm.get("StateUpdatedTimestamp"),
                    "reason": alarm.get("StateReason", ""),
                }
            )
    return found
