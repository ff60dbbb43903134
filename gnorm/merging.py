"""Whole stages as one ensemble: cells of one stage that differ only in their controller's settings
(rho, t_start, the controller itself), their Wc and their learning rate train as one job, each cell's
members under that cell's own controller and optimizer (gnorm.training.segments). Each member is
computed as its cell alone computes it, so merging moves only wall time: fewer, bigger jobs, and seeds
split evenly over the workers.

What keeps cells apart is every other setting (the merge key): the task, the architecture, the
optimizer's other options (and a plugin optimizer's learning rate), the loss and its temperature, the
budget, the batch size, the evaluation schedule, the precision, the gradient transforms. Forked and
adaptive stages are never merged. ``[executor] merge_cells`` chooses: "auto" (the default: merge, as
measured to pay on the 2-core CPU, README "Performance") or "off" (one cell per job). Never part of a
run's identity. Pure functions of the plan; the scheduler (gnorm.scheduler) decides when.
"""

from __future__ import annotations

import json
from typing import Sequence

import attrs

from gnorm.analysis.records import cell_label
from gnorm.executor_table import MERGE_CHOICES  # noqa: F401 (the values of [executor] merge_cells)
from gnorm.planner import PendingCell
from gnorm.runmodel import RunSpec, cells_of

#: What a cell's runs may differ in and still train in one ensemble with other cells of its stage.
PER_MEMBER_SETTINGS = ("cell", "seed", "controller", "critical_norm_source")


#: The optimizers whose learning rate may differ between the cells of one job (each cell's own optimizer on
#: its members' views, gnorm.training.segments.SegmentedOptimizer: built-ins, whose state it can stack).
PER_MEMBER_LR = ("adamw", "adam", "sgd")


def merge_key(run: RunSpec) -> str:
    """The settings two cells of a stage must share to train as one job: the run's configuration
    without ``PER_MEMBER_SETTINGS``, and without the learning rate for ``PER_MEMBER_LR`` (as sorted JSON)."""
    plain = {key: value for key, value in run.plain().items() if key not in PER_MEMBER_SETTINGS}
    if plain["optimizer"]["name"] in PER_MEMBER_LR:
        plain["optimizer"] = {key: value for key, value in plain["optimizer"].items() if key != "lr"}
    return json.dumps(plain, sort_keys=True, default=str)


def mergeable(item: PendingCell, choice: str) -> bool:
    """Whether ``item`` may train with other cells of its stage under ``merge_cells = choice``: under
    "auto", any cell but a forked or adaptive stage's, or one already merged (a retry, a part)."""
    first = item.runs[0]
    return (choice == "auto" and first.fork is None and item.stage.adaptive is None
            and item.cell_norms is None)


def merged(items: Sequence[PendingCell]) -> PendingCell:
    """``items`` (resolved cells of one stage with one merge key) as one pending job: their runs, cell
    after cell, each cell's (Wc, per-group Wc) kept by its cell id."""
    if len(items) == 1:
        return items[0]
    first = items[0]
    norms = {item.runs[0].cell_id: (item.critical_norm, dict(item.group_critical_norms)) for item in items}
    labels = ", ".join(item.label.split("] ", 1)[-1] for item in items)
    label = f"[{first.stage.name}] {len(items)} cells ({labels})"
    return attrs.evolve(first, runs=[run for item in items for run in item.runs], label=label, critical_norm=None,
                        group_critical_norms={}, cell_norms=norms)


def unmerged(item: PendingCell) -> list[PendingCell]:
    """A merged job's runs as one pending job per cell again (each with its own Wc, resolved, the
    attempts made so far), so that a cell whose training raises is retried alone and cannot fail the
    others; ``[item]`` for a job of one cell."""
    cells = cells_of(item.runs)
    if item.cell_norms is None or len(cells) == 1:
        return [item]
    return [PendingCell(item.stage, cell, f"[{item.stage.name}] {cell_label(cell[0].cell)}",
                        *item.norms_of(cell[0]), attempts=item.attempts, resolved=True) for cell in cells]
