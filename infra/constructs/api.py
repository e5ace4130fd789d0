"""The API: a REST API in front of the API function (through a published alias, so SnapStart
applies), API keys and a usage plan per client, request validation, access logs, X-Ray."""

from __future__ import annotations

import json

import aws_cdk as cdk
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from smartgrid.catalog import API, API_ROUTES, PROBLEM_BASE, PROBLEM_JSON
from smartgrid.config import env_var

from ..settings import DeploySettings
from .data import Data
from .permissions import TABLE_READ, TABLE_WRITE, bucket_actions, table_actions
from .runtime import LOG_RETENTION, Runtime

STAGE = "v1"
# The access log (docs/requirements.md#logs), one JSON line per request, with the key's id (our user id).
ACCESS_LOG_FIELDS = {
    "requestId": "$context.requestId",
    "ip": "$context.identity.sourceIp",
    "apiKeyId": "$context.identity.apiKeyId",
    "requestTime": "$context.requestTime",
    "httpMethod": "$context.httpMethod",
    "resourcePath": "$context.resourcePath",
    "status": "$context.status",
    "protocol": "$context.protocol",
    "responseLength": "$context.responseLength",
    "responseLatency": "$context.responseLatency",
    "integrationLatency": "$context.integrationLatency",
    "integrationError": "$context.integration.error",
    "xrayTraceId": "$context.xrayTraceId",
}

# API Gateway's own rejections (before the function runs) as problem details, like the app's:
# response type -> (status or None to keep the gateway's, problem code, title, detail). A detail
# starting with "$" is a VTL expression that is already a quoted JSON string.
GATEWAY_PROBLEMS: dict[str, tuple[int | None, str, str, str]] = {
    "INVALID_API_KEY": (
        403,
        "invalid-api-key",
        "Forbidden",
        "missing or invalid API key: send it in the x-api-key header",
    ),
    "MISSING_AUTHENTICATION_TOKEN": (404, "not-found", "Not found", "no such route: check the method and the path"),
    "THROTTLED": (429, "throttled", "Too many requests", "request rate above the limit: retry after a pause"),
    "QUOTA_EXCEEDED": (429, "quota-exceeded", "Quota exceeded", "the API key's monthly request quota is used up"),
    "BAD_REQUEST_BODY": (400, "bad-body", "Bad request", "$context.error.validationErrorString"),
    "REQUEST_TOO_LARGE": (
        413,
        "payload-too-large",
        "Payload too large",
        "the request is larger than API Gateway accepts",
    ),
    "DEFAULT_4XX": (None, "bad-request", "Bad request", "$context.error.messageString"),
    "DEFAULT_5XX": (None, "unavailable", "Service unavailable", "$context.error.messageString"),
}
RETRY_AFTER_S = {"THROTTLED": 1, "DEFAULT_5XX": 5}


def gateway_problem(code: str, title: str, status: int | None, detail: str) -> str:
    """The response template: a problem-details body with API Gateway's request id."""
    body: dict[str, object] = {"type": PROBLEM_BASE + code, "title": title}
    if status is not None:
        body["status"] = status
    body |= {"detail": "@detail@", "errors": [], "correlation_id": "$context.requestId"}
    return json.dumps(body).replace('"@detail@"', detail if detail.startswith("$") else json.dumps(detail))


