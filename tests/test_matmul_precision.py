"""``training.matmul_precision``: an opt-in, labelled faster way to compute float32 matmuls. It is part of a
run's identity (not of its start), it really computes in the precision it names, eager or compiled,
torch's setting is put back after training, "full" is float32 whatever the process had set, and a
precision the device cannot compute is refused before anything trains."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

import gnorm.training.numerics
from builders import write_study
from conftest import tiny_study
from gnorm.cli import main
from gnorm.loader import load_experiment
from gnorm.registry import build_registry
from gnorm.training.build import train_cell
from gnorm.training.jobs import CellJob
from gnorm.training.numerics import cpu_computes_bfloat16

BUILTINS = build_registry(autoload=False)
ON_THE_CPU = {"training.device": "cpu"}
needs_bfloat16 = pytest.mark.skipif(not cpu_computes_bfloat16(),
                                    reason="this CPU's float32 matmuls do not change when asked for bfloat16")


def _train(path, precision: str, compile: str = "off") -> list:
    overrides = {**ON_THE_CPU, "training.matmul_precision": precision, "training.compile": compile}
    free = [run for run in load_experiment(path, BUILTINS, overrides).runs if run.stage == "free"]
    logs = {}
    train_cell(CellJob(free, None), BUILTINS, lambda record, log: logs.__setitem__(record.seed, log))
    return [logs[run.seed] for run in free]


def test_matmul_precision_is_part_of_a_runs_identity_but_not_of_its_start(tmp_path):
    path = tiny_study(tmp_path, max_steps=100)
    full = load_experiment(path, BUILTINS, ON_THE_CPU).runs
    fast = load_experiment(path, BUILTINS, {**ON_THE_CPU, "training.matmul_precision": "bfloat16"}).runs
    assert "matmul_precision" not in full[0].identity()["training"]  # stored runs keep their ids
    assert full[0].plain()["training"]["matmul_precision"] == "full"
    assert fast[0].identity()["training"]["matmul_precision"] == "bfloat16"
    for a, b in zip(full, fast):
        assert a.run_id != b.run_id
        assert (a.init_seed, a.split_seed) == (b.init_seed, b.split_seed)


def test_a_sweep_over_matmul_precision_takes_each_clamp_cells_wc_from_its_own_precision(tmp_path):
    path = write_study(tmp_path, training={"max_steps": 100}, sweep={"training.matmul_precision": ["full", "bfloat16"]})
    experiment = load_experiment(path, BUILTINS, ON_THE_CPU)
    by_id = {run.run_id: run for run in experiment.runs}
    clamp = [run for run in experiment.runs if run.stage == "clamp"]
    assert {run.training.matmul_precision for run in clamp} == {"full", "bfloat16"}
    for run in clamp:
        assert {by_id[source].training.matmul_precision for source in run.critical_norm_source} == \
            {run.training.matmul_precision}


@needs_bfloat16
@pytest.mark.parametrize("compile", ["off", "on"])
def test_bfloat16_matmuls_compute_in_bfloat16_and_leave_torchs_setting_as_it_was(tmp_path, compile):
    path = tiny_study(tmp_path, max_steps=60)
    full = _train(path, "full", compile)
    fast = _train(path, "bfloat16", compile)
    assert torch.get_float32_matmul_precision() == "highest"
    for a, b in zip(full, fast):
        # bfloat16 keeps 8 significant bits: ||W|| moves by far more than float32 rounding would move it
        # (about 1e-7 relative; measured here: 1e-4) and by far less than training moves it.
        for norm_a, norm_b in zip(a.metrics["weight_norm"], b.metrics["weight_norm"]):
            assert 1e-5 < abs(norm_a - norm_b) / norm_a < 1e-2
    torch.set_float32_matmul_precision("medium")  # set by someone else in the process: "full" is float32
    try:
        again = _train(path, "full", compile)
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision("highest")
    assert [log.metrics for log in again] == [log.metrics for log in full]


def _refused(tmp_path, precision: str) -> str:
    path = tiny_study(tmp_path, max_steps=60)
    result = CliRunner().invoke(main, ["run", str(path), "--out", str(tmp_path / "out"), "--set",
                                       f'training.matmul_precision="{precision}"', "--set", 'training.device="cpu"'])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    assert not (tmp_path / "out" / "runs").exists() or not any((tmp_path / "out" / "runs").iterdir())
    return errors[0].removeprefix(f"error: {path}: ")


def test_tensorfloat32_on_a_cpu_is_refused_in_one_line_naming_file_and_key(tmp_path):
    assert _refused(tmp_path, "tensorfloat32") == ("training.matmul_precision: 'tensorfloat32' is not computed on "
                                                   "cpu devices (there: 'bfloat16' or 'full')")


def test_bfloat16_on_a_cpu_without_it_is_refused_in_one_line_naming_file_and_key(tmp_path, monkeypatch):
    monkeypatch.setattr(gnorm.training.numerics, "cpu_computes_bfloat16", lambda: False)
    assert _refused(tmp_path, "bfloat16").startswith("training.matmul_precision: 'bfloat16' needs a CPU whose matmuls ")


def test_bfloat16_is_decided_by_its_effect_on_a_matmul_not_by_cpu_flags():
    generator = torch.Generator().manual_seed(1)
    left, right = torch.randn(3, 40, 56, generator=generator), torch.randn(3, 56, 24, generator=generator)
    torch.set_float32_matmul_precision("medium")
    try:
        reduced = torch.bmm(left, right)
    finally:
        torch.set_float32_matmul_precision("highest")
    changed = not torch.equal(reduced, torch.bmm(left, right))
    assert cpu_computes_bfloat16() == changed
    with torch.backends.mkldnn.flags(enabled=False):
        assert not cpu_computes_bfloat16()
