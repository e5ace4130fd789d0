"""The ``models`` group (list, publish, rollback, champion, decisions) and ``retrain``: the model registry."""

# The registry is the models bucket's model sets and champion pointer (smartgrid.domain.champion);
# see docs/requirements.md#retraining.

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from smartgrid.cli.common import ModelsOpt, err, errors, out
from smartgrid.config import get_settings
from smartgrid.errors import DependencyUnavailableError

commands = typer.Typer()
group = typer.Typer(help="Inspect model sets.", no_args_is_help=True)

ReasonOpt = Annotated[str | None, typer.Option("--reason", help="Why (recorded in the pointer and the decision)")]


@contextmanager
def _registry_errors() -> Iterator[None]:
    """As ``errors``; an S3 call that fails exits 1 (the registry is unchanged)."""
    with errors():
        try:
            yield
        except DependencyUnavailableError as exc:
            err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None


def _show_set(title: str, champion: Any, info: Any) -> None:
    table = Table(title=title, show_header=False)
    table.add_column("field")
    table.add_column("value")
    rows: list[tuple[str, Any]] = [
        ("set id", champion.set_id),
        ("previous set id", champion.previous_set_id or "-"),
        ("promoted at", champion.promoted_at),
        ("reason", champion.reason),
    ]
    if info is not None:
        w = info.training_window
        rows += [
            ("created at", info.created_at),
            ("source", info.source),
            ("training window", f"{w.get('start')} .. {w.get('end')}"),
            ("MAPE", "-" if info.mape is None else f"{info.mape:.3f}%"),
            ("evaluation", json.dumps(info.evaluation)),
        ]
        rows += [(f"{name} sha256", m["sha256"][:16]) for name, m in info.models.items()]
    for k, v in rows:
        table.add_row(k, escape(str(v)))
    out.print(table)


@group.command("list")
def models_list(models: ModelsOpt = None) -> None:
    """Show each model's version, window, metrics and whether its checksum verifies."""
    from smartgrid.engine.forecast import ModelSet

    settings = get_settings()
    ms = ModelSet.load(models or settings.model_dir)
    table = Table(title=str(ms.directory))
    for c in ("model", "status", "version", "training window", "sha256"):
        table.add_column(c)
    for d in ms.describe():
        if d["loaded"]:
            w = d["training_window"]
            table.add_row(d["name"], "ok", d["version"], f"{w['start']} .. {w['end']}", d["sha256"][:16])
        else:
            table.add_row(d["name"], f"[red]not loaded: {d['error']}[/]", "", "", "")
    out.print(table)
    if ms.errors:
        raise typer.Exit(3)


@group.command("publish")
def models_publish(
    source: Annotated[
        Path, typer.Option("--from", help="Local model directory (e.g. functions/smartgrid/models/default)")
    ],
    reason: ReasonOpt = None,
) -> None:
    """Upload a local model set to the models bucket as a new set and make it champion."""
    from smartgrid.domain.champion import publish

    with _registry_errors():
        settings = get_settings()
        p = publish(settings, source, reason)
    _show_set(f"champion now (s3://{settings.models_bucket})", p.champion, p.info)
    out.print(f"decision recorded: {p.decision_key}")


@group.command("rollback")
def models_rollback(reason: ReasonOpt = None) -> None:
    """Point the champion back at its previous set (a second rollback undoes the first)."""
    from smartgrid.domain.champion import rollback

    with _registry_errors():
        settings = get_settings()
        p = rollback(settings, reason)
    _show_set(f"champion rolled back (s3://{settings.models_bucket})", p.champion, p.info)
    out.print(f"decision recorded: {p.decision_key}")


@group.command("champion")
def models_champion(
    as_json: Annotated[bool, typer.Option("--json", help="Print the pointer and set.json as JSON")] = False,
) -> None:
    """Show the champion pointer and its set (what the API serves)."""
    from dataclasses import asdict

    from smartgrid.domain.champion import read_champion, read_set_info

    with _registry_errors():
        settings = get_settings()
        champion = read_champion(settings)
        info = read_set_info(settings, champion.set_id) if champion is not None else None
    if as_json:
        typer.echo(
            json.dumps(
                {"champion": champion.to_json() if champion else None, "set": asdict(info) if info else None}, indent=2
            )
        )
        return
    if champion is None:
        out.print(f"no champion in s3://{settings.models_bucket}: the API serves the models bundled with the code")
        return
    _show_set(f"champion (s3://{settings.models_bucket})", champion, info)


@group.command("decisions")
def models_decisions(
    last: Annotated[int, typer.Option("--last", min=1, help="How many of the latest decisions")] = 10,
) -> None:
    """The latest registry decisions (retraining rounds, publishes, rollbacks)."""
    from smartgrid.domain.champion import list_decisions, read_decision

    with _registry_errors():
        settings = get_settings()
        keys = list_decisions(settings)[-last:]
        records = [(k, read_decision(settings, k)) for k in keys]
    table = Table(title=f"decisions (s3://{settings.models_bucket})")
    for c in ("key", "kind", "status", "champion MAPE", "challenger MAPE", "reason"):
        table.add_column(c)
    for key, d in records:
        ch, cl = d.get("champion") or {}, d.get("challenger") or {}
        table.add_row(
            key.rsplit("/", 1)[-1],
            d.get("kind", ""),
            d.get("status", ""),
            "-" if ch.get("mape") is None else f"{ch['mape']:.3f}%",
            "-" if cl.get("mape") is None else f"{cl['mape']:.3f}%",
            escape(str(d.get("reason", ""))),
        )
    out.print(table)


@commands.command()
def retrain(
    holdout_days: Annotated[
        int | None, typer.Option("--holdout-days", min=1, max=90, help="Days held out (default: the setting)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the decision as JSON")] = False,
) -> None:
    """Champion/challenger retraining on the accepted meter data, as the monthly job runs it:
    train on all but the last days, score both sets on those days, promote only if better."""
    from smartgrid.domain.retraining import retrain as run

    with _registry_errors():
        settings = get_settings()
        if holdout_days is not None:
            settings = settings.model_copy(update={"retrain_holdout_days": holdout_days})
        err.print("[dim]gathering accepted readings and training the challenger...[/]")
        decision = run(settings)
    if as_json:
        typer.echo(json.dumps(decision.to_json(), indent=2, default=str))
        return
    ch, cl = decision.champion or {}, decision.challenger or {}
    table = Table(title=f"retraining: {decision.status}", show_header=False)
    table.add_column("field")
    table.add_column("value")
    for k, v in (
        ("reason", decision.reason),
        ("champion", f"{ch.get('set_id') or '-'}  MAPE {_pct(ch.get('mape'))}"),
        ("challenger", f"{cl.get('set_id') or '(not uploaded)'}  MAPE {_pct(cl.get('mape'))}"),
        ("holdout", json.dumps(decision.holdout_window)),
        ("sites trained on", ", ".join(decision.sites.get("trained_on", [])) or "-"),
        ("resources", json.dumps(decision.resources)),
        ("decision", decision.decision_key),
    ):
        table.add_row(k, escape(str(v)))
    out.print(table)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}%"
