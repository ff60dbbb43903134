"""The coordinator: turns an experiment into cells, resolves each cell's critical norm from the cell it
depends on, hands the cells the store does not have yet to an executor, retries failed ones, and writes
each run as its cell's task returns it. Executors' workers only train."""

from __future__ import annotations

import sys
import time
from concurrent.futures import FIRST_COMPLETED, BrokenExecutor, Future, wait
from pathlib import Path
from typing import Any, Callable, Iterable, TextIO

import attrs

from gnorm.checkpoints import CHECKPOINT_FOLDER, checkpoint_path, remove_checkpoint
from gnorm.components import ExecutorContext, RunRecord
from gnorm.config import Experiment, ExecutorChoice, RunSpec, Stage, cells_of, executor_choice
from gnorm.engine import CellJob, resolve_device, torch_matmul_precision, train_trunk
from gnorm.errors import UserError
from gnorm.forks import TRUNK_FOLDER, TrunkFiles, TrunkState
from gnorm.registry import Registry
from gnorm.science import critical_norm
from gnorm.store import Store
from gnorm.tables import cell_label
from gnorm.worker import RunResult, torch_threads, train_cell_task


@attrs.frozen
class Plan:
    """Every cell of the experiment, in order, with its stage."""

    cells: list[tuple[Stage, list[RunSpec]]]


def plan_experiment(experiment: Experiment) -> Plan:
    """The cells to train; refuses (before anything is written) a device this machine lacks, or a
    matmul precision its device does not compute."""
    for device, precision in sorted({(run.training.device, run.training.matmul_precision) for run in experiment.runs}):
        try:
            torch_matmul_precision(precision, resolve_device(device))
        except UserError as error:  # name the file the setting came from
            raise UserError([attrs.evolve(problem, source=problem.source or str(experiment.source))
                             for problem in error.problems]) from None
    return Plan([(stage, cell) for stage in experiment.stages for cell in cells_of(stage.runs)])


@attrs.frozen
class StudyCounts:
    """Where a study stands: runs done, running, failed and ``remaining`` (neither settled nor
    running), seconds elapsed, and the step budgets (sum of ``max_steps``) of the runs settled since
    this invocation started and of those not settled yet."""

    done: int
    running: int
    failed: int
    remaining: int
    elapsed: float
    settled_budget_here: int
    unsettled_budget: int

    @property
    def time_left(self) -> float | None:
        return time_left(self.elapsed, self.settled_budget_here, self.unsettled_budget)


