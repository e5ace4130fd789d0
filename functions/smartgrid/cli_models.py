"""`smartgrid models publish|rollback|champion` and `smartgrid retrain` (issue 5)."""

from __future__ import annotations
