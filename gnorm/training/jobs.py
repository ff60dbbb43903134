"""What a task is handed to train (plain, picklable data): a cell's job, or a fork's trunk job."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
import numpy as np

from gnorm.forks import TrunkState
from gnorm.science import every_schedule, geometric_schedule

if TYPE_CHECKING:
    from gnorm.runmodel import RunSpec, SnapshotConfig

#: A cell's critical norms: Wc (None when not known) and Wc per weight-norm group.
CriticalNorms = tuple[float | None, dict[str, float]]


@attrs.frozen
class CellJob:
    """One cell's runs (same settings, different seeds) and the critical norm its controller uses, in
    total and per weight-norm group (empty when not known); for a forked cell, the trunk state each run
    starts from (see gnorm.forks); the file its checkpoints go to (None: no checkpoints; see
    gnorm.checkpoints); and the moments its runs keep weight snapshots at (None: none; see
    gnorm.snapshots).

    A job may train several cells of one stage together (see gnorm.merging): then ``cell_norms`` maps
    each cell's id to its own (Wc, per-group Wc), its runs sit consecutively in ``runs`` (one
    *segment* per cell, each with its own controller), and ``critical_norm`` is unused."""

    runs: list[RunSpec]
    critical_norm: float | None
    group_critical_norms: dict[str, float] = attrs.field(factory=dict)
    start_states: list[TrunkState] | None = None
    checkpoint: str | None = None
    snapshots: SnapshotConfig | None = None
    cell_norms: dict[str, CriticalNorms] | None = None

    def norms_of(self, run: RunSpec) -> CriticalNorms:
        """The (Wc, per-group Wc) that ``run``'s controller uses and its record keeps."""
        if self.cell_norms is None:
            return self.critical_norm, dict(self.group_critical_norms)
        return self.cell_norms[run.cell_id]

    def segments(self) -> list[tuple[int, int]]:
        """The (start, end) positions in ``runs`` of each maximal stretch of runs of one cell: one
        segment for a job of one cell."""
        if self.cell_norms is None:
            return [(0, len(self.runs))]
        bounds = [0] + [i for i in range(1, len(self.runs)) if self.runs[i].cell_id != self.runs[i - 1].cell_id]
        return list(zip(bounds, bounds[1:] + [len(self.runs)]))


@attrs.frozen
class TrunkJob:
    """The trunks of forked runs (see gnorm.forks): each run's seed trained from its usual
    initialization and split for ``fork.at_step`` steps under the fork's controller, with no
    evaluations; the task returns every member's state then (one per run, in order)."""

    runs: list[RunSpec]

    def as_cell(self) -> CellJob:
        """The trunk as the cell the training loop trains: the runs with ``max_steps = fork.at_step``
        (compiling is decided on that budget, so the trunk is computed the same way whichever arm asks
        for it), no Wc, no checkpoints."""
        at_step = self.runs[0].fork.at_step
        return CellJob([attrs.evolve(run, training=attrs.evolve(run.training, max_steps=at_step))
                        for run in self.runs], None)


def evaluation_steps(run: RunSpec) -> np.ndarray:
    """The scheduled evaluation steps; a forked run's are those after its fork step."""
    evaluation, budget = run.evaluation, run.training.max_steps
    if evaluation.schedule == "geometric":
        steps = geometric_schedule(budget, evaluation.points)
    else:
        steps = every_schedule(budget, evaluation.every)
    return steps[steps > run.fork.at_step] if run.fork is not None else steps