class Api(Construct):
    def __init__(self, scope: Construct, id: str, *, settings: DeploySettings, runtime: Runtime, data: Data) -> None:
        super().__init__(scope, id)
        fn = runtime.function(
            API,
            memory_mb=settings.api_memory_mb,
            reserved_concurrency=settings.api_reserved_concurrency,
            snap_start=settings.snap_start,
            # API Gateway checked the key; the user id is the key's id (requestContext).
            environment={env_var("auth_mode"): "api_gateway"},
        )
        self.function = fn
        api_tables = ("predictions_table", "actuals_table", "cache_table", "idempotency_table")
        table_actions(fn, [data.tables[t] for t in api_tables], TABLE_READ + TABLE_WRITE)
        bucket_actions(fn, data.models, ["s3:GetObject"])  # the champion model set, picked up live
        # Requests go to the published alias: SnapStart restores published versions only.
        self.alias = lambda_.Alias(self, "Live", alias_name="live", version=fn.current_version)
        cdk.Validations.of(fn).acknowledge(
            cdk.Acknowledgment(
                id="Annotation::@aws-cdk/aws-lambda:snapStartRequirePublish",
                reason="the function is published (current_version) and API Gateway calls that version's alias",
            )
        )
        access_logs = logs.LogGroup(
            self,
            "AccessLogs",
            retention=LOG_RETENTION,
            removal_policy=cdk.RemovalPolicy.RETAIN if settings.production else cdk.RemovalPolicy.DESTROY,
        )
        self.rest_api = apigw.RestApi(
            self,
            "RestApi",
            rest_api_name=settings.prefix,
            description="smartgrid load forecasting and anomaly detection",
            endpoint_types=[apigw.EndpointType.REGIONAL],
            api_key_source_type=apigw.ApiKeySourceType.HEADER,
            cloud_watch_role=True,
            # The logging role is account-wide (one per region): kept when a stack goes.
            cloud_watch_role_removal_policy=cdk.RemovalPolicy.RETAIN,
            deploy_options=apigw.StageOptions(
                stage_name=STAGE,
                tracing_enabled=settings.xray,
                metrics_enabled=True,
                logging_level=apigw.MethodLoggingLevel.ERROR,
                data_trace_enabled=False,  # bodies hold customers' meter data: never in logs
                access_log_destination=apigw.LogGroupLogDestination(access_logs),
                access_log_format=apigw.AccessLogFormat.custom(json.dumps(ACCESS_LOG_FIELDS, separators=(",", ":"))),
                throttling_rate_limit=settings.api_throttle_rate,
                throttling_burst_limit=settings.api_throttle_burst,
            ),
        )
        integration = apigw.LambdaIntegration(self.alias, proxy=True, allow_test_invoke=False)
        validator = self.rest_api.add_request_validator(
            "JsonBody", request_validator_name="json-body", validate_request_body=True, validate_request_parameters=True
        )
        json_object = self.rest_api.add_model(
            "JsonObject",
            content_type="application/json",
            model_name="JsonObject",
            schema=apigw.JsonSchema(
                schema=apigw.JsonSchemaVersion.DRAFT4,
                title="JsonObject",
                type=apigw.JsonSchemaType.OBJECT,
                description="The API's request bodies are JSON objects; the function validates their content.",
            ),
        )
        for route in API_ROUTES:
            resource = self.rest_api.root.resource_for_path(route.path)
            resource.add_method(
                route.method,
                integration,
                api_key_required=route.api_key,
                request_validator=validator,
                request_models={"application/json": json_object} if route.json_body else None,
            )
        self.stage = self.rest_api.deployment_stage
        for kind, (status, code, title, detail) in GATEWAY_PROBLEMS.items():
            headers = {"Content-Type": f"'{PROBLEM_JSON}'"}
            if kind in RETRY_AFTER_S:
                headers["Retry-After"] = f"'{RETRY_AFTER_S[kind]}'"
            self.rest_api.add_gateway_response(
                f"Problem-{kind}",
                type=apigw.ResponseType.of(kind),
                status_code=None if status is None else str(status),
                response_headers=headers,
                templates={"application/json": gateway_problem(code, title, status, detail)},
            )
        # API Gateway writes execution logs (errors) to a group it names; made here so that it
        # has the required 60-day retention (docs/requirements.md#logs) instead of never expiring.
        logs.LogGroup(
            self,
            "ExecutionLogs",
            log_group_name=f"API-Gateway-Execution-Logs_{self.rest_api.rest_api_id}/{STAGE}",
            retention=LOG_RETENTION,
            removal_policy=cdk.RemovalPolicy.RETAIN if settings.production else cdk.RemovalPolicy.DESTROY,
        )

        plan = self.rest_api.add_usage_plan(
            "UsagePlan",
            name=f"{settings.prefix}-clients",
            throttle=apigw.ThrottleSettings(
                rate_limit=settings.client_throttle_rate, burst_limit=settings.client_throttle_burst
            ),
            quota=apigw.QuotaSettings(limit=settings.client_monthly_quota, period=apigw.Period.MONTH),
        )
        plan.add_api_stage(stage=self.stage)
        self.keys: dict[str, apigw.IApiKey] = {}
        for client in settings.api_clients:
            key = self.rest_api.add_api_key(f"Key-{client}", api_key_name=f"{settings.prefix}-{client}")
            plan.add_api_key(key)
            self.keys[client] = key
            cdk.CfnOutput(self, f"ApiKeyId-{client}", value=key.key_id, description=f"API key id of {client}")
