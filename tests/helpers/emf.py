"""Reading Powertools' EMF lines in tests."""

from __future__ import annotations

from typing import Any


def values(emf_line: dict[str, Any], name: str) -> list[Any]:
    """An EMF line's values for a metric (a number, or a list when several were recorded)."""
    v = emf_line[name]
    return v if isinstance(v, list) else [v]


def value(emf_line: dict[str, Any], name: str) -> Any:
    (v,) = values(emf_line, name)
    return v
