"""A Ctrl-C that is never lost: while ``gnorm run`` coordinates a study, SIGINT raises KeyboardInterrupt
as Python's default handler does and is also noted, so that an interrupt Python swallows (raised while
a finalizer or a callback runs, where it is printed as "Exception ignored" and dropped) is raised again
at the coordinator's next check (``raise_if_interrupted``)."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator

_noted = threading.Event()


def _note_and_raise(signum: int, frame: Any) -> None:
    _noted.set()
    raise KeyboardInterrupt


@contextlib.contextmanager
def noting_interrupts() -> Iterator[None]:
    """Note every SIGINT inside the block. Left alone where SIGINT is not Python's default (ignored, as
    for a job a shell started in the background, or handled by the embedding program) or off the main
    thread, where no handler can be installed."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    _noted.clear()
    signal.signal(signal.SIGINT, _note_and_raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _noted.clear()


def raise_if_interrupted() -> None:
    """Raise KeyboardInterrupt if a SIGINT was noted inside ``noting_interrupts``."""
    if _noted.is_set():
        raise KeyboardInterrupt
