"""Progress of a study: one line per cell event, where the study stands (runs done, running, failed,
remaining, time left), and each active cell's step out of its budget, members still training and
time left, from the step reports workers send (see gnorm.progress_channels).

On a terminal with rich installed (``pip install 'gnorm[rich]'``) the active cells are a live table
under the event lines; otherwise (no terminal, or no rich) they are plain lines, one per active cell,
printed with the study's line at most once per ``every`` seconds."""

from __future__ import annotations

import collections
import sys
import threading
import time
from typing import Any, Sequence, TextIO

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


def step_rate(samples: Sequence[tuple[float, int]]) -> float | None:
    """Steps per second between the first and the last ``(seconds, step)`` sample: (step_last -
    step_first) / (seconds_last - seconds_first); None with fewer than two samples or no time between
    them."""
    if len(samples) < 2 or samples[-1][0] <= samples[0][0]:
        return None
    return (samples[-1][1] - samples[0][1]) / (samples[-1][0] - samples[0][0])


def cell_time_left(step: int, budget: int, rate: float | None) -> float | None:
    """Seconds until a cell reaches its budget at ``rate`` steps per second: (budget - step) / rate
    (None without a positive rate). A cell that stops when its members grok may end sooner."""
    return None if not rate or rate <= 0 else max(budget - step, 0) / rate


#: Seconds of step reports a cell's rate is measured over (the latest pace: a cell speeds up when
#: members leave, and its first steps include compiling).
RATE_WINDOW = 30.0


@attrs.define
class ActiveJob:
    """A cell (or a fork's trunk) training on a worker: its label, step budget and member count, the
    latest step and members still training that its worker reported, and the recent ``(seconds, step)``
    reports (worker clock) its rate is measured from."""

    label: str
    budget: int
    members: int
    step: int | None = None
    members_left: int | None = None
    samples: collections.deque = attrs.field(factory=collections.deque)

    def heard(self, step: int, members_left: int, seconds: float) -> None:
        self.step, self.members_left = step, members_left
        self.samples.append((seconds, step))
        while len(self.samples) > 2 and seconds - self.samples[0][0] > RATE_WINDOW:
            self.samples.popleft()

    @property
    def rate(self) -> float | None:
        return step_rate(self.samples)

    @property
    def time_left(self) -> float | None:
        return None if self.step is None else cell_time_left(self.step, self.budget, self.rate)


def job_line(job: ActiveJob) -> str:
    """The plain line of an active cell: ``LABEL: step S/BUDGET, M/N members training, R steps/s,
    about T left`` (rate and time once two reports arrived)."""
    rate, left = job.rate, job.time_left
    return (f"{job.label}: step {job.step}/{job.budget}, {job.members_left}/{job.members} members training"
            + (f", {rate:.3g} steps/s" if rate is not None else "")
            + (f", about {_duration(left)} left" if left is not None else ""))


class Progress:
    """One line per cell event, the study's state (runs done / running / failed / remaining, time
    left), and each active cell's step: on a terminal a live display (a table when rich is installed,
    else the study's live line and plain cell lines), else plain lines at most once per ``every``
    seconds. Step reports may arrive from any thread (``step``); printing is serialized."""

    def __init__(self, stream: TextIO | None = None, every: float = 30.0):
        self.stream, self.every = stream if stream is not None else sys.stderr, every  # stderr as it is now
        self.live = self.stream.isatty()
        self.last = time.monotonic()
        self.status = ""
        self.jobs: dict[str, ActiveJob] = {}
        self.lock = threading.RLock()
        self.table: Any = None  # the live table (gnorm.progress_table), from the first job on a terminal
        self.table_tried = not self.live

    def _print(self, line: str) -> None:
        if self.table is not None:
            return self.table.print(line)
        print(("\r\x1b[K" if self.live else "") + line, file=self.stream, flush=True)
        if self.live and self.status:
            print(self.status, end="", file=self.stream, flush=True)

    def cell(self, label: str, text: str) -> None:
        with self.lock:
            self._print(f"{label}: {text}")

    # -- active cells

    def job_started(self, key: str, label: str, budget: int, members: int) -> None:
        """A cell (or trunk) handed to a worker under ``key``, which its step reports carry."""
        with self.lock:
            self.jobs[key] = ActiveJob(label, budget, members)
            if not self.table_tried:
                self.table_tried = True
                self.table = _live_table(self)

    def job_ended(self, key: str) -> None:
        """The job under ``key`` returned (or failed, or was lost): later reports for it are ignored."""
        with self.lock:
            self.jobs.pop(key, None)

    def step(self, key: str, step: int, members_left: int, seconds: float) -> None:
        """A worker's report: job ``key`` has trained ``step`` steps with ``members_left`` members, at
        ``seconds`` on the worker's clock. Prints the plain cell lines when they are due."""
        with self.lock:
            job = self.jobs.get(key)
            if job is None:
                return
            job.heard(step, members_left, seconds)
            if self.table is None:
                self._lines_if_due()

    def job_lines(self) -> list[str]:
        """One plain line per active cell that has reported a step, in the order they started."""
        with self.lock:
            return [job_line(job) for job in self.jobs.values() if job.step is not None]

    def _lines_if_due(self, force: bool = False) -> None:
        """Plain displays: the active cells' lines, then (no terminal) the study's line, at most once per
        ``every`` seconds."""
        now = time.monotonic()
        if not (force or now - self.last >= self.every):
            return
        for line in self.job_lines():
            self._print(line)
        if not self.live and self.status:
            print(self.status, file=self.stream, flush=True)
        self.last = now

    # -- the study

    def update(self, counts: StudyCounts, force: bool = False) -> None:
        left = counts.time_left
        with self.lock:
            self.status = (f"runs: {counts.done} done, {counts.running} running, {counts.failed} failed, "
                           f"{counts.remaining} remaining; {_duration(counts.elapsed)} elapsed"
                           + (f", about {_duration(left)} left" if left is not None else ""))
            if self.table is not None:
                return
            if self.live:
                print(f"\r{self.status}\x1b[K", end="", file=self.stream, flush=True)
            self._lines_if_due(force)

    def close(self) -> None:
        """The study is over: the live table (if any) gives way to the study's last line."""
        with self.lock:
            if self.table is not None:
                self.stop_table()
                if self.status:
                    print(self.status, file=self.stream, flush=True)
            elif self.live and self.status:
                print(file=self.stream, flush=True)

    def stop_table(self) -> None:
        """Clear the live table, if one is drawn (an interrupted study stops here)."""
        with self.lock:
            table, self.table = self.table, None
            if table is not None:
                table.stop()


def _live_table(progress: Progress) -> Any:
    """The rich live table of ``progress`` (None when rich is not installed: plain lines then)."""
    try:
        from gnorm.progress_table import LiveTable
    except ImportError:
        return None
    return LiveTable(progress)
