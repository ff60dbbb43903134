"""Weight snapshots: ``[snapshots] at = [...]`` keeps each run's weights at T_mem, T_grok, its end and
named evaluation steps, content-hashed under ``snapshots/`` and indexed in the store; a snapshot loads
into a module whose test accuracy on the run's own split is the stored one, for members trained
together in one ensemble; snapshots survive a kill through the checkpoint; run ids never depend on
the table; bad tables are refused with file and key; show and export report and copy them."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import sqlite3
from pathlib import Path

import attrs
import pytest
import torch
from click.testing import CliRunner

from builders import FREE, experiment_toml, fork_stage, write_study
from gnorm.checkpoints import checkpoint_path, job_identity
from gnorm.cli import main
from gnorm.errors import UserError
from gnorm.loader import load_experiment
from gnorm.progress import Progress
from gnorm.registry import Provider, build_registry
from gnorm.runmodel import SnapshotConfig, cells_of
from gnorm.scheduler import run_experiment
from gnorm.snapshots import load_module, load_snapshot, load_split
from gnorm.store import DATABASE, Store
from gnorm.training.build import train_cell
from gnorm.training.jobs import CellJob
from gnorm.worker import torch_threads, train_cell_task

REGISTRY = build_registry(autoload=False)
#: A cell that memorizes and groks within 200 steps (p = 47, 70% of the pairs): seed 1 reaches
#: T_mem at 130 and T_grok at 160, seed 0 at 150 and 180, on the development machine.
FAST = {"task": {"p": 47, "train_fraction": 0.7}, "optimizer": {"lr": 1e-2, "weight_decay": 1.0},
        "evaluation": {"every": 10}}
MOMENTS = ["t_mem", "t_grok", "end", 50]
#: A stage whose runs end at step 100, before they grok (censored).
SHORT = {"name": "short", "training": {"max_steps": 100}}


def fast_study(directory: Path, snapshots: dict | None = None, seeds: int | list[int] = 2, stages=None,
               max_steps: int = 300, checkpoint_seconds: float = 0, precision: str = "float32",
               executor: dict | None = None, **sections) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    training = {"max_steps": max_steps, "checkpoint_seconds": checkpoint_seconds, "precision": precision}
    return write_study(directory, filename="fast.toml", experiment={"name": "fast", "seeds": seeds},
                       training=training, executor=executor or {"name": "serial"}, stages=stages or [FREE],
                       snapshots=snapshots, **{**FAST, **sections})


def run(path: Path, out: Path, registry=REGISTRY) -> str:
    """Train ``path`` into ``out`` coordinated from this process; the progress it printed."""
    printed = io.StringIO()
    store = Store(out, create=True)
    try:
        assert run_experiment(load_experiment(path, registry), registry, store, Progress(printed)) == []
    finally:
        store.close()
    return printed.getvalue()


def test_accuracy(module: torch.nn.Module, split) -> float:
    """Arg-max accuracy of ``module`` on ``split``'s test examples, computed as gnorm evaluates it (in
    the weights' precision)."""
    with torch.no_grad():
        logits = module(split.inputs[split.test_index])
    return (logits.argmax(-1) == split.labels[split.test_index]).to(logits.dtype).mean().item()


test_accuracy.__test__ = False  # a helper, not a test


@pytest.fixture(scope="module")
def snapshotted(tmp_path_factory) -> Path:
    """A study of two seeds trained together in one cell (one ensemble), and one seed stopped at step
    100 before grokking, with snapshots at t_mem, t_grok, end and step 50."""
    tmp_path = tmp_path_factory.mktemp("snapshotted")
    path = fast_study(tmp_path, snapshots={"at": MOMENTS}, stages=[FREE, {**SHORT, "seeds": 1}])
    assert "[free] (all): started (2 seeds)" in run(path, tmp_path / "out")  # one ensemble
    return tmp_path / "out"


def stored_runs(out: Path) -> dict:
    store = Store(out, read_only=True)
    try:
        return {record.run_id: (record, store.trajectory(record.run_id)) for record in store.records()}
    finally:
        store.close()


# ---------------------------------------------------------------------------------------------------
# A snapshot is the module that gave the stored numbers.


