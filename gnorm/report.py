"""``gnorm report``: a Markdown report of a results directory, with the analyzers' tables and figures.

``write_report`` runs the analyzers that apply to the stored runs and writes ``report.md`` next to a
``figures/`` folder; every figure is saved as PNG (for the Markdown) and PDF (for papers). Figures:

* ``trajectories_<stage>[_<facet>]``: per cell, the median over seeds of train and test accuracy
  against the optimizer step (log x), and of the weight norm ||W||, with a dotted line at the cell's
  held norm rho * Wc (clamps) or its critical norm Wc (free runs). Thin lines are single seeds.
* ``critical_norm_vs_p``: Wc against p on log-log axes with the fit ln Wc = c + beta * ln p, when
  the free runs cover several p.
* ``delay_law``: per group, the median T_grok of each cell (log y; bars: interquartile range over
  grokked seeds) against rho, the fitted line T = exp(intercept + alpha * rho) and its bootstrap band;
  cells with censored seeds are squares and their counts are in the legend, cells left out of the
  fit are hollow. Groups: every cell key other than rho that varies (e.g. p, lr).
* ``rho_lr_heatmap[_<facet>]``: median T_grok over the rho x lr matrix, when both are swept.

A figure that does not apply to the data (no rho sweep, one p only) is left out and the report says
why. Each figure function takes plain data and returns a :class:`matplotlib.figure.Figure`, so tests
and notebooks can call them without a store.

Figures are built as ``matplotlib.figure.Figure`` objects on the non-interactive Agg canvas rather
than through ``pyplot``: nothing here selects a process-wide backend or keeps figures in pyplot's
global registry, so importing this module never changes how a user's own notebook plots.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections import defaultdict
from functools import wraps
from pathlib import Path
from typing import Any, Callable, Sequence

import attrs
import matplotlib
import numpy as np
from matplotlib import ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from gnorm.builtins.analyzers import bootstrap_cell_medians, median_t_grok, record_value, select
from gnorm.components import Analysis, RunRecord, Table
from gnorm.errors import UserError, write_failure
from gnorm.registry import Registry
from gnorm.science import LineFit, ols_line, ols_slopes, percentile_interval
from gnorm.store import Store
from gnorm.tables import cell_label, format_value, stage_summaries

RHO = "controller.rho"
LR = "optimizer.lr"
P = "task.p"
#: Axis labels (with units) for the keys the figures put on an axis.
AXIS_LABELS = {
    RHO: r"$\rho$ = held norm / $W_c$ (dimensionless)",
    LR: "learning rate",
    P: "p (modulus)",
    "held_norm": r"held norm $\rho \cdot W_c$ ($\|W\|$, Frobenius)",
}
STEP_LABEL = "optimizer step (log scale)"
NORM_LABEL = r"weight norm $\|W\|$ (Frobenius)"
T_GROK_LABEL = r"$T_\mathrm{grok}$ (steps, log scale)"
#: Most trajectory figures drawn per stage; the rest are named in the report.
MAX_TRAJECTORY_FIGURES = 6
STYLE = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9,
         "xtick.labelsize": 9, "ytick.labelsize": 9, "axes.grid": True, "grid.alpha": 0.3,
         "axes.spines.top": False, "axes.spines.right": False, "savefig.dpi": 150}


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _styled(function: Callable[..., Figure]) -> Callable[..., Figure]:
    """Build the figure under gnorm's style (fonts, grid) without touching the global rcParams."""
    @wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        with matplotlib.rc_context(STYLE):
            return function(*args, **kwargs)
    return wrapper


def axis_label(key: str) -> str:
    return AXIS_LABELS.get(key, key)


def _colours(count: int, numeric: bool) -> list[Any]:
    """Ordered colours (viridis without its pale end) for a numeric sweep, tab10 for categories."""
    if numeric:
        colormap = matplotlib.colormaps["viridis"]
        return [colormap(0.85 * i / max(count - 1, 1)) for i in range(count)]
    colormap = matplotlib.colormaps["tab10"]
    return [colormap(i % 10) for i in range(count)]


