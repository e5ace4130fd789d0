"""Request bodies for the API: the example body (tests/conftest.py's ``example_body``) and
variations of it."""

from __future__ import annotations

import copy


def vary(body: dict, k: float) -> dict:
    """Same shape, other numbers: another forecast (a cache miss)."""
    b = copy.deepcopy(body)
    b["history"]["load"][-1] = round(b["history"]["load"][-1] * (1 + k), 3)
    return b
