"""The local stack on moto as the fixtures in tests/conftest.py provision it, and the API
service as a fresh container has it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Stack:
    """The local stack as the CDK app makes it (tables, buckets), with the L1 operations
    topic's messages arriving in an SQS queue (moto's alarm actions do not publish, but
    sns.publish to a topic with an SQS subscription delivers)."""

    settings: Any
    queue: str

    @property
    def bucket(self) -> str:
        return str(self.settings.meter_data_bucket)


def reset_service(svc: Any) -> None:
    """A long-lived app's service as a fresh container has it: the real clock, and nothing of
    an earlier test's in-memory cache tier (it outlives a test's moto tables) or cache outage."""
    from smartgrid.domain.predictions import utcnow

    svc.clock = utcnow
    svc._memory.clear()
    svc._cache_down_until = 0.0
