"""What ``gnorm run`` imports in the coordinator: a file without ``[[analysis]]`` tables writes no report,
so it never imports the report writer or matplotlib (about a second of every small study's start-up
and exit)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from builders import FREE, clamp_stage, write_study


def test_a_run_without_analyses_imports_neither_the_report_writer_nor_matplotlib(tmp_path):
    path = write_study(tmp_path, experiment={"seeds": 1}, training={"max_steps": 20}, stages=[FREE])
    code = ("import sys; from gnorm.cli import main\n"
            f"try: main(['run', {str(path)!r}, '--out', {str(tmp_path / 'out')!r}, '--executor', 'serial'])\n"
            "except SystemExit as done: assert not done.code, done.code\n"
            "print(sorted(m for m in ('gnorm.report', 'matplotlib') if m in sys.modules))")
    finished = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert finished.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "out").is_dir()  # it did run: the store was written



@pytest.mark.parametrize("architecture", [{"name": "mlp", "num_layers": 2},
                                          {"name": "transformer", "embed_dim": 16, "hidden_dim": None, "num_heads": 2, "mlp_dim": 32}])
def test_loading_a_file_builds_its_models_without_importing_torchs_compiler(tmp_path, architecture):
    # The loader builds every model on the meta device, where an out-of-place division of the initial
    # weights (``torch.randn(...) / sqrt(d)``) goes through torch's Python reference kernels and imports
    # torch._dynamo: about 1.4 s of every gnorm run.
    path = write_study(tmp_path, architecture=architecture, stages=[FREE, clamp_stage(30.0)])
    code = ("import sys; from pathlib import Path; from gnorm.loader import load_experiment; "
            "from gnorm.registry import default_registry; "
            f"load_experiment(Path({str(path)!r}), default_registry()); "
            "print('torch' in sys.modules, 'torch._dynamo' in sys.modules)")
    finished = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert finished.stdout.split() == ["True", "False"]
