"""Long work shows its progress: workers report each cell's step (and members still training) to the
coordinator, through a plain call (serial), a queue (a local process pool) or dask worker events; the
coordinator prints one plain line per active cell (no terminal) or a live table (a terminal, rich).
The time left of a cell is a pure function of its step, budget and step rate."""

from __future__ import annotations

import io
import multiprocessing
import sys
import threading

import pytest

from builders import FREE, write_study
from gnorm import progress_channels
from gnorm.loader import load_experiment
from gnorm.progress import ActiveJob, Progress, StudyCounts, cell_time_left, job_line, step_rate
from gnorm.progress_channels import DirectReporter, QueueReporter
from gnorm.registry import Provider, build_registry
from gnorm.scheduler import run_experiment
from gnorm.store import Store
from gnorm.worker import never_raising

LABEL = "[free] (all)"

# ---------------------------------------------------------------------------------------------------
# The estimate: pure functions.


def test_step_rate_is_steps_over_seconds_between_the_first_and_last_report():
    assert step_rate([(10.0, 100), (12.0, 150), (14.0, 300)]) == 50.0
    assert step_rate([(10.0, 100)]) is None
    assert step_rate([]) is None
    assert step_rate([(10.0, 100), (10.0, 120)]) is None  # no time between them


def test_a_cells_time_left_is_its_remaining_steps_at_its_rate():
    assert cell_time_left(step=200, budget=1000, rate=50.0) == 16.0
    assert cell_time_left(step=1000, budget=1000, rate=50.0) == 0.0
    assert cell_time_left(step=1200, budget=1000, rate=50.0) == 0.0  # never negative
    assert cell_time_left(step=200, budget=1000, rate=None) is None
    assert cell_time_left(step=200, budget=1000, rate=0.0) is None


def test_a_cells_rate_is_measured_over_its_latest_reports():
    job = ActiveJob(LABEL, budget=10_000, members=2)
    job.heard(1, 2, 0.0)  # the first step, compiling included
    job.heard(11, 2, 20.0)
    assert job.rate == 0.5
    job.heard(1011, 2, 30.0)
    job.heard(2011, 2, 40.0)  # the report of second 0 is now older than the window
    assert job.rate == pytest.approx(2000 / 20.0)
    assert job.time_left == pytest.approx((10_000 - 2011) / 100.0)


# ---------------------------------------------------------------------------------------------------
# What is printed.


def test_without_a_terminal_each_active_cell_gets_a_plain_line_then_the_study_line():
    stream = io.StringIO()
    progress = Progress(stream, every=0.0)
    progress.cell(LABEL, "started (4 seeds)")
    progress.job_started("1", LABEL, budget=1000, members=4)
    progress.job_started("2", "[clamp] rho=0.9", budget=500, members=2)  # no report yet: no line
    progress.step("1", 100, 4, 10.0)
    progress.step("1", 200, 3, 12.0)
    progress.update(StudyCounts(0, 6, 0, 0, 75.0, 0, 6000))
    progress.job_ended("1")
    progress.step("1", 300, 3, 14.0)  # a late report of a job that returned: ignored
    progress.update(StudyCounts(4, 2, 0, 0, 80.0, 4000, 1000), force=True)
    assert stream.getvalue().splitlines() == [
        "[free] (all): started (4 seeds)",
        "[free] (all): step 100/1000, 4/4 members training",
        "[free] (all): step 200/1000, 3/4 members training, 50 steps/s, about 16s left",
        "[free] (all): step 200/1000, 3/4 members training, 50 steps/s, about 16s left",
        "runs: 0 done, 6 running, 0 failed, 0 remaining; 1m15s elapsed",
        "runs: 4 done, 2 running, 0 failed, 0 remaining; 1m20s elapsed, about 20s left",
    ]


def test_plain_lines_come_at_most_once_per_every_seconds():
    stream = io.StringIO()
    progress = Progress(stream, every=3600.0)
    progress.job_started("1", LABEL, budget=1000, members=2)
    for step in range(1, 50):
        progress.step("1", step, 2, float(step))
    progress.update(StudyCounts(0, 2, 0, 0, 5.0, 0, 2000))
    assert stream.getvalue() == ""
    assert progress.job_lines() == ["[free] (all): step 49/1000, 2/2 members training, 1 steps/s, about 15m51s left"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_without_rich_the_cell_lines_print_above_the_live_study_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "gnorm.progress_table", None)  # as if rich were not installed
    stream = Terminal()
    progress = Progress(stream, every=0.0)
    progress.update(StudyCounts(0, 2, 0, 0, 5.0, 0, 2000))
    progress.job_started("1", LABEL, budget=1000, members=2)
    assert progress.live and progress.table is None
    progress.step("1", 10, 2, 1.0)
    progress.close()
    assert stream.getvalue() == ("\rruns: 0 done, 2 running, 0 failed, 0 remaining; 5s elapsed\x1b[K"
                                 "\r\x1b[K[free] (all): step 10/1000, 2/2 members training\n"
                                 "runs: 0 done, 2 running, 0 failed, 0 remaining; 5s elapsed\n")


