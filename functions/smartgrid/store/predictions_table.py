"""``Store`` over DynamoDB with pynamodb (tables in ``tables.py``)."""

from __future__ import annotations

import base64
import binascii
import contextlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pynamodb.exceptions import DoesNotExist, PutError, UpdateError
from pynamodb.expressions.condition import Condition
from pynamodb.expressions.update import Action
from pynamodb.models import Model

from smartgrid.config import Settings
from smartgrid.errors import ConflictError, DataValidationError, Problem
from smartgrid.observability import logger, trace_aws_sdk
from smartgrid.store.records import Claim, Page, PredictionRecord, new_prediction_id
from smartgrid.store.tables import ActualsItem, CacheItem, IdempotencyItem, PredictionItem, bind


@dataclass(frozen=True)
class OnceClaim:
    state: str  # "claimed" | "completed" | "busy"
    until: float  # the claim's in_progress_until (the holder passes it to finish_once)


@dataclass
class PredictionCount:
    per_user: dict[str, int]
    pages: int  # Scan calls made
    scanned: int  # items DynamoDB read (before the filter)


_HEALTH_KEY = "__health__"
_MAX_UNPROCESSED_RETRIES = 5
BATCH_WRITE_LIMIT = 25  # DynamoDB's maximum items per BatchWriteItem


def _ulid_floor(since: datetime) -> str:
    """The smallest ULID of the millisecond ``since``: range-key bound for 'created since'
    (ULIDs start at the epoch: an earlier ``since`` is the epoch)."""
    from ulid import ULID

    return str(ULID.from_datetime(max(since, datetime(1970, 1, 1, tzinfo=UTC))))[:10] + "0" * 16


def _to_record(item: PredictionItem) -> PredictionRecord:
    fc = item.forecast
    return PredictionRecord(
        user_id=item.user_id,
        prediction_id=item.prediction_id,
        created_at=item.created_at,
        inputs_digest=item.inputs_digest,
        model=item.model,
        model_version=item.model_version,
        fallback_reason=item.fallback_reason,
        resolution_minutes=int(item.resolution_minutes),
        source=item.source,
        timestamps=fc["timestamps"],
        p10=fc["p10"],
        p50=fc["p50"],
        p90=fc["p90"],
        site_id=item.site_id,
        idempotency_key=item.idempotency_key,
        expires_at=item.expires_at,
    )


