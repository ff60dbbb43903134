"""The command line under bad options, unwritable or full output places, damaged imports and Ctrl-C:
one line naming the option (or file) and the problem, exit status 2 (130 after a Ctrl-C), no traceback,
and nothing already stored is lost."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from builders import write_study
from conftest import ROOT, tiny_study
from gnorm import registry as registry_module
from gnorm.cli import main
from gnorm.store import Store
from test_bad_input_store import assert_refused, digest, invoke, write_store


def assert_interrupted(result) -> str:
    """Exit 130 with one ``interrupted`` line on stderr and no traceback; returns that line."""
    assert result.exit_code == 130, result.output
    assert "Traceback" not in result.output and "Aborted" not in result.output
    [line] = [line for line in result.stderr.splitlines() if line.startswith("interrupted")]
    return line


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# ---------------------------------------------------------------------------------------------------
# Options.


def test_an_unknown_analyzer_is_one_line_listing_the_known_ones_with_a_suggestion(tmp_path):
    write_store(tmp_path / "results")
    [line] = assert_refused(invoke("analyze", tmp_path / "results", "--analyzer", "critcal_norm"), "--analyzer")
    assert "unknown analyzer 'critcal_norm' (did you mean 'critical_norm'?)" in line
    known = line.split("known: ")[1].split(", ")
    assert known == sorted(known) and {"arms", "censored_delay_law", "critical_norm", "delay_law"} <= set(known)


def test_json_into_a_missing_directory_names_the_option_and_path_before_any_work(tmp_path):
    write_store(tmp_path / "results")
    target = tmp_path / "no" / "such" / "numbers.json"
    [line] = assert_refused(invoke("analyze", tmp_path / "results", "--json", target), "--json", str(target))
    assert "its directory does not exist" in line
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("command", ["export", "report"])
def test_out_below_a_file_names_the_option_and_path(tmp_path, command):
    write_store(tmp_path / "results")
    (tmp_path / "a_file").write_text("")
    target = tmp_path / "a_file" / "out"
    [line] = assert_refused(invoke(command, tmp_path / "results", "--out", target), "--out", str(target))
    assert line.startswith(f"error: --out: {target}: cannot write here")


@pytest.mark.parametrize("command", ["export", "report"])
def test_out_into_a_directory_nobody_may_write_names_the_option(tmp_path, command):
    write_store(tmp_path / "results")
    (tmp_path / "locked").mkdir(mode=0o555)
    if os.access(tmp_path / "locked", os.W_OK):
        pytest.skip("file modes do not stop this user (root) from writing, so no directory is unwritable here")
    assert_refused(invoke(command, tmp_path / "results", "--out", tmp_path / "locked" / "x"), "--out",
                   "permission denied")


# ---------------------------------------------------------------------------------------------------
# A full disk while writing files.


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_export_onto_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch, fmt):
    write_store(tmp_path / "results")
    before = digest(tmp_path / "results")
    monkeypatch.setattr(Path, "write_text", no_space)
    [line] = assert_refused(invoke("export", tmp_path / "results", "--format", fmt, "--out", tmp_path / "export"),
                            "--out", "the disk is full")
    assert str(tmp_path / "export" / f"runs.{fmt}") in line
    assert list((tmp_path / "export").iterdir()) == []
    assert digest(tmp_path / "results") == before


def test_analyze_json_onto_a_full_disk_still_prints_the_analysis(tmp_path, monkeypatch):
    write_store(tmp_path / "results")
    monkeypatch.setattr(Path, "write_text", no_space)
    result = invoke("analyze", tmp_path / "results", "--json", tmp_path / "numbers.json")
    assert_refused(result, "--json", "the disk is full")
    assert "critical norm" in result.stdout.lower()


def test_report_onto_a_full_disk_names_the_file(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    write_store(tmp_path / "results")
    monkeypatch.setattr(Figure, "savefig", no_space)
    [line] = assert_refused(invoke("report", tmp_path / "results", "--out", tmp_path / "report"),
                            str(tmp_path / "report" / "figures"))
    assert line.endswith("cannot write here: the disk is full")


# ---------------------------------------------------------------------------------------------------
# Ctrl-C.


@pytest.mark.parametrize("command", [["plugins"], ["analyze", "{results}"], ["report", "{results}"],
                                     ["validate", "{study}"], ["run", "{study}"]], ids=lambda c: c[0])
def test_ctrl_c_while_loading_plugins_is_one_interrupted_line_and_exit_130(tmp_path, monkeypatch, command):
    write_store(tmp_path / "results")
    study = tiny_study(tmp_path)

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(registry_module, "default_registry", interrupted)
    line = assert_interrupted(invoke(*(a.format(results=tmp_path / "results", study=study) for a in command)))
    assert line.startswith(f"interrupted: gnorm {command[0]} stopped")


@pytest.mark.parametrize("command", ["show", "export"])
def test_ctrl_c_while_opening_the_store_is_one_interrupted_line(tmp_path, monkeypatch, command):
    write_store(tmp_path / "results")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Store, "__init__", interrupted)
    assert_interrupted(invoke(command, tmp_path / "results"))


INTERRUPT_TORCH_IMPORT = """
import sys

class CtrlCAtTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            raise KeyboardInterrupt

sys.meta_path.insert(0, CtrlCAtTorch())
from gnorm.cli import main
main(["show", sys.argv[1]], prog_name="gnorm")
"""


def test_ctrl_c_while_the_command_imports_torch_is_one_interrupted_line(tmp_path):
    """The command line starts without torch; importing it happens inside the command, where a Ctrl-C
    is caught like anywhere else."""
    (tmp_path / "results").mkdir()
    done = subprocess.run([sys.executable, "-c", INTERRUPT_TORCH_IMPORT, str(tmp_path / "results")],
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip() == "interrupted: gnorm show stopped; nothing already stored was lost"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny study (free and clamp stages at a given Wc, one seed, 60 steps), run to the end: (file, results)."""
    folder = tmp_path_factory.mktemp("trained")
    study = tiny_study(folder, seeds=1, max_steps=60, critical_norm="30.0")
    result = CliRunner().invoke(main, ["run", str(study), "--out", str(folder / "results"), "--executor", "serial"])
    assert result.exit_code == 0, result.output
    return study, folder / "results"


def test_ctrl_c_while_a_rerun_prints_its_summary_says_every_run_is_stored(trained, monkeypatch):
    study, results = trained
    before = {r.run_id: r for r in Store(results, read_only=True).records()}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("gnorm.cli._print_summary", interrupted)
    line = assert_interrupted(invoke("run", study, "--out", results, "--executor", "serial"))
    assert line == f"interrupted: all 3 runs are stored in {results}; gnorm show {results} prints the summary"
    assert {r.run_id: r for r in Store(results, read_only=True).records()} == before


