"""The adaptive policy for a delay-law sweep, as pure functions, and its replay on a finished sweep.

The policy starts every cell (one per x) with ``initial_seeds`` seeds, then, while alpha's interval is
wider than ``target_width`` and fewer than ``max_model_steps`` are spent, adds the next seed (in the
file's seed order, so every run keeps the id a plain file with those seeds gives it) to the cell where
one seed narrows alpha most per expected model-step (:func:`gnorm.budget.seed_value`, with the law
refitted to what has been seen). A censored seed is retrained with ``extend_factor`` times its budget
only when the law predicts it groks within that factor (:func:`extension_budget`).

With ``interval = "aft"`` the width is the log-normal AFT fit's Wald interval (censored seeds count at
their budgets, one effect per seed) and the next seed is chosen with its budget: the cell's own, or a
cap at one of the law's ``budget_quantiles`` of T_grok there (censoring by design: a capped seed costs
at most its cap), by the expected information it adds per expected model-step
(:mod:`gnorm.adaptive_aft`).

The replay (:func:`replay`) runs the policy against a finished sweep: a seed's stored outcome is revealed
when the policy trains it, censored where the policy's budget is shorter than its T_grok.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import attrs
import numpy as np

from gnorm.adaptive_aft import INTERVALS, AftInterval, AftLaw, next_seed
from gnorm.budget import (CellDesign, DelayLawModel, IntervalFunction, cell_seed_sds, delay_law_interval,
                          law_from_times, seed_value)


def _positive_or_none(instance: Any, attribute: Any, value: float | None) -> None:
    if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"'{attribute.name}' must be a positive number, found {value!r}")


def _interval_name(instance: Any, attribute: Any, value: str) -> None:
    if value not in INTERVALS:
        raise ValueError(f"'{attribute.name}' must be one of {', '.join(INTERVALS)}, found {value!r}")


def _quantiles(instance: Any, attribute: Any, value: list[float]) -> None:
    if any(not (isinstance(q, (int, float)) and 0 < q < 1) for q in value):
        raise ValueError(f"'{attribute.name}' must list numbers between 0 and 1, found {value!r}")
    if value and instance.interval != "aft":
        raise ValueError(f"'{attribute.name}' (budget caps) needs interval = \"aft\" (a fit that reads censored seeds)")


@attrs.frozen
class AdaptivePolicy:
    """An adaptive stage's ``adaptive`` table. ``target_width``: stop once alpha's 95% interval is at most
    this wide; ``max_model_steps``: stop before spending more; ``extend_factor``: how much longer a
    censored seed's retraining may be (1: never); ``initial_seeds`` per cell to start with;
    ``seeds_per_round``: seeds added between two looks at the interval; ``min_probability``: how likely
    (by the law) a censored seed must be to grok within the factor to be extended; ``interval``:
    ``bootstrap`` (the ``delay_law`` bootstrap) or ``aft`` (the log-normal AFT fit's Wald interval, with a
    per-seed effect, and ln sigma linear in rho with ``scale_slope``); ``budget_quantiles`` (aft only):
    the quantiles of the law's T_grok at a level at which a new seed's budget may be capped."""

    target_width: float | None = attrs.field(default=None, validator=_positive_or_none)
    max_model_steps: float | None = attrs.field(default=None, validator=_positive_or_none)
    extend_factor: float = attrs.field(default=2.0, validator=attrs.validators.ge(1.0))
    initial_seeds: int = attrs.field(default=3, validator=attrs.validators.ge(1))
    seeds_per_round: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    min_probability: float = attrs.field(default=0.5, validator=[attrs.validators.gt(0.0), attrs.validators.le(1.0)])
    interval: str = attrs.field(default="bootstrap", validator=_interval_name)
    scale_slope: bool = False
    budget_quantiles: list[float] = attrs.field(factory=list, validator=_quantiles)


def policy_interval(policy: AdaptivePolicy) -> IntervalFunction:
    """The interval the policy reads: the ``delay_law`` bootstrap (2000 resamples) or an
    :class:`gnorm.adaptive_aft.AftInterval` with a per-seed effect."""
    if policy.interval == "aft":
        return AftInterval(seed_effect=True, scale_slope=policy.scale_slope)
    return lambda x, t, b: delay_law_interval(x, t, b, resamples=2000)


def cell_x(run: Any) -> float | None:
    """A run's x: its controller's ``rho`` where it has a number there, else None."""
    rho = getattr(run.controller.config, "rho", None)
    return float(rho) if isinstance(rho, (int, float)) and not isinstance(rho, bool) else None


@attrs.frozen
class Outcome:
    """One trained seed: its cell's x, its position in the file's seed order, T_grok (None = censored),
    the budget it trained with and the model-steps it cost."""

    x: float
    seed_index: int
    t_grok: int | None
    budget: int
    model_steps: int


def observed_cells(outcomes: Sequence[Outcome]) -> dict[float, list[int | None]]:
    """x -> each seed's latest T_grok (None = censored), a seed retrained longer counted once."""
    latest: dict[tuple[float, int], Outcome] = {}
    for outcome in outcomes:
        latest[(outcome.x, outcome.seed_index)] = outcome
    cells: dict[float, list[int | None]] = {}
    for (x, _), outcome in sorted(latest.items()):
        cells.setdefault(x, []).append(outcome.t_grok)
    return cells


