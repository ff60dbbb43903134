"""Long cells survive a kill: a cell checkpoints its whole training state as it goes, a task given the
same job again resumes from the checkpoint, and what it stores is bit-identical to an uninterrupted
run (wall time aside). Damaged checkpoints and checkpoints of other jobs are ignored; a stored cell's
checkpoint is removed; a split cell resumes in the parts it was checkpointed in."""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import attrs
import pytest
import torch

import gnorm
import gnorm.training.loop
from builders import FREE, write_study
from conftest import GNORM, SLOW_TINY
from gnorm.builtins.controllers import Clamp, ClampConfig
from gnorm.checkpoints import CHECKPOINT_FOLDER, checkpoint_path
from gnorm.executor_table import with_executor
from gnorm.loader import load_experiment
from gnorm.planner import _Cell, checkpointed_parts
from gnorm.progress import Progress
from gnorm.registry import Provider, build_registry
from gnorm.runmodel import cells_of
from gnorm.scheduler import run_experiment
from gnorm.store import DATABASE, Store
from gnorm.training.build import train_cell
from gnorm.training.jobs import CellJob
from gnorm.worker import torch_threads, train_cell_task

REGISTRY = build_registry(autoload=False)

#: Seeds 0, 1, 2 of the free cell grok at steps 500, 300 and 280 and stop there; the held cell holds
#: each seed at its own norm from step 200: seed 1 groks at 340, seed 0 trains out its budget.
HELD = {"name": "held", "controller": {"name": "relative_clamp", "factor": 1.0, "t_start": 200}}


def study(tmp_path: Path, seeds: int | tuple[int, ...] | list[int] = (0, 1), max_steps: int = 600,
          checkpoint_seconds: float = 1e-6, executor: str = "serial", held: bool = True, free: dict | None = None,
          workers: int | None = None, **sections) -> Path:
    """The study file (the tiny study at ``SLOW_TINY``'s settings, so that its seeds grok at the steps
    these tests name, its free stage changed by ``free``, and the held stage when ``held``);
    ``checkpoint_seconds = 1e-6`` checkpoints at every evaluation."""
    sections = {"task": {"p": SLOW_TINY["p"]}, "optimizer": {"lr": SLOW_TINY["lr"]}, **sections}
    return write_study(tmp_path, filename="checkpointed.toml", experiment={"name": "checkpointed", "seeds": seeds},
                       training={"max_steps": max_steps, "checkpoint_seconds": checkpoint_seconds},
                       executor={"name": executor, "workers": workers},
                       stages=[{**FREE, **(free or {})}, *([HELD] if held else [])], **sections)


def jobs(path: Path, folder: Path, registry=REGISTRY) -> dict[str, CellJob]:
    """stage name -> the job of its (one) cell (Wc as the stage gives it), checkpointing to ``folder``."""
    experiment = load_experiment(path, registry)
    out = {}
    for stage in experiment.stages:
        (cell,) = cells_of(stage.runs)
        out[stage.name] = CellJob(cell, stage.critical_norm,
                                  checkpoint=str(checkpoint_path(folder, [r.run_id for r in cell])))
    return out


def comparable(results) -> list:
    """Each run's record (all but its wall time), evaluation steps and metric columns, in finishing order."""
    rows = []
    for result in results:
        record = attrs.asdict(result.record)
        record["facts"] = {k: v for k, v in record["facts"].items() if k != "wall_seconds"}
        rows.append((record, result.steps, result.metrics))
    return rows


class Interrupted(Exception):
    pass


def saved(job: CellJob) -> dict:
    """The job's checkpoint file as stored (format checks aside)."""
    return torch.load(job.checkpoint, map_location="cpu", weights_only=True)


def interrupt_at(job: CellJob, step: int, registry=REGISTRY) -> None:
    """Train ``job`` (resuming from its checkpoint, if any) and stop it at the evaluation of ``step``."""
    def progress(at: int, active: int) -> None:
        if at >= step:
            raise Interrupted(at)
    with torch_threads(1), pytest.raises(Interrupted):
        train_cell(job, registry, lambda record, log: None, progress)


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("cells")
    path = study(tmp_path)
    uninterrupted = {name: comparable(train_cell_task(attrs.evolve(job, checkpoint=None), 1, REGISTRY))
                     for name, job in jobs(path, tmp_path / "unused").items()}
    return path, uninterrupted


