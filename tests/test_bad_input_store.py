"""A results store that gnorm did not write, that is damaged, empty, of another schema version, read-only,
locked or out of disk space: every reading command answers in one line naming the store file (and the
run and column), exit status 2, no traceback, and the store is left exactly as it was."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import ROOT
from gnorm import store as store_module
from gnorm.cli import main
from gnorm.components import RunRecord
from gnorm.errors import UserError
from gnorm.store import DATABASE, LOCK, NAMED_PROBLEMS, Store

READING_COMMANDS = [["show"], ["analyze"], ["export"], ["report"]]
METRICS = ("train_loss", "test_loss", "train_acc", "test_acc", "weight_norm")


def record(index: int) -> RunRecord:
    config = {"stage": "free", "seed": index, "critical_norm": None,
              "task": {"name": "modular_addition", "p": 59, "train_fraction": 0.4},
              "architecture": {"name": "mlp"}, "controller": {"name": "free"}, "optimizer": {"lr": 1e-3},
              "training": {"max_steps": 1000}, "evaluation": {"schedule": "every", "every": 100}}
    return RunRecord(run_id=f"run-{index}", stage="free", cell={}, seed=index, config=config, t_mem=200,
                     t_grok=500 + index, norm_at_grok=30.0 + index, budget=1000, facts={})


def write_store(directory: Path, runs: int = 3) -> Path:
    """A closed store of ``runs`` finished free runs with a short trajectory each; returns its file."""
    store = Store(directory, create=True)
    store.set_plan("study.toml", "", [(f"run-{i}", "free", {}) for i in range(runs)])
    for i in range(runs):
        store.write_run(record(i), [0, 500, 1000], {k: [0.1, 0.5, 1.0] for k in METRICS})
    store.close()
    return directory / DATABASE


def digest(directory: Path) -> dict[str, tuple[int, int, str]]:
    """Every file in ``directory`` (recursively): size, mtime and content hash."""
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns,
                                            hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(directory.rglob("*")) if p.is_file()}


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_refused(result, *named: str) -> list[str]:
    """Exit 2, no traceback, and error lines that name each of ``named``; returns the error lines."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors, result.stderr
    for name in named:
        assert any(name in line for line in errors), (name, errors)
    return errors


def execute(path: Path, *statements: str) -> None:
    connection = sqlite3.connect(path)
    for statement in statements:
        connection.execute(statement)
    connection.commit()
    connection.close()


# ---------------------------------------------------------------------------------------------------
# Not a gnorm store.


@pytest.mark.parametrize("command", READING_COMMANDS, ids=lambda c: c[0])
def test_a_database_another_program_wrote_is_refused_by_name(tmp_path, command):
    (tmp_path / "results").mkdir()
    execute(tmp_path / "results" / DATABASE, "CREATE TABLE songs (title TEXT)", "INSERT INTO songs VALUES ('x')")
    before = digest(tmp_path / "results")
    errors = assert_refused(invoke(*command, tmp_path / "results"), DATABASE)
    assert errors == [f"error: {tmp_path / 'results' / DATABASE}: not a gnorm results store (it holds tables songs "
                      "and no gnorm meta table)"]
    assert digest(tmp_path / "results") == before


@pytest.mark.parametrize("command", READING_COMMANDS, ids=lambda c: c[0])
def test_a_store_whose_runs_table_has_other_columns_is_refused_naming_the_table(tmp_path, command):
    path = write_store(tmp_path / "results")
    execute(path, "ALTER TABLE runs DROP COLUMN facts_json")
    assert_refused(invoke(*command, tmp_path / "results"), DATABASE, "table runs", "facts_json")


def test_a_file_that_is_not_sqlite_at_all_is_refused(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / DATABASE).write_bytes(b"this is a text file, not a database\n" * 200)
    assert_refused(invoke("show", tmp_path / "results"), DATABASE, "not a gnorm results store")


# ---------------------------------------------------------------------------------------------------
# Damaged rows.

DAMAGE = {
    "invalid JSON in config_json": ("UPDATE runs SET config_json = '{\"task\": ' WHERE run_id = 'run-1'", "config_json"),
    "invalid JSON in facts_json": ("UPDATE runs SET facts_json = 'not json' WHERE run_id = 'run-1'", "facts_json"),
    "a list in cell_json": ("UPDATE runs SET cell_json = '[1, 2]' WHERE run_id = 'run-1'", "cell_json"),
    "text where the seed is": ("UPDATE runs SET seed = 'seven' WHERE run_id = 'run-1'", "seed"),
    "text where T_grok is": ("UPDATE runs SET t_grok = 'soon' WHERE run_id = 'run-1'", "t_grok"),
    "text where the norm at grok is": ("UPDATE runs SET norm_at_grok = 'big' WHERE run_id = 'run-1'", "norm_at_grok"),
}


