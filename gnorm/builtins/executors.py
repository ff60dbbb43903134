"""Built-in executors: ``serial`` (in this process, one cell after another) and ``local`` (a pool of
worker processes on this machine)."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
from typing import Any, Callable

import attrs

import gnorm
from gnorm.components import ExecutorContext
from gnorm.progress_channels import QUEUE_SIZE, DirectChannel, QueueChannel, Receive, install_worker_queue


@attrs.frozen
class SerialConfig:
    """No options: cells train one after another in the coordinator's process."""


class SerialExecutor(concurrent.futures.Executor):
    """Runs each task inside ``submit`` and returns a finished future. One task at a time
    (``capacity = 1``), so the coordinator stores a cell before it starts the next."""

    capacity = 1

    def progress_channel(self, receive: Receive) -> DirectChannel:
        """Step progress as a plain call (tasks train in this process)."""
        return DirectChannel(receive)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_running_or_notify_cancel()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as error:  # the coordinator decides about retries; Ctrl-C still stops everything
            future.set_exception(error)
        return future


def machine_cores() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@attrs.frozen
class LocalConfig:
    """``workers``: worker processes (0: the machine's cores divided by ``[executor] threads``; one on a
    machine with a GPU)."""

    workers: int = attrs.field(default=0, validator=attrs.validators.ge(0))


class LocalExecutor(concurrent.futures.ProcessPoolExecutor):
    """A ``spawn`` process pool whose workers live for the whole study, so torch's import and the plugin
    registry are paid once per worker. Workers ignore Ctrl-C and exit if the coordinator dies. Step
    progress comes back through one bounded queue that each worker is handed when it starts (a spawned
    process inherits it then; a queue cannot travel inside a task)."""

    def __init__(self, workers: int):
        context = multiprocessing.get_context("spawn")
        self.progress_queue = context.Queue(maxsize=QUEUE_SIZE)
        super().__init__(max_workers=workers, mp_context=context, initializer=start_local_worker,
                         initargs=(os.getpid(), self.progress_queue))
        self.capacity = workers

    def progress_channel(self, receive: Receive) -> QueueChannel:
        """Step progress from every worker of this pool, through its queue."""
        return QueueChannel(self.progress_queue, receive)

    def terminate_workers(self) -> None:
        """Stop every worker now (an interrupted study): running cells are lost, stored runs are not."""
        processes = list((self._processes or {}).values())
        self.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(timeout=10)


def start_local_worker(parent_pid: int, progress_queue: Any) -> None:
    """A local pool's worker initializer: leave Ctrl-C to the coordinator and exit with it
    (``gnorm.worker.exit_with_parent``), and send step progress through ``progress_queue``."""
    from gnorm.worker import exit_with_parent

    exit_with_parent(parent_pid)
    install_worker_queue(progress_queue)


def local_executor(config: LocalConfig, context: ExecutorContext) -> LocalExecutor:
    """``workers`` as configured; by default one per core (cores / threads per cell), or one where torch
    sees a GPU (one process then trains each ensemble whole on the device, as the engine prefers)."""
    import torch

    default = 1 if torch.cuda.is_available() else max(1, machine_cores() // context.threads_per_cell)
    return LocalExecutor(config.workers or default)


@gnorm.hookimpl
def gnorm_executors() -> list[gnorm.Executor]:
    return [
        gnorm.Executor(name="serial", summary="cells one after another in this process",
                       config_class=SerialConfig, factory=lambda config, context: SerialExecutor(),
                       in_process=True),
        gnorm.Executor(name="local", summary="a pool of worker processes on this machine, one cell per task",
                       config_class=LocalConfig, factory=local_executor),
    ]
