"""Logit-scale mediation (paper B): does the norm act through the logit scale? ``logit_mediation``
measures how much of the norm-induced delay is recovered at a matched logit scale and how well ln T_grok
collapses onto the logit scale, and its report section draws the collapse (``logit_scale_collapse``)."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Sequence

import attrs
import numpy as np

import gnorm
from gnorm.analysis.records import group_label, record_value, select, value_order
from gnorm.builtins.analyzers.options import (
    KEYS,
    STAGES,
    at_least,
    confidence_level,
    intervals,
    not_empty,
    positive_number,
    resample_count,
)
from gnorm.components import Analysis, RunRecord, Table
from gnorm.figures import RHO, T_GROK_LABEL, new_figure, palette, plain_log_ticks, styled
from gnorm.reporting import ReportContext, ReportSection
from gnorm.science import matched_delay, ols_line, percentile_interval, r_squared, recovery_fraction

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@attrs.frozen
class LogitMediationConfig:
    """Does the norm act through the logit scale? Per group (``group_by``, default p and the loss):

    * L of a cell = median over grokked seeds of each seed's effective logit scale at its own T_grok
      (mean over all examples of ||logits / tau||_2). ``logit_scale`` names the fact: ``auto`` takes
      ``logit_scale_at_grok`` (per seed, recorded by gnorm's ``logit_scale`` observable) and otherwise
      ``seed_mean_logit_scale_at_grok`` (the seed-mean trajectory at the seed's T_grok: all paper B
      released).
    * The baseline cell (``norm_key`` = ``baseline_norm``, ``temperature_key`` = ``baseline_temperature``)
      has delay T_base and scale L_base; the raised arms are the cells at ``norm_key`` = ``raised_norm``
      (default: the largest value swept over at least two temperatures), one per temperature; T_raised
      is the raised arm at the baseline temperature.
    * T* = the raised arms' median T_grok interpolated linearly in L at L_base (no extrapolation), and
      the recovery fraction R = (T_raised - T*) / (T_raised - T_base). Its CI is a paired bootstrap:
      seeds (the same seed indices in every cell, since a seed's start is shared by all arms) are drawn
      with replacement and R recomputed; replicates where T* cannot be interpolated are counted.
    * Over every cell of the group with at least ``min_grokked`` grokked seeds: R^2 of
      ln(median T_grok) on L alone, on the norm value alone, and on both (what the norm adds).

    On paper B's released runs this gives R = 0.833 (p = 59) and 0.895 (p = 97) under cross-entropy
    (paper: 0.83 / 0.89) and, on the rho x tau grid, R^2 = 0.970 on L with 0.019 added by rho (paper:
    0.97, 0.01-0.02).
    """

    stages: list[str] = attrs.field(factory=list, metadata=STAGES)
    within: dict[str, list[float]] = attrs.field(factory=dict, validator=intervals, metadata=KEYS)
    group_by: list[str] = attrs.field(factory=lambda: ["task.p", "loss.name"], metadata=KEYS)
    norm_key: str = attrs.field(default="controller.rho", validator=not_empty, metadata=KEYS)
    temperature_key: str = attrs.field(default="loss.temperature", validator=not_empty, metadata=KEYS)
    baseline_norm: float = attrs.field(default=1.0, validator=positive_number)
    baseline_temperature: float = attrs.field(default=1.0, validator=positive_number)
    raised_norm: float | None = attrs.field(default=None, validator=positive_number)
    logit_scale: str = attrs.field(default="auto", validator=not_empty)
    min_grokked: int = attrs.field(default=3, validator=at_least(1))
    resamples: int = attrs.field(default=2000, validator=resample_count)
    confidence: float = attrs.field(default=0.95, validator=confidence_level)


LOGIT_SCALE_FACTS = ("logit_scale_at_grok", "seed_mean_logit_scale_at_grok")


def logit_scale_fact(records: Sequence[RunRecord], setting: str) -> str | None:
    if setting != "auto":
        return setting
    return next((fact for fact in LOGIT_SCALE_FACTS if any(fact in r.facts for r in records)), None)


def cell_logit_scale_and_delay(seeds: Sequence[tuple[int | None, float | None]]) -> tuple[float, float] | None:
    """(median L at grok, median T_grok) over the grokked seeds that have an L; None if there are none."""
    grokked = [(t, scale) for t, scale in seeds if t is not None and scale is not None]
    if not grokked:
        return None
    return float(np.median([scale for _, scale in grokked])), float(np.median([t for t, _ in grokked]))


def _recovery(baseline, raised_by_temperature, baseline_temperature) -> dict[str, float] | None:
    """R and its parts from (L, T) of the baseline and of the raised arms (temperature -> (L, T))."""
    if baseline is None or baseline_temperature not in raised_by_temperature:
        return None
    arms = [value for value in raised_by_temperature.values() if value is not None]
    raised = raised_by_temperature[baseline_temperature]
    matched = matched_delay(baseline[0], [l for l, _ in arms], [t for _, t in arms])
    if raised is None or matched is None or raised[1] == baseline[1]:
        return None
    return {"baseline_logit_scale": baseline[0], "baseline_t_grok": baseline[1], "raised_logit_scale": raised[0],
            "raised_t_grok": raised[1], "matched_t_grok": matched,
            "recovery_fraction": recovery_fraction(raised[1], matched, baseline[1])}


def logit_mediation_analyzer(config: LogitMediationConfig):
    def analyze(records: Sequence[RunRecord]) -> Analysis:
        chosen = select(records, config.stages, config.within)
        fact = logit_scale_fact(chosen, config.logit_scale)
        if fact is None:
            return Analysis("logit_mediation", [], {"groups": []},
                            ["no run has a logit scale at grok: add the logit_scale observable "
                             "([evaluation] observables = [\"logit_scale\"])"])
        groups: dict[tuple, dict[tuple[float, float], dict[int, tuple]]] = defaultdict(lambda: defaultdict(dict))
        for record in chosen:
            norm, temperature = record_value(record, config.norm_key), record_value(record, config.temperature_key)
            if isinstance(norm, (int, float)) and isinstance(temperature, (int, float)):
                key = tuple(record_value(record, k) for k in config.group_by)
                groups[key][(round(float(norm), 9), round(float(temperature), 9))][record.seed] = (
                    record.t_grok, record.facts.get(fact))
        recovery_rows, collapse_rows, numbers, notes = [], [], [], []
        for key in sorted(groups, key=value_order):
            label, cells = group_label(config.group_by, key), groups[key]
            kept = {c: seeds for c, seeds in cells.items()
                    if sum(t is not None and s is not None for t, s in seeds.values()) >= config.min_grokked}
            for cell in sorted(set(cells) - set(kept)):
                notes.append(f"{label}: left out {config.norm_key}={cell[0]}, {config.temperature_key}={cell[1]}: "
                             f"fewer than {config.min_grokked} grokked seeds with a logit scale")
            entry: dict[str, Any] = {"group": dict(zip(config.group_by, key)), "label": label,
                                     "logit_scale_fact": fact}
            summary = {c: cell_logit_scale_and_delay(list(seeds.values())) for c, seeds in kept.items()}
            temperatures_per_norm = defaultdict(set)
            for norm, temperature in kept:
                temperatures_per_norm[norm].add(temperature)
            raised_norm = config.raised_norm if config.raised_norm is not None else max(
                (n for n, ts in temperatures_per_norm.items() if len(ts) >= 2), default=None)
            baseline_cell = (round(config.baseline_norm, 9), round(config.baseline_temperature, 9))
            raised_cells = [c for c in kept if raised_norm is not None and math.isclose(c[0], raised_norm)]
            result = _recovery(summary.get(baseline_cell), {c[1]: summary[c] for c in raised_cells},
                               baseline_cell[1])
            if result is not None:
                used = [baseline_cell, *raised_cells]
                seeds = sorted(set.intersection(*[set(kept[c]) for c in used]))
                rng = np.random.default_rng(0)
                replicates, failed = [], 0
                for _ in range(config.resamples):
                    draw = rng.choice(seeds, len(seeds))
                    again = {c: cell_logit_scale_and_delay([kept[c][s] for s in draw]) for c in used}
                    value = _recovery(again[baseline_cell], {c[1]: again[c] for c in raised_cells}, baseline_cell[1])
                    if value is None:
                        failed += 1
                    else:
                        replicates.append(value["recovery_fraction"])
                low, high = percentile_interval(replicates, config.confidence) if replicates else (None, None)
                result |= {"raised_norm": raised_norm, "ci": [low, high], "paired_seeds": len(seeds),
                           "failed_resamples": failed}
                if failed:
                    notes.append(f"{label}: {failed}/{config.resamples} bootstrap draws could not match L_base")
                recovery_rows.append([label, result["baseline_t_grok"], result["raised_t_grok"],
                                      result["matched_t_grok"], result["baseline_logit_scale"],
                                      result["recovery_fraction"], low, high])
            elif raised_norm is not None:
                notes.append(f"{label}: no recovery fraction (needs the baseline cell, the raised arm at the "
                             f"baseline temperature, and L_base inside the raised arms' range of L)")
            entry["recovery"] = result
            entry["cells"] = [{"norm": norm, "temperature": temperature, "logit_scale": scale, "t_grok": t_grok}
                              for (norm, temperature), (scale, t_grok) in sorted(summary.items())]
            if len(summary) >= 3:
                norms = [c[0] for c in summary]
                scales = [summary[c][0] for c in summary]
                log_delays = [math.log(summary[c][1]) for c in summary]
                collapse = {"cells": len(summary), "r_squared_logit_scale": r_squared(log_delays, scales),
                            "r_squared_norm": r_squared(log_delays, norms),
                            "r_squared_both": r_squared(log_delays, scales, norms)}
                collapse["added_by_norm"] = collapse["r_squared_both"] - collapse["r_squared_logit_scale"]
                entry["collapse"] = collapse
                collapse_rows.append([label, collapse["cells"], collapse["r_squared_logit_scale"],
                                      collapse["r_squared_norm"], collapse["r_squared_both"],
                                      collapse["added_by_norm"]])
            numbers.append(entry)
        level = f"{config.confidence:.0%}"
        tables = [Table("recovery of the norm-induced delay at matched logit scale: "
                        "R = (T_raised - T*) / (T_raised - T_base)",
                        ["group", "T_base", "T_raised", "T* (L = L_base)", "L_base", "R", f"{level} CI low", "high"],
                        recovery_rows),
                  Table(f"logit-scale collapse: R^2 of ln(median T_grok) on L, on {config.norm_key}, on both",
                        ["group", "cells", "R^2 (L)", f"R^2 ({config.norm_key})", "R^2 (both)", "added by norm"],
                        collapse_rows)]
        return Analysis("logit_mediation", tables, {"logit_scale_fact": fact, "groups": numbers}, notes)
    return analyze


# ---------------------------------------------------------------------------------------------------
# The report section: the logit-scale collapse.


@attrs.frozen
class CollapsePoint:
    """One cell of a ``logit_mediation`` group (its ``cells``): median logit scale at grok, median
    T_grok, its norm and temperature."""

    group: str
    logit_scale: float
    t_grok: float
    norm: float
    temperature: float


@styled
def logit_collapse_figure(points: Sequence[CollapsePoint], norm_key: str = RHO) -> Figure:
    """T_grok (log y) against the logit scale L at grok, one colour per group and one marker per norm
    value, with each group's OLS line of ln T on L."""
    from matplotlib.lines import Line2D

    groups = list(dict.fromkeys(pt.group for pt in points))
    norms = sorted({pt.norm for pt in points})
    markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
    figure = new_figure(7.5, 5.2)
    axes = figure.subplots()
    for group, colour in zip(groups, palette(len(groups), False) if len(groups) > 1 else ["tab:blue"]):
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
    plain_log_ticks(axes.yaxis)
    axes.set_xlabel(r"effective logit scale $L$ at $T_\mathrm{grok}$ (mean $\|$logits$/\tau\|_2$)")
    axes.set_ylabel(T_GROK_LABEL)
    axes.set_title(r"Logit-scale collapse: median $T_\mathrm{grok}$ against $L$ (cells: norm x temperature)")
    figure.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False)
    return figure


def logit_mediation_report_config(records: Sequence[RunRecord]) -> LogitMediationConfig | None:
    """The defaults when runs carry a logit scale at grok and the temperature varies; else None (the
    report has no mediation section unless the experiment file asks for one)."""
    has_scale = any(fact in r.facts for r in records for fact in LOGIT_SCALE_FACTS)
    temperatures = {record_value(r, "loss.temperature") for r in records}
    return LogitMediationConfig() if has_scale and len(temperatures) > 1 else None


def logit_mediation_section(config: LogitMediationConfig, analysis: Analysis,
                            context: ReportContext) -> ReportSection:
    """The recovery and collapse tables and ln T_grok against the logit scale at grok, every cell."""
    section = ReportSection("Logit-scale mediation")
    section.analysis(analysis)
    points = [CollapsePoint(group["label"], cell["logit_scale"], cell["t_grok"], cell["norm"], cell["temperature"])
              for group in analysis.numbers["groups"] for cell in group.get("cells", [])]
    if not points:
        section.leave_out("logit-scale collapse", "no cell has a logit scale at grok and enough grokked seeds")
        return section
    section.figure("logit_scale_collapse", logit_collapse_figure(points, config.norm_key),
                   "ln T_grok against the effective logit scale at grok: cells of every norm and temperature "
                   "fall on one line when the norm acts through the logit scale")
    return section


ANALYZERS = [
    gnorm.Analyzer(name="logit_mediation",
                   summary="delay recovered at matched logit scale (paired bootstrap) and ln T vs L collapse",
                   config_class=LogitMediationConfig, factory=logit_mediation_analyzer,
                   report=logit_mediation_section, report_config=logit_mediation_report_config),
]
