"""What every job handler shares: the Powertools decorators in the guide's order (context,
metrics, tracer), the ``job`` dimension, and the outcome reported as ``job_succeeded_total``
or ``job_failed_total`` (the failure alarms watch them; Lambda's Errors catches crashes that
never get this far). A failed job re-raises, so that the invocation retries and, in the end,
its event lands in the dead-letter queue."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from smartgrid.catalog import JOB_DIMENSION, JOB_FAILED_TOTAL, JOB_SUCCEEDED_TOTAL, FunctionSpec
from smartgrid.observability import logger, metrics, tracer

Handler = Callable[[dict[str, Any], Any], Any]


def job(spec: FunctionSpec) -> Callable[[Handler], Handler]:
    def wrap(fn: Handler) -> Handler:
        @functools.wraps(fn)
        def run(event: dict[str, Any], context: Any) -> Any:
            metrics.add_dimension(name=JOB_DIMENSION, value=spec.name)
            try:
                result = fn(event, context)
            except Exception:
                logger.exception("job failed", extra={"job": spec.name})
                metrics.add_metric(name=JOB_FAILED_TOTAL, unit="Count", value=1)
                raise
            metrics.add_metric(name=JOB_SUCCEEDED_TOTAL, unit="Count", value=1)
            logger.info("job succeeded", extra={"job": spec.name})
            return result

        return logger.inject_lambda_context(clear_state=True)(
            metrics.log_metrics(tracer.capture_lambda_handler(capture_response=False)(run))
        )

    return wrap
