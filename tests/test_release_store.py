"""A store written by gnorm 0.1.0 as released (tests/fixtures/release-0.1.0, made by commit a311aa7)
stays readable and keeps its meaning: the same file plans the same run ids, the store is shown and
analyzed with the numbers 0.1.0 printed, rerunning the study trains nothing, and training the file anew
stores the same T_grok, norms and trajectories bit for bit (on a machine like the one that wrote it:
float arithmetic differs in its last bits between CPU instruction sets and torch builds)."""

from __future__ import annotations

import json
import platform
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from conftest import GNORM

FIXTURE = Path(__file__).parent / "fixtures" / "release-0.1.0"
STUDY = FIXTURE / "study.toml"
#: Facts that measure the machine, not the science: they differ between any two runs.
TIMING_FACTS = {"wall_seconds"}


def _gnorm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*GNORM, *args], capture_output=True, text=True, timeout=900)


@pytest.fixture()
def release_store(tmp_path) -> Path:
    """A writable copy of the released store (the fixture itself is never touched)."""
    shutil.copytree(FIXTURE, tmp_path / "results")
    return tmp_path / "results"


def _runs(directory: Path) -> dict[str, dict]:
    """run id -> every stored column but the time it was written, facts without timings, trajectory."""
    connection = sqlite3.connect(f"file:{directory / 'gnorm.sqlite'}?mode=ro", uri=True)
    connection.row_factory = sqlite3.Row
    runs = {}
    for row in connection.execute("SELECT * FROM runs WHERE status = 'done'"):
        stored = {key: row[key] for key in row.keys() if key != "finished_at"}
        facts = {k: v for k, v in json.loads(stored.pop("facts_json")).items() if k not in TIMING_FACTS}
        trajectory = [tuple(r) for r in connection.execute(
            "SELECT * FROM evaluations WHERE run_id = ? ORDER BY step", (row["run_id"],))]
        runs[row["run_id"]] = {**stored, "facts": facts, "trajectory": trajectory}
    connection.close()
    return runs


def _same_machine_kind() -> str | None:
    """Why bit-for-bit results cannot be expected here, or None when this machine computes like the one
    that wrote the fixture (same torch build, CPU instruction set and architecture)."""
    import torch

    written = json.loads((FIXTURE / "fingerprint.json").read_text())
    here = {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "machine": platform.machine()}
    differing = [f"{key} {written[key]} there, {value} here" for key, value in here.items() if written[key] != value]
    return "; ".join(differing) or None


def test_the_released_file_plans_the_run_ids_its_store_holds():
    from gnorm.loader import load_experiment
    from gnorm.registry import build_registry

    planned = [run.run_id for run in load_experiment(STUDY, build_registry(autoload=False)).runs]
    stored = sqlite3.connect(f"file:{FIXTURE / 'gnorm.sqlite'}?mode=ro", uri=True)
    assert planned == [row[0] for row in stored.execute("SELECT run_id FROM plan ORDER BY position")]
    assert set(planned) == {row[0] for row in stored.execute("SELECT run_id FROM runs WHERE status = 'done'")}


def test_the_released_store_is_shown_and_analyzed_with_the_numbers_it_gave(release_store, tmp_path):
    shown = _gnorm("show", str(release_store))
    assert shown.returncode == 0, shown.stderr
    rows = [line.split() for line in shown.stdout.splitlines()]
    # as 0.1.0 showed it: cell, grokked, median T_mem, median T_grok, median ||W|| at grok
    for row in (["(all)", "2/2", "370", "400", "50.4"], ["rho=0.9", "2/2", "-", "800", "45.36"],
                ["rho=1.1", "2/2", "1270", "1320", "55.44"], ["factor=1.15", "2/2", "320", "420", "56.99"],
                ["(all)", "0/2", "-", "-", "-"]):
        assert row in rows
    assert "14/14 planned runs finished" in shown.stdout
    analyzed = _gnorm("analyze", str(release_store), "--json", str(tmp_path / "analysis.json"))
    assert analyzed.returncode == 0, analyzed.stderr
    ours = {a["analyzer"]: a["numbers"] for a in json.loads((tmp_path / "analysis.json").read_text())}
    theirs = {a["analyzer"]: a["numbers"] for a in json.loads((FIXTURE / "analysis.json").read_text())}
    for key in ("alpha", "intercept", "r_squared", "median_t_grok", "cells_used"):
        assert ours["delay_law"]["groups"][0][key] == theirs["delay_law"]["groups"][0][key], key
    # 0.2 made the seed-block interval the default; 0.1.0's per-cell bootstrap is interval = "cell"
    assert ours["delay_law"]["interval"] == "seed_block"
    assert ours["delay_law"]["groups"][0]["alpha_ci"] != theirs["delay_law"]["groups"][0]["alpha_ci"]
    from gnorm.builtins.analyzers.delay_law import DelayLawConfig, delay_law_analyzer
    from gnorm.store import Store

    store = Store(release_store)
    try:
        cell = delay_law_analyzer(DelayLawConfig(min_grokked=2, interval="cell"))(store.records())
    finally:
        store.close()
    assert cell.numbers["groups"][0]["alpha_ci"] == theirs["delay_law"]["groups"][0]["alpha_ci"]


