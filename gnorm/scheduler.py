"""The coordinator: hands the cells the store lacks to an executor as their Wc becomes known, trains
a fork's trunk as a job of its own before its arms, retries failed cells, writes each run as its
cell's results return, and tells observers (lifecycle hooks and the file's observers, all in this
process; gnorm.observers). Executors' workers only train."""

from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, BrokenExecutor, Future, wait
from pathlib import Path
from typing import Any

from gnorm.analysis.records import cell_label
from gnorm.checkpoints import CHECKPOINT_FOLDER, checkpoint_path, remove_checkpoint
from gnorm.components import ExecutorContext
from gnorm.executor_table import ExecutorChoice, executor_choice
from gnorm.forks import TRUNK_FOLDER, TrunkFiles, TrunkState
from gnorm.interrupts import raise_if_interrupted
from gnorm.merging import merge_key, mergeable, merged, unmerged
from gnorm.observers import Lifecycle, ObserverChoice, hook_listeners, study_lifecycle
from gnorm.planner import (PendingCell, checkpointed_parts, pending_cells, plan_experiment, resolve_critical_norms,
                           seed_groups, split_cell, submission_order)
from gnorm.progress import Progress, StudyCounts
from gnorm.registry import Registry
from gnorm.runmodel import Experiment, RunSpec
from gnorm.snapshots import write_snapshots
from gnorm.store import Store
from gnorm.training.jobs import CellJob, TrunkJob
from gnorm.worker import RunResult, train_cell_task, train_trunk_task


def run_experiment(experiment: Experiment, registry: Registry, store: Store, progress: Progress,
                   executor: ExecutorChoice | None = None, observers: list[ObserverChoice] | None = None) -> list[str]:
    """Train every run the store lacks on the experiment's executor; return one line per problem (a cell
    that could not start, and one summary line for runs that failed on every attempt).

    A cell whose Wc comes from another stage starts as soon as its own source cell is settled, not
    after that whole stage. A task that raises is submitted again up to ``retries`` times, then its
    runs are stored as failed and the study goes on. ``gnorm_before_study`` and ``gnorm_after_study``
    fire around the study (the latter also when it is interrupted), told to the plain lifecycle hooks
    and to the ``observers`` (None: the file's ``[observers.<name>]`` tables); a listener that raises
    costs no result (see gnorm.observers) and its line is among the problems returned.
    """
    plan = plan_experiment(experiment)
    lifecycle = study_lifecycle(experiment, registry, store.directory, observers,
                                lambda line: progress.cell("warning", line))
    store.set_plan(str(experiment.source), experiment.text, [(r.run_id, r.stage, r.cell) for r in experiment.runs])
    scheduler = Scheduler(experiment, registry, store, progress, executor or executor_choice(experiment, registry),
                          pending_cells(plan, store.finished_run_ids()))
    scheduler.lifecycle = lifecycle
    name, results_dir = experiment.meta.name, str(store.directory)
    lifecycle.tell("before_study", results_dir=results_dir, experiment=name, runs=len(scheduler.unsettled))
    try:
        problems = scheduler.run() if scheduler.waiting else []
    finally:
        lifecycle.tell("after_study", results_dir=results_dir, experiment=name, done=scheduler.stored_here,
                       failed=scheduler.failed_count)
    return problems + lifecycle.problems


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or "(no message)"
    return f"{type(error).__name__}: {text}"[:500]