def latest_outcomes(outcomes: Sequence[Outcome]) -> list[Outcome]:
    """Each seed's latest outcome (a seed retrained longer counted once), ordered by x and seed."""
    latest: dict[tuple[float, int], Outcome] = {(o.x, o.seed_index): o for o in outcomes}
    return [latest[key] for key in sorted(latest)]


def outcome_arrays(outcomes: Sequence[Outcome]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, T_grok with NaN = censored, budget, seed position) of each seed's latest outcome."""
    chosen = latest_outcomes(outcomes)
    return (np.array([o.x for o in chosen], float),
            np.array([math.nan if o.t_grok is None else o.t_grok for o in chosen], float),
            np.array([o.budget for o in chosen], float), np.array([o.seed_index for o in chosen], int))


def current_interval(outcomes: Sequence[Outcome], interval: IntervalFunction | None = None,
                     ) -> tuple[float, float] | None:
    """alpha's interval from the seeds seen so far (``interval``, default the ``delay_law`` bootstrap;
    one with ``takes_seeds`` also gets each seed's position, the same seed across x)."""
    interval = interval or policy_interval(AdaptivePolicy())
    x, t_grok, budget, seeds = outcome_arrays(outcomes)
    if getattr(interval, "takes_seeds", False):
        return interval(x, t_grok, budget, seeds)
    return interval(x, t_grok, budget)


def aft_law(outcomes: Sequence[Outcome], interval: AftInterval) -> AftLaw | None:
    """The log-normal AFT law fitted to the seeds seen so far (None when they admit no fit)."""
    fit = interval.fit(*outcome_arrays(outcomes))
    return AftLaw.of(fit) if fit is not None else None


def fitted_law(outcomes: Sequence[Outcome], fallback: DelayLawModel | None = None) -> DelayLawModel | None:
    """The law refitted to the seeds seen so far (:func:`gnorm.budget.law_from_times`), else ``fallback``."""
    return law_from_times(observed_cells(outcomes), source="adaptive: seen so far") or fallback


def extension_budget(law: "DelayLawModel | AftLaw", x: float, budget: int, policy: AdaptivePolicy) -> int | None:
    """The longer budget ceil(extend_factor * B) for a seed censored at B, when the law gives
    P(T_grok <= extend_factor * B | T_grok > B) >= min_probability; else None (it stays censored)."""
    if policy.extend_factor <= 1 or law.grok_within(x, budget, policy.extend_factor) < policy.min_probability:
        return None
    return int(math.ceil(policy.extend_factor * budget))


