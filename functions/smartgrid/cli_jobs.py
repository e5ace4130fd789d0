"""`smartgrid ingest` and `smartgrid usage` (issue 5)."""

from __future__ import annotations
