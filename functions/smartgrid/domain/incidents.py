"""Incidents: CloudWatch alarm state changes become incident notices in the INCIDENT
NOTIFICATION TEMPLATE of docs/requirements.md#incidents, sent to the alarm's escalation level.

- ALARM: the alarm's alert (``catalog.ALERTS``, by the alarm name's ``-<alert id>`` suffix)
  gives severity, level and description. An alarm that already has an open incident is a
  duplicate: no new incident, no new notice (logged, counted). Otherwise an incident
  ``INC-YYYY-MM-DD-NNN`` is opened (the UTC day it was detected, numbered by an atomic
  per-day counter) and its notice sent.
- OK: the alarm's open incident is resolved (kept, with its resolution time) and a RESOLVED
  notice with the same id and the duration is sent. OK without an open incident: logged.
- INSUFFICIENT_DATA: no incident and no notice, only a log line. CloudWatch cannot tell what
  it does not see; an alarm whose missing data means trouble (``api-down``, ``backup-missing``)
  treats missing data as breaching and goes to ALARM instead, which is notified. An open
  incident stays open through INSUFFICIENT_DATA (only OK resolves it).

Delivery is at least once and never silent: every delivery (SNS, then the chat webhook when
one is configured) is recorded on the incident once done; a failed one raises, so Lambda
retries the event (then dead-letters it, and that queue's alarm goes straight to people). A
retry finds the incident it opened and sends what is missing, under the same id. Numbers can
have gaps (a lost race for one alarm, a crash between counter and write) but never repeat.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from smartgrid import catalog
from smartgrid.catalog import ALERTS, ESCALATION, Alert, Level, Severity
from smartgrid.config import PACKAGE_DIR, Settings
from smartgrid.errors import DataValidationError, Problem
from smartgrid.observability import logger, metrics
from smartgrid.store import incidents_table as store
from smartgrid.store.incidents_table import OPEN, RESOLVED, Incident

__all__ = ["AlarmChange", "Incident", "open_incidents", "parse_alarm", "parse_sns_event", "process"]

RULE = "━" * 42  # the template's rule (docs/requirements.md#incidents)
UNKNOWN_LEVEL = Level.L2
# How long the invocation that opened (or resolved) an incident has to deliver its notices
# before another may take over: above the notifier's timeout. Lambda's own retries keep the
# request id and take over at once.
DELIVERY_LEASE_S = catalog.NOTIFIER.timeout_s * 2
STATES = ("ALARM", "OK", "INSUFFICIENT_DATA")

# USERS_AFFECTED per alert: "All" when the API itself fails or slows for everyone.
USERS_AFFECTED: dict[str, str] = {
    "api-down": "All",
    "error-rate-critical": "All (a share of requests fail)",
    "error-rate-warning": "All (a share of requests fail)",
    "latency-p99-high": "All (slower responses)",
    "latency-p99-info": "All (slower responses)",
    "capacity-exhausted": "All (requests beyond capacity are throttled)",
    "concurrency-high": "All (little capacity left for bursts)",
    "api-throttled": "All (some requests were throttled)",
    "memory-high": "All (risk of out-of-memory failures)",
    "forecast-error-high": "Forecast users (accuracy degraded)",
    "backup-failed": "None directly (recovery point at risk)",
    "backup-missing": "None directly (recovery point at risk)",
    "retraining-failed": "None (the champion model keeps serving)",
    "ingestion-failed": "Meter-data owners (a file was not ingested)",
    "dead-letters": "Depends on the job (see the dead-letter queue)",
    "predictions-volume": "None (informational)",
}


# ------------------------------------------------------------------ input
@dataclass(frozen=True)
class AlarmChange:
    """One CloudWatch alarm state change, as the alarm's SNS notification carries it."""

    name: str
    description: str
    state: str  # ALARM | OK | INSUFFICIENT_DATA
    old_state: str
    reason: str
    changed_at: datetime  # StateChangeTime, UTC
    region: str
    account: str
    trigger: dict[str, Any] | None  # metric and metric-math alarms
    alarm_rule: str | None  # composite alarms

    @property
    def kind(self) -> str:
        if self.alarm_rule is not None or self.trigger is None:
            return "composite"
        return "metric-math" if self.trigger.get("Metrics") else "metric"