def _plain_log_ticks(axis: Any) -> None:
    """Log axis ticked at 1, 2, 5 x 10^k and labelled with plain numbers (2,000 rather than 2x10^3)."""
    axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:,.0f}" if value >= 1 else f"{value:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


# ---------------------------------------------------------------------------------------------------
# Trajectories.


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


def _nanmedian(values: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a step no seed has reached yet: NaN
        return np.nanmedian(values, axis=0)


def _has_data(values: np.ndarray) -> bool:
    return bool(np.isfinite(values).any())


@_styled
def trajectory_figure(title: str, cells: Sequence[CellCurves], reference: str = "", t_start: float | None = None,
                      numeric_colours: bool = True, seed_means: bool = False) -> Figure:
    """Median over seeds (thick) and single seeds (thin) of train accuracy (dashed) and test accuracy
    (solid) against the step on a log axis, and of the weight norm below it, one colour per cell; a
    dotted line at each cell's ``reference_norm`` (``reference`` names it), a dash-dot line at
    ``t_start``. ``seed_means``: the rows are released means over seeds, drawn as they are. Without
    accuracies (paper B released none) only the norm panel is drawn."""
    with_accuracy = any(_has_data(c.test_acc) or _has_data(c.train_acc) for c in cells)
    figure = _new_figure(9.5, 6.4 if with_accuracy else 4.2)
    if with_accuracy:
        accuracy, norm = figure.subplots(2, 1, sharex=True)
        panels = (accuracy, norm)
    else:
        norm = figure.subplots()
        panels = (norm,)
    colours = _colours(len(cells), numeric_colours)
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
            accuracy.plot(steps, _nanmedian(cell.train_acc)[shown], color=colour, lw=1.6, ls="--")
            accuracy.plot(steps, _nanmedian(cell.test_acc)[shown], color=colour, lw=2.0)
        norm.plot(steps, _nanmedian(cell.weight_norm)[shown], color=colour, lw=2.0)
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


# ---------------------------------------------------------------------------------------------------
# The critical norm against p.


@attrs.frozen
class CriticalNormPoint:
    """One free cell: its p, Wc and the bootstrap CI of Wc; ``series`` names the cell's other settings."""

    p: float
    critical_norm: float
    low: float | None
    high: float | None
    series: str = "(all)"


def critical_norm_power_law(points: Sequence[CriticalNormPoint]) -> LineFit:
    """ln Wc = c + beta * ln p by OLS over the points; slope = beta (Wc ~ p^beta)."""
    return ols_line(np.log([pt.p for pt in points]), np.log([pt.critical_norm for pt in points]))


@_styled
def critical_norm_figure(points: Sequence[CriticalNormPoint], fit: LineFit | None,
                         unfitted: Sequence[CriticalNormPoint] = ()) -> Figure:
    """Wc against p on log-log axes, error bars = the CI of each cell's Wc, one colour per series (in
    the order given), the power law fitted to ``points`` as a line; ``unfitted`` points (grey) are
    shown but not fitted."""
    series = list(dict.fromkeys(pt.series for pt in points))
    several = len(series) > 2
    figure = _new_figure(7.5, 6.4 if several else 4.8)
    axes = figure.subplots()
    numeric = all(re.fullmatch(r"[^=]+=[-+0-9.eE]+", name) for name in series)
    for name, colour in zip(series, _colours(len(series), numeric) if len(series) > 1 else ["tab:blue"]):
        chosen = [pt for pt in points if pt.series == name]
        _wc_errorbar(axes, chosen, colour, name if len(series) > 1 else r"$W_c$ (bars: CI of the median)")
    if unfitted:
        _wc_errorbar(axes, unfitted, "0.65", "settings run at one p only (not fitted)")
    if fit is not None:
        ps = np.array([pt.p for pt in points], float)
        grid = np.geomspace(ps.min() * 0.95, ps.max() * 1.05, 50)
        axes.plot(grid, np.exp(fit.intercept + fit.slope * np.log(grid)), color="0.2", lw=1.4,
                  label=rf"fit: $W_c \propto p^{{{fit.slope:.2f}}}$, $R^2$ = {fit.r_squared:.3f}")
    axes.set_xscale("log")
    axes.set_yscale("log")
    every_p = sorted({pt.p for pt in [*points, *unfitted]})
    axes.xaxis.set_major_locator(ticker.FixedLocator(every_p))
    axes.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    axes.xaxis.set_minor_locator(ticker.NullLocator())
    axes.yaxis.set_major_locator(ticker.MaxNLocator(6))
    axes.yaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    axes.yaxis.set_minor_formatter(ticker.NullFormatter())
    axes.set_xlabel(axis_label(P) + ", log scale")
    axes.set_ylabel(r"$W_c$ = median $\|W\|$ at $T_\mathrm{grok}$ (log scale)")
    axes.set_title(r"Critical norm $W_c$ against p")
    if several:
        figure.legend(loc="outside lower center", ncols=3, frameon=False,
                      title="bars: bootstrap CI of the median")
    else:
        axes.legend(loc="upper left")
    return figure


def _wc_errorbar(axes: Any, points: Sequence[CriticalNormPoint], colour: Any, label: str) -> None:
    wc = np.array([pt.critical_norm for pt in points])
    low = np.array([pt.low if pt.low is not None else pt.critical_norm for pt in points])
    high = np.array([pt.high if pt.high is not None else pt.critical_norm for pt in points])
    axes.errorbar([pt.p for pt in points], wc, yerr=[wc - low, high - wc], fmt="o", color=colour, capsize=3,
                  ms=5, label=label)


# ---------------------------------------------------------------------------------------------------
# The delay law.


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


@_styled
def delay_law_figure(groups: Sequence[DelayLawGroup], x_key: str = RHO, confidence: float = 0.95) -> Figure:
    """Per group: median T_grok per cell (log y) with the interquartile range over grokked seeds as
    bars, the fitted line exp(intercept + alpha * x) and the bootstrap band of the fit. Cells with
    censored seeds are squares, and their counts are in the group's legend entry (text next to the
    points would collide with neighbouring groups); cells left out of the fit (too few grokked seeds)
    are hollow; a cell where no seed grokked is a hollow triangle at its budget."""
    several = len(groups) > 2
    figure = _new_figure(8.0, 6.6 if several else 5.2)
    axes = figure.subplots()
    colours = _colours(len(groups), False) if len(groups) > 1 else ["tab:blue"]
    kinds: set[str] = set()
    for group, colour in zip(groups, colours):
        kinds |= _draw_delay_group(axes, group, colour, x_key)
    axes.set_yscale("log")
    _plain_log_ticks(axes.yaxis)
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


# ---------------------------------------------------------------------------------------------------
# The rho x lr matrix.


@_styled
def lever_heatmap_figure(rhos: Sequence[float], lrs: Sequence[float], median: np.ndarray, grokked: np.ndarray,
                         seeds: np.ndarray, title: str = "") -> Figure:
    """``median[i, j]``: median T_grok over grokked seeds at rhos[i], lrs[j] (NaN where none grokked),
    coloured on a log scale and written in each cell with grokked/seeds; empty cells are hatched."""
    figure = _new_figure(1.6 * len(lrs) + 3.2, 0.75 * len(rhos) + 2.2)
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
        _plain_log_ticks(bar.ax.yaxis)
    return figure


# ---------------------------------------------------------------------------------------------------
# Markdown.


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


def slug(text: str) -> str:
    """A file-name-safe form of a stage or cell label (``pscan/clamp`` -> ``pscan-clamp``)."""
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text.replace("/", "-")).strip("_") or "all"


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


# ---------------------------------------------------------------------------------------------------
# What applies to the data.


def varying_keys(records: Sequence[RunRecord], exclude: Sequence[str] = ()) -> list[str]:
    """Cell keys whose values differ between ``records`` (in first-seen order), with ``stage`` first
    when the records span several stages."""
    keys = [k for k in dict.fromkeys(k for r in records for k in r.cell) if k not in exclude]
    keys = [k for k in keys if len({json.dumps(record_value(r, k)) for r in records}) > 1]
    return (["stage"] if len({r.stage for r in records}) > 1 else []) + keys


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _group_label(keys: Sequence[str], values: Sequence[Any]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in zip(keys, values)) or "(all)"


def _analyze(registry: Registry, name: str, records: Sequence[RunRecord], **options: Any) -> Analysis:
    analyzer = registry.get("analyzer", name)
    return analyzer.factory(analyzer.config_class(**options))(records)


# ---------------------------------------------------------------------------------------------------
# The report, section by section.


@attrs.frozen
class WrittenReport:
    """What ``write_report`` wrote: the Markdown file, every figure file, and the figures left out."""

    path: Path
    figures: list[Path]
    left_out: list[str]


#: Name prefixes of the figure files gnorm writes; files of an earlier report with these names that
#: this report did not write again are removed, so figures/ never shows stale results.
FIGURE_PREFIXES = ("trajectories_", "critical_norm_vs_p", "delay_law", "rho_lr_heatmap", "logit_scale_collapse")


def write_report(store: Store, out_dir: str | Path, registry: Registry,
                 analyses: Sequence[Any] = ()) -> WrittenReport:
    """Run the analyzers that apply to ``store``'s runs and write ``out_dir/report.md`` with their
    tables, the figures (PNG and PDF under ``out_dir/figures``) and a line for each figure left out.

    Analyzers: ``critical_norm`` and ``delay_law`` (x = rho, grouped by every cell key other than rho
    that varies, and by stage when several stages hold a rho), ``shared_exponent`` when such a key
    varies, ``levers`` when the learning rate varies too, ``logit_mediation`` when runs have a logit
    scale at grok and the temperature varies. ``analyses`` are the experiment file's ``[[analysis]]``
    choices (name and config): a ``delay_law`` or ``logit_mediation`` among them sets that section's
    settings, and every other one gets its tables in a closing section."""
    records = store.records()
    if not records:
        raise UserError(f"{store.directory}: no finished runs to report on")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise write_failure("", out, error) from None
    report = ReportWriter(out)
    _header(report, store, records)
    chosen = {choice.name: choice.config for choice in analyses}
    critical = _critical_norm_section(report, registry, records)
    _delay_law_section(report, registry, records, chosen.get("delay_law"))
    _logit_mediation_section(report, registry, records, chosen.get("logit_mediation"))
    _trajectory_section(report, store, records, critical)
    _file_analyses_section(report, registry, records, analyses)
    path = out / "report.md"
    try:
        path.write_text("\n\n".join(report.lines) + "\n")
    except OSError as error:
        raise write_failure("", path, error) from None
    for old in (out / "figures").glob("*") if (out / "figures").is_dir() else []:
        if old.suffix in (".png", ".pdf") and old.name.startswith(FIGURE_PREFIXES) and old not in report.figures:
            old.unlink()
    return WrittenReport(path, report.figures, report.left_out)


#: Analyzers whose ``[[analysis]]`` settings shape a section of their own (the rest are listed at the end).
SECTION_ANALYZERS = ("delay_law", "logit_mediation")


def _file_analyses_section(report: ReportWriter, registry: Registry, records: Sequence[RunRecord],
                           analyses: Sequence[Any]) -> None:
    """The experiment file's other ``[[analysis]]`` tables, each with the settings the file gave it."""
    others = [choice for choice in analyses if choice.name not in SECTION_ANALYZERS]
    if not others:
        return
    report.add("## Analyses from the experiment file")
    for choice in others:
        changed = settings_text(choice.config)
        report.add(f"### {choice.name}" + (f" ({changed})" if changed else ""))
        report.analysis(registry.get("analyzer", choice.name).factory(choice.config)(records))


def settings_text(config: Any) -> str:
    """``within = `{"task.p": [59, 59]}`, min_cells = `2``: the settings that differ from the defaults."""
    if not attrs.has(type(config)):
        return ""
    defaults = attrs.asdict(type(config)())
    return ", ".join(f"{key} = `{json.dumps(value)}`" for key, value in attrs.asdict(config).items()
                     if value != defaults.get(key))


def _logit_mediation_section(report: ReportWriter, registry: Registry, records: Sequence[RunRecord],
                             config: Any = None) -> None:
    """Drawn when the file asks for ``logit_mediation`` or runs carry a logit scale at grok and the
    temperature varies."""
    from gnorm.builtins.analyzers import LOGIT_SCALE_FACTS

    has_scale = any(fact in r.facts for r in records for fact in LOGIT_SCALE_FACTS)
    temperatures = {record_value(r, "loss.temperature") for r in records}
    if config is None and not (has_scale and len(temperatures) > 1):
        return
    report.add("## Logit-scale mediation")
    analyzer = registry.get("analyzer", "logit_mediation")
    config = config if config is not None else analyzer.config_class()
    analysis = analyzer.factory(config)(records)
    report.analysis(analysis)
    points = [CollapsePoint(group["label"], cell["logit_scale"], cell["t_grok"], cell["norm"], cell["temperature"])
              for group in analysis.numbers["groups"] for cell in group.get("cells", [])]
    if not points:
        report.leave_out("logit-scale collapse", "no cell has a logit scale at grok and enough grokked seeds")
        return
    report.figure("logit_scale_collapse", logit_collapse_figure(points, config.norm_key),
                  "ln T_grok against the effective logit scale at grok: cells of every norm and temperature "
                  "fall on one line when the norm acts through the logit scale")


@attrs.frozen
class CollapsePoint:
    """One cell of a ``logit_mediation`` group (its ``cells``): median logit scale at grok, median
    T_grok, its norm and temperature."""

    group: str
    logit_scale: float
    t_grok: float
    norm: float
    temperature: float


@_styled
def logit_collapse_figure(points: Sequence[CollapsePoint], norm_key: str = RHO) -> Figure:
    """T_grok (log y) against the logit scale L at grok, one colour per group and one marker per norm
    value, with each group's OLS line of ln T on L."""
    groups = list(dict.fromkeys(pt.group for pt in points))
    norms = sorted({pt.norm for pt in points})
    markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
    figure = _new_figure(7.5, 5.2)
    axes = figure.subplots()
    for group, colour in zip(groups, _colours(len(groups), False) if len(groups) > 1 else ["tab:blue"]):
        chosen = [pt for pt in points if pt.group == group]
        for pt in chosen:
            axes.plot(pt.logit_scale, pt.t_grok, ls="", color=colour, ms=6,
                      marker=markers[norms.index(pt.norm) % len(markers)])
        if len({pt.logit_scale for pt in chosen}) >= 2:
            fit = ols_line([pt.logit_scale for pt in chosen], np.log([pt.t_grok for pt in chosen]))
            grid = np.linspace(min(pt.logit_scale for pt in chosen), max(pt.logit_scale for pt in chosen), 50)
            axes.plot(grid, np.exp(fit.intercept + fit.slope * grid), color=colour, lw=1.3,
                      label=f"{group}: fit, $R^2$ = {fit.r_squared:.3f}")
    handles, _ = axes.get_legend_handles_labels()
    handles += [Line2D([], [], color="0.3", ls="", marker=markers[i % len(markers)],
                       label=f"{norm_key.split('.')[-1]} = {norm:g}") for i, norm in enumerate(norms)]
    axes.set_yscale("log")
    _plain_log_ticks(axes.yaxis)
    axes.set_xlabel(r"effective logit scale $L$ at $T_\mathrm{grok}$ (mean $\|$logits$/\tau\|_2$)")
    axes.set_ylabel(T_GROK_LABEL)
    axes.set_title(r"Logit-scale collapse: median $T_\mathrm{grok}$ against $L$ (cells: norm x temperature)")
    figure.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False)
    return figure



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
    from gnorm.study import planned_cells

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


