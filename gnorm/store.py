"""The results store: one SQLite database per experiment directory (WAL, no server).

Only the coordinating process writes. A run is written in one transaction when it finishes, so an
interrupted study loses at most the runs in flight, and re-running the same file skips finished runs.
A run whose cell kept failing is stored with status ``failed`` and its error; it is not a result
(``records()`` leaves it out), and re-running the file trains it again.

A new store's tables and its ``schema_version`` are created in one transaction, so a store is either
complete or has no tables at all (and a database without tables is taken as new). A store written by
an older schema is migrated one version at a time (``MIGRATIONS``), all in one transaction; one written
by a newer schema is refused. Reading commands open the store read-only (``Store(..., read_only=True)``)
and never create or change a file in its directory. Every row read is checked; a damaged one is
reported by store file, run id and column instead of ending in a traceback.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sqlite3
import time
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence
from urllib.parse import quote

import attrs

from gnorm.components import RunRecord
from gnorm.errors import Problem, UserError
from gnorm.snapshot_index import (SNAPSHOT_CHECKS, SNAPSHOT_COLUMNS, SNAPSHOT_SCHEMA, SnapshotEntry, add_snapshot_table,
                                  entry_of)

DATABASE = "gnorm.sqlite"
#: Says who holds the directory's lock (the lock itself is on the directory): written while held,
#: removed on release.
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
""" + SNAPSHOT_SCHEMA
SCHEMA_VERSION = "2"
#: version N -> the function that turns a store of schema N into schema N + 1 (inside the caller's
#: transaction). 1 -> 2 adds the snapshot index (gnorm.snapshot_index).
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: add_snapshot_table}
EVALUATION_COLUMNS = ("train_loss", "test_loss", "train_acc", "test_acc", "weight_norm")
RUN_COLUMNS = ("run_id", "stage", "cell_json", "seed", "config_json", "status", "t_mem", "t_grok", "norm_at_grok",
               "budget", "facts_json", "finished_at")
#: Damaged runs named one per line before the rest are counted in one more line.
NAMED_PROBLEMS = 3


