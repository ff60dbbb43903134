"""The ``dask`` executor: a study's cells as dask.distributed tasks.

gnorm's coordinator keeps planning, Wc, retries and the store; the cluster only trains cells. Workers
must have gnorm (and every plugin the experiment uses) installed: they build gnorm's plugin registry
from entry points, like the ``local`` executor's workers.

Worker loss: when a worker dies, the scheduler gives the cells it held to other workers (dask's own
rescheduling); a cell that keeps failing reaches gnorm as an error, and gnorm retries it
``[executor] retries`` times before it stores its runs as failed.

Step progress: each task's reporter logs a worker event on a topic of this study
(``Worker.log_event``), which the scheduler forwards to the coordinator's client, subscribed with
``Client.subscribe_topic``: dask's structured events, sent over the connections dask already keeps
(no queue or actor on the scheduler to manage). An event that cannot be logged is dropped.
"""

from __future__ import annotations

import concurrent.futures
import os
import time
import uuid
from typing import Any, Callable

import attrs

import gnorm
from gnorm.components import ExecutorContext
from gnorm.errors import Problem, UserError


def _address(instance: Any, attribute: Any, value: str) -> None:
    if value and "://" not in value:
        raise ValueError(f"'{attribute.name}' must be a scheduler address like tcp://host:8786, found {value!r}")


@attrs.frozen
class DaskConfig:
    """``scheduler``: address of a running dask scheduler (empty: start a LocalCluster on this machine
    with ``workers`` processes of ``[executor] threads`` threads each; 0 workers: cores / threads).
    ``connect_timeout``: seconds to wait for the scheduler."""

    scheduler: str = attrs.field(default="", validator=_address)
    workers: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    connect_timeout: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))


class DaskExecutor(concurrent.futures.Executor):
    """``concurrent.futures`` facade over a dask Client. Tasks are submitted with ``pure=False``: a
    retried cell is a new task, never the cached failure of the last one."""

    def __init__(self, config: DaskConfig, context: ExecutorContext):
        from distributed import Client, LocalCluster

        self.cluster = None
        if config.scheduler:
            try:
                self.client = Client(config.scheduler, timeout=f"{config.connect_timeout}s")
            except OSError as error:
                raise UserError([Problem("", "executor.scheduler", f"cannot reach the dask scheduler at "
                                         f"{config.scheduler}: {' '.join(str(error).split())}")]) from None
        else:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
            workers = config.workers or max(1, cores // context.threads_per_cell)
            self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                        dashboard_address=None)
            self.client = Client(self.cluster)
        self.executor = self.client.get_executor(pure=False)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        return self.executor.submit(fn, *args, **kwargs)

    def progress_channel(self, receive: Callable[[str, int, int, float], None]) -> DaskProgressChannel:
        """Step progress from the cluster's workers, as events on a topic of this study."""
        return DaskProgressChannel(self.client, receive)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.executor.shutdown(wait=wait and not cancel_futures)
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def terminate_workers(self) -> None:
        """An interrupted study: cancel its tasks, leave a shared cluster's workers running."""
        self.shutdown(wait=False, cancel_futures=True)


@attrs.frozen
class DaskProgressReporter:
    """Runs in a dask worker's task: each update is an event ``[key, step, members_left, seconds]`` on
    ``topic``, logged on the worker that runs the task (never raises; outside a worker it drops)."""

    topic: str
    key: str

    def __call__(self, step: int, members_left: int) -> None:
        try:
            from distributed import get_worker

            get_worker().log_event(self.topic, [self.key, step, members_left, time.monotonic()])
        except Exception:
            pass


class DaskProgressChannel:
    """The coordinator's side: ``receive`` is called (in the client's event-loop thread) for every
    event of this study's topic; ``close`` unsubscribes."""

    def __init__(self, client: Any, receive: Callable[[str, int, int, float], None]):
        self.client, self.receive = client, receive
        self.topic = f"gnorm-progress-{uuid.uuid4().hex}"
        client.subscribe_topic(self.topic, self.handle)

    def handle(self, event: tuple[float, Any]) -> None:
        try:
            key, step, members_left, seconds = event[1]
            self.receive(key, int(step), int(members_left), float(seconds))
        except Exception:
            pass

    def reporter(self, key: str) -> DaskProgressReporter:
        return DaskProgressReporter(self.topic, key)

    def close(self) -> None:
        try:
            self.client.unsubscribe_topic(self.topic)
        except Exception:
            pass


@gnorm.hookimpl
def gnorm_executors() -> list[gnorm.Executor]:
    return [gnorm.Executor(name="dask", summary="dask.distributed: a scheduler address, or a LocalCluster",
                           config_class=DaskConfig, factory=DaskExecutor,
                           options=(gnorm.ExecutorOption(
                               flag="--scheduler", key="scheduler", metavar="ADDRESS",
                               help="Scheduler address, e.g. --executor dask --scheduler tcp://host:8786"),))]