# ---------------------------------------------------------------------------------------------------
# Resumed cells store what uninterrupted cells store, bit for bit.


def test_a_cell_interrupted_twice_resumes_and_finishes_bit_identical(cells, tmp_path):
    path, uninterrupted = cells
    job = jobs(path, tmp_path)["free"]
    interrupt_at(job, 200)
    assert saved(job)["step"] == 180 and len(saved(job)["members"]) == 2
    interrupt_at(job, 400)  # seed 1 grokked at 300 and left: its record rides in the checkpoint
    assert saved(job)["step"] == 380 and len(saved(job)["members"]) == 1 and len(saved(job)["finished"]) == 1
    assert comparable(train_cell_task(job, 1, REGISTRY)) == uninterrupted["free"]


def test_a_controller_with_per_member_state_resumes_bit_identical(cells, tmp_path):
    path, uninterrupted = cells
    job = jobs(path, tmp_path)["held"]
    interrupt_at(job, 260)  # after t_start: each seed's held norm is the controller's state
    interrupt_at(job, 400)  # seed 1 grokked at 340: the controller kept seed 0's held norm only
    assert len(saved(job)["members"]) == 1
    assert comparable(train_cell_task(job, 1, REGISTRY)) == uninterrupted["held"]


# ---------------------------------------------------------------------------------------------------
# What is not a usable checkpoint is ignored, with a warning; nothing else changes.


@pytest.fixture(scope="module")
def short(tmp_path_factory):
    """The free cell over 100 steps (no seed groks), its uninterrupted results."""
    tmp_path = tmp_path_factory.mktemp("short")
    path = study(tmp_path, max_steps=100, held=False)
    return path, comparable(train_cell_task(jobs(path, tmp_path / "unused")["free"], 1, REGISTRY))


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_checkpoint_is_ignored_and_the_cell_trains_from_the_start(short, tmp_path, damage):
    path, uninterrupted = short
    job = jobs(path, tmp_path)["free"]
    file = Path(job.checkpoint)
    if damage == "garbage":
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(b"not a checkpoint")
    else:
        interrupt_at(job, 60)
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.warns(UserWarning, match="damaged checkpoint ignored"):
        results = train_cell_task(job, 1, REGISTRY)
    assert comparable(results) == uninterrupted


def test_a_checkpoint_of_another_job_is_ignored(short, tmp_path):
    path, uninterrupted = short
    job = jobs(path, tmp_path)["free"]
    interrupt_at(job, 60)
    other = CellJob(job.runs, 12.5, checkpoint=job.checkpoint)  # another Wc: another job's results
    interrupt_at(other, 80)
    with pytest.warns(UserWarning, match="checkpoint of another job"):
        results = train_cell_task(job, 1, REGISTRY)
    assert comparable(results) == uninterrupted
    assert saved(job)["step"] == 100  # and it checkpointed anew as it went, to its last evaluation


def test_a_folder_that_cannot_be_written_costs_only_the_checkpoints(short, tmp_path):
    path, uninterrupted = short
    (tmp_path / "a file").write_text("")
    job = attrs.evolve(jobs(path, tmp_path)["free"], checkpoint=str(tmp_path / "a file" / "checkpoint.pt"))
    with pytest.warns(UserWarning, match="cannot write checkpoints here"):
        results = train_cell_task(job, 1, REGISTRY)
    assert comparable(results) == uninterrupted


def test_a_controller_that_cannot_be_pickled_trains_without_checkpoints(tmp_path):
    class Unpicklable(Clamp):  # a class local to a function cannot be pickled
        pass

    class Plugin:
        @gnorm.hookimpl
        def gnorm_norm_controllers(self):
            return [gnorm.NormController(name="local_clamp", summary="a clamp that cannot be pickled",
                                         config_class=ClampConfig, factory=Unpicklable, uses_critical_norm=True)]

    registry = build_registry(extra_plugins=[(Plugin(), Provider("test-plugin", "0"))], autoload=False)
    path = study(tmp_path, max_steps=60, held=False,
                 free={"critical_norm": 30.0, "controller": {"name": "local_clamp"}})
    job = jobs(path, tmp_path, registry)["free"]
    with pytest.warns(UserWarning, match="cannot be pickled, so it trains without checkpoints"):
        results = train_cell_task(job, 1, registry)
    assert len(results) == 2 and not Path(job.checkpoint).exists()


