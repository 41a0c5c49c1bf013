"""The report's "Design changes" section (issue #33): every change to a study's design, from the
hand-written reports/poster/design-changes.yaml, each with the earlier design's own verdicts and
gain table taken from its kept report, so no answer a design gave is hidden by the next one."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from kd_study.experiments import PosterError

FILE = "design-changes.yaml"                  # beside runs.jsonl, in the report's folder
REQUIRED = ("date", "study", "title", "status", "commits", "change", "why", "found")
STUDIES = ("cifar", "methods", "hinton", "mnist")
VERDICTS = "### The poster's claims at this scale"
GAINS = "### KD gain against the student's budget"


def design_changes_file(report: Path) -> Path:
    return report.with_suffix("") / FILE


def load(path: Path) -> list[dict]:
    """The entries, checked; a PosterError names the file and the entry that is wrong, so
    `make poster` stops before it queues anything rather than deep inside the report."""
    if not path.is_file():
        raise PosterError(f"{path}: missing; it lists the studies' design changes (docs/poster.md)")
    try:
        entries = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise PosterError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(entries, list):
        raise PosterError(f"{path}: should be a list of entries, one per design change")
    for number, entry in enumerate(entries, 1):
        where = f"{path}: entry {number}"
        if not isinstance(entry, dict):
            raise PosterError(f"{where}: not a mapping of {', '.join(REQUIRED)}")
        where += f" ({entry.get('title') or entry.get('date') or 'untitled'})"
        missing = [k for k in REQUIRED if entry.get(k) in (None, "", [])]
        if missing:
            raise PosterError(f"{where}: missing {', '.join(missing)}")
        unknown = sorted(set(entry) - {*REQUIRED, "kept"})
        if unknown:
            raise PosterError(f"{where}: unknown keys {', '.join(unknown)}")
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", str(entry["date"])):
            raise PosterError(f"{where}: date {entry['date']!r} is not YYYY-MM-DD (quote it)")
        if entry["study"] not in STUDIES:
            raise PosterError(f"{where}: study {entry['study']!r} is not one of {', '.join(STUDIES)}")
        if not (isinstance(entry["commits"], list)
                and all(re.fullmatch(r"[0-9a-f]{7,40}", str(c)) for c in entry["commits"])):
            raise PosterError(f"{where}: commits should be a list of commit hashes")
        kept = entry.get("kept")
        if kept is not None and not (path.parent / "earlier" / str(kept) / "poster.md").is_file():
            raise PosterError(f"{where}: kept: no {path.parent / 'earlier' / str(kept) / 'poster.md'}")
    return entries


def check(report: Path) -> None:
    """What `make poster` checks before it queues anything: the design-changes file is valid, and
    every kept copy under earlier/ is named by an entry, so none lies there unexplained. Without
    kept copies the file may be absent (a fresh study has no history)."""
    path = design_changes_file(report)
    kept = sorted(p.parent.name for p in (path.parent / "earlier").glob("*/poster.md"))
    if not path.is_file() and not kept:
        return
    named = {str(entry.get("kept")) for entry in load(path)}
    unexplained = [k for k in kept if k not in named]
    if unexplained:
        raise PosterError(f"{path}: no entry names the kept copies {', '.join(unexplained)} (kept: <folder>); "
                          "add the design change that set each aside")


def _section(text: str, heading: str) -> list[str]:
    """The lines under `heading` up to the next heading, blank lines at the ends dropped."""
    lines = text.splitlines()
    if heading not in lines:
        return []
    body = []
    for line in lines[lines.index(heading) + 1:]:
        if line.startswith("#"):
            break
        body.append(line)
    while body and not body[0].strip():
        body.pop(0)
    while body and not body[-1].strip():
        body.pop()
    return body


def kept_results(kept_report: Path) -> tuple[list[str], list[str]]:
    """(verdict lines, gain-table rows) of a kept report, as it printed them; empty when it has
    no such sections (a report of another study)."""
    text = kept_report.read_text(encoding="utf-8")
    verdicts = [line for line in _section(text, VERDICTS) if line.startswith("- ")]
    gains = [line for line in _section(text, GAINS) if line.startswith("|")]
    return verdicts, gains


def design_changes_section(report: Path) -> list[str]:
    """Markdown lines; [] when the report's folder has no design-changes file (a report written
    elsewhere, as the tests do). `make poster` loads the file first, so there it is never absent."""
    path = design_changes_file(report)
    if not path.is_file():
        return []
    lines = ["## Design changes", "",
             f"Every change to a study's design after it was written down, from [{path.parent.name}/{FILE}]"
             f"({path.parent.name}/{FILE}) (written by hand). Where the earlier design's runs finished, its own "
             "verdicts and gain table follow, taken unchanged from its kept report.", ""]
    for entry in load(path):
        lines += [f"### {entry['date']}, {entry['study']}: {entry['title']}", "",
                  f"- **Status of the new design**: {entry['status']}.",
                  f"- **Commits**: {', '.join(f'`{c}`' for c in entry['commits'])}.",
                  f"- **What changed**: {entry['change']}",
                  f"- **Why**: {entry['why']}",
                  f"- **What the earlier design had found**: {entry['found']}"]
        kept = entry.get("kept")
        if kept is None:
            lines.append("")
            continue
        rel = f"{path.parent.name}/earlier/{kept}"
        lines += [f"- **Kept**: [{rel}/poster.md]({rel}/poster.md), verbatim.", ""]
        verdicts, gains = kept_results(path.parent / "earlier" / str(kept) / "poster.md")
        if verdicts:
            lines += [f"The earlier design's verdicts, as its report gave them ({kept}):", "", *verdicts, ""]
        if gains:
            figure = path.parent / "earlier" / str(kept) / "cifar-budget.png"
            lines += [f"Its gain against the student's budget ({kept}):", "", *gains, ""]
            if figure.is_file():
                lines += [f"![{kept}: KD gain vs budget]({rel}/cifar-budget.png)", ""]
    return lines