def test_each_snapshot_loads_into_a_module_with_the_stored_test_accuracy_of_its_step(snapshotted):
    runs = stored_runs(snapshotted)
    free = [(record, trajectory) for record, trajectory in runs.values() if record.stage == "free"]
    assert len(free) == 2 and all(record.t_mem < record.t_grok for record, _ in free)
    for record, trajectory in runs.values():
        split = load_split(snapshotted, record.run_id, registry=REGISTRY)
        moments = MOMENTS if record.t_grok is not None else ["end", 50]
        expected_steps = {"t_mem": record.t_mem, "t_grok": record.t_grok, "end": record.facts["steps_trained"],
                          50: 50}
        for at in moments:
            module = load_module(snapshotted, record.run_id, at, registry=REGISTRY)
            assert isinstance(module, torch.nn.Module) and not module.training
            step = load_snapshot(snapshotted, record.run_id, at)["step"]
            assert step == expected_steps[at], (record.run_id, at)
            stored_test_acc = trajectory["test_acc"][trajectory["step"].index(step)]
            assert test_accuracy(module, split) == stored_test_acc, (record.run_id, at)


def test_a_snapshot_holds_only_its_own_members_weights_in_the_runs_dtype(snapshotted):
    record = next(record for record, _ in stored_runs(snapshotted).values() if record.stage == "free")
    snapshot = load_snapshot(snapshotted, record.run_id, "t_grok")
    module = load_module(snapshotted, record.run_id, "t_grok", registry=REGISTRY)
    params = snapshot["tensors"]["params"]
    assert set(params) == {name for name, _ in module.named_parameters()}
    assert set(snapshot["tensors"]) == {"params", "buffers"} and snapshot["optimizer_steps"] is None
    for name, tensor in params.items():  # one member's slice, not a view of the ensemble's stack
        assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size(), name
        assert torch.equal(module.get_parameter(name).detach(), tensor)


def test_snapshot_files_are_named_by_the_sha256_of_their_bytes_and_shared_when_equal(snapshotted):
    store = Store(snapshotted, read_only=True)
    entries = store.snapshots()
    store.close()
    assert {entry.moment for entry in entries} == {"t_mem", "t_grok", "end", "50"}
    for entry in entries:
        data = (snapshotted / entry.file).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry.sha256 and len(data) == entry.bytes
    by_moment = {(entry.run_id, entry.moment): entry.sha256 for entry in entries}
    grokked = {entry.run_id for entry in entries if entry.moment == "t_grok"}
    assert all(by_moment[(run_id, "t_grok")] == by_moment[(run_id, "end")] for run_id in grokked)  # stopped at grok
    files = [path for path in (snapshotted / "snapshots").rglob("*") if path.is_file()]
    assert sorted(path.name for path in files) == sorted({f"{entry.sha256}.pt" for entry in entries})


def test_optimizer_state_is_kept_where_asked(tmp_path):
    path = fast_study(tmp_path, snapshots={"at": ["end"], "optimizer_state": True}, seeds=1, max_steps=40)
    run(path, tmp_path / "out")
    (record, _), = stored_runs(tmp_path / "out").values()
    snapshot = load_snapshot(tmp_path / "out", record.run_id, "end")
    assert set(snapshot["tensors"]) == {"params", "buffers", "exp_avg", "exp_avg_sq"}
    assert snapshot["optimizer_steps"] == 40 == snapshot["step"]
    assert set(snapshot["tensors"]["exp_avg"]) == set(snapshot["tensors"]["params"])


# ---------------------------------------------------------------------------------------------------
# Asking for what is not there is one clear line.


def test_an_unknown_run_or_moment_or_a_snapshot_never_taken_is_a_clear_error(snapshotted):
    runs = stored_runs(snapshotted)
    free_id = next(run_id for run_id, (record, _) in runs.items() if record.stage == "free")
    censored_id = next(run_id for run_id, (record, _) in runs.items() if record.t_grok is None)
    with pytest.raises(UserError, match="no such stored run"):
        load_module(snapshotted, "0123456789abcdef", "end", registry=REGISTRY)
    with pytest.raises(UserError, match="expected one of t_mem, t_grok, end or an evaluation step.*did you mean 't_grok'"):
        load_module(snapshotted, free_id, "t-grok", registry=REGISTRY)
    with pytest.raises(UserError, match=r"never grokked \(censored at step 100\), so it has no t_grok snapshot"):
        load_module(snapshotted, censored_id, "t_grok", registry=REGISTRY)
    with pytest.raises(UserError, match=r"has no snapshot at 60 .*it has .*50 \(step 50\)"):
        load_module(snapshotted, free_id, 60, registry=REGISTRY)
    with pytest.raises(UserError, match="stopped at step 100, before step 250"):
        load_module(snapshotted, censored_id, 250, registry=REGISTRY)


