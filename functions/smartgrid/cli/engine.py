"""Train, backtest, detect, forecast and calendar: the top-level commands on local files and models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.table import Table

from smartgrid.cli.common import (
    CountryOpt,
    DataOpt,
    FillOpt,
    ModelsOpt,
    calendar_for,
    check_outputs,
    errors,
    out,
    progress,
    write_json,
)
from smartgrid.config import get_settings

commands = typer.Typer()


@commands.command()
def train(
    data: Annotated[list[Path], typer.Option("--data", help="CSV file(s); several are pooled")],
    out_dir: Annotated[Path, typer.Option("--out", help="Directory to write the three models to")],
    country: CountryOpt = None,
    fill_gaps: FillOpt = 0,
) -> None:
    """Train the mixture of experts, the fallback profile and the anomaly detector."""
    from smartgrid.engine.csv_files import load_series
    from smartgrid.training.moe import EXPERTS, MoEParams
    from smartgrid.training.pipeline import train_all

    with errors():
        settings = get_settings()
        if out_dir.exists() and not out_dir.is_dir():
            raise ValueError(f"--out {out_dir} exists and is not a directory")
        calendar = calendar_for(country)
        series = [
            load_series(p, min_days=60, flatline_hours=settings.flatline_hours, fill_gaps_up_to=fill_gaps) for p in data
        ]
        for s in series:
            out.print(f"{s.source}: {s.n} readings, {s.resolution_minutes}-minute resolution, {s.missing_report}")
        with progress(2 * len(EXPERTS) + 6, "training") as step:
            metas = train_all(series, out_dir, calendar, MoEParams(threads=settings.train_threads), progress=step)
    table = Table(title=f"models written to {out_dir}")
    for c in ("model", "version", "sha256", "metrics"):
        table.add_column(c)
    for m in metas.values():
        table.add_row(m.name, m.version, m.sha256[:12], json.dumps(m.metrics)[:90])
    out.print(table)


@commands.command()
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
    from smartgrid.engine.csv_files import load_series
    from smartgrid.training.backtest import default_test_days, render_backtest_png, run_backtest
    from smartgrid.training.moe import EXPERTS, MoEParams

    with errors():
        settings = get_settings()
        check_outputs(json_out, plot)
        series = load_series(data, min_days=30, flatline_hours=settings.flatline_hours, fill_gaps_up_to=fill_gaps)
        n_test = test_days or default_test_days(series)
        blocks = -(-n_test // retrain_every) if retrain_every > 0 else 1
        with progress((2 * len(EXPERTS) + 3) * blocks, "backtest") as step:
            result = run_backtest(
                series,
                calendar_for(country),
                test_days=test_days,
                retrain_every=retrain_every,
                params=MoEParams(threads=settings.train_threads),
                progress=step,
            )
        png = render_backtest_png(result) if plot else None  # render before writing anything
        if json_out:
            write_json(json_out, result.to_json())
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


@commands.command()
def detect(
    data: DataOpt,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write scores and flags as JSON")] = None,
    models: ModelsOpt = None,
    threshold: Annotated[float | None, typer.Option("--threshold", min=0.01, max=0.99)] = None,
) -> None:
    """Score every reading and list the flagged ones with score and kind."""
    from smartgrid.engine.anomaly import detect as run_detect
    from smartgrid.engine.csv_files import read_csv
    from smartgrid.engine.data import validate
    from smartgrid.engine.model_files import ANOMALY_DETECTOR, load_model

    with errors():
        settings = get_settings()
        check_outputs(json_out)
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
            write_json(
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


@commands.command()
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
    from smartgrid.engine.csv_files import read_csv, read_temperature_csv, write_csv_atomic
    from smartgrid.engine.forecast import Forecaster, ModelSet

    with errors():
        settings = get_settings()
        check_outputs(csv_out)
        readings = read_csv(data)
        future = read_temperature_csv(temperature_forecast) if temperature_forecast else None
        ms = ModelSet.load(models or settings.model_dir, threads=settings.ort_threads)
        fc = Forecaster(ms, calendar_for(country), settings.flatline_hours).forecast_readings(readings, future)
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


@commands.command()
def calendar(
    country: Annotated[str, typer.Option("--country", help="ISO country code")] = "US",
    subdivision: Annotated[str | None, typer.Option("--subdivision", help="State/province code")] = None,
) -> None:
    """Pre-compute a holiday calendar into the package (read at start-up instead of `holidays`)."""
    from smartgrid.engine.features import write_calendar

    with errors():
        try:
            path = write_calendar(country, subdivision)
        except NotImplementedError as exc:
            raise ValueError(f"unknown holiday calendar: country {country!r}, subdivision {subdivision!r}") from exc
        out.print(f"wrote {path}")