def _attribute_map(model: type[Model], values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """An item in DynamoDB's wire format through the model's own attribute serializers,
    without building a model instance (which costs more than the write's HTTP call here)."""
    out = {}
    for name, attr in model.get_attributes().items():
        value = values.get(name)
        if value is None:
            if not attr.null:
                raise ValueError(f"{model.__name__}.{name} is required")
            continue
        out[attr.attr_name] = {attr.attr_type: attr.serialize(value)}
    return out


def _prediction_map(rec: PredictionRecord) -> dict[str, dict[str, Any]]:
    return _attribute_map(
        PredictionItem,
        {
            "user_id": rec.user_id,
            "prediction_id": rec.prediction_id,
            "created_at": rec.created_at,
            "inputs_digest": rec.inputs_digest,
            "model": rec.model,
            "model_version": rec.model_version,
            "fallback_reason": rec.fallback_reason,
            "resolution_minutes": rec.resolution_minutes,
            "source": rec.source,
            "site_id": rec.site_id,
            "idempotency_key": rec.idempotency_key,
            "forecast": rec.forecast_dict(),
            "expires_at": rec.expires_at,
        },
    )


def _bad_cursor(detail: str) -> DataValidationError:
    return DataValidationError([Problem("bad_cursor", f"cursor: {detail}", field_name="cursor")], "query")


class DynamoStore:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        trace_aws_sdk()
        bind(settings)

    # -- predictions
    def save_predictions(
        self, records: list[PredictionRecord], cache: dict[str, dict[str, Any]], now: datetime
    ) -> bool:
        """Write the predictions, and the new cache entries in the same BatchWriteItem calls
        (one call for a single prediction). Returns whether the cache entries were written: a
        cache-table failure is retried without them, a predictions-table failure raises."""
        preds = [_prediction_map(r) for r in records]
        if cache:
            entries = [self._cache_map(k, v, now) for k, v in cache.items()]
            try:
                self._put_all(
                    [(PredictionItem.Meta.table_name, m) for m in preds]
                    + [(CacheItem.Meta.table_name, m) for m in entries]
                )
                return True
            except Exception as exc:
                logger.warning(
                    "writing with the cache failed; writing the predictions alone", extra={"error": repr(exc)}
                )
        self._put_all([(PredictionItem.Meta.table_name, m) for m in preds])
        return not cache

    def _put_all(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        """BatchWriteItem over any of our tables, 25 items a call, unprocessed items retried."""
        conn = PredictionItem._get_connection().connection
        for lo in range(0, len(items), BATCH_WRITE_LIMIT):
            request: dict[str, list[dict[str, Any]]] = {}
            for table, item in items[lo : lo + BATCH_WRITE_LIMIT]:
                request.setdefault(table, []).append({"PutRequest": {"Item": item}})
            for attempt in range(_MAX_UNPROCESSED_RETRIES + 1):
                response = conn.dispatch("BatchWriteItem", {"RequestItems": request})
                request = response.get("UnprocessedItems") or {}
                if not request:
                    break
                if attempt == _MAX_UNPROCESSED_RETRIES:
                    raise RuntimeError(f"DynamoDB left {sum(map(len, request.values()))} item(s) unprocessed")
                time.sleep(min(0.05 * 2**attempt, 1.0))

    def delete_predictions(self, records: list[PredictionRecord]) -> None:
        with PredictionItem.batch_write() as batch:
            for rec in records:
                batch.delete(PredictionItem(rec.user_id, rec.prediction_id))

    def get_predictions(self, user_id: str, prediction_ids: list[str]) -> dict[str, PredictionRecord]:
        if len(prediction_ids) == 1:
            try:
                item = PredictionItem.get(user_id, prediction_ids[0], consistent_read=True)
            except DoesNotExist:
                return {}
            return {item.prediction_id: _to_record(item)}
        keys = [(user_id, pid) for pid in dict.fromkeys(prediction_ids)]
        return {it.prediction_id: _to_record(it) for it in PredictionItem.batch_get(keys, consistent_read=True)}

    def list_predictions(self, user_id: str, since: datetime | None, limit: int, cursor: str | None) -> Page:
        start_key = None
        if cursor:
            try:
                pid = base64.urlsafe_b64decode(cursor.encode() + b"==").decode()
            except (binascii.Error, UnicodeDecodeError, ValueError):
                raise _bad_cursor("not a cursor this API returned") from None
            if len(pid) != 26:
                raise _bad_cursor("not a cursor this API returned")
            start_key = {"user_id": {"S": user_id}, "prediction_id": {"S": pid}}
        floor = _ulid_floor(since) if since is not None else None
        if floor is not None and start_key is not None and start_key["prediction_id"]["S"] < floor:
            return Page([], None)  # a cursor from before this `since`: nothing newer is left
        cond = PredictionItem.prediction_id >= floor if floor is not None else None
        result = PredictionItem.query(
            user_id,
            range_key_condition=cond,
            scan_index_forward=False,
            limit=limit,
            page_size=limit,
            last_evaluated_key=start_key,
        )
        items = [_to_record(it) for it in result]
        lek = result.last_evaluated_key
        next_cursor = None
        if lek and len(items) == limit:
            next_cursor = base64.urlsafe_b64encode(lek["prediction_id"]["S"].encode()).decode().rstrip("=")
        return Page(items, next_cursor)

    # -- actuals (one item per prediction, merged under optimistic locking)
    def merge_actuals(self, user_id: str, prediction_id: str, values: dict[str, float], now: datetime) -> dict:
        for _attempt in range(5):
            try:
                item = ActualsItem.get(user_id, prediction_id, consistent_read=True)
            except DoesNotExist:
                item = ActualsItem(user_id, prediction_id, actuals={})
            merged = {**(item.actuals or {}), **values}
            item.actuals = merged
            item.updated_at = now
            item.expires_at = now + timedelta(days=self.settings.prediction_retention_days)
            try:
                item.save()
            except PutError as exc:
                if exc.cause_response_code == "ConditionalCheckFailedException":
                    continue  # somebody else wrote first: read again and merge
                raise
            return merged
        raise ConflictError("actuals for this prediction are being written concurrently; retry", "concurrent_update")

    # -- cache
    def cache_get_many(self, keys: list[str], now: datetime) -> dict[str, tuple[float, dict[str, Any]]]:
        """Entries still valid at ``now``: key -> (valid_until, value)."""
        if len(keys) == 1:
            try:
                items = [CacheItem.get(keys[0])]
            except DoesNotExist:
                items = []
        else:
            items = list(CacheItem.batch_get(list(dict.fromkeys(keys))))
        t = now.timestamp()
        return {it.key: (float(it.valid_until), it.value) for it in items if it.valid_until >= t}

    def _cache_map(self, key: str, value: dict[str, Any], now: datetime) -> dict[str, dict[str, Any]]:
        valid_until = now.timestamp() + self.settings.cache_ttl_s
        return _attribute_map(
            CacheItem,
            {
                "key": key,
                "value": value,
                "valid_until": valid_until,
                "expires_at": datetime.fromtimestamp(valid_until, UTC) + timedelta(hours=1),
            },
        )

    # -- idempotency (the pattern of Powertools' idempotency utility, as conditional writes)
    def claim(self, user_id: str, key: str, request_digest: str, n: int, now: datetime) -> Claim:
        hk = f"{user_id}#{key}"
        t = now.timestamp()
        until = t + self.settings.idempotency_in_progress_s
        item = IdempotencyItem(
            hk,
            status="IN_PROGRESS",
            request_digest=request_digest,
            prediction_ids=[new_prediction_id(now) for _ in range(n)],
            created_at=now,
            in_progress_until=until,
            expires_at=now + timedelta(seconds=self.settings.idempotency_ttl_s),
        )
        free: Condition = IdempotencyItem.key.does_not_exist()
        try:
            item.save(condition=free)
            return Claim([str(x) for x in item.prediction_ids], False, None, until, now)
        except PutError as exc:
            if exc.cause_response_code != "ConditionalCheckFailedException":
                raise
        existing = IdempotencyItem.get(hk, consistent_read=True)
        ids = [str(x) for x in existing.prediction_ids]
        if existing.request_digest != request_digest:
            raise ConflictError(
                "this Idempotency-Key was already used for a different request body", "idempotency_key_reused"
            )
        if existing.status == "COMPLETED":
            return Claim(ids, True, existing.errors, existing.in_progress_until, existing.created_at)
        if existing.in_progress_until > t:
            raise ConflictError(
                "a request with this Idempotency-Key is still being processed; retry later", "request_in_progress"
            )
        # An earlier attempt died mid-way: take it over, keeping its prediction ids (and time)
        # so that anything it saved is overwritten, not duplicated.
        try:
            existing.update(
                actions=[IdempotencyItem.in_progress_until.set(until)],
                condition=(IdempotencyItem.in_progress_until == existing.in_progress_until),
            )
        except UpdateError as exc:
            if exc.cause_response_code == "ConditionalCheckFailedException":
                raise ConflictError(
                    "a request with this Idempotency-Key is still being processed; retry later", "request_in_progress"
                ) from exc
            raise
        return Claim(ids, False, None, until, existing.created_at)

    @staticmethod
    def _held(until: float) -> Condition:
        """Only the attempt that holds the claim (its ``in_progress_until``) may finish it."""
        return (IdempotencyItem.status == "IN_PROGRESS") & (IdempotencyItem.in_progress_until == until)

    def complete(self, user_id: str, key: str, errors: list[int] | None, until: float) -> None:
        actions: list[Action] = [IdempotencyItem.status.set("COMPLETED")]
        if errors:
            actions.append(IdempotencyItem.errors.set(errors))
        IdempotencyItem(f"{user_id}#{key}").update(actions=actions, condition=self._held(until))

    def expire_claim(self, user_id: str, key: str, until: float) -> None:
        """Something may be stored: a retry (same key and body) takes over now with the same ids."""
        IdempotencyItem(f"{user_id}#{key}").update(
            actions=[IdempotencyItem.in_progress_until.set(0)], condition=self._held(until)
        )

    def release_claim(self, user_id: str, key: str, until: float) -> None:
        """Nothing was stored: the key is free again (for a corrected body too)."""
        IdempotencyItem(f"{user_id}#{key}").delete(condition=self._held(until))

    # -- once-only work of the jobs (a meter file's ingestion): markers in the idempotency table
    # under keys of their own prefix (``ingest#...``), claimed by one attempt at a time.
    def claim_once(self, key: str, owner: str, now: datetime, hold_s: float, keep_s: float) -> OnceClaim:
        """Claim ``key`` for ``owner`` (a Lambda invocation's request id, which Lambda keeps
        across its own retries of that invocation; a fresh id per CLI run) for ``hold_s``
        seconds. ``completed``: done before; ``busy``: another owner holds it and its window
        has not passed (it finishes the work or, failing, its own retries do); ``claimed``: go
        ahead. The same owner takes its claim over at once (its retry after a crash or a
        timeout); a different owner only once the claim's window has expired."""
        until = now.timestamp() + hold_s
        item = IdempotencyItem(
            key,
            status="IN_PROGRESS",
            request_digest=owner,  # the claim's owner
            prediction_ids=[],
            created_at=now,
            in_progress_until=until,
            expires_at=now + timedelta(seconds=keep_s),
        )
        try:
            item.save(condition=IdempotencyItem.key.does_not_exist())
            return OnceClaim("claimed", until)
        except PutError as exc:
            if exc.cause_response_code != "ConditionalCheckFailedException":
                raise
        existing = IdempotencyItem.get(key, consistent_read=True)
        if existing.status == "COMPLETED":
            return OnceClaim("completed", 0.0)
        if existing.request_digest != owner and existing.in_progress_until > now.timestamp():
            return OnceClaim("busy", float(existing.in_progress_until))
        try:
            existing.update(
                actions=[IdempotencyItem.in_progress_until.set(until), IdempotencyItem.request_digest.set(owner)],
                condition=self._held(existing.in_progress_until),
            )
        except UpdateError as exc:
            if exc.cause_response_code == "ConditionalCheckFailedException":
                return OnceClaim("busy", 0.0)  # another owner took it over first
            raise
        return OnceClaim("claimed", until)

    def finish_once(self, key: str, until: float, completed: bool) -> bool:
        """Mark the work done (``completed``) or free the claim for the next attempt at once.
        False when the claim was no longer this attempt's (another took it over)."""
        actions: list[Action] = (
            [IdempotencyItem.status.set("COMPLETED")] if completed else [IdempotencyItem.in_progress_until.set(0)]
        )
        try:
            IdempotencyItem(key).update(actions=actions, condition=self._held(until))
        except UpdateError as exc:
            if exc.cause_response_code == "ConditionalCheckFailedException":
                return False
            raise
        return True

    # -- usage: predictions made in a time range, per user (the monthly report)
    def count_predictions(
        self, start: datetime, end: datetime, page_size: int | None = None, segments: int = 1
    ) -> PredictionCount:
        """Predictions created in [start, end) per user: a Scan of the whole table (the key is
        per user; no index spans users), filtered on the ULID range of the time range and
        projected to ``user_id``, every page followed. ``segments`` > 1 scans in parallel."""
        lo, hi = _ulid_floor(start), _ulid_floor(end)
        conn = PredictionItem._get_connection().connection
        _ = conn.client  # created once here, shared by the segments' threads
        request: dict[str, Any] = {
            "TableName": PredictionItem.Meta.table_name,
            "ProjectionExpression": "#u",
            "FilterExpression": "#p >= :lo AND #p < :hi",
            "ExpressionAttributeNames": {"#u": "user_id", "#p": "prediction_id"},
            "ExpressionAttributeValues": {":lo": {"S": lo}, ":hi": {"S": hi}},
        }
        if page_size:
            request["Limit"] = page_size

        def scan(segment: int) -> PredictionCount:
            found = PredictionCount({}, 0, 0)
            req = dict(request, Segment=segment, TotalSegments=segments) if segments > 1 else dict(request)
            while True:
                page = conn.dispatch("Scan", dict(req))
                found.pages += 1
                found.scanned += int(page.get("ScannedCount", 0))
                for item in page.get("Items", []):
                    user = item["user_id"]["S"]
                    found.per_user[user] = found.per_user.get(user, 0) + 1
                if not page.get("LastEvaluatedKey"):
                    return found
                req["ExclusiveStartKey"] = page["LastEvaluatedKey"]

        if segments <= 1:
            return scan(0)
        from concurrent.futures import ThreadPoolExecutor

        total = PredictionCount({}, 0, 0)
        with ThreadPoolExecutor(max_workers=segments, thread_name_prefix="scan") as pool:
            for part in pool.map(scan, range(segments)):
                total.pages += part.pages
                total.scanned += part.scanned
                for user, n in part.per_user.items():
                    total.per_user[user] = total.per_user.get(user, 0) + n
        return total

    # -- health: one key read per table, the cheapest call that proves reachability
    def prepare(self) -> None:
        """Create the botocore clients of the checked tables in this thread (once)."""
        for model in (PredictionItem, CacheItem):
            _ = model._get_connection().connection.client

    def ping_database(self) -> None:
        with contextlib.suppress(DoesNotExist):
            PredictionItem.get(_HEALTH_KEY, _HEALTH_KEY)

    def ping_cache(self) -> None:
        with contextlib.suppress(DoesNotExist):
            CacheItem.get(_HEALTH_KEY)