def next_cell(law: DelayLawModel, outcomes: Sequence[Outcome], budgets: dict[float, int],
              available: dict[float, int], planned: dict[float, int] | None = None) -> float | None:
    """The x whose next seed buys most precision per expected model-step (among cells with
    ``available[x]`` > 0 untrained seeds), each cell's seed spread its own shrunk to the law's
    (:func:`gnorm.budget.cell_seed_sds`), counting ``planned[x]`` seeds chosen but not yet seen; None
    when none is left."""
    cells = observed_cells(outcomes)
    planned = planned or {}
    xs = sorted(budgets)
    design = [CellDesign(x, len(cells.get(x, [])) + planned.get(x, 0), budgets[x]) for x in xs]
    spreads = cell_seed_sds(cells, law.seed_sd)
    values = seed_value(law, design, [spreads.get(x, law.seed_sd) for x in xs])
    values[[available.get(x, 0) <= 0 for x in xs]] = -math.inf
    best = int(np.argmax(values))
    return None if values[best] == -math.inf else xs[best]


# ---------------------------------------------------------------------------------------------------
# The replay.


@attrs.frozen
class StoredSeed:
    """A seed of a finished sweep: its T_grok (None = censored) within the stored budget."""

    t_grok: int | None
    budget: int


def reveal(stored: StoredSeed, budget: int) -> tuple[int | None, int]:
    """What training the seed for ``budget`` steps (stopping at T_grok) shows and costs: (T_grok, steps)
    when it groks within min(budget, stored budget), else (None, that budget)."""
    budget = min(budget, stored.budget)
    if stored.t_grok is not None and stored.t_grok <= budget:
        return stored.t_grok, stored.t_grok
    return None, budget


@attrs.frozen
class ReplayResult:
    """The adaptive policy's outcomes, interval and model-steps against the full sweep's."""

    outcomes: list[Outcome]
    interval: tuple[float, float] | None
    full_interval: tuple[float, float] | None
    model_steps: int
    full_model_steps: int
    reached: bool
    seeds: dict[float, int]
    extended: int
    #: Model-steps had every trained seed run its whole budget (paper A's practice), adaptive and full.
    budget_steps: int = 0
    full_budget_steps: int = 0
    #: Each level's own budget (a seed trained with less was capped by the policy).
    cell_budgets: dict[float, int] = attrs.field(factory=dict)

    @property
    def saving(self) -> float | None:
        """full model-steps / adaptive model-steps."""
        return self.full_model_steps / self.model_steps if self.model_steps else None


def full_sweep_steps(sweep: dict[float, Sequence[StoredSeed]]) -> int:
    """The full sweep's model-steps, training stopped at T_grok: sum over seeds of min(T_grok, B)."""
    return sum(s.t_grok if s.t_grok is not None else s.budget for seeds in sweep.values() for s in seeds)


