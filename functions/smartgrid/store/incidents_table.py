"""Data access for incidents: the incidents table (``IncidentItem``), the escalation
levels' SNS topics, the chat webhook's URL in SSM and the webhook itself (urllib, 5 s timeout).

Items (one table, hash key ``pk``):
- ``INC#<incident id>``: the incident, kept after it is resolved (TTL ``expires_at``, 400 days);
- ``OPEN#<alarm name>``: the alarm's open incident (a copy of it as opened), put first and
  conditionally (``attribute_not_exists(pk)``): of two invocations racing to open an incident
  for one alarm, one wins; then the ``INC#`` item is written (restored from the marker if an
  invocation died in between). Deleted when the incident is resolved;
- ``SEQ#<YYYY-MM-DD>``: the day's counter, incremented atomically (UpdateItem ``ADD``), so
  concurrent alarms never share a number.

Every AWS failure raises ``DependencyUnavailableError`` (the notifier's invocation fails, Lambda
retries it, then dead-letters the event)."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pynamodb.exceptions import PutError, PynamoDBException, UpdateError

from smartgrid.config import Settings
from smartgrid.errors import DependencyUnavailableError
from smartgrid.observability import logger
from smartgrid.store.aws import client
from smartgrid.store.notify import clean_message, clean_subject
from smartgrid.store.tables import IncidentItem, bind

RETENTION_DAYS = 400
WEBHOOK_TIMEOUT_S = 5.0
OPEN, RESOLVED = "OPEN", "RESOLVED"


@dataclass
class Incident:
    incident_id: str
    alarm_name: str
    alert_id: str | None  # None: the alarm is not in the alert table
    severity: str
    level: str
    detected_at: datetime
    description: str = ""
    status: str = OPEN
    resolved_at: datetime | None = None
    sent: set[str] = field(default_factory=set)  # deliveries done ("open:sns", "resolved:chat", ...)
    owner: str | None = None  # the invocation delivering the notices (a Lambda request id)
    owner_until: float = 0.0  # epoch seconds; after it another invocation may take over

    @property
    def duration(self) -> timedelta | None:
        return None if self.resolved_at is None else self.resolved_at - self.detected_at


_bound: list[Settings] = []
_lock = threading.Lock()


def _bind(settings: Settings) -> None:
    with _lock:
        if not _bound or _bound[0] is not settings:
            bind(settings)
            _bound[:] = [settings]


def _expires(at: datetime) -> datetime:
    return at + timedelta(days=RETENTION_DAYS)


def _incident(item: IncidentItem) -> Incident:
    assert item.incident_id and item.alarm_name and item.severity and item.level and item.detected_at
    return Incident(
        incident_id=item.incident_id,
        alarm_name=item.alarm_name,
        alert_id=item.alert_id,
        severity=item.severity,
        level=item.level,
        detected_at=item.detected_at,
        description=item.description or "",
        status=item.status or OPEN,
        resolved_at=item.resolved_at,
        sent=set(item.sent or ()),
        owner=item.owner,
        owner_until=float(item.owner_until or 0),
    )


def _unavailable(what: str, exc: Exception) -> DependencyUnavailableError:
    logger.exception(f"incidents: {what} failed")
    return DependencyUnavailableError(f"incidents table ({what}): {exc}")


def next_number(settings: Settings, day: str) -> int:
    """The day's next incident number (1, 2, ...): an atomic counter, one per UTC day."""
    _bind(settings)
    item = IncidentItem(f"SEQ#{day}")
    try:
        item.update(
            actions=[
                IncidentItem.counter.add(1),
                IncidentItem.expires_at.set(_expires(datetime.fromisoformat(day).replace(tzinfo=UTC))),
            ]
        )
    except PynamoDBException as exc:
        raise _unavailable("counter", exc) from exc
    return int(item.counter or 0)


