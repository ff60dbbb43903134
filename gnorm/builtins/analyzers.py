"""Built-in analyzers: the critical norm Wc per cell, and the delay law ln T_grok = a + alpha * rho."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

import attrs
import numpy as np

import gnorm
from gnorm.components import Analysis, RunRecord, Table
from gnorm.science import coefficient_of_variation, critical_norm, delay_law_fit, percentile_interval
from gnorm.tables import cell_label


def _dotted(data: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _cells(records: Sequence[RunRecord]) -> dict[tuple[str, str], list[RunRecord]]:
    cells: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    for record in records:
        cells[(record.stage, cell_label(record.cell))].append(record)
    return cells


def bootstrap_median_interval(values: Sequence[float], resamples: int, level: float, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the median over ``resamples`` resamples of ``values`` with replacement."""
    values = np.asarray(values, float)
    rng = np.random.default_rng(seed)
    medians = np.median(values[rng.integers(0, values.size, (resamples, values.size))], axis=1)
    return percentile_interval(medians, level)


@attrs.frozen
class CriticalNormConfig:
    """``stages``: the stages to read (default: those whose controller is ``free``)."""

    stages: list[str] = attrs.field(factory=list)
    resamples: int = 2000
    confidence: float = 0.95


def critical_norm_analyzer(config: CriticalNormConfig):
    def analyze(records: Sequence[RunRecord]) -> Analysis:
        chosen = [r for r in records if (r.stage in config.stages if config.stages
                                         else r.config["controller"]["name"] == "free")]
        rows, numbers = [], []
        for (stage, label), cell in _cells(chosen).items():
            norms = [r.norm_at_grok for r in cell if not r.censored]
            wc = critical_norm(norms)
            low, high = bootstrap_median_interval(norms, config.resamples, config.confidence) if norms else (None, None)
            entry = {"stage": stage, "cell": cell[0].cell, "seeds": len(cell), "grokked": len(norms),
                     "critical_norm": wc, "mean": float(np.mean(norms)) if norms else None,
                     "cv": coefficient_of_variation(norms) if norms else None, "ci": [low, high],
                     "run_ids": [r.run_id for r in cell]}
            numbers.append(entry)
            rows.append([stage, label, f"{len(norms)}/{len(cell)}", wc, low, high, entry["mean"], entry["cv"]])
        level = f"{config.confidence:.0%}"
        table = Table("critical norm Wc = median ||W|| at T_grok over grokked seeds",
                      ["stage", "cell", "grokked", "Wc", f"{level} CI low", "high", "mean", "CV"], rows)
        return Analysis("critical_norm", [table], {"cells": numbers})
    return analyze


@attrs.frozen
class DelayLawConfig:
    """Fit ln(median T_grok over grokked seeds) = intercept + alpha * x per group, x = ``x`` (a dotted
    config key, default the clamp's rho). Cells with fewer than ``min_grokked`` grokked seeds are dropped
    and reported. The CI resamples the grokked seeds within each cell."""

    x: str = "controller.rho"
    group_by: list[str] = attrs.field(factory=list)
    stages: list[str] = attrs.field(factory=list)
    min_grokked: int = 3
    resamples: int = 2000
    confidence: float = 0.95


def fit_delay_law(cells: dict[float, list[int | None]], min_grokked: int, resamples: int, level: float,
                  seed: int = 0) -> dict[str, Any]:
    """alpha, intercept and R^2 of ln(median T_grok) on x over the cells with >= min_grokked grokked
    seeds, and a bootstrap percentile CI of alpha (grokked seeds resampled within each cell)."""
    kept = {x: [t for t in times if t is not None] for x, times in sorted(cells.items())}
    dropped = {x: len(t) for x, t in kept.items() if len(t) < min_grokked}
    kept = {x: t for x, t in kept.items() if len(t) >= min_grokked}
    result: dict[str, Any] = {"cells_used": sorted(kept), "cells_dropped": dropped,
                              "censored": {x: sum(t is None for t in cells[x]) for x in cells}}
    if len(kept) < 2:
        return result | {"alpha": None, "note": "fewer than two cells with enough grokked seeds"}
    xs = np.array(list(kept), float)
    fit = delay_law_fit(xs, [np.median(t) for t in kept.values()])
    rng = np.random.default_rng(seed)
    alphas = []
    for _ in range(resamples):
        medians = [np.median(rng.choice(np.asarray(t, float), len(t))) for t in kept.values()]
        alphas.append(delay_law_fit(xs, medians).slope)
    low, high = percentile_interval(alphas, level)
    return result | {"alpha": fit.slope, "intercept": fit.intercept, "r_squared": fit.r_squared,
                     "alpha_ci": [low, high], "median_t_grok": {x: float(np.median(t)) for x, t in kept.items()}}


def delay_law_analyzer(config: DelayLawConfig):
    def analyze(records: Sequence[RunRecord]) -> Analysis:
        groups: dict[tuple, dict[float, list[int | None]]] = defaultdict(lambda: defaultdict(list))
        for record in records:
            x = _dotted(record.config, config.x)
            if x is None or (config.stages and record.stage not in config.stages):
                continue
            key = tuple(_dotted(record.config, k) for k in config.group_by)
            groups[key][float(x)].append(record.t_grok)
        rows, numbers, notes = [], [], []
        for key, cells in groups.items():
            fit = fit_delay_law(cells, config.min_grokked, config.resamples, config.confidence)
            label = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in zip(config.group_by, key)) or "(all)"
            numbers.append({"group": dict(zip(config.group_by, key))} | fit)
            for x, grokked in fit["cells_dropped"].items():
                notes.append(f"{label}: dropped {config.x}={x} ({grokked} grokked seeds < {config.min_grokked})")
            low, high = fit.get("alpha_ci", (None, None))
            censored = sum(fit["censored"].values())
            rows.append([label, len(fit["cells_used"]), fit["alpha"], low, high, fit.get("r_squared"), censored])
        level = f"{config.confidence:.0%}"
        table = Table(f"delay law: ln(median T_grok) = intercept + alpha * {config.x}",
                      ["group", "cells", "alpha", f"{level} CI low", "high", "R^2", "censored seeds"], rows)
        return Analysis("delay_law", [table], {"groups": numbers}, notes)
    return analyze


@gnorm.hookimpl
def gnorm_analyzers() -> list[gnorm.Analyzer]:
    return [
        gnorm.Analyzer(name="critical_norm", summary="Wc per cell: median norm at grok, CI, spread",
                       config_class=CriticalNormConfig, factory=critical_norm_analyzer),
        gnorm.Analyzer(name="delay_law", summary="fit ln T_grok = a + alpha * rho with a bootstrap CI",
                       config_class=DelayLawConfig, factory=delay_law_analyzer),
    ]
