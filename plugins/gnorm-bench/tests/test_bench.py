"""The benchmark's reference trainers compute what gnorm computes, so its ratios compare like with like;
``gnorm bench`` arrives through the plugin's ``gnorm_commands`` hook."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from gnorm_bench import bench
from gnorm.cli import main
from gnorm.registry import default_registry
from gnorm.training.numerics import cpu_computes_bfloat16, deterministic_algorithms


@pytest.mark.slow  # times every trainer: about two minutes on 2 cores
def test_bench_prints_rates_ratios_and_targets():
    result = CliRunner().invoke(main, ["bench", "--workload", "w1", "--steps", "20", "--seeds", "2", "--reference-a-seeds", "1",
                                       "--no-memory", "--repeats", "2"])
    assert result.exit_code == 0, result.output
    for text in ("model-steps/s (median of 2 rounds)", "gnorm engine, one process", "reference (a)",
                 "reference (b)", "GFLOP/s", "target W1 >= 3x reference (b)", "median of 2 rounds: "):
        assert text in result.output
    timed = [line.split(": ", 1)[1].rsplit(":", 1)[0] for line in result.output.splitlines()
             if line.startswith("  round ")]
    assert timed[0].startswith("reference (b)") and timed == timed[:len(timed) // 2] + timed[:len(timed) // 2][::-1]
    from gnorm.builtins.executors import machine_cores

    if machine_cores() > 1:  # W1 as gnorm run trains it, one worker process per core
        assert f"gnorm run, local executor ({machine_cores()} workers x 1 thread)" in result.output
    if cpu_computes_bfloat16():  # decided by its effect, as bench decides it
        assert "bfloat16 matmuls (opt-in)" in result.output  # its own labelled row, never a target's
        assert "opt-in bfloat16 matmuls: " in result.output and "not the targets" in result.output


def test_w1_report_takes_medians_of_per_round_ratios():
    def round_of(b: float, a: float, engine: float, bf16: float) -> list[bench.Row]:
        return [bench.Row("reference (b): batched", 100, 100 / b), bench.Row("reference (a): per seed", 10, 10 / a),
                bench.Row("gnorm engine", 100, 100 / engine), bench.Row("gnorm bf16", 100, 100 / bf16, counted=False)]

    # per round, engine over (b): 3.5, 2.5, 4.0 (median 3.5, met in 2 of 3); over (a): 1.4, 5.0, 6.0
    rounds = [round_of(100, 250, 350, 700), round_of(200, 100, 500, 600), round_of(150, 100, 600, 1200)]
    table, lines = bench.w1_report(rounds, peak_gflops=100.0)
    assert table.columns[1:3] == ["model-steps/s (median of 3 rounds)", "range"]
    by_trainer = {row[0]: row for row in table.rows}
    assert by_trainer["reference (b): batched"][1:4] == [pytest.approx(150), "100-200", pytest.approx(3.5)]
    assert by_trainer["gnorm bf16"][3] == pytest.approx(0.5)  # engine over bf16: 0.5, 0.83, 0.5
    assert lines[0] == ("target W1 >= 3x reference (b): 3.50x (median of 3 rounds: 3.50x, 2.50x, 4.00x; "
                        "met in 2 of 3) met")
    assert lines[1] == ("target W1 >= 5x reference (a): 5.00x (median of 3 rounds: 1.40x, 5.00x, 6.00x; "
                        "met in 2 of 3) met")
    assert "reverse order" in lines[2]
    assert lines[3].startswith("opt-in bfloat16 matmuls: 7.00x reference (b), 6.00x reference (a)")


def test_one_round_report_has_no_range_and_no_per_round_ratios():
    rows = [bench.Row("reference (b): batched", 100, 1.0), bench.Row("reference (a): per seed", 10, 0.05),
            bench.Row("gnorm engine", 100, 0.25)]
    table, lines = bench.w1_report([rows], peak_gflops=100.0)
    assert table.columns[1:3] == ["model-steps/s", "fastest float32 gnorm's speed-up"]
    assert [row[1:3] for row in table.rows] == [[100, 4.0], [200, 2.0], [400, 1.0]]
    assert lines[:2] == ["target W1 >= 3x reference (b): 4.00x met", "target W1 >= 5x reference (a): 2.00x NOT met"]


def test_timed_rounds_reverse_every_other_round_and_keep_row_order():
    timed = []

    def trainer(name: str, seconds: float) -> bench.Trainer:
        return bench.Trainer(name, 100, lambda: timed.append(name) or seconds)

    lines = []
    rounds = bench.timed_rounds([trainer("first", 1.0), trainer("second", 2.0), trainer("third", 4.0)], 3,
                                lines.append)
    assert timed == ["first", "second", "third", "third", "second", "first", "first", "second", "third"]
    assert [[(row.trainer, row.rate) for row in rows] for rows in rounds] == [
        [("first", 100.0), ("second", 50.0), ("third", 25.0)]] * 3
    assert lines[3] == "  round 2: third: 4.0s"


def test_grid_agreement_allows_one_grid_step():
    grid = np.array([10, 11, 12, 14, 16])
    assert bench.grid_agreement([11, 12, None, 16, None], [12, 16, None, 14, 10], grid) == [True, False, True,
                                                                                            True, False]


@pytest.mark.slow  # trains each trainer to a grokked model: about two minutes on 2 cores
def test_reference_trainers_learn_what_gnorm_learns():
    """Same weights, splits, optimizer and clamp: after 700 steps (clamped from 500) the three trainers
    reach the same train and test loss per seed."""
    registry = default_registry()
    job = bench.workload_job(registry, seeds=2, steps=700, rho=0.8, stop=False)
    start = bench.start_of(job, registry)
    with deterministic_algorithms():
        ours = bench.gnorm_engine(job, registry)
        batched = bench.reference_batched(start)
        per_seed = bench.reference_per_seed(start, seeds=2)
    np.testing.assert_allclose(batched.last_test_loss, ours.last_test_loss, rtol=1e-3)
    np.testing.assert_allclose(per_seed.last_test_loss, ours.last_test_loss, rtol=1e-3)
    for reference in (batched, per_seed):
        np.testing.assert_allclose(reference.last_train_loss, ours.last_train_loss, rtol=1e-3)
    assert abs(ours.last_test_loss[0] - ours.last_test_loss[1]) > 1e-2  # the seeds differ: a real check


@pytest.mark.slow
def test_w2_gnorm_and_reference_b_agree_on_t_grok_per_seed():
    """W2: a full rho = 0.85 cell from the same weights and splits; >= 15 of 16 seeds within one step
    of the geometric grid."""
    ours, theirs, grid = bench.bench_w2(default_registry(), seeds=16, steps=30_000)
    assert sum(bench.grid_agreement(ours.t_grok, theirs.t_grok, grid)) >= 15


def test_flop_counts_are_what_torch_counts_for_one_training_step():
    """The achieved GFLOP/s column divides each trainer's own FLOPs: torch's FLOP counter over one
    step of gnorm's ensemble (one member) and of reference (a)'s module agrees with the formulas."""
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from gnorm.training.build import build_ensemble

    registry = default_registry()
    job = bench.workload_job(registry, seeds=1, steps=20, rho=1.0, stop=False, compile="off")
    ensemble, _ = build_ensemble(job, registry)
    n_train = ensemble.train_labels.shape[1]
    with FlopCounterMode(display=False) as counter:
        ensemble.gradients()
    assert counter.get_total_flops() == bench.gnorm_model_flops(n_train, 59)
    start = bench.start_of(job, registry)
    model, split = bench.PaperMLP(start.weights[0]), start.splits[0]
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(split.inputs[split.train_index]), split.labels[split.train_index]).backward()
    assert counter.get_total_flops() == bench.paper_model_flops(n_train, 59)
    assert bench.paper_model_flops(n_train, 59) > 4 * bench.gnorm_model_flops(n_train, 59)