def _problem(message: str, field_name: str | None = None) -> DataValidationError:
    problem = Problem("bad_alarm_notification", message, field_name=field_name)
    return DataValidationError([problem], "alarm notification")


def parse_time(text: str) -> datetime:
    """CloudWatch's StateChangeTime (``2026-11-28T14:23:45.123+0000``) as an aware UTC datetime."""
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)


def parse_alarm(message: str | dict[str, Any]) -> AlarmChange:
    """The alarm JSON of a CloudWatch notification (SNS ``Message``)."""
    try:
        doc = json.loads(message) if isinstance(message, str) else message
    except json.JSONDecodeError as exc:
        raise _problem(f"SNS message is not JSON ({exc}): {str(message)[:200]!r}") from exc
    if not isinstance(doc, dict):
        raise _problem("SNS message is not a JSON object")
    missing = [k for k in ("AlarmName", "NewStateValue", "StateChangeTime") if not doc.get(k)]
    if missing:
        raise _problem(f"not a CloudWatch alarm notification: missing {', '.join(missing)}", missing[0])
    state = str(doc["NewStateValue"])
    if state not in STATES:
        raise _problem(f"NewStateValue {state!r} is not one of {', '.join(STATES)}", "NewStateValue")
    try:
        changed_at = parse_time(str(doc["StateChangeTime"]))
    except ValueError as exc:
        raise _problem(f"StateChangeTime {doc['StateChangeTime']!r} is not a time: {exc}", "StateChangeTime") from exc
    trigger = doc.get("Trigger")
    return AlarmChange(
        name=str(doc["AlarmName"]),
        description=str(doc.get("AlarmDescription") or ""),
        state=state,
        old_state=str(doc.get("OldStateValue") or ""),
        reason=str(doc.get("NewStateReason") or ""),
        changed_at=changed_at,
        region=str(doc.get("Region") or ""),
        account=str(doc.get("AWSAccountId") or ""),
        trigger=trigger if isinstance(trigger, dict) else None,
        alarm_rule=str(doc["AlarmRule"]) if doc.get("AlarmRule") else None,
    )


def parse_sns_event(event: dict[str, Any]) -> list[AlarmChange]:
    """The alarm changes of an SNS event (``Records[].Sns.Message``)."""
    records = event.get("Records") if isinstance(event, dict) else None
    if not isinstance(records, list) or not records:
        raise _problem("not an SNS event: no Records")
    changes = []
    for i, record in enumerate(records):
        sns = record.get("Sns") if isinstance(record, dict) else None
        if record.get("EventSource") != "aws:sns" or not isinstance(sns, dict) or "Message" not in sns:
            raise _problem(f"record {i} is not an SNS notification (EventSource {record.get('EventSource')!r})")
        changes.append(parse_alarm(sns["Message"]))
    return changes


# ------------------------------------------------------------------ classification
def find_alert(alarm_name: str) -> Alert | None:
    """The alert an alarm named ``<prefix>-<alert id>`` watches (the longest matching id)."""
    matches = [a for a in ALERTS if alarm_name == a.id or alarm_name.endswith(f"-{a.id}")]
    return max(matches, key=lambda a: len(a.id)) if matches else None


def classify(change: AlarmChange) -> tuple[Alert | None, Severity, Level]:
    alert = find_alert(change.name)
    if alert is not None:
        return alert, alert.severity, alert.level
    m = re.match(r"\s*\[(CRITICAL|WARNING|INFO)\]", change.description, re.IGNORECASE)
    return None, Severity(m.group(1).upper()) if m else Severity.WARNING, UNKNOWN_LEVEL


# ------------------------------------------------------------------ plain words
_COMPARE = {
    "GreaterThanThreshold": "above",
    "GreaterThanOrEqualToThreshold": "at or above",
    "LessThanThreshold": "below",
    "LessThanOrEqualToThreshold": "at or below",
    "LessThanLowerOrGreaterThanUpperThreshold": "outside the band",
    "GreaterThanUpperThreshold": "above the band",
    "LessThanLowerThreshold": "below the band",
}
_DATAPOINT = re.compile(r"(-?[\d.]+(?:[eE][-+]?\d+)?)\s*\((\d{2}/\d{2}/\d{2} \d{2}:\d{2}:\d{2})\)")


