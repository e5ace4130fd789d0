"""`smartgrid ops check` (issue 5)."""

from __future__ import annotations
