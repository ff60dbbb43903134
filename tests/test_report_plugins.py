"""A separately installed analyzer brings its own section to ``gnorm report``: the example package
plugins/gnorm-plugin-grokgap adds a table and a figure, and gnorm's core names it nowhere.

The package is pip-installed into a folder of its own (``pip install --target``) that the command's
``PYTHONPATH`` adds, the way an installed distribution is found: through its entry point in the
``gnorm`` group. The shared environment is left alone, so no other report gains its section.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gnorm.components import RunRecord
from gnorm.registry import DISABLE_AUTOLOAD_ENV
from gnorm.store import Store

REPO = Path(__file__).resolve().parent.parent
GROKGAP_DIR = REPO / "plugins" / "gnorm-plugin-grokgap"


def _setuptools_version() -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in importlib.metadata.version("setuptools").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return ()


@pytest.fixture(scope="module")
def grokgap_site(tmp_path_factory) -> Path:
    """A folder holding gnorm-plugin-grokgap as pip installs it (its module and its entry point)."""
    if importlib.util.find_spec("pip") is None:
        pytest.skip("installing the example plugin needs pip in this environment")
    site = tmp_path_factory.mktemp("site")
    source = tmp_path_factory.mktemp("source") / GROKGAP_DIR.name  # a copy: the build leaves the checkout clean
    shutil.copytree(GROKGAP_DIR, source, ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"))
    install = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(source)]
    if _setuptools_version() >= (77,):  # the plugin's build-system.requires: build offline with it
        install += ["--no-index", "--no-build-isolation"]
    installed = subprocess.run(install, capture_output=True, text=True, timeout=300, cwd=site)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return site


def _small_store(directory: Path) -> Store:
    """Two free cells (p = 41, 59) of three seeds with T_mem = 300 and T_grok = 3000 + 500 * seed."""
    store = Store(directory, create=True)
    plan = []
    for p in (41, 59):
        for seed in range(3):
            t_grok = 3000 + 500 * seed
            record = RunRecord(run_id=f"free-p{p}-s{seed}", stage="free", cell={"task.p": p}, seed=seed,
                               config={"stage": "free", "seed": seed, "task": {"name": "modular_addition", "p": p},
                                       "controller": {"name": "free"}, "optimizer": {"lr": 1e-3},
                                       "evaluation": {"schedule": "every", "every": 100}},
                               t_mem=300, t_grok=t_grok, norm_at_grok=10.0 + p / 10, budget=10_000)
            steps = list(range(100, t_grok + 1, 100))
            s = np.array(steps, float)
            test_acc = (s >= t_grok).astype(float)
            metrics = {"train_loss": np.exp(-s / 300), "test_loss": 1 - test_acc, "train_acc": np.minimum(s / 300, 1),
                       "test_acc": test_acc, "weight_norm": np.full(s.size, 10.0 + p / 10)}
            store.write_run(record, steps, {key: [float(v) for v in values] for key, values in metrics.items()})
            plan.append((record.run_id, record.stage, record.cell))
    store.set_plan("small.toml", "", plan)
    return store


def _gnorm(*args: str, site: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != DISABLE_AUTOLOAD_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run([sys.executable, "-m", "gnorm.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_the_installed_example_analyzer_adds_its_table_and_figure_to_the_report(grokgap_site, tmp_path):
    store = _small_store(tmp_path / "results")
    written = _gnorm("report", str(store.directory), site=grokgap_site, cwd=tmp_path)
    assert written.returncode == 0, written.stderr
    text = (tmp_path / "results" / "report" / "report.md").read_text()
    section = text.split("## Grokking gap")[1].split("\n## ")[0]
    assert "**grokking gap T_grok - T_mem per cell (steps)**" in section
    assert "| free | p=41 | 3/3 | 3200 |" in section  # median of 2700, 3200, 3700
    assert "](figures/grokgap.png)" in section
    for suffix in ("png", "pdf"):
        assert (tmp_path / "results" / "report" / "figures" / f"grokgap.{suffix}").stat().st_size > 1000


def test_without_the_package_the_report_has_no_such_section(tmp_path):
    store = _small_store(tmp_path / "results")
    written = _gnorm("report", str(store.directory), site=tmp_path / "empty", cwd=tmp_path)
    assert written.returncode == 0, written.stderr
    assert "Grokking gap" not in (tmp_path / "results" / "report" / "report.md").read_text()
