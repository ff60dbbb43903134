"""What a report section is made of: the types an analyzer's ``report`` callable returns and receives.

An analyzer's descriptor may carry ``report``, a callable ``(config, analysis, context) ->
ReportSection | None``: it builds the analyzer's section of ``gnorm report`` from the analysis the
report ran (with ``config``), and returns None when it has nothing to show. ``report_config``, a
callable ``(records) -> config | None``, chooses the settings the report runs the analyzer with when
the experiment file has no ``[[analysis]]`` table for it (None: the analyzer does not apply to these
runs; without the field the config class's defaults are used). A minimal section::

    def grokgap_section(config, analysis, context):
        section = ReportSection("Grokking gap")
        section.analysis(analysis)                     # its tables and notes
        section.figure("grokgap", draw(analysis.numbers), "T_grok - T_mem per cell")
        return section

Figures are ``matplotlib.figure.Figure`` objects (see :mod:`gnorm.figures` for gnorm's style);
the report writer saves each as ``figures/<name>.png`` and ``.pdf`` and embeds it in ``report.md``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import attrs

from gnorm.components import Analysis, RunRecord, Table

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@attrs.frozen(eq=False)
class ReportFigure:
    """A figure of a section: ``name`` is its file stem under ``figures/`` (see :func:`slug`)."""

    name: str
    figure: Figure
    caption: str


@attrs.frozen
class LeftOut:
    """A figure that does not apply to the data, and why; the report says so where it would stand."""

    what: str
    why: str

    def __str__(self) -> str:
        return f"{self.what}: {self.why}"


#: One block of a section: a Markdown paragraph, a table, a figure, or a figure left out.
Block = str | Table | ReportFigure | LeftOut


@attrs.define
class ReportSection:
    """One ``## title`` section of ``report.md``: its blocks in the order they are shown."""

    title: str
    blocks: list[Block] = attrs.field(factory=list)

    def add(self, *paragraphs: str) -> None:
        """Markdown paragraphs; empty ones are skipped."""
        self.blocks += [p for p in paragraphs if p]

    def table(self, table: Table) -> None:
        self.blocks.append(table)

    def analysis(self, analysis: Analysis) -> None:
        """The analysis's tables that have rows, then its notes as a list."""
        self.blocks += [t for t in analysis.tables if t.rows]
        if analysis.notes:
            self.add("\n".join(f"- {note}" for note in analysis.notes))

    def figure(self, name: str, figure: Figure, caption: str) -> None:
        self.blocks.append(ReportFigure(name, figure, caption))

    def leave_out(self, what: str, why: str) -> None:
        """Say in the report which figure was not drawn and why."""
        self.blocks.append(LeftOut(what, why))

    @property
    def figures(self) -> list[ReportFigure]:
        return [b for b in self.blocks if isinstance(b, ReportFigure)]

    @property
    def left_out(self) -> list[LeftOut]:
        return [b for b in self.blocks if isinstance(b, LeftOut)]


@attrs.frozen(eq=False)
class ReportContext:
    """What a section may read besides its own analysis.

    ``records``: every finished run of the results directory; ``trajectory(run_id)``: a run's stored
    evaluations (``{"step": [...], "<metric>": [...]}``, as ``Store.trajectory`` returns them);
    ``analyses``: every analysis this report ran, by analyzer name; ``file_analyses``: the names of the
    analyzers the experiment file has an ``[[analysis]]`` table for (whose settings the report used)."""

    results_dir: Path
    out_dir: Path
    records: Sequence[RunRecord]
    trajectory: Callable[[str], dict[str, list[Any]]]
    analyses: Mapping[str, Analysis] = attrs.field(factory=dict)
    file_analyses: frozenset[str] = frozenset()

    def from_file(self, analyzer: str) -> bool:
        """Whether the report ran ``analyzer`` with the experiment file's settings."""
        return analyzer in self.file_analyses


def slug(text: str) -> str:
    """A file-name-safe form of a stage or cell label (``pscan/clamp`` -> ``pscan-clamp``)."""
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text.replace("/", "-")).strip("_") or "all"


def settings_text(config: Any) -> str:
    """``within = `{"task.p": [59, 59]}`, min_cells = `2``: the settings that differ from the defaults."""
    if not attrs.has(type(config)):
        return ""
    defaults = attrs.asdict(type(config)())
    return ", ".join(f"{key} = `{json.dumps(value)}`" for key, value in attrs.asdict(config).items()
                     if value != defaults.get(key))