def latest_datapoint(reason: str) -> tuple[float, datetime] | None:
    """The most recent datapoint CloudWatch quotes in NewStateReason
    (``[0.07 (28/11/26 14:23:00), ...]``; its dates are dd/mm/yy, UTC)."""
    points = []
    for value, when in _DATAPOINT.findall(reason):
        try:
            points.append((float(value), datetime.strptime(when, "%d/%m/%y %H:%M:%S").replace(tzinfo=UTC)))
        except ValueError:
            continue
    return max(points, key=lambda p: p[1]) if points else None


def _num(value: float, unit: str = "") -> str:
    text = f"{value:.4g}" if abs(value) < 1e6 else f"{value:,.0f}"
    return f"{text}{'' if not unit else unit if unit == '%' else ' ' + unit}"


def _metric_words(trigger: dict[str, Any]) -> str:
    if trigger.get("Metrics"):
        returned = [m for m in trigger["Metrics"] if m.get("ReturnData", True) and m.get("Expression")]
        if returned:
            m = returned[0]
            return f"{m.get('Label') or 'the metric expression'} ({m['Expression']})"
        return "the alarm's metric expression"
    stat = trigger.get("Statistic") or trigger.get("ExtendedStatistic") or ""
    name = trigger.get("MetricName") or "the metric"
    return f"{name} ({str(stat).lower() if stat else 'value'})"


def describe(change: AlarmChange, alert: Alert | None) -> str:
    """DESCRIPTION: what the alert means, then what crossed which threshold with the value."""
    lines = []
    if alert is not None:
        lines.append(alert.description[:1].upper() + alert.description[1:] + ".")
    else:
        text = re.sub(r"^\s*\[(CRITICAL|WARNING|INFO)\]\s*", "", change.description, flags=re.IGNORECASE)
        lines.append(
            f"Alarm {change.name} is not in the alert table (no runbook entry)"
            + (f": {text.rstrip('.')}." if text else ".")
        )
    unit = alert.unit if alert else ""
    point = latest_datapoint(change.reason)
    trigger = change.trigger
    if change.kind == "composite":
        lines.append(f"Composite alarm rule: {change.alarm_rule or '(not given)'}.")
        lines.append(f"CloudWatch says: {change.reason or '(no reason given)'}")
    elif point is not None and trigger is not None:
        value, at = point
        compare = _COMPARE.get(str(trigger.get("ComparisonOperator")), "beyond")
        threshold = trigger.get("Threshold")
        m = re.search(r"threshold \(([-\d.eE+]+)\)", change.reason)
        if threshold is None and m:
            threshold = float(m.group(1))
        words = f"{_metric_words(trigger)} was {_num(value, unit)} at {at:%H:%M} UTC"
        if threshold is not None:
            words += f", {compare} the threshold of {_num(float(threshold), unit)}"
        count = re.search(r"(\d+) out of the last (\d+) datapoints", change.reason)
        if count:
            words += f" ({count.group(1)} of the last {count.group(2)} datapoints)"
        lines.append(words[:1].upper() + words[1:] + ".")
    else:
        lines.append(f"CloudWatch says: {change.reason or '(no reason given)'}")
    return "\n".join(lines)


def human_duration(delta: timedelta) -> str:
    """'45 seconds', '1 minute', '5 minutes', '2 hours 3 minutes', '1 day 4 hours'."""
    seconds = max(0, round(delta.total_seconds()))
    if seconds < 60:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    minutes = round(seconds / 60)
    days, rest = divmod(minutes, 1440)
    hours, mins = divmod(rest, 60)
    parts = [(days, "day"), (hours, "hour"), (mins, "minute")]
    return " ".join(f"{n} {word}{'s' if n != 1 else ''}" for n, word in parts if n) or "0 minutes"


def _utc(at: datetime) -> str:
    return f"{at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def runbook_link(settings: Settings, alert_id: str | None) -> str:
    return f"{settings.runbook_url}#{alert_id}" if alert_id else settings.runbook_url


# docs/runbook.md, shipped in the package (a symlink the CDK asset follows), so that a deployed
# notifier can quote the first steps whatever `runbook_url` links to.
PACKAGED_RUNBOOK = PACKAGE_DIR / "runbook.md"


