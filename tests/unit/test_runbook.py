"""docs/runbook.md against the alert table: one section per alarm (the notifier links
`docs/runbook.md#<alarm id>` and quotes the first three Mitigate steps), each with what it
means, how to confirm, how to mitigate and whom to escalate to; the troubleshooting guide and
disaster-recovery scenarios of docs/requirements.md; links that resolve and `smartgrid` commands that exist."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest
import typer

from smartgrid.catalog import ALERTS, ESCALATION
from smartgrid.cli.main import app
from tests.helpers.paths import RUNBOOK

# The `## ` sections that are not alarms.
GENERAL_SECTIONS = ("Before you start", "Troubleshooting guide, serverless", "Disaster recovery")
ALERT_SUBSECTIONS = ("What it means here", "Confirm", "Mitigate", "Escalate")
# The troubleshooting guide of docs/requirements.md, entry by entry, and its recovery scenarios
# (docs/requirements.md#disaster-recovery).
TROUBLESHOOTING = (
    "API not responding",
    "High error rate",
    "Memory usage high",
    "Slow predictions",
    "Database connection issues",
    "Cache issues",
)
SCENARIOS = (
    "Scenario 1: API service crash",
    "Scenario 2: Database corruption",
    "Scenario 3: Model files lost",
    "Scenario 4: Complete server loss",
)
LIST_ITEM = re.compile(r"^(?:\d+\.|[-*]) \S")


@dataclass
class Section:
    title: str
    lines: list[str] = field(default_factory=list)  # prose lines (not in code blocks)
    text: str = ""  # everything, code blocks included
    subsections: dict[str, Section] = field(default_factory=dict)
    subsection_titles: list[str] = field(default_factory=list)


def parse(markdown: str) -> tuple[list[str], dict[str, Section]]:
    """`## ` sections (in order, repeats kept in the list) with their `### ` subsections;
    headings inside fenced code blocks are not headings."""
    order: list[str] = []
    sections: dict[str, Section] = {}
    current: Section | None = None
    sub: Section | None = None
    fenced = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and line.startswith("## "):
            title = line[3:].strip()
            order.append(title)
            current = sections.setdefault(title, Section(title))
            sub = None
            continue
        if not fenced and line.startswith("### ") and current is not None:
            title = line[4:].strip()
            current.subsection_titles.append(title)
            sub = current.subsections.setdefault(title, Section(title))
            continue
        for target in (current, sub):
            if target is not None:
                target.text += line + "\n"
                if not fenced and not line.startswith("```"):
                    target.lines.append(line)
    return order, sections


@pytest.fixture(scope="module")
def runbook() -> str:
    assert RUNBOOK.is_file(), f"{RUNBOOK} is missing"
    return RUNBOOK.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def parsed(runbook: str) -> tuple[list[str], dict[str, Section]]:
    return parse(runbook)


def slug(title: str) -> str:
    """GitHub's heading anchor."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def test_sections_are_the_alerts_in_catalog_order_and_the_general_ones(parsed):
    order, _ = parsed
    ids = [a.id for a in ALERTS]
    duplicates = sorted({t for t in order if order.count(t) > 1})
    assert not duplicates, f"sections repeated: {duplicates}"
    unknown = [t for t in order if t not in ids and t not in GENERAL_SECTIONS]
    assert not unknown, f"`## ` sections that are neither an alarm nor a general section: {unknown}"
    missing = [i for i in ids if i not in order]
    assert not missing, f"alarms without a `## <id>` section: {missing}"
    assert [t for t in order if t in ids] == ids, "alarm sections are not in the catalog's order"
    for title in GENERAL_SECTIONS:
        assert title in order, f"general section {title!r} is missing"


@pytest.mark.parametrize("alert", ALERTS, ids=lambda a: a.id)
def test_alert_section_has_summary_meaning_confirm_mitigate_escalate(parsed, alert):
    _, sections = parsed
    section = sections[alert.id]
    assert slug(alert.id) == alert.id, "the notifier's anchor is the id itself"
    assert section.subsection_titles == list(ALERT_SUBSECTIONS), section.subsection_titles

    # The one-line summary before the first subsection: severity, level, what fired.
    summary = " ".join(line for line in section.lines if line.strip()).split("###")[0]
    assert str(alert.severity) in summary and str(alert.level) in summary, summary[:200]

    confirm = section.subsections["Confirm"]
    assert f"$PREFIX-{alert.id}" in confirm.text, "Confirm reads the alarm itself (describe-alarms)"
    assert "aws " in confirm.text, "Confirm gives AWS CLI commands"

    items = [line for line in section.subsections["Mitigate"].lines if LIST_ITEM.match(line)]
    assert len(items) >= 3, f"Mitigate needs at least 3 list items (the notifier quotes 3), got {items}"

    escalate = " ".join(section.subsections["Escalate"].lines)
    level = ESCALATION[alert.level]
    assert re.search(rf"\b{alert.level}\b", escalate), f"Escalate does not name {alert.level}"
    assert level.who in escalate, f"Escalate does not name {level.who}"
    assert level.response in escalate, f"Escalate does not give the response time {level.response}"


