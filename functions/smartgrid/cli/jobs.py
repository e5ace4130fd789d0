"""``ingest``, ``usage`` and ``probe``: the ingestion, usage-report and health-probe jobs, run from a shell."""

# They run against the configured AWS (or AWS_ENDPOINT_URL) as the scheduled jobs do; the probe
# checks the API's /health (docs/requirements.md#health).

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from smartgrid.cli.common import check_outputs, err, errors, out, write_json
from smartgrid.config import get_settings
from smartgrid.errors import DependencyUnavailableError

commands = typer.Typer()
# `probe` has its own instance only so that `smartgrid --help` keeps listing it where it always
# has, after `calendar` (main.py adds the instances in that order).
probe_commands = typer.Typer()


@probe_commands.command("probe")
def probe_command(
    url: Annotated[
        str, typer.Argument(help="The API's base URL, e.g. https://abc.execute-api.eu-west-1.amazonaws.com/v1")
    ],
    timeout: Annotated[float, typer.Option(min=0.1, max=60, help="Seconds to wait for /health")] = 5.0,
) -> None:
    """Probe the API's /health as the scheduled health probe does; exit 1 when not available."""
    from smartgrid.domain.probe import probe

    with errors():
        result = probe(url, timeout)
    shown = f"{result.http_status or 'no answer'} {result.status or result.error or ''}".strip()
    verdict = "available" if result.available else "[red]NOT available[/]"
    out.print(f"{result.url}: {verdict} ({shown}, {result.latency_s:.3f} s)")
    if result.body is not None and result.status != "ok":
        out.print(result.body)
    if not result.available:
        raise typer.Exit(1)


@contextmanager
def _aws_errors() -> Iterator[None]:
    """An AWS service failing (or unreachable, or no credentials): exit 1 with what failed."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (DependencyUnavailableError, BotoCoreError, ClientError) as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from exc


@commands.command()
def ingest(
    file: Annotated[
        Path | None,
        typer.Argument(help="A local CSV (.csv or .csv.gz) to upload to incoming/<client>/<site>/ and ingest"),
    ] = None,
    key: Annotated[
        str | None, typer.Option("--key", help="Ingest this key of the meter-data bucket instead (incoming/...)")
    ] = None,
    client: Annotated[str | None, typer.Option("--client", help="The client (API user id) the readings are of")] = None,
    site: Annotated[str | None, typer.Option("--site", help="The site id (as in predictions' site_id)")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the outcome as JSON")] = None,
) -> None:
    """Ingest meter data as the ingestion function does: validate; store the readings under
    accepted/; record them as actuals of the client's predictions for the site; detect
    anomalies (published to the L1 topic). A bad file is moved to rejected/ with a report
    (exit 2). A file ingested before is not processed again."""
    from smartgrid.domain.ingestion import MeterObject, build_ingestor

    with errors(), _aws_errors():
        if (file is None) == (key is None):
            raise ValueError("give either FILE (with --client and --site) or --key KEY")
        if file is not None and not (client and site):
            raise ValueError("FILE needs --client and --site (its key becomes incoming/<client>/<site>/<file name>)")
        if key is not None and (client or site):
            raise ValueError("--key names the client and site itself (incoming/<client>/<site>/<name>)")
        if file is not None and not file.is_file():
            raise ValueError(f"{file}: no such file")
        check_outputs(json_out)
        settings = get_settings()
        ingestor = build_ingestor(settings)
        if file is not None:
            obj = ingestor.upload(file, client or "", site or "")
            out.print(f"uploaded {file} to s3://{obj.bucket}/{obj.key}")
        else:
            obj = MeterObject(settings.meter_data_bucket, key or "")
        outcome = ingestor.ingest(obj)
        if json_out:
            write_json(json_out, outcome.to_dict())
    where = f"s3://{outcome.bucket}/{outcome.key}"
    if outcome.status == "accepted":
        out.print(
            f"[green]accepted[/] {escape(where)}: {outcome.readings} readings, {outcome.first} to {outcome.last} "
            f"({outcome.resolution_minutes}-minute), stored as {escape(outcome.accepted_key or '')}"
        )
        if outcome.actuals:
            table = Table(title=f"actuals recorded for {len(outcome.actuals)} prediction(s)")
            for c in ("prediction", "points", "MAE (MW)"):
                table.add_column(c)
            for a in outcome.actuals:
                table.add_row(a["prediction_id"], str(a["points"]), f"{a['mae']:.2f}")
            out.print(table)
        else:
            out.print("no prediction of this client and site covers these readings")
        an = outcome.anomalies
        if an is None:
            out.print("anomaly detection skipped: less than two days of readings, with the site's week before")
        else:
            kinds = ", ".join(f"{k} {n}" for k, n in an["kinds"].items())
            sent = f"; published to L1 (message {outcome.notification})" if outcome.notification else ""
            out.print(f"anomalies: {an['flagged']} flagged" + (f" ({kinds})" if kinds else "") + sent)
    elif outcome.status in ("duplicate", "in_progress", "superseded"):
        out.print(f"{outcome.status}: {escape(where)}: {outcome.detail}; nothing done")
    elif outcome.status == "rejected":
        err.print(f"[bold red]rejected:[/] {escape(where)}: {len(outcome.problems)} problem(s)")
        for p in outcome.problems[:20]:
            err.print(f"  - {escape(p.message)}", highlight=False, soft_wrap=True)
        if len(outcome.problems) > 20:
            err.print(f"  ... and {len(outcome.problems) - 20} more")
        err.print(f"moved to s3://{outcome.bucket}/{escape(outcome.rejected_key or '')}; report: {outcome.report_key}")
        raise typer.Exit(2)
    else:  # ignored, missing
        err.print(f"[bold red]error:[/] {escape(where)}: {outcome.status}: {escape(outcome.detail)}")
        raise typer.Exit(2)


@commands.command()
def usage(
    month: Annotated[str | None, typer.Option("--month", help="YYYY-MM (UTC); default: last month")] = None,
    publish: Annotated[
        bool, typer.Option("--publish/--no-publish", help="Also send it to the L1 topic, as the monthly job does")
    ] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON")] = None,
) -> None:
    """The monthly usage report: predictions made in a month per client, the total, and
    whether it reached the manual's 100k."""
    from smartgrid.domain.predictions import utcnow
    from smartgrid.domain.usage import Month, report

    with errors(), _aws_errors():
        wanted = Month.parse(month) if month else Month.previous(utcnow())
        check_outputs(json_out)
        result, message_id = report(get_settings(), wanted, publish=publish)
        if json_out:
            write_json(json_out, {**result.to_dict(), "notification": message_id})
    out.print(result.text(), markup=False, highlight=False, soft_wrap=True)
    if publish:
        out.print(f"published to L1 (message {message_id})" if message_id else "no L1 topic configured: not published")
