"""Fixtures of the infrastructure tests: the Lambda layers, built once per test worker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.paths import ROOT


@pytest.fixture(scope="session")
def built_layers(tmp_path_factory) -> tuple[Path, dict]:
    """The layers, built once per test worker by layers/build.py (no Docker; pip needs the
    package registry). Modules that use it share one xdist group, so one worker builds."""
    out_dir = tmp_path_factory.mktemp("layers")
    out = subprocess.run(
        [sys.executable, str(ROOT / "layers" / "build.py"), "--out", str(out_dir)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out_dir, json.loads(out.stdout)