# ---------------------------------------------------------------------------------------------------
# The coordinator: resumes from the checkpoint, removes it once the cell is stored, keeps a split.


def stored(out: Path) -> dict:
    store = Store(out)
    return {r.run_id: (r.t_grok, r.t_mem, r.norm_at_grok, {k: v for k, v in r.facts.items() if k != "wall_seconds"},
                       store.trajectory(r.run_id)) for r in store.records()}


def stop_at(step: int, monkeypatch) -> None:
    """Interrupt the study (as Ctrl-C would) at the first evaluation of ``step`` or later, in the
    training loop itself (the in-process executor runs it in this process)."""
    real = gnorm.training.loop.evaluate

    def evaluate(parts, logs, at, *rest):
        if at >= step:
            raise KeyboardInterrupt
        return real(parts, logs, at, *rest)
    monkeypatch.setattr(gnorm.training.loop, "evaluate", evaluate)


def test_an_interrupted_study_resumes_its_cell_and_removes_the_checkpoint_once_stored(short, tmp_path, monkeypatch):
    path, _ = short
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        stop_at(60, patch)
        with pytest.raises(KeyboardInterrupt):
            run_experiment(load_experiment(path, REGISTRY), REGISTRY, Store(out, create=True),
                           Progress(io.StringIO()))
    assert [file.name for file in (out / CHECKPOINT_FOLDER).iterdir()] == [Path(jobs(path, out)["free"].checkpoint).name]

    resumed_from = []
    real = gnorm.training.loop.resume
    monkeypatch.setattr(gnorm.training.loop, "resume", lambda job, state, *rest: resumed_from.append(state.step)
                        or real(job, state, *rest))
    assert run_experiment(load_experiment(path, REGISTRY), REGISTRY, Store(out), Progress(io.StringIO())) == []
    assert resumed_from == [40]
    assert list((out / CHECKPOINT_FOLDER).iterdir()) == []
    run_experiment(load_experiment(path, REGISTRY), REGISTRY, Store(tmp_path / "whole", create=True),
                   Progress(io.StringIO()))
    assert stored(out) == stored(tmp_path / "whole")


def _cell(runs) -> _Cell:
    return _Cell(stage=None, runs=runs, label="[free] (all)")


def test_a_cell_is_cut_into_the_parts_that_left_checkpoints_and_the_seeds_between_them():
    runs = [attrs.make_class("Run", ["seed"])(seed) for seed in range(6)]
    with_checkpoints = [runs[1:3], runs[4:5], runs[1:2]]
    parts = checkpointed_parts(_cell(runs), lambda part: part in with_checkpoints)
    assert [part.runs for part in parts] == [runs[0:1], runs[1:3], runs[3:4], runs[4:5], runs[5:6]]
    assert parts[1].label == "[free] (all) seeds 1-2"
    assert checkpointed_parts(_cell(runs), lambda part: False) is None
    assert [part.runs for part in checkpointed_parts(_cell(runs), lambda part: part == runs)] == [runs]


def test_a_cell_checkpointed_in_other_parts_than_this_split_resumes_in_those_parts(tmp_path):
    path = study(tmp_path, seeds=4, max_steps=100, held=False)
    out = tmp_path / "out"
    (cell,) = cells_of(load_experiment(path, REGISTRY).stages[0].runs)
    first_three = CellJob(cell[:3], None, checkpoint=str(checkpoint_path(out / CHECKPOINT_FOLDER,
                                                                         [r.run_id for r in cell[:3]])))
    interrupt_at(first_three, 60)  # as if an earlier invocation had split the cell 3 + 1
    stream = io.StringIO()
    local = load_experiment(path, REGISTRY, {"executor.name": "local", "executor.workers": 2})
    assert run_experiment(local, REGISTRY, Store(out, create=True), Progress(stream)) == []
    assert "[free] (all) seeds 0-2: started" in stream.getvalue(), stream.getvalue()  # not 0-1 and 2-3
    assert "[free] (all) seeds 3-3: started" in stream.getvalue()
    assert list((out / CHECKPOINT_FOLDER).iterdir()) == []
    run_experiment(load_experiment(path, REGISTRY), REGISTRY, Store(tmp_path / "serial", create=True),
                   Progress(io.StringIO()))
    assert stored(out) == stored(tmp_path / "serial")


