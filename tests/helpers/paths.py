"""Where things are: the repository's root, the data slices the tests read, the example body."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent  # the repository
DATA = ROOT / "tests" / "data"  # slices of the shared data sets (gefcom, pjme)
EXAMPLE = ROOT / "examples" / "predict_single.json"  # the README's /predict/single body
RUNBOOK = ROOT / "docs" / "runbook.md"
