"""DynamoDB tables as pynamodb models: the one definition used by the code, the tests and
the local run (``create_tables``).

Access patterns, all by key (no scans):
- predictions: ``user_id`` + ``prediction_id`` (a ULID, so time-ordered): a client's
  predictions newest first since a time (Query, descending, range key >= the time's ULID
  floor), and one prediction by id for /actuals (GetItem; the key also proves ownership).
- actuals: one item per prediction (same key), merged under optimistic locking.
- cache: forecast outputs by inputs digest, expiring after five minutes.
- idempotency: one item per (user, Idempotency-Key).
Every table has a TTL attribute ``expires_at``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pynamodb.attributes import (
    JSONAttribute,
    ListAttribute,
    NumberAttribute,
    TTLAttribute,
    UnicodeAttribute,
    UnicodeSetAttribute,
    UTCDateTimeAttribute,
    VersionAttribute,
)
from pynamodb.models import Model

from smartgrid.config import Settings


def _default(setting: str) -> str:
    """A setting's default (names are defined once, in ``Settings``; ``bind`` applies the
    configured values before any call)."""
    value: str = Settings.model_fields[setting].default
    return value


class _Base(Model):
    class Meta:
        abstract = True
        table_name = ""
        region = _default("aws_region")
        host: str | None = None


class PredictionItem(_Base):
    class Meta(_Base.Meta):
        table_name = _default("predictions_table")

    user_id = UnicodeAttribute(hash_key=True)
    prediction_id = UnicodeAttribute(range_key=True)
    created_at = UTCDateTimeAttribute()
    inputs_digest = UnicodeAttribute()
    model = UnicodeAttribute()
    model_version = UnicodeAttribute()
    fallback_reason = UnicodeAttribute(null=True)
    resolution_minutes = NumberAttribute()
    source = UnicodeAttribute()  # "computed" or "cache"
    site_id = UnicodeAttribute(null=True)
    idempotency_key = UnicodeAttribute(null=True)
    forecast = JSONAttribute()  # {"timestamps": [...], "p10": [...], "p50": [...], "p90": [...]}
    expires_at = TTLAttribute()


class ActualsItem(_Base):
    class Meta(_Base.Meta):
        table_name = _default("actuals_table")

    user_id = UnicodeAttribute(hash_key=True)
    prediction_id = UnicodeAttribute(range_key=True)
    updated_at = UTCDateTimeAttribute()
    actuals = JSONAttribute()  # {timestamp: measured load}
    version = VersionAttribute()
    expires_at = TTLAttribute()


class CacheItem(_Base):
    class Meta(_Base.Meta):
        table_name = _default("cache_table")

    key = UnicodeAttribute(hash_key=True)
    value = JSONAttribute()
    valid_until = NumberAttribute()  # epoch seconds; TTL deletion is lazy, reads check this
    expires_at = TTLAttribute()


class IdempotencyItem(_Base):
    class Meta(_Base.Meta):
        table_name = _default("idempotency_table")

    key = UnicodeAttribute(hash_key=True)  # "<user_id>#<Idempotency-Key>"
    status = UnicodeAttribute()  # IN_PROGRESS | COMPLETED
    request_digest = UnicodeAttribute()
    prediction_ids = ListAttribute(of=UnicodeAttribute)
    errors = JSONAttribute(null=True)  # indexes of the items that failed validation (recomputed on replay)
    created_at = UTCDateTimeAttribute()  # the first attempt's time: its predictions' created_at
    in_progress_until = NumberAttribute()  # also identifies the attempt that holds the claim
    expires_at = TTLAttribute()


class IncidentItem(_Base):
    """Incidents, one table, items told apart by ``pk``:
    ``INC#<incident id>`` the incident; ``OPEN#<alarm name>`` the marker of the alarm's open
    incident (a copy of it as opened; put conditionally, so one alarm has at most one open incident);
    ``SEQ#<YYYY-MM-DD>`` the day's incident counter (UpdateItem ADD)."""

    class Meta(_Base.Meta):
        table_name = _default("incidents_table")

    pk = UnicodeAttribute(hash_key=True)
    incident_id = UnicodeAttribute(null=True)
    alarm_name = UnicodeAttribute(null=True)
    alert_id = UnicodeAttribute(null=True)  # None: not in the alert table
    severity = UnicodeAttribute(null=True)
    level = UnicodeAttribute(null=True)
    status = UnicodeAttribute(null=True)  # OPEN | RESOLVED
    detected_at = UTCDateTimeAttribute(null=True)
    resolved_at = UTCDateTimeAttribute(null=True)
    description = UnicodeAttribute(null=True)
    sent = UnicodeSetAttribute(null=True)  # deliveries done: "open:sns", "open:chat", "resolved:sns", ...
    owner = UnicodeAttribute(null=True)  # the Lambda request delivering its notices (kept across Lambda's retries)
    owner_until = NumberAttribute(null=True)  # epoch seconds: another invocation may take over after this
    counter = NumberAttribute(null=True)  # SEQ items
    expires_at = TTLAttribute(null=True)


