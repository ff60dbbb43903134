"""Checkpoints of a cell in flight: a long cell survives a kill.

A cell's task writes the cell's whole training state to one file, every ``[training]
checkpoint_seconds`` of wall time (at the first evaluation after the interval has passed; 0 turns
checkpoints off), and a task given the same job again resumes from it: a retry after a worker died,
dask rescheduling a lost worker's task, or ``gnorm run`` started again after it was killed. The loop
draws no random numbers, so the state after an evaluation decides everything that follows, and a
resumed cell stores exactly what an uninterrupted one would have stored (``wall_seconds`` aside: it
counts the seconds trained up to the checkpoint plus those after the resume).

Where: ``<results>/checkpoints/<checkpoint_name(run ids)>.pt``, one file per job (a cell, or the part of
a split cell that one task trains). The coordinator names the file in the
:class:`gnorm.training.jobs.CellJob` (an absolute path, so workers on a shared filesystem write there
too) and removes it once the job's runs are stored. A job of several cells of a stage (gnorm.merging)
has one file for all its runs, its identity holding each cell's Wc. A rerun cuts a merged job into the
parts earlier tasks left checkpoints for (as for a split cell: consecutive runs in the merged order,
which also finds each cell's own file from a run with ``merge_cells = "off"``), so the same cells
merged again resume; runs whose file belongs to a grouping that does not form again train from the
start (their results are the same, the file stays unused).

Mini-batches (``[training] batch_size``) add no state to a file: the batch of step t is a pure
function of the member's split seed and t (gnorm.training.batches), so the step reached is the
position in every member's sampling stream, and a resumed cell draws the batches an uninterrupted one
would have drawn.

What a file holds (:class:`CellState`): the step reached, the runs still training (in ensemble
order), their stacked parameters, buffers and AdamW moments and step count, the state of each gradient
transform of the cell (stacked per member, e.g. Grokfast's moving averages), every run's evaluations
and facts so far, the records and evaluations of the runs that already finished inside the job (so a
resumed task still returns them), and the controller and observers pickled (there is no state-dict
protocol for plugins: a controller is restored as the object it was, so it must hold no references to
the ensemble's tensors between calls; a cell whose controller or observers cannot be pickled trains
without checkpoints, with a warning).

Safety: a file is written to a temporary name in the same folder, flushed and fsynced, then renamed
over the old one, so a kill at any instant leaves the old checkpoint or the new one. A file that
cannot be read, or whose ``job_identity`` differs from the job's (another job, other Wc or start
states, another device, thread count or torch), is ignored with a warning and the cell trains from
the start. A folder a worker cannot write to costs only the checkpoints (one warning per folder).
Loading unpickles the controller: checkpoint folders are as trusted as the rest of the results
directory.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import attrs
import torch

from gnorm.atomic_files import write_atomically
from gnorm.forks import state_sha256

CHECKPOINT_FOLDER = "checkpoints"
FORMAT_VERSION = 1

#: Folders that could not be written, each warned about once per process.
_unwritable: set[str] = set()


def checkpoint_name(run_ids: Sequence[str]) -> str:
    """The file name of a job's checkpoint: the first 16 hex digits of SHA-256 over its sorted run ids,
    so the same runs name the same file whatever order they come in."""
    return hashlib.sha256(",".join(sorted(run_ids)).encode()).hexdigest()[:16] + ".pt"


def checkpoint_path(directory: str | Path, run_ids: Sequence[str]) -> Path:
    """Where the job of ``run_ids`` keeps its checkpoint under ``directory`` (absolute)."""
    return Path(directory).resolve() / checkpoint_name(run_ids)


def job_identity(job: Any, device: str) -> str:
    """SHA-256 over what a job's results depend on, besides the state itself: each run's full
    configuration in order (the checkpoint interval left out), Wc and the per-group Wc (each cell's,
    for a job of several cells), the hash of every start state of a forked job, the device, torch's
    thread count and torch's version; and the job's snapshot moments where it has any (a checkpoint
    taken without them lacks their snapshots)."""
    configurations = []
    for run in job.runs:
        plain = run.plain()
        plain["training"] = {k: v for k, v in plain["training"].items() if k != "checkpoint_seconds"}
        configurations.append(plain)
    starts = [state_sha256(state) for state in job.start_states] if job.start_states is not None else None
    data = {"format": FORMAT_VERSION, "runs": configurations, "critical_norm": job.critical_norm,
            "group_critical_norms": job.group_critical_norms, "start_states": starts, "device": device,
            "threads": torch.get_num_threads(), "torch": torch.__version__}
    cell_norms = getattr(job, "cell_norms", None)
    if cell_norms is not None:  # a job of several cells (gnorm.merging): each cell's Wc
        data["cell_norms"] = cell_norms
    snapshots = getattr(job, "snapshots", None)
    if snapshots is not None and snapshots.enabled:
        data["snapshots"] = snapshots.plain()
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


@attrs.frozen(eq=False)
class CellState:
    """A cell's training state right after the evaluation at ``step``.

    ``members``: run ids still training, in ensemble order. ``tensors``: "params", "buffers",
    "exp_avg", "exp_avg_sq", each name -> the members' stacked tensor (on the CPU). ``optimizer_steps``:
    AdamW's step count. ``logs``: one plain dict per member (see ``RunLog.plain``). ``finished``: the
    runs that finished inside this job, as (record fields, steps, metrics) dicts, in finishing order.
    ``components``: the pickled (controller, observers). ``transform_states``: each gradient transform's
    state (name -> the members' stacked tensor), in chain order; empty without transforms (and in files
    written before transforms existed, which hold no such key)."""

    identity: str
    step: int
    members: list[str]
    tensors: dict[str, dict[str, torch.Tensor]]
    optimizer_steps: int
    logs: list[dict[str, Any]]
    finished: list[dict[str, Any]]
    components: bytes
    transform_states: list[dict[str, torch.Tensor]] = attrs.field(factory=list)

    def plain(self) -> dict[str, Any]:
        return {"format": FORMAT_VERSION, **attrs.asdict(self, recurse=False)}


def write_checkpoint(path: Path, state: CellState) -> None:
    """Write ``state`` to ``path`` atomically (:func:`gnorm.atomic_files.write_atomically`)."""
    write_atomically(path, lambda handle: torch.save(state.plain(), handle))


def read_checkpoint(path: Path, identity: str) -> CellState | None:
    """The state stored at ``path`` if it is a readable checkpoint of the job with ``identity``; None
    when there is no file, and None with a warning when it is damaged or belongs to something else."""
    if not path.exists():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        found = data.pop("format")
        state = CellState(**data)
    except Exception as error:  # truncated, garbage, or another layout: train from the start
        warnings.warn(f"{path}: damaged checkpoint ignored, the cell trains from the start "
                      f"({type(error).__name__}: {error})"[:500])
        return None
    if found != FORMAT_VERSION or state.identity != identity:
        warnings.warn(f"{path}: checkpoint of another job (or another device, thread count or torch) "
                      "ignored, the cell trains from the start")
        return None
    return state


def remove_checkpoint(path: Path) -> None:
    """Delete the checkpoint at ``path`` (and temporary files a killed writer left beside it)."""
    for leftover in path.parent.glob(f"{path.name}.tmp-*"):
        leftover.unlink(missing_ok=True)
    path.unlink(missing_ok=True)


def pickled_components(controller: Any, observers: Sequence[Any]) -> bytes | None:
    """``pickle.dumps((controller, observers))``, or None (with a warning) when they cannot be pickled."""
    try:
        return pickle.dumps((controller, list(observers)))
    except Exception as error:  # a plugin's local class, a lambda, an open file...
        warnings.warn(f"{type(controller).__name__}: this cell's controller or observers cannot be pickled, "
                      f"so it trains without checkpoints ({type(error).__name__}: {error})"[:500])
        return None


def unpickled_components(state: CellState) -> tuple[Any, list[Any]]:
    """The (controller, observers) a checkpoint holds."""
    return pickle.loads(state.components)


class Checkpoints:
    """One job's checkpoint file and when to write it: at the first evaluation ``seconds`` after the
    last write (or after training started); never where ``path`` is None or ``seconds`` is 0, nor after
    a write failed (the folder is not writable here: warned once per folder)."""

    @classmethod
    def for_job(cls, job: Any, device: torch.device) -> "Checkpoints":
        """The checkpoints of ``job`` (a :class:`gnorm.training.jobs.CellJob`) trained on ``device``: its file,
        its runs' ``checkpoint_seconds``, and its ``job_identity`` (computed only when checkpoints are on)."""
        seconds = job.runs[0].training.checkpoint_seconds
        if job.checkpoint is None or seconds <= 0:
            return cls(None, 0.0, "")
        return cls(job.checkpoint, seconds, job_identity(job, str(device)))

    def __init__(self, path: str | Path | None, seconds: float, identity: str):
        self.path = Path(path) if path is not None and seconds > 0 else None
        self.seconds, self.identity = seconds, identity
        self.last = time.monotonic()

    def load(self) -> CellState | None:
        """The job's checkpoint, if there is a usable one."""
        return read_checkpoint(self.path, self.identity) if self.path is not None else None

    def save_if_due(self, capture: Callable[[], CellState | None]) -> None:
        """Write ``capture()`` once the interval has passed (nothing when it returns None)."""
        if self.path is None or time.monotonic() - self.last < self.seconds:
            return
        state = capture()
        if state is None:
            self.path = None
            return
        try:
            write_checkpoint(self.path, state)
        except OSError as error:
            folder = str(self.path.parent)
            if folder not in _unwritable:
                _unwritable.add(folder)
                warnings.warn(f"{folder}: cannot write checkpoints here, training goes on without them "
                              f"({error.strerror or error})")
            self.path = None
            return
        self.last = time.monotonic()