def test_a_lost_or_damaged_file_is_named(snapshotted, tmp_path):
    shutil.copytree(snapshotted, tmp_path / "out")
    (record, _) = next(iter(stored_runs(tmp_path / "out").values()))
    store = Store(tmp_path / "out", read_only=True)
    entry = next(entry for entry in store.snapshots(record.run_id) if entry.moment == "end")
    store.close()
    file = tmp_path / "out" / entry.file
    file.write_bytes(file.read_bytes()[:-1] + b"x")
    with pytest.raises(UserError, match="damaged: its bytes no longer hash to its name"):
        load_module(tmp_path / "out", record.run_id, "end", registry=REGISTRY)
    file.unlink()
    with pytest.raises(UserError, match=f"{entry.sha256}.pt: missing"):
        load_module(tmp_path / "out", record.run_id, "end", registry=REGISTRY)


# ---------------------------------------------------------------------------------------------------
# Snapshots change no run: off by default, out of run identity, no retraining for a new table.


def test_run_ids_and_stored_configurations_do_not_depend_on_the_snapshots_table(tmp_path):
    plain = load_experiment(fast_study(tmp_path / "a"), REGISTRY)
    with_table = load_experiment(fast_study(tmp_path / "b", snapshots={"at": MOMENTS, "optimizer_state": True}),
                                 REGISTRY)
    assert plain.snapshots == SnapshotConfig() and not plain.snapshots.enabled
    assert with_table.snapshots == SnapshotConfig(("t_mem", "t_grok", "end", 50), True)
    assert [run.run_id for run in plain.runs] == [run.run_id for run in with_table.runs]
    assert [run.plain() for run in plain.runs] == [run.plain() for run in with_table.runs]


def test_without_a_table_nothing_is_taken_and_a_new_table_retrains_nothing(tmp_path):
    out = tmp_path / "out"
    run(fast_study(tmp_path, seeds=1, max_steps=60), out)
    assert not (out / "snapshots").exists()
    (run_id, _), = stored_runs(out).items()
    printed = run(fast_study(tmp_path, snapshots={"at": ["end"]}, seeds=1, max_steps=60), out)
    assert "started" not in printed
    assert not (out / "snapshots").exists()
    with pytest.raises(UserError, match=r"has no snapshots: it was stored without a \[snapshots\] table"):
        load_module(out, run_id, "end", registry=REGISTRY)


def test_the_default_path_gives_the_training_loop_no_snapshots_to_take(tmp_path):
    from gnorm.training.build import build_cell

    (cell,) = cells_of(load_experiment(fast_study(tmp_path), REGISTRY).runs)
    assert build_cell(CellJob(cell, None), REGISTRY).snapshots is None
    assert build_cell(CellJob(cell, None, snapshots=SnapshotConfig()), REGISTRY).snapshots is None


def test_a_schema_1_store_gains_an_empty_snapshot_index_and_keeps_its_runs(tmp_path):
    fixture = Path(__file__).parent / "fixtures" / "release-0.1.0"
    shutil.copytree(fixture, tmp_path / "results")
    before = sorted(row[0] for row in sqlite3.connect(fixture / DATABASE).execute("SELECT run_id FROM runs"))
    reader = Store(tmp_path / "results", read_only=True)  # migrated in memory only
    assert reader.snapshots() == [] and sorted(r.run_id for r in reader.records()) == before
    reader.close()
    assert (tmp_path / "results" / DATABASE).read_bytes() == (fixture / DATABASE).read_bytes()
    writer = Store(tmp_path / "results", create=True)
    assert writer.meta("schema_version") == "2" and writer.snapshots() == []
    assert sorted(r.run_id for r in writer.records()) == before
    writer.close()


