"""The results store: one SQLite database per experiment directory (WAL, no server).

Only the coordinating process writes. A run is written in one transaction when it finishes, so an
interrupted study loses at most the runs in flight, and re-running the same file skips finished runs.
A run whose cell kept failing is stored with status ``failed`` and its error; it is not a result
(``records()`` leaves it out), and re-running the file trains it again.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import attrs

from gnorm.components import RunRecord
from gnorm.errors import UserError

DATABASE = "gnorm.sqlite"
LOCK = "gnorm.lock"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    stage TEXT NOT NULL,
    cell_json TEXT NOT NULL,
    seed INTEGER NOT NULL,
    config_json TEXT NOT NULL,
    status TEXT NOT NULL,
    t_mem INTEGER,
    t_grok INTEGER,
    norm_at_grok REAL,
    budget INTEGER NOT NULL,
    facts_json TEXT NOT NULL,
    finished_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS evaluations (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    step INTEGER NOT NULL,
    train_loss REAL, test_loss REAL, train_acc REAL, test_acc REAL, weight_norm REAL,
    extra_json TEXT NOT NULL,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS plan (
    position INTEGER PRIMARY KEY, run_id TEXT NOT NULL, stage TEXT NOT NULL, cell_json TEXT NOT NULL
);
"""
SCHEMA_VERSION = "1"
EVALUATION_COLUMNS = ("train_loss", "test_loss", "train_acc", "test_acc", "weight_norm")


