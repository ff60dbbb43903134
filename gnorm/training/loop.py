"""The training loop: a cell's already-built components (gnorm.training.build) trained step by step.

One loop trains both a cell and a fork's trunk: a trunk is a cell that trains to ``fork.at_step`` with
no evaluations and hands back its members' states instead of records. The loop draws no random
numbers, so the state after an evaluation decides everything that follows (what makes checkpoints
exact, see gnorm.checkpoints). It fires no hooks: the coordinator tells observers about runs when
their results arrive.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import attrs
import numpy as np
import torch

from gnorm.checkpoints import Checkpoints, CellState, pickled_components, unpickled_components
from gnorm.components import BatchedOptimizer, RunRecord
from gnorm.forks import TrunkState, state_sha256
from gnorm.runmodel import SnapshotConfig
from gnorm.science import weight_norm
from gnorm.training.ensemble import Ensemble
from gnorm.training.jobs import CellJob, TrunkJob, evaluation_steps
from gnorm.training.runlog import RunLog
from gnorm.training.segments import SegmentFacts
from gnorm.training.snapshots import take_snapshots
from gnorm.training.transforms import GradientTransformChain

OnFinished = Callable[[RunRecord, RunLog], None]
#: report(step, members_left): how far training is, after the first step, then at most once per
#: ``REPORT_SECONDS``.
Report = Callable[[int, int], None]
#: Wall-clock seconds between two calls of ``report`` (reading the clock is the loop's only cost).
REPORT_SECONDS = 0.5


def no_report(step: int, members_left: int) -> None:
    """The ``report`` of callers that do not follow progress."""


@attrs.define
class CellParts:
    """A cell's components, built: the ensemble and its optimizer, the controller, the grok criterion
    (None for a trunk, which is never evaluated), the observers, and the metric keys whose value at
    T_grok each record keeps (``Observable.at_grok``)."""

    ensemble: Ensemble
    optimizer: BatchedOptimizer
    controller: Any
    criterion: Any
    observers: list[Any] = attrs.field(factory=list)
    at_grok: tuple[str, ...] = ()
    #: The gradient transforms applied to every member's gradients before the optimizer step.
    transforms: GradientTransformChain = attrs.field(factory=GradientTransformChain)
    #: The moments members keep weight snapshots at (None: none, and nothing is checked).
    snapshots: SnapshotConfig | None = None


def train_cell(job: CellJob, parts: CellParts, on_finished: OnFinished,
               on_progress: Callable[[int, int], None] = lambda step, active: None,
               report: Report = no_report) -> None:
    """Train every run of ``job`` together until each has grokked (when the schedule stops on grok) or
    the budget is spent, from the job's checkpoint where it has one; ``on_finished`` receives each run
    as soon as it is done, ``on_progress`` each evaluation (step, members evaluated), ``report`` the
    step and the members still training after the first step, then at most every ``REPORT_SECONDS``."""
    checkpoints = Checkpoints.for_job(job, parts.ensemble.labels.device)
    finished: list[dict[str, Any]] = []  # the runs done in this job, as a checkpoint keeps them

    def finish(record: RunRecord, log: RunLog) -> None:
        finished.append({"record": attrs.asdict(record), "steps": log.steps, "metrics": log.metrics,
                         "snapshots": log.snapshots})
        on_finished(record, log)

    def checkpoint(step: int, logs: list[RunLog]) -> None:
        checkpoints.save_if_due(lambda: cell_state(checkpoints.identity, step, parts, logs, finished))

    saved = checkpoints.load()
    start, logs = begin(job, parts) if saved is None else resume(job, saved, parts, finish)
    for log in train(job, parts, logs, start, finish, on_progress, checkpoint, report):
        on_finished(log.record(job.norms_of(log.run)[0], parts.ensemble.is_compiled, parts.at_grok), log)


def train_trunk(job: TrunkJob, parts: CellParts, report: Report = no_report) -> list[TrunkState]:
    """The trunk of a forked cell, trained by the same loop as any cell (``job.as_cell()``: no
    evaluations, so no member leaves early); returns every member's state at ``fork.at_step``."""
    cell = job.as_cell()
    logs = [RunLog(run) for run in cell.runs]
    first_call(parts, logs, 0)
    train(cell, parts, logs, 0, lambda record, log: None, lambda step, active: None, lambda step, logs: None, report)
    return [parts.ensemble.member_state(parts.optimizer, position) for position in range(parts.ensemble.size)]