def _runbook_file(settings: Settings) -> str:
    """``runbook_url`` when it is a readable local file (the local run, tests), else the
    packaged copy."""
    url = settings.runbook_url
    return url if "://" not in url and Path(url).is_file() else str(PACKAGED_RUNBOOK)


def runbook_steps(runbook: str, alert_id: str, limit: int = 3) -> list[str]:
    """The first bullet lines of the ``## <alert id>`` section's "Mitigate" / "First steps"
    list, when the runbook is a readable local file; [] otherwise (never fails)."""
    try:
        path = Path(runbook)
        if "://" in runbook or not path.is_file():
            return []
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError):
        return []
    heading = re.compile(rf"^##\s+`?{re.escape(alert_id)}`?(\s|$|:)")
    start = next((i for i, line in enumerate(lines) if heading.match(line)), None)
    if start is None:
        return []
    section = []
    for line in lines[start + 1 :]:
        if re.match(r"^#{1,2}\s", line):
            break
        section.append(line)
    bullet = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+(.*\S)")
    steps: list[str] = []
    in_list = False
    for line in section:
        title = line.strip()
        is_title = title.startswith(("#", "**")) or title.endswith(":")
        if is_title and re.search(r"\b(mitigat\w*|first steps)\b", title, re.IGNORECASE):
            in_list = True
            continue
        if in_list:
            if line.lstrip().startswith("#") or (steps and line.strip() and not bullet.match(line)):
                break
            m = bullet.match(line)
            if m:
                steps.append(m.group(1))
                if len(steps) == limit:
                    break
    return steps


# ------------------------------------------------------------------ notices
@dataclass(frozen=True)
class Notice:
    level: str
    subject: str
    text: str


def _subject(tag: str, severity: str, settings: Settings, symptom: str, incident_id: str) -> str:
    head, tail = f"{tag}[{severity}] {settings.service_display_name}: ", f" ({incident_id})"
    room = 100 - len(head) - len(tail)
    if len(symptom) > room:
        symptom = symptom[: max(room - 3, 1)] + "..."
    return head + symptom + tail


def _escalation(level: str) -> str:
    esc = ESCALATION.get(Level(level)) if level in {lv.value for lv in Level} else None
    return f"{level}" if esc is None else f"{level} {esc.name}: {esc.who}, respond within {esc.response}"


def _details(change: AlarmChange, alert: Alert | None, settings: Settings) -> list[str]:
    lines = [
        "",
        "DETAILS:",
        f"- Alarm: {change.name} ({change.kind}; {change.old_state or '?'} -> {change.state})",
        f"- Region/account: {change.region or '?'} / {change.account or '?'}",
    ]
    if alert is not None and alert.requirement != "serverless":
        lines.append(f"- Manual's alert row: {alert.requirement}")
    elif alert is None:
        lines.append("- Not in the alert table: severity from its description, else WARNING; routed to L2")
    lines.append(f"- CloudWatch reason: {change.reason or '(none)'}")
    return lines


def _head(incident: Incident, alert: Alert | None, settings: Settings, duration: str) -> list[str]:
    """The template from its title to ACTIONS_TAKEN, the same for opening and resolving."""
    return [
        "INCIDENT NOTIFICATION",
        RULE,
        f"INCIDENT_ID: {incident.incident_id}",
        f"SEVERITY: {incident.severity.title()} (escalation {_escalation(incident.level)})",
        f"SERVICE: {settings.service_display_name}",
        f"TIME_DETECTED: {_utc(incident.detected_at)}",
        f"DURATION: {duration}",
        f"USERS_AFFECTED: {USERS_AFFECTED.get(alert.id, 'Unknown') if alert else 'Unknown'}",
        "",
        "DESCRIPTION:",
        incident.description,
        "",
        "ROOT_CAUSE: (to be determined)",
        "",
        "ACTIONS_TAKEN:",
    ]


