"""What every command module shares: the consoles, the error-to-exit-code mapping, progress and option types."""

# Errors in input data or models end a command with a clear message naming the file, row and
# problem, a non-zero exit code (2: bad input data, 3: model problem, 1: a file that cannot be
# written), and no output file. This module imports no other module of smartgrid.cli.

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from smartgrid.config import get_settings
from smartgrid.errors import ModelIntegrityError, ModelNotFoundError, SmartgridError

out = Console()
err = Console(stderr=True)

DataOpt = Annotated[Path, typer.Option("--data", help="CSV (optionally .gz): timestamp,load[,temperature]")]
ModelsOpt = Annotated[Path | None, typer.Option("--models", help="Model directory (default: bundled models)")]
CountryOpt = Annotated[str | None, typer.Option("--country", help="Holiday calendar country (ISO code)")]
FillOpt = Annotated[int, typer.Option("--fill-gaps", min=0, help="Interpolate gaps of up to N missing readings")]


def fail(exc: Exception) -> None:
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
def errors() -> Iterator[None]:
    """Turn smartgrid's errors, bad values and OS errors into a message and an exit code (``fail``)."""
    try:
        yield
    except (SmartgridError, ValueError, OSError) as exc:  # ValueError includes pydantic's settings errors
        fail(exc)


@contextmanager
def progress(total: int, label: str) -> Iterator[Callable[[str], None]]:
    """A progress bar on stderr with ``total`` steps; yields the function that advances it one step."""
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


def calendar_for(country: str | None) -> Any:
    """The holiday calendar of ``country`` (default: the configured one) and the configured subdivision."""
    from smartgrid.engine.features import HolidayCalendar

    s = get_settings()
    return HolidayCalendar(country or s.holiday_country, s.holiday_subdivision)


def check_outputs(*paths: Path | None) -> None:
    """Fail before any work if an output cannot be written (its folder cannot be made, or
    the path is a directory), so a late failure never leaves some outputs written."""
    for path in paths:
        if path is None:
            continue
        if path.is_dir():
            raise IsADirectoryError(21, "is a directory", str(path))
        path.parent.mkdir(parents=True, exist_ok=True)


def write_json(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON, atomically."""
    from smartgrid.engine.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