def test_on_a_terminal_with_rich_the_active_cells_are_a_live_table():
    pytest.importorskip("rich")
    from rich.console import Console

    stream = Terminal()
    progress = Progress(stream, every=0.0)
    try:
        assert progress.table is None  # drawn from the first job on, not for a study with nothing to train
        progress.update(StudyCounts(0, 2, 0, 0, 5.0, 0, 2000))
        progress.job_started("1", LABEL, budget=1000, members=4)
        assert progress.table is not None
        progress.step("1", 100, 4, 10.0)
        progress.step("1", 200, 3, 12.0)
        drawn = Console(file=io.StringIO(), width=120, force_terminal=False)
        with drawn.capture() as captured:
            drawn.print(progress.table.drawn())
        text = captured.get()
        assert "[free] (all)" in text and "200/1000" in text and "3/4" in text and "16s" in text
        assert "runs: 0 done, 2 running, 0 failed, 0 remaining; 5s elapsed" in text
        progress.cell(LABEL, "2/4 grokked, 30s")
    finally:
        progress.close()
    assert progress.table is None
    assert "[free] (all): 2/4 grokked, 30s" in stream.getvalue()
    assert stream.getvalue().endswith("runs: 0 done, 2 running, 0 failed, 0 remaining; 5s elapsed\n")


# ---------------------------------------------------------------------------------------------------
# Progress never breaks training: a full or missing channel drops updates.


def test_reporters_drop_what_they_cannot_send_and_never_raise(monkeypatch):
    full = multiprocessing.get_context("spawn").Queue(maxsize=1)
    monkeypatch.setattr(progress_channels, "_worker_queue", full)
    reporter = QueueReporter("1")
    for step in (1, 2, 3):
        reporter(step, 2)  # the second and third find the queue full
    assert full.get(timeout=10)[:3] == ("1", 1, 2)
    monkeypatch.setattr(progress_channels, "_worker_queue", None)  # not a worker of a local pool
    reporter(4, 2)

    def broken(*args):
        raise RuntimeError("the display is gone")

    DirectReporter(broken, "1")(5, 2)
    never_raising(lambda step, members_left: broken())(6, 2)
    never_raising(None)(7, 2)


# ---------------------------------------------------------------------------------------------------
# Reports arrive from real executors.


class Heard(Progress):
    """The real display, keeping every report it receives and the thread it arrived on."""

    def __init__(self):
        super().__init__(io.StringIO(), every=0.5)
        self.started: dict[str, tuple[str, int, int]] = {}
        self.reports: list[tuple[str, int, int, str]] = []

    def job_started(self, key, label, budget, members):
        self.started[key] = (label, budget, members)
        super().job_started(key, label, budget, members)

    def step(self, key, step, members_left, seconds):
        self.reports.append((key, step, members_left, threading.current_thread().name))
        super().step(key, step, members_left, seconds)


def _reports_of_one_cell(tmp_path, executor: dict, plugins: tuple = ()) -> Heard:
    path = write_study(tmp_path, task={"p": 23}, training={"max_steps": 60}, stages=[FREE],
                       evaluation={"stop_when_grokked": False}, executor=executor)
    registry = build_registry(extra_plugins=plugins, autoload=False)
    experiment = load_experiment(path, registry)
    heard = Heard()
    assert run_experiment(experiment, registry, Store(tmp_path / "out", create=True), heard) == []
    assert len(Store(tmp_path / "out").records()) == 2
    [(key, started)] = heard.started.items()
    assert started == (LABEL, 60, 2)
    assert heard.reports, "no step report arrived"
    assert {report[0] for report in heard.reports} == {key}
    steps = [report[1] for report in heard.reports]
    assert steps[0] == 1 and steps == sorted(steps) and steps[-1] <= 60  # the first step, then on
    assert {report[2] for report in heard.reports} == {2}
    assert heard.jobs == {}
    return heard


def test_step_reports_arrive_from_the_serial_executor_as_calls(tmp_path):
    heard = _reports_of_one_cell(tmp_path, {"name": "serial"})
    assert {report[3] for report in heard.reports} == {threading.current_thread().name}


def test_step_reports_arrive_from_a_local_process_pool(tmp_path):
    heard = _reports_of_one_cell(tmp_path, {"name": "local", "workers": 1})
    assert {report[3] for report in heard.reports} == {"gnorm-progress"}  # the queue's listener


@pytest.mark.slow  # a LocalCluster starts (about 30 s on the shared 2-core machine)
def test_step_reports_arrive_from_a_loopback_dask_cluster(tmp_path):
    pytest.importorskip("distributed")
    gnorm_dask = pytest.importorskip("gnorm_dask")
    heard = _reports_of_one_cell(tmp_path, {"name": "dask", "workers": 1},
                                 plugins=((gnorm_dask, Provider("gnorm-dask", "0")),))
    assert threading.current_thread().name not in {report[3] for report in heard.reports}  # the client's thread
