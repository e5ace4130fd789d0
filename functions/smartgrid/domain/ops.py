"""`smartgrid ops check`: the daily checklist (docs/requirements.md#health) for a deployed stack
or the local one.

Each check gives one line, ok or not, with what it saw: the API's /health, every table
(active, point-in-time recovery on), every bucket, the champion model set and its age, the
last backup and whether it verified, the last retraining decision, the open incidents, and
the alarms in ALARM.
Anything not ok makes the command exit non-zero."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from smartgrid.catalog import ALARM_PREFIX_OUTPUT, API_URL_OUTPUT, OPS_SETTINGS, stack_output_key
from smartgrid.config import Settings
from smartgrid.domain.probe import probe
from smartgrid.store import status

PROBE_TIMEOUT_S = 5.0
MAX_BACKUP_AGE = timedelta(hours=26)  # daily at 02:00, with room for a slow run
MAX_RETRAINING_AGE = timedelta(days=32)  # monthly on the 1st


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Target:
    settings: Settings
    api_url: str | None
    alarm_prefix: str | None


def target_for_stack(stack: str, settings: Settings) -> Target:
    """Settings pointed at a deployed stack's tables and buckets (its outputs)."""
    outputs = status.stack_outputs(stack, settings)
    update = {f: outputs[stack_output_key(f)] for f in OPS_SETTINGS if stack_output_key(f) in outputs}
    missing = [stack_output_key(f) for f in OPS_SETTINGS if f not in update]
    if missing:
        raise ValueError(f"stack {stack} lacks the outputs {missing}: is it a smartgrid stack?")
    return Target(settings.model_copy(update=update), outputs.get(API_URL_OUTPUT), outputs.get(ALARM_PREFIX_OUTPUT))


def _guard(name: str, fn: Callable[[], Check]) -> Check:
    """A check that cannot run is a check that failed, with the reason."""
    try:
        return fn()
    except Exception as exc:
        return Check(name, False, f"could not check: {type(exc).__name__}: {exc}")


def _label(setting: str) -> str:
    kind = "table" if setting.endswith("_table") else "bucket"
    return f"{kind} {setting.removesuffix('_' + kind)}"


def check_api(url: str | None) -> Check:
    if not url:
        return Check("api", False, "no API URL (pass --url or --stack)")
    r = probe(url, PROBE_TIMEOUT_S)
    seen = f"{r.http_status or 'no answer'} {r.status or r.error or ''}".strip()
    return Check("api", r.available and r.status == "ok", f"{r.url}: {seen} in {r.latency_s * 1000:.0f} ms")


def check_table(setting: str, settings: Settings) -> Check:
    name = getattr(settings, setting)
    s = status.table_status(name, settings)
    ok = s["status"] == "ACTIVE" and s["pitr"] == "ENABLED"
    return Check(_label(setting), ok, f"{name}: {s['status']}, PITR {s['pitr']}")


def check_bucket(setting: str, settings: Settings) -> Check:
    name = getattr(settings, setting)
    s = status.bucket_status(name, settings)
    ok = setting != "models_bucket" or s["versioning"] == "Enabled"
    return Check(_label(setting), ok, f"{name}: reachable, versioning {s['versioning']}")


def _age(then: datetime, now: datetime) -> str:
    hours = (now - then).total_seconds() / 3600
    return f"{hours:.1f} h ago" if hours < 48 else f"{hours / 24:.0f} days ago"


def check_models(settings: Settings, now: datetime) -> Check:
    """The champion set the API serves, verified (every file's sha256), and its age."""
    from smartgrid.domain.champion import read_champion, verify_set

    champion = read_champion(settings)
    if champion is None:
        return Check("models", True, "no champion set: the bundled models serve (`smartgrid models publish`)")
    info = verify_set(settings, champion.set_id)
    promoted = datetime.fromisoformat(champion.promoted_at.replace("Z", "+00:00"))
    return Check(
        "models",
        True,
        f"champion {info.set_id}, verified, promoted {_age(promoted, now)} ({champion.reason})",
    )


