"""gnorm-plugin-grokgap: the ``grokgap`` analyzer, and the example of an analyzer that brings its own
report section.

The grokking gap of a seed is T_grok - T_mem: the steps between fitting the training set and
generalizing. Per cell the analyzer reports the median gap over the seeds that grokked (and have a
T_mem) with its interquartile range; censored seeds are counted, never imputed. Its descriptor's
``report`` callable turns that analysis into a section of ``gnorm report`` with the table and a figure
(``figures/grokgap.png`` and ``.pdf``), so installing the package adds both with no change to gnorm.
``gnorm analyze DIR --analyzer grokgap`` prints the table; an experiment file may set its options::

    [[analysis]]
    name = "grokgap"
    stages = ["clamp"]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import attrs
import numpy as np

import gnorm
from gnorm.analysis import cell_label, median_or_none, records_by_cell, select
from gnorm.components import Analysis, RunRecord, Table
from gnorm.figures import new_figure, palette, styled
from gnorm.reporting import ReportContext, ReportSection

if TYPE_CHECKING:  # matplotlib is imported when the figure is drawn (gnorm.figures.new_figure)
    from matplotlib.figure import Figure


@attrs.frozen
class GrokGapConfig:
    """``stages``: the stages to read (default all)."""

    stages: list[str] = attrs.field(factory=list)


def grokking_gap(record: RunRecord) -> int | None:
    """T_grok - T_mem of one run; None when it did not grok or has no T_mem."""
    if record.t_grok is None or record.t_mem is None:
        return None
    return record.t_grok - record.t_mem


def grokgap_analyzer(config: GrokGapConfig):
    """Per cell: seeds with a gap / seeds, the median gap and its interquartile range over them."""
    def analyze(records: Sequence[RunRecord]) -> Analysis:
        rows, cells, notes = [], [], []
        for (stage, label), runs in records_by_cell(select(records, config.stages, {})).items():
            gaps = [g for g in (grokking_gap(r) for r in runs) if g is not None]
            low, high = (float(v) for v in np.percentile(gaps, [25, 75])) if gaps else (None, None)
            cells.append({"stage": stage, "cell": runs[0].cell, "seeds": len(runs), "gaps": gaps,
                          "median_gap": median_or_none(gaps), "iqr": [low, high]})
            rows.append([stage, label, f"{len(gaps)}/{len(runs)}", median_or_none(gaps), low, high])
            if len(gaps) < len(runs):
                notes.append(f"{stage} {cell_label(runs[0].cell)}: {len(runs) - len(gaps)} seeds without a gap "
                             "(censored or no T_mem)")
        table = Table("grokking gap T_grok - T_mem per cell (steps)",
                      ["stage", "cell", "seeds", "median gap", "IQR low", "high"], rows)
        return Analysis("grokgap", [table], {"cells": cells}, notes)
    return analyze


@styled
def grokgap_figure(cells: Sequence[dict[str, Any]]) -> Figure:
    """Each cell's seeds' gaps (dots) and their median (bar), one colour per stage, log y."""
    stages = list(dict.fromkeys(c["stage"] for c in cells))
    colour = dict(zip(stages, palette(len(stages), False)))
    figure = new_figure(max(4.0, 0.7 * len(cells) + 2.0), 4.2)
    axes = figure.subplots()
    for i, cell in enumerate(cells):
        if cell["median_gap"] is not None:
            axes.bar(i, cell["median_gap"], color=colour[cell["stage"]], alpha=0.5, width=0.6)
            axes.plot([i] * len(cell["gaps"]), cell["gaps"], "o", color=colour[cell["stage"]], ms=3)
    axes.set_xticks(range(len(cells)), [f"{c['stage']}\n{cell_label(c['cell'])}" for c in cells],
                    rotation=30, ha="right", fontsize=8)
    axes.set_yscale("log")
    axes.set_ylabel(r"$T_\mathrm{grok} - T_\mathrm{mem}$ (steps, log scale)")
    axes.set_title("Grokking gap per cell (bars: median over seeds)")
    return figure


def grokgap_section(config: GrokGapConfig, analysis: Analysis, context: ReportContext) -> ReportSection | None:
    """The gap table and figure; None when no run has a gap."""
    cells = [c for c in analysis.numbers["cells"] if c["gaps"]]
    if not cells:
        return None
    section = ReportSection("Grokking gap")
    section.analysis(analysis)
    section.figure("grokgap", grokgap_figure(cells), "Grokking gap T_grok - T_mem per cell: seeds and median")
    return section


@gnorm.hookimpl
def gnorm_analyzers() -> list[gnorm.Analyzer]:
    return [gnorm.Analyzer(name="grokgap", summary="grokking gap T_grok - T_mem per cell, with a figure",
                           config_class=GrokGapConfig, factory=grokgap_analyzer, report=grokgap_section)]
