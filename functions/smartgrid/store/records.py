"""What the predictions tables hold, as plain records, and the ``Store`` protocol the
prediction service (``smartgrid.domain.predictions``) depends on.

They live with the store, not the domain, because imports run one way: the domain calls the
store, and every store implementation (``predictions_table.DynamoStore``, a test's fake)
returns these records."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol


@dataclass
class PredictionRecord:
    user_id: str
    prediction_id: str
    created_at: datetime
    inputs_digest: str
    model: str
    model_version: str
    fallback_reason: str | None
    resolution_minutes: int
    source: str  # "computed" | "cache"
    timestamps: list[str]
    p10: list[float]
    p50: list[float]
    p90: list[float]
    site_id: str | None = None
    idempotency_key: str | None = None
    expires_at: datetime | None = None
    stored: bool = True  # False: served while the predictions table was down, never recorded

    def forecast_dict(self) -> dict[str, Any]:
        return {"timestamps": self.timestamps, "p10": self.p10, "p50": self.p50, "p90": self.p90}


@dataclass(frozen=True)
class Claim:
    """An idempotency record: the prediction ids reserved for the request, and whether it
    already completed (then the stored predictions are replayed)."""

    prediction_ids: list[str]
    completed: bool
    errors: list[int] | None  # indexes of items that failed validation (recomputed on replay)
    until: float  # in_progress_until set by this attempt: only its holder may finish the claim
    created: datetime  # the first attempt's time, which the reserved ULIDs encode


@dataclass
class Page:
    items: list[PredictionRecord]
    cursor: str | None


class Store(Protocol):
    """What the prediction service needs from persistence (``predictions_table.DynamoStore``)."""

    def save_predictions(
        self, records: list[PredictionRecord], cache: dict[str, dict[str, Any]], now: datetime
    ) -> bool: ...
    def delete_predictions(self, records: list[PredictionRecord]) -> None: ...
    def get_predictions(self, user_id: str, prediction_ids: list[str]) -> dict[str, PredictionRecord]: ...
    def list_predictions(self, user_id: str, since: datetime | None, limit: int, cursor: str | None) -> Page: ...
    def merge_actuals(self, user_id: str, prediction_id: str, values: dict[str, float], now: datetime) -> dict: ...
    def cache_get_many(self, keys: list[str], now: datetime) -> dict[str, tuple[float, dict[str, Any]]]: ...
    def claim(self, user_id: str, key: str, request_digest: str, n: int, now: datetime) -> Claim: ...
    def complete(self, user_id: str, key: str, errors: list[int] | None, until: float) -> None: ...
    def expire_claim(self, user_id: str, key: str, until: float) -> None: ...
    def release_claim(self, user_id: str, key: str, until: float) -> None: ...
    def prepare(self) -> None: ...
    def ping_database(self) -> None: ...
    def ping_cache(self) -> None: ...


def new_prediction_id(now: datetime) -> str:
    from ulid import ULID

    return str(ULID.from_datetime(now))
