"""Built-in analyzers: the critical norm Wc per cell, the delay law ln T_grok = a + alpha * x per group,
one exponent shared across groups, and the levers (how many times slower or faster grokking gets
between the ends of a sweep).

Conventions shared by all of them (those of papers A and B):

* A cell's delay is the median T_grok over its grokked seeds; censored seeds (no grok within the
  budget) are counted and reported, never imputed.
* Cells with fewer than ``min_grokked`` grokked seeds are dropped from fits and named in the notes.
* ``stages`` keeps only those stages; ``within = {"controller.rho" = [0.85, 1.15]}`` keeps only runs
  whose value of each dotted key lies in the closed interval (the papers' fits use rho 0.85-1.15).
* Keys are dotted config keys (``controller.rho``, ``task.p``, ``optimizer.lr``), ``facts.<name>``
  for what a controller recorded, or ``held_norm``: the norm a clamp holds, rho * Wc (the recorded
  ``facts.held_norm``, else ``controller.rho * critical_norm``).
* Bootstrap CIs resample seeds with replacement within each cell, censored seeds included (a
  resample's cell delay is the median over the grokked seeds it drew; a replicate in which some cell
  drew no grokked seed is discarded and counted). The interval is the percentile interval. On the
  papers' data this gives 7.45-7.80 for the dense-sweep alpha (paper: 7.47-7.81) and 7.15-7.70 for
  the shared alpha (paper: 7.16-7.69); the papers' asymmetric shared CI rules out a normal interval.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import defaultdict
from typing import Any, Sequence

import attrs
import numpy as np

import gnorm
from gnorm.components import Analysis, RunRecord, Table
from gnorm.config import dotted_value, naming
from gnorm.science import (
    coefficient_of_variation,
    compare_laws,
    contraction_time,
    critical_norm,
    delay_law_fit,
    held_norm,
    matched_delay,
    ols_line,
    origin_fit,
    ols_slopes,
    percentile_interval,
    r_squared,
    recovery_fraction,
    shared_slope_design,
    shared_slope_fit,
)
from gnorm.tables import cell_label


def record_value(record: RunRecord, key: str) -> Any:
    """A run's value of ``key``: ``facts.<name>``, ``held_norm`` (rho * Wc) or a dotted config key."""
    if key.startswith("facts."):
        return record.facts.get(key[len("facts."):])
    if key == "held_norm":
        if record.facts.get("held_norm") is not None:
            return record.facts["held_norm"]
        rho, wc = dotted_value(record.config, "controller.rho"), record.facts.get("critical_norm")
        wc = wc if wc is not None else record.config.get("critical_norm")
        return held_norm(rho, wc) if isinstance(rho, (int, float)) and isinstance(wc, (int, float)) else None
    return dotted_value(record.config, key)


def select(records: Sequence[RunRecord], stages: Sequence[str], within: dict[str, list[float]]) -> list[RunRecord]:
    """The records in ``stages`` (all if empty) whose value of every key in ``within`` lies in its
    closed interval [low, high] (a relative tolerance of 1e-9 absorbs float32 rounding)."""
    kept = []
    for record in records:
        if stages and record.stage not in stages:
            continue
        inside = True
        for key, (low, high) in within.items():
            value = record_value(record, key)
            slack = 1e-9 * max(abs(low), abs(high), 1.0)
            if not isinstance(value, (int, float)) or not low - slack <= value <= high + slack:
                inside = False
                break
        if inside:
            kept.append(record)
    return kept


def _intervals(instance, attribute, value: dict[str, list[float]]) -> None:
    for key, interval in value.items():
        if len(interval) != 2 or interval[0] > interval[1]:
            raise ValueError(f"{key!r} must be [low, high] with low <= high, found {interval}")


def _at_least(low: int):
    """Validator: an integer option of at least ``low``."""
    def check(instance, attribute, value) -> None:
        if value < low:
            raise ValueError(f"'{attribute.name}' must be at least {low}, found {value}")
    return check


