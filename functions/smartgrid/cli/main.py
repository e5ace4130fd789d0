"""The ``smartgrid`` console script: the root app, assembled from one Typer instance per command module."""

# Commands are added in the order `smartgrid --help` lists them: the top-level commands first,
# then the groups.

from __future__ import annotations

import typer

from smartgrid.cli import backup, engine, incidents, jobs, models, ops, serve

app = typer.Typer(
    help="Day-ahead load forecasting and meter-data anomaly detection.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(engine.commands)  # train, backtest, detect, forecast, calendar
app.add_typer(jobs.probe_commands)  # probe
app.add_typer(ops.commands)  # alerts
app.add_typer(serve.commands)  # serve
app.add_typer(backup.commands)  # backup, restore
app.add_typer(jobs.commands)  # ingest, usage
app.add_typer(models.commands)  # retrain
app.add_typer(models.group, name="models")
app.add_typer(backup.group, name="backups")
app.add_typer(incidents.group, name="incidents")
app.add_typer(ops.group, name="ops")
