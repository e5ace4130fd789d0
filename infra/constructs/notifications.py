"""The notifier: alarm state changes (the alarm topic) become incident notices in the
format of docs/requirements.md#incidents for the people of each alarm's escalation level, with an optional
chat webhook whose URL lives in SSM. Failed deliveries are retried, then kept in the
notifier's own dead-letter queue, whose alarm goes straight to L2 (not through the notifier)."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from smartgrid.catalog import NOTIFIER, Level
from smartgrid.config import env_var

from ..settings import DeploySettings
from .data import Data
from .permissions import TABLE_READ, TABLE_WRITE, table_actions
from .runtime import Runtime


class Notifications(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        settings: DeploySettings,
        runtime: Runtime,
        data: Data,
        alarm_topic: sns.ITopic,
        topics: dict[Level, sns.ITopic],
    ) -> None:
        super().__init__(scope, id)
        self.dead_letters = sqs.Queue(
            self,
            "DeadLetters",
            retention_period=cdk.Duration.days(14),
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
        )
        environment = {
            env_var("alert_topics"): cdk.Stack.of(self).to_json_string(
                {str(k): t.topic_arn for k, t in topics.items()}
            ),
            env_var("runbook_url"): settings.runbook_url,
        }
        if settings.chat_webhook_parameter:
            environment[env_var("chat_webhook_parameter")] = settings.chat_webhook_parameter
        self.function = runtime.function(
            NOTIFIER, asynchronous=True, dead_letter_queue=self.dead_letters, environment=environment
        )
        table_actions(self.function, [data.tables["incidents_table"]], TABLE_READ + TABLE_WRITE + ["dynamodb:Scan"])
        for topic in topics.values():
            topic.grant_publish(self.function)
        if settings.chat_webhook_parameter:
            name = settings.chat_webhook_parameter.lstrip("/")
            self.function.add_to_role_policy(
                iam.PolicyStatement(
                    actions=["ssm:GetParameter"],
                    resources=[f"arn:{cdk.Aws.PARTITION}:ssm:{cdk.Aws.REGION}:{cdk.Aws.ACCOUNT_ID}:parameter/{name}"],
                )
            )
        alarm_topic.add_subscription(subscriptions.LambdaSubscription(self.function))
