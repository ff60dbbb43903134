"""The critical norm Wc per cell (the median norm at T_grok over grokked seeds), its spread across a
swept key, the power law Wc = c x^b, and the report section that draws Wc against p with that fit."""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Sequence

import attrs
import numpy as np

import gnorm
from gnorm.analysis.records import cell_label, numeric, record_value, records_by_cell, select, series_labels, value_order
from gnorm.analysis.statistics import bootstrap_median_interval, median_or_none
from gnorm.builtins.analyzers.options import KEYS, STAGES, confidence_level, intervals, not_empty, resample_count
from gnorm.components import Analysis, RunRecord, Table
from gnorm.figures import P, axis_label, new_figure, palette, styled
from gnorm.reporting import ReportContext, ReportSection
from gnorm.science import LineFit, coefficient_of_variation, critical_norm, ols_line, percentile_interval

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@attrs.frozen
class CriticalNormConfig:
    """``stages``: the stages to read (default: those whose controller is ``free``); ``within``: closed
    intervals the runs' values must lie in (as for ``delay_law``). ``norm``: ``total``
    (||W|| at T_grok) or a weight-norm group (that group's norm at T_grok, ``facts.norm_at_grok/<group>``).
    ``across``: cell keys (e.g. ``task.train_fraction``) over which the spread of Wc is reported.
    ``power_law_in``: the key Wc is fitted against as a power law (default p)."""

    stages: list[str] = attrs.field(factory=list, metadata=STAGES)
    within: dict[str, list[float]] = attrs.field(factory=dict, validator=intervals, metadata=KEYS)
    norm: str = attrs.field(default="total", validator=not_empty)
    across: list[str] = attrs.field(factory=list, metadata=KEYS)
    power_law_in: str = attrs.field(default="task.p", validator=not_empty, metadata=KEYS)
    resamples: int = attrs.field(default=2000, validator=resample_count)
    confidence: float = attrs.field(default=0.95, validator=confidence_level)


def norm_at_grok(record: RunRecord, norm: str) -> float | None:
    """The total norm at T_grok, or one group's (``facts.norm_at_grok/<group>``)."""
    return record.norm_at_grok if norm == "total" else record.facts.get(f"norm_at_grok/{norm}")


