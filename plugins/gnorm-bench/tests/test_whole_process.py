"""The whole-process rows (W1, W3): the reference scripts are written without gnorm and do the work
gnorm's file describes; the ratio is reference seconds over gnorm seconds, per round, then the median."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from gnorm.cli import main
from gnorm.loader import load_experiment
from gnorm.registry import default_registry
from gnorm.training.jobs import evaluation_steps
from gnorm_bench import whole_process
from gnorm_bench.bench import Row


@pytest.mark.parametrize("script", ["per_seed_script.py", "batched_script.py"])
def test_reference_scripts_import_nothing_from_gnorm(script):
    tree = ast.parse((whole_process.HERE / script).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "torch" in imported and not {name for name in imported if name.startswith("gnorm")}


def test_w3_file_and_script_describe_the_same_study(tmp_path):
    """What the experiment file trains (task, widths, seeds, steps, evaluation steps) is what the
    reference script is told, for the issue's W3 and for another size."""
    for study in (whole_process.SmallStudy(), whole_process.SmallStudy(seeds=3, steps=130, p=29, embed_dim=8,
                                                                      hidden_dim=16, every=20)):
        path = tmp_path / "w3.toml"
        path.write_text(study.experiment_text())
        runs = load_experiment(path, default_registry()).runs
        run = runs[0]
        arguments = study.script_arguments()
        told = dict(zip(arguments[::2], arguments[1::2]))
        assert len(runs) == int(told["--seeds"]) == study.seeds
        assert run.task.name == "modular_multiplication" and told["--task"] == "multiplication"
        assert run.task.config.p == int(told["--p"]) and run.task.config.train_fraction == float(told["--train-fraction"])
        assert (run.architecture.config.embed_dim, run.architecture.config.hidden_dim) == (
            int(told["--embed-dim"]), int(told["--hidden-dim"]))
        assert run.training.max_steps == int(told["--steps"]) and not run.evaluation.stop_when_grokked
        assert run.controller.name == "free"
        assert (run.optimizer.config.lr, run.optimizer.config.weight_decay) == (
            float(told["--lr"]), float(told["--weight-decay"]))
        script_steps = sorted(set(range(study.every, study.steps + 1, study.every)) | {study.steps})
        assert evaluation_steps(run).tolist() == script_steps


def test_per_seed_script_trains_each_seed_and_evaluates_on_schedule():
    study = whole_process.SmallStudy(seeds=2, steps=60, p=23, embed_dim=8, hidden_dim=16, every=25)
    output = subprocess.run([sys.executable, str(whole_process.HERE / "per_seed_script.py"),
                             *study.script_arguments()], capture_output=True, text=True, check=True)
    results = json.loads(output.stdout)
    assert [r["seed"] for r in results] == [0, 1]
    assert all(r["evaluated_steps"] == [25, 50, 60] for r in results)
    assert results[0]["last"]["train_loss"] != results[1]["last"]["train_loss"]  # own split and init per seed


def test_batched_script_clamps_and_evaluates_the_given_steps():
    arguments = whole_process.w1_script_arguments(seeds=2, steps=40)
    arguments[arguments.index("--clamp-from") + 1] = "10"
    output = subprocess.run([sys.executable, str(whole_process.HERE / "batched_script.py"), *arguments,
                             "--embed-dim", "8", "--hidden-dim", "16"], capture_output=True, text=True, check=True)
    result = json.loads(output.stdout)
    from gnorm.science import geometric_schedule

    assert result["evaluated_steps"] == geometric_schedule(40, 360).tolist()
    assert len(result["last"]["test_loss"]) == 2


def test_whole_process_report_takes_the_median_of_per_round_ratios():
    def round_of(reference: float, ours: float) -> list[Row]:
        return [Row("reference script", 1600, reference), Row("gnorm run", 1600, ours)]

    rounds = [round_of(60, 20), round_of(80, 16), round_of(50, 25)]  # 3.0x, 5.0x, 2.0x
    table, lines = whole_process.whole_process_report("W3", rounds, target=4)
    assert table.columns[1:3] == ["seconds (median of 3 rounds)", "range"]
    assert table.rows[0][1:3] == [60, "50.0-80.0"] and table.rows[1][1:3] == [20, "16.0-25.0"]
    assert lines == ["target W3 >= 4x the reference, whole processes (reference seconds / gnorm seconds): 3.00x "
                     "(median of 3 rounds: 3.00x, 5.00x, 2.00x; met in 1 of 3) NOT met"]
    table, lines = whole_process.whole_process_report("W3", [round_of(90, 20)], target=4)
    assert table.columns[1] == "seconds" and lines[0].endswith(": 4.50x met")


def test_a_failed_process_is_an_error_not_a_speed():
    with pytest.raises(RuntimeError, match="exited with status 3"):
        whole_process.run_seconds([sys.executable, "-c", "import sys; sys.exit(3)"], "a script")


@pytest.mark.slow  # three gnorm runs and two script runs: about a minute on 2 cores
def test_bench_prints_the_w3_row_and_its_target():
    result = CliRunner().invoke(main, ["bench", "--workload", "w3", "--w3-steps", "25", "--w3-seeds", "1",
                                       "--no-memory"])
    assert result.exit_code == 0, result.output
    for text in ("W3, whole processes", "python per_seed_script.py", "gnorm run (one-cell file, default executor)",
                 "target W3 >= 4x the reference, whole processes"):
        assert text in result.output
    assert "reference (a)" not in result.output  # W1's in-process rows were not asked for