def _resample_count(instance, attribute, value) -> None:
    if not 1 <= value <= MAX_RESAMPLES:
        raise ValueError(f"'{attribute.name}' must be from 1 to {MAX_RESAMPLES}, found {value}")


def _confidence_level(instance, attribute, value) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"'{attribute.name}' must be a level between 0 and 1 (e.g. 0.95), found {value}")


def _positive_number(instance, attribute, value) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"'{attribute.name}' must be positive, found {value}")


def _not_empty(instance, attribute, value) -> None:
    if not value:
        raise ValueError(f"'{attribute.name}' must not be empty")


#: The most bootstrap resamples an analyzer may draw.
MAX_RESAMPLES = 1_000_000
#: Field metadata: the option names stages of the file, or run keys (checked when the file is read).
STAGES = naming("stage")
KEYS = naming("key")


def _cells(records: Sequence[RunRecord]) -> dict[tuple[str, str], list[RunRecord]]:
    cells: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    for record in records:
        cells[(record.stage, cell_label(record.cell))].append(record)
    return cells


def _sort_key(values: tuple) -> tuple:
    """Numbers in numeric order, before anything else in text order."""
    return tuple((0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)) for v in values)


def _group_label(keys: Sequence[str], values: Sequence[Any]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in zip(keys, values)) or "(all)"


def median_t_grok(times: Sequence[int | None]) -> float | None:
    """A cell's delay: the median T_grok over its grokked seeds (None entries are censored)."""
    grokked = [t for t in times if t is not None]
    return float(np.median(grokked)) if grokked else None


