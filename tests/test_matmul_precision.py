"""``training.matmul_precision``: an opt-in, labelled faster way to compute float32 matmuls. It is part of a
run's identity (not of its start), it really computes in the precision it names, torch's flag is put
back after training, and a precision the device cannot compute is refused before anything trains."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from conftest import tiny_study
from gnorm.cli import main
from gnorm.config import load_experiment
from gnorm.engine import CellJob, train_cell
from gnorm.registry import build_registry

BUILTINS = build_registry(autoload=False)
CPU_BFLOAT16 = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def _train(path, precision: str) -> tuple[list, list]:
    experiment = load_experiment(path, BUILTINS, {"training.matmul_precision": precision})
    free = [run for run in experiment.runs if run.stage == "free"]
    logs = {}
    train_cell(CellJob(free, None), BUILTINS, lambda record, log: logs.__setitem__(record.seed, log))
    return free, [logs[run.seed] for run in free]


def test_matmul_precision_is_part_of_a_runs_identity_but_not_of_its_start(tmp_path):
    path = tiny_study(tmp_path, max_steps=100)
    full = load_experiment(path, BUILTINS).runs
    fast = load_experiment(path, BUILTINS, {"training.matmul_precision": "bfloat16"}).runs
    assert "matmul_precision" not in full[0].plain()["training"]  # runs stored before it existed keep their ids
    assert fast[0].plain()["training"]["matmul_precision"] == "bfloat16"
    for a, b in zip(full, fast):
        assert a.run_id != b.run_id
        assert (a.init_seed, a.split_seed) == (b.init_seed, b.split_seed)


@pytest.mark.skipif(not CPU_BFLOAT16, reason="this CPU's oneDNN has no bfloat16")
def test_bfloat16_matmuls_compute_in_bfloat16_and_leave_torchs_flag_as_it_was(tmp_path):
    path = tiny_study(tmp_path, max_steps=60)
    before = torch.backends.mkldnn.matmul.fp32_precision
    _, full = _train(path, "full")
    _, fast = _train(path, "bfloat16")
    assert torch.backends.mkldnn.matmul.fp32_precision == before
    for a, b in zip(full, fast):
        # bfloat16 keeps 8 significant bits: ||W|| moves by far more than float32 rounding would move it
        # (about 1e-7 relative; measured here: 1e-4) and by far less than training moves it.
        for norm_a, norm_b in zip(a.metrics["weight_norm"], b.metrics["weight_norm"]):
            assert 1e-5 < abs(norm_a - norm_b) / norm_a < 1e-2
    _, again = _train(path, "full")
    assert [log.metrics for log in again] == [log.metrics for log in full]


@pytest.mark.parametrize("precision", ["tensorfloat32"] + ([] if CPU_BFLOAT16 else ["bfloat16"]))
def test_a_matmul_precision_the_cpu_cannot_compute_is_one_line_naming_file_and_key(tmp_path, precision):
    path = tiny_study(tmp_path, max_steps=60)
    result = CliRunner().invoke(main, ["run", str(path), "--out", str(tmp_path / "out"), "--set",
                                       f'training.matmul_precision="{precision}"', "--set", 'training.device="cpu"'])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith(f"error: {path}: training.matmul_precision: '{precision}' ")
    assert "Traceback" not in result.output
    assert not (tmp_path / "out" / "runs").exists() or not any((tmp_path / "out" / "runs").iterdir())
