"""`smartgrid incidents list` (issue 7)."""

from __future__ import annotations
