"""Facade: the study coordinator lives in gnorm.planner (what to train), gnorm.scheduler (when and
where: the Scheduler and ``run_experiment``) and gnorm.progress; these names stay importable from
here."""

from gnorm.planner import (Plan, PendingCell, _Cell, budget, checkpointed_parts, part_of,  # noqa: F401
                           pending_cells, plan_experiment, planned_cells, resolve_critical_norms, seed_groups,
                           split_cell, submission_order)
from gnorm.progress import Progress, StudyCounts, time_left  # noqa: F401
from gnorm.scheduler import Scheduler, run_experiment  # noqa: F401
from gnorm.training.build import train_trunk  # noqa: F401


def trunk_states(runs, registry, files, threads):  # type: ignore[no-untyped-def]
    """The state each forked run starts from: loaded where its trunk is stored, else trained in this
    process (as a worker's trunk task would) and stored first. Kept for callers of the old coordinator;
    the scheduler trains trunks as executor jobs."""
    from gnorm.training.jobs import TrunkJob
    from gnorm.worker import train_trunk_task

    missing = [run for run in runs if not files.has(run.trunk_id)]
    if missing:
        for run, state in zip(missing, train_trunk_task(TrunkJob(missing), threads, registry)):
            files.save(run.trunk_id, run.trunk_identity(), state)
    return [files.load(run.trunk_id) for run in runs]
