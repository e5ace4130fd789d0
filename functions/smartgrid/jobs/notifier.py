"""Notifier handler: the alarm topic's SNS events (CloudWatch alarm state changes) become
incident notices to the alarm's escalation level (``smartgrid.domain.incidents``). A failed
delivery raises: Lambda retries the asynchronous invocation twice, then the event goes to the
notifier's dead-letter queue, whose alarm goes straight to people."""

from __future__ import annotations

from typing import Any

from smartgrid.catalog import NOTIFIER
from smartgrid.config import get_settings
from smartgrid.domain.incidents import handle_event
from smartgrid.jobs.runner import job


@job(NOTIFIER)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    # The request id stays the same across Lambda's retries of one event: a retry takes over
    # the deliveries its failed attempt left undone.
    owner = getattr(context, "aws_request_id", None)
    return {"outcomes": handle_event(event, get_settings(), owner)}
