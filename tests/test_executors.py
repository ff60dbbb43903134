"""Executors: where cells train. Results never depend on which one ran them; a failing cell is retried,
then stored as failed while the rest of the study goes on; a clamp cell starts as soon as its own
source cell is stored; the study reports runs done / running / failed / remaining."""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import attrs
import pytest
from click.testing import CliRunner

import gnorm
from builders import FREE, clamp_stage, write_study
from conftest import tiny_study
from gnorm.builtins.controllers import Clamp, ClampConfig
from gnorm.cli import main
from gnorm.loader import load_experiment
from gnorm.progress import Progress, time_left
from gnorm.registry import Provider, build_registry
from gnorm.scheduler import run_experiment
from gnorm.store import Store

TEST_PLUGIN = Provider("test-plugin", "0")


def _quiet() -> Progress:
    return Progress(io.StringIO())


def _stored(out: Path) -> dict:
    store = Store(out)
    return {r.run_id: (r.t_grok, r.t_mem, r.norm_at_grok, {k: v for k, v in r.facts.items() if k != "wall_seconds"},
                       store.trajectory(r.run_id)) for r in store.records()}


def _small_study(tmp_path: Path, executor: dict | None = None, seeds: int = 2, stages: list | None = None,
                 **sections) -> Path:
    """Two cells of two seeds, about a second each: p = 31, 300 steps, Wc given as a number."""
    return write_study(tmp_path, experiment={"seeds": seeds}, task={"p": 31}, training={"max_steps": 300},
                       executor=executor, stages=[FREE, clamp_stage(30.0)] if stages is None else stages, **sections)


# ---------------------------------------------------------------------------------------------------
# Same results whichever executor trains.


def test_local_process_pool_stores_exactly_what_serial_stores(tmp_path):
    path = _small_study(tmp_path, {"name": "local", "workers": 2})
    serial = CliRunner().invoke(main, ["run", str(path), "--out", str(tmp_path / "serial"), "--executor", "serial"])
    local = CliRunner().invoke(main, ["run", str(path), "--out", str(tmp_path / "local")])
    assert serial.exit_code == 0 and local.exit_code == 0, serial.output + local.output
    first, second = _stored(tmp_path / "serial"), _stored(tmp_path / "local")
    assert len(first) == 6
    assert first == second


# ---------------------------------------------------------------------------------------------------
# Failures: retried, then stored as failed; the rest goes on; a rerun retries them.


@attrs.frozen
class FlakyConfig:
    rho: float = 1.0
    t_start: int = 50
    fail_at_rho: float = 1.1


def flaky_plugin(failures_left: dict) -> object:
    """A clamp that raises at step 10 in the cell with rho == fail_at_rho while failures_left > 0."""

    class Flaky(Clamp):
        def __init__(self, config, context):
            super().__init__(ClampConfig(config.rho, config.t_start), context)
            self.fails = config.rho == config.fail_at_rho

        def after_step(self, step, norm_tensors):
            if self.fails and step == 10 and failures_left["count"] > 0:
                failures_left["count"] -= 1
                raise RuntimeError("the flaky controller gave up")
            return super().after_step(step, norm_tensors)

    class Plugin:
        @gnorm.hookimpl
        def gnorm_norm_controllers(self):
            return [gnorm.NormController(name="flaky", summary="fails on purpose", config_class=FlakyConfig,
                                         factory=Flaky, uses_critical_norm=True)]

    return Plugin()


def _flaky_study(tmp_path: Path, failures_left: dict):
    registry = build_registry(extra_plugins=[(flaky_plugin(failures_left), TEST_PLUGIN)], autoload=False)
    path = _small_study(tmp_path, {"name": "serial"}, stages=[FREE, clamp_stage(30.0, controller="flaky")])
    return load_experiment(path, registry), registry


