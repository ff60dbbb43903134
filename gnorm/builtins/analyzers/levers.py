"""Levers: how many times slower or faster grokking gets between the ends of a sweep (``levers``), and
the delay-law section's levers subsection: the rho x lr matrix of median T_grok (``rho_lr_heatmap``)."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import TYPE_CHECKING, Sequence

import attrs
import numpy as np

import gnorm
from gnorm.analysis.records import group_label, group_records, numeric, record_value, select, value_order
from gnorm.analysis.statistics import median_or_none
from gnorm.builtins.analyzers.options import KEYS, STAGES, at_least, intervals, not_empty
from gnorm.components import Analysis, RunRecord, Table
from gnorm.figures import LR, RHO, axis_label, new_figure, plain_log_ticks, styled
from gnorm.reporting import ReportSection, slug

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@attrs.frozen
class LeversConfig:
    """Ratios of cell delays (median T_grok over grokked seeds) between the ends of two sweeps.

    ``x`` (default rho) and ``across`` (default the learning rate; "" for none). For each value a of
    ``across``: ratio_x(a) = T(max x, a) / T(min x, a). For each value r of ``x``:
    ratio_across(r) = T(r, min across) / T(r, max across). A lever is the fold change
    max(ratio, 1/ratio). The headline levers are read at the reference cell, by default the smallest
    x and the smallest ``across`` value (``reference`` sets either): paper A's norm lever
    T(rho 1.30) / T(rho 0.85) = 18.7x at lr 1e-3 and its lr lever T(lr 1e-3) / T(lr 8e-3) = 2.54x at
    rho 0.85. ``delay_from`` (a key, e.g. ``controller.t_start``) measures each seed's delay from that
    step instead of from step 0: T = median(T_grok - t_from) (paper B's same-state fork, 3.36x).
    Cells with fewer than ``min_grokked`` grokked seeds are left out and reported.
    """

    x: str = attrs.field(default="controller.rho", validator=not_empty, metadata=KEYS)
    across: str = attrs.field(default="optimizer.lr", metadata=KEYS)
    stages: list[str] = attrs.field(factory=list, metadata=STAGES)
    within: dict[str, list[float]] = attrs.field(factory=dict, validator=intervals, metadata=KEYS)
    reference: dict[str, float] = attrs.field(factory=dict, metadata=KEYS)
    delay_from: str = attrs.field(default="", metadata=KEYS)
    min_grokked: int = attrs.field(default=3, validator=at_least(1))


def delay_ratio(slow: float, fast: float) -> dict[str, float]:
    """ratio = slow / fast and the lever = max(ratio, 1 / ratio), the fold change between two delays."""
    ratio = slow / fast
    return {"ratio": ratio, "lever": max(ratio, 1.0 / ratio)}


def levers_analyzer(config: LeversConfig):
    def analyze(records: Sequence[RunRecord]) -> Analysis:
        chosen = select(records, config.stages, config.within)
        cells: dict[tuple[float, float], list[int | None]] = defaultdict(list)
        for record in chosen:
            x = record_value(record, config.x)
            a = record_value(record, config.across) if config.across else 0.0
            start = record_value(record, config.delay_from) if config.delay_from else 0
            if isinstance(x, (int, float)) and isinstance(a, (int, float)) and isinstance(start, (int, float)):
                delay = None if record.t_grok is None else record.t_grok - start
                cells[(round(float(x), 9), round(float(a), 12))].append(delay)
        notes, delays = [], {}
        for (x, a), times in sorted(cells.items()):
            grokked = sum(t is not None for t in times)
            if grokked < config.min_grokked:
                notes.append(f"left out {config.x}={x}" + (f", {config.across}={a}" if config.across else "")
                             + f": {grokked}/{len(times)} seeds grokked")
                continue
            if grokked < len(times):
                notes.append(f"{config.x}={x}" + (f", {config.across}={a}" if config.across else "")
                             + f": {len(times) - grokked}/{len(times)} seeds censored (median over grokked)")
            delays[(x, a)] = median_or_none(times)
        xs = sorted({x for x, _ in delays})
        acrosses = sorted({a for _, a in delays})
        x_rows, across_rows = [], []
        for a in acrosses:
            row = [x for x in xs if (x, a) in delays]
            if len(row) >= 2:
                x_rows.append({"at": a, "from": row[0], "to": row[-1], "t_from": delays[(row[0], a)],
                               "t_to": delays[(row[-1], a)]} | delay_ratio(delays[(row[-1], a)], delays[(row[0], a)]))
        for x in xs if config.across else []:
            column = [a for a in acrosses if (x, a) in delays]
            if len(column) >= 2:
                across_rows.append({"at": x, "from": column[0], "to": column[-1], "t_from": delays[(x, column[0])],
                                    "t_to": delays[(x, column[-1])]}
                                   | delay_ratio(delays[(x, column[0])], delays[(x, column[-1])]))
        ref_x = config.reference.get(config.x, xs[0] if xs else None)
        ref_a = config.reference.get(config.across, acrosses[0] if acrosses else None)
        x_lever = next((r for r in x_rows if ref_a is not None
                        and math.isclose(r["at"], ref_a, rel_tol=1e-6)), None)
        across_lever = next((r for r in across_rows if ref_x is not None
                             and math.isclose(r["at"], ref_x, rel_tol=1e-6)), None)
        numbers = {"x": config.x, "across": config.across, "delay_from": config.delay_from or None,
                   "reference": {config.x: ref_x, config.across: ref_a},
                   "x_lever": x_lever["lever"] if x_lever else None,
                   "across_lever": across_lever["lever"] if across_lever else None,
                   "x_levers": x_rows, "across_levers": across_rows,
                   "median_t_grok": [{"x": x, "across": a, "median_t_grok": t} for (x, a), t in delays.items()]}
        since = f" (T measured from {config.delay_from})" if config.delay_from else ""
        tables = [Table(f"{config.x} lever: T(max {config.x}) / T(min {config.x})" + since +
                        (f" at each {config.across}" if config.across else ""),
                        ["at", "from", "to", "T from", "T to", "ratio", "lever"],
                        [[r["at"] if config.across else "-", r["from"], r["to"], r["t_from"], r["t_to"], r["ratio"],
                          r["lever"]] for r in x_rows])]
        if config.across:
            tables.append(Table(f"{config.across} lever: T(min {config.across}) / T(max {config.across}) "
                                f"at each {config.x}", ["at", "from", "to", "T from", "T to", "ratio", "lever"],
                                [[r["at"], r["from"], r["to"], r["t_from"], r["t_to"], r["ratio"], r["lever"]]
                                 for r in across_rows]))
        return Analysis("levers", tables, numbers, notes)
    return analyze


# ---------------------------------------------------------------------------------------------------
# The report's levers subsection: the rho x lr matrix.


@styled
def lever_heatmap_figure(rhos: Sequence[float], lrs: Sequence[float], median: np.ndarray, grokked: np.ndarray,
                         seeds: np.ndarray, title: str = "") -> Figure:
    """``median[i, j]``: median T_grok over grokked seeds at rhos[i], lrs[j] (NaN where none grokked),
    coloured on a log scale and written in each cell with grokked/seeds; empty cells are hatched."""
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Rectangle

    figure = new_figure(1.6 * len(lrs) + 3.2, 0.75 * len(rhos) + 2.2)
    axes = figure.subplots()
    axes.grid(False)
    present = median[np.isfinite(median)]
    norm = LogNorm(vmin=present.min(), vmax=max(present.max(), present.min() * 1.01)) if present.size else None
    image = axes.imshow(np.ma.masked_invalid(median), cmap="viridis", norm=norm, origin="lower", aspect="auto")
    colormap = image.get_cmap()
    for i in range(len(rhos)):
        for j in range(len(lrs)):
            count = f"{int(grokked[i, j])}/{int(seeds[i, j])}" if seeds[i, j] else "no runs"
            if np.isfinite(median[i, j]):
                shade = colormap(norm(median[i, j]))
                light = 0.299 * shade[0] + 0.587 * shade[1] + 0.114 * shade[2] > 0.5
                axes.text(j, i, f"{median[i, j]:,.0f}\n{count}", ha="center", va="center", fontsize=9,
                          color="black" if light else "white")
            else:
                axes.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="//",
                                                            color="0.7", lw=0))
                axes.text(j, i, f"none grokked\n{count}", ha="center", va="center", fontsize=9, color="0.2")
    axes.set_xticks(range(len(lrs)), [f"{lr:g}" for lr in lrs])
    decimals = max((len(f"{rho:g}".partition(".")[2]) for rho in rhos), default=0)
    axes.set_yticks(range(len(rhos)), [f"{rho:.{decimals}f}" for rho in rhos])
    axes.set_xlabel(axis_label(LR))
    axes.set_ylabel(axis_label(RHO))
    axes.set_title(title or r"Median $T_\mathrm{grok}$ over the $\rho$ x lr matrix (grokked/seeds)")
    if norm is not None:
        bar = figure.colorbar(image, ax=axes)
        bar.set_label(r"median $T_\mathrm{grok}$ (steps, log scale)")
        plain_log_ticks(bar.ax.yaxis)
    return figure


def rho_lr_matrix(records: Sequence[RunRecord],
                  ) -> tuple[list[float], list[float], np.ndarray, np.ndarray, np.ndarray]:
    """rhos, lrs (sorted) and per (rho, lr) cell: the median T_grok over grokked seeds (NaN where none
    grokked), the grokked count and the seed count (0 where the cell was not run)."""
    def key(record: RunRecord) -> tuple[float, float]:
        return round(float(record_value(record, RHO)), 9), round(float(record_value(record, LR)), 12)

    cells: dict[tuple[float, float], list[int | None]] = defaultdict(list)
    for record in records:
        cells[key(record)].append(record.t_grok)
    rhos, lrs = sorted({r for r, _ in cells}), sorted({lr for _, lr in cells})
    shape = (len(rhos), len(lrs))
    median, grokked, seeds = np.full(shape, np.nan), np.zeros(shape, int), np.zeros(shape, int)
    for (rho, lr), times in cells.items():
        i, j = rhos.index(rho), lrs.index(lr)
        value = median_or_none(times)
        median[i, j] = np.nan if value is None else value
        grokked[i, j], seeds[i, j] = sum(t is not None for t in times), len(times)
    return rhos, lrs, median, grokked, seeds


def levers_subsection(section: ReportSection, records: Sequence[RunRecord], group_by: Sequence[str]) -> None:
    """When the delay law is grouped by the learning rate: per setting of its other group keys, the
    ``levers`` tables (x = rho, across = lr) and the heatmap of median T_grok over rho x lr."""
    if LR not in group_by:
        section.leave_out("rho x lr heatmap", f"needs a sweep of `{LR}` as well as `{RHO}`")
        return
    section.add("### Levers: rho against the learning rate")
    facets = [k for k in group_by if k != LR]
    swept = [r for r in records if numeric(record_value(r, RHO)) and numeric(record_value(r, LR))]
    by_facet = group_records(swept, facets)
    for facet in sorted(by_facet, key=value_order):
        label = group_label(facets, facet)
        if facets:
            section.add(f"**{label}**")
        section.analysis(levers_analyzer(LeversConfig(x=RHO, across=LR))(by_facet[facet]))
        rhos, lrs, median, grokked, seeds = rho_lr_matrix(by_facet[facet])
        name = "rho_lr_heatmap" + (f"_{slug(label)}" if facets else "")
        title = r"Median $T_\mathrm{grok}$ over $\rho$ x lr (grokked/seeds)" + (f", {label}" if facets else "")
        section.figure(name, lever_heatmap_figure(rhos, lrs, median, grokked, seeds, title),
                       "Median T_grok (steps) over the rho x lr matrix" + (f" ({label})" if facets else ""))


ANALYZERS = [
    gnorm.Analyzer(name="levers", summary="fold change of T_grok across the ends of the rho and lr sweeps",
                   config_class=LeversConfig, factory=levers_analyzer),
]