def _item(pk: str, incident: Incident) -> IncidentItem:
    return IncidentItem(
        pk,
        incident_id=incident.incident_id,
        alarm_name=incident.alarm_name,
        alert_id=incident.alert_id,
        severity=incident.severity,
        level=incident.level,
        status=incident.status,
        detected_at=incident.detected_at,
        resolved_at=incident.resolved_at,
        description=incident.description,
        sent=incident.sent or None,
        owner=incident.owner,
        owner_until=incident.owner_until,
        expires_at=_expires(incident.detected_at),
    )


def _get(pk: str) -> IncidentItem | None:
    try:
        return IncidentItem.get(pk, consistent_read=True)
    except IncidentItem.DoesNotExist:
        return None
    except PynamoDBException as exc:
        raise _unavailable("read", exc) from exc


def open_incident(settings: Settings, alarm_name: str) -> Incident | None:
    """The alarm's open incident (resolved but not yet fully notified counts as open), if any."""
    _bind(settings)
    marker = _get(f"OPEN#{alarm_name}")
    if marker is None or not marker.incident_id:
        return None
    item = _get(f"INC#{marker.incident_id}")
    if item is not None:
        return _incident(item)
    # The invocation that opened it died before writing the incident: write it from the marker.
    restored = _incident(marker)
    try:
        _item(f"INC#{restored.incident_id}", restored).save(condition=IncidentItem.pk.does_not_exist())
    except PutError as exc:
        if exc.cause_response_code != "ConditionalCheckFailedException":
            raise _unavailable("restore incident", exc) from exc
        item = _get(f"INC#{restored.incident_id}")
        return _incident(item) if item is not None else restored
    return restored


def create(settings: Settings, incident: Incident) -> bool:
    """Open the incident: its alarm's OPEN marker (conditionally), then the incident. False,
    with nothing written, when the alarm already has an open incident."""
    _bind(settings)
    try:
        _item(f"OPEN#{incident.alarm_name}", incident).save(condition=IncidentItem.pk.does_not_exist())
    except PutError as exc:
        if exc.cause_response_code == "ConditionalCheckFailedException":
            return False
        raise _unavailable("open incident", exc) from exc
    try:
        _item(f"INC#{incident.incident_id}", incident).save()
    except PynamoDBException as exc:  # the retry restores it from the marker
        raise _unavailable("write incident", exc) from exc
    return True


def claim(settings: Settings, incident: Incident, owner: str, until: float) -> bool:
    """Take over delivering the incident's notices from ``incident.owner`` (whose lease ran
    out); False if someone else took it first."""
    _bind(settings)
    previous = incident.owner
    cond = IncidentItem.owner.does_not_exist() if previous is None else IncidentItem.owner == previous
    try:
        IncidentItem(f"INC#{incident.incident_id}").update(
            actions=[IncidentItem.owner.set(owner), IncidentItem.owner_until.set(until)], condition=cond
        )
    except UpdateError as exc:
        if exc.cause_response_code == "ConditionalCheckFailedException":
            return False
        raise _unavailable("claim incident", exc) from exc
    incident.owner, incident.owner_until = owner, until
    return True


def mark_sent(settings: Settings, incident_id: str, delivery: str) -> None:
    """Record one delivery done (``<phase>:<channel>``), so a retry does not repeat it."""
    _bind(settings)
    try:
        IncidentItem(f"INC#{incident_id}").update(actions=[IncidentItem.sent.add({delivery})])
    except PynamoDBException as exc:
        raise _unavailable("record delivery", exc) from exc


def resolve(settings: Settings, incident_id: str, resolved_at: datetime, owner: str, until: float) -> bool:
    """Mark the incident resolved, once (a retry keeps the first resolution time), ``owner``
    delivering its RESOLVED notice; False when it was resolved already."""
    _bind(settings)
    try:
        IncidentItem(f"INC#{incident_id}").update(
            actions=[
                IncidentItem.status.set(RESOLVED),
                IncidentItem.resolved_at.set(resolved_at),
                IncidentItem.owner.set(owner),
                IncidentItem.owner_until.set(until),
            ],
            condition=IncidentItem.pk.exists() & (IncidentItem.status == OPEN),
        )
    except PynamoDBException as exc:
        if getattr(exc, "cause_response_code", None) == "ConditionalCheckFailedException":
            return False
        raise _unavailable("resolve incident", exc) from exc
    return True


