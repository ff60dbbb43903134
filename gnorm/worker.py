"""What an executor runs: one cell's training, or one fork's trunk, in whatever process the executor
chose.

A cell task gets a :class:`~gnorm.training.jobs.CellJob` (plain, picklable data) and returns each run's
record and trajectory; a trunk task gets a :class:`~gnorm.training.jobs.TrunkJob` and returns each run's
state at the fork step. Tasks build their components from the plugin registry and train them; they
never touch the store and fire no hooks: the coordinator (gnorm.scheduler) writes what tasks return and
tells observers about it.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import signal
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import attrs
import torch

from gnorm.components import RunRecord
from gnorm.forks import TrunkState
from gnorm.registry import Registry, default_registry
from gnorm.training.build import train_cell, train_trunk
from gnorm.training.jobs import CellJob, TrunkJob
from gnorm.training.runlog import RunLog
from gnorm.training.snapshots import settled

#: report(step, members_left): how far a task's training is (see gnorm.progress_channels).
Report = Callable[[int, int], None]


@attrs.frozen
class RunResult:
    """One finished run as a task returns it: the record, its evaluations (step, metric columns) and
    its weight snapshots (see gnorm.training.snapshots; empty without ``[snapshots]``)."""

    record: RunRecord
    steps: list[int]
    metrics: dict[str, list[float]]
    snapshots: list[dict] = attrs.field(factory=list)


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Train with exactly ``count`` intra-op threads. Results depend on it: torch splits full
    reductions (``x.sum()``) by thread, so 1 and 2 threads give norms that differ in the last bits
    (measured: up to 4e-6 in ||W|| on a p = 97 cell), whichever process trains."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


#: glibc mallopt parameters (malloc.h) and the values training processes use.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
KEEP_FREED = {M_MMAP_THRESHOLD: 32 << 20, M_TOP_PAD: 64 << 20, M_TRIM_THRESHOLD: 256 << 20}


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse in this process, and say whether it could.

    Every step frees and reallocates the same activations, a few MiB each. By default glibc hands
    such blocks back to the OS (as separate mappings, or by trimming the heap) and the next step
    page-faults them in again: about 2,200 page faults a step of 8 members of W1's cell, a fifth of
    that step's time in one process on the development machine (about 3% of W1 through ``gnorm
    run``'s workers, which fault less to begin with). Blocks up to 32 MiB now come from the heap,
    which grows in 64 MiB steps and gives back nothing under 256 MiB free at its top. Process-wide and permanent;
    a no-op where the C library is not glibc, and where glibc's allocator was configured through its
    environment (``MALLOC_TRIM_THRESHOLD_`` and the like: dask's nanny sets one for its workers so that
    its memory monitor sees freed memory returned), which then stays as configured."""
    if platform.libc_ver()[0] != "glibc" or any(name.startswith("MALLOC_") for name in os.environ):
        return False
    mallopt = ctypes.CDLL("libc.so.6").mallopt
    accepted = [mallopt(parameter, value) == 1 for parameter, value in KEEP_FREED.items()]
    return all(accepted)


def train_cell_task(job: CellJob, threads: int, registry: Registry | None = None,
                    report: Report | None = None) -> list[RunResult]:
    """Train one cell with ``threads`` torch threads (in a process whose allocator keeps freed
    memory, see ``keep_freed_memory``); return every run's result in the order the runs finished.
    ``registry`` is given by in-process executors; elsewhere this process builds its own from the
    ``gnorm`` entry points (once, then reused by later tasks in the same worker). ``report(step,
    members_left)``, where given, hears how far training is (see ``gnorm.progress_channels``)."""
    keep_freed_memory()
    registry = registry if registry is not None else default_registry()
    results: list[RunResult] = []

    def finished(record: RunRecord, log: RunLog) -> None:
        results.append(RunResult(record, list(log.steps), {k: list(v) for k, v in log.metrics.items()},
                                 settled(log.snapshots, record.t_mem, record.t_grok)))

    with torch_threads(threads):
        train_cell(job, registry, finished, report=never_raising(report))
    return results


def train_trunk_task(job: TrunkJob, threads: int, registry: Registry | None = None,
                     report: Report | None = None) -> list[TrunkState]:
    """Train the trunks of ``job``'s runs with ``threads`` torch threads, exactly as a cell task would
    train a cell (``registry`` and ``report`` as for ``train_cell_task``); return each run's state at
    the fork step, in order."""
    keep_freed_memory()
    registry = registry if registry is not None else default_registry()
    with torch_threads(threads):
        return train_trunk(job, registry, report=never_raising(report))


def never_raising(report: Report | None) -> Report:
    """``report`` as the loop calls it: an update it cannot take is dropped, never an error in training."""
    if report is None:
        return lambda step, members_left: None

    def guarded(step: int, members_left: int) -> None:
        try:
            report(step, members_left)
        except Exception:
            pass

    return guarded


def exit_with_parent(parent_pid: int, poll_seconds: float = 1.0) -> None:
    """Worker-process initializer: leave Ctrl-C to the coordinator (it stops the workers), and exit when
    the coordinator is gone (killed), instead of training on for nobody."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, name="gnorm-parent-watch", daemon=True).start()
