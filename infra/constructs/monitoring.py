"""Monitoring: an SNS topic per escalation level, one CloudWatch alarm per row of the
catalog's alert table (docs/requirements.md#alerts, plus what serverless needs), and a dashboard."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from smartgrid.catalog import (
    ALERTS,
    API_REQUEST_DURATION_SECONDS,
    API_REQUESTS_ERRORS_TOTAL,
    API_REQUESTS_TOTAL,
    CONCURRENCY_FRACTION_ALERTS,
    ESCALATION,
    FALLBACK_FORECASTS_TOTAL,
    JOB_DIMENSION,
    JOB_FAILED_TOTAL,
    JOB_SUCCEEDED_TOTAL,
    JOBS,
    MODEL_ANOMALIES_DETECTED,
    MODEL_INFERENCE_DURATION_SECONDS,
    MODEL_PREDICTION_ERROR_ABSOLUTE,
    MODEL_PREDICTION_ERROR_PERCENT,
    NAMESPACE,
    PREDICTIONS_TOTAL,
    SERVICE_DIMENSIONS,
    Alert,
    Level,
    MetricRef,
)

from ..settings import DeploySettings
from .runtime import handler_exists

COMPARISONS = {
    ">": cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
    ">=": cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
    "<": cw.ComparisonOperator.LESS_THAN_THRESHOLD,
    "<=": cw.ComparisonOperator.LESS_THAN_OR_EQUAL_TO_THRESHOLD,
}
MISSING = {
    "breaching": cw.TreatMissingData.BREACHING,
    "notBreaching": cw.TreatMissingData.NOT_BREACHING,
    "ignore": cw.TreatMissingData.IGNORE,
    "missing": cw.TreatMissingData.MISSING,
}


class Topics(Construct):
    """One topic per escalation level, encrypted with a key CloudWatch may use, SSL-only,
    with the deploy-time email subscriptions (``alertEmails``)."""

    def __init__(self, scope: Construct, id: str, *, settings: DeploySettings) -> None:
        super().__init__(scope, id)
        self.key = kms.Key(
            self,
            "TopicsKey",
            description="smartgrid alert topics",
            enable_key_rotation=True,
            removal_policy=cdk.RemovalPolicy.RETAIN if settings.production else cdk.RemovalPolicy.DESTROY,
        )
        # CloudWatch alarms publish to encrypted topics only with a customer managed key they may use.
        self.key.add_to_resource_policy(
            iam.PolicyStatement(
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                resources=["*"],  # in a key policy, "*" is this key
                conditions={"StringEquals": {"aws:SourceAccount": cdk.Aws.ACCOUNT_ID}},
            )
        )
        self.topics: dict[Level, sns.Topic] = {}
        for level, esc in ESCALATION.items():
            topic = self._topic(
                settings,
                level.value,
                name=f"{settings.prefix}-{level.value.lower()}-{esc.who.split()[0].lower()}",
                display=f"smartgrid {level.value} {esc.name}: {esc.who}",
            )
            for address in settings.contacts(level):
                topic.add_subscription(subscriptions.EmailSubscription(address))
            self.topics[level] = topic
            cdk.CfnOutput(self, f"Topic{level.value}", value=topic.topic_arn, description=f"{esc.who} ({level})")
        # Where the alarms publish: the notifier turns each state change into an incident
        # notice for the people of the alarm's level (raw alarm JSON reaches no person).
        self.alarm_topic = self._topic(
            settings, "AlarmStateChanges", name=f"{settings.prefix}-alarms", display="smartgrid alarm state changes"
        )

    def _topic(self, settings: DeploySettings, id: str, *, name: str, display: str) -> sns.Topic:
        topic = sns.Topic(self, id, topic_name=name, display_name=display, master_key=self.key, enforce_ssl=True)
        # A topic policy replaces SNS's default one: CloudWatch must be allowed to publish,
        # and only this account's alarms of this deployment.
        topic.add_to_resource_policy(
            iam.PolicyStatement(
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["sns:Publish"],
                resources=[topic.topic_arn],
                conditions={
                    "ArnLike": {
                        "aws:SourceArn": f"arn:{cdk.Aws.PARTITION}:cloudwatch:{cdk.Aws.REGION}:"
                        f"{cdk.Aws.ACCOUNT_ID}:alarm:{settings.prefix}-*"
                    }
                },
            )
        )
        return topic


class Alarms(Construct):
    """``placeholders`` fills the catalog's ``<name>`` dimension values with deployed names."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        settings: DeploySettings,
        topics: dict[Level, sns.ITopic],
        alarm_topic: sns.ITopic,
        placeholders: dict[str, str],
    ) -> None:
        super().__init__(scope, id)
        self.placeholders = placeholders
        self.alarms: dict[str, cw.Alarm] = {}
        for alert in ALERTS:
            if alert.job is not None and not handler_exists(alert.job):
                cdk.Annotations.of(self).add_info(f"alarm {alert.id} waits for the {alert.job.name} job's code")
                continue
            threshold = alert.threshold
            if alert.id in CONCURRENCY_FRACTION_ALERTS:
                threshold = round(alert.threshold * settings.api_reserved_concurrency, 2)
            esc = ESCALATION[alert.level]
            alarm = cw.Alarm(
                self,
                alert.id,
                alarm_name=f"{settings.prefix}-{alert.id}",
                alarm_description=_describe(alert, esc.who),
                metric=self.metric_for(alert),
                threshold=threshold,
                comparison_operator=COMPARISONS[alert.comparison],
                evaluation_periods=alert.evaluation_periods,
                datapoints_to_alarm=alert.datapoints_to_alarm,
                treat_missing_data=MISSING[alert.missing_data],
            )
            # Through the notifier (incident notices to the level's people), or, for the alarm on
            # the notifier's own failures, straight to the level's topic.
            action = cw_actions.SnsAction(topics[alert.level] if alert.direct else alarm_topic)
            alarm.add_alarm_action(action)
            alarm.add_ok_action(action)  # the resolution closes the incident
            self.alarms[alert.id] = alarm

    def metric(self, ref: MetricRef, period_s: int) -> cw.Metric:
        dimensions = {k: self._fill(v) for k, v in (ref.dimensions or SERVICE_DIMENSIONS).items()}
        return cw.Metric(
            namespace=ref.namespace or NAMESPACE,
            metric_name=ref.name,
            dimensions_map=dimensions,
            statistic=ref.statistic,
            period=cdk.Duration.seconds(period_s),
        )

    def metric_for(self, alert: Alert) -> cw.IMetric:
        if isinstance(alert.metric, MetricRef):
            return self.metric(alert.metric, alert.period_s)
        # Several sources of one fact (a job's own failure metric, Lambda's Errors): their sum.
        using = {f"m{i}": self.metric(ref, alert.period_s) for i, ref in enumerate(alert.metric)}
        return cw.MathExpression(
            expression=" + ".join(f"FILL({name}, 0)" for name in using),
            using_metrics=using,
            label=alert.id,
            period=cdk.Duration.seconds(alert.period_s),
        )

    def _fill(self, value: str) -> str:
        if value.startswith("<") and value.endswith(">"):
            if value not in self.placeholders:
                raise KeyError(f"no deployed resource for the alert table's dimension {value}")
            return self.placeholders[value]
        return value


