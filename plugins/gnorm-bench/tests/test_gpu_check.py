"""benchmarks/gpu_check.sh: the GPU check's script, run on the CPU path with every piece shrunk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def run_check(*arguments: str, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *arguments, "--out", str(out)], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable}, timeout=900)


def test_without_a_cuda_device_it_asks_for_the_cpu_smoke_in_one_line(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device: the full check would run")
    finished = run_check(out=tmp_path)
    assert finished.returncode == 2
    assert finished.stderr.strip().splitlines() == [
        "gpu_check: torch sees no CUDA device here; use --cpu-smoke to check the script on the CPU"]
    assert not (tmp_path / "gpu_check.json").exists()


@pytest.mark.slow  # every piece shrunk: about a minute on 2 cores
def test_cpu_smoke_writes_every_piece_into_one_file(tmp_path):
    finished = run_check("--cpu-smoke", out=tmp_path)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    figures = json.loads((tmp_path / "gpu_check.json").read_text())
    assert figures["mode"] == "cpu-smoke" and figures["total_seconds"] > 0
    assert figures["cuda_tests"]["exit_status"] == 0 and "skipped" in figures["cuda_tests"]["summary"]
    assert figures["w1_gnorm_run"]["exit_status"] == 0 and figures["w1_gnorm_run"]["model_steps_per_second"] > 0
    w2 = figures["w2_t_grok"]
    assert len(w2["gnorm_t_grok"]) == len(w2["reference_b_cpu_t_grok"]) == 2 and w2["met"]
    sweep = figures["dense_rho_sweep"]
    assert sweep["exit_status"] == 0 and not sweep["interrupted"] and "training.device=cpu" in sweep["overrides"]
    assert any("delay law" in line for line in sweep["output_tail"])  # the sweep's analyses ran
    assert not any("error" in piece for piece in figures.values() if isinstance(piece, dict))