def test_a_cell_that_fails_once_is_retried_and_stored(tmp_path):
    failures_left = {"count": 1}
    experiment, registry = _flaky_study(tmp_path, failures_left)
    stream = io.StringIO()
    problems = run_experiment(experiment, registry, Store(tmp_path / "out", create=True), Progress(stream))
    assert problems == [] and failures_left["count"] == 0
    assert "failed (RuntimeError: the flaky controller gave up); trying again" in stream.getvalue()
    assert "attempt 2" in stream.getvalue()
    assert len(Store(tmp_path / "out").records()) == 6 and Store(tmp_path / "out").failed_runs() == []


def test_a_cell_that_keeps_failing_is_stored_as_failed_and_the_study_goes_on(tmp_path):
    failures_left = {"count": 1000}
    experiment, registry = _flaky_study(tmp_path, failures_left)
    out = tmp_path / "out"
    stream = io.StringIO()
    problems = run_experiment(experiment, registry, Store(out, create=True), Progress(stream))
    assert 1000 - failures_left["count"] == 3  # one attempt and the default 2 retries
    # the clamp stage's two cells trained as one job (merge_cells = "auto"); it failed, and was retried
    # cell by cell, so the failing cell cost the other nothing
    assert "[clamp] 2 cells (rho=0.9, rho=1.1): failed (RuntimeError: the flaky controller gave up); trying again " \
           "cell by cell" in stream.getvalue()
    assert problems == ["2 runs failed 3 times and are stored as failed (first error: RuntimeError: the flaky "
                        "controller gave up); see gnorm show, run again to retry them"]
    assert "runs: 4 done, 0 running, 2 failed, 0 remaining" in stream.getvalue()
    store = Store(out)
    assert sorted((r.stage, r.cell.get("controller.rho")) for r in store.records()) == [
        ("clamp", 0.9), ("clamp", 0.9), ("free", None), ("free", None)]
    failed = store.failed_runs()
    assert [(f.stage, f.cell, f.attempts, f.error) for f in failed] == [
        ("clamp", {"controller.rho": 1.1}, 3, "RuntimeError: the flaky controller gave up")] * 2

    shown = CliRunner().invoke(main, ["show", str(out)])
    assert shown.exit_code == 0, shown.output
    assert "failed: [clamp] rho=1.1 seed 0 after 3 attempts: RuntimeError: the flaky controller gave up" in shown.output
    assert "4/6 planned runs finished, 2 failed (run the file again to retry them)" in shown.output

    failures_left["count"] = 0  # whatever broke is fixed: a rerun trains the failed runs, and only them
    before = _stored(out)
    stream = io.StringIO()
    assert run_experiment(experiment, registry, Store(out), Progress(stream)) == []
    assert "[free]" not in stream.getvalue() and "rho=0.9" not in stream.getvalue()
    after = _stored(out)
    assert len(after) == 6 and Store(out).failed_runs() == []
    assert all(after[run_id] == stored for run_id, stored in before.items())


