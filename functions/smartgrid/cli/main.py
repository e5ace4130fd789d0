"""``smartgrid``: the one command line for people (train, backtest, detect, forecast, models).

Errors in input data or models end the command with a clear message naming the file, row
and problem, a non-zero exit code (2: bad input data, 3: model problem), and no output file.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from smartgrid.config import get_settings
from smartgrid.errors import ModelIntegrityError, ModelNotFoundError, SmartgridError

app = typer.Typer(
    help="Day-ahead load forecasting and meter-data anomaly detection.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
models_app = typer.Typer(help="Inspect model sets.", no_args_is_help=True)
app.add_typer(models_app, name="models")
out = Console()
err = Console(stderr=True)

DataOpt = Annotated[Path, typer.Option("--data", help="CSV (optionally .gz): timestamp,load[,temperature]")]
ModelsOpt = Annotated[Path | None, typer.Option("--models", help="Model directory (default: bundled models)")]
CountryOpt = Annotated[str | None, typer.Option("--country", help="Holiday calendar country (ISO code)")]
FillOpt = Annotated[int, typer.Option("--fill-gaps", min=0, help="Interpolate gaps of up to N missing readings")]


def _fail(exc: Exception) -> None:
    """Exit 2 for bad input, 3 for a model that cannot be used, 1 for files we cannot write."""
    if isinstance(exc, ModelIntegrityError | ModelNotFoundError):
        code = 3
    elif isinstance(exc, OSError):
        code = 1
        exc = OSError(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
    else:
        code = 2
    err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except (SmartgridError, ValueError, OSError) as exc:  # ValueError includes pydantic's settings errors
        _fail(exc)


@contextmanager
def _progress(total: int, label: str) -> Iterator[Callable[[str], None]]:
    cols = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    with Progress(*cols, console=err, transient=False, disable=not err.is_terminal and "pytest" in sys.modules) as p:
        task = p.add_task(label, total=total)

        def step(message: str) -> None:
            p.update(task, description=f"{label}: {message}", advance=1)

        yield step
        p.update(task, completed=total, description=f"{label}: done")


def _calendar(country: str | None) -> Any:
    from smartgrid.engine.features import HolidayCalendar

    s = get_settings()
    return HolidayCalendar(country or s.holiday_country, s.holiday_subdivision)


def _check_outputs(*paths: Path | None) -> None:
    """Fail before any work if an output cannot be written (its folder cannot be made, or
    the path is a directory), so a late failure never leaves some outputs written."""
    for path in paths:
        if path is None:
            continue
        if path.is_dir():
            raise IsADirectoryError(21, "is a directory", str(path))
        path.parent.mkdir(parents=True, exist_ok=True)


def _write_json(path: Path, payload: Any) -> None:
    from smartgrid.engine.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


@app.command()
def train(
    data: Annotated[list[Path], typer.Option("--data", help="CSV file(s); several are pooled")],
    out_dir: Annotated[Path, typer.Option("--out", help="Directory to write the three models to")],
    country: CountryOpt = None,
    fill_gaps: FillOpt = 0,
) -> None:
    """Train the mixture of experts, the fallback profile and the anomaly detector."""
    from smartgrid.engine.data import load_series
    from smartgrid.training.moe import EXPERTS, MoEParams
    from smartgrid.training.pipeline import train_all

    with _errors():
        settings = get_settings()
        if out_dir.exists() and not out_dir.is_dir():
            raise ValueError(f"--out {out_dir} exists and is not a directory")
        calendar = _calendar(country)
        series = [
            load_series(p, min_days=60, flatline_hours=settings.flatline_hours, fill_gaps_up_to=fill_gaps) for p in data
        ]
        for s in series:
            out.print(f"{s.source}: {s.n} readings, {s.resolution_minutes}-minute resolution, {s.missing_report}")
        with _progress(2 * len(EXPERTS) + 6, "training") as step:
            metas = train_all(series, out_dir, calendar, MoEParams(threads=settings.train_threads), progress=step)
    table = Table(title=f"models written to {out_dir}")
    for c in ("model", "version", "sha256", "metrics"):
        table.add_column(c)
    for m in metas.values():
        table.add_row(m.name, m.version, m.sha256[:12], json.dumps(m.metrics)[:90])
    out.print(table)


@app.command()
def backtest(
    data: DataOpt,
    test_days: Annotated[int | None, typer.Option("--test-days", min=1, help="Test days (default: last 20%)")] = None,
    retrain_every: Annotated[int, typer.Option("--retrain-every", min=0, help="Retrain every N days (0: once)")] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write metrics as JSON")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write a PNG of forecasts vs actuals")] = None,
    country: CountryOpt = None,
    fill_gaps: FillOpt = 0,
) -> None:
    """Rolling-origin day-ahead backtest of the MoE against naive baselines."""
    from smartgrid.engine.atomic import atomic_write_bytes
    from smartgrid.engine.data import load_series
    from smartgrid.training.backtest import default_test_days, render_backtest_png, run_backtest
    from smartgrid.training.moe import EXPERTS, MoEParams

    with _errors():
        settings = get_settings()
        _check_outputs(json_out, plot)
        series = load_series(data, min_days=30, flatline_hours=settings.flatline_hours, fill_gaps_up_to=fill_gaps)
        n_test = test_days or default_test_days(series)
        blocks = -(-n_test // retrain_every) if retrain_every > 0 else 1
        with _progress((2 * len(EXPERTS) + 3) * blocks, "backtest") as step:
            result = run_backtest(
                series,
                _calendar(country),
                test_days=test_days,
                retrain_every=retrain_every,
                params=MoEParams(threads=settings.train_threads),
                progress=step,
            )
        png = render_backtest_png(result) if plot else None  # render before writing anything
        if json_out:
            _write_json(json_out, result.to_json())
        if plot and png is not None:
            atomic_write_bytes(plot, png)
    table = Table(
        title=f"{data}: {result.test_days} test days ({result.test_start} .. {result.test_end}), "
        f"{result.resolution_minutes}-minute"
    )
    for c in ("method", "MAPE %", "MAE", "rMAE", "pinball", "P10-P90 coverage"):
        table.add_column(c, justify="right")
    for name, m in result.methods.items():
        table.add_row(
            name,
            f"{m['mape']:.2f}",
            f"{m['mae']:.1f}",
            f"{m['rmae']:.4f}",
            f"{m['pinball']:.1f}",
            f"{m['coverage_80'] * 100:.1f}%",
        )
    out.print(table)
    out.print(f"temperature: {result.temperature}")


@app.command()
def detect(
    data: DataOpt,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write scores and flags as JSON")] = None,
    models: ModelsOpt = None,
    threshold: Annotated[float | None, typer.Option("--threshold", min=0.01, max=0.99)] = None,
) -> None:
    """Score every reading and list the flagged ones with score and kind."""
    from smartgrid.engine.anomaly import detect as run_detect
    from smartgrid.engine.data import read_csv, validate
    from smartgrid.engine.model_files import ANOMALY_DETECTOR, load_model

    with _errors():
        settings = get_settings()
        _check_outputs(json_out)
        series = validate(read_csv(data), min_days=1.0, flatline_hours=None, allow_gaps=True)
        model = load_model(models or settings.model_dir, ANOMALY_DETECTOR, threads=settings.ort_threads)
        thr = (
            threshold
            if threshold is not None
            else float(model.meta.params.get("threshold", settings.anomaly_threshold))
        )
        result = run_detect(series, model, threshold=thr)
        flagged = result.flagged_rows()
        if json_out:
            _write_json(
                json_out,
                {
                    "source": str(data),
                    "resolution_minutes": series.resolution_minutes,
                    "readings": int(np.isfinite(series.load).sum()),
                    "threshold": thr,
                    "model_version": model.meta.version,
                    "missing": series.missing_report,
                    "flagged": flagged,
                },
            )
    table = Table(title=f"{data}: {len(flagged)} of {int(np.isfinite(series.load).sum())} readings flagged")
    for c in ("timestamp", "load", "score", "kind"):
        table.add_column(c)
    for r in flagged[:50]:
        table.add_row(r["timestamp"], f"{r['load']:.1f}", f"{r['score']:.3f}", r["kind"])
    out.print(table)
    if len(flagged) > 50:
        out.print(f"... and {len(flagged) - 50} more (use --json for all)")


@app.command()
def forecast(
    data: DataOpt,
    models: ModelsOpt = None,
    temperature_forecast: Annotated[
        Path | None,
        typer.Option("--temperature-forecast", help="CSV timestamp,temperature for the next day"),
    ] = None,
    csv_out: Annotated[Path | None, typer.Option("--out", help="Write the forecast as CSV")] = None,
    country: CountryOpt = None,
) -> None:
    """Forecast the day after the data's last reading (P10/P50/P90)."""
    from smartgrid.engine.data import read_csv, read_temperature_csv, write_csv_atomic
    from smartgrid.engine.forecast import Forecaster, ModelSet

    with _errors():
        settings = get_settings()
        _check_outputs(csv_out)
        readings = read_csv(data)
        future = read_temperature_csv(temperature_forecast) if temperature_forecast else None
        ms = ModelSet.load(models or settings.model_dir, threads=settings.ort_threads)
        fc = Forecaster(ms, _calendar(country), settings.flatline_hours).forecast_readings(readings, future)
        if csv_out:
            write_csv_atomic(
                csv_out,
                ["timestamp", "p10", "p50", "p90", "model"],
                [
                    [
                        r["timestamp"],
                        f"{r['p10']:.3f}",
                        f"{r['p50']:.3f}",
                        f"{r['p90']:.3f}",
                        fc.model,
                    ]
                    for r in fc.rows()
                ],
            )
    out.print(
        f"model: {fc.model} (version {fc.model_version})"
        + (f"; fallback because {fc.fallback_reason}" if fc.fallback_reason else "")
    )
    table = Table()
    for c in ("timestamp", "P10", "P50", "P90"):
        table.add_column(c, justify="right")
    for r in fc.rows():
        table.add_row(r["timestamp"], f"{r['p10']:.1f}", f"{r['p50']:.1f}", f"{r['p90']:.1f}")
    out.print(table)


