"""Monthly retraining handler (EventBridge Scheduler, 1st of the month 00:00 UTC): one
champion/challenger round of ``smartgrid.domain.retraining``. Too little data is not a failure to
retry: the round is recorded as skipped, logged as a warning, and the job returns."""

from __future__ import annotations

from typing import Any

from smartgrid.catalog import RETRAINING
from smartgrid.config import get_settings
from smartgrid.domain.retraining import retrain
from smartgrid.errors import InsufficientHistoryError
from smartgrid.jobs.runner import job
from smartgrid.observability import logger


@job(RETRAINING)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    try:
        decision = retrain(get_settings())
    except InsufficientHistoryError as exc:
        logger.warning("retraining skipped", extra={"reason": str(exc)})
        return {"status": "skipped", "reason": str(exc)}
    return {
        "status": decision.status,
        "reason": decision.reason,
        "champion": decision.champion,
        "challenger": decision.challenger,
        "new_champion": decision.new_champion,
        "decision_key": decision.decision_key,
        "resources": decision.resources,
    }