# ---------------------------------------------------------------------------------------------------
# The promise end to end: `gnorm run` killed at random moments, then run to completion.


def checkpoint_steps(folder: Path) -> dict[str, tuple[int, int]]:
    """file name -> (step, inode) of every checkpoint in ``folder``; each must load (writes are atomic)."""
    found = {}
    for file in folder.glob("*.pt"):
        try:
            with open(file, "rb") as handle:  # the inode and the step of the same file
                inode = os.fstat(handle.fileno()).st_ino
                found[file.name] = (torch.load(handle, map_location="cpu", weights_only=True)["step"], inode)
        except FileNotFoundError:  # stored and removed meanwhile
            continue
    return found


def spawned_children(pid: int) -> list[int]:
    """The multiprocessing spawn workers whose parent is ``pid``."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid \
                    and b"spawn_main" in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return pids


class Killer:
    """Starts ``command`` in its own session and kills it (or only what ``kill_part`` kills) ``kills``
    times. Kill i comes a random 0-0.1 s after a checkpoint written since the last kill reaches step
    (i + 1) * budget / (kills + 1), so kills spread over the cell whatever the machine's speed.
    Records, for every kill, the step of the first checkpoint written after the previous one."""

    def __init__(self, command: list[str], folder: Path, log: Path, env: dict, seed: int = 16):
        self.command, self.folder, self.log, self.env = command, folder, log, env
        self.random = random.Random(seed)
        self.first_after: list[int] = []
        self.killed_at: list[int] = []

    def start(self) -> subprocess.Popen:
        return subprocess.Popen(self.command, stdout=self.log.open("a"), stderr=subprocess.STDOUT,
                                start_new_session=True, env=self.env)

    def run(self, kills: int, budget: int, kill_part=None) -> None:
        process = self.start()
        try:
            for kill in range(kills):
                target = (kill + 1) * budget // (kills + 1)
                before, first, deadline = checkpoint_steps(self.folder), None, time.monotonic() + 300
                while True:
                    assert process.poll() is None and time.monotonic() < deadline, self.log.read_text()
                    now = checkpoint_steps(self.folder)
                    new = [step for name, (step, inode) in now.items() if before.get(name, (None, None))[1] != inode]
                    if new and first is None:
                        first = min(new)
                    if new and max(new) >= target:
                        break
                    time.sleep(0.02)
                time.sleep(self.random.uniform(0.0, 0.1))
                if kill_part is not None and kill % 2 == 1:
                    kill_part(process)
                else:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=30)
                    if kill_part is not None:
                        kill_part(None)
                self.first_after.append(first)
                self.killed_at.append(max(step for step, _ in checkpoint_steps(self.folder).values()))
                if process.poll() is not None:
                    process = self.start()
            assert process.wait(timeout=600) == 0, self.log.read_text()
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


def assert_killed_cell_resumed_and_matches(killer: Killer, out: Path, path: Path, tmp_path: Path) -> None:
    """Every restart went on from the last checkpoint (its first new checkpoint lies after it), the
    study stored every planned run once, left no checkpoint, and stored what an uninterrupted run of
    the same file stores, bit for bit."""
    assert all(first > killed for first, killed in zip(killer.first_after[1:], killer.killed_at)), \
        (killer.first_after, killer.killed_at)
    assert killer.killed_at == sorted(killer.killed_at)
    planned = sorted(run_id for run_id, _, _ in Store(out).plan())
    rows = Store(out).connection.execute("SELECT run_id, status FROM runs").fetchall()
    assert sorted(rows) == [(run_id, "done") for run_id in planned]
    assert list((out / CHECKPOINT_FOLDER).glob("*")) == []
    whole = with_executor(load_experiment(path, REGISTRY), "serial", None)  # the same results on any executor
    assert run_experiment(whole, REGISTRY, Store(tmp_path / "whole", create=True), Progress(io.StringIO())) == []
    assert stored(out) == stored(tmp_path / "whole")


def killed_study(tmp_path: Path, seeds: list[int]) -> tuple[Path, Path, Killer]:
    path = study(tmp_path, seeds=seeds, max_steps=500, checkpoint_seconds=0.05, executor="local", held=False,
                 workers=1, evaluation={"every": 10})
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return path, out, Killer([*GNORM, "run", str(path), "--out", str(out)], out / CHECKPOINT_FOLDER,
                             tmp_path / "gnorm.log", env)


def kill_the_worker(process: subprocess.Popen | None) -> None:
    """SIGKILL the study's local worker (the coordinator retries its cell in a new one)."""
    if process is None:
        return
    for pid in spawned_children(process.pid):
        os.kill(pid, signal.SIGKILL)


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers through /proc")


