"""The gnorm-dask plugin on a real cluster: a scheduler and two workers as separate processes on
loopback; one worker is killed in the middle of the study, and the study still stores every run exactly
once, equal to a serial run of the same file. Skipped where distributed or gnorm-dask is missing."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import GNORM, tiny_study
from gnorm.cli import main
from gnorm.store import DATABASE, Store

pytest.importorskip("distributed")
pytest.importorskip("gnorm_dask")
DASK = Path(sys.executable).with_name("dask")


def _start(*args: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([str(DASK), *args], stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _stored_count(database: Path) -> int:
    try:
        return sqlite3.connect(database).execute("SELECT count(*) FROM runs").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def _results(out: Path) -> dict:
    store = Store(out)
    return {r.run_id: (r.t_grok, r.t_mem, r.norm_at_grok, {k: v for k, v in r.facts.items() if k != "wall_seconds"},
                       store.trajectory(r.run_id)) for r in store.records()}


@pytest.mark.slow  # about 2 minutes on the shared 2-core machine
@pytest.mark.skipif(not DASK.exists(), reason="the dask command is not installed next to this Python")
def test_a_study_survives_losing_a_dask_worker_and_matches_a_serial_run(tmp_path):
    from distributed import Client

    path = tiny_study(tmp_path)  # free cell, then two clamp cells that take Wc from it
    scheduler_file = tmp_path / "scheduler.json"
    processes = [_start("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                        "--scheduler-file", str(scheduler_file), log=tmp_path / "scheduler.log")]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        workers = [_start("worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard", "--host", "127.0.0.1",
                          "--name", f"w{i}", log=tmp_path / f"worker{i}.log") for i in range(2)]
        processes += workers
        client = Client(address, timeout="60s")
        client.wait_for_workers(2, timeout=120)
        (first_worker,) = [a for a, info in client.scheduler_info()["workers"].items() if info["name"] == "w0"]

        out = tmp_path / "dask"
        study = subprocess.Popen([*GNORM, "run", str(path), "--out", str(out), "--executor", "dask",
                                  "--scheduler", address], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 env={**os.environ, "OMP_NUM_THREADS": "1"})
        deadline = time.monotonic() + 300
        while _stored_count(out / DATABASE) < 2:  # the free cell is stored; the clamp cells start now
            assert study.poll() is None and time.monotonic() < deadline, study.communicate()[0]
            time.sleep(0.1)
        while not client.processing([first_worker]).get(first_worker):  # w0 is training a clamp cell
            assert study.poll() is None and time.monotonic() < deadline, study.communicate()[0]
            time.sleep(0.1)
        stored_when_killed = _stored_count(out / DATABASE)
        os.killpg(workers[0].pid, signal.SIGKILL)
        output, _ = study.communicate(timeout=300)
        assert study.returncode == 0, output
        assert stored_when_killed < 6, "the study had ended before the worker was killed"
        assert workers[0].wait(timeout=10) == -signal.SIGKILL
    finally:
        if "client" in locals():
            client.close()
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)

    rows = sqlite3.connect(out / DATABASE).execute("SELECT run_id, status FROM runs").fetchall()
    planned = [run_id for run_id, _, _ in Store(out).plan()]
    assert sorted(rows) == sorted((run_id, "done") for run_id in planned) and len(planned) == 6

    serial = CliRunner().invoke(main, ["run", str(path), "--out", str(tmp_path / "serial"), "--executor", "serial"])
    assert serial.exit_code == 0, serial.output
    assert _results(out) == _results(tmp_path / "serial")


def test_the_dask_plugin_adds_scheduler_to_gnorm_run():
    from gnorm.registry import build_registry

    [option] = build_registry().get("executor", "dask").options
    assert (option.flag, option.key) == ("--scheduler", "scheduler")
    result = CliRunner().invoke(main, ["run", "--help"])
    assert "--scheduler ADDRESS" in result.output and "sets executor.scheduler; executor dask" in result.output