TABLES: dict[str, type[_Base]] = {
    "predictions_table": PredictionItem,
    "actuals_table": ActualsItem,
    "cache_table": CacheItem,
    "idempotency_table": IdempotencyItem,
    "incidents_table": IncidentItem,
}


@dataclass(frozen=True)
class TableShape:
    """What the CDK app needs to create a table like the model: keys with their DynamoDB
    types, and the TTL attribute."""

    setting: str  # the Settings field (and so the environment variable) naming the table
    hash_key: tuple[str, str]
    range_key: tuple[str, str] | None
    ttl_attribute: str | None


def table_shapes() -> list[TableShape]:
    shapes = []
    for setting, model in TABLES.items():
        attrs = model.get_attributes()
        hash_name = model._hash_keyname
        range_name = model._range_keyname
        assert hash_name is not None, f"{model.__name__} has no hash key"
        ttl = [a.attr_name for a in attrs.values() if isinstance(a, TTLAttribute)]
        shapes.append(
            TableShape(
                setting=setting,
                hash_key=(attrs[hash_name].attr_name, attrs[hash_name].attr_type),
                range_key=(attrs[range_name].attr_name, attrs[range_name].attr_type) if range_name else None,
                ttl_attribute=ttl[0] if ttl else None,
            )
        )
    return shapes


def bind(settings: Settings) -> None:
    """Point every model at the configured tables, region and endpoint (AWS_ENDPOINT_URL)."""
    for setting, model in TABLES.items():
        meta: Any = model.Meta
        meta.table_name = getattr(settings, setting)
        meta.region = settings.aws_region
        meta.host = settings.aws_endpoint_url
        meta.connect_timeout_seconds = settings.dynamodb_connect_timeout_s
        meta.read_timeout_seconds = settings.dynamodb_read_timeout_s
        meta.max_retry_attempts = settings.dynamodb_max_retries
        model._connection = None  # pynamodb caches the connection per model class
    _share_session()


def _share_session() -> None:
    """One botocore session for all the tables. pynamodb opens a session per model class, and
    each new session loads the DynamoDB service model again: about 0.15 s of CPU per table on
    a cold start here; clients of one session share that work. (pynamodb keeps the session in
    a thread-local; threads of their own, such as the health checks, still open theirs.)"""
    import botocore.session

    shared = botocore.session.get_session()
    for model in TABLES.values():
        local = getattr(model._get_connection().connection, "_local", None)
        if local is not None:
            local.session = shared


def create_tables(settings: Settings) -> list[str]:
    """Create the tables that do not exist yet (local run, tests), from these definitions.
    In AWS the CDK app creates them."""
    bind(settings)
    created = []
    for model in TABLES.values():
        if not model.exists():
            model.create_table(billing_mode="PAY_PER_REQUEST", wait=True)
            created.append(model.Meta.table_name)
    return created
