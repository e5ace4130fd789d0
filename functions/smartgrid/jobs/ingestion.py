"""Ingestion handler: EventBridge's S3 "Object Created" events for the meter-data bucket's
``incoming/`` prefix. Bad data is an outcome (the file is moved to ``rejected/`` with a
report); an AWS failure raises, so the event is retried and, in the end, dead-lettered."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.data_classes import S3EventBridgeNotificationEvent

from smartgrid.catalog import INGESTION
from smartgrid.config import Settings, get_settings
from smartgrid.domain.ingestion import Ingestor, MeterObject, build_ingestor
from smartgrid.jobs.runner import job

_ingestor: tuple[Settings, Ingestor] | None = None


def ingestor(settings: Settings) -> Ingestor:
    """One per container (the models load once), rebuilt if the settings change (tests)."""
    global _ingestor
    if _ingestor is None or _ingestor[0] is not settings:
        _ingestor = (settings, build_ingestor(settings))
    return _ingestor[1]


def meter_object(event: dict[str, Any], owner: str | None = None) -> MeterObject:
    """The object an EventBridge S3 event names (its key URL-decoded, as S3 encodes it).

    ``owner`` owns the file's ingestion claim: the Lambda invocation's ``aws_request_id``.
    Lambda keeps it across its own retries of one asynchronous invocation, so a retry takes
    over its crashed predecessor's claim at once; a duplicate EventBridge delivery of the
    same event (same event id) is a NEW invocation with a new request id, so it cannot take
    over a claim that is still held and waits (``in_progress``). Without one (a direct call),
    a fresh id: never the same as anyone else's."""
    if event.get("source") != "aws.s3" or event.get("detail-type") != "Object Created":
        raise ValueError(
            f"not an S3 'Object Created' event: source {event.get('source')!r}, "
            f"detail-type {event.get('detail-type')!r}"
        )
    s3 = S3EventBridgeNotificationEvent(event)
    who = {"owner": owner} if owner else {}
    try:
        obj = s3.detail.object
        return MeterObject(s3.detail.bucket.name, obj.key, obj.etag or None, obj.size, **who)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"the S3 event lacks detail.bucket.name or detail.object.key ({exc!r})") from exc


@job(INGESTION)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    settings = get_settings()
    owner = getattr(context, "aws_request_id", None)
    return ingestor(settings).ingest(meter_object(event, str(owner) if owner else None)).to_dict()
