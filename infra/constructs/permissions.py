"""Least-privilege grants by name: exactly the actions each function's code calls, on the
resources it calls them on."""

from __future__ import annotations

from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_s3 as s3

# DynamoDB actions by need: exactly what each function's code calls.
TABLE_READ = ["dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:Query", "dynamodb:DescribeTable"]
TABLE_WRITE = ["dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:BatchWriteItem"]
TABLE_BACKUP = [
    "dynamodb:DescribeTable",
    "dynamodb:Scan",  # the portable copy of every item
    "dynamodb:CreateBackup",  # and an on-demand backup beside it
]  # no writes: restores are run by an operator (`smartgrid restore`), with the operator's rights


def table_actions(fn: lambda_.IFunction, tables: list[dynamodb.ITable], actions: list[str]) -> None:
    fn.add_to_role_policy(iam.PolicyStatement(actions=sorted(set(actions)), resources=[t.table_arn for t in tables]))


def bucket_actions(fn: lambda_.IFunction, bucket: s3.IBucket, object_actions: list[str], objects: str = "*") -> None:
    """Object actions on the bucket's objects under ``objects`` (their keys are made at run
    time: timestamped backups, model versions, arriving files), and listing of that bucket."""
    fn.add_to_role_policy(iam.PolicyStatement(actions=object_actions, resources=[bucket.arn_for_objects(objects)]))
    fn.add_to_role_policy(iam.PolicyStatement(actions=["s3:ListBucket"], resources=[bucket.bucket_arn]))