def train(job: CellJob, parts: CellParts, logs: list[RunLog], start: int, finish: OnFinished,
          on_progress: Callable[[int, int], None], checkpoint: Callable[[int, list[RunLog]], None],
          report: Report = no_report) -> list[RunLog]:
    """Steps ``start + 1`` to ``max_steps``: an AdamW step on every member's gradient, then the
    controller, then ``report`` after the first step and whenever ``REPORT_SECONDS`` have passed since
    it last heard; at each scheduled evaluation, every member evaluated, those done handed to
    ``finish`` and dropped, and ``checkpoint`` given the chance to save. Returns the logs of the
    members still training at the end (none when all finished early)."""
    ensemble, optimizer, controller = parts.ensemble, parts.optimizer, parts.controller
    first = job.runs[0]
    schedule = set(evaluation_steps(first).tolist())
    report_at = time.monotonic()
    for step in range(start + 1, first.training.max_steps + 1):
        grads = parts.transforms.update(ensemble.gradients(ensemble.batches.at(step)), ensemble.params)
        optimizer.step(ensemble.parameters, grads)
        with torch.no_grad():
            record_facts(logs, controller.after_step(step, ensemble.norm_tensors))
        if (now := time.monotonic()) >= report_at:  # no host sync: the step count is the loop's own
            report(step, len(logs))
            report_at = now + REPORT_SECONDS
        if step not in schedule:
            continue
        done = evaluate(parts, logs, step, first.evaluation.stop_when_grokked)
        if parts.snapshots is not None:
            ending = range(len(logs)) if step == first.training.max_steps else done
            take_snapshots(parts.snapshots, ensemble, optimizer, logs, step, ending)
        on_progress(step, len(logs))
        for log in [logs[position] for position in done]:
            finish(log.record(job.norms_of(log.run)[0], ensemble.is_compiled, parts.at_grok), log)
        logs = drop_members(done, logs, parts)
        if not logs:
            return []
        checkpoint(step, logs)
    return logs


def begin(job: CellJob, parts: CellParts) -> tuple[int, list[RunLog]]:
    """A cell from its beginning (a fork's arms: from their trunk states): the runs' logs and the
    controller's first call (``before_training``, or a fork's ``after_step(at_step)``). Returns the
    step training resumes after, with the logs."""
    logs = [RunLog(run) for run in job.runs]
    start = start_from_trunk(job, parts, logs)
    first_call(parts, logs, start)
    return start, logs


def first_call(parts: CellParts, logs: list[RunLog], start: int) -> None:
    """The controller's call before the first step trained: ``after_step(start)`` on a forked state
    (``start`` > 0), else ``before_training`` where the controller has one."""
    with torch.no_grad():
        if start:  # a forked arm: the controller acts after step `start`, on the forked state
            record_facts(logs, parts.controller.after_step(start, parts.ensemble.norm_tensors))
        elif hasattr(parts.controller, "before_training"):
            record_facts(logs, parts.controller.before_training(parts.ensemble.norm_tensors))


def start_from_trunk(job: CellJob, parts: CellParts, logs: list[RunLog]) -> int:
    """Load a forked cell's trunk states; return the step training resumes after (0 when not forked).
    Each arm records the hash of the state it really starts from, and its norm there."""
    first = job.runs[0]
    if first.fork is None:
        return 0
    if job.start_states is None:
        raise ValueError(f"stage {first.stage!r} forks at step {first.fork.at_step}; its job needs the trunk states")
    ensemble, optimizer = parts.ensemble, parts.optimizer
    ensemble.start_from(optimizer, job.start_states)
    norms = weight_norm(ensemble.norm_tensors).tolist()
    for position, log in enumerate(logs):
        log.facts["fork_state_sha256"] = state_sha256(ensemble.member_state(optimizer, position))
        log.facts["norm_at_fork"] = norms[position]
    return first.fork.at_step