def close_marker(settings: Settings, alarm_name: str, incident_id: str) -> None:
    """Delete the alarm's OPEN marker if it still names this incident."""
    _bind(settings)
    try:
        IncidentItem(f"OPEN#{alarm_name}").delete(condition=IncidentItem.incident_id == incident_id)
    except PynamoDBException as exc:
        if getattr(exc, "cause_response_code", None) == "ConditionalCheckFailedException":
            return
        raise _unavailable("close open marker", exc) from exc


def incidents(settings: Settings, only_open: bool = False) -> list[Incident]:
    """Every incident (a paginated Scan; pynamodb follows LastEvaluatedKey), newest first."""
    _bind(settings)
    cond = IncidentItem.pk.startswith("INC#")
    if only_open:
        cond = cond & (IncidentItem.status == OPEN)
    try:
        found = [_incident(i) for i in IncidentItem.scan(cond, consistent_read=True)]
    except PynamoDBException as exc:
        raise _unavailable("list incidents", exc) from exc
    return sorted(found, key=lambda i: (i.detected_at, i.incident_id), reverse=True)


# ------------------------------------------------------------------ delivery
def publish(settings: Settings, level: str, subject: str, message: str) -> str:
    """Publish to the escalation level's topic. No topic for the level is a deployment error:
    it raises (the event is retried, then dead-lettered, whose alarm goes straight to people)."""
    topic = settings.alert_topics.get(level)
    if not topic:
        raise DependencyUnavailableError(
            f"no SNS topic for escalation level {level} (SMARTGRID_ALERT_TOPICS has {sorted(settings.alert_topics)})"
        )
    try:
        response = client("sns", settings).publish(
            TopicArn=topic, Subject=clean_subject(subject), Message=clean_message(message)
        )
    except Exception as exc:  # botocore ClientError, endpoint errors
        logger.exception("incident notice: SNS publish failed", extra={"escalation_level": level, "topic": topic})
        raise DependencyUnavailableError(f"SNS publish to {topic} failed: {exc}") from exc
    message_id: str = response["MessageId"]
    logger.info("incident notice published", extra={"escalation_level": level, "topic": topic, "id": message_id})
    return message_id


_webhook_cache: dict[tuple[str, str | None], str] = {}


def webhook_url(settings: Settings) -> str | None:
    """The chat webhook's URL from its SSM SecureString parameter (decrypted), read once per
    container; None when no parameter is configured."""
    name = settings.chat_webhook_parameter
    if not name:
        return None
    key = (name, settings.aws_endpoint_url)
    if key not in _webhook_cache:
        try:
            value = client("ssm", settings).get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
        except Exception as exc:
            logger.exception("chat webhook: reading the SSM parameter failed", extra={"parameter": name})
            raise DependencyUnavailableError(f"SSM parameter {name}: {exc}") from exc
        _webhook_cache[key] = str(value).strip()
    return _webhook_cache[key]


def forget_webhook_url() -> None:
    """Drop the cached URL (tests; a rotated webhook is picked up by new containers)."""
    _webhook_cache.clear()


def post_webhook(url: str, text: str, timeout_s: float = WEBHOOK_TIMEOUT_S) -> None:
    """POST ``{"text": text}`` as JSON; anything but a 2xx within the timeout raises."""
    if not url.startswith(("https://", "http://")):
        raise DependencyUnavailableError("chat webhook URL is not an http(s) URL (check the SSM parameter)")
    body = json.dumps({"text": text}).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        logger.exception("chat webhook: POST failed")
        raise DependencyUnavailableError(f"chat webhook POST failed: {exc}") from exc
    if not 200 <= status < 300:
        logger.error("chat webhook: refused", extra={"status": status})
        raise DependencyUnavailableError(f"chat webhook answered HTTP {status}")
    logger.info("chat webhook: posted", extra={"status": status})