def render_open(incident: Incident, change: AlarmChange, alert: Alert | None, settings: Settings) -> Notice:
    steps = runbook_steps(_runbook_file(settings), alert.id) if alert else []
    first_steps = [f"{i}. {s}" for i, s in enumerate(steps, 1)] or ["1. Follow the runbook section linked below"]
    if alert is not None and alert.requirement != "serverless" and " | " in alert.requirement:
        first_steps.append(f"{len(first_steps) + 1}. Manual's action: {alert.requirement.split(' | ', 1)[1]}")
    lines = [
        *_head(incident, alert, settings, "ongoing"),
        "(none yet)",
        "",
        "STATUS: Investigating",
        "RESOLUTION_TIME: (open)",
        "",
        "FIRST_STEPS:",
        *first_steps,
        f"RUNBOOK: {runbook_link(settings, alert.id if alert else None)}",
        "",
        "FOLLOW_UP:",
        f"- Acknowledge and investigate ({_escalation(incident.level)})",
        *_details(change, alert, settings),
    ]
    symptom = alert.id if alert else change.name
    subject = _subject("", incident.severity, settings, symptom, incident.incident_id)
    return Notice(incident.level, subject, "\n".join(lines) + "\n")


def follow_up(severity: str) -> list[str]:
    if severity == Severity.CRITICAL:
        return [
            "- Post-incident review to be scheduled (CRITICAL)",
            "- Root cause analysis to be completed",
            "- Preventive measures to be documented",
        ]
    if severity == Severity.WARNING:
        return ["- Root cause analysis to be completed", "- Preventive measures if it recurs"]
    return ["- None required (informational)"]


def render_resolved(incident: Incident, change: AlarmChange, alert: Alert | None, settings: Settings) -> Notice:
    resolved_at = incident.resolved_at or change.changed_at
    duration = human_duration(resolved_at - incident.detected_at)
    lines = [
        *_head(incident, alert, settings, duration),
        f"1. Recovery observed at {_utc(resolved_at)}: the alarm returned to OK",
        "",
        "STATUS: Resolved",
        f"RESOLUTION_TIME: {duration} (resolved {_utc(resolved_at)})",
        "",
        "FOLLOW_UP:",
        *follow_up(incident.severity),
        f"RUNBOOK: {runbook_link(settings, alert.id if alert else None)}",
        *_details(change, alert, settings),
    ]
    symptom = alert.id if alert else change.name
    subject = _subject("[RESOLVED] ", incident.severity, settings, symptom, incident.incident_id)
    return Notice(incident.level, subject, "\n".join(lines) + "\n")


# ------------------------------------------------------------------ decisions
def incident_id(day: datetime, number: int) -> str:
    return f"INC-{day.astimezone(UTC):%Y-%m-%d}-{number:03d}"


def _deliver(settings: Settings, incident: Incident, phase: str, notice: Notice) -> None:
    """SNS, then the chat webhook if configured; each recorded once done, so a retry only
    repeats what failed. A failure raises."""
    if f"{phase}:sns" not in incident.sent:
        store.publish(settings, notice.level, notice.subject, notice.text)
        store.mark_sent(settings, incident.incident_id, f"{phase}:sns")
        incident.sent.add(f"{phase}:sns")
    if settings.chat_webhook_parameter and f"{phase}:chat" not in incident.sent:
        url = store.webhook_url(settings)
        if url:
            store.post_webhook(url, notice.text)
            store.mark_sent(settings, incident.incident_id, f"{phase}:chat")
            incident.sent.add(f"{phase}:chat")


def _delivered(settings: Settings, incident: Incident, phase: str) -> bool:
    channels = ["sns"] + (["chat"] if settings.chat_webhook_parameter else [])
    return all(f"{phase}:{c}" in incident.sent for c in channels)


def _log(message: str, change: AlarmChange, **extra: Any) -> None:
    logger.info(message, extra={"alarm": change.name, "state": change.state, **extra})


def _count(name: str) -> None:
    metrics.add_metric(name=name, unit="Count", value=1)


def _lease(now: float | None = None) -> float:
    return (time.time() if now is None else now) + DELIVERY_LEASE_S


def _may_deliver(settings: Settings, incident: Incident, owner: str) -> bool:
    """Whether this invocation delivers the incident's missing notices: it owns them (Lambda's
    retry of the invocation that failed keeps its request id), or their owner's lease ran out
    and this one takes over. Otherwise another invocation is delivering them right now."""
    if incident.owner == owner:
        return True
    return incident.owner_until < time.time() and store.claim(settings, incident, owner, _lease())


