"""Replicate agreement: does each independent replicate's alpha fall inside the others' intervals?

A replicate is one independent set of seeds running the same protocol: a value of ``replicate_by``
(e.g. each clamp stage of ``examples/coverage/replicates.toml``, with its own free stage and seeds),
or, with ``split = k``, one of k disjoint seed sets cut from each (released results with 16 seeds a
cell: k = 4 replicates of 4 seeds). Each replicate is fitted alone by ``delay_law`` under each
interval; for each ordered pair (i, j), i != j, we ask whether alpha_i lies in j's interval.

What to expect: if every replicate's alpha is normal around the truth with sd sigma and each
interval is alpha_j +- z sigma (z = 1.96 at 95%), then alpha_i - alpha_j has sd sigma sqrt(2) and
P(alpha_i in CI_j) = 2 Phi(z / sqrt(2)) - 1 = 0.834, not 0.95. Intervals that are too narrow score
well below that; the table prints the expected share beside the measured one.
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Any, Sequence

import attrs
import numpy as np

import gnorm
from gnorm.analysis.records import record_value, select, value_order
from gnorm.builtins.analyzers.delay_law import DelayLawConfig, delay_law_analyzer
from gnorm.builtins.analyzers.options import (INTERVALS, KEYS, STAGES, at_least, confidence_level, intervals,
                                              not_empty, resample_count)
from gnorm.components import Analysis, RunRecord, Table


@attrs.frozen
class ReplicateAgreementConfig:
    """``replicate_by``: the key whose values name the replicates (default ``stage``; "" for one
    replicate, then ``split`` must cut it). ``split``: cut each replicate's seeds (sorted) into this
    many disjoint, contiguous sets of equal size (0: no split). The fit per replicate is ``delay_law``
    over x with ``within``, ``min_grokked``, ``min_cells``, ``resamples``, ``confidence`` and ``seed``,
    under each interval in ``intervals``."""

    x: str = attrs.field(default="controller.rho", validator=not_empty, metadata=KEYS)
    stages: list[str] = attrs.field(factory=list, metadata=STAGES)
    within: dict[str, list[float]] = attrs.field(factory=dict, validator=intervals, metadata=KEYS)
    replicate_by: str = attrs.field(default="stage", metadata=KEYS)
    split: int = attrs.field(default=0, validator=at_least(0))
    min_grokked: int = attrs.field(default=3, validator=at_least(1))
    min_cells: int = attrs.field(default=3, validator=at_least(2))
    resamples: int = attrs.field(default=2000, validator=resample_count)
    confidence: float = attrs.field(default=0.95, validator=confidence_level)
    seed: int = attrs.field(default=0, validator=at_least(0))
    intervals: list[str] = attrs.field(factory=lambda: list(INTERVALS),
                                       validator=attrs.validators.deep_iterable(attrs.validators.in_(INTERVALS)))


def expected_agreement(level: float) -> float:
    """2 Phi(z / sqrt(2)) - 1 with z = Phi^-1((1 + level) / 2): the share of replicate pairs in which one
    replicate's estimate lies in the other's interval when the intervals are calibrated (normal
    estimates, equal spreads; see the module docstring)."""
    normal = NormalDist()
    return 2.0 * normal.cdf(normal.inv_cdf((1.0 + level) / 2.0) / 2.0**0.5) - 1.0


def agreement(alphas: Sequence[float], intervals: Sequence[tuple[float, float]]) -> tuple[int, int]:
    """(hits, pairs): over ordered pairs (i, j), i != j, how often alphas[i] lies in intervals[j]."""
    hits = sum(low <= alphas[i] <= high for j, (low, high) in enumerate(intervals)
               for i in range(len(alphas)) if i != j)
    return hits, len(alphas) * (len(alphas) - 1)


def seed_sets(seeds: Sequence[int], parts: int) -> list[list[int]]:
    """The sorted seeds cut into ``parts`` contiguous sets of equal size (the remainder left out)."""
    ordered = sorted(set(seeds))
    size = len(ordered) // parts
    return [ordered[i * size:(i + 1) * size] for i in range(parts)] if size else []


def replicates_of(records: Sequence[RunRecord], chosen: Sequence[RunRecord], config: ReplicateAgreementConfig,
                  ) -> list[tuple[str, list[RunRecord], list[RunRecord]]]:
    """(label, the runs fitted, the runs Wc sources are looked up in) per replicate. A split keeps
    only the set's seeds everywhere, free runs included, so a Wc set from all seeds is taken as given."""
    by_value: dict[Any, list[RunRecord]] = {}
    for record in chosen:
        value = record_value(record, config.replicate_by) if config.replicate_by else ""
        by_value.setdefault(value, []).append(record)
    found = []
    for value in sorted(by_value, key=lambda v: value_order((v,))):
        runs = by_value[value]
        name = f"{config.replicate_by}={value}" if config.replicate_by else "all"
        if not config.split:
            found.append((name, runs, list(records)))
            continue
        for index, seeds in enumerate(seed_sets([r.seed for r in runs], config.split)):
            kept = set(seeds)
            found.append((f"{name}, seeds {seeds[0]}-{seeds[-1]}" if len(seeds) > 1 else f"{name}, seed {seeds[0]}",
                          [r for r in runs if r.seed in kept], [r for r in records if r.seed in kept]))
    return found