def replay(sweep: dict[float, Sequence[StoredSeed]], policy: AdaptivePolicy, interval: IntervalFunction | None = None,
           budgets: dict[float, int] | None = None, order: dict[float, Sequence[int]] | None = None) -> ReplayResult:
    """Run ``policy`` on a finished sweep (x -> its seeds in file order). ``budgets``: the policy's first
    budget per x (default each cell's stored budget); ``order``: the seed order per x (default file
    order). ``interval`` defaults to the policy's (:func:`policy_interval`); the full sweep's width is
    taken with the same one, and the target width defaults to it. Training a seed reveals its stored
    outcome (:func:`reveal`); a seed censored at its cell's budget is retrained when
    :func:`extension_budget` says so (its first training counted too); one the policy capped is not.
    With ``policy.interval = "aft"`` each new seed's cell and budget come from
    :func:`gnorm.adaptive_aft.next_seed` on the AFT law fitted to what has been revealed."""
    interval = interval or policy_interval(policy)
    full = current_interval([Outcome(x, i, s.t_grok, s.budget, 0) for x, seeds in sweep.items()
                             for i, s in enumerate(seeds)], interval)
    target = policy.target_width if policy.target_width is not None else (full[1] - full[0] if full else None)
    budgets = budgets or {x: max(s.budget for s in seeds) for x, seeds in sweep.items()}
    order = order or {x: list(range(len(seeds))) for x, seeds in sweep.items()}
    outcomes: list[Outcome] = []
    trained = {x: 0 for x in sweep}
    extended = 0

    def train(x: float, position: int, budget: int) -> None:
        index = order[x][position]
        t_grok, steps = reveal(sweep[x][index], budget)
        outcomes.append(Outcome(x, index, t_grok, min(budget, sweep[x][index].budget), steps))

    for x in sorted(sweep):
        for position in range(min(policy.initial_seeds, len(sweep[x]))):
            train(x, position, budgets[x])
        trained[x] = min(policy.initial_seeds, len(sweep[x]))
    spent = lambda: sum(o.model_steps for o in outcomes)  # noqa: E731
    while True:
        law: Any = aft_law(outcomes, interval) if isinstance(interval, AftInterval) else fitted_law(outcomes)
        for outcome in [o for o in outcomes if o.t_grok is None]:
            if law is None or outcome.budget < min(budgets[outcome.x], sweep[outcome.x][outcome.seed_index].budget) \
                    or any(o.x == outcome.x and o.seed_index == outcome.seed_index and o.budget > outcome.budget
                           for o in outcomes):
                continue
            longer = extension_budget(law, outcome.x, outcome.budget, policy)
            stored_budget = sweep[outcome.x][outcome.seed_index].budget
            if longer is not None and outcome.budget < stored_budget:
                t_grok, steps = reveal(sweep[outcome.x][outcome.seed_index], longer)
                outcomes.append(Outcome(outcome.x, outcome.seed_index, t_grok, min(longer, stored_budget), steps))
                extended += 1
        found = current_interval(outcomes, interval)
        if target is not None and found is not None and found[1] - found[0] <= target:
            break
        if policy.max_model_steps is not None and spent() >= policy.max_model_steps:
            break
        available = {x: len(sweep[x]) - trained[x] for x in sweep}
        if isinstance(law, AftLaw):
            choice = next_seed(law, [(o.seed_index, o.x, o.budget) for o in latest_outcomes(outcomes)], budgets,
                               {x: list(order[x][trained[x]:]) for x in sweep}, policy.budget_quantiles, target)
        else:
            x = next_cell(law, outcomes, budgets, available) if law is not None else next(
                (x for x in sorted(sweep) if available[x] > 0), None)
            choice = None if x is None else (x, budgets[x])
        if choice is None:
            break
        train(choice[0], trained[choice[0]], choice[1])
        trained[choice[0]] += 1
    found = current_interval(outcomes, interval)
    reached = target is not None and found is not None and found[1] - found[0] <= target
    return ReplayResult(outcomes, found, full, spent(), full_sweep_steps(sweep), reached, trained, extended,
                        sum(o.budget for o in outcomes), sum(s.budget for seeds in sweep.values() for s in seeds),
                        {x: min(budgets[x], max(s.budget for s in sweep[x])) for x in sweep})


def cheapest_design_bound(sweep: dict[float, Sequence[StoredSeed]], level: float = 0.95,
                          ) -> tuple[float, dict[float, int]]:
    """The fewest expected model-steps any design drawn from the sweep's seeds needs to reach the full
    sweep's large-sample width (:func:`gnorm.budget.analytic_width`, each cell's own seed spread and mean
    cost min(T_grok, B) from all its seeds): over every subset of 3 or more levels, seeds added greedily
    (:func:`gnorm.budget.seed_value`) from 3 per level up to the seeds the sweep has. Returns (model-steps,
    seeds per level); a yardstick for the replay, which does not see the outcomes in advance."""
    import itertools

    from gnorm.budget import analytic_width

    xs = sorted(sweep)
    cells = {x: [s.t_grok for s in sweep[x]] for x in xs}
    pooled = law_from_times(cells)
    if pooled is None:
        return math.inf, {}
    spreads = cell_seed_sds(cells, pooled.seed_sd, prior_seeds=0.0)
    cost = {x: float(np.mean([s.t_grok if s.t_grok is not None else s.budget for s in sweep[x]])) for x in xs}
    budgets = {x: max(s.budget for s in sweep[x]) for x in xs}

    def width(design: list[CellDesign]) -> float:
        return analytic_width(pooled, design, level, [spreads[c.x] for c in design])
    target = width([CellDesign(x, len(sweep[x]), budgets[x]) for x in xs])
    best: tuple[float, dict[float, int]] = (math.inf, {})
    for size in range(3, len(xs) + 1):
        for levels in itertools.combinations(xs, size):
            design = [CellDesign(x, min(3, len(sweep[x])), budgets[x]) for x in levels]
            while width(design) > target:
                values = seed_value(pooled, design, [spreads[c.x] for c in design])
                values *= np.array([pooled.expected_steps(c.x, c.budget) / cost[c.x] for c in design])
                values[[c.seeds >= len(sweep[c.x]) for c in design]] = -1.0
                pick = int(np.argmax(values))
                if values[pick] <= 0:
                    break
                design[pick] = attrs.evolve(design[pick], seeds=design[pick].seeds + 1)
            steps = sum(c.seeds * cost[c.x] for c in design)
            if width(design) <= target and steps < best[0]:
                best = (steps, {c.x: c.seeds for c in design})
    return best


