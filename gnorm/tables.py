"""Plain-text tables and the per-stage summary that ``gnorm run`` and ``gnorm show`` print."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from gnorm.analysis.records import records_by_cell
from gnorm.analysis.statistics import median_or_none
from gnorm.components import RunRecord, Table

__all__ = ["format_table", "format_value", "stage_summaries"]


def format_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not np.isfinite(value):
            return "-"
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.0f}"
    return str(value)


def format_table(table: Table) -> str:
    """A title, a header, a rule and the rows; numeric columns right-aligned, text left-aligned."""
    cells = [[format_value(v) for v in row] for row in table.rows]
    widths = [max(len(str(c)), *(len(row[i]) for row in cells)) if cells else len(str(c))
              for i, c in enumerate(table.columns)]
    numeric = [all(isinstance(row[i], (int, float)) or row[i] is None for row in table.rows)
               for i in range(len(table.columns))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if right else v.ljust(w) for v, w, right in zip(values, widths, numeric)).rstrip()

    return "\n".join([table.title, line([str(c) for c in table.columns]), "  ".join("-" * w for w in widths),
                      *(line(row) for row in cells)])


def stage_summaries(records: Sequence[RunRecord], planned: dict[str, dict[str, int]]) -> list[Table]:
    """One table per stage: per cell, seeds grokked / planned, median T_mem, median T_grok over grokked
    seeds, and the median norm at grok (for a free stage, the critical norm Wc)."""
    by_cell = records_by_cell(records)
    tables = []
    for stage, cells in planned.items():
        rows = []
        for label, count in cells.items():
            done = by_cell.get((stage, label), [])
            grokked = [r for r in done if not r.censored]
            rows.append([label, f"{len(grokked)}/{len(done)}" + ("" if len(done) == count else f" ({count} planned)"),
                         median_or_none([r.t_mem for r in done]), median_or_none([r.t_grok for r in grokked]),
                         median_or_none([r.norm_at_grok for r in grokked])])
        controller = next((r.config["controller"]["name"] for r in records if r.stage == stage), "")
        title = f"stage {stage}" + (f" (controller {controller})" if controller else "")
        tables.append(Table(title, ["cell", "grokked", "median T_mem", "median T_grok", "median ||W|| at grok"], rows))
    return tables
