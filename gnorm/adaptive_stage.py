"""The adaptive stage in a study: ``gnorm run`` trains an adaptive stage in rounds, each round the runs
the policy (:mod:`gnorm.adaptive`) has chosen so far, until it chooses no more.

A stage with an ``adaptive`` table keeps its plain runs (every cell times every seed) as the pool. Round
one chooses the first ``initial_seeds`` seeds of every cell; each later round looks at the stored
outcomes and adds, in the file's seed order, up to ``seeds_per_round`` seeds to the cells that narrow
alpha's interval most per expected model-step, plus a longer retraining of each censored seed the law
expects to grok within ``extend_factor`` times its budget (a run with that ``max_steps``: the id a plain
file with that budget gives it). The stage ends when the interval is at most ``target_width`` wide, the
stage has spent ``max_model_steps``, or the pool is used up. Every decision is a function of the stored
runs, so rerunning the same command resumes where the last one stopped.
"""

from __future__ import annotations

from typing import Any, Sequence

import attrs

from gnorm.adaptive import (AdaptivePolicy, Outcome, cell_x, current_interval, extension_budget, fitted_law,
                            next_cell)
from gnorm.components import RunRecord
from gnorm.runmodel import Experiment, RunSpec, Stage, cells_of


def extended_run(run: RunSpec, budget: int) -> RunSpec:
    """``run`` with ``max_steps = budget`` (the run a plain file with that budget would hold)."""
    return attrs.evolve(run, training=attrs.evolve(run.training, max_steps=budget))


def stage_outcomes(stage: Stage, stored: dict[str, RunRecord]) -> tuple[list[Outcome], list[RunSpec]]:
    """The stage's stored outcomes (x, seed position, T_grok, budget, model-steps: T_grok, else the
    budget) and the runs they came from, each cell's seeds and any longer retraining of a seed."""
    outcomes, runs = [], []
    for cell in cells_of(stage.runs):
        x = cell_x(cell[0])
        for index, run in enumerate(cell):
            chain = [run]
            while chain[-1].run_id in stored and stored[chain[-1].run_id].t_grok is None:
                record = stored[chain[-1].run_id]
                longer = [r for r in stored.values() if r.stage == stage.name and r.seed == run.seed
                          and r.budget > record.budget and extended_run(run, r.budget).run_id == r.run_id]
                if not longer:
                    break
                chain.append(extended_run(run, min(r.budget for r in longer)))
            for spec in chain:
                if spec.run_id in stored:
                    record = stored[spec.run_id]
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
    untrained = {x: [run for run in cell if run.run_id not in stored] for x, cell in cells.items()}
    first = [run for cell in cells.values() for run in cell[:policy.initial_seeds] if run.run_id not in stored]
    if first:
        return chosen + first
    law = fitted_law(outcomes)
    if law is None:
        return chosen
    added = []
    for outcome in outcomes:
        superseded = any(o.x == outcome.x and o.seed_index == outcome.seed_index and o.budget > outcome.budget
                         for o in outcomes)
        if outcome.t_grok is None and not superseded:
            longer = extension_budget(law, outcome.x, outcome.budget, policy)
            if longer is not None:
                added.append(extended_run(cells[outcome.x][outcome.seed_index], longer))
    found = current_interval(outcomes)
    spent = sum(o.model_steps for o in outcomes)
    if (policy.target_width is not None and found is not None and found[1] - found[0] <= policy.target_width) or (
            policy.max_model_steps is not None and spent >= policy.max_model_steps):
        return chosen
    budgets = {x: cell[0].training.max_steps for x, cell in cells.items()}
    planned: dict[float, int] = {}
    for _ in range(policy.seeds_per_round):
        available = {x: len(untrained[x]) - planned.get(x, 0) for x in cells}
        x = next_cell(law, outcomes, budgets, available, planned)
        if x is None:
            break
        added.append(untrained[x][planned.get(x, 0)])
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
