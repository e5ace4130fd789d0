"""The monthly usage report: how many predictions each client (API user id) made in a
calendar month (UTC), the total, and the INFO row "100k+ predictions processed | Monthly
report" of docs/requirements.md#alerts (the total reaching 100,000). Published to the L1 topic (the
escalation matrix routes INFO to operations) and logged.

Counting reads the whole predictions table (a Scan: its key is per user, no index spans
users), filtered on the ULID range of the month (a prediction id encodes its creation time),
projected to the user id and followed page by page, in parallel segments. Predictions
expire after ``prediction_retention_days``: a month older than that is counted short, and
the report says so.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from smartgrid.catalog import Level
from smartgrid.config import Settings
from smartgrid.domain.predictions import utcnow
from smartgrid.observability import logger
from smartgrid.store import notify

USAGE_FLAG_THRESHOLD = 100_000  # "100k+ predictions processed | Monthly report" (INFO, docs/requirements.md#alerts)
SCAN_SEGMENTS = 4  # parallel Scan segments: a year of predictions is GBs of items, read at ~1 MB a call
SCAN_PAGE_SIZE: int | None = None  # items per Scan call; None: DynamoDB's 1 MB pages


class CountStore(Protocol):
    """``smartgrid.store.predictions_table.DynamoStore``."""

    def count_predictions(self, start: datetime, end: datetime, page_size: int | None, segments: int) -> Any: ...


@dataclass(frozen=True)
class Month:
    year: int
    month: int

    @classmethod
    def parse(cls, text: str) -> Month:
        m = re.fullmatch(r"(\d{4})-(\d{2})", text.strip())
        if not m or not 1 <= int(m.group(2)) <= 12 or int(m.group(1)) < 1970:
            raise ValueError(f"month {text!r}: expected YYYY-MM (UTC), e.g. 2026-11")
        return cls(int(m.group(1)), int(m.group(2)))

    @classmethod
    def previous(cls, now: datetime) -> Month:
        """The calendar month before the one ``now`` (UTC) is in."""
        now = now.astimezone(UTC)
        return cls(now.year - 1, 12) if now.month == 1 else cls(now.year, now.month - 1)

    @property
    def start(self) -> datetime:
        return datetime(self.year, self.month, 1, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        """The first instant after the month."""
        return (
            datetime(self.year + 1, 1, 1, tzinfo=UTC)
            if self.month == 12
            else datetime(self.year, self.month + 1, 1, tzinfo=UTC)
        )

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class UsageReport:
    month: str
    start: str
    end: str
    total: int
    per_client: dict[str, int]  # most predictions first
    threshold: int
    over_threshold: bool  # "100k+ predictions processed" (docs/requirements.md#alerts)
    complete: bool  # False while the month is not over
    expired: bool  # True when predictions of the month may have expired (retention)
    generated_at: str
    pages: int
    scanned: int

    def subject(self) -> str:
        flag = f" ({self.threshold:,}+ reached)" if self.over_threshold else ""
        todate = " so far" if not self.complete else ""
        return f"smartgrid usage {self.month}: {self.total:,} predictions{todate}{flag}"

    def text(self) -> str:
        lines = [
            f"Predictions processed in {self.month} (UTC, {self.start} to {self.end}): {self.total:,}",
        ]
        if not self.complete:
            lines.append("The month is not over: these are the counts to date.")
        if self.expired:
            lines.append("Predictions this old may have expired (retention): the counts can be short.")
        lines.append(
            f"{self.threshold:,} or more (the operations manual's INFO row '100k+ predictions processed'): "
            + ("YES" if self.over_threshold else "no")
        )
        lines += ["", f"Per client ({len(self.per_client)}):"]
        width = max((len(c) for c in self.per_client), default=6)
        lines += [f"  {client:<{width}}  {n:>12,}" for client, n in self.per_client.items()]
        if not self.per_client:
            lines.append("  (none)")
        lines += [
            "",
            f"Counted from the predictions table at {self.generated_at} "
            f"({self.pages} Scan page(s), {self.scanned:,} item(s) read).",
        ]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def count(
    store: CountStore,
    month: Month,
    now: datetime,
    retention_days: int,
    *,
    page_size: int | None = None,
    segments: int | None = None,
    threshold: int = USAGE_FLAG_THRESHOLD,
) -> UsageReport:
    found = store.count_predictions(
        month.start,
        month.end,
        page_size if page_size is not None else SCAN_PAGE_SIZE,
        segments if segments is not None else SCAN_SEGMENTS,
    )
    per_client = dict(sorted(found.per_user.items(), key=lambda kv: (-kv[1], kv[0])))
    total = sum(per_client.values())
    return UsageReport(
        month=str(month),
        start=_iso(month.start),
        end=_iso(month.end),
        total=total,
        per_client=per_client,
        threshold=threshold,
        over_threshold=total >= threshold,
        complete=now >= month.end,
        expired=month.start < now - timedelta(days=retention_days),
        generated_at=_iso(now),
        pages=found.pages,
        scanned=found.scanned,
    )


def report(
    settings: Settings,
    month: Month,
    *,
    publish: bool = True,
    store: CountStore | None = None,
    now: datetime | None = None,
    page_size: int | None = None,
    segments: int | None = None,
    threshold: int = USAGE_FLAG_THRESHOLD,
) -> tuple[UsageReport, str | None]:
    """Count, log, and (``publish``) send the report to the L1 topic; the report and the SNS
    message id (None when not published or no L1 topic is configured)."""
    if store is None:
        from smartgrid.store.predictions_table import DynamoStore

        store = DynamoStore(settings)
    result = count(
        store,
        month,
        now or utcnow(),
        settings.prediction_retention_days,
        page_size=page_size,
        segments=segments,
        threshold=threshold,
    )
    logger.info("usage report", extra={"usage": result.to_dict()})
    message_id = notify.publish(Level.L1.value, result.subject(), result.text(), settings) if publish else None
    return result, message_id


def month_of_event(event: dict[str, Any], now: datetime | None = None) -> Month:
    """The month a scheduler event asks for: ``{"month": "YYYY-MM"}`` when given (a run by
    hand), else the month before the event's time (a late or retried delivery still reports the
    month it was scheduled for), else the month before now."""
    if event.get("month"):
        return Month.parse(str(event["month"]))
    when = now or utcnow()
    if event.get("time"):
        try:
            when = datetime.fromisoformat(str(event["time"]).replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValueError(f"the event's time {event['time']!r} is not ISO 8601") from exc
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
    return Month.previous(when)