def bootstrap_median_interval(values: Sequence[float], resamples: int, level: float,
                              seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the median over ``resamples`` resamples of ``values`` with replacement."""
    values = np.asarray(values, float)
    rng = np.random.default_rng(seed)
    medians = np.median(values[rng.integers(0, values.size, (resamples, values.size))], axis=1)
    return percentile_interval(medians, level)


def bootstrap_cell_medians(cells: Sequence[Sequence[int | None]], resamples: int, seed: int = 0) -> np.ndarray:
    """medians[c, b] = median T_grok over the grokked seeds among n_c seeds drawn with replacement from
    all n_c seeds of cell c (censored ones included); NaN where a draw holds no grokked seed."""
    rng = np.random.default_rng(seed)
    medians = np.empty((len(cells), resamples))
    for c, times in enumerate(cells):
        values = np.array([np.nan if t is None else t for t in times], float)
        draws = values[rng.integers(0, values.size, (resamples, values.size))]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-censored draws: NaN, counted by the caller
            medians[c] = np.nanmedian(draws, axis=1)
    return medians


# ---------------------------------------------------------------------------------------------------
# Wc per cell.


@attrs.frozen
class CriticalNormConfig:
    """``stages``: the stages to read (default: those whose controller is ``free``); ``within``: closed
    intervals the runs' values must lie in (as for ``delay_law``). ``norm``: ``total``
    (||W|| at T_grok) or a weight-norm group (that group's norm at T_grok, ``facts.norm_at_grok/<group>``).
    ``across``: cell keys (e.g. ``task.train_fraction``) over which the spread of Wc is reported.
    ``power_law_in``: the key Wc is fitted against as a power law (default p)."""

    stages: list[str] = attrs.field(factory=list, metadata=STAGES)
    within: dict[str, list[float]] = attrs.field(factory=dict, validator=_intervals, metadata=KEYS)
    norm: str = attrs.field(default="total", validator=_not_empty)
    across: list[str] = attrs.field(factory=list, metadata=KEYS)
    power_law_in: str = attrs.field(default="task.p", validator=_not_empty, metadata=KEYS)
    resamples: int = attrs.field(default=2000, validator=_resample_count)
    confidence: float = attrs.field(default=0.95, validator=_confidence_level)


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
            members = sorted(members, key=lambda c: _sort_key((c["cell"][key],)))
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
        for (stage, label), cell in _cells(chosen).items():
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
                     "median_t_grok": median_t_grok([r.t_grok for r in cell]),
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
# The delay law, per group.


@attrs.frozen
class DelayLawConfig:
    """Fit ln(median T_grok over grokked seeds) = intercept + alpha * x per group.

    ``x``: a dotted config key (default the clamp's rho), ``facts.<name>``, or ``held_norm`` (rho * Wc,
    the absolute norm held: paper B's dose slopes). ``group_by``: keys that split the runs into groups
    with one fit each (e.g. ``["task.p"]``). ``within``: closed intervals that runs must lie in.
    Cells with fewer than ``min_grokked`` grokked seeds are dropped and reported; a group needs
    ``min_cells`` cells left (a line through two points has no R^2). The CI resamples seeds within
    each cell, censored ones included (see the module docstring).
    """

    x: str = attrs.field(default="controller.rho", validator=_not_empty, metadata=KEYS)
    group_by: list[str] = attrs.field(factory=list, metadata=KEYS)
    stages: list[str] = attrs.field(factory=list, metadata=STAGES)
    within: dict[str, list[float]] = attrs.field(factory=dict, validator=_intervals, metadata=KEYS)
    min_grokked: int = attrs.field(default=3, validator=_at_least(1))
    min_cells: int = attrs.field(default=3, validator=_at_least(2))
    resamples: int = attrs.field(default=2000, validator=_resample_count)
    confidence: float = attrs.field(default=0.95, validator=_confidence_level)
    seed: int = attrs.field(default=0, validator=_at_least(0))


def fit_delay_law(cells: dict[float, list[int | None]], min_grokked: int, resamples: int, level: float,
                  seed: int = 0, min_cells: int = 3) -> dict[str, Any]:
    """The delay law over the cells with >= min_grokked grokked seeds: OLS of ln(median T_grok) on x,
    alpha = slope, R^2 = 1 - SSE/SST, and a bootstrap percentile CI of alpha."""
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
    medians = [median_t_grok(t) for t in kept.values()]
    fit = delay_law_fit(xs, medians)
    replicates = bootstrap_cell_medians(list(kept.values()), resamples, seed)
    usable = ~np.isnan(replicates).any(axis=0)
    alphas = ols_slopes(xs, np.log(replicates[:, usable]))
    low, high = percentile_interval(alphas, level) if alphas.size else (None, None)
    return result | {"alpha": fit.slope, "intercept": fit.intercept, "r_squared": fit.r_squared,
                     "alpha_ci": [low, high], "bootstrap_discarded": int((~usable).sum()),
                     "median_t_grok": dict(zip(kept, medians))}


def _grouped_cells(records: Sequence[RunRecord], x_key: str, group_by: Sequence[str]):
    """groups[key][x] -> T_grok of every seed; also which distinct cells each (group, x) pooled."""
    groups: dict[tuple, dict[float, list[int | None]]] = defaultdict(lambda: defaultdict(list))
    pooled: dict[tuple, dict[float, set[str]]] = defaultdict(lambda: defaultdict(set))
    for record in records:
        x = record_value(record, x_key)
        if not isinstance(x, (int, float)):
            continue
        key = tuple(record_value(record, k) for k in group_by)
        x = round(float(x), 9)
        groups[key][x].append(record.t_grok)
        pooled[key][x].add(f"{record.stage}: {cell_label(record.cell)}")
    return groups, pooled


def _pooling_notes(label: str, x_key: str, pooled: dict[float, set[str]]) -> list[str]:
    return [f"{label}: {x_key}={x} pools {len(cells)} cells ({'; '.join(sorted(cells))}); add a group_by key"
            for x, cells in pooled.items() if len(cells) > 1]


def delay_law_analyzer(config: DelayLawConfig):
    def analyze(records: Sequence[RunRecord]) -> Analysis:
        chosen = select(records, config.stages, config.within)
        groups, pooled = _grouped_cells(chosen, config.x, config.group_by)
        rows, numbers, notes = [], [], []
        for key in sorted(groups, key=_sort_key):
            cells = groups[key]
            fit = fit_delay_law(cells, config.min_grokked, config.resamples, config.confidence, config.seed,
                                config.min_cells)
            label = _group_label(config.group_by, key)
            numbers.append({"group": dict(zip(config.group_by, key)), "label": label} | fit)
            notes += _pooling_notes(label, config.x, pooled[key])
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
        level = f"{config.confidence:.0%}"
        table = Table(f"delay law: ln(median T_grok) = intercept + alpha * {config.x}",
                      ["group", "cells", "alpha", f"{level} CI low", "high", "R^2", "censored seeds"], rows)
        return Analysis("delay_law", [table], {"x": config.x, "groups": numbers}, notes)
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
                        resamples: int, level: float, seed: int = 0) -> dict[str, Any]:
    """Shared-slope OLS of ln(median T_grok) on x with per-group intercepts over the usable cells
    (>= min_grokked grokked seeds) of the groups with >= min_cells of them; bootstrap percentile CI
    of the shared alpha (seeds resampled within each cell, censored included)."""
    xs, times, labels, dropped_groups, separate_sse, separate_alpha, used = [], [], [], {}, 0.0, {}, {}
    for group, cells in sorted(groups.items(), key=lambda item: _sort_key(item[0])):
        kept = {x: t for x, t in sorted(cells.items()) if sum(v is not None for v in t) >= min_grokked}
        if len(kept) < max(min_cells, 2):
            dropped_groups[group] = len(kept)
            continue
        fit = delay_law_fit(list(kept), [median_t_grok(t) for t in kept.values()])
        separate_alpha[group] = fit.slope
        used[group] = len(kept)
        y = np.log([median_t_grok(t) for t in kept.values()])
        separate_sse += float(np.sum((y - (fit.intercept + fit.slope * np.array(list(kept)))) ** 2))
        for x, t in kept.items():
            xs.append(x)
            times.append(t)
            labels.append(group)
    result: dict[str, Any] = {"groups_used": list(separate_alpha), "groups_dropped": dropped_groups,
                              "separate_alpha": separate_alpha, "cells_per_group": used}
    if len(separate_alpha) < 1:
        return result | {"alpha": None}
    y = np.log([median_t_grok(t) for t in times])
    fit = shared_slope_fit(xs, y, labels)
    design, _ = shared_slope_design(xs, labels)
    replicates = bootstrap_cell_medians(times, resamples, seed)
    usable = ~np.isnan(replicates).any(axis=0)
    alphas = (np.linalg.pinv(design) @ np.log(replicates[:, usable]))[0]
    low, high = percentile_interval(alphas, level) if alphas.size else (None, None)
    n, count = len(y), len(separate_alpha)
    residual_df = n - 2 * count
    f_statistic = (((fit.sse - separate_sse) / (count - 1)) / (separate_sse / residual_df)
                   if count > 1 and residual_df > 0 and separate_sse > 0 else None)
    return result | {"alpha": fit.slope, "alpha_ci": [low, high], "r_squared": fit.r_squared,
                     "within_r_squared": fit.within_r_squared, "intercepts": dict(zip(fit.groups, fit.intercepts)),
                     "sse_shared": fit.sse, "sse_separate": separate_sse, "f_statistic": f_statistic,
                     "f_df": [count - 1, residual_df], "cells": n, "bootstrap_discarded": int((~usable).sum())}


def shared_exponent_analyzer(config: SharedExponentConfig):
    def analyze(records: Sequence[RunRecord]) -> Analysis:
        chosen = select(records, config.stages, config.within)
        groups, pooled = _grouped_cells(chosen, config.x, config.group_by)
        fit = fit_shared_exponent(groups, config.min_grokked, config.min_cells, config.resamples,
                                  config.confidence, config.seed)
        notes = [note for key in groups for note in _pooling_notes(_group_label(config.group_by, key), config.x,
                                                                   pooled[key])]
        for group, usable in fit["groups_dropped"].items():
            notes.append(f"{_group_label(config.group_by, group)}: left out, {usable} cells with "
                         f">= {config.min_grokked} grokked seeds (need {config.min_cells})")
        for group, cells in groups.items():
            for x, times in sorted(cells.items()):
                grokked = sum(t is not None for t in times)
                if grokked < config.min_grokked:
                    notes.append(f"{_group_label(config.group_by, group)}: dropped {config.x}={x} "
                                 f"({grokked}/{len(times)} seeds grokked)")
        level = f"{config.confidence:.0%}"
        low, high = fit.get("alpha_ci", (None, None))
        rows = [["shared", fit.get("cells"), fit["alpha"], low, high, fit.get("r_squared"), fit.get("sse_shared")]]
        rows += [[f"separate: {_group_label(config.group_by, g)}", fit["cells_per_group"][g], a, None, None, None, None]
                 for g, a in fit["separate_alpha"].items()]
        if fit["alpha"] is not None:
            rows.append(["separate fits", fit["cells"], None, None, None, None, fit["sse_separate"]])
        table = Table(f"shared exponent: ln(median T_grok) = intercept[{', '.join(config.group_by)}] + alpha * "
                      f"{config.x}", ["fit", "cells", "alpha", f"{level} CI low", "high", "R^2", "SSE"], rows)
        numbers = fit | {"groups_used": [dict(zip(config.group_by, g)) for g in fit["groups_used"]],
                         "separate_alpha": [{"group": dict(zip(config.group_by, g)), "alpha": a}
                                            for g, a in fit["separate_alpha"].items()],
                         "intercepts": [{"group": dict(zip(config.group_by, g)), "intercept": c}
                                        for g, c in fit.get("intercepts", {}).items()],
                         "cells_per_group": [{"group": dict(zip(config.group_by, g)), "cells": c}
                                             for g, c in fit["cells_per_group"].items()],
                         "groups_dropped": [{"group": dict(zip(config.group_by, g)), "usable_cells": c}
                                            for g, c in fit["groups_dropped"].items()]}
        return Analysis("shared_exponent", [table], numbers | {"x": config.x}, notes)
    return analyze


# ---------------------------------------------------------------------------------------------------
# Levers: how much the delay moves between the ends of a sweep.


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

    x: str = attrs.field(default="controller.rho", validator=_not_empty, metadata=KEYS)
    across: str = attrs.field(default="optimizer.lr", metadata=KEYS)
    stages: list[str] = attrs.field(factory=list, metadata=STAGES)
    within: dict[str, list[float]] = attrs.field(factory=dict, validator=_intervals, metadata=KEYS)
    reference: dict[str, float] = attrs.field(factory=dict, metadata=KEYS)
    delay_from: str = attrs.field(default="", metadata=KEYS)
    min_grokked: int = attrs.field(default=3, validator=_at_least(1))


def delay_ratio(slow: float, fast: float) -> dict[str, float]:
    """ratio = slow / fast and the lever = max(ratio, 1 / ratio), the fold change between two delays."""
    ratio = slow / fast
    return {"ratio": ratio, "lever": max(ratio, 1.0 / ratio)}


def _nearest(values: Sequence[float], wanted: float) -> float | None:
    close = [v for v in values if math.isclose(v, wanted, rel_tol=1e-6)]
    return close[0] if close else None


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
            delays[(x, a)] = median_t_grok(times)
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
# Which delay law: exponential, power law with offset, or saddle-node (paper B, Table 1).


@attrs.frozen
class LawComparisonConfig:
    """Fit three laws to the cell delays (median T_grok over grokked seeds) of each group and compare
    them by AIC = n ln(SSE / n) + 2k on the ln T residuals (AICc alongside):

    * exponential      T = exp(a + b x)                       (k = 2, OLS of ln T on x)
    * power_offset     T = A (x - x0)^k, x0 < min(x)          (k = 3, x0 by 1-D search)
    * saddle_node      T = A / sqrt(x_c - x) + B, x_c > max(x) (k = 3, x_c by 1-D search)

    ``x``: ``held_norm`` (default; paper B's dose law is in the absolute norm rho * Wc) or any key as for
    ``delay_law``; ``group_by`` default ``task.p``. Cells with fewer than ``min_grokked`` grokked seeds
    are dropped and reported; a group needs ``min_cells`` cells (three-parameter laws need n > 4 for
    AICc). A search that ended at the edge of its range is reported (the power law is degenerating
    into the exponential, or the saddle-node into a line).
    """

    x: str = attrs.field(default="held_norm", validator=_not_empty, metadata=KEYS)
    group_by: list[str] = attrs.field(factory=lambda: ["task.p"], metadata=KEYS)
    stages: list[str] = attrs.field(factory=list, metadata=STAGES)
    within: dict[str, list[float]] = attrs.field(factory=dict, validator=_intervals, metadata=KEYS)
    min_grokked: int = attrs.field(default=3, validator=_at_least(1))
    min_cells: int = attrs.field(default=5, validator=_at_least(2))


LAWS = ("exponential", "power_offset", "saddle_node")


def law_comparison_analyzer(config: LawComparisonConfig):
    def analyze(records: Sequence[RunRecord]) -> Analysis:
        chosen = select(records, config.stages, config.within)
        groups, pooled = _grouped_cells(chosen, config.x, config.group_by)
        rows, numbers, notes = [], [], []
        for key in sorted(groups, key=_sort_key):
            label = _group_label(config.group_by, key)
            notes += _pooling_notes(label, config.x, pooled[key])
            cells = dict(sorted(groups[key].items()))
            grokked = {x: sum(t is not None for t in times) for x, times in cells.items()}
            for x, g in grokked.items():
                if g < config.min_grokked:
                    notes.append(f"{label}: dropped {config.x}={x} ({g}/{len(cells[x])} seeds grokked "
                                 f"< {config.min_grokked})")
            kept = {x: median_t_grok(t) for x, t in cells.items() if grokked[x] >= config.min_grokked}
            entry: dict[str, Any] = {"group": dict(zip(config.group_by, key)), "label": label,
                                     "cells_used": list(kept), "median_t_grok": kept,
                                     "censored": {x: len(t) - grokked[x] for x, t in cells.items()}}
            if len(kept) < max(config.min_cells, 4):
                notes.append(f"{label}: no comparison, {len(kept)} cells with >= {config.min_grokked} grokked "
                             f"seeds (need {max(config.min_cells, 4)})")
                numbers.append(entry | {"winner": None, "laws": {}})
                rows.append([label, len(kept)] + [None] * (2 * len(LAWS) + 1))
                continue
            comparison = compare_laws(list(kept), list(kept.values()))
            for law, fit in comparison["laws"].items():
                if fit["at_search_edge"]:
                    notes.append(f"{label}: {law} search ended at the edge of its range (degenerate fit)")
            numbers.append(entry | comparison)
            laws = comparison["laws"]
            rows.append([label, len(kept)] + [laws[law]["aic"] for law in LAWS]
                        + [laws[law]["delta_aic"] for law in LAWS] + [comparison["winner"]])
        table = Table(f"delay laws in {config.x} compared by AIC on ln(median T_grok)",
                      ["group", "cells"] + [f"AIC {law}" for law in LAWS] + [f"dAIC {law}" for law in LAWS]
                      + ["winner"], rows)
        return Analysis("law_comparison", [table], {"x": config.x, "groups": numbers}, notes)
    return analyze


# ---------------------------------------------------------------------------------------------------
# Free contraction (theory T): T_grok - T_mem = ln(V_mem / V*) / (2 kappa lr lambda), V = ||W||^2.


@attrs.frozen
class FreeContractionConfig:
    """The norm-separation theory's free-decay law: under free training with decoupled weight decay
    lambda at learning rate lr, V = ||W||^2 contracts from V_mem to V* (the norm at grok) in
    T_grok - T_mem = ln(V_mem / V*) / (2 kappa lr lambda). Per setup (``group_by``, default p, lr and
    lambda) kappa is fitted by least squares through the origin of the delay T_grok - T_mem on
    ln(V_mem / V*) / (2 lr lambda): slope = 1 / kappa.

    ``v_mem``: ``"at_memorization"`` (V_mem = ||W||^2 at T_mem, ``facts.norm_at_memorization``) or
    ``"peak"`` (max ||W||^2 up to T_grok, ``facts.peak_norm``). V* = ``norm_at_grok``^2. Runs read are
    those whose controller is ``free`` (or ``stages``). A run is skipped, and counted, when censored,
    without T_mem, without the needed norm fact, or with V_mem <= V* (nothing to contract).
    ``gnorm.science.contraction_norms`` computes both facts from a stored trajectory. Besides one
    fit per setup, one pooled fit over the usable runs of all setups (one kappa) is reported: within a
    setup lr * lambda is fixed and only seed-to-seed spread is left to explain, so the pooled fit is
    where the 1 / (lr lambda) scaling is tested.
    """

    v_mem: str = attrs.field(default="at_memorization",
                             validator=attrs.validators.in_(("at_memorization", "peak")))
    group_by: list[str] = attrs.field(factory=lambda: ["task.p", "optimizer.lr", "optimizer.weight_decay"], metadata=KEYS)
    stages: list[str] = attrs.field(factory=list, metadata=STAGES)
    within: dict[str, list[float]] = attrs.field(factory=dict, validator=_intervals, metadata=KEYS)
    min_runs: int = attrs.field(default=3, validator=_at_least(1))


V_MEM_FACT = {"at_memorization": "norm_at_memorization", "peak": "peak_norm"}


def free_contraction_analyzer(config: FreeContractionConfig):
    fact = V_MEM_FACT[config.v_mem]

    def analyze(records: Sequence[RunRecord]) -> Analysis:
        chosen = [r for r in select(records, config.stages, config.within)
                  if config.stages or r.config["controller"]["name"] == "free"]
        groups: dict[tuple, list[RunRecord]] = defaultdict(list)
        for record in chosen:
            groups[tuple(record_value(record, k) for k in config.group_by)].append(record)
        rows, numbers, notes, all_delays, all_scaled = [], [], [], [], []
        for key in sorted(groups, key=_sort_key):
            label = _group_label(config.group_by, key)
            skipped = {"censored": 0, "no_t_mem": 0, "no_norm_fact": 0, "no_contraction": 0}
            delays, scaled_logs = [], []
            for record in groups[key]:
                lr = dotted_value(record.config, "optimizer.lr")
                decay = dotted_value(record.config, "optimizer.weight_decay")
                norm_mem = record.facts.get(fact)
                if record.censored or record.norm_at_grok is None:
                    skipped["censored"] += 1
                elif record.t_mem is None:
                    skipped["no_t_mem"] += 1
                elif norm_mem is None or not lr or not decay:
                    skipped["no_norm_fact"] += 1
                elif norm_mem <= record.norm_at_grok:
                    skipped["no_contraction"] += 1
                else:
                    delays.append(record.t_grok - record.t_mem)
                    scaled_logs.append(contraction_time(norm_mem**2, record.norm_at_grok**2, lr, decay))
            all_delays += delays
            all_scaled += scaled_logs
            entry: dict[str, Any] = {"group": dict(zip(config.group_by, key)), "label": label,
                                     "runs": len(groups[key]), "runs_used": len(delays), "skipped": skipped}
            if skipped["no_norm_fact"]:
                notes.append(f"{label}: {skipped['no_norm_fact']} runs lack facts.{fact} (or lr / weight decay); "
                             f"compute it from the trajectory with gnorm.science.contraction_norms")
            for reason in ("censored", "no_t_mem", "no_contraction"):
                if skipped[reason]:
                    notes.append(f"{label}: skipped {skipped[reason]} runs ({reason.replace('_', ' ')})")
            if len(delays) < max(config.min_runs, 1) or not any(scaled_logs):
                notes.append(f"{label}: no fit, {len(delays)} usable runs (need {config.min_runs})")
                numbers.append(entry | {"kappa": None})
                rows.append([label, len(delays), len(groups[key]), None, None, None])
                continue
            fit = origin_fit(scaled_logs, delays)
            kappa = 1.0 / fit.slope if fit.slope > 0 else None
            if kappa is None:
                notes.append(f"{label}: the delay does not grow with ln(V_mem / V*): slope {fit.slope:.3g}, no kappa")
            numbers.append(entry | {"kappa": kappa, "slope": fit.slope, "r_squared": fit.r_squared,
                                    "correlation": fit.correlation,
                                    "median_delay": float(np.median(delays)),
                                    "median_predicted_delay": float(np.median(np.array(scaled_logs) * fit.slope))})
            rows.append([label, len(delays), len(groups[key]), kappa, fit.r_squared, fit.correlation])
        pooled: dict[str, Any] = {"runs_used": len(all_delays), "kappa": None}
        if len(all_delays) >= max(config.min_runs, 1) and any(all_scaled):
            fit = origin_fit(all_scaled, all_delays)
            pooled |= {"kappa": 1.0 / fit.slope if fit.slope > 0 else None, "slope": fit.slope,
                       "r_squared": fit.r_squared, "correlation": fit.correlation}
            rows.append(["pooled (one kappa)", len(all_delays), len(chosen), pooled["kappa"], fit.r_squared,
                         fit.correlation])
        table = Table(f"free contraction: T_grok - T_mem = ln(V_mem / V*) / (2 kappa lr lambda), V_mem {config.v_mem}",
                      ["group", "runs used", "runs", "kappa", "R^2", "r"], rows)
        return Analysis("free_contraction", [table], {"v_mem": config.v_mem, "v_mem_fact": fact, "groups": numbers,
                                                    "pooled": pooled},
                        notes)
    return analyze


# ---------------------------------------------------------------------------------------------------
# Logit-scale mediation (paper B).


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
    within: dict[str, list[float]] = attrs.field(factory=dict, validator=_intervals, metadata=KEYS)
    group_by: list[str] = attrs.field(factory=lambda: ["task.p", "loss.name"], metadata=KEYS)
    norm_key: str = attrs.field(default="controller.rho", validator=_not_empty, metadata=KEYS)
    temperature_key: str = attrs.field(default="loss.temperature", validator=_not_empty, metadata=KEYS)
    baseline_norm: float = attrs.field(default=1.0, validator=_positive_number)
    baseline_temperature: float = attrs.field(default=1.0, validator=_positive_number)
    raised_norm: float | None = attrs.field(default=None, validator=_positive_number)
    logit_scale: str = attrs.field(default="auto", validator=_not_empty)
    min_grokked: int = attrs.field(default=3, validator=_at_least(1))
    resamples: int = attrs.field(default=2000, validator=_resample_count)
    confidence: float = attrs.field(default=0.95, validator=_confidence_level)


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
        for key in sorted(groups, key=_sort_key):
            label, cells = _group_label(config.group_by, key), groups[key]
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


@gnorm.hookimpl
def gnorm_analyzers() -> list[gnorm.Analyzer]:
    return [
        gnorm.Analyzer(name="critical_norm", summary="Wc per cell: median norm at grok, CI, spread",
                       config_class=CriticalNormConfig, factory=critical_norm_analyzer),
        gnorm.Analyzer(name="delay_law",
                       summary="fit ln T_grok = a + alpha * rho (or the held norm) per group, bootstrap CI",
                       config_class=DelayLawConfig, factory=delay_law_analyzer),
        gnorm.Analyzer(name="shared_exponent", summary="one alpha with per-group intercepts vs separate fits",
                       config_class=SharedExponentConfig, factory=shared_exponent_analyzer),
        gnorm.Analyzer(name="levers", summary="fold change of T_grok across the ends of the rho and lr sweeps",
                       config_class=LeversConfig, factory=levers_analyzer),
        gnorm.Analyzer(name="law_comparison",
                       summary="exponential vs power law with offset vs saddle-node delay law, by AIC",
                       config_class=LawComparisonConfig, factory=law_comparison_analyzer),
        gnorm.Analyzer(name="free_contraction",
                       summary="fit kappa in T_grok - T_mem = ln(V_mem / V*) / (2 kappa lr lambda), free runs",
                       config_class=FreeContractionConfig, factory=free_contraction_analyzer),
        gnorm.Analyzer(name="logit_mediation",
                       summary="delay recovered at matched logit scale (paired bootstrap) and ln T vs L collapse",
                       config_class=LogitMediationConfig, factory=logit_mediation_analyzer),
    ]
