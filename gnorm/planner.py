"""The planner: an experiment as the cells to train, each cell's Wc from the cell it depends on, and how
waiting cells are cut into parts and ordered for free workers. Pure functions of the plan; the
scheduler (gnorm.scheduler) decides when."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import attrs

from gnorm.analysis.records import cell_label
from gnorm.components import RunRecord
from gnorm.errors import UserError
from gnorm.runmodel import Experiment, RunSpec, Stage, cells_of
from gnorm.science import critical_norm
from gnorm.training.numerics import resolve_device, torch_matmul_precision


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


@attrs.define
class PendingCell:
    """A cell (or part of one, or several cells of a stage merged) the scheduler has yet to store: its
    stage, the runs still to train, its label, its Wc and per-group Wc once resolved, and the attempts
    made so far."""

    stage: Stage
    runs: list[RunSpec]  # the runs still to train
    label: str
    critical_norm: float | None = None
    group_critical_norms: dict[str, float] = attrs.field(factory=dict)
    attempts: int = 0
    resolved: bool = False  # Wc looked up (and the cell split, where it was)
    #: For several cells trained as one job (gnorm.merging): cell id -> (Wc, per-group Wc); None for one cell.
    cell_norms: dict[str, tuple[float | None, dict[str, float]]] | None = None

    def norms_of(self, run: RunSpec) -> tuple[float | None, dict[str, float]]:
        """The (Wc, per-group Wc) of ``run``'s cell."""
        if self.cell_norms is None:
            return self.critical_norm, self.group_critical_norms
        return self.cell_norms[run.cell_id]


#: The name the scheduler's cells had before they were named (tests and plugins may import it).
_Cell = PendingCell


def pending_cells(plan: Plan, stored: set[str]) -> list[PendingCell]:
    """The plan's cells with the runs ``stored`` lacks, in plan order, labelled ``[stage] cell``."""
    return [PendingCell(stage, todo, f"[{stage.name}] {cell_label(cell[0].cell)}")
            for stage, cell in plan.cells if (todo := [run for run in cell if run.run_id not in stored])]


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


def seed_groups(seeds: int, idle_workers: int, other_ready_cells: int) -> int:
    """Into how many parts a cell's seeds are split: the idle workers shared evenly between this cell and
    the other ready ones, so that none idles when too few cells are ready (the start of a study, its
    tail, a lone free stage); never more parts than seeds. Each part trains its seeds exactly as the
    whole cell would (members are independent and every member computes alone, chunking included), so
    splitting moves only wall time."""
    return max(1, min(seeds, idle_workers // (other_ready_cells + 1)))


def split_cell(item: PendingCell, parts: int) -> list[PendingCell]:
    """``item`` as ``parts`` cells of consecutive seeds, sizes differing by at most one (the same stage,
    Wc and label, with the seeds). A job of several merged cells (gnorm.merging) is cut seed-major
    instead: its runs ordered by (position of the seed within its cell, cell), cut into ``parts``
    consecutive groups, each given back cell after cell. So the parts differ by at most one run, each
    holds consecutive seeds of a cell, and each holds about its share of every cell (the same seeds
    of every cell where ``parts`` divides the cells' seed count): a share of the slow, high-rho
    cells, not a part made of them."""
    if parts <= 1:
        return [item]
    cells = cells_of(item.runs)
    if item.cell_norms is None or len(cells) == 1:
        return [part_of(item, runs) for runs in consecutive_groups(item.runs, parts)]
    seed_major = sorted(((index, order, run) for order, cell in enumerate(cells) for index, run in enumerate(cell)),
                        key=lambda entry: entry[:2])
    groups = consecutive_groups(seed_major, parts)
    return [part_of(item, [run for _, _, run in sorted(group, key=lambda entry: entry[1::-1])])
            for group in groups if group]


def consecutive_groups(runs: list, parts: int) -> list[list]:
    """``runs`` in ``parts`` groups of consecutive runs, sizes differing by at most one, the larger first
    (empty groups where there are fewer runs than parts)."""
    size, extra = divmod(len(runs), parts)
    bounds = [0]
    for part in range(parts):
        bounds.append(bounds[-1] + size + (part < extra))
    return [runs[start:end] for start, end in zip(bounds, bounds[1:])]


def part_of(item: PendingCell, runs: list[RunSpec]) -> PendingCell:
    """The part of ``item`` that trains ``runs`` (labelled with its seeds; ``item`` itself for all of them)."""
    if runs == item.runs:
        return item
    if item.cell_norms is None:
        return attrs.evolve(item, runs=runs, label=f"{item.label} seeds {runs[0].seed}-{runs[-1].seed}")
    cells = cells_of(runs)  # several cells merged (gnorm.merging): each cell's seeds in this part
    label = ", ".join(f"{cell_label(cell[0].cell)} seeds {cell[0].seed}-{cell[-1].seed}" for cell in cells)
    return attrs.evolve(item, runs=runs, label=f"[{item.stage.name}] {label}")


def checkpointed_parts(item: PendingCell,
                       has_checkpoint: Callable[[list[RunSpec]], bool]) -> list[PendingCell] | None:
    """``item`` in the parts that earlier tasks left checkpoints for, so that each resumes, whatever
    split this invocation would choose: from each run on, the longest run of consecutive seeds with a
    checkpoint is a part, and the seeds between such parts are parts of their own. None when no part of
    ``item`` has a checkpoint. (Earlier parts were consecutive seeds of the runs then unstored, and all
    of their runs are unstored still, so they are consecutive among ``item.runs``.) A job of merged
    cells is also looked for in the parts ``split_cell`` cuts it into, for every number of parts."""
    found = consecutive_checkpointed_parts(item, has_checkpoint)
    if found is not None or item.cell_norms is None or len(cells_of(item.runs)) == 1:
        return found
    for count in range(2, len(item.runs) + 1):
        parts = split_cell(item, count)
        if any(has_checkpoint(part.runs) for part in parts):
            return parts
    return None


def consecutive_checkpointed_parts(item: PendingCell,
                                   has_checkpoint: Callable[[list[RunSpec]], bool]) -> list[PendingCell] | None:
    """``checkpointed_parts`` among parts of consecutive runs."""
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


def budget(item: PendingCell) -> int:
    """A cell's most model-steps: its seeds times its step budget (the longest a cell can take)."""
    return len(item.runs) * item.runs[0].training.max_steps


def submission_order(items: list[PendingCell]) -> list[PendingCell]:
    """The order waiting cells are handed to free workers: first those already resolved (the other
    parts of a split cell, and retries), then cells that other waiting cells take Wc from (they unlock
    more work), then the biggest ``budget`` first, ties in plan order; so that a long cell does not
    start last and leave the other workers idle at the end."""
    sources = {run_id for item in items for run_id in item.runs[0].critical_norm_source}

    def key(item: PendingCell) -> tuple[bool, bool, int]:
        return (not item.resolved, not any(run.run_id in sources for run in item.runs), -budget(item))
    return sorted(items, key=key)


def planned_cells(plan: Iterable[tuple[str, str, dict[str, Any]]]) -> dict[str, dict[str, int]]:
    """stage -> cell label -> number of planned seeds, from (run_id, stage, cell) triples."""
    planned: dict[str, dict[str, int]] = {}
    for _, stage, cell in plan:
        label = cell_label(cell)
        planned.setdefault(stage, {})[label] = planned.get(stage, {}).get(label, 0) + 1
    return planned
