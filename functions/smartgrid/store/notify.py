"""Messages to people: SNS publishing to the escalation levels' topics (``Settings.alert_topics``,
level ``L1``..``L3`` -> topic ARN; the CDK app subscribes the ``alertEmails`` addresses).

The subject is what an e-mail subscriber sees first: SNS takes at most 100 printable ASCII
characters on one line, so it is cleaned and shortened here rather than refused by SNS. The
message is plain text (at most SNS's 256 KB; longer ones are cut with a note)."""

from __future__ import annotations

import re

from smartgrid.catalog import Level
from smartgrid.config import Settings, get_settings
from smartgrid.observability import logger
from smartgrid.store.aws import client

MAX_SUBJECT = 100
MAX_MESSAGE_BYTES = 262_144
_CUT_NOTE = "\n... (message cut at SNS's 256 KB limit; the full text is in the function's log)"


def clean_subject(subject: str) -> str:
    """One line of printable ASCII, at most 100 characters (SNS's rules for a subject)."""
    text = subject.encode("ascii", "replace").decode("ascii")
    text = re.sub(r"\s+", " ", re.sub(r"[^\x20-\x7e]", " ", text)).strip() or "smartgrid"
    if len(text) > MAX_SUBJECT:
        text = text[: MAX_SUBJECT - 3].rstrip() + "..."
    return text


def clean_message(message: str) -> str:
    raw = message.encode()
    if len(raw) <= MAX_MESSAGE_BYTES:
        return message
    room = MAX_MESSAGE_BYTES - len(_CUT_NOTE.encode())
    return raw[:room].decode(errors="ignore") + _CUT_NOTE


def publish(level: str, subject: str, message: str, settings: Settings | None = None) -> str | None:
    """Publish to the topic of escalation ``level``; the message id, or None when no topic is
    configured for that level (a local run): then the message is only logged, at WARNING.
    SNS failures raise (botocore errors): a job that must notify fails and is retried."""
    settings = settings or get_settings()
    if level not in {lv.value for lv in Level}:
        raise ValueError(f"unknown escalation level {level!r}; expected one of {', '.join(lv.value for lv in Level)}")
    topic = settings.alert_topics.get(level)
    if not topic:
        logger.warning(
            "no SNS topic configured for this level (SMARTGRID_ALERT_TOPICS); message not sent",
            extra={"level": level, "subject": subject, "sns_message": message},
        )
        return None
    response = client("sns", settings).publish(
        TopicArn=topic, Subject=clean_subject(subject), Message=clean_message(message)
    )
    message_id: str = response["MessageId"]
    logger.info("published to SNS", extra={"level": level, "topic": topic, "message_id": message_id})
    return message_id
