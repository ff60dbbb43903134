"""The censoring-aware delay law ``censored_delay_law``: accelerated failure time (AFT) models of every
seed's T_grok on x (rho, or the held norm), right-censored at each seed's budget, and its report
section (each seed drawn, censored ones as such, with the fitted median lines).

The median-of-grokked fit (``delay_law``) drops every cell with fewer than 3 grokked seeds and, where
it keeps a cell with censored seeds, takes the median of the seeds that grokked, which are the faster
ones. Here every run counts: a seed that grokked at step t contributes its density at t, one that did
not grok by its budget contributes the probability of grokking later. The model and its likelihood
are in :mod:`gnorm.analysis.survival`; this module reads the runs into it and reports the fits.

Time axis: the same as ``delay_law``'s: T_grok is the first evaluated step (counted from step 0, also
for a forked run) at which the criterion holds; a censored run is censored at the steps it trained
(``facts.steps_trained`` where recorded and within the budget, else ``RunRecord.budget`` =
``training.max_steps``). T_grok itself is only known to the evaluation grid: the models treat it as
exact.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

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
from gnorm.analysis.statistics import median_or_none
from gnorm.analysis.survival import DISTRIBUTIONS, AftFit, AftModel, SurvivalData, aft_median, fit_aft, profile_interval
from gnorm.builtins.analyzers.options import KEYS, STAGES, at_least, confidence_level, intervals, not_empty
from gnorm.components import Analysis, RunRecord, Table
from gnorm.figures import RHO, T_GROK_LABEL, axis_label, new_figure, palette, plain_log_ticks, styled
from gnorm.reporting import ReportContext, ReportSection, settings_text
from gnorm.science import delay_law_fit, shared_slope_fit

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def distribution_names(instance, attribute, value: list[str]) -> None:
    """Validator: a non-empty list of known error distributions, none twice."""
    unknown = [name for name in value if name not in DISTRIBUTIONS]
    if not value or unknown or len(set(value)) < len(value):
        raise ValueError(f"'{attribute.name}' must list some of {', '.join(DISTRIBUTIONS)} (each once), "
                         f"found {value}")


def quadrature_count(instance, attribute, value: int) -> None:
    """Validator: Gauss-Hermite points from 1 to 100."""
    if not 1 <= value <= 100:
        raise ValueError(f"'{attribute.name}' must be from 1 to 100, found {value}")


@attrs.frozen
class CensoredDelayLawConfig:
    """Fit ln T_grok = intercept[group] + alpha * x + b_seed + sigma * eps to every run, censored
    ones at their budget (see :mod:`gnorm.analysis.survival`), for each error distribution in
    ``distributions`` (``lognormal``, ``weibull``), without and (``seed_effect``) with a normal
    per-seed random intercept b shared by a seed's runs across x (integrated out by adaptive
    Gauss-Hermite quadrature with ``quadrature_points`` nodes). The model with the lowest AIC is
    chosen. ``seed_cluster``: the keys whose values, with the seed number, name one seed's effect
    (default: ``group_by``, a seed's runs across x within a group; ``[]`` shares it across groups,
    e.g. across learning rates when a seed's initialization does not depend on them).

    ``x``, ``stages``, ``within`` as for ``delay_law``; ``group_by``: keys whose groups get their own
    intercept with alpha shared (when several groups are fitted, each group is also fitted alone with
    the chosen model, and the summed AIC of those separate fits is compared with the shared one).
    A group is fitted when it has runs at ``min_cells`` or more x values and ``min_grokked`` or more
    grokked runs; otherwise it is left out, and said so. alpha's interval: Wald (alpha -/+ z se from
    the observed information) for every model, and the profile-likelihood interval for the chosen
    model (``profile``). For comparison the median-of-grokked fit is computed as ``delay_law`` /
    ``shared_exponent`` compute it: cells with at least ``median_min_grokked`` grokked seeds, groups
    with at least 3 such cells.
    """

    x: str = attrs.field(default="controller.rho", validator=not_empty, metadata=KEYS)
    group_by: list[str] = attrs.field(factory=list, metadata=KEYS)
    stages: list[str] = attrs.field(factory=list, metadata=STAGES)
    within: dict[str, list[float]] = attrs.field(factory=dict, validator=intervals, metadata=KEYS)
    distributions: list[str] = attrs.field(factory=lambda: list(DISTRIBUTIONS), validator=distribution_names)
    seed_effect: bool = True
    seed_cluster: list[str] | None = attrs.field(default=None, metadata=KEYS)
    quadrature_points: int = attrs.field(default=24, validator=quadrature_count)
    profile: bool = True
    min_grokked: int = attrs.field(default=3, validator=at_least(1))
    min_cells: int = attrs.field(default=2, validator=at_least(2))
    median_min_grokked: int = attrs.field(default=3, validator=at_least(1))
    confidence: float = attrs.field(default=0.95, validator=confidence_level)


# ---------------------------------------------------------------------------------------------------
# The runs as survival data.


def censoring_time(record: RunRecord) -> int:
    """The step up to which a censored run is known not to have grokked: ``facts.steps_trained`` where
    it is recorded, positive and within the budget, else the budget."""
    trained = record.facts.get("steps_trained")
    if numeric(trained) and 0 < trained <= record.budget:
        return int(trained)
    return int(record.budget)


@attrs.frozen(eq=False)
class SurvivalRuns:
    """The runs a fit reads: per run its group key, x, seed, time (T_grok or the censoring time) and
    whether it grokked; which group keys were fitted and which left out (with the reason)."""

    keys: list[tuple]
    clusters: list[tuple]
    x: list[float]
    seeds: list[int]
    times: list[int]
    grokked: list[bool]
    groups: list[tuple]
    left_out: dict[tuple, str]

    def data(self, only: tuple | None = None) -> SurvivalData:
        """The survival data of every fitted group, or of group ``only``; a seed effect is shared by
        the runs of one seed with the same ``seed_cluster`` values."""
        rows = [i for i, key in enumerate(self.keys) if key in self.groups and (only is None or key == only)]
        return SurvivalData.build([self.times[i] for i in rows], [self.grokked[i] for i in rows],
                                  [self.x[i] for i in rows], [self.groups.index(self.keys[i]) for i in rows],
                                  [(self.clusters[i], self.seeds[i]) for i in rows])


def survival_runs(records: Sequence[RunRecord], config: CensoredDelayLawConfig) -> SurvivalRuns:
    """The selected runs with a numeric x, and the groups with enough of them to fit."""
    keys, clusters, xs, seeds, times, grokked = [], [], [], [], [], []
    cluster_keys = config.group_by if config.seed_cluster is None else config.seed_cluster
    for record in select(records, config.stages, config.within):
        x = record_value(record, config.x)
        time = record.t_grok if record.t_grok is not None else censoring_time(record)
        if not numeric(x) or time is None or time <= 0:
            continue
        keys.append(tuple(record_value(record, k) for k in config.group_by))
        clusters.append(tuple(record_value(record, k) for k in cluster_keys))
        xs.append(round(float(x), 9))
        seeds.append(record.seed)
        times.append(int(time))
        grokked.append(record.t_grok is not None)
    groups, left_out = [], {}
    for key in sorted(set(keys), key=value_order):
        rows = [i for i, k in enumerate(keys) if k == key]
        cells, events = len({xs[i] for i in rows}), sum(grokked[i] for i in rows)
        if cells < config.min_cells:
            left_out[key] = f"runs at {cells} values of {config.x} (need {config.min_cells})"
        elif events < config.min_grokked:
            left_out[key] = f"{events} grokked runs (need {config.min_grokked})"
        else:
            groups.append(key)
    return SurvivalRuns(keys, clusters, xs, seeds, times, grokked, groups, left_out)


def model_name(model: AftModel) -> str:
    return model.distribution + (" + seed effect" if model.seed_effect else "")


def fit_entry(fit: AftFit, groups: list[tuple], group_by: list[str], level: float) -> dict[str, Any]:
    """A fit as plain data."""
    low, high = fit.wald_interval(level)
    return {"model": model_name(fit.model), "distribution": fit.model.distribution,
            "seed_effect": fit.model.seed_effect, "alpha": fit.alpha, "alpha_se": fit.alpha_se,
            "wald_ci": [low, high], "sigma": fit.sigma, "tau": fit.tau,
            "intercepts": [{"group": dict(zip(group_by, g)), "intercept": float(c)}
                           for g, c in zip(groups, fit.intercepts)],
            "log_likelihood": fit.log_likelihood, "parameters": fit.parameters, "aic": fit.aic,
            "converged": fit.converged, "runs": fit.runs}


def median_of_grokked(runs: SurvivalRuns, min_grokked: int) -> dict[str, Any]:
    """The median-of-grokked delay law over the fitted groups, as ``delay_law`` (one group) or
    ``shared_exponent`` (several) fit it: OLS of ln(median T_grok over grokked seeds) on x over the
    cells with >= min_grokked grokked seeds, of the groups with >= 3 such cells."""
    xs, ys, labels, used, dropped = [], [], [], {}, []
    for key in runs.groups:
        cells: dict[float, list[int | None]] = {}
        for i, k in enumerate(runs.keys):
            if k == key:
                cells.setdefault(runs.x[i], []).append(runs.times[i] if runs.grokked[i] else None)
        kept = {x: t for x, t in sorted(cells.items()) if sum(v is not None for v in t) >= min_grokked}
        dropped += [(key, x) for x in cells if x not in kept]
        if len(kept) < 3:
            continue
        used[key] = list(kept)
        for x, t in kept.items():
            xs.append(x)
            ys.append(math.log(median_or_none(t)))
            labels.append(key)
    result: dict[str, Any] = {"groups_used": list(used), "cells_dropped": dropped, "alpha": None, "intercepts": {}}
    if not used:
        return result
    if len(used) == 1:
        fit = delay_law_fit(xs, np.exp(ys))
        return result | {"alpha": fit.slope, "intercepts": {labels[0]: fit.intercept}, "r_squared": fit.r_squared}
    fit = shared_slope_fit(xs, ys, labels)
    return result | {"alpha": fit.slope, "intercepts": dict(zip(fit.groups, fit.intercepts)),
                     "r_squared": fit.r_squared}


# ---------------------------------------------------------------------------------------------------
# The analyzer.


def censored_delay_law_analyzer(config: CensoredDelayLawConfig):
    def analyze(records: Sequence[RunRecord]) -> Analysis:
        runs = survival_runs(records, config)
        _, pooled = t_grok_by_x(select(records, config.stages, config.within), config.x, config.group_by)
        notes = [note for key in pooled for note in pooling_notes(group_label(config.group_by, key), config.x,
                                                                   pooled[key])]
        notes += [f"{group_label(config.group_by, key)}: left out, {why}" for key, why in runs.left_out.items()]
        counts = cell_counts(runs, config.group_by)
        numbers: dict[str, Any] = {"x": config.x, "group_by": list(config.group_by), "models": [], "chosen": None,
                                   "cells": counts, "separate": [], "median_fit": None,
                                   "groups_used": [dict(zip(config.group_by, g)) for g in runs.groups]}
        if not runs.groups:
            notes.append("no fit: no group has enough runs")
            return Analysis("censored_delay_law", [counts_table(counts, config)], numbers, notes)
        data = runs.data()
        models = [AftModel(d, effect, config.quadrature_points) for d in config.distributions
                  for effect in ((False, True) if config.seed_effect else (False,))]
        fits = [fit_aft(data, model) for model in models]
        for fit in fits:
            if not fit.converged:
                notes.append(f"{model_name(fit.model)}: the fit did not converge (left out of the choice)")
            if fit.tau is not None and fit.tau < 0.01 * fit.sigma:
                notes.append(f"{model_name(fit.model)}: tau ~ 0, the seed effect is at its boundary")
        usable = [f for f in fits if f.converged] or fits
        best = min(usable, key=lambda f: f.aic)
        entries = [fit_entry(f, runs.groups, config.group_by, config.confidence) for f in fits]
        for entry, fit in zip(entries, fits):
            entry["delta_aic"] = fit.aic - best.aic
            entry["chosen"] = fit is best
        chosen = entries[fits.index(best)]
        chosen["profile_ci"] = list(profile_interval(best, data, config.confidence)) if config.profile else [None, None]
        for side, end in zip(("below", "above"), chosen["profile_ci"]):
            if config.profile and end is None:
                notes.append(f"{chosen['model']}: the profile likelihood does not bound alpha {side}")
        numbers |= {"models": entries, "chosen": chosen}
        median = median_of_grokked(runs, config.median_min_grokked)
        numbers["median_fit"] = {"alpha": median["alpha"], "r_squared": median.get("r_squared"),
                                 "intercepts": [{"group": dict(zip(config.group_by, g)), "intercept": c}
                                                for g, c in median["intercepts"].items()],
                                 "groups_used": [dict(zip(config.group_by, g)) for g in median["groups_used"]],
                                 "cells_dropped": [{"group": dict(zip(config.group_by, g)), "x": x}
                                                   for g, x in median["cells_dropped"]]}
        if len(runs.groups) > 1:
            numbers["separate"], separate_aic = separate_fits(runs, best.model, config)
            numbers["separate_aic"] = separate_aic
            numbers["shared_minus_separate_aic"] = best.aic - separate_aic if separate_aic is not None else None
        tables = [models_table(entries, chosen, median, config), counts_table(counts, config)]
        if numbers["separate"]:
            tables.insert(1, separate_table(numbers, config))
        return Analysis("censored_delay_law", tables, numbers, notes)
    return analyze


def separate_fits(runs: SurvivalRuns, model: AftModel, config: CensoredDelayLawConfig,
                  ) -> tuple[list[dict[str, Any]], float | None]:
    """The chosen model fitted to each group alone, and the sum of their AICs (None if one failed)."""
    entries, total = [], 0.0
    for key in runs.groups:
        fit = fit_aft(runs.data(key), model)
        entry = fit_entry(fit, [key], config.group_by, config.confidence) | {"group": dict(zip(config.group_by, key)),
                                                                             "label": group_label(config.group_by, key)}
        entries.append(entry)
        total = total + fit.aic if fit.converged and total is not None else None
    return entries, total


def cell_counts(runs: SurvivalRuns, group_by: list[str]) -> list[dict[str, Any]]:
    """Per group and x: seeds, grokked, censored, the longest censoring time and the median T_grok of
    the grokked seeds."""
    cells: dict[tuple, dict[str, Any]] = {}
    for i, key in enumerate(runs.keys):
        cell = cells.setdefault((key, runs.x[i]), {
            "group": dict(zip(group_by, key)), "label": group_label(group_by, key), "x": runs.x[i], "seeds": 0,
            "grokked": 0, "censored": 0, "censored_at": None, "fitted": key in runs.groups, "times": []})
        cell["seeds"] += 1
        if runs.grokked[i]:
            cell["grokked"] += 1
            cell["times"].append(runs.times[i])
        else:
            cell["censored"] += 1
            cell["censored_at"] = max(cell["censored_at"] or 0, runs.times[i])
    ordered = [cells[k] for k in sorted(cells, key=lambda k: value_order(k[0] + (k[1],)))]
    for cell in ordered:
        cell["median_grokked"] = median_or_none(cell.pop("times"))
    return ordered


def models_table(entries: list[dict[str, Any]], chosen: dict[str, Any], median: dict[str, Any],
                 config: CensoredDelayLawConfig) -> Table:
    level = f"{config.confidence:.0%}"
    rows = [[e["model"], e["alpha"], *e["wald_ci"], *(e.get("profile_ci") or (None, None)), e["sigma"], e["tau"],
             e["log_likelihood"], e["aic"], e["delta_aic"], "chosen" if e["chosen"] else ""] for e in entries]
    rows.append([f"median of grokked (cells with >= {config.median_min_grokked})", median["alpha"]]
                + [None] * 9 + [""])
    grouped = f"intercept[{', '.join(config.group_by)}]" if config.group_by else "intercept"
    return Table(f"censored delay law: ln T_grok = {grouped} + alpha * {config.x} (+ seed effect) + sigma * eps, "
                 "censored at the budget",
                 ["model", "alpha", f"Wald {level} low", "high", f"profile {level} low", "high", "sigma", "tau",
                  "log L", "AIC", "dAIC", ""], rows)


def separate_table(numbers: dict[str, Any], config: CensoredDelayLawConfig) -> Table:
    level = f"{config.confidence:.0%}"
    chosen = numbers["chosen"]
    rows = [[f"shared: {chosen['model']}", chosen["alpha"], *chosen["wald_ci"], chosen["aic"]]]
    rows += [[f"alone: {e['label']}", e["alpha"], *e["wald_ci"], e["aic"]] for e in numbers["separate"]]
    rows.append(["alone, summed", None, None, None, numbers["separate_aic"]])
    return Table("shared alpha vs each group alone (the chosen model)",
                 ["fit", "alpha", f"Wald {level} low", "high", "AIC"], rows)


def counts_table(counts: list[dict[str, Any]], config: CensoredDelayLawConfig) -> Table:
    rows = [[c["label"], c["x"], c["seeds"], c["grokked"], c["censored"], c["censored_at"], c["median_grokked"],
             "yes" if c["fitted"] else "no"] for c in counts]
    return Table("runs per cell: grokked and censored (censored at the budget)",
                 ["group", config.x, "seeds", "grokked", "censored", "censored at", "median T_grok (grokked)",
                  "fitted"], rows)


# ---------------------------------------------------------------------------------------------------
# The report section and its figure.


@styled
def censored_delay_law_figure(runs: SurvivalRuns, numbers: dict[str, Any], x_key: str = RHO,
                              groups: Sequence[tuple] | None = None) -> Figure:
    """Every seed's T_grok against x (log y): grokked seeds as dots, censored seeds as open triangles
    pointing up at the step they were censored; per group the chosen AFT model's median line
    exp(intercept + alpha x + sigma median(eps)) (solid) and the median-of-grokked fit (dashed).
    Seeds are spread a little along x, and groups side by side, so that equal times stay visible."""
    from matplotlib.lines import Line2D

    groups = list(groups if groups is not None else runs.groups)
    figure = new_figure(8.0, 5.6 if len(groups) > 2 else 5.0)
    axes = figure.subplots()
    colours = palette(len(groups), False) if len(groups) > 1 else ["tab:blue"]
    chosen, median = numbers["chosen"], numbers["median_fit"]
    group_by = numbers["group_by"]
    spread = (max(runs.x) - min(runs.x)) or 1.0
    for index, (key, colour) in enumerate(zip(groups, colours)):
        rows = [i for i, k in enumerate(runs.keys) if k == key]
        seeds = sorted({runs.seeds[i] for i in rows})
        shift = (index - (len(groups) - 1) / 2) * 0.012 * spread  # groups side by side at each x
        jitter = {s: shift + (j - (len(seeds) - 1) / 2) * 0.01 * spread / max(len(seeds), 1)
                  for j, s in enumerate(seeds)}
        done = [(runs.x[i] + jitter[runs.seeds[i]], runs.times[i]) for i in rows if runs.grokked[i]]
        censored = [(runs.x[i] + jitter[runs.seeds[i]], runs.times[i]) for i in rows if not runs.grokked[i]]
        if done:
            axes.plot(*zip(*done), "o", color=colour, ms=3.2, alpha=0.75)
        if censored:
            axes.plot(*zip(*censored), "^", color=colour, mfc="none", ms=7, mew=1.3)
        label = group_label(group_by, key)
        xs = np.linspace(min(runs.x[i] for i in rows), max(runs.x[i] for i in rows), 60)
        intercept = next(e["intercept"] for e in chosen["intercepts"] if e["group"] == dict(zip(group_by, key)))
        axes.plot(xs, aft_median(intercept, chosen["alpha"], chosen["sigma"], xs, chosen["distribution"]),
                  color=colour, lw=1.7, label=rf"{'' if label == '(all)' else label + ': '}AFT $\alpha$ = "
                                                rf"{chosen['alpha']:.2f}")
        median_intercept = next((e["intercept"] for e in (median or {}).get("intercepts", [])
                                 if e["group"] == dict(zip(group_by, key))), None)
        if median_intercept is not None:
            axes.plot(xs, np.exp(median_intercept + median["alpha"] * xs), color=colour, lw=1.2, ls="--")
    axes.set_yscale("log")
    plain_log_ticks(axes.yaxis)
    axes.set_xlabel(axis_label(x_key))
    axes.set_ylabel(T_GROK_LABEL)
    axes.set_title(f"Censored delay law: every seed, {chosen['model']} median (solid)")
    handles, _ = axes.get_legend_handles_labels()
    handles += [Line2D([], [], color="0.3", marker="o", ls="", ms=4, label="seed that grokked"),
                Line2D([], [], color="0.3", marker="^", mfc="none", ls="", ms=7, label="censored seed, at its budget"),
                Line2D([], [], color="0.3", ls="--",
                       label=r"median of grokked seeds (delay_law / shared_exponent), $\alpha$ = "
                       + (f"{median['alpha']:.2f}" if median and median["alpha"] is not None else "none"))]
    axes.legend(handles=handles, loc="upper left", fontsize=8)
    axes.margins(y=0.1)
    return figure


#: Most groups drawn in one figure; more go to ``censored_delay_law_1``, ``_2``...
GROUPS_PER_FIGURE = 6


def censored_delay_law_section(config: CensoredDelayLawConfig, analysis: Analysis, context: ReportContext,
                               ) -> ReportSection | None:
    """The models table, the runs per cell and the figure(s); None when nothing was fitted."""
    if analysis.numbers.get("chosen") is None:
        return None
    section = ReportSection("Censored delay law")
    if context.from_file("censored_delay_law"):
        section.add("Settings from the experiment file's `[[analysis]]` table: "
                    + (settings_text(config) or "the defaults") + ".")
    section.add("Accelerated failure time fits of every seed's T_grok, censored seeds included at their budget "
                "(the median-of-grokked fit drops them); the model with the lowest AIC is chosen. alpha is the "
                "slope of ln T_grok on " f"`{config.x}`" ", as in the delay law.")
    section.analysis(analysis)
    runs = survival_runs(context.records, config)
    for start in range(0, len(runs.groups), GROUPS_PER_FIGURE):
        name = ("censored_delay_law" if len(runs.groups) <= GROUPS_PER_FIGURE
                else f"censored_delay_law_{start // GROUPS_PER_FIGURE + 1}")
        section.figure(name, censored_delay_law_figure(runs, analysis.numbers, config.x,
                                                       runs.groups[start:start + GROUPS_PER_FIGURE]),
                       f"Every seed's T_grok (log scale) against {config.x}: grokked seeds (dots), censored seeds "
                       "(open triangles at their budget), the chosen AFT model's median (solid) and the "
                       "median-of-grokked fit (dashed)")
    return section


def censored_delay_law_report_config(records: Sequence[RunRecord]) -> CensoredDelayLawConfig | None:
    """The report's settings when the experiment file has none: x = rho, grouped by every cell key
    other than rho that varies among the runs with a rho; None (no section) without a rho sweep."""
    swept = [r for r in records if numeric(record_value(r, RHO))]
    if len({round(float(record_value(r, RHO)), 9) for r in swept}) < 2:
        return None
    return CensoredDelayLawConfig(x=RHO, group_by=varying_keys(swept, exclude=[RHO]))


ANALYZERS = [
    gnorm.Analyzer(name="censored_delay_law",
                   summary="fit ln T_grok on rho with censored seeds (log-normal / Weibull AFT, seed effect), by AIC",
                   config_class=CensoredDelayLawConfig, factory=censored_delay_law_analyzer,
                   report=censored_delay_law_section, report_config=censored_delay_law_report_config),
]
