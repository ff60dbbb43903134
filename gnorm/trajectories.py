"""The trajectories section every report ends its analyses with: accuracy and weight norm against the
optimizer step, one figure (``trajectories_<stage>[_<facet>]``) per stage and setting of the cell keys
other than the colour key.

Per cell, the median over seeds of train and test accuracy against the step (log x) and of the
weight norm ||W||, with a dotted line at the cell's held norm rho * Wc (clamps) or its critical norm
Wc (free runs). Thin lines are single seeds. The figure functions take plain data and return a
:class:`matplotlib.figure.Figure`, so tests and notebooks can call them without a store.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Sequence

import attrs
import numpy as np

from gnorm.analysis.records import group_label, numeric, record_value, records_by_cell, value_order
from gnorm.analysis.statistics import nanmedian_over_seeds
from gnorm.components import RunRecord
from gnorm.figures import NORM_LABEL, RHO, STEP_LABEL, new_figure, palette, styled
from gnorm.reporting import ReportContext, ReportSection, slug
from gnorm.science import critical_norm

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Most trajectory figures drawn per stage; the rest are named in the report.
MAX_TRAJECTORY_FIGURES = 6


@attrs.frozen(eq=False)
class CellCurves:
    """One cell's seeds on a common step grid: ``train_acc[s, i]`` is seed s at ``steps[i]`` (NaN before
    its first evaluation; a seed that stopped early, e.g. at its T_grok, keeps its last value).
    ``reference_norm`` is the norm to mark (held rho * Wc, or Wc for a free run), None if unknown."""

    label: str
    steps: np.ndarray
    train_acc: np.ndarray
    test_acc: np.ndarray
    weight_norm: np.ndarray
    reference_norm: float | None = None


def _floats(values: Sequence[Any]) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], float)


def align_trajectories(trajectories: Sequence[dict[str, Sequence[Any]]],
                       columns: Sequence[str] = ("train_acc", "test_acc", "weight_norm"),
                       ) -> tuple[np.ndarray, dict[str, np.ndarray], set[str]]:
    """Seeds' trajectories on the union of their steps: value[s, i] = seed s's value at its last
    evaluation at or before steps[i] (NaN before its first), so a seed that stopped at its T_grok is
    held there. A column a seed lacks (paper B released no per-seed trajectories) is taken from its
    ``seed_mean/<column>`` when present, else NaN; the third result names the columns taken so."""
    steps = np.unique(np.concatenate([np.asarray(t["step"], float) for t in trajectories] or [np.zeros(0)]))
    aligned = {column: np.full((len(trajectories), steps.size), np.nan) for column in columns}
    from_seed_mean: set[str] = set()
    for s, trajectory in enumerate(trajectories):
        own = np.asarray(trajectory["step"], float)
        if own.size == 0:
            continue
        position = np.searchsorted(own, steps, side="right") - 1
        for column in columns:
            values = _floats(trajectory.get(column, []))
            if np.isnan(values).all() and f"seed_mean/{column}" in trajectory:
                values = _floats(trajectory[f"seed_mean/{column}"])
                from_seed_mean.add(column)
            if values.size != own.size:
                continue
            aligned[column][s] = np.where(position >= 0, values[np.clip(position, 0, None)], np.nan)
    return steps, aligned, from_seed_mean


def _has_data(values: np.ndarray) -> bool:
    return bool(np.isfinite(values).any())


@styled
def trajectory_figure(title: str, cells: Sequence[CellCurves], reference: str = "", t_start: float | None = None,
                      numeric_colours: bool = True, seed_means: bool = False) -> Figure:
    """Median over seeds (thick) and single seeds (thin) of train accuracy (dashed) and test accuracy
    (solid) against the step on a log axis, and of the weight norm below it, one colour per cell; a
    dotted line at each cell's ``reference_norm`` (``reference`` names it), a dash-dot line at
    ``t_start``. ``seed_means``: the rows are released means over seeds, drawn as they are. Without
    accuracies (paper B released none) only the norm panel is drawn."""
    from matplotlib import ticker
    from matplotlib.lines import Line2D

    with_accuracy = any(_has_data(c.test_acc) or _has_data(c.train_acc) for c in cells)
    figure = new_figure(9.5, 6.4 if with_accuracy else 4.2)
    if with_accuracy:
        accuracy, norm = figure.subplots(2, 1, sharex=True)
        panels = (accuracy, norm)
    else:
        norm = figure.subplots()
        panels = (norm,)
    colours = palette(len(cells), numeric_colours)
    seed_lines = not seed_means and sum(c.weight_norm.shape[0] for c in cells) <= 64
    summary = "mean over seeds, as released" if seed_means else "median over seeds"
    for cell, colour in zip(cells, colours):
        shown = cell.steps > 0  # step 0 has no place on a log axis
        steps = cell.steps[shown]
        if seed_lines:
            for seed in range(cell.weight_norm.shape[0]):
                if with_accuracy:
                    accuracy.plot(steps, cell.test_acc[seed, shown], color=colour, lw=0.5, alpha=0.25)
                norm.plot(steps, cell.weight_norm[seed, shown], color=colour, lw=0.5, alpha=0.25)
        if with_accuracy:
            accuracy.plot(steps, nanmedian_over_seeds(cell.train_acc)[shown], color=colour, lw=1.6, ls="--")
            accuracy.plot(steps, nanmedian_over_seeds(cell.test_acc)[shown], color=colour, lw=2.0)
        norm.plot(steps, nanmedian_over_seeds(cell.weight_norm)[shown], color=colour, lw=2.0)
        if cell.reference_norm is not None:
            norm.axhline(cell.reference_norm, color=colour, lw=1.2, ls=":")
    for axes in panels:
        axes.set_xscale("log")
        axes.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:,.0f}"))
        if t_start:
            axes.axvline(t_start, color="0.45", lw=1.0, ls="-.")
    if with_accuracy:
        accuracy.set_ylabel("accuracy (fraction correct)")
        accuracy.set_ylim(-0.03, 1.03)
    norm.set_ylabel(NORM_LABEL)
    norm.set_xlabel(STEP_LABEL)
    panels[0].set_title(title if with_accuracy else f"{title}\n(no accuracy trajectories stored)")
    handles = [Line2D([], [], color=c, lw=2.0, label=cell.label) for cell, c in zip(cells, colours)]
    handles.append(Line2D([], [], color="0.2", lw=2.0,
                          label=f"{'test accuracy, ' if with_accuracy else ''}norm ({summary})"))
    if with_accuracy:
        handles.append(Line2D([], [], color="0.2", lw=1.6, ls="--", label=f"train accuracy ({summary})"))
    if seed_lines:
        handles.append(Line2D([], [], color="0.2", lw=0.5, alpha=0.5, label="single seeds"))
    if reference and any(c.reference_norm is not None for c in cells):
        handles.append(Line2D([], [], color="0.2", lw=1.2, ls=":", label=reference))
    if t_start:
        handles.append(Line2D([], [], color="0.45", lw=1.0, ls="-.", label=f"clamp from step {t_start:,.0f}"))
    figure.legend(handles=handles, loc="outside right upper", frameon=False)
    return figure


def trajectory_section(context: ReportContext) -> ReportSection:
    """Per stage, one figure per combination of the cell keys other than the colour key (rho when
    swept, else the key with most values); at most MAX_TRAJECTORY_FIGURES per stage, those with the
    most cells first."""
    section = ReportSection("Trajectories")
    section.add("Median over seeds (thick) and single seeds (thin) against the optimizer step. A seed whose "
                "run stopped early (at its T_grok) is held at its last evaluated value.")
    for stage in dict.fromkeys(r.stage for r in context.records):
        stage_records = [r for r in context.records if r.stage == stage]
        keys = list(dict.fromkeys(k for r in stage_records for k in r.cell))
        counts = {k: len({json.dumps(r.cell.get(k)) for r in stage_records}) for k in keys}
        colour_key = RHO if RHO in keys else max(keys, key=lambda k: counts[k], default="")
        facet_keys = [k for k in keys if k != colour_key]
        facets: dict[tuple, list[RunRecord]] = defaultdict(list)
        for record in stage_records:
            facets[tuple(record.cell.get(k) for k in facet_keys)].append(record)
        cells = {facet: {label: runs for (_, label), runs in records_by_cell(runs).items()}
                 for facet, runs in facets.items()}
        order = sorted(cells, key=value_order)
        drawn = sorted(order, key=lambda f: -len(cells[f]))[:MAX_TRAJECTORY_FIGURES]
        for facet in [f for f in order if f in drawn]:
            _trajectory_figure(section, context, stage, facet_keys, facet, colour_key, cells[facet])
        rest = [group_label(facet_keys, f) for f in order if f not in drawn]
        if rest:
            section.leave_out(f"trajectories, stage {stage}, {len(rest)} more groups of cells ({'; '.join(rest)})",
                              f"at most {MAX_TRAJECTORY_FIGURES} trajectory figures are drawn per stage, those "
                              "with the most cells")
    return section


def _reference_norm(runs: Sequence[RunRecord]) -> float | None:
    """The norm a cell's figure marks: the median held norm of a clamp, the Wc of a free cell."""
    held = [v for v in (record_value(r, "held_norm") for r in runs) if numeric(v)]
    if held:
        return float(np.median(held))
    if runs[0].config.get("controller", {}).get("name") == "free":
        return critical_norm([r.norm_at_grok for r in runs if not r.censored])
    return None


