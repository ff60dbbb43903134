"""``gnorm report``: a Markdown report of a results directory, assembled from the analyzers' sections.

``write_report`` runs each analysis the report shows once (:func:`run_report_analyses`), asks each
analyzer's ``report`` callable for its section (:mod:`gnorm.reporting`), adds the trajectories section,
and writes ``report.md`` next to a ``figures/`` folder; every figure is saved as PNG (for the Markdown)
and PDF (for papers). The writer knows no analyzer by name: which analyses run, with which settings,
and what their sections show is the analyzers' business. A figure that does not apply to the data is
left out and the report says why.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Sequence

import attrs
from matplotlib.figure import Figure

from gnorm.components import Analysis, RunRecord, Table
from gnorm.errors import UserError, write_failure
from gnorm.registry import Registry
from gnorm.reporting import LeftOut, ReportContext, ReportFigure, ReportSection, settings_text
from gnorm.store import Store
from gnorm.tables import format_value, stage_summaries
from gnorm.trajectories import trajectory_section


def markdown_table(table: Table) -> str:
    """A Markdown table: numbers as ``gnorm show`` prints them and right-aligned, ``|`` escaped."""
    def cell(value: Any) -> str:
        if isinstance(value, float) and math.isfinite(value) and abs(value) >= 1000:
            value = round(value)
        return format_value(value).replace("|", r"\|")

    numeric = [bool(table.rows) and all(isinstance(row[i], (int, float)) or row[i] is None for row in table.rows)
               for i in range(len(table.columns))]
    lines = ["| " + " | ".join(cell(c) for c in table.columns) + " |",
             "|" + "|".join("---:" if right else "---" for right in numeric) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.rows]
    return f"**{cell(table.title)}**\n\n" + "\n".join(lines)


@attrs.define
class ReportWriter:
    """Collects the report's Markdown and saves figures as PNG and PDF under ``figures/``."""

    directory: Path
    lines: list[str] = attrs.field(factory=list)
    figures: list[Path] = attrs.field(factory=list)
    left_out: list[str] = attrs.field(factory=list)

    def add(self, *paragraphs: str) -> None:
        self.lines += [p for p in paragraphs if p]

    def leave_out(self, what: str, why: str) -> None:
        """Say in the report which figure was not drawn and why."""
        self.left_out.append(f"{what}: {why}")
        self.add(f"*Figure left out:* {what}: {why}")

    def figure(self, name: str, figure: Figure, caption: str) -> None:
        folder = self.directory / "figures"
        for suffix in ("png", "pdf"):
            path = folder / f"{name}.{suffix}"
            try:
                folder.mkdir(parents=True, exist_ok=True)
                figure.savefig(path)
            except OSError as error:  # a full disk, a read-only directory
                raise write_failure("", path, error) from None
            self.figures.append(path)
        self.add(f"![{caption}](figures/{name}.png)\n\n*{caption}* ([PDF](figures/{name}.pdf))")

    def analysis(self, analysis: Analysis) -> None:
        self.add(*(markdown_table(t) for t in analysis.tables if t.rows))
        if analysis.notes:
            self.add("\n".join(f"- {note}" for note in analysis.notes))

    def section(self, section: ReportSection) -> None:
        """A section: its ``## title``, then its blocks in order."""
        self.add(f"## {section.title}")
        for block in section.blocks:
            if isinstance(block, Table):
                self.add(markdown_table(block))
            elif isinstance(block, ReportFigure):
                self.figure(block.name, block.figure, block.caption)
            elif isinstance(block, LeftOut):
                self.leave_out(block.what, block.why)
            else:
                self.add(block)


@attrs.frozen
class WrittenReport:
    """What ``write_report`` wrote: the Markdown file, every figure file, and the figures left out."""

    path: Path
    figures: list[Path]
    left_out: list[str]


@attrs.frozen(eq=False)
class ReportedAnalysis:
    """One analysis a report shows: the analyzer's name, the settings it ran with, its result, and
    whether the settings are the experiment file's (an ``[[analysis]]`` table)."""

    name: str
    config: Any
    analysis: Analysis
    from_file: bool


def run_report_analyses(records: Sequence[RunRecord], registry: Registry, choices: Sequence[Any] = (),
                        sections: bool = True) -> list[ReportedAnalysis]:
    """Run, once each, the analyses a report of ``records`` shows: every ``[[analysis]]`` choice of the
    experiment file (name and config) in its order, then (with ``sections``) every other analyzer
    that has a ``report`` section, with the settings its ``report_config(records)`` chooses (the
    config class's defaults without one; left out where it returns None). The run summary of
    ``gnorm run`` prints the file's choices from this same list."""
    done: dict[tuple[str, str], Analysis] = {}

    def analyze(name: str, config: Any, from_file: bool) -> ReportedAnalysis:
        key = (name, repr(config))
        if key not in done:
            done[key] = registry.get("analyzer", name).factory(config)(records)
        return ReportedAnalysis(name, config, done[key], from_file)

    ran = [analyze(choice.name, choice.config, True) for choice in choices]
    chosen = {choice.name for choice in choices}
    for name in registry.names("analyzer") if sections else []:
        analyzer = registry.get("analyzer", name)
        if name in chosen or getattr(analyzer, "report", None) is None:
            continue
        choose = getattr(analyzer, "report_config", None)
        config = choose(records) if choose is not None else analyzer.config_class()
        if config is not None:
            ran.append(analyze(name, config, False))
    return ran


