"""uv, for other projects' locks and tools (checkov's own lock in tools/scanners, the exported
locks pip-audit reads)."""

from __future__ import annotations

import os
import shutil


def uv_command(*args: str) -> list[str]:
    """``uv *args``: the uv that runs these tests (``uv run`` names itself in UV), else the one on PATH."""
    uv = os.environ.get("UV") or shutil.which("uv")
    assert uv, "uv is needed (to export the locks, to run checkov from tools/scanners)"
    return [uv, *args]


def uv_env() -> dict[str, str]:
    """This environment without VIRTUAL_ENV (this test run's venv): uv then uses the project it
    is given (--project) with that project's own environment."""
    return {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