def _critical_norm_section(report: ReportWriter, registry: Registry,
                           records: Sequence[RunRecord]) -> Analysis:
    report.add("## Critical norm Wc")
    analysis = _analyze(registry, "critical_norm", records)
    cells = [c for c in analysis.numbers["cells"] if c["critical_norm"] is not None]
    if not analysis.numbers["cells"]:
        report.leave_out("Wc against p", "no free runs (controller `free`), so no critical norm was measured")
        return analysis
    report.analysis(analysis)
    by_id = {r.run_id: r for r in records}
    found = []  # (p, cell numbers, the cell's other settings)
    for cell in cells:
        p = record_value(by_id[cell["run_ids"][0]], P)
        if _numeric(p):
            others = {"stage": cell["stage"], **{k: v for k, v in cell["cell"].items() if k != P}}
            found.append((float(p), cell, others))
    ps = {p for p, _, _ in found}
    if len(ps) < 2:
        report.leave_out("Wc against p", f"needs free runs at two or more p "
                         f"(found {len(ps)}: {', '.join(f'{p:g}' for p in sorted(ps)) or 'none'})")
        return analysis
    spans = defaultdict(set)
    for p, _, others in found:
        spans[json.dumps(others, sort_keys=True)].add(p)
    in_series = [len(spans[json.dumps(o, sort_keys=True)]) > 1 for _, _, o in found]
    if not any(in_series):  # every setting ran at one p only: pool them all
        in_series = [True] * len(found)
    labels = series_labels([o for (_, _, o), chosen in zip(found, in_series) if chosen])
    fitted = [CriticalNormPoint(p, cell["critical_norm"], *cell["ci"], series=label)
              for (p, cell, _), label in zip([f for f, chosen in zip(found, in_series) if chosen], labels)]
    unfitted = [CriticalNormPoint(p, cell["critical_norm"], *cell["ci"], series="")
                for (p, cell, _), chosen in zip(found, in_series) if not chosen]
    fitted.sort(key=lambda pt: _value_order([pt.series]))
    fit = critical_norm_power_law(fitted)
    report.add(f"Power law over {len(fitted)} cells: Wc ~ p^{fit.slope:.3f} (R^2 {fit.r_squared:.3f})"
               + (f"; {len(unfitted)} cells whose settings ran at a single p are drawn grey and left out of the fit."
                  if unfitted else "."))
    report.figure("critical_norm_vs_p", critical_norm_figure(fitted, fit, unfitted),
                  "Critical norm Wc against p (log-log) with the fitted power law")
    return analysis