def replicate_agreement_analyzer(config: ReplicateAgreementConfig):
    def analyze(records: Sequence[RunRecord]) -> Analysis:
        chosen = select(records, config.stages, config.within)
        replicates = replicates_of(records, chosen, config)
        rows, numbers, notes = [], [], []
        fits: dict[str, list[tuple[float, tuple[float, float]]]] = {name: [] for name in config.intervals}
        for label, runs, universe in replicates:
            entry: dict[str, Any] = {"replicate": label, "seeds": len({r.seed for r in runs})}
            for name in config.intervals:
                fit_config = DelayLawConfig(x=config.x, min_grokked=config.min_grokked, min_cells=config.min_cells,
                                            resamples=config.resamples, confidence=config.confidence,
                                            seed=config.seed, interval=name)
                fitted = delay_law_analyzer(fit_config)(_with_universe(runs, universe))
                group = fitted.numbers["groups"][0] if fitted.numbers["groups"] else {"alpha": None}
                low, high = group.get("alpha_ci", (None, None))
                entry["alpha"] = group["alpha"]
                entry[f"{name}_ci"] = [low, high]
                if group["alpha"] is not None and low is not None:
                    fits[name].append((group["alpha"], (low, high)))
                if name == config.intervals[0]:
                    notes += [f"{label}: {note}" for note in fitted.notes if "taken as given" not in note]
            numbers.append(entry)
            rows.append([label, entry["seeds"], entry["alpha"],
                         *[v for name in config.intervals for v in entry[f"{name}_ci"]]])
        expected = expected_agreement(config.confidence)
        summary, summary_rows = {}, []
        alphas = [a for a, _ in fits[config.intervals[0]]] if config.intervals else []
        for name in config.intervals:
            hits, pairs = agreement([a for a, _ in fits[name]], [ci for _, ci in fits[name]])
            width = float(np.mean([high - low for _, (low, high) in fits[name]])) if fits[name] else None
            summary[name] = {"hits": hits, "pairs": pairs, "share": hits / pairs if pairs else None,
                             "mean_width": width}
            summary_rows.append([name, len(fits[name]), f"{hits}/{pairs}", hits / pairs if pairs else None,
                                 expected, width])
        spread = float(np.std(alphas, ddof=1)) if len(alphas) > 1 else None
        level = f"{config.confidence:.0%}"
        tables = [Table(f"replicates: alpha and {level} CI of each, fitted alone",
                        ["replicate", "seeds", "alpha", *[f"{name} {side}" for name in config.intervals
                                                          for side in ("low", "high")]], rows),
                  Table(f"replicate agreement: alpha_i inside replicate j's {level} CI (i != j); sd of alpha "
                        f"across replicates {spread:.3g}" if spread is not None else
                        f"replicate agreement: alpha_i inside replicate j's {level} CI (i != j)",
                        ["interval", "replicates", "pairs inside", "share", "expected if calibrated", "mean width"],
                        summary_rows)]
        if len(replicates) < 2:
            notes.append(f"{len(replicates)} replicate(s): agreement needs two or more (set replicate_by or split)")
        return Analysis("replicate_agreement", tables, {"x": config.x, "replicates": numbers, "agreement": summary,
                                                        "expected_share": expected, "alpha_sd": spread}, notes)
    return analyze


def _with_universe(runs: Sequence[RunRecord], universe: Sequence[RunRecord]) -> list[RunRecord]:
    """The replicate's runs and the universe's free runs (where the fit looks up Wc sources); free runs
    have no rho or held norm, so the fit itself reads only the replicate's runs."""
    fitted = {id(r) for r in runs}
    return list(runs) + [r for r in universe if id(r) not in fitted and r.config["controller"]["name"] == "free"]


ANALYZERS = [
    gnorm.Analyzer(name="replicate_agreement",
                   summary="each replicate seed set's alpha inside the others' intervals (seed-block vs cell)",
                   config_class=ReplicateAgreementConfig, factory=replicate_agreement_analyzer),
]