def test_a_full_disk_during_run_is_one_line_keeps_the_stored_runs_and_a_rerun_resumes(trained, tmp_path,
                                                                                        monkeypatch):
    study, results = trained
    shutil.copytree(results, tmp_path / "results")
    two_seeds = tmp_path / "two_seeds.toml"
    two_seeds.write_text(study.read_text().replace("seeds = 1", "seeds = 2"))
    stored = {row[0]: row for row in Store(tmp_path / "results").connection.execute("SELECT * FROM runs")}
    original_init = Store.__init__

    def on_a_full_disk(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        pages = self.connection.execute("PRAGMA page_count").fetchone()[0]
        self.connection.execute(f"PRAGMA max_page_count = {pages}")

    monkeypatch.setattr(Store, "__init__", on_a_full_disk)
    full = invoke("run", two_seeds, "--out", tmp_path / "results", "--executor", "serial")
    [line] = assert_refused(full, str(tmp_path / "results"), "the disk is full")
    assert "run the same command again to resume" in line
    monkeypatch.undo()
    after = {row[0]: row for row in Store(tmp_path / "results").connection.execute("SELECT * FROM runs")}
    assert {run_id: after[run_id] for run_id in stored} == stored
    resumed = invoke("run", two_seeds, "--out", tmp_path / "results", "--executor", "serial")
    assert resumed.exit_code == 0, resumed.output
    records = Store(tmp_path / "results", read_only=True).records()
    assert len(records) == 6
    final = {row[0]: row for row in Store(tmp_path / "results").connection.execute("SELECT * FROM runs")}
    assert {run_id: final[run_id] for run_id in stored} == stored  # skipped, not trained again


# ---------------------------------------------------------------------------------------------------
# gnorm import.


def write_cell(path: Path, seeds: int = 2, steps: int = 4, rho: float = 1.0) -> None:
    """A small result file in the layout of paper A's ``metrics/*.npz``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    trajectory = np.linspace(0.0, 1.0, seeds * steps).reshape(seeds, steps)
    np.savez(path, p=np.array(59), alpha=np.array(0.4), d_model=np.array(32), H=np.array(64), lam=np.array(1.0),
             lr=np.array(1e-3), arm=np.array("clamp"), rho=np.array(rho), wc=np.array(30.0), t_int=np.array(100),
             max_steps=np.array(1000), steps=np.arange(steps) * 100,
             T_grok_per_seed=np.array([300] * seeds), T_mem_per_seed=np.array([100] * seeds),
             **{k: trajectory for k in ("train_loss", "test_loss", "train_acc", "test_acc", "weight_norm")})


def test_an_experiment_folder_of_result_files_imports(tmp_path):
    for rho in (0.9, 1.1):
        write_cell(tmp_path / "paper-a" / "dense" / "metrics" / f"rho{rho}.npz", rho=rho)
    result = invoke("import", tmp_path / "paper-a" / "dense", "--out", tmp_path / "store")
    assert result.exit_code == 0, result.output
    assert len(Store(tmp_path / "store", read_only=True).records()) == 4


def test_a_damaged_result_file_is_one_line_naming_it_and_nothing_is_imported(tmp_path):
    folder = tmp_path / "paper-a" / "dense"
    write_cell(folder / "metrics" / "good.npz")
    (folder / "metrics" / "torn.npz").write_bytes((folder / "metrics" / "good.npz").read_bytes()[:300])
    [line] = assert_refused(invoke("import", folder, "--out", tmp_path / "store"), "torn.npz")
    assert "cannot read this result file" in line
    assert Store(tmp_path / "store", read_only=True).records() == []


def test_a_result_file_without_the_per_seed_times_names_the_missing_key(tmp_path):
    folder = tmp_path / "paper-b" / "dose"
    folder.mkdir(parents=True)
    np.savez(folder / "cell.npz", p=np.array(59), steps=np.arange(3))
    [line] = assert_refused(invoke("import", folder, "--out", tmp_path / "store"), "cell.npz")
    assert "T_grok_per_seed" in line and "missing" in line


@pytest.mark.parametrize("contents", [[], ["notes.txt"]], ids=["empty", "no result files"])
def test_a_folder_without_result_files_is_refused_not_imported_as_zero_runs(tmp_path, contents):
    folder = tmp_path / "empty"
    folder.mkdir()
    for name in contents:
        (folder / name).write_text("")
    [line] = assert_refused(invoke("import", folder, "--out", tmp_path / "store"), str(folder))
    assert "holds no result files" in line


def test_a_missing_folder_is_refused_before_a_store_is_made(tmp_path):
    assert_refused(invoke("import", tmp_path / "nowhere", "--out", tmp_path / "store"), "nowhere", "no such folder")
    assert not (tmp_path / "store").exists()


def test_a_bad_executor_option_given_by_set_names_the_command_line(tmp_path):
    """An installed executor's table is checked when the file loads, so its --set keys name --set."""
    path = write_study(tmp_path)
    result = CliRunner().invoke(main, ["validate", str(path), "--set", "executor.workers=-1"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ["error: --set: executor.workers: 'workers' must be >= 0: -1"]