def test_gnorm_run_exits_non_zero_with_a_one_line_summary_when_runs_failed(tmp_path, monkeypatch):
    experiment, registry = _flaky_study(tmp_path, {"count": 1000})
    monkeypatch.setattr("gnorm.cli._registry", lambda: registry)
    result = CliRunner().invoke(main, ["run", str(experiment.source), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == ["error: 2 runs failed 3 times and are stored as failed (first error: RuntimeError: the flaky "
                      "controller gave up); see gnorm show, run again to retry them"]
    assert "Traceback" not in result.output


def _worker_pids() -> list[int]:
    """This process's children that are multiprocessing spawn workers."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) != os.getpid():
                continue
            if b"spawn_main" in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return pids


@pytest.mark.slow  # about 35 s on the shared 2-core machine: two pools start
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the pool's workers through /proc")
def test_a_killed_local_worker_costs_only_a_retry(tmp_path):
    """SIGKILL one worker while both train: the pool breaks, gnorm builds a new one and trains the cells
    that were in flight again; every run is stored once and equals a serial run's."""
    path = write_study(tmp_path, task={"p": 31}, training={"max_steps": 800}, evaluation={"stop_when_grokked": False},
                       stages=[FREE, clamp_stage(30.0)])
    registry = build_registry(autoload=False)
    experiment = load_experiment(path, registry, {"executor.name": "local", "executor.workers": 2})
    stream = io.StringIO()
    killed = []

    def kill_a_worker_once_two_cells_run() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            if stream.getvalue().count("started") >= 3 and len(pids := _worker_pids()) == 2:
                time.sleep(0.3)  # both cells are training
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.05)

    killer = threading.Thread(target=kill_a_worker_once_two_cells_run)
    killer.start()
    problems = run_experiment(experiment, registry, Store(tmp_path / "local", create=True), Progress(stream))
    killer.join()
    assert killed, "no worker was killed"
    assert problems == []
    assert "lost with its worker (BrokenProcessPool" in stream.getvalue()  # retried, not counted as a failure
    run_experiment(load_experiment(path, registry, {"executor.name": "serial"}), registry,
                   Store(tmp_path / "serial", create=True), _quiet())
    assert _stored(tmp_path / "local") == _stored(tmp_path / "serial")


# ---------------------------------------------------------------------------------------------------
# Scheduling: a clamp cell waits for its own source cell only.


class GatedPool:
    """In-process executor: a thread pool of 2 in which the free cell with weight decay 0.5 may not
    start training until a clamp cell has started. If clamp cells waited for the whole free stage, it
    never would: the gate then opens after 60 s and the test fails on the order of events."""

    def __init__(self):
        self.clamp_started = threading.Event()
        self.order: list[str] = []

    def gated(self, task, job, *rest):
        """``task`` run once the gate allows the cell of ``job`` to start."""
        run = job.runs[0]
        self.order.append(f"start {run.stage} wd={run.optimizer.config.weight_decay}")
        if run.stage == "clamp":
            self.clamp_started.set()
        elif run.optimizer.config.weight_decay == 0.5:
            self.clamp_started.wait(timeout=60)
        return task(job, *rest)

    @gnorm.hookimpl
    def gnorm_after_run(self, record):
        self.order.append(f"stored {record.stage} wd={record.config['optimizer']['weight_decay']}")

    @gnorm.hookimpl
    def gnorm_executors(self):
        gate = self

        class Gated(ThreadPoolExecutor):
            capacity = 2

            def submit(self, fn, /, *args, **kwargs):
                return super().submit(gate.gated, fn, *args, **kwargs)

        return [gnorm.Executor(name="threads", summary="two threads", config_class=attrs.make_class("C", {}),
                               factory=lambda config, context: Gated(2), in_process=True)]


def test_a_clamp_cell_starts_once_its_own_source_cell_is_stored(tmp_path):
    gate = GatedPool()
    registry = build_registry(extra_plugins=[(gate, TEST_PLUGIN)], autoload=False)
    path = tiny_study(tmp_path, seeds=1, max_steps=600, rhos="[1.1]")
    path.write_text(path.read_text() + '\n[sweep]\n"optimizer.weight_decay" = [1.0, 0.5]\n\n[executor]\nname = "threads"\n')
    run_experiment(load_experiment(path, registry), registry, Store(tmp_path / "out", create=True), _quiet())
    assert gate.order.index("start clamp wd=1.0") < gate.order.index("stored free wd=0.5")
    assert gate.order.index("stored free wd=1.0") < gate.order.index("start clamp wd=1.0")


# ---------------------------------------------------------------------------------------------------
# Configuration and progress.


@pytest.mark.parametrize("table, key, message", [
    ({"name": "locl"}, "executor.name", "unknown executor 'locl' (did you mean 'local'?)"),
    ({"worker": 2}, "executor.worker", "unknown key (did you mean 'workers'?)"),
    ({"workers": -1}, "executor.workers", "must be >= 0: -1"),
    ({"retries": 1.5}, "executor.retries", "expected an integer from 0 to 100, found a float (1.5)"),
    ({"threads": 0}, "executor.threads", "expected an integer from 1 to 4096, found an integer (0)"),
])
def test_a_bad_executor_table_is_one_line_naming_file_and_key(tmp_path, table, key, message):
    path = _small_study(tmp_path, table)
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"error: {path}: {key}: ") and message in line, line