def series_labels(settings: Sequence[dict[str, Any]]) -> list[str]:
    """Labels naming only the settings that differ between ``settings`` (``train_fraction=0.3``), with
    numbers as numbers so that they sort; ``(all)`` when nothing differs."""
    keys = [k for k in dict.fromkeys(k for s in settings for k in s)
            if len({json.dumps(s.get(k)) for s in settings}) > 1]
    return [_group_label(keys, [s.get(k) for k in keys]) for s in settings]


@attrs.frozen(eq=False)
class DelayLawResult:
    """The ``delay_law`` analysis of a store's rho sweep and the per-group data its figure draws."""

    analysis: Analysis
    groups: list[DelayLawGroup]
    group_by: list[str]
    confidence: float
    x: str = RHO


def delay_law_fits(records: Sequence[RunRecord], registry: Registry, config: Any = None) -> DelayLawResult | None:
    """Run ``delay_law`` and collect each group's per-seed T_grok and bootstrap band for the figure.
    With ``config`` (an experiment file's ``[[analysis]]`` settings) the fit and the figure use exactly
    those settings (x, groups, stages, within); without, x = rho, grouped by every other varying cell
    key (see :func:`varying_keys`). None when no group has two or more x values."""
    analyzer = registry.get("analyzer", "delay_law")
    if config is None:
        swept = [r for r in records if _numeric(record_value(r, RHO))]
        config = analyzer.config_class(x=RHO, group_by=varying_keys(swept, exclude=[RHO]))
    else:
        swept = [r for r in select(records, config.stages, config.within) if _numeric(record_value(r, config.x))]
    group_by = list(config.group_by)
    times: dict[tuple, dict[float, list[int | None]]] = defaultdict(lambda: defaultdict(list))
    budgets: dict[tuple, dict[float, int]] = defaultdict(dict)
    for record in swept:
        key = tuple(record_value(record, k) for k in group_by)
        x = round(float(record_value(record, config.x)), 9)
        times[key][x].append(record.t_grok)
        budgets[key][x] = max(budgets[key].get(x, 0), record.budget)
    if not any(len(cells) >= 2 for cells in times.values()):
        return None
    analysis = analyzer.factory(config)(records)
    groups = []
    for fit in analysis.numbers["groups"]:
        key = tuple(fit["group"].get(k) for k in group_by)
        cells = dict(sorted(times[key].items()))
        used = fit["cells_used"] if fit["alpha"] is not None else []
        band = (delay_law_band({x: cells[x] for x in used}, config.resamples, config.confidence, config.seed)
                if fit["alpha"] is not None else None)
        groups.append(DelayLawGroup(fit["label"], cells, used, budgets[key], fit["alpha"], fit.get("intercept"),
                                    fit.get("r_squared"), tuple(fit.get("alpha_ci", (None, None))), band))
    return DelayLawResult(analysis, groups, group_by, config.confidence, config.x)


