"""The store's index of weight snapshots (table ``snapshots``, store schema 2; see gnorm.snapshots).

One row per run and moment: the step it was taken at, the SHA-256 of the file's bytes (the file is
``snapshots/<sha256[:2]>/<sha256>.pt`` under the results directory), its size, and whether it holds
the optimizer's state. Rows are written in the transaction that stores the run, after their files,
so a stored run's rows always name files that exist. A store of schema 1 gains the empty table by
``add_snapshot_table``.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Callable

import attrs

SNAPSHOT_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    moment TEXT NOT NULL,
    step INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    optimizer_state INTEGER NOT NULL,
    PRIMARY KEY (run_id, moment)
);
"""
SNAPSHOT_COLUMNS = ("run_id", "moment", "step", "sha256", "bytes", "optimizer_state")


def add_snapshot_table(connection: sqlite3.Connection) -> None:
    """Store schema 1 -> 2: the (empty) snapshot index."""
    connection.execute(SNAPSHOT_SCHEMA)


@attrs.frozen
class SnapshotEntry:
    """One stored snapshot: run ``run_id``'s weights at ``moment`` ("t_mem", "t_grok", "end", or an
    evaluation step written as digits), taken after the evaluation at ``step``."""

    run_id: str
    moment: str
    step: int
    sha256: str
    bytes: int
    optimizer_state: bool

    @property
    def file(self) -> str:
        """The file's path under the results directory."""
        return f"snapshots/{self.sha256[:2]}/{self.sha256}.pt"

    def row(self) -> tuple[Any, ...]:
        return (self.run_id, self.moment, self.step, self.sha256, self.bytes, int(self.optimizer_state))


def _check(kind: type, what: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"is {value!r:.40}, expected {what}")
        return value
    return check


def _digest(value: Any) -> str:
    if not isinstance(value, str) or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ValueError(f"is {value!r:.40}, expected a SHA-256 in hex")
    return value


SNAPSHOT_CHECKS: dict[str, Callable[[Any], Any]] = {
    "run_id": _check(str, "text"), "moment": _check(str, "text"), "step": _check(int, "an integer"),
    "sha256": _digest, "bytes": _check(int, "an integer"), "optimizer_state": _check(int, "0 or 1"),
}


def entry_of(values: dict[str, Any]) -> SnapshotEntry:
    return SnapshotEntry(**{**values, "optimizer_state": bool(values["optimizer_state"])})
