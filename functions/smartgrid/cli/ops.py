"""The ``ops`` group (check, the operators' daily checklist) and ``alerts``, the alert table."""

# See docs/requirements.md#alerts and docs/requirements.md#escalation.

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.table import Table

from smartgrid.cli.common import errors, out

commands = typer.Typer()
group = typer.Typer(help="Operations: the daily checklist.", no_args_is_help=True)


@commands.command()
def alerts() -> None:
    """The alert table the CloudWatch alarms are built from (Markdown): what each alarm
    watches, its threshold and window, and the escalation level it pages."""
    from smartgrid.catalog import alert_table_markdown

    typer.echo(alert_table_markdown(), nl=False)


@group.command("check")
def check(
    stack: Annotated[
        str | None, typer.Option("--stack", help="A deployed stack (Smartgrid-<env>): its outputs name everything")
    ] = None,
    url: Annotated[str | None, typer.Option("--url", help="The API's base URL (default: the stack's)")] = None,
    alarm_prefix: Annotated[
        str | None, typer.Option("--alarm-prefix", help="Alarm name prefix (default: the stack's)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document instead of a table")] = False,
) -> None:
    """API health, tables, buckets, models, backups, retraining and alarms; exit 1 if any is not ok.
    Without --stack it checks what the environment's settings name (the local run: set
    AWS_ENDPOINT_URL to the emulator)."""
    from smartgrid.config import get_settings
    from smartgrid.domain import ops

    settings = get_settings()
    with errors():
        target = ops.target_for_stack(stack, settings) if stack else ops.Target(settings, settings.api_url, None)
    target = ops.Target(target.settings, url or target.api_url, alarm_prefix or target.alarm_prefix)
    checks = ops.run(target, datetime.now(UTC))
    if as_json:
        typer.echo(json.dumps(ops.as_json(checks), indent=2))
    else:
        table = Table(title=f"smartgrid ops check{f' ({stack})' if stack else ''}")
        for column in ("", "check", "detail"):
            table.add_column(column)
        for c in checks:
            table.add_row("[green]ok[/]" if c.ok else "[red]NOT OK[/]", c.name, c.detail)
        out.print(table)
    if not all(c.ok for c in checks):
        raise typer.Exit(1)
