"""The layout as rules: import-linter's contracts (pyproject.toml) hold on the package and are
live (a planted breach breaks them), and the package's top level stays small."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.paths import ROOT

PACKAGE = ROOT / "functions" / "smartgrid"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(cwd / "pyproject.toml")],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    shutil.copytree(PACKAGE, tmp_path / "smartgrid", ignore=shutil.ignore_patterns("__pycache__", "models"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_contracts_hold() -> None:
    res = subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("engine/anomaly.py", "import boto3", "The engine touches no AWS SDK"),
        ("domain/usage.py", "from smartgrid.api import app", "Entry points over domain"),
        ("store/status.py", "from smartgrid.domain import ops", "Entry points over domain"),
        ("domain/probe.py", "from smartgrid.domain import ops", "No import cycle"),
        ("catalog.py", "from smartgrid.engine import accuracy", "The shared modules"),
    ],
)
def test_a_planted_breach_breaks_its_contract(package_copy: Path, module: str, line: str, contract: str) -> None:
    target = package_copy / "smartgrid" / module
    target.write_text(target.read_text() + f"\n{line}  # planted\n")
    res = _lint(package_copy)
    assert res.returncode != 0
    broken = res.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, res.stdout


def test_the_top_level_is_small_and_one_module_at_most_is_long() -> None:
    top = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    assert len(top) <= 8, top
    long = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if len(p.read_text().splitlines()) > 600]
    assert len(long) <= 1, long