def test_rerunning_the_released_study_trains_nothing_and_changes_nothing(release_store):
    before = _runs(release_store)
    stamps = dict(sqlite3.connect(release_store / "gnorm.sqlite").execute("SELECT run_id, finished_at FROM runs"))
    rerun = _gnorm("run", str(STUDY), "--out", str(release_store), "--executor", "serial")
    assert rerun.returncode == 0, rerun.stderr
    assert "started" not in rerun.stdout + rerun.stderr
    assert _runs(release_store) == before
    assert dict(sqlite3.connect(release_store / "gnorm.sqlite").execute(
        "SELECT run_id, finished_at FROM runs")) == stamps


def _retrained_equals_the_release(tmp_path: Path, stages: list[str] | None) -> None:
    why_not = _same_machine_kind()
    if why_not:
        pytest.skip(f"bit-for-bit results need a machine like the fixture's: {why_not}")
    study = STUDY
    if stages is not None:  # the same stages, alone in a file: their runs keep their ids
        text = STUDY.read_text()
        parts = text.split("[[stage]]")
        kept = [part for part in parts[1:] if part.split('name = "', 1)[1].split('"', 1)[0] in stages]
        study = tmp_path / "study.toml"
        study.write_text(parts[0] + "".join("[[stage]]" + part for part in kept).split("[[analysis]]")[0])
    trained = _gnorm("run", str(study), "--out", str(tmp_path / "out"), "--executor", "serial")
    assert trained.returncode == 0, trained.stderr
    ours, theirs = _runs(tmp_path / "out"), _runs(FIXTURE)
    assert ours and set(ours) <= set(theirs)
    for run_id, run in ours.items():
        released = theirs[run_id]
        # settings added since 0.1.0 appear in the stored configuration with their defaults
        assert _as_released(json.loads(run.pop("config_json")), json.loads(released["config_json"])) == \
            json.loads(released["config_json"]), run_id
        assert run == {k: v for k, v in released.items() if k != "config_json"}, run_id


def _as_released(config: object, released: object) -> object:
    """``config`` with only the keys (at every depth) that the released configuration has."""
    if isinstance(config, dict) and isinstance(released, dict):
        return {key: _as_released(config[key], released[key]) for key in released if key in config}
    return config


def test_the_free_and_transformer_stages_trained_anew_equal_the_release_bit_for_bit(tmp_path):
    _retrained_equals_the_release(tmp_path, ["free", "transformer"])


@pytest.mark.slow
def test_the_whole_study_trained_anew_equals_the_release_bit_for_bit(tmp_path):
    _retrained_equals_the_release(tmp_path, None)


@pytest.mark.slow  # the quickstart itself: about two minutes of training on 2 cores
def test_the_quickstart_prints_what_0_1_0_printed(tmp_path):
    """The numbers the README's quickstart shows, as 0.1.0 printed them on the development machine."""
    why_not = _same_machine_kind()
    if why_not:
        pytest.skip(f"bit-for-bit results need a machine like the fixture's: {why_not}")
    ran = _gnorm("run", str(Path(__file__).parent.parent / "examples" / "quickstart.toml"), "--out", str(tmp_path))
    assert ran.returncode == 0, ran.stderr
    rows = [line.split() for line in ran.stdout.splitlines()]
    for row in (["(all)", "4/4", "337.5", "912.5", "52.78"], ["rho=0.9", "4/4", "387.5", "550", "47.5"],
                ["rho=1.0", "4/4", "387.5", "737.5", "52.78"], ["rho=1.1", "4/4", "400", "1350", "58.06"],
                ["rho=1.2", "4/4", "400", "2738", "63.34"]):
        assert row in rows, row
    # the delay law: alpha and R^2 as 0.1.0 printed them; its CI is now the seed-block interval, and
    # 0.1.0's per-cell bootstrap (3.784 - 6.511) is interval = "cell"
    [fit] = [row for row in rows if row[:3] == ["(all)", "4", "5.419"]]
    assert fit[-2:] == ["0.9703", "0"]
    from gnorm.builtins.analyzers.delay_law import DelayLawConfig, delay_law_analyzer
    from gnorm.store import Store

    store = Store(tmp_path)
    try:
        cell = delay_law_analyzer(DelayLawConfig(interval="cell"))(store.records()).numbers["groups"][0]
    finally:
        store.close()
    assert [f"{v:.4g}" for v in cell["alpha_ci"]] == ["3.784", "6.511"]
