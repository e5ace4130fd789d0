"""``backup``, ``restore`` and the ``backups`` group (list, verify): backups and the disaster-recovery restore."""

# The daily backup run by hand, the backups in the backups bucket, and the restore; see
# docs/requirements.md#backups and docs/requirements.md#disaster-recovery.

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from smartgrid.cli.common import err, errors, out
from smartgrid.config import get_settings

commands = typer.Typer()
group = typer.Typer(help="List and verify the backups in the backups bucket.", no_args_is_help=True)

BackupOpt = Annotated[
    str, typer.Option("--backup", help="Backup id (e.g. 20261128T020000Z, see `smartgrid backups list`) or 'latest'")
]


@contextmanager
def _backup_errors() -> Iterator[None]:
    """As ``errors``, plus: a backup that does not verify exits 3, an AWS call that fails 1."""
    from botocore.exceptions import BotoCoreError, ClientError

    from smartgrid.domain.backup import BackupIntegrityError

    with errors():
        try:
            yield
        except BackupIntegrityError as exc:
            err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(3) from None
        except (BotoCoreError, ClientError) as exc:
            err.print(f"[bold red]error:[/] AWS call failed: {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None


def _say(message: str) -> None:
    err.print(f"[dim]{escape(message)}[/]", highlight=False, soft_wrap=True)


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


@commands.command("backup")
def backup_command() -> None:
    """Back up now, as the daily job does: every table (on-demand backup + item copy), the
    models bucket, the bundled models and the configuration, verified, then the manifest."""
    from smartgrid.domain.backup import run_backup

    with _backup_errors():
        settings = get_settings()
        result = run_backup(settings, progress=_say)
    out.print(
        f"backup {result.backup_id}: {result.objects} objects, {_size(result.bytes)}, "
        f"verified, in s3://{settings.backups_bucket}/{result.manifest_key.rsplit('/', 1)[0]}/"
    )
    for setting, n in result.tables.items():
        out.print(f"  {setting}: {n} items")
    out.print(f"  models bucket: {result.models} objects")


@group.command("list")
def backups_list(
    verify: Annotated[bool, typer.Option("--verify", help="Also re-read every object and check its sha256")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
) -> None:
    """Every backup, newest first: id, time, status (verified / incomplete / damaged), size and
    the tables' item counts."""
    from smartgrid.domain.backup import list_backups

    with _backup_errors():
        settings = get_settings()
        infos = list_backups(settings, deep=verify)
    if as_json:
        rows = [{**asdict(i), "created_at": i.created_at.isoformat().replace("+00:00", "Z")} for i in infos]
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"backups in s3://{settings.backups_bucket}/backups/ (newest first)")
    for c in ("id", "time (UTC)", "status", "objects", "size"):
        table.add_column(c, no_wrap=True)
    table.add_column("items per table", overflow="fold")
    colour = {"verified": "green", "incomplete": "yellow", "damaged": "red"}
    for i in infos:
        counts = ", ".join(f"{s.removesuffix('_table')} {n}" for s, n in i.tables.items())
        table.add_row(
            i.backup_id,
            i.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            f"[{colour[i.status]}]{i.status}[/]",
            str(i.objects),
            _size(i.size),
            counts or escape((i.problem or "").splitlines()[0]),
        )
    out.print(table)
    if not infos:
        out.print("no backups")


@group.command("verify")
def backups_verify(backup: BackupOpt) -> None:
    """Check a backup as a restore would (manifest and every object's sha256), changing nothing.
    Exit 3 if it does not verify."""
    from smartgrid.domain.backup import check_backup_id, latest_backup, verify_backup

    with _backup_errors():
        settings = get_settings()
        backup_id = latest_backup(settings) if backup == "latest" else check_backup_id(backup)
        manifest = verify_backup(settings, backup_id, progress=_say)
    out.print(f"backup {backup_id}: verified, {len(manifest.objects)} objects, {_size(manifest.total_bytes)}")


@commands.command("restore")
def restore_command(
    backup: BackupOpt,
    tables: Annotated[bool, typer.Option("--tables", help="Restore the tables")] = False,
    table: Annotated[
        list[str] | None,
        typer.Option("--table", help="Restore only this table (e.g. predictions); repeatable; implies --tables"),
    ] = None,
    models: Annotated[bool, typer.Option("--models", help="Restore the models bucket's objects")] = False,
    config: Annotated[bool, typer.Option("--config", help="Restore the configuration")] = False,
    yes: Annotated[
        bool,
        typer.Option("--yes", help="Overwrite live data: replace non-empty tables, objects and files that differ"),
    ] = False,
    champion: Annotated[
        bool,
        typer.Option(
            "--champion",
            help="Also put back the backup's champion pointer (registry/champion.json) if the live one differs "
            "(with --yes); without it a live pointer is left as is, so later promotions and rollbacks stand",
        ),
    ] = False,
    config_out: Annotated[
        Path | None, typer.Option("--config-out", help="Write the configuration here (default: print it)")
    ] = None,
    bundled_out: Annotated[
        Path | None,
        typer.Option("--bundled-out", help="Also write the backed-up bundled model files to this directory"),
    ] = None,
) -> None:
    """Restore a backup: verifies it completely first, refuses to overwrite live data without
    --yes, and verifies what it restored. No part flags: tables, models and config."""
    from smartgrid.domain.backup import check_backup_id, latest_backup
    from smartgrid.domain.restore import RestoreOptions, restore

    with _backup_errors():
        settings = get_settings()
        backup_id = latest_backup(settings) if backup == "latest" else check_backup_id(backup)
        wanted = tuple(table or ())
        tables = tables or bool(wanted)
        everything = not (tables or models or config)
        if config_out is not None and not (config or everything):
            raise ValueError("--config-out is given but the configuration is not restored: add --config")
        if bundled_out is not None and not (models or everything):
            raise ValueError("--bundled-out is given but the models are not restored: add --models")
        options = RestoreOptions(
            tables=tables or everything,
            models=models or everything,
            config=config or everything,
            only_tables=wanted,
            overwrite=yes,
            champion=champion,
            config_out=config_out,
            bundled_out=bundled_out,
        )
        report = restore(settings, backup_id, options, progress=_say)
    out.print(f"restored backup {report.backup_id}, verified:")
    for t in report.tables:
        line = f"  table {t.table_name}: {t.items} items"
        if t.replaced:
            line += f" (replaced; {t.deleted} items not in the backup deleted; before: {t.safety_backup_arn})"
        out.print(line, highlight=False, soft_wrap=True)
        if t.extra_after:
            out.print(
                f"  [yellow]warning:[/] {t.extra_after} item(s) in {t.table_name} not in the backup (live writes?)"
            )
    if options.models:
        line = f"  models bucket {settings.models_bucket}: {len(report.model_keys)} objects written"
        if report.models_replaced:
            line += f" ({len(report.models_replaced)} of them replaced)"
        line += f", {len(report.models_unchanged)} already there (same contents)"
        out.print(line, highlight=False, soft_wrap=True)
        if report.champion_kept:
            out.print(
                "  champion pointer registry/champion.json: the live one differs from the backup's and was "
                "left as is (promotions and rollbacks since the backup stand); --champion --yes puts the "
                "backup's back",
                highlight=False,
                soft_wrap=True,
            )
        elif "registry/champion.json" in report.models_replaced:
            out.print("  champion pointer registry/champion.json: replaced by the backup's", highlight=False)
        if report.bundled:
            out.print(f"  bundled model files: {len(report.bundled)} written to {bundled_out}")
        elif report.bundled_available:
            out.print(
                f"  bundled model files: {report.bundled_available} in the backup (write them with --bundled-out)"
            )
    if report.config_path is not None:
        out.print(f"  configuration written to {report.config_path}", highlight=False, soft_wrap=True)
        out.print(
            '  [yellow]warning:[/] these are the backup function\'s settings (see its "source"), '
            "not every function's: check each function's own before using them",
            highlight=False,
            soft_wrap=True,
        )
    elif report.config_json is not None:
        out.print("  configuration (the backup function's settings, not every function's; write it with --config-out):")
        typer.echo(report.config_json, nl=False)
