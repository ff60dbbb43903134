"""Levers: how many times slower or faster grokking gets between the ends of a sweep (``levers``), and
the delay-law section's levers subsection: the rho x lr matrix of median T_grok (``rho_lr_heatmap``)."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Callable, Sequence

import attrs
import numpy as np

import gnorm
from gnorm.analysis.records import group_label, group_records, numeric, record_value, select, value_order
from gnorm.analysis.resampling import expanded_level, resampled_log_ratio, seeds_per_stratum
from gnorm.analysis.seed_blocks import CriticalNormSources, seed_block_sample
from gnorm.analysis.statistics import bootstrap_cell_medians, median_or_none
from gnorm.builtins.analyzers.options import (INTERVAL_NAMES, INTERVALS, KEYS, STAGES, at_least, confidence_level,
                                              intervals, not_empty, resample_count)
from gnorm.components import Analysis, RunRecord, Table
from gnorm.figures import LR, RHO, axis_label, new_figure, plain_log_ticks, styled
from gnorm.reporting import ReportSection, slug
from gnorm.science import percentile_interval

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
    Cells with fewer than ``min_grokked`` grokked seeds are left out and reported. Each ratio has a
    bootstrap CI (``interval``, ``resamples``, ``confidence``, ``seed``): ``seed_block`` resamples whole
    seeds across both cells (and the free run that set a rho clamp's Wc: for the rho lever the log
    ratio is carried to the nominal rho values, see :func:`gnorm.analysis.resampling.resampled_log_ratio`);
    ``cell`` resamples each cell's seeds independently.
    """

    x: str = attrs.field(default="controller.rho", validator=not_empty, metadata=KEYS)
    across: str = attrs.field(default="optimizer.lr", metadata=KEYS)
    stages: list[str] = attrs.field(factory=list, metadata=STAGES)
    within: dict[str, list[float]] = attrs.field(factory=dict, validator=intervals, metadata=KEYS)
    reference: dict[str, float] = attrs.field(factory=dict, metadata=KEYS)
    delay_from: str = attrs.field(default="", metadata=KEYS)
    min_grokked: int = attrs.field(default=3, validator=at_least(1))
    interval: str = attrs.field(default="seed_block", validator=attrs.validators.in_(INTERVALS))
    resamples: int = attrs.field(default=2000, validator=resample_count)
    confidence: float = attrs.field(default=0.95, validator=confidence_level)
    seed: int = attrs.field(default=0, validator=at_least(0))


def ratio_interval(log_ratios: np.ndarray, level: float) -> dict[str, list[float | None]]:
    """The percentile interval of the replicates' ratio exp(log_ratio) (``ratio_ci``) and of the lever
    max(ratio, 1 / ratio) read off it (``lever_ci``: the ratio's interval, inverted when the ratio is
    below 1)."""
    if not log_ratios.size:
        return {"ratio_ci": [None, None], "lever_ci": [None, None]}
    low, high = np.exp(percentile_interval(log_ratios, level))
    lever = [low, high] if np.median(log_ratios) >= 0 else [1.0 / high, 1.0 / low]
    return {"ratio_ci": [float(low), float(high)], "lever_ci": [float(lever[0]), float(lever[1])]}


def lever_interval(config: LeversConfig, slow: tuple[Any, list[RunRecord]], fast: tuple[Any, list[RunRecord]],
                   x_key: str, sources: CriticalNormSources, delay_of: Callable[[RunRecord], float | None],
                   ) -> dict[str, list[float | None]]:
    """The CI of T(slow) / T(fast) between two cells ((x, runs) each) under ``config.interval``."""
    if config.interval == "cell":
        medians = bootstrap_cell_medians([[delay_of(r) for r in runs] for _, runs in (fast, slow)],
                                         config.resamples, config.seed)
        log_ratios = np.log(medians[1] / medians[0])
        return ratio_interval(log_ratios[np.isfinite(log_ratios)], config.confidence)
    sample, _ = seed_block_sample([(0, fast[0], fast[1]), (0, slow[0], slow[1])], x_key, sources, delay_of)
    log_ratios, _ = resampled_log_ratio(sample, 0, 1, config.resamples, config.seed)
    return ratio_interval(log_ratios, expanded_level(config.confidence, seeds_per_stratum(sample)))