def _trajectory_figure(section: ReportSection, context: ReportContext, stage: str, facet_keys: Sequence[str],
                       facet: tuple, colour_key: str, cells: dict[str, list[RunRecord]]) -> None:
    def colour_value(runs: list[RunRecord]) -> Any:
        return runs[0].cell.get(colour_key)

    ordered = sorted(cells.items(), key=lambda item: value_order([colour_value(item[1])]))
    curves, t_starts, controllers, seed_means = [], set(), set(), set()
    for _, runs in ordered:
        steps, aligned, from_seed_mean = align_trajectories([context.trajectory(r.run_id) for r in runs])
        seed_means |= from_seed_mean
        short = f"{colour_key.split('.')[-1]}={colour_value(runs)}" if colour_key else "all seeds"
        curves.append(CellCurves(short, steps, aligned["train_acc"], aligned["test_acc"], aligned["weight_norm"],
                                 _reference_norm(runs)))
        t_starts |= {record_value(r, "controller.t_start") for r in runs}
        controllers.add(runs[0].config.get("controller", {}).get("name"))
    label = group_label(facet_keys, facet) if facet_keys else ""
    where = f"stage {stage}" + (f", {label}" if label else "")
    if not any(_has_data(c.weight_norm) or _has_data(c.test_acc) for c in curves):
        section.leave_out(f"trajectories, {where}", "no trajectories stored")
        return
    t_start = next(iter(t_starts)) if len(t_starts) == 1 and numeric(next(iter(t_starts))) else None
    reference = r"$W_c$ (median $\|W\|$ at grok)" if controllers == {"free"} else r"held norm $\rho \cdot W_c$"
    seeds = sum(len(runs) for _, runs in ordered)
    title = f"{where}: {len(ordered)} cell{'s' if len(ordered) > 1 else ''}, {seeds} runs"
    numeric_colours = all(numeric(colour_value(runs)) for _, runs in ordered)
    name = "trajectories_" + slug(stage) + (f"_{slug(label)}" if label else "")
    caption = f"Accuracy and weight norm against the step, {where}"
    if seed_means:
        caption += " (the released data hold only means over seeds, drawn as they are)"
    section.figure(name, trajectory_figure(title, curves, reference, t_start, numeric_colours, bool(seed_means)),
                   caption)
