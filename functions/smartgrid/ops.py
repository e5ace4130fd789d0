"""`smartgrid ops check`: the manual's daily checklist for a deployed stack or the local one.

Each check gives one line, ok or not, with what it saw: the API's /health, every table
(active, point-in-time recovery on), every bucket, the champion model set and its age, the
last backup and whether it verified, the last retraining decision, and the alarms in ALARM.
Anything not ok makes the command exit non-zero."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from .catalog import ALARM_PREFIX_OUTPUT, API_URL_OUTPUT, OPS_SETTINGS, stack_output_key
from .config import Settings
from .probe import probe
from .store import status

PROBE_TIMEOUT_S = 5.0


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


def check_alarms(prefix: str | None, settings: Settings) -> Check:
    if not prefix:
        return Check("alarms", False, "no alarm name prefix (pass --alarm-prefix or --stack)")
    firing = status.alarms_in_alarm(prefix, settings)
    if not firing:
        return Check("alarms", True, f"none of {prefix}-* in ALARM")
    return Check("alarms", False, "in ALARM: " + ", ".join(a["name"] for a in firing))


def run(target: Target, now: datetime, extra: list[tuple[str, Callable[[], Check]]] | None = None) -> list[Check]:
    s = target.settings
    checks: list[tuple[str, Callable[[], Check]]] = [("api", lambda: check_api(target.api_url))]
    checks += [(_label(f), partial(check_table, f, s)) for f in OPS_SETTINGS if f.endswith("_table")]
    checks += [(_label(f), partial(check_bucket, f, s)) for f in OPS_SETTINGS if f.endswith("_bucket")]
    checks += extra or []
    checks.append(("alarms", lambda: check_alarms(target.alarm_prefix, s)))
    return [_guard(name, fn) for name, fn in checks]


def as_json(checks: list[Check]) -> list[dict[str, Any]]:
    return [{"check": c.name, "ok": c.ok, "detail": c.detail} for c in checks]