def _delay_law_section(report: ReportWriter, registry: Registry, records: Sequence[RunRecord],
                       config: Any = None) -> None:
    report.add("## Delay law")
    result = delay_law_fits(records, registry, config)
    x_key = config.x if config is not None else RHO
    if result is None:
        report.leave_out("delay law", f"no sweep of `{x_key}` (the fit needs runs at two or more values in one "
                         "group), so there is no delay-law fit or plot")
        report.leave_out("rho x lr heatmap", f"needs a sweep of `{LR}` as well as `{RHO}`")
        return
    group_by = result.group_by
    if config is not None:
        report.add("Settings from the experiment file's `[[analysis]]` table: "
                   + (settings_text(config) or "the defaults") + ".")
    report.add(f"Fitted per group of {', '.join(f'`{k}`' for k in group_by)}." if group_by else "")
    report.analysis(result.analysis)
    per_figure = 6
    for start in range(0, len(result.groups), per_figure):
        name = "delay_law" if len(result.groups) <= per_figure else f"delay_law_{start // per_figure + 1}"
        report.figure(name, delay_law_figure(result.groups[start:start + per_figure], x_key, result.confidence),
                      f"T_grok (log scale) against {x_key}: cell medians (bars: IQR over grokked seeds), the fitted "
                      f"delay law and its {result.confidence:.0%} bootstrap band (seeds resampled within cells)")
    if config is not None:  # the file's settings: its own shared_exponent / levers tables, if any, follow
        records = select(records, config.stages, config.within)
        if config.x != RHO:
            return
    if [k for k in group_by if k != "stage"]:
        report.add("### Shared exponent")
        report.analysis(_analyze(registry, "shared_exponent", records, x=RHO, group_by=group_by))
    swept = [r for r in records if _numeric(record_value(r, RHO))]
    _levers_section(report, registry, records, swept, group_by)