def _describe(alert: Alert, who: str) -> str:
    text = f"[{alert.severity}] {alert.description}. Escalation {alert.level} ({who})."
    if alert.requirement != "serverless":
        text += f" Manual: {alert.requirement}."
    return text[:1024]


class Dashboard(Construct):
    """Requests, error rate, p50/p99 latency, inference time, anomalies, forecast error, job
    outcomes and the alarms' states, on one CloudWatch dashboard."""

    def __init__(self, scope: Construct, id: str, *, settings: DeploySettings, alarms: Alarms) -> None:
        super().__init__(scope, id)
        m = alarms.metric
        period = 300
        api = {"ApiName": alarms.placeholders["<api>"], "Stage": alarms.placeholders["<stage>"]}

        def ours(name: str, stat: str) -> cw.Metric:
            return m(MetricRef(name, stat), period)

        def gateway(name: str, stat: str) -> cw.Metric:
            return m(MetricRef(name, stat, "AWS/ApiGateway", api), period)

        def job(name: str, job_name: str) -> cw.Metric:
            dims = {**SERVICE_DIMENSIONS, JOB_DIMENSION: job_name}
            return m(MetricRef(name, "Sum", dimensions=dims), 3600).with_(label=f"{job_name} {name}")

        self.dashboard = cw.Dashboard(self, "Dashboard", dashboard_name=settings.prefix)
        self.dashboard.add_widgets(
            cw.GraphWidget(
                title="Requests",
                left=[gateway("Count", "Sum"), ours(API_REQUESTS_TOTAL, "Sum"), ours(PREDICTIONS_TOTAL, "Sum")],
                width=8,
            ),
            cw.GraphWidget(
                title="Error rate (5xx share) and errors",
                left=[gateway("5XXError", "Average"), gateway("4XXError", "Average")],
                right=[ours(API_REQUESTS_ERRORS_TOTAL, "Sum"), ours(FALLBACK_FORECASTS_TOTAL, "Sum")],
                width=8,
            ),
            cw.GraphWidget(
                title="Latency p50 / p99 (ms at the gateway, s in the function)",
                left=[gateway("Latency", "p50"), gateway("Latency", "p99")],
                right=[ours(API_REQUEST_DURATION_SECONDS, "p50"), ours(API_REQUEST_DURATION_SECONDS, "p99")],
                width=8,
            ),
        )
        self.dashboard.add_widgets(
            cw.GraphWidget(
                title="Inference time (s)",
                left=[ours(MODEL_INFERENCE_DURATION_SECONDS, "p50"), ours(MODEL_INFERENCE_DURATION_SECONDS, "p99")],
                width=8,
            ),
            cw.GraphWidget(title="Anomalies detected", left=[ours(MODEL_ANOMALIES_DETECTED, "Sum")], width=8),
            cw.GraphWidget(
                title="Live forecast error",
                left=[ours(MODEL_PREDICTION_ERROR_PERCENT, "Average")],
                right=[ours(MODEL_PREDICTION_ERROR_ABSOLUTE, "Average")],
                width=8,
            ),
        )
        self.dashboard.add_widgets(
            cw.GraphWidget(
                title="Job outcomes",
                left=[job(JOB_SUCCEEDED_TOTAL, j.name) for j in JOBS],
                right=[job(JOB_FAILED_TOTAL, j.name) for j in JOBS],
                width=12,
            ),
            cw.AlarmStatusWidget(title="Alarms", alarms=list(alarms.alarms.values()), width=12),
        )