class Scheduler:
    """One study's cells in flight.

    State: ``waiting`` (cells not submitted, in plan order; retries and parts go first), ``in_flight``
    (future -> the cell or trunk job and the pool it went to), ``trunks_in_flight`` (trunk ids being
    trained), ``unsettled`` (run ids neither stored nor given up), ``failed_ids``, the counts, and the
    problems to report. Verbs: ``fill`` (submit ready cells while workers are free), ``submit``,
    ``stored``, ``failed``, ``lost`` (a worker died with the job), ``run`` (until nothing is left).
    """

    def __init__(self, experiment: Experiment, registry: Registry, store: Store, progress: Progress,
                 choice: ExecutorChoice, waiting: list[PendingCell]):
        self.registry, self.store, self.progress, self.choice = registry, store, progress, choice
        self.snapshots = experiment.snapshots if experiment.snapshots.enabled else None
        self.component = registry.get("executor", choice.name)
        self.waiting = waiting
        self.unsettled = {run.run_id for item in waiting for run in item.runs}
        self.budgets = {run.run_id: run.training.max_steps for item in waiting for run in item.runs}  # step budgets
        self.done = len({r.run_id for r in experiment.runs} & store.finished_run_ids())
        self.stored_here = self.failed_count = self.settled_budget = 0
        self.problems: list[str] = []
        self.failed_lines: list[str] = []
        self.failed_ids: set[str] = set()
        self.in_flight: dict[Future, tuple[PendingCell | TrunkJob, Any]] = {}
        self.trunks_in_flight: set[str] = set()
        self.trunks = TrunkFiles(store.directory / TRUNK_FOLDER)
        self.checkpoints = store.directory.resolve() / CHECKPOINT_FOLDER
        self.started = time.monotonic()
        self.pool: Any = None
        #: Who hears of each stored run: the plain lifecycle hooks, and the file's observers once
        #: run_experiment has built them.
        self.lifecycle = Lifecycle(hook_listeners(registry), lambda line: progress.cell("warning", line))
        self.declared_capacity: int | None = None
        self.capacity = 0
        self.channel: Any = None  # the pool's progress channel (gnorm.progress_channels), where it has one
        self.progress_keys: dict[Future, str] = {}
        self.submitted = 0

    # -- the pool

    def make_pool(self) -> Any:
        return self.component.factory(self.choice.config, ExecutorContext(self.registry, self.choice.threads))

    def open_channel(self) -> None:
        """The pool's step-progress channel, where it offers one (``progress_channel``); progress that
        cannot start leaves the study without step lines, never stops it."""
        self.close_channel()
        try:
            self.channel = getattr(self.pool, "progress_channel", lambda receive: None)(self.progress.step)
        except Exception:
            self.channel = None

    def close_channel(self) -> None:
        channel, self.channel = self.channel, None
        if channel is not None:
            try:
                channel.close()
            except Exception:
                pass

    def reporter(self, label: str, budget: int, members: int) -> tuple[str, Any]:
        """A key for the next job, the display told of it, and its ``report`` (None without a channel)."""
        self.submitted += 1
        key = f"{self.submitted}"
        self.progress.job_started(key, label, budget, members)
        return key, None if self.channel is None else self.channel.reporter(key)

    def run(self) -> list[str]:
        """Submit, wait, store, until every cell is settled; the problems to report."""
        self.pool = self.make_pool()
        self.open_channel()
        self.declared_capacity = getattr(self.pool, "capacity", None)
        self.capacity = self.declared_capacity or len(self.waiting)
        try:
            while self.waiting or self.in_flight:
                self.fill()
                if not self.in_flight:
                    if self.waiting:
                        raise RuntimeError("cells wait on runs that nothing is training")  # cannot happen
                    break
                self.report()
                done, _ = wait(self.in_flight, timeout=1.0 if self.progress.live else self.progress.every,
                               return_when=FIRST_COMPLETED)
                raise_if_interrupted()  # a Ctrl-C that Python swallowed in a finalizer still stops the study
                broken = False
                for future in done:
                    job, its_pool = self.in_flight.pop(future)
                    self.progress.job_ended(self.progress_keys.pop(future, ""))
                    if future.cancelled() or isinstance(future.exception(), BrokenExecutor):
                        self.lost(job, "cancelled" if future.cancelled() else _one_line(future.exception()))
                        broken |= its_pool is self.pool
                    elif isinstance(job, TrunkJob):
                        self.trunk_returned(job, future)
                    elif future.exception() is None:
                        self.stored(job, future.result())
                    else:
                        self.failed(job, future.exception())
                if broken:  # the jobs the dead pool still held come back cancelled or broken, and are retried
                    self.pool.shutdown(wait=False, cancel_futures=True)
                    self.pool = self.make_pool()
                    self.open_channel()
        except BaseException:
            getattr(self.pool, "terminate_workers", lambda: self.pool.shutdown(wait=False, cancel_futures=True))()
            self.close_channel()
            self.progress.stop_table()
            raise
        self.pool.shutdown(wait=True)
        self.close_channel()  # after the workers are gone: none waits on a queue nobody reads
        self.report(force=True)
        self.progress.close()
        if self.failed_lines:
            self.problems.append(f"{self.failed_count} runs failed {self.choice.retries + 1} times and are stored "
                                 f"as failed (first error: {self.failed_lines[0]}); see gnorm show, run again to "
                                 "retry them")
        return self.problems

    # -- cells

    def checkpoint_of(self, runs: list[RunSpec]) -> Path:
        return checkpoint_path(self.checkpoints, [run.run_id for run in runs])

    def waits_on_source(self, item: PendingCell) -> bool:
        """Whether a cell's Wc source cell is still training."""
        return bool(self.unsettled & set(item.runs[0].critical_norm_source))

    def waits_on_trunk(self, item: PendingCell) -> bool:
        """Whether a forked cell's trunk is being trained."""
        return any(run.trunk_id in self.trunks_in_flight for run in item.runs if run.fork is not None)

    def fill(self) -> None:
        """Submit ready cells (their source cells settled, their trunks not in training) while workers are
        free, in ``submission_order``."""
        for item in submission_order(self.waiting):
            if len(self.in_flight) >= self.capacity:
                return
            if self.waits_on_source(item) or self.waits_on_trunk(item) or all(item is not w for w in self.waiting):
                continue  # (or merged into a cell submitted before it)
            self.waiting.remove(item)
            if not item.resolved:
                if not self.resolve(item):
                    continue
                item = self.merged_with_ready_cells(item)
                parts = checkpointed_parts(item, lambda runs: self.checkpoint_of(runs).exists())
                if parts is None and self.declared_capacity:  # too few cells for the workers: split its seeds
                    ready = sum(1 for other in self.waiting if not self.waits_on_source(other))
                    parts = split_cell(item, seed_groups(len(item.runs), self.declared_capacity - len(self.in_flight),
                                                         ready))
                if parts is not None:
                    self.waiting[0:0] = parts[1:]
                    item = parts[0]
                    if len(parts) > 1:
                        self.submit(item)
                        return self.fill()
            self.submit(item)

    def resolve(self, item: PendingCell) -> bool:
        """Look up a cell's Wc (``resolve_critical_norms``); False (the cell given up) when its source
        cell's runs failed or none of them grokked."""
        if self.failed_ids & set(item.runs[0].critical_norm_source):  # a Wc from part of its source: never
            self.give_up(item, "not run, runs of its source cell failed; run the file again once they succeed")
            return False
        item.resolved = True
        from_stage = isinstance(item.stage.critical_norm, str)
        item.critical_norm, item.group_critical_norms = resolve_critical_norms(
            item.stage, item.runs, self.store.records() if from_stage else [])
        if from_stage and item.critical_norm is None:
            self.give_up(item, f"not run, no seed of its source cell in stage {item.stage.critical_norm!r} grokked")
            return False
        return True

    def merged_with_ready_cells(self, item: PendingCell) -> PendingCell:
        """``item`` with the other waiting cells of its stage that are ready and share its merge key,
        as one job (gnorm.merging; ``item`` alone where ``merge_cells`` or the stage keeps it apart)."""
        choice = self.choice.merge_cells
        if not mergeable(item, choice):
            return item
        key, group = merge_key(item.runs[0]), [item]
        for other in [other for other in self.waiting if other.stage.name == item.stage.name and not other.resolved
                      and mergeable(other, choice) and not self.waits_on_source(other)
                      and not self.waits_on_trunk(other) and merge_key(other.runs[0]) == key]:
            self.waiting.remove(other)
            if self.resolve(other):
                group.append(other)
        return merged(group)

    def give_up(self, item: PendingCell, why: str) -> None:
        """A cell that will not run in this invocation (its runs are not stored)."""
        self.problems.append(f"{item.label}: {why}")
        self.unsettled.difference_update(run.run_id for run in item.runs)

    def submit(self, item: PendingCell) -> None:
        """Hand ``item`` to the pool; a forked cell whose trunks are not stored yet waits for a trunk job
        instead (submitted here for the trunks nothing trains yet)."""
        start_states = None
        if item.runs[0].fork is not None:
            missing = [run for run in item.runs if not self.trunks.has(run.trunk_id)]
            if missing:
                self.submit_trunk(TrunkJob(missing), item.label)
                self.waiting.insert(0, item)
                return
            try:
                start_states = [self.trunks.load(run.trunk_id) for run in item.runs]
            except Exception as error:  # a damaged trunk file fails its cell like any training error
                item.attempts += 1
                self.failed(item, error)
                return
        item.attempts += 1
        cells = {run.cell_id for run in item.runs}
        if item.cell_norms is None or len(cells) == 1:  # one cell: its job (and checkpoint) as never merged
            critical_norm, group_critical_norms = item.norms_of(item.runs[0])
            job = CellJob(item.runs, critical_norm, group_critical_norms, start_states,
                          str(self.checkpoint_of(item.runs)), self.snapshots)
        else:
            job = CellJob(item.runs, None, {}, start_states, str(self.checkpoint_of(item.runs)), self.snapshots,
                          cell_norms={cell: item.cell_norms[cell] for cell in sorted(cells)})
        attempt = f", attempt {item.attempts}" if item.attempts > 1 else ""
        wc = "" if job.critical_norm is None else f", Wc {job.critical_norm:.4g}"
        self.progress.cell(item.label, f"started ({len(item.runs)} seeds{wc}{attempt})")
        key, report = self.reporter(item.label, item.runs[0].training.max_steps, len(item.runs))
        future = self.pool.submit(train_cell_task, job, self.choice.threads, self.shared_registry, report)
        self.in_flight[future], self.progress_keys[future] = (item, self.pool), key

    @property
    def shared_registry(self) -> Registry | None:
        """The coordinator's registry, for executors whose tasks run in this process."""
        return self.registry if self.component.in_process else None

    def stored(self, item: PendingCell, results: list[RunResult]) -> None:
        """A cell's results: each run announced to observers and written (its snapshot files first), its
        checkpoint removed."""
        grokked = 0
        for result in results:
            self.announce_and_write(item, result)
            self.unsettled.discard(result.record.run_id)
            grokked += not result.record.censored
        remove_checkpoint(self.checkpoint_of(item.runs))
        self.done += len(results)
        self.stored_here += len(results)
        self.settled_budget += sum(self.budgets[result.record.run_id] for result in results)
        seconds = max((r.record.facts.get("wall_seconds", 0.0) for r in results), default=0.0)
        self.progress.cell(item.label, f"{grokked}/{len(results)} grokked, {seconds:.0f}s")

    def announce_and_write(self, item: PendingCell, result: RunResult) -> None:
        """The run written to the store (its snapshot files first), then told to observers: ``before_run``, ``after_evaluation``
        for each evaluation in order, ``after_run``."""
        tell, record, results_dir = self.lifecycle.tell, result.record, str(self.store.directory)
        run = next(run for run in item.runs if run.run_id == record.run_id)
        label = cell_label(run.cell)
        snapshots = write_snapshots(self.store.directory, record.run_id, result.snapshots,
                                    self.snapshots is not None and self.snapshots.optimizer_state)
        self.store.write_run(record, result.steps, result.metrics, snapshots)  # first: no observer can cost it
        tell("before_run", run_id=run.run_id, stage=run.stage, seed=run.seed, config=run.plain(),
             results_dir=results_dir, cell_label=label, critical_norm=item.norms_of(run)[0])
        for position, step in enumerate(result.steps):
            tell("after_evaluation", run_id=run.run_id, step=step, results_dir=results_dir, cell_label=label,
                 metrics={key: values[position] for key, values in result.metrics.items()})
        tell("after_run", record=record, results_dir=results_dir, cell_label=label,
             critical_norm=item.norms_of(run)[0])

    def failed(self, item: PendingCell, error: BaseException) -> None:
        """A cell whose task raised: back to the front of ``waiting`` while it has retries left (a merged
        job's cells each on its own), else its runs are stored as failed."""
        why = _one_line(error)
        if item.attempts <= self.choice.retries:
            cells = unmerged(item)  # a merged job's cells are tried apart: one that fails cannot fail the rest
            apart = " cell by cell" if len(cells) > 1 else ""
            self.progress.cell(item.label, f"failed ({why}); trying again{apart}")
            if len(cells) > 1:
                remove_checkpoint(self.checkpoint_of(item.runs))
            self.waiting[0:0] = cells
            return
        for run in item.runs:
            self.store.write_failed(run.run_id, run.stage, run.cell, run.seed, run.plain(), run.training.max_steps,
                                    why, item.attempts)
            self.unsettled.discard(run.run_id)
            self.failed_ids.add(run.run_id)
        remove_checkpoint(self.checkpoint_of(item.runs))  # the next invocation tries these runs from the start
        self.failed_count += len(item.runs)
        self.settled_budget += sum(self.budgets[run.run_id] for run in item.runs)
        self.progress.cell(item.label, f"failed {item.attempts} times, its {len(item.runs)} runs are stored as "
                                       f"failed: {why}")
        self.failed_lines.append(why)

    def lost(self, job: PendingCell | TrunkJob, why: str) -> None:
        """A job whose worker died and took its pool with it: not the job's fault, so not an attempt. A
        cell goes back to the front of ``waiting``; a trunk is asked for again by the cells that wait
        on it."""
        if isinstance(job, TrunkJob):
            self.trunks_in_flight.difference_update(run.trunk_id for run in job.runs)
            return
        self.progress.cell(job.label, f"lost with its worker ({why}); trying again")
        job.attempts -= 1
        self.waiting.insert(0, job)

    # -- trunks

    def submit_trunk(self, job: TrunkJob, label: str) -> None:
        """Train the trunks of ``job`` on a worker, like a cell."""
        self.trunks_in_flight.update(run.trunk_id for run in job.runs)
        self.progress.cell(label, f"training its trunk ({len(job.runs)} seeds to step {job.runs[0].fork.at_step})")
        key, report = self.reporter(f"{label} trunk", job.runs[0].fork.at_step, len(job.runs))
        future = self.pool.submit(train_trunk_task, job, self.choice.threads, self.shared_registry, report)
        self.in_flight[future], self.progress_keys[future] = (job, self.pool), key

    def trunk_returned(self, job: TrunkJob, future: Future) -> None:
        """A trunk job's states, stored under ``trunks/`` before any arm uses them; when it raised,
        every cell waiting on it fails an attempt, as if its own training had raised."""
        self.trunks_in_flight.difference_update(run.trunk_id for run in job.runs)
        error = future.exception()
        if error is None:
            states: list[TrunkState] = future.result()
            for run, state in zip(job.runs, states):
                self.trunks.save(run.trunk_id, run.trunk_identity(), state)
            return
        trunk_ids = {run.trunk_id for run in job.runs}
        for item in [item for item in self.waiting if any(run.trunk_id in trunk_ids for run in item.runs)]:
            self.waiting.remove(item)
            item.attempts += 1
            self.failed(item, error)

    # -- progress

    def report(self, force: bool = False) -> None:
        running = sum(len(job.runs) for job, _ in self.in_flight.values() if isinstance(job, PendingCell))
        self.progress.update(StudyCounts(self.done, running, self.failed_count, len(self.unsettled) - running,
                                         time.monotonic() - self.started, self.settled_budget,
                                         sum(self.budgets[run_id] for run_id in self.unsettled)), force)