# ---------------------------------------------------------------------------------------------------
# A kill loses no snapshot: the checkpoint carries those taken so far.


class Interrupted(Exception):
    pass


def interrupt_at(job: CellJob, step: int) -> None:
    def progress(at: int, active: int) -> None:
        if at >= step:
            raise Interrupted(at)
    with torch_threads(1), pytest.raises(Interrupted):
        train_cell(job, REGISTRY, lambda record, log: None, progress)


def test_snapshots_taken_before_a_kill_survive_the_resumption_bit_for_bit(tmp_path):
    path = fast_study(tmp_path, seeds=2, max_steps=300, checkpoint_seconds=1e-6)
    (cell,) = cells_of(load_experiment(path, REGISTRY).runs)
    snapshots = SnapshotConfig(tuple(MOMENTS))
    job = CellJob(cell, None, checkpoint=str(checkpoint_path(tmp_path / "checkpoints", [r.run_id for r in cell])),
                  snapshots=snapshots)
    uninterrupted = {r.record.run_id: r.snapshots for r in train_cell_task(attrs.evolve(job, checkpoint=None), 1,
                                                                           REGISTRY)}
    assert all({m for s in taken for m in s["moments"]} == set(MOMENTS) for taken in uninterrupted.values())
    seed_one = next(run.run_id for run in cell if run.seed == 1)
    interrupt_at(job, 140)  # after step 50 and seed 1's T_mem (130): both ride in the checkpoint
    saved = torch.load(job.checkpoint, map_location="cpu", weights_only=True)
    logs = {log["run_id"]: log for log in saved["logs"]}
    assert saved["step"] == 130 and [s["step"] for s in logs[seed_one]["snapshots"]] == [50, 130]
    interrupt_at(job, 170)  # seed 1 grokked at 160 and left: its snapshots ride with its record
    saved = torch.load(job.checkpoint, map_location="cpu", weights_only=True)
    assert len(saved["finished"]) == 1 and len(saved["finished"][0]["snapshots"]) == 3
    resumed = {r.record.run_id: r.snapshots for r in train_cell_task(job, 1, REGISTRY)}
    assert resumed == uninterrupted


def test_a_checkpoint_taken_without_these_snapshots_is_another_jobs(tmp_path):
    (cell,) = cells_of(load_experiment(fast_study(tmp_path), REGISTRY).runs)
    plain = job_identity(CellJob(cell, None), "cpu")
    assert job_identity(CellJob(cell, None, snapshots=SnapshotConfig()), "cpu") == plain
    assert job_identity(CellJob(cell, None, snapshots=SnapshotConfig(("end",))), "cpu") != plain


# ---------------------------------------------------------------------------------------------------
# Bad tables are refused when the file loads, with the file and the key.


@pytest.mark.parametrize("table, key, message", [
    ("not a table", "snapshots", "expected a table like"),
    ({"at": ["t_grok"], "every": 5}, "snapshots.every", "unknown key"),
    ({"at": "t_grok"}, "snapshots.at", "expected a list of moments"),
    ({"at": ["t_grok", "t-mem"]}, "snapshots.at[1]", "unknown moment 't-mem'.*did you mean 't_mem'"),
    ({"at": [True]}, "snapshots.at[0]", "expected t_mem, t_grok, end or an evaluation step"),
    ({"at": [0]}, "snapshots.at[0]", "a positive integer"),
    ({"at": [1.5]}, "snapshots.at[0]", "found a float"),
    ({"at": ["end", 55]}, "snapshots.at[1]", "step 55 is not an evaluation step of stage 'free' "
                                             r"\(the nearest are 50 and 60\)"),
    ({"at": ["end"], "optimizer_state": "yes"}, "snapshots.optimizer_state", "expected true or false"),
])
def test_a_bad_snapshots_table_is_refused_with_its_key(tmp_path, table, key, message):
    path = tmp_path / "bad.toml"
    text = experiment_toml([FREE], **FAST)
    if isinstance(table, str):
        text = f"snapshots = {json.dumps(table)}\n" + text
    else:
        text += "\n" + experiment_toml([], snapshots=table, **{s: None for s in
                                       ("experiment", "task", "architecture", "optimizer", "training", "evaluation")})
    path.write_text(text)
    with pytest.raises(UserError) as refused:
        load_experiment(path, REGISTRY)
    lines = str(refused.value).splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{path}: {key}: "), lines
    assert re.search(message, lines[0]), lines[0]