@models_app.command("list")
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


@app.command()
def calendar(
    country: Annotated[str, typer.Option("--country", help="ISO country code")] = "US",
    subdivision: Annotated[str | None, typer.Option("--subdivision", help="State/province code")] = None,
) -> None:
    """Pre-compute a holiday calendar into the package (read at start-up instead of `holidays`)."""
    from smartgrid.engine.features import write_calendar

    with _errors():
        try:
            path = write_calendar(country, subdivision)
        except NotImplementedError as exc:
            raise ValueError(f"unknown holiday calendar: country {country!r}, subdivision {subdivision!r}") from exc
        out.print(f"wrote {path}")


@app.command("probe")
def probe_command(
    url: Annotated[
        str, typer.Argument(help="The API's base URL, e.g. https://abc.execute-api.eu-west-1.amazonaws.com/v1")
    ],
    timeout: Annotated[float, typer.Option(min=0.1, max=60, help="Seconds to wait for /health")] = 5.0,
) -> None:
    """Probe the API's /health as the scheduled health probe does; exit 1 when not available."""
    from smartgrid.domain.probe import probe

    with _errors():
        result = probe(url, timeout)
    shown = f"{result.http_status or 'no answer'} {result.status or result.error or ''}".strip()
    verdict = "available" if result.available else "[red]NOT available[/]"
    out.print(f"{result.url}: {verdict} ({shown}, {result.latency_s:.3f} s)")
    if result.body is not None and result.status != "ok":
        out.print(result.body)
    if not result.available:
        raise typer.Exit(1)