class Store:
    """One results directory's database. ``create``: make the directory and a new store where there is
    none (``gnorm run``, ``gnorm import``). ``read_only``: open without writing anything (reading
    commands); an older schema is then migrated in a copy in memory, never on disk."""

    def __init__(self, directory: str | Path, create: bool = False, read_only: bool = False):
        self.directory = Path(directory)
        self.path = self.directory / DATABASE
        self.read_only = read_only
        _refuse_unreadable(self.path, may_be_new=create and not read_only)
        if read_only:
            self.connection = _connect_read_only(self.path)
        else:
            self.connection = _connect_for_writing(self.directory, self.path)
        try:
            self._prepare_schema(create and not read_only)
        except BaseException:
            self.connection.close()
            raise

    # -- opening --------------------------------------------------------------------------------------

    def _prepare_schema(self, create: bool) -> None:
        """Create the tables of a new store, migrate an older one, refuse what gnorm cannot read."""
        tables = self._tables()
        if not tables:
            if not create:
                raise self._refusal("an empty database (no gnorm tables): no runs were stored here")
            self._create_tables()
            tables = self._tables()
        version = self._schema_version(tables)
        if version < int(SCHEMA_VERSION):
            self._migrate(version)
        problems = table_problems(self.connection, str(self.path))
        if problems:
            raise UserError(problems)

    def _tables(self) -> set[str]:
        try:
            return {row[0] for row in self.connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
        except sqlite3.DatabaseError as error:
            raise self._refusal(f"not a gnorm results store ({error})") from None

    def _create_tables(self) -> None:
        """Every table and the schema version in one transaction: a kill part way leaves no tables."""
        script = (f"BEGIN IMMEDIATE;\n{SCHEMA}\nINSERT OR IGNORE INTO meta VALUES ('schema_version', "
                  f"'{SCHEMA_VERSION}');\nCOMMIT;")
        try:
            self.connection.executescript(script)
        except sqlite3.Error as error:
            if self.connection.in_transaction:
                self.connection.rollback()
            raise self._write_failure(error) from None

    def _schema_version(self, tables: set[str]) -> int:
        if "meta" not in tables:
            raise self._refusal(f"not a gnorm results store (it holds tables {', '.join(sorted(tables))} and no "
                                "gnorm meta table)")
        try:
            row = self.connection.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.DatabaseError as error:
            raise self._refusal(f"not a gnorm results store ({error})") from None
        found = row[0] if row else None
        if found is None:
            raise self._refusal("not a gnorm results store (its meta table has no schema_version)")
        try:
            version = int(found)
        except (TypeError, ValueError):
            raise self._refusal(f"not a gnorm results store (unknown schema_version {found!r})") from None
        if version > int(SCHEMA_VERSION):
            raise self._refusal(f"written by store schema {version}; this gnorm reads up to {SCHEMA_VERSION}: "
                                "upgrade gnorm")
        if version < 1 or any(v not in MIGRATIONS for v in range(version, int(SCHEMA_VERSION))):
            raise self._refusal(f"written by store schema {version}, which this gnorm (schema {SCHEMA_VERSION}) "
                                "has no migration from")
        return version

    def _migrate(self, version: int) -> None:
        """Apply MIGRATIONS from ``version`` up to SCHEMA_VERSION in one transaction (read-only: in a copy
        of the store in memory)."""
        if self.read_only:
            memory = sqlite3.connect(":memory:")
            self.connection.backup(memory)
            self.connection.close()
            self.connection = memory
        try:
            self.connection.execute("BEGIN IMMEDIATE")  # explicit: the migrations' DDL joins the transaction
            for step in range(version, int(SCHEMA_VERSION)):
                MIGRATIONS[step](self.connection)
            self.connection.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,))
            self.connection.commit()
        except BaseException as error:
            if self.connection.in_transaction:
                self.connection.rollback()
            if isinstance(error, sqlite3.Error):
                raise self._write_failure(error) from None
            raise

    def close(self) -> None:
        self.connection.close()

    # -- the lock -------------------------------------------------------------------------------------

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the directory's lock for a whole ``gnorm run``; a second one gets a clear error.

        The lock is an ``flock`` on the directory itself, which no one can delete out from under the
        holder; ``gnorm.lock`` only says who holds it and is removed on release."""
        try:
            handle = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as error:
            raise UserError(f"{self.directory}: cannot lock the results directory: {error.strerror}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(handle)
            raise UserError(f"{self.directory}: another gnorm run is using this directory ({lock_holder(self.directory)}); "
                            "wait for it or choose another --out") from None
        note = self.directory / LOCK
        try:
            note.write_text(f"pid {os.getpid()} on {socket.gethostname()} since "
                            f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        except OSError:
            pass  # only information: the lock holds without it
        try:
            yield
        finally:
            try:
                note.unlink()
            except OSError:
                pass
            fcntl.flock(handle, fcntl.LOCK_UN)
            os.close(handle)

    # -- writing --------------------------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; a failing write (a full disk, a read-only file) becomes a UserError
        naming the directory, and the transaction is rolled back, so stored runs stay as they were."""
        if self.read_only:
            raise UserError(f"{self.path}: opened read-only, cannot write")
        try:
            with self.connection:
                yield self.connection
        except sqlite3.Error as error:
            raise self._write_failure(error) from None

    def set_plan(self, source: str, text: str, runs: Sequence[tuple[str, str, dict[str, Any]]]) -> None:
        """Record the experiment file and the runs it asks for, in order (run_id, stage, cell)."""
        with self._transaction() as connection:
            connection.execute("INSERT OR REPLACE INTO meta VALUES ('source', ?)", (source,))
            connection.execute("INSERT OR REPLACE INTO meta VALUES ('experiment_toml', ?)", (text,))
            connection.execute("DELETE FROM plan")
            connection.executemany("INSERT INTO plan VALUES (?, ?, ?, ?)",
                                   [(i, run_id, stage, json.dumps(cell)) for i, (run_id, stage, cell) in enumerate(runs)])

    def add_to_plan(self, runs: Sequence[tuple[str, str, dict[str, Any]]]) -> None:
        """Append runs (run_id, stage, cell) that the plan does not list yet, e.g. imported ones."""
        with self._transaction() as connection:
            planned = {row[0] for row in connection.execute("SELECT run_id FROM plan")}
            start = connection.execute("SELECT COALESCE(MAX(position) + 1, 0) FROM plan").fetchone()[0]
            new = [(run_id, stage, cell) for run_id, stage, cell in runs if run_id not in planned]
            connection.executemany("INSERT INTO plan VALUES (?, ?, ?, ?)",
                                   [(start + i, run_id, stage, json.dumps(cell))
                                    for i, (run_id, stage, cell) in enumerate(new)])

    def set_meta(self, values: dict[str, str]) -> None:
        """Set meta keys (text values) in one transaction."""
        with self._transaction() as connection:
            connection.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(values.items()))

    def write_run(self, record: RunRecord, steps: Sequence[int], metrics: dict[str, Sequence[float]],
                  snapshots: Sequence[SnapshotEntry] = ()) -> None:
        """Store a finished run, its trajectory and the index of its snapshots (whose files are already
        written) in one transaction."""
        extra_keys = [k for k in metrics if k not in EVALUATION_COLUMNS]
        keys = (*EVALUATION_COLUMNS, *extra_keys)
        width = 1 + len(EVALUATION_COLUMNS)  # step and the evaluation columns, then the extras
        short = [k for k in keys if len(metrics[k]) < len(steps)]
        if short:
            raise ValueError(f"run {record.run_id}: metrics {short} have fewer values than its {len(steps)} steps")
        columns = zip(steps, *(metrics[k] for k in keys))
        rows = [(record.run_id, *row[:width], json.dumps(dict(zip(extra_keys, row[width:])))) for row in columns]
        with self._transaction() as connection:
            connection.execute("DELETE FROM evaluations WHERE run_id = ?", (record.run_id,))
            connection.execute(
                f"INSERT OR REPLACE INTO runs ({', '.join(RUN_COLUMNS)}) VALUES (?, ?, ?, ?, ?, 'done', ?, ?, ?, ?, ?, ?)",
                (record.run_id, record.stage, json.dumps(record.cell), record.seed, json.dumps(record.config),
                 record.t_mem, record.t_grok, record.norm_at_grok, record.budget, json.dumps(record.facts),
                 time.time()))
            connection.executemany("INSERT INTO evaluations (run_id, step, train_loss, test_loss, train_acc, "
                                   "test_acc, weight_norm, extra_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            connection.execute("DELETE FROM snapshots WHERE run_id = ?", (record.run_id,))
            connection.executemany(f"INSERT INTO snapshots ({', '.join(SNAPSHOT_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?)",
                                   [entry.row() for entry in snapshots])

    def write_failed(self, run_id: str, stage: str, cell: dict[str, Any], seed: int, config: dict[str, Any],
                     budget: int, error: str, attempts: int) -> None:
        """Store a run whose cell failed ``attempts`` times, with the last error. A finished run is never
        overwritten."""
        with self._transaction() as connection:
            connection.execute(
                f"INSERT OR REPLACE INTO runs ({', '.join(RUN_COLUMNS)}) "
                "SELECT ?, ?, ?, ?, ?, 'failed', NULL, NULL, NULL, ?, ?, ? "
                "WHERE NOT EXISTS (SELECT 1 FROM runs WHERE run_id = ? AND status = 'done')",
                (run_id, stage, json.dumps(cell), seed, json.dumps(config), budget,
                 json.dumps({"error": error, "attempts": attempts}), time.time(), run_id))

    # -- reading --------------------------------------------------------------------------------------

    def _rows(self, query: str, parameters: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Every row of ``query`` (by column name); a damaged file is a UserError naming the store."""
        try:
            cursor = self.connection.cursor()
            cursor.row_factory = sqlite3.Row
            return cursor.execute(query, parameters).fetchall()
        except sqlite3.DatabaseError as error:
            raise self._refusal(f"cannot be read ({error}); the file is damaged") from None

    def finished_run_ids(self) -> set[str]:
        return {row["run_id"] for row in self._rows("SELECT run_id FROM runs WHERE status = 'done'")}

    def meta(self, key: str) -> str | None:
        rows = self._rows("SELECT value FROM meta WHERE key = ?", (key,))
        if not rows:
            return None
        value = rows[0]["value"]
        if not isinstance(value, str):
            raise UserError([Problem(str(self.path), f"meta {key}", f"holds {_shown(value)}, expected text")])
        return value

    def meta_json(self, key: str, default: Any) -> Any:
        """A meta value stored as JSON, of the type of ``default`` (``default`` where the key is absent)."""
        text = self.meta(key)
        if text is None:
            return default
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if not isinstance(value, type(default)):
            raise UserError([Problem(str(self.path), f"meta {key}",
                                     f"is not a JSON {type(default).__name__}: {_shown(text)}")])
        return value

    def plan(self) -> list[tuple[str, str, dict[str, Any]]]:
        """The latest experiment's runs, in order: (run_id, stage, cell)."""
        decoded = [_decoded(row, {"run_id": _text, "stage": _text, "cell_json": _object})
                   for row in self._rows("SELECT run_id, stage, cell_json FROM plan ORDER BY position")]
        self._raise_damaged(decoded, "plan")
        return [(values["run_id"], values["stage"], values["cell_json"]) for values, _ in decoded]

    def records(self, planned_only: bool = True) -> list[RunRecord]:
        """Finished runs, in the order of the latest plan (or all runs ever stored)."""
        columns = ", ".join(f"r.{c}" for c in RUN_COLUMNS)
        query = (f"SELECT {columns} FROM plan p JOIN runs r ON r.run_id = p.run_id WHERE r.status = 'done' "
                 "ORDER BY p.position" if planned_only else
                 f"SELECT {columns} FROM runs r WHERE status = 'done' ORDER BY finished_at")
        decoded = [_decoded(row, RECORD_COLUMNS) for row in self._rows(query)]
        self._raise_damaged(decoded, "runs")
        return [RunRecord(run_id=v["run_id"], stage=v["stage"], cell=v["cell_json"], seed=v["seed"],
                          config=v["config_json"], t_mem=v["t_mem"], t_grok=v["t_grok"],
                          norm_at_grok=v["norm_at_grok"], budget=v["budget"], facts=v["facts_json"])
                for v, _ in decoded]

    def failed_runs(self) -> list[FailedRun]:
        """Planned runs whose last attempt failed, in plan order."""
        decoded = [_decoded(row, {"run_id": _text, "stage": _text, "cell_json": _object, "seed": _integer,
                                  "facts_json": _failure})
                   for row in self._rows("SELECT r.run_id, r.stage, r.cell_json, r.seed, r.facts_json FROM plan p "
                                         "JOIN runs r ON r.run_id = p.run_id WHERE r.status = 'failed' "
                                         "ORDER BY p.position")]
        self._raise_damaged(decoded, "runs")
        return [FailedRun(v["run_id"], v["stage"], v["cell_json"], v["seed"], v["facts_json"]["error"],
                          v["facts_json"]["attempts"]) for v, _ in decoded]

    def snapshots(self, run_id: str | None = None) -> list[SnapshotEntry]:
        """The snapshot index of finished runs (of ``run_id`` only, where given), by run and step."""
        where = "AND s.run_id = ?" if run_id is not None else ""
        decoded = [_decoded(row, SNAPSHOT_CHECKS) for row in self._rows(
            f"SELECT {', '.join(f's.{c}' for c in SNAPSHOT_COLUMNS)} FROM snapshots s JOIN runs r ON "
            f"r.run_id = s.run_id WHERE r.status = 'done' {where} ORDER BY s.run_id, s.step, s.moment",
            () if run_id is None else (run_id,))]
        self._raise_damaged(decoded, "snapshots")
        return [entry_of(values) for values, _ in decoded]

    def trajectory(self, run_id: str) -> dict[str, list[Any]]:
        columns: dict[str, list[Any]] = {"step": [], **{k: [] for k in EVALUATION_COLUMNS}}
        checks = {"step": _integer, **{k: _optional(_number) for k in EVALUATION_COLUMNS}, "extra_json": _object}
        decoded = [_decoded(row, checks) for row in self._rows(
            "SELECT step, train_loss, test_loss, train_acc, test_acc, weight_norm, extra_json "
            "FROM evaluations WHERE run_id = ? ORDER BY step", (run_id,))]
        wrong = [f"evaluations.{column} at row {i}: {why}" for i, (_, damage) in enumerate(decoded)
                 for column, why in damage]
        if wrong:
            raise UserError([Problem(str(self.path), f"run {run_id}", "; ".join(wrong[:NAMED_PROBLEMS])
                                     + (f"; and {len(wrong) - NAMED_PROBLEMS} more" if len(wrong) > NAMED_PROBLEMS
                                        else ""))])
        for values, _ in decoded:
            for key in ("step", *EVALUATION_COLUMNS):
                columns[key].append(values[key])
            for key, value in values["extra_json"].items():
                columns.setdefault(key, []).append(value)
        return columns

    # -- problems -------------------------------------------------------------------------------------

    def _refusal(self, message: str) -> UserError:
        return UserError([Problem(str(self.path), "", message)])

    def _write_failure(self, error: sqlite3.Error) -> UserError:
        """A failed write in words: a full disk, a read-only store, or SQLite's own message."""
        text = str(error)
        if "full" in text:
            message = (f"the disk is full (SQLite: {text}); the runs stored so far are intact: free some space "
                       "and run the same command again to resume")
        elif "readonly" in text or "read-only" in text:
            message = f"cannot write here, the store or its directory is read-only (SQLite: {text})"
        else:
            message = f"cannot write to the store (SQLite: {text})"
        return UserError([Problem(str(self.directory), "", message)])

    def _raise_damaged(self, decoded: list[tuple[dict[str, Any], list[tuple[str, str]]]], table: str) -> None:
        """One line per damaged row (the first few, then a count of the rest), naming run id and column."""
        damaged = [(values.get("run_id"), damage) for values, damage in decoded if damage]
        if not damaged:
            return
        problems = [Problem(str(self.path), f"run {run_id!r}" if isinstance(run_id, str) else f"{table} row",
                            "; ".join(f"{table}.{column} {why}" for column, why in damage))
                    for run_id, damage in damaged[:NAMED_PROBLEMS]]
        if len(damaged) > NAMED_PROBLEMS:
            problems.append(Problem(str(self.path), "", f"... and {len(damaged) - NAMED_PROBLEMS} more runs with "
                                    f"damaged rows in table {table}"))
        raise UserError(problems)


@attrs.frozen
class FailedRun:
    run_id: str
    stage: str
    cell: dict[str, Any]
    seed: int
    error: str
    attempts: int


def lock_holder(directory: Path) -> str:
    """What ``gnorm.lock`` says about the process holding ``directory``'s lock (it may be gone)."""
    try:
        return (Path(directory) / LOCK).read_text().strip() or "another process"
    except OSError:
        return "another process"


# ---------------------------------------------------------------------------------------------------
# Opening the file.


def _wal(path: Path) -> Path:
    return path.with_name(path.name + "-wal")


def _refuse_unreadable(path: Path, may_be_new: bool) -> None:
    """Refuse a store path that holds no store: missing, not a file, or 0 bytes (a 0-byte file holds no
    runs, so a writer that ``may_be_new`` takes it as new, unless a write-ahead log beside it holds data)."""
    wal = _wal(path)
    wal_has_data = wal.is_file() and wal.stat().st_size > 0
    if not path.exists():
        if may_be_new and not wal_has_data:
            return
        raise UserError(f"{path.parent}: no gnorm results here (expected {path})")
    if not path.is_file():
        raise UserError([Problem(str(path), "", "is not a file, so not a gnorm results store")])
    if path.stat().st_size == 0:
        if wal_has_data:
            raise UserError([Problem(str(path), "", f"is empty (0 bytes) but {wal.name} beside it holds data; "
                                     "refusing to guess which runs it held")])
        if not may_be_new:
            raise UserError([Problem(str(path), "", "is empty (0 bytes): no runs were stored here")])


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """A connection that writes nothing: ``mode=ro``, and ``immutable=1`` where no write-ahead log holds
    data (then SQLite needs no -wal or -shm file, so a read-only directory reads too)."""
    wal = _wal(path)
    immutable = not (wal.is_file() and wal.stat().st_size > 0)
    uri = f"file:{quote(str(path.resolve()))}?mode=ro" + ("&immutable=1" if immutable else "")
    try:
        return sqlite3.connect(uri, uri=True, timeout=30)
    except sqlite3.Error as error:
        why = "" if immutable else (f"; its write-ahead log {wal.name} holds data that SQLite can only read with "
                                    f"write access to {path.parent}")
        raise UserError([Problem(str(path), "", f"cannot open the store read-only ({error}){why}")]) from None


def _connect_for_writing(directory: Path, path: Path) -> sqlite3.Connection:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(path, timeout=30)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection
    except OSError as error:
        raise UserError([Problem(str(directory), "", f"cannot hold a results store here: {_os_reason(error)}")]) from None
    except sqlite3.DatabaseError as error:
        raise UserError([Problem(str(path), "", f"cannot open a results store here ({error})")]) from None


def _os_reason(error: OSError) -> str:
    return "the disk is full" if error.errno == errno.ENOSPC else (error.strerror or str(error))


@lru_cache(maxsize=1)
def expected_columns() -> dict[str, list[str]]:
    """Each table of SCHEMA -> its column names, in order."""
    memory = sqlite3.connect(":memory:")
    memory.executescript(SCHEMA)
    tables = [row[0] for row in memory.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    columns = {table: [row[1] for row in memory.execute(f"PRAGMA table_info({table})")] for table in tables}
    memory.close()
    return columns


def table_problems(connection: sqlite3.Connection, source: str) -> list[Problem]:
    """A problem for each table of SCHEMA that is missing or whose columns differ from gnorm's."""
    problems = []
    for table, columns in expected_columns().items():
        found = [row[1] for row in connection.execute(f"PRAGMA table_info({table})")]
        if not found:
            problems.append(Problem(source, f"table {table}", "is missing; not a store this gnorm wrote"))
        elif found != columns:
            problems.append(Problem(source, f"table {table}", f"has columns ({', '.join(found)}); gnorm's are "
                                    f"({', '.join(columns)})"))
    return problems


# ---------------------------------------------------------------------------------------------------
# Checking the values of a row. Each check returns the value (decoded) or raises ValueError saying
# what is wrong with it.


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"is {_shown(value)}, expected text")
    return value


def _integer(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"is {_shown(value)}, expected an integer")
    return value


def _number(value: Any) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"is {_shown(value)}, expected a number")
    return value


def _optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else check(value)


def _object(value: Any) -> dict[str, Any]:
    if not isinstance(value, str):
        raise ValueError(f"is {_shown(value)}, expected a JSON object")
    try:
        decoded = json.loads(value)
    except ValueError:
        raise ValueError(f"is not valid JSON: {_shown(value)}") from None
    if not isinstance(decoded, dict):
        raise ValueError(f"is {_shown(value)}, expected a JSON object")
    return decoded


def _failure(value: Any) -> dict[str, Any]:
    decoded = _object(value)
    if not isinstance(decoded.get("error"), str) or not isinstance(decoded.get("attempts"), int):
        raise ValueError(f"is {_shown(value)}, expected an error text and a count of attempts")
    return decoded


RECORD_COLUMNS: dict[str, Callable[[Any], Any]] = {
    "run_id": _text, "stage": _text, "cell_json": _object, "seed": _integer, "config_json": _object,
    "t_mem": _optional(_integer), "t_grok": _optional(_integer), "norm_at_grok": _optional(_number),
    "budget": _integer, "facts_json": _object,
}


def _decoded(row: sqlite3.Row, checks: dict[str, Callable[[Any], Any]]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The row's values passed through their checks, and (column, what is wrong) for each that failed."""
    values: dict[str, Any] = {}
    damage: list[tuple[str, str]] = []
    for column, check in checks.items():
        try:
            values[column] = check(row[column])
        except ValueError as error:
            values[column] = row[column]
            damage.append((column, str(error)))
    return values, damage