def test_executor_on_the_command_line_replaces_the_files_choice(tmp_path):
    path = _small_study(tmp_path, {"name": "local", "workers": 3, "retries": 4})
    result = CliRunner().invoke(main, ["run", str(path), "--executor", "serial", "--dry-run"])
    assert result.exit_code == 0, result.output  # local's workers do not apply to serial


# ---------------------------------------------------------------------------------------------------
# Executor options: declared by the executor plugin, added to gnorm run by the command line.


@attrs.frozen
class PoolConfig:
    greeting: str = attrs.field(default="hello", validator=attrs.validators.in_(["hello", "hi"]))
    pool: int = attrs.field(default=1, validator=attrs.validators.ge(1))


def _executor_plugin(*options: gnorm.ExecutorOption, name: str = "pool") -> object:
    module = __import__("types").ModuleType(f"gnorm_plugin_{name}")
    module.gnorm_executors = gnorm.hookimpl(lambda: [gnorm.Executor(
        name=name, summary="an executor with options", config_class=PoolConfig,
        factory=lambda config, context: None, options=options)])
    return module


GREETING = gnorm.ExecutorOption(flag="--greeting", key="greeting", metavar="WORD", help="What the pool says.")
POOL_SIZE = gnorm.ExecutorOption(flag="--pool-size", key="pool", metavar="N", help="Processes in the pool.")


@pytest.fixture
def pool_registry(monkeypatch):
    registry = build_registry(extra_plugins=[(_executor_plugin(GREETING, POOL_SIZE), Provider("gnorm-pool", "0.2"))],
                              autoload=False)
    monkeypatch.setattr("gnorm.registry.default_registry", lambda: registry)
    return registry