@pytest.mark.parametrize("command", READING_COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize("damage", DAMAGE, ids=str)
def test_a_damaged_run_row_is_named_by_store_run_and_column_and_nothing_changes(tmp_path, command, damage):
    statement, column = DAMAGE[damage]
    path = write_store(tmp_path / "results")
    execute(path, statement)
    before = digest(tmp_path / "results")
    [line] = assert_refused(invoke(*command, tmp_path / "results"), str(path), "run 'run-1'", column)
    assert line.startswith(f"error: {path}: run 'run-1': runs.{column} ")
    assert digest(tmp_path / "results") == before


def test_a_null_where_a_value_is_expected_is_named(tmp_path):
    """A store written by another tool without gnorm's NOT NULL constraints, holding a NULL config."""
    path = write_store(tmp_path / "results")
    execute(path, "PRAGMA writable_schema = ON",
            "UPDATE sqlite_master SET sql = replace(sql, 'config_json TEXT NOT NULL', 'config_json TEXT') "
            "WHERE name = 'runs'")
    execute(path, "UPDATE runs SET config_json = NULL WHERE run_id = 'run-2'")
    [line] = assert_refused(invoke("show", tmp_path / "results"), "run 'run-2'", "config_json")
    assert "is None, expected a JSON object" in line


def test_a_damaged_evaluation_row_is_named_by_run_and_column_when_exporting(tmp_path):
    path = write_store(tmp_path / "results")
    execute(path, "UPDATE evaluations SET extra_json = '{' WHERE run_id = 'run-0' AND step = 500",
            "UPDATE evaluations SET test_acc = 'high' WHERE run_id = 'run-0' AND step = 1000")
    [line] = assert_refused(invoke("export", tmp_path / "results", "--out", tmp_path / "export"), "run run-0")
    assert "evaluations.extra_json" in line and "evaluations.test_acc" in line


def test_many_damaged_runs_are_named_a_few_at_a_time_then_counted(tmp_path):
    path = write_store(tmp_path / "results", runs=10)
    execute(path, "UPDATE runs SET facts_json = 'oops'")
    errors = assert_refused(invoke("show", tmp_path / "results"), DATABASE)
    assert len(errors) == NAMED_PROBLEMS + 1
    assert errors[-1].endswith(f"... and {10 - NAMED_PROBLEMS} more runs with damaged rows in table runs")


def test_a_damaged_meta_value_is_named_by_its_key(tmp_path):
    path = write_store(tmp_path / "results")
    execute(path, "INSERT OR REPLACE INTO meta VALUES ('reference_sources', '[broken')")
    assert_refused(invoke("report", tmp_path / "results", "--out", tmp_path / "report"), "meta reference_sources")


# ---------------------------------------------------------------------------------------------------
# Empty files and interrupted creation.


@pytest.mark.parametrize("command", READING_COMMANDS, ids=lambda c: c[0])
def test_a_zero_byte_store_is_refused_by_reading_commands(tmp_path, command):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / DATABASE).touch()
    [line] = assert_refused(invoke(*command, tmp_path / "results"), DATABASE)
    assert line.endswith("is empty (0 bytes): no runs were stored here")
    assert digest(tmp_path / "results") == {DATABASE: digest(tmp_path / "results")[DATABASE]}


def test_a_zero_byte_store_holds_nothing_to_lose_so_a_writer_takes_it_as_new(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / DATABASE).touch()
    store = Store(tmp_path / "results", create=True)
    assert store.records() == [] and store.meta("schema_version") == store_module.SCHEMA_VERSION
    store.close()


def test_a_zero_byte_store_beside_a_write_ahead_log_with_data_is_refused_even_to_a_writer(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / DATABASE).touch()
    (tmp_path / "results" / f"{DATABASE}-wal").write_bytes(b"\x37\x7f\x06\x82" + b"\0" * 60)
    with pytest.raises(UserError, match="0 bytes.*-wal beside it holds data"):
        Store(tmp_path / "results", create=True)


