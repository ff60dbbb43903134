"""The ``[snapshots]`` table of an experiment file, checked when the file loads (see gnorm.snapshots).

``at`` lists the moments each run keeps its weights at: ``"t_mem"``, ``"t_grok"``, ``"end"`` and
integer steps. An integer must be an evaluation step of every run whose budget reaches it (weights are
taken where a run is evaluated, so that the stored ``test_acc`` of that step is the snapshot's own); a
run whose budget ends before it keeps no snapshot there, and neither does a run that stopped at its
T_grok before it. Every problem is reported with the file and the key (``snapshots.at[2]``).
"""

from __future__ import annotations

import bisect
from typing import Any, Callable, Sequence

from gnorm.converter import suggest
from gnorm.describe import describe
from gnorm.runmodel import MAX_STEPS, SNAPSHOT_MOMENTS, SnapshotConfig, Stage

SNAPSHOT_KEYS = ("at", "optimizer_state")


def snapshot_config(raw: Any, stages: Sequence[Stage], problem: Callable[[str, str], None]) -> SnapshotConfig:
    """``[snapshots]`` structured (the default, no snapshots, where the file has none), each problem
    given to ``problem(key, message)``."""
    if raw is None:
        return SnapshotConfig()
    if not isinstance(raw, dict):
        problem("snapshots", f'expected a table like {{ at = ["t_grok", "end"] }}, found {describe(raw)}')
        return SnapshotConfig()
    for key in raw:
        if key not in SNAPSHOT_KEYS:
            problem(f"snapshots.{key}", f"unknown key{suggest(key, SNAPSHOT_KEYS)}")
    optimizer_state = raw.get("optimizer_state", False)
    if not isinstance(optimizer_state, bool):
        problem("snapshots.optimizer_state", f"expected true or false, found {describe(optimizer_state)}")
        optimizer_state = False
    at = raw.get("at", [])
    if not isinstance(at, list):
        problem("snapshots.at", f'expected a list of moments like ["t_mem", "t_grok", "end", 1000], '
                                f"found {describe(at)}")
        return SnapshotConfig()
    moments: list[str | int] = []
    for index, moment in enumerate(at):
        key = f"snapshots.at[{index}]"
        if isinstance(moment, str):
            if moment not in SNAPSHOT_MOMENTS:
                problem(key, f"unknown moment {moment!r}: expected one of {', '.join(SNAPSHOT_MOMENTS)} or an "
                             f"evaluation step{suggest(moment, SNAPSHOT_MOMENTS)}")
                continue
        elif isinstance(moment, bool) or not isinstance(moment, int) or not 1 <= moment <= MAX_STEPS:
            problem(key, f"expected t_mem, t_grok, end or an evaluation step (a positive integer), "
                         f"found {describe(moment)}")
            continue
        else:
            for why in not_evaluated(moment, stages):
                problem(key, why)
        if moment not in moments:
            moments.append(moment)
    return SnapshotConfig(tuple(moments), optimizer_state)


def not_evaluated(step: int, stages: Sequence[Stage]) -> list[str]:
    """Why ``step`` cannot be a snapshot step: for each stage with a run that trains past ``step``
    without evaluating it (its fork is at or after it, or its schedule skips it), one reason naming the
    nearest evaluation steps."""
    from gnorm.training.jobs import evaluation_steps

    reasons = []
    for stage in stages:
        seen = set()
        for run in stage.runs:
            evaluation, fork = run.evaluation, run.fork.at_step if run.fork is not None else None
            schedule = (run.training.max_steps, evaluation.schedule, evaluation.points, evaluation.every, fork)
            if run.training.max_steps < step or schedule in seen:
                continue  # a run that ends before the step keeps no snapshot there
            seen.add(schedule)
            steps = evaluation_steps(run).tolist()
            if step in steps:
                continue
            if run.fork is not None and step <= run.fork.at_step:
                reasons.append(f"stage {stage.name!r} forks at step {run.fork.at_step}: its runs are evaluated "
                               f"(and keep snapshots) only after it, from step {steps[0]}")
            else:
                position = bisect.bisect_left(steps, step)
                nearest = [str(s) for s in steps[max(0, position - 1):position + 1]]
                reasons.append(f"step {step} is not an evaluation step of stage {stage.name!r} (the nearest are "
                               f"{' and '.join(nearest)}); snapshots are taken at evaluations: name one of "
                               "those, or evaluate every N steps ([evaluation] schedule = \"every\")")
            break  # one reason per stage
    return reasons
