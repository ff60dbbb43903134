"""The CUDA path (one chunk per ensemble, compiling, tensorfloat32 matmuls), run with ``pytest -m cuda``
on a machine with a CUDA device (``benchmarks/gpu_check.sh`` runs them); skipped, with the reason,
where torch sees none."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from builders import FREE, write_study  # noqa: E402
from gnorm.loader import load_experiment  # noqa: E402
from gnorm.registry import default_registry  # noqa: E402
from gnorm.training.build import build_ensemble, train_cell  # noqa: E402
from gnorm.training.jobs import CellJob  # noqa: E402

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device here")]


def tiny_job(directory, device: str, **training) -> CellJob:
    directory.mkdir(parents=True, exist_ok=True)
    path = write_study(directory, training={"max_steps": 1500, "device": device, **training}, stages=[FREE])
    return CellJob(load_experiment(path, default_registry()).runs, None)


def trained(job: CellJob) -> dict[int, tuple]:
    """Per seed: T_mem, T_grok and the last evaluation's test loss."""
    outcomes = {}
    train_cell(job, default_registry(),
               lambda record, log: outcomes.__setitem__(record.seed, (record.t_mem, record.t_grok,
                                                                      log.metrics["test_loss"][-1])))
    return outcomes


def test_a_seeds_initial_weights_and_split_do_not_depend_on_the_device(tmp_path):
    registry = default_registry()
    on_cpu, _ = build_ensemble(tiny_job(tmp_path / "cpu", "cpu"), registry)
    on_cuda, _ = build_ensemble(tiny_job(tmp_path / "cuda", "cuda"), registry)
    assert on_cuda.labels.device.type == "cuda"
    assert on_cuda.train_chunk == on_cuda.eval_chunk == on_cuda.labels.shape[0]  # one chunk on a GPU
    for name, tensor in on_cpu.params.items():
        assert torch.equal(on_cuda.params[name].cpu(), tensor), name
    assert torch.equal(on_cuda.labels.cpu(), on_cpu.labels)
    assert torch.equal(on_cuda.train_mask.cpu(), on_cpu.train_mask)


def test_a_cuda_cell_groks_and_repeats_itself_exactly(tmp_path):
    """Same file and seed on the same machine: the same T_grok and the same last test loss, bit for bit
    (torch's deterministic kernels are on for a GPU)."""
    first = trained(tiny_job(tmp_path / "a", "cuda"))
    again = trained(tiny_job(tmp_path / "b", "cuda"))
    assert first == again
    assert all(t_grok is not None for _, t_grok, _ in first.values())


def test_cuda_and_cpu_agree_on_t_grok_within_two_evaluations(tmp_path):
    """Different kernels, the same science: each seed's T_grok on CUDA within two evaluation steps
    (every 20) of the CPU's."""
    on_cpu = trained(tiny_job(tmp_path / "cpu", "cpu"))
    on_cuda = trained(tiny_job(tmp_path / "cuda", "cuda"))
    for seed, (_, t_grok, _) in on_cpu.items():
        assert t_grok is not None and on_cuda[seed][1] is not None
        assert abs(on_cuda[seed][1] - t_grok) <= 40, (seed, t_grok, on_cuda[seed][1])


def test_a_compiled_cuda_cell_learns_what_the_eager_one_learns(tmp_path):
    compiled = trained(tiny_job(tmp_path / "on", "cuda", compile="on"))
    eager = trained(tiny_job(tmp_path / "off", "cuda", compile="off"))
    np.testing.assert_allclose([compiled[s][2] for s in sorted(compiled)], [eager[s][2] for s in sorted(eager)],
                               rtol=0.05, atol=1e-3)
    for seed, (_, t_grok, _) in eager.items():
        assert compiled[seed][1] is not None and abs(compiled[seed][1] - t_grok) <= 40


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 0),
                    reason="tensorfloat32 needs a device of compute capability 8.0 or more")
def test_tensorfloat32_matmuls_train_a_cell_that_groks(tmp_path):
    outcomes = trained(tiny_job(tmp_path, "cuda", matmul_precision="tensorfloat32"))
    assert all(t_grok is not None for _, t_grok, _ in outcomes.values())
