"""`smartgrid backup`, `smartgrid backups list`, `smartgrid restore` (issue 5)."""

from __future__ import annotations