def spread_across(cells: Sequence[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """For each setting of the other cell keys: CV = std / mean (population std) of the cells' Wc over
    the values of ``key``, with the values and Wc it used. Only settings with two or more values."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for cell in cells:
        if key in cell["cell"] and cell["critical_norm"] is not None:
            others = {k: v for k, v in cell["cell"].items() if k != key}
            groups[json.dumps({"stage": cell["stage"], **others}, sort_keys=True, default=str)].append(cell)
    spreads = []
    for others, members in groups.items():
        if len(members) >= 2:
            members = sorted(members, key=lambda c: value_order((c["cell"][key],)))
            norms = [c["critical_norm"] for c in members]
            spreads.append({"across": key, "at": json.loads(others), "values": [c["cell"][key] for c in members],
                            "critical_norms": norms, "cv": coefficient_of_variation(norms)})
    return spreads


def power_law_fit(xs: Sequence[float], norms: Sequence[float], resamples: int, level: float,
                  seed: int = 0) -> dict[str, Any]:
    """ln Wc = a + b ln x by OLS over cells; the CI of b resamples cells with replacement."""
    log_x, log_wc = np.log(np.asarray(xs, float)), np.log(np.asarray(norms, float))
    fit = ols_line(log_x, log_wc)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, log_x.size, (resamples, log_x.size))
    usable = np.array([np.ptp(log_x[d]) > 0 for d in draws])
    slopes = np.array([ols_line(log_x[d], log_wc[d]).slope for d in draws[usable]])
    low, high = percentile_interval(slopes, level) if slopes.size else (None, None)
    return {"exponent": fit.slope, "prefactor": math.exp(fit.intercept), "r_squared": fit.r_squared,
            "exponent_ci": [low, high], "cells": int(log_x.size)}


def critical_norm_analyzer(config: CriticalNormConfig):
    """Wc = median over grokked seeds of the norm at T_grok, per cell, with a bootstrap CI of the median,
    the mean and the CV = std / mean of the norms at grok; its spread across ``across`` keys; and a
    power law Wc = c x^b in ``power_law_in`` over the cells when that key takes two or more values."""
    def analyze(records: Sequence[RunRecord]) -> Analysis:
        chosen = [r for r in select(records, config.stages, config.within)
                  if config.stages or r.config["controller"]["name"] == "free"]
        rows, numbers, notes = [], [], []
        for (stage, label), cell in records_by_cell(chosen).items():
            norms = [v for v in (norm_at_grok(r, config.norm) for r in cell if not r.censored) if v is not None]
            grokked = sum(not r.censored for r in cell)
            if len(norms) < grokked:
                notes.append(f"{stage} {label}: {grokked - len(norms)} grokked seeds have no "
                             f"{'norm at grok' if config.norm == 'total' else f'norm_at_grok/{config.norm}'}")
            wc = critical_norm(norms)
            low, high = bootstrap_median_interval(norms, config.resamples, config.confidence) if norms else (None, None)
            entry = {"stage": stage, "cell": cell[0].cell, "seeds": len(cell), "grokked": len(norms),
                     "critical_norm": wc, "mean": float(np.mean(norms)) if norms else None,
                     "cv": coefficient_of_variation(norms) if norms else None, "ci": [low, high],
                     "median_t_grok": median_or_none([r.t_grok for r in cell]),
                     "power_law_x": record_value(cell[0], config.power_law_in),
                     "run_ids": [r.run_id for r in cell]}
            numbers.append(entry)
            rows.append([stage, label, f"{len(norms)}/{len(cell)}", wc, low, high, entry["mean"], entry["cv"],
                         entry["median_t_grok"]])
        level = f"{config.confidence:.0%}"
        what = "||W||" if config.norm == "total" else f"||W_{config.norm}||"
        tables = [Table(f"critical norm Wc = median {what} at T_grok over grokked seeds",
                        ["stage", "cell", "grokked", "Wc", f"{level} CI low", "high", "mean", "CV", "median T_grok"],
                        rows)]
        spreads = [s for key in config.across for s in spread_across(numbers, key)]
        if spreads:
            tables.append(Table(f"spread of Wc ({what}) across a swept key: CV = std / mean of the cells' Wc",
                                ["across", "at", "values", "Wc", "CV"],
                                [[s["across"], cell_label({k: v for k, v in s["at"].items() if k != "stage"}),
                                  " / ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in s["values"]),
                                  " / ".join(f"{w:.3g}" for w in s["critical_norms"]), s["cv"]] for s in spreads]))
        fitted = [c for c in numbers if c["critical_norm"] is not None and isinstance(c["power_law_x"], (int, float))
                  and c["power_law_x"] > 0]
        power_law = None
        if len({c["power_law_x"] for c in fitted}) >= 2:
            power_law = power_law_fit([c["power_law_x"] for c in fitted], [c["critical_norm"] for c in fitted],
                                      config.resamples, config.confidence)
            tables.append(Table(f"power law: Wc = c * {config.power_law_in}^b over cells",
                                ["cells", "b", f"{level} CI low", "high", "c", "R^2"],
                                [[power_law["cells"], power_law["exponent"], *power_law["exponent_ci"],
                                  power_law["prefactor"], power_law["r_squared"]]]))
        return Analysis("critical_norm", tables, {"norm": config.norm, "cells": numbers, "spread": spreads,
                                                  "power_law": power_law}, notes)
    return analyze


# ---------------------------------------------------------------------------------------------------
# The report section: Wc against p.


@attrs.frozen
class CriticalNormPoint:
    """One free cell: its p, Wc and the bootstrap CI of Wc; ``series`` names the cell's other settings."""

    p: float
    critical_norm: float
    low: float | None
    high: float | None
    series: str = "(all)"


def critical_norm_power_law(points: Sequence[CriticalNormPoint]) -> LineFit:
    """ln Wc = c + beta * ln p by OLS over the points; slope = beta (Wc ~ p^beta). The same line
    :func:`power_law_fit` fits over the analyzer's cells."""
    return ols_line(np.log([pt.p for pt in points]), np.log([pt.critical_norm for pt in points]))


@styled
def critical_norm_figure(points: Sequence[CriticalNormPoint], fit: LineFit | None,
                         single_p: Sequence[CriticalNormPoint] = (), x_key: str = P) -> Figure:
    """Wc against p (or ``x_key``) on log-log axes, error bars = the CI of each cell's Wc, one colour
    per series (in the order given), the fitted power law as a line; ``single_p`` points (grey) are
    cells whose other settings ran at one p only, so they form no series of their own."""
    from matplotlib import ticker

    series = list(dict.fromkeys(pt.series for pt in points))
    several = len(series) > 2
    figure = new_figure(7.5, 6.4 if several else 4.8)
    axes = figure.subplots()
    numeric_series = all(re.fullmatch(r"[^=]+=[-+0-9.eE]+", name) for name in series)
    for name, colour in zip(series, palette(len(series), numeric_series) if len(series) > 1 else ["tab:blue"]):
        chosen = [pt for pt in points if pt.series == name]
        _wc_errorbar(axes, chosen, colour, name if len(series) > 1 else r"$W_c$ (bars: CI of the median)")
    if single_p:
        _wc_errorbar(axes, single_p, "0.65", f"settings run at one {x_key.split('.')[-1]} only")
    symbol = x_key.split(".")[-1]
    if fit is not None:
        ps = np.array([pt.p for pt in [*points, *single_p]], float)
        grid = np.geomspace(ps.min() * 0.95, ps.max() * 1.05, 50)
        axes.plot(grid, np.exp(fit.intercept + fit.slope * np.log(grid)), color="0.2", lw=1.4,
                  label=rf"fit: $W_c \propto {symbol}^{{{fit.slope:.2f}}}$, $R^2$ = {fit.r_squared:.3f}")
    axes.set_xscale("log")
    axes.set_yscale("log")
    every_p = sorted({pt.p for pt in [*points, *single_p]})
    axes.xaxis.set_major_locator(ticker.FixedLocator(every_p))
    axes.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    axes.xaxis.set_minor_locator(ticker.NullLocator())
    axes.yaxis.set_major_locator(ticker.MaxNLocator(6))
    axes.yaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    axes.yaxis.set_minor_formatter(ticker.NullFormatter())
    axes.set_xlabel(axis_label(x_key) + ", log scale")
    axes.set_ylabel(r"$W_c$ = median $\|W\|$ at $T_\mathrm{grok}$ (log scale)")
    axes.set_title(rf"Critical norm $W_c$ against {symbol}")
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


def critical_norm_section(config: CriticalNormConfig, analysis: Analysis, context: ReportContext) -> ReportSection:
    """The Wc tables, and Wc against ``power_law_in`` (file ``critical_norm_vs_p``) with the analyzer's
    power law, one colour per setting of the cells' other keys, when the free runs cover two or more
    values of it."""
    section = ReportSection("Critical norm Wc")
    symbol = config.power_law_in.split(".")[-1]
    if not analysis.numbers["cells"]:
        section.leave_out(f"Wc against {symbol}", "no free runs (controller `free`), so no critical norm was measured")
        return section
    section.analysis(analysis)
    cells = [c for c in analysis.numbers["cells"] if c["critical_norm"] is not None and numeric(c["power_law_x"])
             and c["power_law_x"] > 0]
    power_law = analysis.numbers["power_law"]
    if power_law is None:
        xs = sorted({float(c["power_law_x"]) for c in cells})
        section.leave_out(f"Wc against {symbol}", f"needs free runs at two or more {symbol} "
                          f"(found {len(xs)}: {', '.join(f'{x:g}' for x in xs) or 'none'})")
        return section
    others = [json.dumps({"stage": c["stage"], **{k: v for k, v in c["cell"].items() if k != config.power_law_in}},
                         sort_keys=True, default=str) for c in cells]
    spans = defaultdict(set)
    for c, setting in zip(cells, others):
        spans[setting].add(c["power_law_x"])
    in_series = [len(spans[setting]) > 1 for setting in others]
    if not any(in_series):  # every setting ran at one value only: one series of them all
        in_series = [True] * len(cells)
    labels = iter(series_labels([json.loads(o) for o, chosen in zip(others, in_series) if chosen]))
    points = [CriticalNormPoint(float(c["power_law_x"]), c["critical_norm"], *c["ci"],
                                series=next(labels) if chosen else "") for c, chosen in zip(cells, in_series)]
    series = sorted([pt for pt in points if pt.series], key=lambda pt: value_order([pt.series]))
    single = [pt for pt in points if not pt.series]
    fit = LineFit(power_law["exponent"], math.log(power_law["prefactor"]), power_law["r_squared"], power_law["cells"])
    section.add(f"Power law over {power_law['cells']} cells: Wc ~ {symbol}^{fit.slope:.3f} (R^2 {fit.r_squared:.3f})"
                + (f"; {len(single)} cells whose settings ran at a single {symbol} are drawn grey." if single else "."))
    section.figure("critical_norm_vs_p", critical_norm_figure(series, fit, single, x_key=config.power_law_in),
                   f"Critical norm Wc against {symbol} (log-log) with the fitted power law")
    return section


ANALYZERS = [
    gnorm.Analyzer(name="critical_norm", summary="Wc per cell: median norm at grok, CI, spread",
                   config_class=CriticalNormConfig, factory=critical_norm_analyzer, report=critical_norm_section),
]