def time_left(elapsed: float, settled: int, unsettled: int) -> float | None:
    """Seconds left at this invocation's pace: elapsed * unsettled / settled, both counted in step
    budgets (a run's ``max_steps``), so that a cell with four times the budget counts as four times
    the work (None before any run has settled). Runs that were stored before this invocation do not
    count towards the pace."""
    return None if settled == 0 else elapsed * unsettled / settled


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else (
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s")


class Progress:
    """One line per cell event, and the study's state (runs done / running / failed / remaining, time
    left): a live line on a terminal, else a plain line at most once per ``every`` seconds."""

    def __init__(self, stream: TextIO | None = None, every: float = 30.0):
        self.stream, self.every = stream if stream is not None else sys.stderr, every  # stderr as it is now
        self.live = self.stream.isatty()
        self.last = time.monotonic()
        self.status = ""

    def _print(self, line: str) -> None:
        print(("\r\x1b[K" if self.live else "") + line, file=self.stream, flush=True)
        if self.live and self.status:
            print(self.status, end="", file=self.stream, flush=True)

    def cell(self, label: str, text: str) -> None:
        self._print(f"{label}: {text}")

    def update(self, counts: StudyCounts, force: bool = False) -> None:
        left = counts.time_left
        self.status = (f"runs: {counts.done} done, {counts.running} running, {counts.failed} failed, "
                       f"{counts.remaining} remaining; {_duration(counts.elapsed)} elapsed"
                       + (f", about {_duration(left)} left" if left is not None else ""))
        now = time.monotonic()
        if self.live:
            print(f"\r{self.status}\x1b[K", end="", file=self.stream, flush=True)
        elif force or now - self.last >= self.every:
            print(self.status, file=self.stream, flush=True)
            self.last = now

    def close(self) -> None:
        if self.live and self.status:
            print(file=self.stream, flush=True)


def resolve_critical_norms(stage: Stage, cell: list[RunSpec],
                           records: Iterable[RunRecord]) -> tuple[float | None, dict[str, float]]:
    """A cell's Wc and per-group Wc_g. A number given as the stage's ``critical_norm`` is Wc (no
    per-group values); a stage name means the cell's matched source runs among ``records``:
    Wc = median over grokked source seeds of ||W|| at T_grok, and Wc_g = median over them of the
    group's norm at T_grok (fact ``norm_at_grok/<group>``). (None, {}) when no source seed grokked."""
    if not isinstance(stage.critical_norm, str):
        return stage.critical_norm, {}
    source_ids = set(cell[0].critical_norm_source)
    grokked = [r for r in records if r.run_id in source_ids and r.norm_at_grok is not None]
    wc = critical_norm([r.norm_at_grok for r in grokked])
    if wc is None:
        return None, {}
    prefix = "norm_at_grok/"
    groups = sorted({key[len(prefix):] for r in grokked for key in r.facts if key.startswith(prefix)})
    group_wcs = {group: critical_norm([r.facts.get(prefix + group) for r in grokked]) for group in groups}
    return wc, group_wcs


def trunk_states(runs: list[RunSpec], registry: Registry, files: TrunkFiles, threads: int) -> list[TrunkState]:
    """The state each forked run starts from: loaded where its trunk is stored, else trained here, in
    the coordinator (the missing seeds together, once, with ``threads`` torch threads like any cell)
    and stored before any arm uses it. Arms then carry their states to whichever worker trains them."""
    missing = [run for run in runs if not files.has(run.trunk_id)]
    if missing:
        with torch_threads(threads):
            states = train_trunk(CellJob(missing, None), registry)
        for run, state in zip(missing, states):
            files.save(run.trunk_id, run.trunk_identity(), state)
    return [files.load(run.trunk_id) for run in runs]


@attrs.define
class _Cell:
    stage: Stage
    runs: list[RunSpec]  # the runs still to train
    label: str
    critical_norm: float | None = None
    group_critical_norms: dict[str, float] = attrs.field(factory=dict)
    attempts: int = 0
    resolved: bool = False  # Wc looked up (and the cell split, where it was)


def seed_groups(seeds: int, idle_workers: int, other_ready_cells: int) -> int:
    """Into how many parts a cell's seeds are split: the idle workers shared evenly between this cell and
    the other ready ones, so that none idles when too few cells are ready (the start of a study, its
    tail, a lone free stage); never more parts than seeds. Each part trains its seeds exactly as the
    whole cell would (members are independent and every member computes alone, chunking included), so
    splitting moves only wall time."""
    return max(1, min(seeds, idle_workers // (other_ready_cells + 1)))


def split_cell(item: "_Cell", parts: int) -> list["_Cell"]:
    """``item`` as ``parts`` cells of consecutive seeds, sizes differing by at most one (the same stage,
    Wc and label, with the seeds)."""
    if parts <= 1:
        return [item]
    size, extra = divmod(len(item.runs), parts)
    bounds = [0]
    for part in range(parts):
        bounds.append(bounds[-1] + size + (part < extra))
    return [part_of(item, item.runs[start:end]) for start, end in zip(bounds, bounds[1:])]


def part_of(item: "_Cell", runs: list[RunSpec]) -> "_Cell":
    """The part of ``item`` that trains ``runs`` (labelled with its seeds; ``item`` itself for all of them)."""
    if runs == item.runs:
        return item
    return attrs.evolve(item, runs=runs, label=f"{item.label} seeds {runs[0].seed}-{runs[-1].seed}")


def checkpointed_parts(item: "_Cell", has_checkpoint: Callable[[list[RunSpec]], bool]) -> list["_Cell"] | None:
    """``item`` in the parts that earlier tasks left checkpoints for, so that each resumes, whatever
    split this invocation would choose: from each run on, the longest run of consecutive seeds with a
    checkpoint is a part, and the seeds between such parts are parts of their own. None when no part of
    ``item`` has a checkpoint. (Earlier parts were consecutive seeds of the runs then unstored, and all
    of their runs are unstored still, so they are consecutive among ``item.runs``.)"""
    runs, parts, gap, start = item.runs, [], [], 0
    while start < len(runs):
        end = next((end for end in range(len(runs), start, -1) if has_checkpoint(runs[start:end])), None)
        if end is None:
            gap.append(runs[start])
            start += 1
            continue
        parts += [gap, runs[start:end]] if gap else [runs[start:end]]
        gap, start = [], end
    if not parts:
        return None
    return [part_of(item, part) for part in parts + ([gap] if gap else [])]


def budget(item: "_Cell") -> int:
    """A cell's most model-steps: its seeds times its step budget (the longest a cell can take)."""
    return len(item.runs) * item.runs[0].training.max_steps


def submission_order(items: list["_Cell"]) -> list["_Cell"]:
    """The order waiting cells are handed to free workers: first those already resolved (the other
    parts of a split cell, and retries), then cells that other waiting cells take Wc from (they unlock
    more work), then the biggest ``budget`` first, ties in plan order; so that a long cell does not
    start last and leave the other workers idle at the end."""
    sources = {run_id for item in items for run_id in item.runs[0].critical_norm_source}

    def key(item: "_Cell") -> tuple[bool, bool, int]:
        return (not item.resolved, not any(run.run_id in sources for run in item.runs), -budget(item))
    return sorted(items, key=key)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or "(no message)"
    return f"{type(error).__name__}: {text}"[:500]


def run_experiment(experiment: Experiment, registry: Registry, store: Store, progress: Progress,
                   executor: ExecutorChoice | None = None) -> list[str]:
    """Train every run the store lacks on the experiment's executor; return one line per problem (a cell
    that could not start, and one summary line for runs that failed on every attempt).

    A cell whose Wc comes from another stage starts as soon as its own source cell is settled, not
    after that whole stage. A task that raises is submitted again up to ``retries`` times, then its
    runs are stored as failed and the study goes on.
    """
    plan = plan_experiment(experiment)
    store.set_plan(str(experiment.source), experiment.text, [(r.run_id, r.stage, r.cell) for r in experiment.runs])
    choice = executor or executor_choice(experiment, registry)
    component = registry.get("executor", choice.name)
    finished = store.finished_run_ids()
    waiting = [_Cell(stage, todo, f"[{stage.name}] {cell_label(cell[0].cell)}")
               for stage, cell in plan.cells if (todo := [run for run in cell if run.run_id not in finished])]
    unsettled = {run.run_id for item in waiting for run in item.runs}
    budgets = {run.run_id: run.training.max_steps for item in waiting for run in item.runs}  # step budgets
    if not waiting:
        return []
    counts = {"done": len({r.run_id for r in experiment.runs} & finished), "failed": 0, "settled_budget": 0}
    problems: list[str] = []
    failed_lines: list[str] = []
    started = time.monotonic()

    def make_pool() -> Any:
        return component.factory(choice.config, ExecutorContext(registry, choice.threads))

    pool = make_pool()
    declared_capacity = getattr(pool, "capacity", None)
    capacity = declared_capacity or len(waiting)
    in_flight: dict[Future, tuple[_Cell, Any]] = {}  # future -> (cell, the pool it was submitted to)
    failed_ids: set[str] = set()
    checkpoints = store.directory.resolve() / CHECKPOINT_FOLDER

    def checkpoint_of(runs: list[RunSpec]) -> Path:
        return checkpoint_path(checkpoints, [run.run_id for run in runs])

    def submit(item: _Cell) -> None:
        item.attempts += 1
        start_states = None
        if item.runs[0].fork is not None:
            try:
                start_states = trunk_states(item.runs, registry, TrunkFiles(store.directory / TRUNK_FOLDER),
                                            choice.threads)
            except Exception as error:  # a trunk that cannot train fails its cell like any training error
                failed(item, error)
                return
        job = CellJob(item.runs, item.critical_norm, item.group_critical_norms, start_states,
                      str(checkpoint_of(item.runs)))
        shared_registry = registry if component.in_process else None
        attempt = f", attempt {item.attempts}" if item.attempts > 1 else ""
        wc = "" if item.critical_norm is None else f", Wc {item.critical_norm:.4g}"
        progress.cell(item.label, f"started ({len(item.runs)} seeds{wc}{attempt})")
        in_flight[pool.submit(train_cell_task, job, choice.threads, shared_registry)] = (item, pool)

    def report(force: bool = False) -> None:
        running = sum(len(item.runs) for item, _ in in_flight.values())
        progress.update(StudyCounts(counts["done"], running, counts["failed"], len(unsettled) - running,
                                    time.monotonic() - started, counts["settled_budget"],
                                    sum(budgets[run_id] for run_id in unsettled)), force)

    def stored(item: _Cell, results: list[RunResult]) -> None:
        grokked = 0
        for result in results:
            store.write_run(result.record, result.steps, result.metrics)
            registry.hook.gnorm_after_run(record=result.record)
            unsettled.discard(result.record.run_id)
            grokked += not result.record.censored
        remove_checkpoint(checkpoint_of(item.runs))
        counts["done"] += len(results)
        counts["settled_budget"] += sum(budgets[result.record.run_id] for result in results)
        seconds = max((r.record.facts.get("wall_seconds", 0.0) for r in results), default=0.0)
        progress.cell(item.label, f"{grokked}/{len(results)} grokked, {seconds:.0f}s")

    def failed(item: _Cell, error: BaseException) -> None:
        why = _one_line(error)
        if item.attempts <= choice.retries:
            progress.cell(item.label, f"failed ({why}); trying again")
            waiting.insert(0, item)
            return
        for run in item.runs:
            store.write_failed(run.run_id, run.stage, run.cell, run.seed, run.plain(), run.training.max_steps,
                               why, item.attempts)
            unsettled.discard(run.run_id)
            failed_ids.add(run.run_id)
        remove_checkpoint(checkpoint_of(item.runs))  # the next invocation tries these runs from the start
        counts["failed"] += len(item.runs)
        counts["settled_budget"] += sum(budgets[run.run_id] for run in item.runs)
        progress.cell(item.label, f"failed {item.attempts} times, its {len(item.runs)} runs are stored as failed: {why}")
        failed_lines.append(why)

    def fill() -> None:
        """Submit ready cells (their source cells settled) while workers are free, in
        ``submission_order``."""
        for item in submission_order(waiting):
            if len(in_flight) >= capacity:
                return
            if unsettled & set(item.runs[0].critical_norm_source):
                continue  # its source cell is still training
            waiting.remove(item)
            if failed_ids & set(item.runs[0].critical_norm_source):  # a Wc from part of its source: never
                problems.append(f"{item.label}: not run, runs of its source cell failed; run the file again once "
                                "they succeed")
                unsettled.difference_update(run.run_id for run in item.runs)
                continue
            if not item.resolved:
                item.resolved = True
                from_stage = isinstance(item.stage.critical_norm, str)
                item.critical_norm, item.group_critical_norms = resolve_critical_norms(
                    item.stage, item.runs, store.records() if from_stage else [])
                if from_stage and item.critical_norm is None:
                    problems.append(f"{item.label}: not run, no seed of its source cell in stage "
                                    f"{item.stage.critical_norm!r} grokked")
                    unsettled.difference_update(run.run_id for run in item.runs)
                    continue
                parts = checkpointed_parts(item, lambda runs: checkpoint_of(runs).exists())
                if parts is None and declared_capacity:  # too few cells for the workers: split this one's seeds
                    ready = sum(1 for other in waiting if not unsettled & set(other.runs[0].critical_norm_source))
                    parts = split_cell(item, seed_groups(len(item.runs), declared_capacity - len(in_flight), ready))
                if parts is not None:
                    waiting[0:0] = parts[1:]
                    item = parts[0]
                    if len(parts) > 1:
                        submit(item)
                        return fill()
            submit(item)

    try:
        while waiting or in_flight:
            fill()
            if not in_flight:
                if waiting:
                    raise RuntimeError("cells wait on runs that nothing is training")  # cannot happen
                break
            report()
            done, _ = wait(in_flight, timeout=1.0 if progress.live else progress.every,
                           return_when=FIRST_COMPLETED)
            broken = False
            for future in done:
                item, its_pool = in_flight.pop(future)
                if future.cancelled() or isinstance(future.exception(), BrokenExecutor):
                    # a worker died and took its pool with it: not this cell's fault, so not an attempt
                    why = "cancelled" if future.cancelled() else _one_line(future.exception())
                    progress.cell(item.label, f"lost with its worker ({why}); trying again")
                    item.attempts -= 1
                    waiting.insert(0, item)
                    broken |= its_pool is pool
                elif future.exception() is None:
                    stored(item, future.result())
                else:
                    failed(item, future.exception())
            if broken:  # the cells the dead pool still held come back cancelled or broken, and are retried
                pool.shutdown(wait=False, cancel_futures=True)
                pool = make_pool()
    except BaseException:
        getattr(pool, "terminate_workers", lambda: pool.shutdown(wait=False, cancel_futures=True))()
        raise
    pool.shutdown(wait=True)
    report(force=True)
    progress.close()
    if failed_lines:
        problems.append(f"{counts['failed']} runs failed {choice.retries + 1} times and are stored as failed "
                        f"(first error: {failed_lines[0]}); see gnorm show, run again to retry them")
    return problems


def planned_cells(plan: Iterable[tuple[str, str, dict[str, Any]]]) -> dict[str, dict[str, int]]:
    """stage -> cell label -> number of planned seeds, from (run_id, stage, cell) triples."""
    planned: dict[str, dict[str, int]] = {}
    for _, stage, cell in plan:
        label = cell_label(cell)
        planned.setdefault(stage, {})[label] = planned.get(stage, {}).get(label, 0) + 1
    return planned
