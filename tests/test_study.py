"""Whole studies: the free stage gives Wc, clamp stages hold rho * Wc, the store survives interruption."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import time

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import GNORM, SLOW_TINY, sigint_as_a_terminal_sends_it, tiny_study
from gnorm.cli import main
from gnorm.science import critical_norm
from gnorm.store import DATABASE, Store


def _run(path, out):
    result = CliRunner().invoke(main, ["run", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return result


def _stored(out):
    store = Store(out)
    return {r.run_id: (r, store.trajectory(r.run_id)) for r in store.records()}


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    path = tiny_study(tmp)
    _run(path, tmp / "out")
    return path, tmp / "out"


def test_clamp_stage_takes_wc_from_the_free_stage(finished_study):
    _, out = finished_study
    records = Store(out).records()
    free = [r for r in records if r.stage == "free"]
    clamp = [r for r in records if r.stage == "clamp"]
    assert len(free) == 2 and len(clamp) == 4
    wc = critical_norm([r.norm_at_grok for r in free])
    assert wc is not None
    for record in clamp:
        assert record.facts["critical_norm"] == pytest.approx(wc)
        held = record.config["controller"]["rho"] * wc
        assert record.facts["held_norm"] == pytest.approx(held)
        assert record.facts["norm_after_clamp"] == pytest.approx(held, rel=1e-5)
        assert record.facts["norm_before_clamp"] != pytest.approx(held, rel=1e-3)


def test_results_say_which_evaluation_schedule_was_used(finished_study):
    _, out = finished_study
    record, trajectory = next(iter(_stored(out).values()))
    assert record.config["evaluation"]["schedule"] == "every"
    assert trajectory["step"][:3] == [20, 40, 60]


def test_grokked_runs_stop_at_t_grok_and_store_the_norm_there(finished_study):
    _, out = finished_study
    for record, trajectory in _stored(out).values():
        if record.censored:
            assert trajectory["step"][-1] == record.budget
            continue
        assert trajectory["step"][-1] == record.t_grok
        assert trajectory["test_acc"][-1] >= 0.9 > max(trajectory["test_acc"][:-1], default=0)
        assert record.norm_at_grok == trajectory["weight_norm"][-1]
        groups = [trajectory[k][-1] for k in ("norm/embedding", "norm/hidden", "norm/readout")]
        assert np.sqrt(np.sum(np.square(groups))) == pytest.approx(record.norm_at_grok, rel=1e-5)


def test_runs_record_the_norm_at_memorization_and_the_peak_norm(finished_study):
    _, out = finished_study
    for record, trajectory in _stored(out).values():
        if record.t_mem is None or record.t_grok is None:
            continue
        steps = trajectory["step"]
        assert record.facts["norm_at_memorization"] == trajectory["weight_norm"][steps.index(record.t_mem)]
        up_to_grok = [n for s, n in zip(steps, trajectory["weight_norm"]) if s <= record.t_grok]
        assert record.facts["peak_norm"] == max(up_to_grok) >= record.norm_at_grok


def test_rerunning_a_finished_study_trains_nothing_and_changes_nothing(finished_study):
    path, out = finished_study
    before = _stored(out)
    stamps = dict(sqlite3.connect(out / DATABASE).execute("SELECT run_id, finished_at FROM runs"))
    result = _run(path, out)
    assert "started" not in result.output
    assert _stored(out) == before
    assert dict(sqlite3.connect(out / DATABASE).execute("SELECT run_id, finished_at FROM runs")) == stamps


def test_a_study_with_analysis_tables_ends_with_the_report(finished_study, tmp_path):
    path, out = finished_study
    shutil.copytree(out, tmp_path / "out")
    with_analysis = tmp_path / "tiny.toml"
    with_analysis.write_text(path.read_text() + '\n[[analysis]]\nname = "delay_law"\nmin_grokked = 2\nmin_cells = 2\n')
    result = _run(with_analysis, tmp_path / "out")
    assert "started" not in result.output  # adding an analysis changes no run
    report = (tmp_path / "out" / "report" / "report.md").read_text()
    assert "min_grokked = `2`, min_cells = `2`" in report and "figures/delay_law.png" in report


def test_same_config_and_seed_give_the_same_t_grok(finished_study, tmp_path):
    path, out = finished_study
    _run(path, tmp_path / "again")
    first, second = _stored(out), _stored(tmp_path / "again")
    assert first.keys() == second.keys()
    for run_id, (record, trajectory) in first.items():
        assert second[run_id][0].t_grok == record.t_grok
        assert second[run_id][1]["train_loss"] == trajectory["train_loss"]


def test_a_second_run_on_the_same_directory_is_refused(tmp_path):
    path = tiny_study(tmp_path)
    store = Store(tmp_path / "out", create=True)
    with store.exclusive():
        result = CliRunner().invoke(main, ["run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "another gnorm run is using this directory" in result.output
    assert "Traceback" not in result.output


def _wait_for_runs(database, count, process, limit=120):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        assert process.poll() is None, "the study ended before it could be interrupted"
        try:
            done = sqlite3.connect(database).execute("SELECT count(*) FROM runs").fetchone()[0]
        except sqlite3.OperationalError:
            done = 0
        if done >= count:
            return done
        time.sleep(0.2)
    raise AssertionError("no run finished in time")


# SIGKILL under -m slow: tests/test_checkpoints.py kills `gnorm run` by default.
@pytest.mark.parametrize("how", [signal.SIGINT, pytest.param(signal.SIGKILL, marks=pytest.mark.slow)])
def test_an_interrupted_study_finishes_on_rerun_without_redoing_runs(tmp_path, how):
    path = tiny_study(tmp_path, rhos="[0.9, 1.0]", **SLOW_TINY)
    out = tmp_path / "out"
    process = subprocess.Popen([*GNORM, "run", str(path), "--out", str(out)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, preexec_fn=sigint_as_a_terminal_sends_it)
    _wait_for_runs(out / DATABASE, 2, process)
    process.send_signal(how)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == (130 if how == signal.SIGINT else -signal.SIGKILL), output
    if how == signal.SIGINT:
        assert "run the same command again" in output and "Traceback" not in output
    interrupted = _stored(out)
    assert 2 <= len(interrupted) < 6
    rerun = subprocess.run([*GNORM, "run", str(path), "--out", str(out)], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    finished = _stored(out)
    assert len(finished) == 6
    for run_id, stored in interrupted.items():
        assert finished[run_id] == stored
    assert "[free]" not in rerun.stderr  # the free stage had finished: not trained again


def test_show_prints_a_table_per_stage_and_counts_finished_runs(finished_study):
    _, out = finished_study
    result = CliRunner().invoke(main, ["show", str(out)])
    assert result.exit_code == 0, result.output
    assert "stage free (controller free)" in result.output and "stage clamp (controller clamp)" in result.output
    assert "rho=0.9" in result.output and "rho=1.1" in result.output
    assert "6/6 planned runs finished" in result.output


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_export_writes_tidy_run_and_evaluation_tables(finished_study, tmp_path, fmt):
    import csv
    import json

    _, out = finished_study
    result = CliRunner().invoke(main, ["export", str(out), "--format", fmt, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    if fmt == "json":
        runs = json.loads((tmp_path / "runs.json").read_text())
        evaluations = json.loads((tmp_path / "evaluations.json").read_text())
    else:
        runs = list(csv.DictReader((tmp_path / "runs.csv").open()))
        evaluations = list(csv.DictReader((tmp_path / "evaluations.csv").open()))
    stored = _stored(out)
    assert {row["run_id"] for row in runs} == set(stored)
    assert len(evaluations) == sum(len(trajectory["step"]) for _, trajectory in stored.values())
    assert {"run_id", "step", "train_loss", "test_acc", "weight_norm", "norm/embedding"} <= set(evaluations[0])
    assert {"stage", "seed", "t_grok", "censored", "norm_at_grok", "cell.controller.rho"} <= set(
        next(row for row in runs if row["stage"] == "clamp"))


def test_lifecycle_hooks_fire_in_the_coordinator_in_order_with_results_dir_cell_label_and_wc(tmp_path):
    """Each run is announced when its cell's results arrive, in this process: before_run, then every
    stored evaluation in step order, then after_run; the study is announced around all of them."""
    import os
    from types import SimpleNamespace

    import gnorm
    from gnorm.analysis.records import cell_label
    from gnorm.loader import load_experiment
    from gnorm.progress import Progress
    from gnorm.registry import Provider, build_registry
    from gnorm.scheduler import run_experiment

    events = []

    class Observer:
        @gnorm.hookimpl
        def gnorm_before_study(self, results_dir, experiment, runs):
            events.append(("before_study", os.getpid(), results_dir, experiment, runs))

        @gnorm.hookimpl
        def gnorm_before_run(self, run_id, stage, seed, config, results_dir, cell_label, critical_norm):
            events.append(("before_run", os.getpid(), run_id, results_dir, cell_label, critical_norm))

        @gnorm.hookimpl
        def gnorm_after_evaluation(self, run_id, step, metrics, results_dir, cell_label):
            assert {"train_acc", "test_acc", "weight_norm", "norm/readout"} <= set(metrics)
            events.append(("after_evaluation", os.getpid(), run_id, step, metrics["weight_norm"]))

        @gnorm.hookimpl
        def gnorm_after_run(self, record, results_dir, cell_label, critical_norm):
            events.append(("after_run", os.getpid(), record.run_id, critical_norm))

        @gnorm.hookimpl
        def gnorm_after_study(self, results_dir, experiment, done, failed):
            events.append(("after_study", os.getpid(), done, failed))

    registry = build_registry(extra_plugins=[(Observer(), Provider("observer", "0"))], autoload=False)
    experiment = load_experiment(tiny_study(tmp_path, rhos="[0.9]", max_steps=200, critical_norm="40.0"), registry,
                                 {"executor.name": "local", "executor.workers": 1})  # a worker process trains
    out = tmp_path / "out"
    run_experiment(experiment, registry, Store(out, create=True), Progress(SimpleNamespace(
        isatty=lambda: False, write=lambda text: None, flush=lambda: None)))
    assert {event[1] for event in events} == {os.getpid()}
    stored, runs = _stored(out), {run.run_id: run for run in experiment.runs}
    assert events[0] == ("before_study", os.getpid(), str(out), experiment.meta.name, len(runs))
    assert events[-1] == ("after_study", os.getpid(), len(runs), 0)
    body = events[1:-1]
    starts = [i for i, event in enumerate(body) if event[0] == "before_run"]
    assert sorted(body[i][2] for i in starts) == sorted(runs)
    for i, end in zip(starts, starts[1:] + [len(body)]):
        run_id = body[i][2]
        record, trajectory = stored[run_id]
        wc = record.facts.get("critical_norm")
        assert body[i][3:] == (str(out), cell_label(runs[run_id].cell), wc)
        assert body[i + 1:end - 1] == [("after_evaluation", os.getpid(), run_id, step, norm)
                                       for step, norm in zip(trajectory["step"], trajectory["weight_norm"])]
        assert body[end - 1] == ("after_run", os.getpid(), run_id, wc)


def test_analyze_reports_cells_too_thin_to_fit_instead_of_fitting_them(finished_study, tmp_path):
    """Two seeds per cell are fewer than the 3 grokked seeds a cell needs: no alpha, and the output
    and the JSON say which cells were dropped and why."""
    import json

    _, out = finished_study
    result = CliRunner().invoke(main, ["analyze", str(out), "--analyzer", "delay_law", "--json",
                                       str(tmp_path / "numbers.json")])
    assert result.exit_code == 0, result.output
    assert "dropped controller.rho=0.9 (2/2 seeds grokked < 3)" in result.output
    (group,) = json.loads((tmp_path / "numbers.json").read_text())[0]["numbers"]["groups"]
    assert group["alpha"] is None and group["cells_dropped"] == {"0.9": 2, "1.1": 2}