def resume(job: CellJob, saved: CellState, parts: CellParts, finish: OnFinished) -> tuple[int, list[RunLog]]:
    """A cell from its checkpoint: the runs that had finished are handed to ``finish`` again (in the
    order they finished), the ensemble (built from the job as usual) keeps the members still training
    and takes their saved state, and the saved controller and observers replace the built ones.
    Returns the step training resumes after, with the logs."""
    ensemble, optimizer = parts.ensemble, parts.optimizer
    runs = {run.run_id: run for run in job.runs}
    for entry in saved.finished:
        run = runs[entry["record"]["run_id"]]
        finish(RunRecord(**entry["record"]), RunLog(run, list(entry["steps"]), dict(entry["metrics"]),
                                                    snapshots=list(entry.get("snapshots", []))))
    if len(saved.members) < ensemble.size:
        positions = {run.run_id: position for position, run in enumerate(job.runs)}
        index = torch.tensor([positions[run_id] for run_id in saved.members], device=ensemble.labels.device)
        ensemble.keep(index)
        optimizer.keep(index)
    ensemble.load_stacked_state(optimizer, saved.tensors, saved.optimizer_steps)
    parts.transforms.load_state(saved.transform_states)
    parts.controller, parts.observers = unpickled_components(saved)
    return saved.step, [RunLog.from_plain(runs[run_id], data) for run_id, data in zip(saved.members, saved.logs)]


def record_facts(logs: list[RunLog], facts: dict[str, torch.Tensor] | SegmentFacts | None) -> None:
    """Per-member values a controller returned, kept as each member's facts (a merged job's: each
    segment's for its own members)."""
    if isinstance(facts, SegmentFacts):
        for start, end, found in facts:
            record_facts(logs[start:end], found)
        return
    for key, values in (facts or {}).items():
        for log, value in zip(logs, values.tolist()):
            log.facts[key] = value


def evaluate(parts: CellParts, logs: list[RunLog], step: int, stop_when_grokked: bool) -> list[int]:
    """Record one evaluation for every member; return the positions of members that are done."""
    values = {key: tensor.tolist() for key, tensor in parts.ensemble.evaluate(parts.observers).items()}
    done = []
    for position, log in enumerate(logs):
        log.append(step, {key: column[position] for key, column in values.items()})
        log.times = parts.criterion.times(np.asarray(log.steps), {k: np.asarray(v) for k, v in log.metrics.items()})
        if stop_when_grokked and log.times.t_grok is not None:
            done.append(position)
    return done


def drop_members(done: list[int], logs: list[RunLog], parts: CellParts) -> list[RunLog]:
    """Take the members at positions ``done`` out of the ensemble, the optimizer and the controller;
    return the logs of those that stay."""
    if not done:
        return logs
    keep = [i for i in range(len(logs)) if i not in done]
    if keep:
        index = torch.tensor(keep, device=parts.ensemble.labels.device)
        parts.ensemble.keep(index)
        parts.optimizer.keep(index)
        parts.transforms.keep(index)
        getattr(parts.controller, "keep", lambda index: None)(index)
    return [logs[i] for i in keep]


def cell_state(identity: str, step: int, parts: CellParts, logs: list[RunLog],
               finished: list[dict[str, Any]]) -> CellState | None:
    """The cell's state after the evaluation at ``step``, as a checkpoint keeps it (None when the
    controller or observers cannot be pickled)."""
    components = pickled_components(parts.controller, parts.observers)
    if components is None:
        return None
    ensemble, optimizer = parts.ensemble, parts.optimizer
    return CellState(identity, step, [log.run.run_id for log in logs], ensemble.stacked_state(optimizer),
                     optimizer.step_count, [log.plain() for log in logs], list(finished), components,
                     transform_states=parts.transforms.state())