@needs_proc
def test_gnorm_run_killed_three_times_completes_bit_identical(tmp_path):
    path, out, killer = killed_study(tmp_path, [2, 1])  # grok at 280 and 300
    killer.run(kills=3, budget=280, kill_part=kill_the_worker)
    assert "lost with its worker" in killer.log.read_text()  # the middle kill took the worker only
    assert_killed_cell_resumed_and_matches(killer, out, path, tmp_path)


@pytest.mark.slow  # about two minutes on the shared 2-core machine
@needs_proc
def test_gnorm_run_killed_ten_times_at_random_moments_completes_bit_identical(tmp_path):
    path, out, killer = killed_study(tmp_path, [0, 1, 2])  # seeds 2 and 1 finish at 280 and 300, 0 at 500
    killer.run(kills=10, budget=500, kill_part=kill_the_worker)
    assert_killed_cell_resumed_and_matches(killer, out, path, tmp_path)


class DaskCluster:
    """A dask scheduler and one worker on loopback, each a process in its own session; the worker can
    be killed and started again."""

    def __init__(self, tmp_path: Path, env: dict):
        self.dask, self.tmp_path, self.env = Path(sys.executable).with_name("dask"), tmp_path, env
        scheduler_file = tmp_path / "scheduler.json"
        self.scheduler = self._start("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                     "--scheduler-file", str(scheduler_file), log="scheduler")
        deadline = time.monotonic() + 60
        while not scheduler_file.exists():
            assert time.monotonic() < deadline, (tmp_path / "scheduler.log").read_text()
            time.sleep(0.2)
        time.sleep(0.5)  # the file is written whole before the scheduler listens
        import json
        self.address = json.loads(scheduler_file.read_text())["address"]
        self.worker = self.start_worker()

    def _start(self, *args: str, log: str) -> subprocess.Popen:
        return subprocess.Popen([str(self.dask), *args], stdout=(self.tmp_path / f"{log}.log").open("a"),
                                stderr=subprocess.STDOUT, start_new_session=True, env=self.env)

    def start_worker(self) -> subprocess.Popen:
        return self._start("worker", self.address, "--nthreads", "1", "--no-nanny", "--no-dashboard", "--host",
                           "127.0.0.1", "--name", "w0", log="worker")

    def kill_worker(self, coordinator: subprocess.Popen | None = None) -> None:
        """SIGKILL the worker and start a fresh one (after the coordinator, when it was killed too)."""
        os.killpg(self.worker.pid, signal.SIGKILL)
        self.worker.wait(timeout=30)
        self.worker = self.start_worker()

    def close(self) -> None:
        for process in (self.worker, self.scheduler):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


@pytest.mark.slow  # about two and a half minutes on the shared 2-core machine
def test_gnorm_run_on_dask_killed_at_random_moments_completes_bit_identical(tmp_path):
    pytest.importorskip("distributed", reason="dask's distributed is not installed")
    pytest.importorskip("gnorm_dask", reason="the gnorm-dask plugin is not installed")
    if not Path(sys.executable).with_name("dask").exists():
        pytest.skip("the dask command is not installed next to this Python")
    path, out, killer = killed_study(tmp_path, [0, 1, 2])
    cluster = DaskCluster(tmp_path, killer.env)
    try:
        killer.command += ["--executor", "dask", "--scheduler", cluster.address]
        # odd kills: the worker alone (dask gives its task to the next worker); even kills: the
        # coordinator, then the worker (so that no orphaned task trains on)
        killer.run(kills=10, budget=500, kill_part=cluster.kill_worker)
    finally:
        cluster.close()
    assert_killed_cell_resumed_and_matches(killer, out, path, tmp_path)