def delay_ratio(slow: float, fast: float) -> dict[str, float]:
    """ratio = slow / fast and the lever = max(ratio, 1 / ratio), the fold change between two delays."""
    ratio = slow / fast
    return {"ratio": ratio, "lever": max(ratio, 1.0 / ratio)}


def levers_analyzer(config: LeversConfig):
    def analyze(records: Sequence[RunRecord]) -> Analysis:
        chosen = select(records, config.stages, config.within)
        cells: dict[tuple[float, float], list[int | None]] = defaultdict(list)
        runs: dict[tuple[float, float], list[RunRecord]] = defaultdict(list)

        def delay_of(record: RunRecord) -> float | None:
            start = record_value(record, config.delay_from) if config.delay_from else 0
            return None if record.t_grok is None else record.t_grok - start
        for record in chosen:
            x = record_value(record, config.x)
            a = record_value(record, config.across) if config.across else 0.0
            start = record_value(record, config.delay_from) if config.delay_from else 0
            if isinstance(x, (int, float)) and isinstance(a, (int, float)) and isinstance(start, (int, float)):
                cells[(round(float(x), 9), round(float(a), 12))].append(delay_of(record))
                runs[(round(float(x), 9), round(float(a), 12))].append(record)
        sources = CriticalNormSources(records)
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
                               "t_to": delays[(row[-1], a)]} | delay_ratio(delays[(row[-1], a)], delays[(row[0], a)])
                              | lever_interval(config, (row[-1], runs[(row[-1], a)]), (row[0], runs[(row[0], a)]),
                                               config.x, sources, delay_of))
        for x in xs if config.across else []:
            column = [a for a in acrosses if (x, a) in delays]
            if len(column) >= 2:
                across_rows.append({"at": x, "from": column[0], "to": column[-1], "t_from": delays[(x, column[0])],
                                    "t_to": delays[(x, column[-1])]}
                                   | delay_ratio(delays[(x, column[0])], delays[(x, column[-1])])
                                   | lever_interval(config, (column[0], runs[(x, column[0])]),
                                                    (column[-1], runs[(x, column[-1])]), config.across, sources,
                                                    delay_of))
        ref_x = config.reference.get(config.x, xs[0] if xs else None)
        ref_a = config.reference.get(config.across, acrosses[0] if acrosses else None)
        x_lever = next((r for r in x_rows if ref_a is not None
                        and math.isclose(r["at"], ref_a, rel_tol=1e-6)), None)
        across_lever = next((r for r in across_rows if ref_x is not None
                             and math.isclose(r["at"], ref_x, rel_tol=1e-6)), None)
        numbers = {"x": config.x, "across": config.across, "delay_from": config.delay_from or None,
                   "interval": config.interval,
                   "reference": {config.x: ref_x, config.across: ref_a},
                   "x_lever": x_lever["lever"] if x_lever else None,
                   "across_lever": across_lever["lever"] if across_lever else None,
                   "x_levers": x_rows, "across_levers": across_rows,
                   "median_t_grok": [{"x": x, "across": a, "median_t_grok": t} for (x, a), t in delays.items()]}
        since = f" (T measured from {config.delay_from})" if config.delay_from else ""
        columns = ["at", "from", "to", "T from", "T to", "ratio", "lever",
                   f"{config.confidence:.0%} {INTERVAL_NAMES[config.interval]} low", "high"]
        tables = [Table(f"{config.x} lever: T(max {config.x}) / T(min {config.x})" + since +
                        (f" at each {config.across}" if config.across else ""), columns,
                        [[r["at"] if config.across else "-", r["from"], r["to"], r["t_from"], r["t_to"], r["ratio"],
                          r["lever"], *r["lever_ci"]] for r in x_rows])]
        if config.across:
            tables.append(Table(f"{config.across} lever: T(min {config.across}) / T(max {config.across}) "
                                f"at each {config.x}", columns,
                                [[r["at"], r["from"], r["to"], r["t_from"], r["t_to"], r["ratio"], r["lever"],
                                  *r["lever_ci"]] for r in across_rows]))
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