def _levers_section(report: ReportWriter, registry: Registry, records: Sequence[RunRecord],
                    swept: Sequence[RunRecord], group_by: Sequence[str]) -> None:
    if LR not in group_by:
        report.leave_out("rho x lr heatmap", f"needs a sweep of `{LR}` as well as `{RHO}`")
        return
    report.add("### Levers: rho against the learning rate")
    facets = [k for k in group_by if k != LR]
    by_facet: dict[tuple, list[RunRecord]] = defaultdict(list)
    for record in swept:
        if _numeric(record_value(record, LR)):
            by_facet[tuple(record_value(record, k) for k in facets)].append(record)
    for facet in sorted(by_facet, key=_value_order):
        label = _group_label(facets, facet)
        if facets:
            report.add(f"**{label}**")
        report.analysis(_analyze(registry, "levers", by_facet[facet], x=RHO, across=LR))
        rhos, lrs, median, grokked, seeds = rho_lr_matrix(by_facet[facet])
        name = "rho_lr_heatmap" + (f"_{slug(label)}" if facets else "")
        title = r"Median $T_\mathrm{grok}$ over $\rho$ x lr (grokked/seeds)" + (f", {label}" if facets else "")
        report.figure(name, lever_heatmap_figure(rhos, lrs, median, grokked, seeds, title),
                      "Median T_grok (steps) over the rho x lr matrix" + (f" ({label})" if facets else ""))


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
        value = median_t_grok(times)
        median[i, j] = np.nan if value is None else value
        grokked[i, j], seeds[i, j] = sum(t is not None for t in times), len(times)
    return rhos, lrs, median, grokked, seeds