def test_a_step_at_or_before_a_fork_is_refused_and_one_past_a_shorter_budget_is_not(tmp_path):
    path = fast_study(tmp_path, snapshots={"at": [200]}, stages=[FREE, {**SHORT}])
    assert load_experiment(path, REGISTRY).snapshots.at == (200,)  # the short stage ends before 200
    path = fast_study(tmp_path, snapshots={"at": [40]}, stages=[FREE, fork_stage("arm", 50)])
    with pytest.raises(UserError, match=r"snapshots.at\[0\]: stage 'arm' forks at step 50: its runs are evaluated"):
        load_experiment(path, REGISTRY)


def test_the_command_line_refuses_a_bad_table_in_one_line_with_status_2(tmp_path, monkeypatch):
    monkeypatch.setenv("GNORM_DISABLE_PLUGIN_AUTOLOAD", "1")  # gnorm's own plugins, whatever is installed
    path = fast_study(tmp_path, snapshots={"at": ["t_grokk"]})
    result = CliRunner().invoke(main, ["run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.strip() == (f"error: {path}: snapshots.at[0]: unknown moment 't_grokk': expected one of "
                                     "t_mem, t_grok, end or an evaluation step (did you mean 't_grok'?)")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------
# show reports them, export copies them.


def test_show_reports_the_snapshot_count_and_size(snapshotted):
    store = Store(snapshotted, read_only=True)
    entries = store.snapshots()
    store.close()
    files = {entry.sha256: entry.bytes for entry in entries}
    result = CliRunner().invoke(main, ["show", str(snapshotted)])
    assert result.exit_code == 0, result.output
    assert (f"snapshots: {len(entries)} of 3 runs ({len(files)} files, {sum(files.values()) / 2**20:.2f} MiB in "
            "snapshots/)") in result.output


def test_export_writes_the_snapshots_and_their_index_only_when_asked(snapshotted, tmp_path):
    result = CliRunner().invoke(main, ["export", str(snapshotted), "--out", str(tmp_path / "plain")])
    assert result.exit_code == 0 and not (tmp_path / "plain" / "snapshots").exists()
    result = CliRunner().invoke(main, ["export", str(snapshotted), "--snapshots", "--out", str(tmp_path / "all")])
    assert result.exit_code == 0, result.output
    index = json.loads((tmp_path / "all" / "snapshots.json").read_text())
    store = Store(snapshotted, read_only=True)
    assert [{k: v for k, v in row.items() if k != "file"} for row in index] == [attrs.asdict(e) for e in store.snapshots()]
    store.close()
    for row in index:
        assert hashlib.sha256((tmp_path / "all" / row["file"]).read_bytes()).hexdigest() == row["sha256"]


# ---------------------------------------------------------------------------------------------------
# What the loop keeps, moment by moment.


def test_a_moment_falls_where_the_criterion_dates_it_and_a_revised_date_drops_its_label():
    from gnorm.components import GrokTimes
    from gnorm.training.runlog import RunLog
    from gnorm.training.snapshots import moments_due, settled

    config = SnapshotConfig(("t_mem", "t_grok", "end", 40))
    log = RunLog(run=None, times=GrokTimes(t_mem=30, t_grok=None))
    assert moments_due(config, log, 30, ending=False) == ["t_mem"]
    assert moments_due(config, log, 40, ending=False) == [40]
    log.times = GrokTimes(t_mem=30, t_grok=30)  # a criterion that dates T_grok at a step already past
    assert moments_due(config, log, 50, ending=True) == ["end"]
    taken = [{"step": 30, "moments": ["t_mem"], "data": b"a"}, {"step": 60, "moments": ["t_grok", "end"], "data": b"b"}]
    assert settled(taken, t_mem=30, t_grok=60) == taken
    assert settled(taken, t_mem=None, t_grok=50) == [{"step": 60, "moments": ["end"], "data": b"b"}]


def test_a_transformer_trained_in_float64_loads_with_its_stored_test_accuracy(tmp_path):
    path = fast_study(tmp_path, snapshots={"at": ["end", 10]}, seeds=2, max_steps=20, precision="float64",
                      task={"p": 23, "train_fraction": 0.7},
                      architecture={"name": "transformer", "embed_dim": 8, "hidden_dim": None, "num_heads": 2,
                                    "mlp_dim": 16})
    run(path, tmp_path / "out")
    for record, trajectory in stored_runs(tmp_path / "out").values():
        split = load_split(tmp_path / "out", record.run_id, registry=REGISTRY)
        for at, step in (("end", 20), (10, 10)):
            module = load_module(tmp_path / "out", record.run_id, at, registry=REGISTRY)
            assert {p.dtype for p in module.parameters()} == {torch.float64}
            assert test_accuracy(module, split) == trajectory["test_acc"][trajectory["step"].index(step)]


# ---------------------------------------------------------------------------------------------------
# Workers never write the results directory: snapshots come back with the results.


def check_every_snapshot(out: Path) -> int:
    """Each stored snapshot loads with the stored test accuracy of its step; the count of them."""
    count = 0
    for record, trajectory in stored_runs(out).values():
        split = load_split(out, record.run_id, registry=REGISTRY)
        store = Store(out, read_only=True)
        entries = store.snapshots(record.run_id)
        store.close()
        for entry in entries:
            module = load_module(out, record.run_id, entry.moment, registry=REGISTRY)
            assert test_accuracy(module, split) == trajectory["test_acc"][trajectory["step"].index(entry.step)]
            count += 1
    return count


@pytest.mark.slow  # spawning worker processes that import torch: about 30 s on the shared 2-core machine
def test_snapshots_travel_back_from_worker_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("GNORM_DISABLE_PLUGIN_AUTOLOAD", "1")
    path = fast_study(tmp_path, snapshots={"at": ["end", 10]}, seeds=2, max_steps=20,
                      executor={"name": "local", "workers": 2})
    result = CliRunner().invoke(main, ["run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert check_every_snapshot(tmp_path / "out") == 4


@pytest.mark.slow  # a dask scheduler and worker as separate processes
def test_snapshots_travel_back_from_a_dask_worker(tmp_path):
    pytest.importorskip("distributed")
    gnorm_dask = pytest.importorskip("gnorm_dask")
    import os
    import subprocess
    import sys
    import time

    dask = Path(sys.executable).with_name("dask")
    if not dask.exists():
        pytest.skip("the dask command is not installed next to this Python")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GNORM_DISABLE_PLUGIN_AUTOLOAD": "1"}  # gnorm's own plugins
    registry = build_registry(extra_plugins=[(gnorm_dask, Provider("gnorm-dask", "test"))], autoload=False)
    scheduler_file = tmp_path / "scheduler.json"
    processes = [subprocess.Popen([str(dask), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                   "--scheduler-file", str(scheduler_file)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True, env=env)]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        worker_dir = tmp_path / "worker"  # the worker runs elsewhere and never sees the results directory
        worker_dir.mkdir()
        processes.append(subprocess.Popen([str(dask), "worker", address, "--nthreads", "1", "--no-nanny",
                                           "--no-dashboard", "--host", "127.0.0.1"], cwd=worker_dir,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          start_new_session=True, env=env))
        path = fast_study(tmp_path, snapshots={"at": ["t_mem", "end", 10]}, seeds=2, max_steps=40,
                          executor={"name": "dask", "scheduler": address})
        run(path, tmp_path / "out", registry)
    finally:
        import signal
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
    assert check_every_snapshot(tmp_path / "out") >= 4
    assert not any(worker_dir.rglob("*.pt"))


def test_results_weights_is_the_snapshot_module_with_the_stored_test_accuracy(snapshotted):
    """The Python API's ``gnorm.open(dir).weights(run_id, at)`` gives the module ``load_module`` gives."""
    import gnorm

    runs = stored_runs(snapshotted)
    record, trajectory = next((r, t) for r, t in runs.values() if r.t_grok is not None)
    with gnorm.open(snapshotted) as results:
        module = results.weights(record.run_id, "t_grok")
    assert isinstance(module, torch.nn.Module) and not module.training
    split = load_split(snapshotted, record.run_id, registry=REGISTRY)
    assert test_accuracy(module, split) == trajectory["test_acc"][trajectory["step"].index(record.t_grok)]
