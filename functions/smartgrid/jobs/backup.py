"""Daily backup handler (EventBridge Scheduler, 02:00 UTC): one verified backup of the tables,
the model registry, the bundled models and the configuration (``smartgrid.backup``). A
failure raises (``job_failed_total``, the invocation retries, then the dead-letter queue) and
leaves no manifest, so the partial backup lists as incomplete and is never restored from."""

from __future__ import annotations

from typing import Any

from ..backup import run_backup
from ..catalog import BACKUP
from ..config import get_settings
from .runner import job


@job(BACKUP)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    # The id is the time the backup runs, not the event's scheduled time: a retried event
    # starts a new backup instead of colliding with the failed attempt's objects.
    return run_backup(get_settings()).summary()
