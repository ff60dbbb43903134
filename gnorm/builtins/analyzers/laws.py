"""Which law the delay follows and how a free run contracts to its critical norm: ``law_comparison``
(exponential, power law with offset and saddle-node delay laws compared by AIC, paper B's Table 1)
and ``free_contraction`` (kappa in T_grok - T_mem = ln(V_mem / V*) / (2 kappa lr lambda), theory T).
Their tables appear in a report when the experiment file has an ``[[analysis]]`` table for them."""

from __future__ import annotations

from typing import Any, Sequence

import attrs
import numpy as np

import gnorm
from gnorm.analysis.records import group_label, group_records, pooling_notes, select, t_grok_by_x, value_order
from gnorm.analysis.statistics import median_or_none
from gnorm.builtins.analyzers.options import KEYS, STAGES, at_least, intervals, not_empty
from gnorm.components import Analysis, RunRecord, Table
from gnorm.runmodel import dotted_value
from gnorm.science import compare_laws, contraction_time, origin_fit


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

    x: str = attrs.field(default="held_norm", validator=not_empty, metadata=KEYS)
    group_by: list[str] = attrs.field(factory=lambda: ["task.p"], metadata=KEYS)
    stages: list[str] = attrs.field(factory=list, metadata=STAGES)
    within: dict[str, list[float]] = attrs.field(factory=dict, validator=intervals, metadata=KEYS)
    min_grokked: int = attrs.field(default=3, validator=at_least(1))
    min_cells: int = attrs.field(default=5, validator=at_least(2))


LAWS = ("exponential", "power_offset", "saddle_node")


def law_comparison_analyzer(config: LawComparisonConfig):
    def analyze(records: Sequence[RunRecord]) -> Analysis:
        chosen = select(records, config.stages, config.within)
        groups, pooled = t_grok_by_x(chosen, config.x, config.group_by)
        rows, numbers, notes = [], [], []
        for key in sorted(groups, key=value_order):
            label = group_label(config.group_by, key)
            notes += pooling_notes(label, config.x, pooled[key])
            cells = dict(sorted(groups[key].items()))
            grokked = {x: sum(t is not None for t in times) for x, times in cells.items()}
            for x, g in grokked.items():
                if g < config.min_grokked:
                    notes.append(f"{label}: dropped {config.x}={x} ({g}/{len(cells[x])} seeds grokked "
                                 f"< {config.min_grokked})")
            kept = {x: median_or_none(t) for x, t in cells.items() if grokked[x] >= config.min_grokked}
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
    within: dict[str, list[float]] = attrs.field(factory=dict, validator=intervals, metadata=KEYS)
    min_runs: int = attrs.field(default=3, validator=at_least(1))


V_MEM_FACT = {"at_memorization": "norm_at_memorization", "peak": "peak_norm"}


def free_contraction_analyzer(config: FreeContractionConfig):
    fact = V_MEM_FACT[config.v_mem]

    def analyze(records: Sequence[RunRecord]) -> Analysis:
        chosen = [r for r in select(records, config.stages, config.within)
                  if config.stages or r.config["controller"]["name"] == "free"]
        groups = group_records(chosen, config.group_by)
        rows, numbers, notes, all_delays, all_scaled = [], [], [], [], []
        for key in sorted(groups, key=value_order):
            label = group_label(config.group_by, key)
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


ANALYZERS = [
    gnorm.Analyzer(name="law_comparison",
                   summary="exponential vs power law with offset vs saddle-node delay law, by AIC",
                   config_class=LawComparisonConfig, factory=law_comparison_analyzer),
    gnorm.Analyzer(name="free_contraction",
                   summary="fit kappa in T_grok - T_mem = ln(V_mem / V*) / (2 kappa lr lambda), free runs",
                   config_class=FreeContractionConfig, factory=free_contraction_analyzer),
]
