"""The delay law ln(median T_grok) = intercept + alpha * x, fitted per group (``delay_law``) or with one
alpha shared by all groups (``shared_exponent``), and the report's delay-law section: the fit drawn
with its bootstrap band per group (``delay_law[_<n>]``), the shared exponent, and the levers.

The CI (``interval``): ``seed_block`` (the default) resamples whole seeds, a seed's free run and all its
clamp arms together, and carries the resampled Wc through rho (:mod:`gnorm.analysis.resampling`);
``cell`` resamples seeds with replacement within each cell independently, censored seeds included (the
papers' bootstrap, and gnorm's before 0.2; see :mod:`gnorm.builtins.analyzers`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import attrs
import numpy as np

import gnorm
from gnorm.analysis.records import (
    group_label,
    numeric,
    pooling_notes,
    record_value,
    select,
    t_grok_by_x,
    value_order,
    varying_keys,
)
from gnorm.analysis.resampling import (SeedBlockReplicates, SeedBlockSample, expanded_level, seed_block_replicates,
                                      seeds_per_stratum)
from gnorm.analysis.seed_blocks import CriticalNormSources, runs_by_x, seed_block_sample
from gnorm.analysis.statistics import bootstrap_cell_medians, median_or_none
from gnorm.builtins.analyzers.levers import levers_subsection
from gnorm.builtins.analyzers.options import (INTERVAL_NAMES, INTERVALS, KEYS, STAGES, at_least, confidence_level,
                                              intervals, not_empty, resample_count)
from gnorm.components import Analysis, RunRecord, Table
from gnorm.figures import RHO, T_GROK_LABEL, axis_label, new_figure, palette, plain_log_ticks, styled
from gnorm.reporting import ReportContext, ReportSection, settings_text
from gnorm.science import delay_law_fit, ols_slopes, percentile_interval, shared_slope_design, shared_slope_fit

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@attrs.frozen
class DelayLawConfig:
    """Fit ln(median T_grok over grokked seeds) = intercept + alpha * x per group.

    ``x``: a dotted config key (default the clamp's rho), ``facts.<name>``, or ``held_norm`` (rho * Wc,
    the absolute norm held: paper B's dose slopes). ``group_by``: keys that split the runs into groups
    with one fit each (e.g. ``["task.p"]``). ``within``: closed intervals that runs must lie in.
    Cells with fewer than ``min_grokked`` grokked seeds are dropped and reported; a group needs
    ``min_cells`` cells left (a line through two points has no R^2). ``interval``: ``seed_block``
    (resample whole seeds across all their cells and their free run, Wc carried through rho) or
    ``cell`` (seeds within each cell independently, censored ones included: the papers' bootstrap).
    """

    x: str = attrs.field(default="controller.rho", validator=not_empty, metadata=KEYS)
    group_by: list[str] = attrs.field(factory=list, metadata=KEYS)
    stages: list[str] = attrs.field(factory=list, metadata=STAGES)
    within: dict[str, list[float]] = attrs.field(factory=dict, validator=intervals, metadata=KEYS)
    min_grokked: int = attrs.field(default=3, validator=at_least(1))
    min_cells: int = attrs.field(default=3, validator=at_least(2))
    resamples: int = attrs.field(default=2000, validator=resample_count)
    confidence: float = attrs.field(default=0.95, validator=confidence_level)
    seed: int = attrs.field(default=0, validator=at_least(0))
    interval: str = attrs.field(default="seed_block", validator=attrs.validators.in_(INTERVALS))


#: Builds the seed-block sample of the cells (group key, x) a fit kept, with notes on their Wc.
SeedBlocks = Callable[[Sequence[tuple[Any, float]]], tuple[SeedBlockSample, list[str]]]


def seed_blocks_of(groups: dict[Any, dict[float, list[RunRecord]]], x_key: str,
                   records: Sequence[RunRecord]) -> SeedBlocks:
    """The seed-block sample builder over ``groups[key][x]`` runs; Wc sources are looked up among all
    ``records`` (the free runs need not be among the runs fitted)."""
    sources = CriticalNormSources(records)
    order = {key: i for i, key in enumerate(groups)}

    def build(kept: Sequence[tuple[Any, float]]) -> tuple[SeedBlockSample, list[str]]:
        return seed_block_sample([(order[key], x, groups[key][x]) for key, x in kept], x_key, sources)
    return build


def fit_delay_law(cells: dict[float, list[int | None]], min_grokked: int, resamples: int, level: float,
                  seed: int = 0, min_cells: int = 3, seed_blocks: Callable[[list[float]], SeedBlockSample] | None = None,
                  ) -> dict[str, Any]:
    """The delay law over the cells with >= min_grokked grokked seeds: OLS of ln(median T_grok) on x,
    alpha = slope, R^2 = 1 - SSE/SST, and a bootstrap percentile CI of alpha: seed-block when
    ``seed_blocks`` (kept x values -> their sample) is given, else seeds within each cell."""
    ordered = dict(sorted(cells.items()))
    grokked = {x: sum(t is not None for t in times) for x, times in ordered.items()}
    kept = {x: times for x, times in ordered.items() if grokked[x] >= min_grokked}
    result: dict[str, Any] = {"cells_used": list(kept), "cells_dropped": {x: g for x, g in grokked.items()
                                                                          if g < min_grokked},
                              "seeds": {x: len(t) for x, t in ordered.items()},
                              "censored": {x: len(t) - grokked[x] for x, t in ordered.items()}}
    if len(kept) < max(min_cells, 2):
        return result | {"alpha": None, "note": f"{len(kept)} cells with >= {min_grokked} grokked seeds "
                                                f"(need {max(min_cells, 2)})"}
    xs = np.array(list(kept), float)
    medians = [median_or_none(t) for t in kept.values()]
    fit = delay_law_fit(xs, medians)
    if seed_blocks is not None:
        sample = seed_blocks(list(kept))
        blocks = seed_block_replicates(sample, resamples, seed)
        alphas, discarded = blocks.slopes, blocks.discarded
        level = expanded_level(level, seeds_per_stratum(sample))
    else:
        replicates = bootstrap_cell_medians(list(kept.values()), resamples, seed)
        usable = ~np.isnan(replicates).any(axis=0)
        alphas, discarded = ols_slopes(xs, np.log(replicates[:, usable])), int((~usable).sum())
    low, high = percentile_interval(alphas, level) if alphas.size else (None, None)
    return result | {"alpha": fit.slope, "intercept": fit.intercept, "r_squared": fit.r_squared,
                     "alpha_ci": [low, high], "bootstrap_discarded": discarded,
                     "median_t_grok": dict(zip(kept, medians))}


def delay_law_analyzer(config: DelayLawConfig):
    def analyze(records: Sequence[RunRecord]) -> Analysis:
        chosen = select(records, config.stages, config.within)
        groups, pooled = t_grok_by_x(chosen, config.x, config.group_by)
        blocks = seed_blocks_of(runs_by_x(chosen, config.x, config.group_by), config.x, records)
        rows, numbers, notes = [], [], []
        for key in sorted(groups, key=value_order):
            cells = groups[key]
            wc_notes: list[str] = []

            def sample_of(kept: list[float], key: tuple = key) -> SeedBlockSample:
                sample, found = blocks([(key, x) for x in kept])
                wc_notes.extend(found)
                return sample
            fit = fit_delay_law(cells, config.min_grokked, config.resamples, config.confidence, config.seed,
                                config.min_cells, sample_of if config.interval == "seed_block" else None)
            label = group_label(config.group_by, key)
            notes += [f"{label}: {note}" for note in wc_notes]
            numbers.append({"group": dict(zip(config.group_by, key)), "label": label} | fit)
            notes += pooling_notes(label, config.x, pooled[key])
            for x, grokked in fit["cells_dropped"].items():
                notes.append(f"{label}: dropped {config.x}={x} ({grokked}/{fit['seeds'][x]} seeds grokked "
                             f"< {config.min_grokked})")
            if fit["alpha"] is None:
                notes.append(f"{label}: no fit, {fit['note']}")
            for x, censored in fit["censored"].items():
                if censored and x in fit["cells_used"]:
                    notes.append(f"{label}: {config.x}={x} used with {censored}/{fit['seeds'][x]} seeds censored")
            low, high = fit.get("alpha_ci", (None, None))
            rows.append([label, len(fit["cells_used"]), fit["alpha"], low, high, fit.get("r_squared"),
                         sum(fit["censored"].values())])
        level = f"{config.confidence:.0%} {INTERVAL_NAMES[config.interval]}"
        table = Table(f"delay law: ln(median T_grok) = intercept + alpha * {config.x}",
                      ["group", "cells", "alpha", f"{level} low", "high", "R^2", "censored seeds"], rows)
        return Analysis("delay_law", [table], {"x": config.x, "interval": config.interval, "groups": numbers}, notes)
    return analyze


# ---------------------------------------------------------------------------------------------------
# One exponent shared by all groups.


@attrs.frozen
class SharedExponentConfig(DelayLawConfig):
    """Fit ln(median T_grok) = intercept[group] + alpha * x: one alpha for all groups (``group_by``,
    default ``task.p``), one intercept each. Compared with separate fits per group by their summed
    SSE and the F statistic ((SSE_shared - SSE_separate) / (G - 1)) / (SSE_separate / (n - 2G)).
    Groups with fewer than ``min_cells`` usable cells are left out and reported. Options as for
    ``delay_law``."""

    group_by: list[str] = attrs.field(factory=lambda: ["task.p"], metadata=KEYS)


def fit_shared_exponent(groups: dict[Any, dict[float, list[int | None]]], min_grokked: int, min_cells: int,
                        resamples: int, level: float, seed: int = 0, seed_blocks: SeedBlocks | None = None,
                        ) -> dict[str, Any]:
    """Shared-slope OLS of ln(median T_grok) on x with per-group intercepts over the usable cells
    (>= min_grokked grokked seeds) of the groups with >= min_cells of them; bootstrap percentile CI
    of the shared alpha: seed-block when ``seed_blocks`` ((group, x) cells -> their sample) is given,
    else seeds resampled within each cell, censored included."""
    xs, times, labels, dropped_groups, separate_sse, separate_alpha, used = [], [], [], {}, 0.0, {}, {}
    for group, cells in sorted(groups.items(), key=lambda item: value_order(item[0])):
        kept = {x: t for x, t in sorted(cells.items()) if sum(v is not None for v in t) >= min_grokked}
        if len(kept) < max(min_cells, 2):
            dropped_groups[group] = len(kept)
            continue
        fit = delay_law_fit(list(kept), [median_or_none(t) for t in kept.values()])
        separate_alpha[group] = fit.slope
        used[group] = len(kept)
        y = np.log([median_or_none(t) for t in kept.values()])
        separate_sse += float(np.sum((y - (fit.intercept + fit.slope * np.array(list(kept)))) ** 2))
        for x, t in kept.items():
            xs.append(x)
            times.append(t)
            labels.append(group)
    result: dict[str, Any] = {"groups_used": list(separate_alpha), "groups_dropped": dropped_groups,
                              "separate_alpha": separate_alpha, "cells_per_group": used}
    if len(separate_alpha) < 1:
        return result | {"alpha": None}
    y = np.log([median_or_none(t) for t in times])
    fit = shared_slope_fit(xs, y, labels)
    wc_notes: list[str] = []
    if seed_blocks is not None:
        sample, wc_notes = seed_blocks(list(zip(labels, xs)))
        blocks = seed_block_replicates(sample, resamples, seed)
        alphas, discarded = blocks.slopes, blocks.discarded
        level = expanded_level(level, seeds_per_stratum(sample))
    else:
        design, _ = shared_slope_design(xs, labels)
        replicates = bootstrap_cell_medians(times, resamples, seed)
        usable = ~np.isnan(replicates).any(axis=0)
        alphas, discarded = (np.linalg.pinv(design) @ np.log(replicates[:, usable]))[0], int((~usable).sum())
    low, high = percentile_interval(alphas, level) if alphas.size else (None, None)
    n, count = len(y), len(separate_alpha)
    residual_df = n - 2 * count
    f_statistic = (((fit.sse - separate_sse) / (count - 1)) / (separate_sse / residual_df)
                   if count > 1 and residual_df > 0 and separate_sse > 0 else None)
    return result | {"alpha": fit.slope, "alpha_ci": [low, high], "r_squared": fit.r_squared,
                     "within_r_squared": fit.within_r_squared, "intercepts": dict(zip(fit.groups, fit.intercepts)),
                     "sse_shared": fit.sse, "sse_separate": separate_sse, "f_statistic": f_statistic,
                     "f_df": [count - 1, residual_df], "cells": n, "bootstrap_discarded": discarded,
                     "wc_notes": wc_notes}


def shared_exponent_analyzer(config: SharedExponentConfig):
    def analyze(records: Sequence[RunRecord]) -> Analysis:
        chosen = select(records, config.stages, config.within)
        groups, pooled = t_grok_by_x(chosen, config.x, config.group_by)
        blocks = seed_blocks_of(runs_by_x(chosen, config.x, config.group_by), config.x, records)
        fit = fit_shared_exponent(groups, config.min_grokked, config.min_cells, config.resamples,
                                  config.confidence, config.seed, blocks if config.interval == "seed_block" else None)
        notes = fit.pop("wc_notes", []) + [note for key in groups for note in pooling_notes(group_label(config.group_by, key), config.x,
                                                                   pooled[key])]
        for group, usable in fit["groups_dropped"].items():
            notes.append(f"{group_label(config.group_by, group)}: left out, {usable} cells with "
                         f">= {config.min_grokked} grokked seeds (need {config.min_cells})")
        for group, cells in groups.items():
            for x, times in sorted(cells.items()):
                grokked = sum(t is not None for t in times)
                if grokked < config.min_grokked:
                    notes.append(f"{group_label(config.group_by, group)}: dropped {config.x}={x} "
                                 f"({grokked}/{len(times)} seeds grokked)")
        level = f"{config.confidence:.0%} {INTERVAL_NAMES[config.interval]}"
        low, high = fit.get("alpha_ci", (None, None))
        rows = [["shared", fit.get("cells"), fit["alpha"], low, high, fit.get("r_squared"), fit.get("sse_shared")]]
        rows += [[f"separate: {group_label(config.group_by, g)}", fit["cells_per_group"][g], a, None, None, None, None]
                 for g, a in fit["separate_alpha"].items()]
        if fit["alpha"] is not None:
            rows.append(["separate fits", fit["cells"], None, None, None, None, fit["sse_separate"]])
        table = Table(f"shared exponent: ln(median T_grok) = intercept[{', '.join(config.group_by)}] + alpha * "
                      f"{config.x}", ["fit", "cells", "alpha", f"{level} low", "high", "R^2", "SSE"], rows)
        numbers = fit | {"groups_used": [dict(zip(config.group_by, g)) for g in fit["groups_used"]],
                         "separate_alpha": [{"group": dict(zip(config.group_by, g)), "alpha": a}
                                            for g, a in fit["separate_alpha"].items()],
                         "intercepts": [{"group": dict(zip(config.group_by, g)), "intercept": c}
                                        for g, c in fit.get("intercepts", {}).items()],
                         "cells_per_group": [{"group": dict(zip(config.group_by, g)), "cells": c}
                                             for g, c in fit["cells_per_group"].items()],
                         "groups_dropped": [{"group": dict(zip(config.group_by, g)), "usable_cells": c}
                                            for g, c in fit["groups_dropped"].items()]}
        return Analysis("shared_exponent", [table], numbers | {"x": config.x, "interval": config.interval}, notes)
    return analyze

# ---------------------------------------------------------------------------------------------------
# The report section: the fit per group, drawn with its bootstrap band.


@attrs.frozen(eq=False)
class DelayLawGroup:
    """One group's cells and fit, as the ``delay_law`` analyzer returned them.

    ``times[x]``: every seed's T_grok at x (None = censored); ``used``: the cells in the fit;
    ``budget[x]``: the cell's step budget; ``band``: (x grid, low T, high T) of the bootstrap band."""

    label: str
    times: dict[float, list[int | None]]
    used: list[float]
    budget: dict[float, int]
    alpha: float | None = None
    intercept: float | None = None
    r_squared: float | None = None
    alpha_ci: tuple[float | None, float | None] = (None, None)
    band: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None


def delay_law_band(times: dict[float, list[int | None]], resamples: int, level: float, seed: int = 0,
                   points: int = 60) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bootstrap band of the fitted delay law: each replicate redraws the seeds of every cell with
    replacement (as the analyzer's CI does), refits ln(median T_grok) = a + alpha * x by OLS, and
    predicts T on a grid of x; the band is the central ``level`` percentile interval at each x."""
    xs = np.array(sorted(times), float)
    replicates = bootstrap_cell_medians([times[x] for x in sorted(times)], resamples, seed)
    replicates = np.log(replicates[:, ~np.isnan(replicates).any(axis=0)])
    slopes = ols_slopes(xs, replicates)
    intercepts = replicates.mean(axis=0) - slopes * xs.mean()
    grid = np.linspace(xs.min(), xs.max(), points)
    predicted = intercepts[None, :] + grid[:, None] * slopes[None, :]
    bounds = np.array([percentile_interval(row, level) for row in predicted])
    return grid, np.exp(bounds[:, 0]), np.exp(bounds[:, 1])


def seed_block_band(replicates: SeedBlockReplicates, x_range: tuple[float, float], level: float,
                    points: int = 60) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seed-block band of one group's fitted delay law: each replicate's line ln T = ybar* + alpha* (x -
    xbar*) through its centroid, predicted on a grid of x; the band is the central ``level`` percentile
    interval at each x."""
    grid = np.linspace(*x_range, points)
    predicted = replicates.y_mean[0][None, :] + (grid[:, None] - replicates.x_mean[0][None, :]) * replicates.slopes
    bounds = np.array([percentile_interval(row, level) for row in predicted])
    return grid, np.exp(bounds[:, 0]), np.exp(bounds[:, 1])


@styled
def delay_law_figure(groups: Sequence[DelayLawGroup], x_key: str = RHO, confidence: float = 0.95) -> Figure:
    """Per group: median T_grok per cell (log y) with the interquartile range over grokked seeds as
    bars, the fitted line exp(intercept + alpha * x) and the bootstrap band of the fit. Cells with
    censored seeds are squares, and their counts are in the group's legend entry (text next to the
    points would collide with neighbouring groups); cells left out of the fit (too few grokked seeds)
    are hollow; a cell where no seed grokked is a hollow triangle at its budget."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    several = len(groups) > 2
    figure = new_figure(8.0, 6.6 if several else 5.2)
    axes = figure.subplots()
    colours = palette(len(groups), False) if len(groups) > 1 else ["tab:blue"]
    kinds: set[str] = set()
    for group, colour in zip(groups, colours):
        kinds |= _draw_delay_group(axes, group, colour, x_key)
    axes.set_yscale("log")
    plain_log_ticks(axes.yaxis)
    axes.set_xlabel(axis_label(x_key))
    axes.set_ylabel(T_GROK_LABEL)
    symbol = r"\rho" if x_key == RHO else "x"
    axes.set_title(rf"Delay law: $T_\mathrm{{grok}} \propto \exp(\alpha {symbol})$, median over grokked seeds")
    handles, _ = axes.get_legend_handles_labels()
    handles += [Line2D([], [], color="0.3", marker="o", ls="", label="cell median (bars: interquartile range)"),
                Patch(color="0.3", alpha=0.2, label=f"{confidence:.0%} bootstrap band of the fit")]
    handles += [_marker_handle(kind) for kind in DELAY_MARKERS if kind in kinds]
    if several:
        figure.legend(handles=handles, loc="outside lower center", ncols=2, frameon=False)
    else:
        axes.legend(handles=handles, loc="upper left")
    axes.margins(y=0.12)
    return figure


DELAY_MARKERS = {
    "censored": ({"marker": "s"}, "cell with censored seeds (counts in the fit's entry)"),
    "dropped": ({"marker": "o", "mfc": "none"}, "not fitted: too few grokked seeds"),
    "none": ({"marker": "^", "mfc": "none"}, "no seed grokked: drawn at the budget"),
}


def _marker_handle(kind: str) -> Line2D:
    from matplotlib.lines import Line2D

    style, label = DELAY_MARKERS[kind]
    return Line2D([], [], color="0.3", ls="", label=label, **style)


def _fit_name(label: str) -> str:
    return "fit" if label == "(all)" else label


def _draw_delay_group(axes: Any, group: DelayLawGroup, colour: Any, x_key: str) -> set[str]:
    """Draw one group; return which special cell kinds it has (censored, dropped, none)."""
    kinds, censored_text = set(), []
    symbol = r"$\rho$" if x_key == RHO else x_key.split(".")[-1]
    for x, times in sorted(group.times.items()):
        grokked = np.array([t for t in times if t is not None], float)
        censored = len(times) - grokked.size
        if censored:
            censored_text.append(f"{censored}/{len(times)} at {symbol}={x:g}")
        if grokked.size == 0:
            kinds.add("none")
            axes.plot([x], [group.budget[x]], marker="^", color=colour, mfc="none", ms=8, ls="")
            continue
        median, low, high = np.median(grokked), *np.percentile(grokked, [25, 75])
        fitted = x in group.used
        kinds |= ({"censored"} if censored else set()) | (set() if fitted else {"dropped"})
        axes.errorbar([x], [median], yerr=[[median - low], [high - median]], fmt="s" if censored else "o",
                      color=colour, capsize=3, ms=5.5 if censored else 5, mfc=colour if fitted else "none")
    censored_line = ("\n    censored: " + ", ".join(censored_text)) if censored_text else ""
    if group.alpha is None:
        axes.plot([], [], color=colour, marker="o", ls="", label=f"{_fit_name(group.label)}: no fit{censored_line}")
        return kinds
    low, high = group.alpha_ci
    interval = f" [{low:.2f}, {high:.2f}]" if low is not None and high is not None else ""
    grid = np.linspace(min(group.used), max(group.used), 60)
    axes.plot(grid, np.exp(group.intercept + group.alpha * grid), color=colour, lw=1.6,
              label=rf"{_fit_name(group.label)}: $\alpha$ = {group.alpha:.2f}{interval}, $R^2$ = {group.r_squared:.3f}"
                    + censored_line)
    if group.band is not None:
        axes.fill_between(group.band[0], group.band[1], group.band[2], color=colour, alpha=0.18, lw=0)
    return kinds


@attrs.frozen(eq=False)
class DelayLawResult:
    """The ``delay_law`` analysis of a store's rho sweep and the per-group data its figure draws."""

    analysis: Analysis
    groups: list[DelayLawGroup]
    group_by: list[str]
    confidence: float
    x: str = RHO


def delay_law_report_config(records: Sequence[RunRecord]) -> DelayLawConfig:
    """The report's delay law when the experiment file sets none: x = rho, grouped by every cell key
    other than rho that varies among the runs that have a rho (see :func:`varying_keys`)."""
    swept = [r for r in records if numeric(record_value(r, RHO))]
    return DelayLawConfig(x=RHO, group_by=varying_keys(swept, exclude=[RHO]))


def _sweep(records: Sequence[RunRecord], config: DelayLawConfig,
           ) -> tuple[dict[tuple, dict[float, list[int | None]]], dict[tuple, dict[float, int]]]:
    """Per group and x: every seed's T_grok, and the cell's step budget, of the runs the fit reads."""
    swept = [r for r in select(records, config.stages, config.within) if numeric(record_value(r, config.x))]
    times, _ = t_grok_by_x(swept, config.x, config.group_by)
    budgets: dict[tuple, dict[float, int]] = {key: {} for key in times}
    for record in swept:
        key = tuple(record_value(record, k) for k in config.group_by)
        x = round(float(record_value(record, config.x)), 9)
        budgets[key][x] = max(budgets[key].get(x, 0), record.budget)
    return times, budgets


def delay_law_groups(records: Sequence[RunRecord], config: DelayLawConfig, analysis: Analysis,
                     ) -> DelayLawResult | None:
    """Each group's per-seed T_grok and the bootstrap band of ``analysis``'s fit, for the figure; None
    when no group has two or more x values."""
    times, budgets = _sweep(records, config)
    if not any(len(cells) >= 2 for cells in times.values()):
        return None
    group_by = list(config.group_by)
    swept = [r for r in select(records, config.stages, config.within) if numeric(record_value(r, config.x))]
    blocks = seed_blocks_of(runs_by_x(swept, config.x, group_by), config.x, records)
    groups = []
    for fit in analysis.numbers["groups"]:
        key = tuple(fit["group"].get(k) for k in group_by)
        cells = dict(sorted(times[key].items()))
        used = fit["cells_used"] if fit["alpha"] is not None else []
        band = None
        if fit["alpha"] is not None and config.interval == "seed_block":
            sample = blocks([(key, x) for x in used])[0]
            band = seed_block_band(seed_block_replicates(sample, config.resamples, config.seed), (min(used), max(used)),
                                   expanded_level(config.confidence, seeds_per_stratum(sample)))
        elif fit["alpha"] is not None:
            band = delay_law_band({x: cells[x] for x in used}, config.resamples, config.confidence, config.seed)
        groups.append(DelayLawGroup(fit["label"], cells, used, budgets[key], fit["alpha"], fit.get("intercept"),
                                    fit.get("r_squared"), tuple(fit.get("alpha_ci", (None, None))), band))
    return DelayLawResult(analysis, groups, group_by, config.confidence, config.x)


def delay_law_fits(records: Sequence[RunRecord], registry: Any = None, config: DelayLawConfig | None = None,
                   ) -> DelayLawResult | None:
    """Run ``delay_law`` (with ``config``, else :func:`delay_law_report_config`) and collect what its
    figure draws; None when no group has two or more x values."""
    config = config if config is not None else delay_law_report_config(records)
    times, _ = _sweep(records, config)
    if not any(len(cells) >= 2 for cells in times.values()):
        return None
    return delay_law_groups(records, config, delay_law_analyzer(config)(records))


#: Most groups drawn in one delay-law figure; more groups go to ``delay_law_1``, ``delay_law_2``...
GROUPS_PER_FIGURE = 6


def delay_law_section(config: DelayLawConfig, analysis: Analysis, context: ReportContext) -> ReportSection:
    """The delay-law table and figures; for a fit in rho, the shared exponent over the groups (when a
    key other than the stage splits them) and the levers (when the learning rate does)."""
    section = ReportSection("Delay law")
    result = delay_law_groups(context.records, config, analysis)
    if result is None:
        section.leave_out("delay law", f"no sweep of `{config.x}` (the fit needs runs at two or more values in "
                          "one group), so there is no delay-law fit or plot")
        section.leave_out("rho x lr heatmap", "needs a sweep of `optimizer.lr` as well as `controller.rho`")
        return section
    group_by = result.group_by
    from_file = context.from_file("delay_law")
    if from_file:
        section.add("Settings from the experiment file's `[[analysis]]` table: "
                    + (settings_text(config) or "the defaults") + ".")
    section.add(f"Fitted per group of {', '.join(f'`{k}`' for k in group_by)}." if group_by else "")
    section.analysis(analysis)
    for start in range(0, len(result.groups), GROUPS_PER_FIGURE):
        name = ("delay_law" if len(result.groups) <= GROUPS_PER_FIGURE
                else f"delay_law_{start // GROUPS_PER_FIGURE + 1}")
        section.figure(name, delay_law_figure(result.groups[start:start + GROUPS_PER_FIGURE], config.x,
                                              result.confidence),
                       f"T_grok (log scale) against {config.x}: cell medians (bars: IQR over grokked seeds), the "
                       f"fitted delay law and its {result.confidence:.0%} bootstrap band ("
                       + ("whole seeds resampled, Wc carried through" if config.interval == "seed_block"
                          else "seeds resampled within cells") + ")")
    records = context.records
    if from_file:  # the file's settings: its own shared_exponent / levers tables, if any, follow
        records = select(records, config.stages, config.within)
        if config.x != RHO:
            return section
    if [k for k in group_by if k != "stage"]:
        section.add("### Shared exponent")
        section.analysis(shared_exponent_analyzer(SharedExponentConfig(x=RHO, group_by=group_by))(records))
    levers_subsection(section, records, group_by)
    return section


ANALYZERS = [
    gnorm.Analyzer(name="delay_law",
                   summary="fit ln T_grok = a + alpha * rho (or the held norm) per group, bootstrap CI",
                   config_class=DelayLawConfig, factory=delay_law_analyzer, report=delay_law_section,
                   report_config=delay_law_report_config),
    gnorm.Analyzer(name="shared_exponent", summary="one alpha with per-group intercepts vs separate fits",
                   config_class=SharedExponentConfig, factory=shared_exponent_analyzer),
]
