"""examples/predict_single.json as a text template with its last load value left open, so that
benchmarks make many distinct request bodies (distinct cache keys) by string substitution
instead of JSON-encoding 28 days of readings for every request.

Benchmarks run as scripts (``python benchmarks/NAME.py``), so this module is imported from the
script's own directory.
"""

from __future__ import annotations

import json
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "predict_single.json"
SENTINEL = 987654321.125  # stands for the varied last load while the template is made


class ExampleTemplate:
    def __init__(self) -> None:
        body = json.loads(EXAMPLE.read_text())
        load = body["history"]["load"]
        self.base = float(load[-1])  # the example's own last load
        load[-1] = SENTINEL
        text = json.dumps(body, separators=(",", ":"))
        self.prefix, self.suffix = text.split(repr(SENTINEL))

    def with_last_load(self, value: float) -> str:
        """The example's body, compact JSON, with ``value`` as its last load."""
        return f"{self.prefix}{value!r}{self.suffix}"