class Store:
    def __init__(self, directory: str | Path, create: bool = False):
        self.directory = Path(directory)
        path = self.directory / DATABASE
        if not path.exists() and not create:
            raise UserError(f"{self.directory}: no gnorm results here (expected {path})")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.connection = sqlite3.connect(path, timeout=30)
            self.connection.execute("PRAGMA journal_mode=WAL")
        except (OSError, sqlite3.Error) as error:
            raise UserError(f"{path}: cannot open a results store here: {error}") from None
        self._check_schema(path)

    def _check_schema(self, path: Path) -> None:
        self.connection.execute("PRAGMA synchronous=NORMAL")
        try:
            tables = {row[0] for row in self.connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as error:
            raise UserError(f"{path}: not a gnorm results store ({error})") from None
        found = self.meta("schema_version") if "meta" in tables else None
        if tables and found != SCHEMA_VERSION:
            self.connection.close()
            raise UserError(f"{path}: written by another version of gnorm's store (schema {found or 'unknown'}, "
                            f"this gnorm reads {SCHEMA_VERSION}); use a new results directory")
        with self.connection:
            self.connection.executescript(SCHEMA)
            self.connection.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))

    def close(self) -> None:
        self.connection.close()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the directory's lock for a whole ``gnorm run``; a second one gets a clear error."""
        try:
            handle = open(self.directory / LOCK, "a+")
        except OSError as error:
            raise UserError(f"{self.directory}: cannot lock the results directory: {error.strerror}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise UserError(f"{self.directory}: another gnorm run is using this directory ({holder}); "
                            "wait for it or choose another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

    # -- writing --------------------------------------------------------------------------------------

    def set_plan(self, source: str, text: str, runs: Sequence[tuple[str, str, dict[str, Any]]]) -> None:
        """Record the experiment file and the runs it asks for, in order (run_id, stage, cell)."""
        with self.connection:
            self.connection.execute("INSERT OR REPLACE INTO meta VALUES ('source', ?)", (source,))
            self.connection.execute("INSERT OR REPLACE INTO meta VALUES ('experiment_toml', ?)", (text,))
            self.connection.execute("DELETE FROM plan")
            self.connection.executemany("INSERT INTO plan VALUES (?, ?, ?, ?)",
                                        [(i, run_id, stage, json.dumps(cell))
                                         for i, (run_id, stage, cell) in enumerate(runs)])

    def add_to_plan(self, runs: Sequence[tuple[str, str, dict[str, Any]]]) -> None:
        """Append runs (run_id, stage, cell) that the plan does not list yet, e.g. imported ones."""
        with self.connection:
            planned = {row[0] for row in self.connection.execute("SELECT run_id FROM plan")}
            start = self.connection.execute("SELECT COALESCE(MAX(position) + 1, 0) FROM plan").fetchone()[0]
            new = [(run_id, stage, cell) for run_id, stage, cell in runs if run_id not in planned]
            self.connection.executemany("INSERT INTO plan VALUES (?, ?, ?, ?)",
                                        [(start + i, run_id, stage, json.dumps(cell))
                                         for i, (run_id, stage, cell) in enumerate(new)])

    def write_run(self, record: RunRecord, steps: Sequence[int], metrics: dict[str, Sequence[float]]) -> None:
        """Store a finished run and its trajectory in one transaction."""
        rows = []
        for i, step in enumerate(steps):
            extra = {k: v[i] for k, v in metrics.items() if k not in EVALUATION_COLUMNS}
            rows.append((record.run_id, step, *(metrics[k][i] for k in EVALUATION_COLUMNS), json.dumps(extra)))
        with self.connection:
            self.connection.execute("DELETE FROM evaluations WHERE run_id = ?", (record.run_id,))
            self.connection.execute(
                "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, 'done', ?, ?, ?, ?, ?, ?)",
                (record.run_id, record.stage, json.dumps(record.cell), record.seed, json.dumps(record.config),
                 record.t_mem, record.t_grok, record.norm_at_grok, record.budget, json.dumps(record.facts),
                 time.time()))
            self.connection.executemany("INSERT INTO evaluations VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def write_failed(self, run_id: str, stage: str, cell: dict[str, Any], seed: int, config: dict[str, Any],
                     budget: int, error: str, attempts: int) -> None:
        """Store a run whose cell failed ``attempts`` times, with the last error. A finished run is never
        overwritten."""
        with self.connection:
            self.connection.execute(
                "INSERT OR REPLACE INTO runs SELECT ?, ?, ?, ?, ?, 'failed', NULL, NULL, NULL, ?, ?, ? "
                "WHERE NOT EXISTS (SELECT 1 FROM runs WHERE run_id = ? AND status = 'done')",
                (run_id, stage, json.dumps(cell), seed, json.dumps(config), budget,
                 json.dumps({"error": error, "attempts": attempts}), time.time(), run_id))

    # -- reading --------------------------------------------------------------------------------------

    def finished_run_ids(self) -> set[str]:
        return {row[0] for row in self.connection.execute("SELECT run_id FROM runs WHERE status = 'done'")}

    def meta(self, key: str) -> str | None:
        row = self.connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def plan(self) -> list[tuple[str, str, dict[str, Any]]]:
        """The latest experiment's runs, in order: (run_id, stage, cell)."""
        return [(run_id, stage, json.loads(cell)) for run_id, stage, cell in
                self.connection.execute("SELECT run_id, stage, cell_json FROM plan ORDER BY position")]

    def records(self, planned_only: bool = True) -> list[RunRecord]:
        """Finished runs, in the order of the latest plan (or all runs ever stored)."""
        query = ("SELECT r.* FROM plan p JOIN runs r ON r.run_id = p.run_id WHERE r.status = 'done' "
                 "ORDER BY p.position" if planned_only else
                 "SELECT * FROM runs WHERE status = 'done' ORDER BY finished_at")
        return [_record(row) for row in self.connection.execute(query)]

    def failed_runs(self) -> list[FailedRun]:
        """Planned runs whose last attempt failed, in plan order."""
        return [FailedRun(run_id, stage, json.loads(cell), seed, **json.loads(facts)) for run_id, stage, cell, seed, facts
                in self.connection.execute(
                    "SELECT r.run_id, r.stage, r.cell_json, r.seed, r.facts_json FROM plan p JOIN runs r "
                    "ON r.run_id = p.run_id WHERE r.status = 'failed' ORDER BY p.position")]

    def trajectory(self, run_id: str) -> dict[str, list[Any]]:
        columns: dict[str, list[Any]] = {"step": [], **{k: [] for k in EVALUATION_COLUMNS}}
        for row in self.connection.execute(
                "SELECT step, train_loss, test_loss, train_acc, test_acc, weight_norm, extra_json "
                "FROM evaluations WHERE run_id = ? ORDER BY step", (run_id,)):
            for key, value in zip(("step", *EVALUATION_COLUMNS), row[:-1]):
                columns[key].append(value)
            for key, value in json.loads(row[-1]).items():
                columns.setdefault(key, []).append(value)
        return columns


@attrs.frozen
class FailedRun:
    run_id: str
    stage: str
    cell: dict[str, Any]
    seed: int
    error: str
    attempts: int


def _record(row: tuple) -> RunRecord:
    (run_id, stage, cell_json, seed, config_json, _status, t_mem, t_grok, norm_at_grok, budget, facts_json,
     _finished) = row
    return RunRecord(run_id=run_id, stage=stage, cell=json.loads(cell_json), seed=seed,
                     config=json.loads(config_json), t_mem=t_mem, t_grok=t_grok, norm_at_grok=norm_at_grok,
                     budget=budget, facts=json.loads(facts_json))