@app.command()
def alerts() -> None:
    """The alert table the CloudWatch alarms are built from (Markdown): what each alarm
    watches, its threshold and window, and the escalation level it pages."""
    from smartgrid.catalog import alert_table_markdown

    typer.echo(alert_table_markdown(), nl=False)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="API port")] = 8000,
    api_key: Annotated[
        str | None, typer.Option("--api-key", envvar="SMARTGRID_LOCAL_API_KEY", help="Local API key (default: random)")
    ] = None,
    emulator_port: Annotated[
        int | None, typer.Option("--emulator-port", min=1, max=65535, help="Port of the embedded AWS emulator")
    ] = None,
    aws_endpoint: Annotated[
        str | None,
        typer.Option(
            "--aws-endpoint",
            metavar="URL",
            help="Use the AWS emulator already running at URL (e.g. python -m moto.server -p 5000) instead of "
            "starting one: tables and buckets are provisioned there",
        ),
    ] = None,
) -> None:
    """Run the API on this machine, on an embedded AWS emulator (moto), with the bundled models."""
    from smartgrid.cli.serve import serve as run

    with _errors():
        run(host, port, api_key, emulator_port, aws_endpoint)


# The jobs' and operators' commands (issue 5) live in their own modules and register on
# ``app`` (and its sub-apps) when imported here.
from smartgrid.cli import backup as cli_backup  # noqa: E402, F401

if __name__ == "__main__":  # pragma: no cover
    # `python -m smartgrid.cli`: this module runs as __main__, but the command modules register
    # on `smartgrid.cli.app` (the module they import), so run that one.
    from smartgrid.cli.main import app as registered

    registered()
