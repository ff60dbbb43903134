"""Progress of a study: one line per cell event, and where the study stands (runs done, running, failed,
remaining, time left)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

import attrs


@attrs.frozen
class StudyCounts:
    """Where a study stands: runs done, running, failed and ``remaining`` (neither settled nor
    running), seconds elapsed, and the step budgets (sum of ``max_steps``) of the runs settled since
    this invocation started and of those not settled yet."""

    done: int
    running: int
    failed: int
    remaining: int
    elapsed: float
    settled_budget_here: int
    unsettled_budget: int

    @property
    def time_left(self) -> float | None:
        return time_left(self.elapsed, self.settled_budget_here, self.unsettled_budget)


def time_left(elapsed: float, settled: int, unsettled: int) -> float | None:
    """Seconds left at this invocation's pace: elapsed * unsettled / settled, both counted in step
    budgets (a run's ``max_steps``), so that a cell with four times the budget counts as four times
    the work (None before any run has settled). Runs that were stored before this invocation do not
    count towards the pace."""
    return None if settled == 0 else elapsed * unsettled / settled


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else (
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s")


class Progress:
    """One line per cell event, and the study's state (runs done / running / failed / remaining, time
    left): a live line on a terminal, else a plain line at most once per ``every`` seconds."""

    def __init__(self, stream: TextIO | None = None, every: float = 30.0):
        self.stream, self.every = stream if stream is not None else sys.stderr, every  # stderr as it is now
        self.live = self.stream.isatty()
        self.last = time.monotonic()
        self.status = ""

    def _print(self, line: str) -> None:
        print(("\r\x1b[K" if self.live else "") + line, file=self.stream, flush=True)
        if self.live and self.status:
            print(self.status, end="", file=self.stream, flush=True)

    def cell(self, label: str, text: str) -> None:
        self._print(f"{label}: {text}")

    def update(self, counts: StudyCounts, force: bool = False) -> None:
        left = counts.time_left
        self.status = (f"runs: {counts.done} done, {counts.running} running, {counts.failed} failed, "
                       f"{counts.remaining} remaining; {_duration(counts.elapsed)} elapsed"
                       + (f", about {_duration(left)} left" if left is not None else ""))
        now = time.monotonic()
        if self.live:
            print(f"\r{self.status}\x1b[K", end="", file=self.stream, flush=True)
        elif force or now - self.last >= self.every:
            print(self.status, file=self.stream, flush=True)
            self.last = now

    def close(self) -> None:
        if self.live and self.status:
            print(file=self.stream, flush=True)
