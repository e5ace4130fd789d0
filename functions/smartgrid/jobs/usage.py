"""Usage report handler (EventBridge Scheduler, 06:00 UTC on the 1st): the previous month's
predictions per client, published to the L1 topic and logged."""

from __future__ import annotations

from typing import Any

from smartgrid.catalog import USAGE_REPORT
from smartgrid.config import get_settings
from smartgrid.domain.usage import month_of_event, report
from smartgrid.jobs.runner import job


@job(USAGE_REPORT)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    result, message_id = report(get_settings(), month_of_event(event), publish=True)
    return {**result.to_dict(), "notification": message_id}
