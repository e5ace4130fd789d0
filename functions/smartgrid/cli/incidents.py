"""The ``incidents`` group (list): the incidents the notifier opened, newest first."""

# See docs/requirements.md#incidents.

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from smartgrid.cli.common import errors, out
from smartgrid.config import get_settings

group = typer.Typer(help="Incidents opened by alarms (the notifier).", no_args_is_help=True)


@group.command("list")
def list_(
    only_open: Annotated[bool, typer.Option("--open", help="Only incidents still open")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="A JSON list instead of a table")] = False,
) -> None:
    """Incidents with id, severity, alarm, status, detected, resolved and duration (newest first)."""
    from smartgrid.domain.incidents import human_duration, list_incidents

    with errors():
        found = list_incidents(get_settings(), only_open=only_open)
    rows = [
        {
            "incident_id": i.incident_id,
            "severity": i.severity,
            "level": i.level,
            "alarm": i.alarm_name,
            "alert_id": i.alert_id,
            "status": i.status,
            "detected": i.detected_at.isoformat(),
            "resolved": i.resolved_at.isoformat() if i.resolved_at else None,
            "duration_s": i.duration.total_seconds() if i.duration else None,
            "duration": human_duration(i.duration) if i.duration else None,
        }
        for i in found
    ]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    if not rows:
        out.print("no incidents" + (" open" if only_open else ""))
        return
    table = Table(title=f"{len(rows)} incident(s)" + (" open" if only_open else ""))
    for col in ("incident", "severity", "alarm", "status", "detected (UTC)", "resolved (UTC)", "duration"):
        table.add_column(col, overflow="fold", no_wrap=col == "incident")
    for r in rows:
        table.add_row(
            str(r["incident_id"]),
            str(r["severity"]),
            str(r["alarm"]),
            str(r["status"]),
            str(r["detected"])[:19].replace("T", " "),
            str(r["resolved"] or "-")[:19].replace("T", " "),
            str(r["duration"] or "-"),
        )
    out.print(table)
