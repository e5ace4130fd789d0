"""checkov's findings on the synthesized template that this design accepts, each with its reason.

checkov (tools/scanners, run on ``cdk synth``'s output by tests/infra/test_infra.py) reads
skips from a resource's ``Metadata.checkov.skip``; they are added here to the narrowest
resources, the same way infra/nag.py acknowledges cdk-nag's findings. Any other failed check fails the test.
"""

from __future__ import annotations

from collections import defaultdict

import aws_cdk as cdk
from constructs import IConstruct

from .stack import SmartgridStack

NO_VPC = (
    "the functions reach only public endpoints (AWS APIs, the API's own URL for the probe, the chat webhook) "
    "and no private resource; a VPC would add NAT or endpoint costs and cold-start latency and protect nothing"
)
NO_RESERVED = (
    "jobs run once per schedule, per arriving file or per alarm change; reserving concurrency for each would "
    "carve it out of the account pool the API's reserved concurrency (apiReservedConcurrency) is sized against"
)
ENV_PLAIN = (
    "the environment holds only resource names, limits and the Powertools settings, no secret (the chat "
    "webhook is an SSM SecureString read at run time); Lambda encrypts it at rest with its service key"
)
LOGS_DEFAULT_KEY = (
    "CloudWatch Logs encrypts every log group at rest; the logs carry no secret (API keys are redacted, "
    "bodies are never logged) so a customer managed key would add a key policy to keep and no protection"
)
DDB_AWS_MANAGED = (
    "tables are encrypted at rest with the AWS managed KMS key (SSESpecification.SSEEnabled); a customer "
    "managed key adds a key policy that can lock the service out of its own data and a per-request KMS cost"
)
SQS_MANAGED = (
    "the dead-letter queues are encrypted with SQS-managed SSE (SqsManagedSseEnabled: true); checkov 3.3's "
    "CKV_AWS_27 recognises only a KMS key id"
)
SYNC_API = (
    "API Gateway invokes the API function synchronously: a dead-letter queue applies only to asynchronous "
    "invocations (every job function has one)"
)
NO_STAGE_CACHE = (
    "responses are per client (the key decides whose predictions are read and written) and POSTs; a stage "
    "cache would hand one client's answer to another; the app caches identical inputs itself for 5 minutes"
)
OPEN_HEALTH = (
    "GET /health is open by contract (docs/requirements.md#health: the health probe and load balancers call "
    "it without a key); it returns status and dependency states only, no customer data"
)
LOG_SINK = "this is the access-log bucket itself: logging it would log into itself"
LOG_VERSIONS = "access-log objects are written once by S3's log delivery and expire after 90 days"
BACKUP_VERSIONS = (
    "each backup is written under a new per-second prefix (the job refuses a prefix that has objects) with a "
    "checksummed manifest; the role's only delete is of a manifest that failed read-back, and the required "
    "30-day retention (docs/requirements.md#backups) is the bucket's lifecycle: versions would keep copies past it"
)


def _resources(scope: IConstruct, kind: str) -> list[cdk.CfnResource]:
    return [c for c in scope.node.find_all() if isinstance(c, cdk.CfnResource) and c.cfn_resource_type == kind]


def _cfn(construct: IConstruct) -> cdk.CfnResource:
    cfn = construct.node.default_child
    assert isinstance(cfn, cdk.CfnResource)
    return cfn


def add_checkov_skips(stack: SmartgridStack) -> None:
    # keyed by construct path: jsii may hand out two Python proxies for one resource
    skips: dict[str, list[tuple[str, str]]] = defaultdict(list)
    by_path: dict[str, cdk.CfnResource] = {}

    def skip(resource: cdk.CfnResource, check: str, reason: str) -> None:
        by_path[resource.node.path] = resource
        skips[resource.node.path].append((check, reason))

    for fn in _resources(stack, "AWS::Lambda::Function"):
        skip(fn, "CKV_AWS_117", NO_VPC)
        skip(fn, "CKV_AWS_173", ENV_PLAIN)
    for name, fn in stack.runtime.functions.items():
        if name != "api":  # the API's reserved concurrency is a setting
            skip(_cfn(fn), "CKV_AWS_115", NO_RESERVED)
    skip(_cfn(stack.runtime.functions["api"]), "CKV_AWS_116", SYNC_API)
    for group in _resources(stack, "AWS::Logs::LogGroup"):
        skip(group, "CKV_AWS_158", LOGS_DEFAULT_KEY)
    for table in stack.data.tables.values():
        skip(_cfn(table), "CKV_AWS_119", DDB_AWS_MANAGED)
    for queue in (stack.runtime.dead_letters, stack.notifications.dead_letters):
        skip(_cfn(queue), "CKV_AWS_27", SQS_MANAGED)
    skip(_cfn(stack.api.stage), "CKV_AWS_120", NO_STAGE_CACHE)
    health = stack.api.rest_api.root.get_resource("health")
    assert health is not None
    skip(_cfn(health.node.find_child("GET")), "CKV_AWS_59", OPEN_HEALTH)
    skip(_cfn(stack.data.access_logs), "CKV_AWS_18", LOG_SINK)
    skip(_cfn(stack.data.access_logs), "CKV_AWS_21", LOG_VERSIONS)
    skip(_cfn(stack.data.backups), "CKV_AWS_21", BACKUP_VERSIONS)
    for path, found in skips.items():
        by_path[path].add_metadata("checkov", {"skip": [{"id": check, "comment": reason} for check, reason in found]})