def check_backup(settings: Settings, now: datetime) -> Check:
    """The newest backup: verified (every object's sha256) and no older than a day and a bit."""
    from smartgrid.domain.backup import list_backups, verify_backup

    backups = list_backups(settings)
    if not backups:
        return Check("backup", False, f"no backup in {settings.backups_bucket}")
    newest = backups[0]
    if newest.status != "verified":
        return Check("backup", False, f"newest backup {newest.backup_id} is {newest.status}: {newest.problem or ''}")
    verify_backup(settings, newest.backup_id)  # raises, with every problem, if it does not verify
    fresh = now - newest.created_at <= MAX_BACKUP_AGE
    return Check(
        "backup",
        fresh,
        f"{newest.backup_id}, verified, {_age(newest.created_at, now)}"
        + ("" if fresh else f" (the daily backup is overdue: more than {MAX_BACKUP_AGE} ago)"),
    )


def check_retraining(settings: Settings, now: datetime) -> Check:
    """The last monthly retraining round: its decision and both scores."""
    from smartgrid.domain.champion import list_decisions, read_decision

    for key in sorted(list_decisions(settings), reverse=True):
        d = read_decision(settings, key)
        if d.get("kind") != "retraining":
            continue
        finished = datetime.fromisoformat(str(d.get("finished_at") or d["started_at"]).replace("Z", "+00:00"))
        scores = ", ".join(
            f"{side} MAPE {d[side]['mape']:.2f}%"
            for side in ("champion", "challenger")
            if isinstance(d.get(side), dict) and d[side].get("mape") is not None
        )
        fresh = now - finished <= MAX_RETRAINING_AGE
        text = f"{d['status']} {_age(finished, now)}" + (f" ({scores})" if scores else "") + f": {d.get('reason', '')}"
        return Check("retraining", fresh, text if fresh else text + " (the monthly round is overdue)")
    return Check("retraining", False, "no retraining decision yet (the first round runs on the 1st, 00:00 UTC)")


def check_incidents(settings: Settings, now: datetime) -> Check:
    """Incidents the notifier opened and no OK has resolved yet."""
    from smartgrid.domain.incidents import open_incidents

    incidents = open_incidents(settings)
    if not incidents:
        return Check("incidents", True, "none open")
    return Check(
        "incidents",
        False,
        "open: "
        + "; ".join(
            f"{i.incident_id} {i.severity} {i.alert_id or i.alarm_name} since {_age(i.detected_at, now)}"
            for i in incidents
        ),
    )


def check_alarms(prefix: str | None, settings: Settings) -> Check:
    if not prefix:
        return Check("alarms", False, "no alarm name prefix (pass --alarm-prefix or --stack)")
    firing = status.alarms_in_alarm(prefix, settings)
    if not firing:
        return Check("alarms", True, f"none of {prefix}-* in ALARM")
    return Check("alarms", False, "in ALARM: " + ", ".join(a["name"] for a in firing))


def run(target: Target, now: datetime) -> list[Check]:
    s = target.settings
    checks: list[tuple[str, Callable[[], Check]]] = [("api", lambda: check_api(target.api_url))]
    checks += [(_label(f), partial(check_table, f, s)) for f in OPS_SETTINGS if f.endswith("_table")]
    checks += [(_label(f), partial(check_bucket, f, s)) for f in OPS_SETTINGS if f.endswith("_bucket")]
    checks += [
        ("models", partial(check_models, s, now)),
        ("backup", partial(check_backup, s, now)),
        ("retraining", partial(check_retraining, s, now)),
        ("incidents", partial(check_incidents, s, now)),
    ]
    checks.append(("alarms", lambda: check_alarms(target.alarm_prefix, s)))
    return [_guard(name, fn) for name, fn in checks]


def as_json(checks: list[Check]) -> list[dict[str, Any]]:
    return [{"check": c.name, "ok": c.ok, "detail": c.detail} for c in checks]