def test_gnorm_run_help_lists_the_options_executor_plugins_declare(pool_registry):
    result = CliRunner().invoke(main, ["run", "--help"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "--greeting WORD What the pool says. (sets executor.greeting; executor pool)" in text
    assert "--pool-size N Processes in the pool. (sets executor.pool; executor pool)" in text


def test_an_executor_option_sets_its_key_of_the_executor_table_as_a_toml_value(tmp_path, pool_registry):
    path = _small_study(tmp_path)
    ok = CliRunner().invoke(main, ["run", str(path), "--executor", "pool", "--greeting", "hi", "--pool-size", "3",
                                   "--dry-run"])
    assert ok.exit_code == 0, ok.output
    result = CliRunner().invoke(main, ["run", str(path), "--executor", "pool", "--greeting", "bye", "--pool-size", "0",
                                       "--dry-run"])
    assert result.exit_code == 2
    assert f"error: {path}: executor.greeting: " in result.output and "'bye'" in result.output
    assert f"error: {path}: executor.pool: 'pool' must be >= 1: 0" in result.output  # read as an integer


def test_an_executor_option_given_to_another_executor_is_an_unknown_key_of_its_table(tmp_path, pool_registry):
    path = _small_study(tmp_path)
    result = CliRunner().invoke(main, ["run", str(path), "--executor", "serial", "--greeting", "hi"])
    assert result.exit_code == 2 and "executor.greeting: unknown key" in result.output


@pytest.mark.parametrize("option, message", [
    (gnorm.ExecutorOption(flag="--greeting", key="pool", help="x"),
     "option --greeting sets executor.pool, but executor 'other' declares it for executor.greeting"),
    (gnorm.ExecutorOption(flag="--out", key="out", help="x"), "option --out is one of gnorm run's own"),
    (gnorm.ExecutorOption(flag="-g", key="greeting", help="x"), "expected a flag like --scheduler"),
])
def test_an_executor_option_that_cannot_be_added_is_refused_naming_the_executor_and_package(
        tmp_path, monkeypatch, option, message):
    registry = build_registry(extra_plugins=[(_executor_plugin(GREETING, name="other"), Provider("gnorm-other", "1.0")),
                                             (_executor_plugin(option), Provider("gnorm-pool", "0.2"))], autoload=False)
    monkeypatch.setattr("gnorm.registry.default_registry", lambda: registry)
    result = CliRunner().invoke(main, ["run", str(_small_study(tmp_path)), "--dry-run"])
    assert result.exit_code == 2
    assert "error: plugins: executor 'pool' (gnorm-pool 0.2): " in result.output and message in result.output


def test_time_left_extrapolates_this_invocations_pace_in_step_budgets():
    assert time_left(elapsed=60.0, settled=4, unsettled=8) == 120.0
    assert time_left(elapsed=60.0, settled=0, unsettled=8) is None
    # 16 runs of 12000 steps took 2 minutes; 16 of 66000 and 16 of 8000 are left: 2 x 74000 / 12000 min
    assert time_left(elapsed=120.0, settled=16 * 12000, unsettled=16 * 66000 + 16 * 8000) == 120.0 * 74000 / 12000


# ---------------------------------------------------------------------------------------------------
# Too few cells for the workers: a cell's seeds are split over them.


def test_a_cell_is_split_only_when_workers_would_otherwise_idle():
    from gnorm.planner import seed_groups

    assert seed_groups(seeds=16, idle_workers=2, other_ready_cells=0) == 2   # a lone free cell: both cores
    assert seed_groups(seeds=16, idle_workers=2, other_ready_cells=1) == 1   # another cell takes the other core
    assert seed_groups(seeds=16, idle_workers=1, other_ready_cells=0) == 1   # serial, or one worker left
    assert seed_groups(seeds=3, idle_workers=8, other_ready_cells=0) == 3    # never more parts than seeds
    assert seed_groups(seeds=8, idle_workers=8, other_ready_cells=1) == 4    # shared with the other ready cell


def test_a_split_cell_trains_each_seed_exactly_as_the_whole_cell_does(tmp_path):
    # the free stage only: one cell of four seeds for two workers
    path = _small_study(tmp_path, {"name": "local", "workers": 2}, seeds=4, stages=[FREE])
    local = CliRunner().invoke(main, ["run", str(path), "--out", str(tmp_path / "local")])
    serial = CliRunner().invoke(main, ["run", str(path), "--out", str(tmp_path / "serial"), "--executor", "serial"])
    assert local.exit_code == 0 and serial.exit_code == 0, local.output + serial.output
    assert "[free] (all) seeds 0-1: started" in local.output and "[free] (all) seeds 2-3: started" in local.output
    assert "seeds 0-1" not in serial.output
    assert _stored(tmp_path / "local") == _stored(tmp_path / "serial")


def test_ready_cells_go_to_workers_biggest_budget_first(tmp_path):
    """Paper A's dense sweep gives its slow high-rho cells the longest budgets: they start first, so the
    study does not end with one long cell on one worker while the others idle. The other parts of a
    split cell and retries keep their place at the front, and a cell others take Wc from goes first."""
    from gnorm.planner import _Cell, submission_order

    clamp = {"name": "clamp", "critical_norm": 30.0, "controller": {"name": "clamp", "t_start": 100},
             "zip": {"controller.rho": [0.9, 1.1, 1.2], "training.max_steps": [100, 400, 200]}}
    path = _small_study(tmp_path, stages=[FREE, clamp])
    clamp = load_experiment(path, build_registry()).stages[-1]
    cells = {}
    for run in clamp.runs:
        cells.setdefault(run.training.max_steps, []).append(run)
    items = [_Cell(clamp, runs, f"{steps} steps") for steps, runs in cells.items()]
    assert [item.label for item in items] == ["100 steps", "400 steps", "200 steps"]  # plan order
    assert [item.label for item in submission_order(items)] == ["400 steps", "200 steps", "100 steps"]
    one_seed = attrs.evolve(items[2], runs=items[2].runs[:1], label="200 steps, one seed")  # 200 model-steps
    for order in ([one_seed, items[0]], [items[0], one_seed]):  # equal budgets (2 x 100, 1 x 200) keep their order
        assert submission_order(order) == order
    second_part = attrs.evolve(items[0], resolved=True, label="100 steps, second part")
    assert submission_order([items[1], second_part])[0] is second_part


def test_a_cell_others_take_wc_from_goes_first(tmp_path):
    from gnorm.planner import _Cell, budget, submission_order

    experiment = load_experiment(tiny_study(tmp_path, p=31, max_steps=300), build_registry())  # Wc from "free"
    free, clamp = experiment.stages
    source = _Cell(free, free.runs, "free")
    longer = [attrs.evolve(run, training=attrs.evolve(run.training, max_steps=3000)) for run in clamp.runs]
    dependent = _Cell(clamp, [run for run in longer if run.controller.config.rho == 1.1], "clamp rho 1.1")
    assert budget(dependent) > budget(source)
    assert submission_order([dependent, source]) == [source, dependent]


def test_split_parts_are_submitted_before_the_next_cell_is_split(tmp_path):
    """Four workers, two ready cells of four seeds, kept apart (``merge_cells = "off"``; merged, they are
    one job cut in four, tests/test_stage_ensemble.py): each is split in two, so all four workers train."""
    path = _small_study(tmp_path, {"name": "local", "workers": 4, "merge_cells": "off"}, seeds=4,
                        stages=[clamp_stage(30.0)])
    result = CliRunner().invoke(main, ["run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    started = [line.split(":")[0] for line in result.output.splitlines() if line.endswith("Wc 30)")]
    assert sorted(started) == ["[clamp] rho=0.9 seeds 0-1", "[clamp] rho=0.9 seeds 2-3",
                               "[clamp] rho=1.1 seeds 0-1", "[clamp] rho=1.1 seeds 2-3"], result.output


# ---------------------------------------------------------------------------------------------------
# Training processes keep freed memory for the next step.


FAULTS_PER_STEP = """
import resource, sys, torch
from gnorm_bench.bench import workload_job
from gnorm.training.build import build_ensemble
from gnorm.registry import default_registry
from gnorm.worker import train_cell_task
torch.set_num_threads(1)
registry = default_registry()
if sys.argv[1] == "worker":  # this process has trained a cell as every executor's workers do
    train_cell_task(workload_job(registry, seeds=1, steps=2, rho=1.0, stop=False, compile="off"), threads=1)
ensemble, _ = build_ensemble(workload_job(registry, seeds=4, steps=10, rho=1.0, stop=False, compile="off"), registry)
for _ in range(20):  # the heap grows to the step's working set, then stays
    ensemble.gradients()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    ensemble.gradients()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


GLIBC_DEFAULTS = {name: value for name, value in os.environ.items() if not name.startswith("MALLOC_")}


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="glibc's allocator only")
@pytest.mark.slow  # two W1 processes: a performance property, not a result
def test_a_worker_process_stops_page_faulting_its_activations_in_every_step():
    pytest.importorskip("gnorm_bench", reason="the W1 workload is gnorm-bench's (pip install -e plugins/gnorm-bench)")
    import subprocess
    import sys

    def faults_per_step(mode: str) -> float:
        out = subprocess.run([sys.executable, "-c", FAULTS_PER_STEP, mode], capture_output=True, text=True, check=True,
                             env=GLIBC_DEFAULTS)
        return float(out.stdout.strip().splitlines()[-1])

    default, kept = faults_per_step("default"), faults_per_step("worker")
    assert default > 500  # W1's activations (MiBs each) come back from the OS every step
    assert kept < default / 10


def test_an_allocator_configured_through_glibcs_environment_stays_as_configured():
    import subprocess
    import sys

    code = "from gnorm.worker import keep_freed_memory; print(keep_freed_memory())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**GLIBC_DEFAULTS, "MALLOC_TRIM_THRESHOLD_": "65536"})  # as dask's nanny sets it
    assert out.stdout.strip() == "False"