@pytest.mark.parametrize("alert", ALERTS, ids=lambda a: a.id)
def test_the_notifier_quotes_the_first_three_mitigate_steps_whole(parsed, alert):
    """Each Mitigate item is one line (the notifier's parser stops at a continuation line), and
    what the notifier reads from this file is exactly the first three items."""
    from smartgrid.domain.incidents import runbook_steps

    _, sections = parsed
    lines = [line for line in sections[alert.id].subsections["Mitigate"].lines if line.strip()]
    assert all(LIST_ITEM.match(line) for line in lines), "Mitigate holds only one-line list items"
    first = [re.sub(r"^(?:\d+\.|[-*]) ", "", line).strip() for line in lines[:3]]
    assert runbook_steps(str(RUNBOOK), alert.id) == first


def test_direct_alarms_say_they_bypass_the_notifier(parsed):
    _, sections = parsed
    for alert in ALERTS:
        if alert.direct:
            text = sections[alert.id].text
            assert "raw" in text and "notifier" in text, alert.id


def test_the_manuals_troubleshooting_guide_and_recovery_scenarios(parsed):
    _, sections = parsed
    guide = sections["Troubleshooting guide, serverless"]
    assert guide.subsection_titles == list(TROUBLESHOOTING)
    for title in TROUBLESHOOTING:
        assert len(guide.subsections[title].lines) > 3, f"{title} is empty"
    recovery = sections["Disaster recovery"]
    assert recovery.subsection_titles == list(SCENARIOS)
    for title in SCENARIOS[1:]:
        assert "smartgrid restore --backup" in recovery.subsections[title].text, title
    assert "--table predictions --yes" in recovery.subsections[SCENARIOS[1]].text
    assert "--models" in recovery.subsections[SCENARIOS[2]].text
    assert "SMARTGRID_BACKUPS_BUCKET" in recovery.subsections[SCENARIOS[3]].text


def test_every_link_inside_the_runbook_resolves(runbook, parsed):
    _, sections = parsed
    anchors = {slug(t) for t in sections} | {slug(s) for sec in sections.values() for s in sec.subsections}
    links = re.findall(r"\]\(#([^)]+)\)", runbook)
    assert links
    broken = sorted({a for a in links if a not in anchors})
    assert not broken, f"links to no heading: {broken}"


def _code(markdown: str) -> list[str]:
    """Fenced code lines and inline code spans (which may wrap), whitespace normalised."""
    snippets: list[str] = []
    prose: list[str] = []
    fenced = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        (snippets if fenced else prose).append(line)
    spans = re.findall(r"`([^`]+)`", "\n".join(prose))
    return [" ".join(s.split()) for s in snippets + spans]


def test_smartgrid_commands_and_options_exist(runbook):
    root = typer.main.get_command(app)
    checked = 0
    for snippet in _code(runbook):
        for m in re.finditer(r"(?<![\w$/.-])smartgrid\s+(?=[a-z])", snippet):
            rest = re.split(r"#|\||;|&&", snippet[m.end() :])[0].split()
            command = root.commands.get(rest[0])  # type: ignore[attr-defined]
            assert command is not None, f"no `smartgrid {rest[0]}` ({snippet})"
            words = [rest[0]]
            if hasattr(command, "commands"):
                assert len(rest) > 1 and rest[1] in command.commands, f"no `smartgrid {' '.join(rest[:2])}`"
                command = command.commands[rest[1]]
                words.append(rest[1])
            known = {o for p in command.params for o in (*getattr(p, "opts", ()), *getattr(p, "secondary_opts", ()))}
            for token in rest[len(words) :]:
                if token.startswith("--"):
                    option = token.split("=")[0]
                    assert option in known, f"`smartgrid {' '.join(words)}` has no {option} ({snippet})"
            checked += 1
    assert checked >= 20


def test_a_deployed_notifier_quotes_the_packaged_runbook():
    """On Lambda runbook_url is a link (or a path that is not there): the first steps come from
    the package's copy, which is this file (a symlink the CDK asset follows)."""
    from smartgrid.config import Settings
    from smartgrid.domain.incidents import PACKAGED_RUNBOOK, _runbook_file, runbook_steps

    assert PACKAGED_RUNBOOK.read_text() == RUNBOOK.read_text()
    settings = Settings(runbook_url="https://git.example.com/smartgrid/blob/main/docs/runbook.md")
    assert _runbook_file(settings) == str(PACKAGED_RUNBOOK)
    assert len(runbook_steps(_runbook_file(settings), "api-down")) == 3
