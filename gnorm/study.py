"""The coordinator: turns an experiment into cells, resolves each cell's critical norm from the stage
it depends on, trains what the store does not have yet, and writes each run as it finishes."""

from __future__ import annotations

import sys
import time
from typing import Any, Iterable, TextIO

import attrs

from gnorm.components import RunRecord
from gnorm.config import Experiment, RunSpec, Stage, cells_of
from gnorm.engine import CellJob, RunLog, resolve_device, train_cell, train_trunk
from gnorm.forks import TRUNK_FOLDER, TrunkFiles, TrunkState
from gnorm.registry import Registry
from gnorm.science import critical_norm
from gnorm.store import Store
from gnorm.tables import cell_label


@attrs.frozen
class Plan:
    """Every cell of the experiment, in order, with its stage."""

    cells: list[tuple[Stage, list[RunSpec]]]


def plan_experiment(experiment: Experiment) -> Plan:
    """The cells to train; refuses (before anything is written) a device this machine lacks."""
    for device in sorted({run.training.device for run in experiment.runs}):
        resolve_device(device)
    return Plan([(stage, cell) for stage in experiment.stages for cell in cells_of(stage.runs)])


class Progress:
    """Plain lines when not a terminal (one per cell and at most one per ``every`` seconds), a live
    line when it is."""

    def __init__(self, stream: TextIO = sys.stderr, every: float = 30.0):
        self.stream, self.every = stream, every
        self.live = stream.isatty()
        self.last = 0.0

    def start(self, text: str) -> None:
        self.text, self.started, self.last = text, time.monotonic(), time.monotonic()
        if not self.live:
            print(f"{text}: started", file=self.stream, flush=True)

    def update(self, step: int, budget: int, running: int, total: int) -> None:
        now = time.monotonic()
        line = f"{self.text}: step {step}/{budget}, {running}/{total} seeds running, {now - self.started:.0f}s"
        if self.live:
            print(f"\r{line}\x1b[K", end="", file=self.stream, flush=True)
        elif now - self.last >= self.every:
            print(line, file=self.stream, flush=True)
            self.last = now

    def finish(self, text: str) -> None:
        print(("\r\x1b[K" if self.live else "") + f"{self.text}: {text}", file=self.stream, flush=True)


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


def trunk_states(runs: list[RunSpec], registry: Registry, files: TrunkFiles) -> list[TrunkState]:
    """The state each forked run starts from: loaded where its trunk is stored, else trained (the
    missing seeds together, once) and stored before any arm uses it."""
    missing = [run for run in runs if not files.has(run.trunk_id)]
    if missing:
        for run, state in zip(missing, train_trunk(CellJob(missing, None), registry)):
            files.save(run.trunk_id, run.trunk_identity(), state)
    return [files.load(run.trunk_id) for run in runs]


def run_experiment(experiment: Experiment, registry: Registry, store: Store, progress: Progress) -> list[str]:
    """Train every run the store lacks; return one line per cell that could not start."""
    plan = plan_experiment(experiment)
    store.set_plan(str(experiment.source), experiment.text, [(r.run_id, r.stage, r.cell) for r in experiment.runs])
    finished = store.finished_run_ids()
    skipped: list[str] = []
    for stage, cell in plan.cells:
        todo = [run for run in cell if run.run_id not in finished]
        if not todo:
            continue
        label = f"[{stage.name}] {cell_label(cell[0].cell)}"
        from_stage = isinstance(stage.critical_norm, str)
        wc, group_wcs = resolve_critical_norms(stage, cell, store.records() if from_stage else [])
        if from_stage and wc is None:
            skipped.append(f"{label}: not run, no seed of its source cell in stage {stage.critical_norm!r} grokked")
            continue
        progress.start(f"{label} ({len(todo)} seeds{'' if wc is None else f', Wc {wc:.4g}'})")
        start_states = None
        if todo[0].fork is not None:
            start_states = trunk_states(todo, registry, TrunkFiles(store.directory / TRUNK_FOLDER))
        count = [0, 0]

        def finished_run(record: RunRecord, log: RunLog) -> None:
            store.write_run(record, log.steps, log.metrics)
            registry.hook.gnorm_after_run(record=record)
            count[0] += 1
            count[1] += not record.censored

        train_cell(CellJob(todo, wc, group_wcs, start_states), registry, finished_run,
                   lambda step, running: progress.update(step, todo[0].training.max_steps, running, len(todo)))
        progress.finish(f"{count[1]}/{count[0]} grokked, {time.monotonic() - progress.started:.0f}s")
    return skipped


def planned_cells(plan: Iterable[tuple[str, str, dict[str, Any]]]) -> dict[str, dict[str, int]]:
    """stage -> cell label -> number of planned seeds, from (run_id, stage, cell) triples."""
    planned: dict[str, dict[str, int]] = {}
    for _, stage, cell in plan:
        label = cell_label(cell)
        planned.setdefault(stage, {})[label] = planned.get(stage, {}).get(label, 0) + 1
    return planned
