"""Daily backup handler (EventBridge Scheduler, 02:00 UTC): one verified backup of the tables,
the model registry, the bundled models and the configuration (``smartgrid.domain.backup``). A
failure raises (``job_failed_total``, the invocation retries, then the dead-letter queue) and
leaves no manifest, so the partial backup lists as incomplete and is never restored from.
After a successful backup, the DynamoDB on-demand backups this code made that are older than
the retention are deleted (a failure there is a WARNING log, not a failed job)."""

from __future__ import annotations

from typing import Any

from smartgrid.catalog import BACKUP
from smartgrid.config import get_settings
from smartgrid.domain.backup import prune_dynamodb_backups, run_backup
from smartgrid.jobs.runner import job


@job(BACKUP)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    # The id is the time the backup runs, not the event's scheduled time: a retried event
    # starts a new backup instead of colliding with the failed attempt's objects.
    settings = get_settings()
    summary = run_backup(settings, origin=getattr(context, "function_name", None) or "lambda").summary()
    summary["dynamodb_backups_deleted"] = prune_dynamodb_backups(settings)
    return summary
