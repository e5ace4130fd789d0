"""Typed errors raised by the domain. Callers (CLI, API) map them to exit codes / HTTP
responses in one place; the domain never formats transport-level errors itself."""

from __future__ import annotations

from dataclasses import dataclass, field

# How many problems (and rows per problem) an error response lists; the detail gives the count.
MAX_PROBLEMS_SHOWN = 20


class SmartgridError(Exception):
    """Base class for every error the domain raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One specific thing wrong with input data."""

    code: str  # machine-readable, e.g. "duplicate_timestamp"
    message: str  # human-readable, names the rows
    rows: tuple[int, ...] = field(default_factory=tuple)  # 1-based data rows (header excluded)
    field_name: str | None = None


class DataValidationError(SmartgridError):
    """Input data failed validation. Carries every problem found, not only the first."""

    def __init__(self, problems: list[Problem], source: str = "input") -> None:
        self.problems = problems
        self.source = source
        super().__init__(self.render())

    def render(self, limit: int = 20) -> str:
        head = f"{self.source}: {len(self.problems)} problem(s) found"
        lines = [f"  - {p.message}" for p in self.problems[:limit]]
        if len(self.problems) > limit:
            lines.append(f"  ... and {len(self.problems) - limit} more")
        return "\n".join([head, *lines])


class InsufficientHistoryError(DataValidationError):
    """Not enough history to produce what was asked."""


class ModelIntegrityError(SmartgridError):
    """A model file does not match the checksum recorded in its metadata, or is unreadable."""


class ModelNotFoundError(SmartgridError):
    """A model file or its metadata is missing."""


class ForecastUnavailableError(SmartgridError):
    """Neither the primary model nor the fallback could produce a forecast."""


class NotFoundError(SmartgridError):
    """The thing asked for does not exist (for this user)."""


class ConflictError(SmartgridError):
    """The request conflicts with the state of the resource (e.g. an idempotency key that is
    still being processed, or reused with a different body)."""

    def __init__(self, message: str, code: str) -> None:
        self.code = code
        super().__init__(message)


class DependencyUnavailableError(SmartgridError):
    """A critical dependency (the predictions table) failed; nothing was written."""


class PartialWriteError(DependencyUnavailableError):
    """The predictions table failed mid-write and the partial write could not be undone: some
    predictions may be stored (a retry with the same Idempotency-Key overwrites them)."""


class AuthError(SmartgridError):
    """Missing (401) or invalid (403) credentials."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)
