"""The adaptive stage in a study: ``gnorm run`` trains an adaptive stage in rounds, each round the runs
the policy (:mod:`gnorm.adaptive`) has chosen so far, until it chooses no more.

A stage with an ``adaptive`` table keeps its plain runs (every cell times every seed) as the pool. Round
one chooses the first ``initial_seeds`` seeds of every cell; each later round looks at the stored
outcomes and adds, in the file's seed order, up to ``seeds_per_round`` seeds to the cells that narrow
alpha's interval most per expected model-step, plus a longer retraining of each censored seed the law
expects to grok within ``extend_factor`` times its budget (a run with that ``max_steps``: the id a plain
file with that budget gives it). With ``interval = "aft"`` the width is the log-normal AFT fit's and each
added seed comes with its budget (:func:`gnorm.adaptive_aft.next_seed`): the cell's own, or a cap at one
of ``budget_quantiles`` of the law's T_grok, trained as the run a plain file with that shorter
``max_steps`` holds (a different run id from the uncapped seed's; a capped seed is not extended).
The stage ends when the interval is at most ``target_width`` wide, the
stage has spent ``max_model_steps``, or the pool is used up. Every decision is a function of the stored
runs, so rerunning the same command resumes where the last one stopped.
"""

from __future__ import annotations

from typing import Any, Sequence

import attrs

from gnorm.adaptive import (AdaptivePolicy, Outcome, aft_law, cell_x, current_interval, extension_budget,
                            fitted_law, latest_outcomes, next_cell, policy_interval)
from gnorm.adaptive_aft import next_seed
from gnorm.components import RunRecord
from gnorm.runmodel import Experiment, RunSpec, Stage, cells_of


def extended_run(run: RunSpec, budget: int) -> RunSpec:
    """``run`` with ``max_steps = budget`` (the run a plain file with that budget would hold)."""
    return attrs.evolve(run, training=attrs.evolve(run.training, max_steps=budget))


def stage_outcomes(stage: Stage, stored: dict[str, RunRecord]) -> tuple[list[Outcome], list[RunSpec]]:
    """The stage's stored outcomes (x, seed position, T_grok, budget, model-steps: T_grok, else the
    budget) and the runs they came from: each cell's seeds at every budget stored for them (the plain
    run, a longer retraining, a capped run), shortest budget first."""
    outcomes, runs = [], []
    of_stage: dict[tuple[int, str], list[RunRecord]] = {}
    for record in stored.values():
        if record.stage == stage.name:
            of_stage.setdefault((record.seed, repr(sorted(record.cell.items()))), []).append(record)
    for cell in cells_of(stage.runs):
        x = cell_x(cell[0])
        for index, run in enumerate(cell):
            versions = [(record, run if record.run_id == run.run_id else extended_run(run, record.budget))
                        for record in of_stage.get((run.seed, repr(sorted(run.cell.items()))), [])]
            for record, spec in sorted(((r, s) for r, s in versions if s.run_id == r.run_id),
                                       key=lambda pair: pair[0].budget):
                outcomes.append(Outcome(x, index, record.t_grok, record.budget,
                                        record.t_grok if record.t_grok is not None else record.budget))
                runs.append(spec)
    return outcomes, runs


def stage_choice(stage: Stage, stored: dict[str, RunRecord]) -> list[RunSpec]:
    """The runs of an adaptive stage to hold after this look: the stored ones, plus what the policy adds
    (see the module docstring); equal to the stored ones when it adds nothing."""
    policy: AdaptivePolicy = stage.adaptive
    outcomes, chosen = stage_outcomes(stage, stored)
    cells = {cell_x(cell[0]): cell for cell in cells_of(stage.runs)}
    seen = {(o.x, o.seed_index) for o in outcomes}
    untrained = {x: [run for i, run in enumerate(cell) if (x, i) not in seen] for x, cell in cells.items()}
    first = [run for x, cell in cells.items() for i, run in enumerate(cell[:policy.initial_seeds])
             if (x, i) not in seen]
    if first:
        return chosen + first
    interval = policy_interval(policy)
    law: Any = aft_law(outcomes, interval) if policy.interval == "aft" else fitted_law(outcomes)
    if law is None:
        return chosen
    budgets = {x: cell[0].training.max_steps for x, cell in cells.items()}
    added = []
    for outcome in outcomes:
        superseded = any(o.x == outcome.x and o.seed_index == outcome.seed_index and o.budget > outcome.budget
                         for o in outcomes)
        if outcome.t_grok is None and not superseded and outcome.budget >= budgets[outcome.x]:
            longer = extension_budget(law, outcome.x, outcome.budget, policy)
            if longer is not None:
                added.append(extended_run(cells[outcome.x][outcome.seed_index], longer))
    found = current_interval(outcomes, interval)
    spent = sum(o.model_steps for o in outcomes)
    if (policy.target_width is not None and found is not None and found[1] - found[0] <= policy.target_width) or (
            policy.max_model_steps is not None and spent >= policy.max_model_steps):
        return chosen
    planned: dict[float, int] = {}
    trained = [(o.seed_index, o.x, o.budget) for o in latest_outcomes(outcomes)]
    for _ in range(policy.seeds_per_round):
        available = {x: len(untrained[x]) - planned.get(x, 0) for x in cells}
        if policy.interval == "aft":
            pools = {x: [cells[x].index(run) for run in untrained[x][planned.get(x, 0):]] for x in cells}
            choice = next_seed(law, trained, budgets, pools, policy.budget_quantiles, policy.target_width)
        else:
            x = next_cell(law, outcomes, budgets, available, planned)
            choice = None if x is None else (x, budgets[x])
        if choice is None:
            break
        x, budget = choice
        run = untrained[x][planned.get(x, 0)]
        added.append(run if budget >= budgets[x] else extended_run(run, budget))
        trained.append((cells[x].index(run), x, budget))
        planned[x] = planned.get(x, 0) + 1
    return chosen + added


def next_round(experiment: Experiment, records: Sequence[RunRecord]) -> Experiment | None:
    """The experiment with each adaptive stage cut to the runs its policy holds now (other stages whole);
    None when every adaptive stage's choice is already stored (the study is done)."""
    stored = {record.run_id: record for record in records}
    stages, more = [], False
    for stage in experiment.stages:
        if stage.adaptive is None:
            stages.append(stage)
            continue
        runs = stage_choice(stage, stored)
        more = more or any(run.run_id not in stored for run in runs)
        stages.append(attrs.evolve(stage, runs=runs))
    return attrs.evolve(experiment, stages=stages) if more else None


def run_study(experiment: Experiment, registry: Any, store: Any, progress: Any, executor: Any = None,
              observers: Any = None) -> list[str]:
    """Run the experiment (:func:`gnorm.scheduler.run_experiment`); with adaptive stages, round after
    round (:func:`next_round`) until the policy adds nothing, a round stores nothing new, or one fails."""
    from gnorm.scheduler import run_experiment

    if all(stage.adaptive is None for stage in experiment.stages):
        return run_experiment(experiment, registry, store, progress, executor, observers)
    problems: list[str] = []
    while (round_ := next_round(experiment, store.records(planned_only=False))) is not None:
        before = store.finished_run_ids()
        problems += run_experiment(round_, registry, store, progress, executor, observers)
        if problems or store.finished_run_ids() == before:
            break
    return problems
