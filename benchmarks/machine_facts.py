"""What every benchmark records beside its figures: package versions and the CPU model.

Benchmarks run as scripts (``python benchmarks/NAME.py``), so this module is imported from the
script's own directory.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from importlib import metadata


def versions(names: Iterable[str]) -> dict[str, str | None]:
    """Python's version and each named distribution's (None when it is not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    except OSError:
        return None