def process(change: AlarmChange, settings: Settings, owner: str | None = None) -> str:
    """Act on one alarm state change; the outcome: ``opened``, ``renotified``, ``duplicate``,
    ``resolved``, ``ignored``. Delivery failures raise (``DependencyUnavailableError``).
    ``owner``: the Lambda request id (the same across Lambda's retries of one event)."""
    owner = owner or uuid.uuid4().hex
    if change.state == "ALARM":
        return _on_alarm(change, settings, owner)
    if change.state == "OK":
        return _on_ok(change, settings, owner)
    found = store.open_incident(settings, change.name)
    _log("insufficient data: no incident, no notice", change, open_incident=found.incident_id if found else None)
    return "ignored"


def _on_alarm(change: AlarmChange, settings: Settings, owner: str) -> str:
    alert, severity, level = classify(change)
    found = store.open_incident(settings, change.name)
    if found is None:
        number = store.next_number(settings, f"{change.changed_at:%Y-%m-%d}")
        incident = Incident(
            incident_id=incident_id(change.changed_at, number),
            alarm_name=change.name,
            alert_id=alert.id if alert else None,
            severity=severity.value,
            level=level.value,
            detected_at=change.changed_at,
            description=describe(change, alert),
            owner=owner,
            owner_until=_lease(),
        )
        if store.create(settings, incident):
            _count(catalog.INCIDENTS_OPENED_TOTAL)
            _log("incident opened", change, incident_id=incident.incident_id, severity=severity, escalation_level=level)
            _deliver(settings, incident, "open", render_open(incident, change, alert, settings))
            return "opened"
        found = store.open_incident(settings, change.name)  # another invocation opened it first
        if found is None:  # opened and resolved in between: nothing left to tell
            _log("incident opened and resolved concurrently; nothing to send", change)
            return "duplicate"
    if found.status == OPEN and not _delivered(settings, found, "open") and _may_deliver(settings, found, owner):
        # A retry of the invocation that opened the incident and failed to deliver its notice.
        _deliver(settings, found, "open", render_open(found, change, alert, settings))
        _log("incident notice re-sent", change, incident_id=found.incident_id)
        return "renotified"
    _count(catalog.NOTIFICATION_DUPLICATES_TOTAL)
    _log("duplicate alarm: incident already open, no notice", change, incident_id=found.incident_id)
    return "duplicate"


def _on_ok(change: AlarmChange, settings: Settings, owner: str) -> str:
    found = store.open_incident(settings, change.name)
    if found is None:
        _log("OK without an open incident: nothing to send", change)
        return "ignored"
    if change.changed_at < found.detected_at:
        _log("OK older than the open incident (out of order): ignored", change, incident_id=found.incident_id)
        return "ignored"
    alert, _, _ = classify(change)
    if found.status != RESOLVED:
        if store.resolve(settings, found.incident_id, change.changed_at, owner, _lease()):
            _count(catalog.INCIDENTS_RESOLVED_TOTAL)
        found = store.open_incident(settings, change.name) or found
    if not _delivered(settings, found, "resolved"):
        if not _may_deliver(settings, found, owner):
            _log("incident being resolved by another invocation", change, incident_id=found.incident_id)
            return "duplicate"
        _deliver(settings, found, "resolved", render_resolved(found, change, alert, settings))
    store.close_marker(settings, change.name, found.incident_id)
    duration = found.duration
    _log(
        "incident resolved",
        change,
        incident_id=found.incident_id,
        duration_s=duration.total_seconds() if duration else None,
    )
    return "resolved"


def handle_event(event: dict[str, Any], settings: Settings, owner: str | None = None) -> list[str]:
    """Every record of an SNS event; a record that fails does not stop the others, and the
    first failure is raised at the end (the retry finds the done ones done)."""
    outcomes: list[str] = []
    failure: Exception | None = None
    for change in parse_sns_event(event):
        try:
            outcomes.append(process(change, settings, owner))
        except Exception as exc:
            logger.exception("alarm change not processed", extra={"alarm": change.name, "state": change.state})
            outcomes.append("failed")
            failure = failure or exc
    if failure is not None:
        raise failure
    return outcomes


def open_incidents(settings: Settings) -> list[Incident]:
    """The incidents still open, newest first (``smartgrid ops check``)."""
    return store.incidents(settings, only_open=True)


def list_incidents(settings: Settings, only_open: bool = False) -> list[Incident]:
    return store.incidents(settings, only_open=only_open)
