"""The live display of ``gnorm run`` on a terminal, drawn with rich (an optional extra: ``pip install
'gnorm[rich]'``; without it gnorm.progress prints plain lines). Cell events scroll above a table of the
active cells (step out of budget with a bar, members still training, steps per second, time left) and
the study's line. Importing this module raises ImportError where rich is missing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from gnorm.progress import Progress

#: Redraws per second (rich's own thread redraws; step reports only change the numbers it draws).
REFRESH_PER_SECOND = 2


class LiveTable:
    """A rich ``Live`` region on ``progress.stream``, redrawn from ``progress.jobs`` and
    ``progress.status``; ``print`` puts a line above it, ``stop`` ends it (the region is cleared)."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.last: Any = Text("")
        self.console = Console(file=progress.stream, force_terminal=True, highlight=False)
        self.live = Live(console=self.console, get_renderable=self.renderable, transient=True,
                         refresh_per_second=REFRESH_PER_SECOND, redirect_stdout=False, redirect_stderr=False)
        self.live.start()

    def renderable(self) -> Any:
        """The table and the study's line, read without the progress lock (rich's thread calls this
        holding its own lock, which a ``print`` under the progress lock waits for)."""
        try:
            self.last = self.drawn()
        except Exception:  # a job that changed while it was read: draw it next time
            pass
        return self.last

    def drawn(self) -> Any:
        from gnorm.progress import _duration

        jobs = [job for job in list(self.progress.jobs.values()) if job.step is not None]
        parts: list[Any] = []
        if jobs:
            table = Table(box=None, pad_edge=False, show_edge=False)
            for column, justify in (("cell", "left"), ("", "left"), ("step", "right"), ("members", "right"),
                                    ("steps/s", "right"), ("left", "right")):
                table.add_column(column, justify=justify, no_wrap=True)
            for job in jobs:
                rate, left = job.rate, job.time_left
                table.add_row(Text(job.label), ProgressBar(total=job.budget, completed=job.step, width=24),
                              f"{job.step}/{job.budget}", f"{job.members_left}/{job.members}",
                              "" if rate is None else f"{rate:.3g}", "" if left is None else _duration(left))
            parts.append(table)
        parts.append(Text(self.progress.status))
        return Group(*parts)

    def print(self, line: str) -> None:
        """``line`` above the table, then the table redrawn (a cell that just ended leaves it now)."""
        self.console.print(Text(line))
        self.live.refresh()

    def stop(self) -> None:
        self.live.stop()