def _trajectory_section(report: ReportWriter, store: Store, records: Sequence[RunRecord],
                        critical: Analysis) -> None:
    """Per stage, one figure per combination of the cell keys other than the colour key (rho when
    swept, else the key with most values); at most MAX_TRAJECTORY_FIGURES per stage, those with the
    most cells first."""
    report.add("## Trajectories",
               "Median over seeds (thick) and single seeds (thin) against the optimizer step. A seed whose "
               "run stopped early (at its T_grok) is held at its last evaluated value.")
    wc = {(c["stage"], cell_label(c["cell"])): c["critical_norm"] for c in critical.numbers["cells"]}
    by_stage: dict[str, list[RunRecord]] = defaultdict(list)
    for record in records:
        by_stage[record.stage].append(record)
    for stage, stage_records in by_stage.items():
        keys = list(dict.fromkeys(k for r in stage_records for k in r.cell))
        counts = {k: len({json.dumps(r.cell.get(k)) for r in stage_records}) for k in keys}
        colour_key = RHO if RHO in keys else max(keys, key=lambda k: counts[k], default="")
        facet_keys = [k for k in keys if k != colour_key]
        facets: dict[tuple, dict[str, list[RunRecord]]] = defaultdict(lambda: defaultdict(list))
        for record in stage_records:
            facets[tuple(record.cell.get(k) for k in facet_keys)][cell_label(record.cell)].append(record)
        order = sorted(facets, key=_value_order)
        drawn = sorted(order, key=lambda f: -len(facets[f]))[:MAX_TRAJECTORY_FIGURES]
        for facet in [f for f in order if f in drawn]:
            _trajectory_figure(report, store, stage, facet_keys, facet, colour_key, facets[facet], wc)
        rest = [_group_label(facet_keys, f) for f in order if f not in drawn]
        if rest:
            report.leave_out(f"trajectories, stage {stage}, {len(rest)} more groups of cells ({'; '.join(rest)})",
                             f"at most {MAX_TRAJECTORY_FIGURES} trajectory figures are drawn per stage, those "
                             "with the most cells")