def test_a_kill_during_creation_leaves_no_half_made_store(tmp_path, monkeypatch):
    """The tables and schema_version are made in one transaction: a creation that fails after the first
    table leaves a database with no tables, which the next writer takes as new."""
    monkeypatch.setattr(store_module, "SCHEMA", store_module.SCHEMA + "\nCREATE TABLE broken (;")
    with pytest.raises(UserError):
        Store(tmp_path / "results", create=True)
    monkeypatch.undo()
    tables = sqlite3.connect(tmp_path / "results" / DATABASE).execute("SELECT name FROM sqlite_master").fetchall()
    assert tables == []
    assert_refused(invoke("show", tmp_path / "results"), DATABASE, "no gnorm tables")
    store = Store(tmp_path / "results", create=True)
    assert store.records() == []
    store.close()


# ---------------------------------------------------------------------------------------------------
# Schema versions.


def set_version(path: Path, version: str) -> None:
    execute(path, f"UPDATE meta SET value = '{version}' WHERE key = 'schema_version'")


def test_a_store_of_a_newer_schema_is_refused_asking_for_a_newer_gnorm(tmp_path):
    path = write_store(tmp_path / "results")
    set_version(path, "7")
    [line] = assert_refused(invoke("show", tmp_path / "results"), DATABASE)
    assert line == (f"error: {path}: written by store schema 7; this gnorm reads up to "
                    f"{store_module.SCHEMA_VERSION}: upgrade gnorm")
    with pytest.raises(UserError, match="upgrade gnorm"):
        Store(tmp_path / "results", create=True)


@pytest.mark.parametrize("version", ["0", "one"])
def test_a_schema_version_gnorm_never_wrote_is_refused(tmp_path, version):
    path = write_store(tmp_path / "results")
    set_version(path, version)
    assert_refused(invoke("show", tmp_path / "results"), DATABASE, "schema")


#: The schema this gnorm writes, and the next one (that the tests below pretend to be).
CURRENT = int(store_module.SCHEMA_VERSION)
NEXT = str(CURRENT + 1)


def become_schema_two(monkeypatch) -> None:
    """gnorm from here on as if its store schema were the next one, with a migration from this one that
    records it ran."""
    def one_to_two(connection: sqlite3.Connection) -> None:
        connection.execute("CREATE TABLE notes (text TEXT)")
        connection.execute(f"INSERT INTO meta VALUES ('migrated_from', '{CURRENT}')")

    monkeypatch.setattr(store_module, "SCHEMA_VERSION", NEXT)
    monkeypatch.setattr(store_module, "MIGRATIONS", {**store_module.MIGRATIONS, CURRENT: one_to_two})


def test_a_writer_migrates_an_older_store_in_place_keeping_its_runs(tmp_path, monkeypatch):
    write_store(tmp_path / "results")
    become_schema_two(monkeypatch)
    store = Store(tmp_path / "results", create=True)
    assert store.meta("schema_version") == NEXT and store.meta("migrated_from") == str(CURRENT)
    assert [r.run_id for r in store.records()] == ["run-0", "run-1", "run-2"]
    store.close()


def test_a_reader_migrates_an_older_store_in_memory_and_leaves_the_file_alone(tmp_path, monkeypatch):
    write_store(tmp_path / "results")
    before = digest(tmp_path / "results")
    become_schema_two(monkeypatch)
    store = Store(tmp_path / "results", read_only=True)
    assert store.meta("schema_version") == NEXT and store.meta("migrated_from") == str(CURRENT)
    assert len(store.records()) == 3
    store.close()
    assert digest(tmp_path / "results") == before


def test_a_migration_that_fails_half_way_changes_nothing(tmp_path, monkeypatch):
    def half(connection: sqlite3.Connection) -> None:
        connection.execute("CREATE TABLE notes (text TEXT)")
        connection.execute("INSERT INTO no_such_table VALUES (1)")

    write_store(tmp_path / "results")
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", NEXT)
    monkeypatch.setattr(store_module, "MIGRATIONS", {**store_module.MIGRATIONS, CURRENT: half})
    with pytest.raises(UserError, match="no_such_table"):
        Store(tmp_path / "results", create=True)
    connection = sqlite3.connect(tmp_path / "results" / DATABASE)
    assert connection.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(CURRENT),)
    assert connection.execute("SELECT name FROM sqlite_master WHERE name = 'notes'").fetchall() == []


# ---------------------------------------------------------------------------------------------------
# Reading commands never write.