def sweep_from_records(records: Sequence, x_key: str = "controller.rho", stage: str | None = None,
                       ) -> dict[float, list[StoredSeed]]:
    """A finished sweep from store records: x -> its seeds (in seed order) with T_grok and budget, of the
    records (of ``stage``, when given) that have a numeric ``x_key``."""
    from gnorm.analysis.records import numeric, record_value

    sweep: dict[float, list[tuple[int, StoredSeed]]] = {}
    for record in records:
        x = record_value(record, x_key)
        if (stage is not None and record.stage != stage) or not numeric(x):
            continue
        sweep.setdefault(round(float(x), 9), []).append((record.seed, StoredSeed(record.t_grok, record.budget)))
    return {x: [s for _, s in sorted(seeds, key=lambda item: item[0])] for x, seeds in sorted(sweep.items())}


def aft_design_bound(sweep: dict[float, Sequence[StoredSeed]], policy: AdaptivePolicy,
                     ) -> tuple[float, float, dict[float, int], int] | None:
    """The yardstick of an ``aft`` replay: with the AFT law fitted to the whole sweep taken as known,
    the fewest expected model-steps of a design drawn from the sweep's seeds (at most as many per level,
    from ``initial_seeds`` per level, runs added by :func:`gnorm.adaptive_aft.next_seed` with the
    policy's budget caps) whose large-sample var(alpha) is at most the full sweep's. Returns (its expected
    model-steps, the full sweep's, seeds per level, runs capped), None when the sweep admits no fit."""
    from gnorm.adaptive_aft import alpha_variance, design_information
    from gnorm.budget import normal_quantile

    law = aft_law([Outcome(x, i, s.t_grok, s.budget, 0) for x, seeds in sweep.items() for i, s in enumerate(seeds)],
                  AftInterval(seed_effect=True, scale_slope=policy.scale_slope))
    if law is None:
        return None
    budgets = {x: max(s.budget for s in seeds) for x, seeds in sweep.items()}
    full = [(i, x, budgets[x]) for x, seeds in sweep.items() for i in range(len(seeds))]
    target = alpha_variance(design_information(law, full))
    count = {x: min(policy.initial_seeds, len(seeds)) for x, seeds in sweep.items()}
    runs = [(i, x, budgets[x]) for x in sweep for i in range(count[x])]
    while alpha_variance(design_information(law, runs)) > target:
        choice = next_seed(law, runs, budgets, {x: list(range(count[x], len(sweep[x]))) for x in sweep},
                           policy.budget_quantiles, math.sqrt(target) * 2 * normal_quantile(0.975))
        if choice is None:
            break
        runs.append((count[choice[0]], choice[0], choice[1]))
        count[choice[0]] += 1
    steps = lambda design: sum(law.expected_steps(x, b) for _, x, b in design)  # noqa: E731
    return steps(runs), steps(full), count, sum(b < budgets[x] for _, x, b in runs)