def _value_order(values: Sequence[Any]) -> list[tuple]:
    return [(0, v, "") if _numeric(v) else (1, 0, str(v)) for v in values]


def _trajectory_figure(report: ReportWriter, store: Store, stage: str, facet_keys: Sequence[str],
                       facet: tuple, colour_key: str, cells: dict[str, list[RunRecord]],
                       wc: dict[tuple[str, str], float | None]) -> None:
    def colour_value(runs: list[RunRecord]) -> Any:
        return runs[0].cell.get(colour_key)

    ordered = sorted(cells.items(), key=lambda item: _value_order([colour_value(item[1])]))
    curves, t_starts, controllers, seed_means = [], set(), set(), set()
    for label, runs in ordered:
        steps, aligned, from_seed_mean = align_trajectories([store.trajectory(r.run_id) for r in runs])
        seed_means |= from_seed_mean
        held = [v for v in (record_value(r, "held_norm") for r in runs) if _numeric(v)]
        free = runs[0].config.get("controller", {}).get("name") == "free"
        reference = float(np.median(held)) if held else (wc.get((stage, label)) if free else None)
        short = f"{colour_key.split('.')[-1]}={colour_value(runs)}" if colour_key else "all seeds"
        curves.append(CellCurves(short, steps, aligned["train_acc"], aligned["test_acc"], aligned["weight_norm"],
                                 reference))
        t_starts |= {record_value(r, "controller.t_start") for r in runs}
        controllers.add(runs[0].config.get("controller", {}).get("name"))
    label = _group_label(facet_keys, facet) if facet_keys else ""
    where = f"stage {stage}" + (f", {label}" if label else "")
    if not any(_has_data(c.weight_norm) or _has_data(c.test_acc) for c in curves):
        report.leave_out(f"trajectories, {where}", "no trajectories stored")
        return
    t_start = next(iter(t_starts)) if len(t_starts) == 1 and _numeric(next(iter(t_starts))) else None
    reference = r"$W_c$ (median $\|W\|$ at grok)" if controllers == {"free"} else r"held norm $\rho \cdot W_c$"
    seeds = sum(len(runs) for _, runs in ordered)
    title = f"{where}: {len(ordered)} cell{'s' if len(ordered) > 1 else ''}, {seeds} runs"
    numeric = all(_numeric(colour_value(runs)) for _, runs in ordered)
    name = "trajectories_" + slug(stage) + (f"_{slug(label)}" if label else "")
    caption = f"Accuracy and weight norm against the step, {where}"
    if seed_means:
        caption += " (the released data hold only means over seeds, drawn as they are)"
    report.figure(name, trajectory_figure(title, curves, reference, t_start, numeric, bool(seed_means)), caption)