def test_reading_commands_create_and_change_no_file_in_the_results_directory(tmp_path):
    write_store(tmp_path / "results")
    before = digest(tmp_path / "results")
    for command in (["show"], ["analyze"], ["export", "--out", tmp_path / "export"],
                    ["report", "--out", tmp_path / "report"]):
        result = invoke(command[0], tmp_path / "results", *command[1:])
        assert result.exit_code == 0, (command, result.output)
        assert digest(tmp_path / "results") == before, command


def test_a_store_in_a_directory_nobody_may_write_can_be_shown(tmp_path):
    write_store(tmp_path / "archive")
    os.chmod(tmp_path / "archive", 0o555)
    try:
        try:
            (tmp_path / "archive" / "probe").touch()
        except PermissionError:
            pass
        else:
            (tmp_path / "archive" / "probe").unlink()
            pytest.skip("file modes do not stop this user (root) from writing, so no directory is unwritable here")
        result = invoke("show", tmp_path / "archive")
        assert result.exit_code == 0, result.output
        assert "3/3 planned runs finished" in result.stdout
    finally:
        os.chmod(tmp_path / "archive", 0o755)


# ---------------------------------------------------------------------------------------------------
# The lock.

HOLDER = """
import sys
from gnorm.store import Store
store = Store(sys.argv[1], create=True)
with store.exclusive():
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def held_elsewhere(tmp_path):
    """The results directory's lock held by another process until the fixture ends."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "results")], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def test_a_second_holder_in_another_process_is_refused_naming_the_first(tmp_path, held_elsewhere):
    store = Store(tmp_path / "results")
    with pytest.raises(UserError, match=f"another gnorm run is using this directory \\(pid {held_elsewhere.pid} "):
        with store.exclusive():
            pass


def test_deleting_gnorm_lock_does_not_free_the_directory(tmp_path, held_elsewhere):
    (tmp_path / "results" / LOCK).unlink()
    store = Store(tmp_path / "results")
    with pytest.raises(UserError, match="another gnorm run is using this directory"):
        with store.exclusive():
            pass


def test_after_release_nothing_says_a_pid_and_the_next_holder_gets_the_lock(tmp_path, held_elsewhere):
    held_elsewhere.stdin.close()
    assert held_elsewhere.wait(timeout=60) == 0
    assert not (tmp_path / "results" / LOCK).exists()
    store = Store(tmp_path / "results")
    with store.exclusive():
        assert (tmp_path / "results" / LOCK).read_text().startswith(f"pid {os.getpid()} ")
    assert not (tmp_path / "results" / LOCK).exists()


# ---------------------------------------------------------------------------------------------------
# A full disk.


def test_a_full_disk_during_a_write_is_one_line_and_every_stored_run_survives(tmp_path):
    write_store(tmp_path / "results")
    store = Store(tmp_path / "results")
    pages = store.connection.execute("PRAGMA page_count").fetchone()[0]
    store.connection.execute(f"PRAGMA max_page_count = {pages}")
    big = {k: [0.1] * 5000 for k in METRICS}
    with pytest.raises(UserError) as full:
        store.write_run(record(3), list(range(5000)), big)
    [problem] = full.value.problems
    assert problem.source == str(tmp_path / "results") and "the disk is full" in problem.message
    assert [r.run_id for r in store.records()] == ["run-0", "run-1", "run-2"]
    store.close()
    resumed = Store(tmp_path / "results")  # room again: the same write goes through
    resumed.write_run(record(3), list(range(5000)), big)
    assert len(resumed.trajectory("run-3")["step"]) == 5000
    resumed.close()


def test_a_trajectory_is_stored_row_by_row_with_its_extra_metrics_and_a_short_metric_is_refused(tmp_path):
    store = Store(tmp_path / "out", create=True)
    steps = [100, 200, 300]
    metrics = {name: [0.5, 0.25, 0.125] for name in METRICS} | {"logit_scale": [1.0, None, 3.0], "norm/hidden": [4, 5, 6]}
    store.write_run(record(0), steps, metrics)
    trajectory = store.trajectory("run-0")
    assert list(trajectory["step"]) == steps
    assert list(trajectory["test_acc"]) == [0.5, 0.25, 0.125] and list(trajectory["norm/hidden"]) == [4, 5, 6]
    assert trajectory["logit_scale"][0] == 1.0 and trajectory["logit_scale"][2] == 3.0
    with pytest.raises(ValueError, match=r"run-1: metrics \['norm/hidden'\] have fewer values than its 3 steps"):
        store.write_run(record(1), steps, metrics | {"norm/hidden": [4, 5]})
    assert "run-1" not in store.finished_run_ids()
    store.close()