def write_report(store: Store, out_dir: str | Path, registry: Registry, analyses: Sequence[Any] = (),
                 ran: Sequence[ReportedAnalysis] | None = None) -> WrittenReport:
    """Write ``out_dir/report.md`` for ``store``'s runs: a header and the runs per stage, then the
    section of each analyzer that has one (in the order of their names; for an analyzer the
    experiment file chose, with the file's settings, ``analyses``), the trajectories, and the tables
    of the file's other ``[[analysis]]`` choices. ``ran``: the analyses of
    :func:`run_report_analyses`, when the caller already has them. Figures of an earlier report in
    ``out_dir`` that this one does not draw again are removed, so figures/ never shows stale results."""
    records = store.records()
    if not records:
        raise UserError(f"{store.directory}: no finished runs to report on")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise write_failure("", out, error) from None
    ran = list(ran) if ran is not None else run_report_analyses(records, registry, analyses)
    context = ReportContext(store.directory, out, records, store.trajectory,
                            {r.name: r.analysis for r in ran}, frozenset(r.name for r in ran if r.from_file))
    report = ReportWriter(out)
    _header(report, store, records)
    shown = {r.name: r for r in ran}  # the last choice of an analyzer sets its section
    for name in sorted(shown):
        make = getattr(registry.get("analyzer", name), "report", None)
        section = make(shown[name].config, shown[name].analysis, context) if make is not None else None
        if section is not None:
            report.section(section)
    report.section(trajectory_section(context))
    others = [r for r in ran if r.from_file and getattr(registry.get("analyzer", r.name), "report", None) is None]
    if others:
        report.add("## Analyses from the experiment file")
        for other in others:
            changed = settings_text(other.config)
            report.add(f"### {other.name}" + (f" ({changed})" if changed else ""))
            report.analysis(other.analysis)
    path = out / "report.md"
    earlier = _figures_shown(path)
    try:
        path.write_text("\n\n".join(report.lines) + "\n")
    except OSError as error:
        raise write_failure("", path, error) from None
    for old in earlier - set(report.figures):
        old.unlink(missing_ok=True)
    return WrittenReport(path, report.figures, report.left_out)


def _figures_shown(report: Path) -> set[Path]:
    """The figure files (PNG and PDF) an existing ``report.md`` links to."""
    try:
        text = report.read_text()
    except (OSError, UnicodeDecodeError):
        return set()
    return {report.parent / "figures" / name for name in re.findall(r"\]\(figures/([^)/]+\.(?:png|pdf))\)", text)}


def describe_schedule(evaluation: dict[str, Any]) -> str:
    """``every 25 steps, each run stopped at its T_grok`` from a run's ``evaluation`` settings."""
    if evaluation.get("schedule") == "geometric":
        text = f"{evaluation.get('points')}-point geometric grid over the budget"
    elif evaluation.get("schedule") == "every":
        text = f"every {evaluation.get('every')} steps"
    else:
        text = ", ".join(f"{k} {v}" for k, v in evaluation.items()) or "not recorded"
    return text + (", each run stopped at its T_grok" if evaluation.get("stop_when_grokked") else "")


def _header(report: ReportWriter, store: Store, records: Sequence[RunRecord]) -> None:
    from gnorm.planner import planned_cells

    source = store.meta("source")
    imported = store.meta_json("reference_sources", [])
    origin = [f"Experiment file: `{source}`." if source else "",
              ("Imported reference data: " + ", ".join(f"`{s}`" for s in imported) + ".") if imported else ""]
    schedules = {json.dumps(r.config.get("evaluation") or {}, sort_keys=True) for r in records}
    schedule = store.meta("evaluation_schedule") or "; ".join(
        describe_schedule(json.loads(s)) for s in sorted(schedules)) or "not recorded"
    stages = len({r.stage for r in records})
    report.add(f"# gnorm report: {store.directory.name}",
               " ".join([*(o for o in origin if o), f"{len(records)} finished runs in {stages} "
                         f"stage{'s' if stages > 1 else ''}. Evaluation schedule: {schedule}."]),
               "T_grok is the first evaluated step at which test accuracy reaches the criterion's threshold; a "
               "seed that never does within its budget is censored (counted, never imputed). The delay exponent "
               "is called alpha; the training fraction is `task.train_fraction`.",
               "## Runs per stage")
    for table in stage_summaries(records, planned_cells(store.plan())):
        report.add(markdown_table(table))


__all__ = ["ReportWriter", "ReportedAnalysis", "WrittenReport", "describe_schedule", "markdown_table",
           "run_report_analyses", "write_report"]
