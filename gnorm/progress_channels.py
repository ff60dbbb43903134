"""How a training step's progress travels from a worker to the coordinator.

The training loop calls a small ``report(step, members_left)`` after its first step and then at most
every half second of wall time (gnorm.training.loop); which callable it gets depends on the executor.
An executor's pool may offer ``progress_channel(receive)``: the coordinator calls it once per pool
with ``receive(key, step, members_left, seconds)`` (``seconds``: the worker's monotonic clock) and gets
back a channel whose ``reporter(key)`` is handed to each task (a picklable callable where tasks leave
this process) and whose ``close()`` ends it (after the pool has shut down). Pools without the method train as before, with cell events only.

Progress must never slow or break training: every reporter drops an update it cannot send at once
(a full queue, a broken pipe, no dask worker), and never raises.

Channels here: :class:`DirectChannel` (tasks in the coordinator's process: a plain call) and
:class:`QueueChannel` (a local process pool: one ``multiprocessing`` queue handed to each worker when
it starts, see ``install_worker_queue``). The dask plugin's lives in ``gnorm_dask``.
"""

from __future__ import annotations

import queue as queue_module
import threading
import time
from typing import Any, Callable

import attrs

#: receive(key, step, members_left, seconds): the coordinator's side of every channel.
Receive = Callable[[str, int, int, float], None]

#: Updates a local pool's queue holds before reporters drop new ones. Small enough that the pipe under
#: the queue (64 KiB on Linux) never fills, so a worker's exit never waits for the coordinator to read.
QUEUE_SIZE = 200


@attrs.frozen
class DirectReporter:
    """A task in the coordinator's process: each update is a call of ``receive``."""

    receive: Receive
    key: str

    def __call__(self, step: int, members_left: int) -> None:
        try:
            self.receive(self.key, step, members_left, time.monotonic())
        except Exception:  # progress never breaks training
            pass


@attrs.frozen
class DirectChannel:
    """The channel of executors whose tasks run in the coordinator's process (``serial``)."""

    receive: Receive

    def reporter(self, key: str) -> DirectReporter:
        return DirectReporter(self.receive, key)

    def close(self) -> None:
        pass


_worker_queue: Any = None  # this worker process's queue to the coordinator (install_worker_queue)


def install_worker_queue(progress_queue: Any) -> None:
    """Worker-process start-up: keep ``progress_queue`` for this process's reporters, and let the
    process exit without flushing what it still buffers (updates are worth nothing then)."""
    global _worker_queue
    _worker_queue = progress_queue
    if progress_queue is not None:
        progress_queue.cancel_join_thread()


@attrs.frozen
class QueueReporter:
    """A task in a local pool's worker: each update goes into the queue that the worker was given when
    it started (``put_nowait``; a full or broken queue drops it). Picklable: it carries its key only."""

    key: str

    def __call__(self, step: int, members_left: int) -> None:
        try:
            _worker_queue.put_nowait((self.key, step, members_left, time.monotonic()))
        except Exception:  # no queue in this process, a full queue, a closed pipe: drop the update
            pass


class QueueChannel:
    """A local pool's channel: a thread of the coordinator takes updates from ``progress_queue`` and
    hands each to ``receive``; ``close`` ends the thread."""

    def __init__(self, progress_queue: Any, receive: Receive):
        self.queue, self.receive = progress_queue, receive
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._listen, name="gnorm-progress", daemon=True)
        self.thread.start()

    def reporter(self, key: str) -> QueueReporter:
        return QueueReporter(key)

    def _listen(self) -> None:
        while not self.stopped.is_set():
            try:
                key, step, members_left, seconds = self.queue.get(timeout=0.2)
            except queue_module.Empty:
                continue
            except (OSError, EOFError, ValueError):  # the queue was closed under us
                return
            except Exception:  # a message a dying worker left half-written: skip it
                continue
            try:
                self.receive(key, step, members_left, seconds)
            except Exception:
                pass

    def close(self) -> None:
        """End the thread, then hand on what the queue still holds (the pool is shut down first)."""
        self.stopped.set()
        self.thread.join(timeout=2.0)
        if self.thread.is_alive():  # stuck on a message a killed worker left half-written
            return
        for _ in range(QUEUE_SIZE):
            try:
                self.receive(*self.queue.get_nowait())
            except Exception:  # empty, closed or garbled: nothing more to hand on
                return
