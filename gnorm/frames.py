"""Stored runs as tidy rows and typed pandas frames, for ``gnorm.api`` (pandas is handed in, so this
module imports neither pandas nor torch)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Sequence

from gnorm.analysis.records import cell_label
from gnorm.overrides import flatten_sweep

if TYPE_CHECKING:
    from gnorm.components import RunRecord
    from gnorm.store import FailedRun, Store


def run_rows(records: Iterable[RunRecord], failed: Iterable[FailedRun],
             config_keys_shown: Sequence[str] = ()) -> list[dict[str, Any]]:
    """One row per run: identity, outcomes, the config flattened to dotted keys (those in
    ``config_keys_shown`` left out) and the facts as ``facts.<name>``; then one per failed run with
    its cell's keys, ``error`` and ``attempts``."""
    rows = []
    for record in records:
        config = {key: value for key, value in record.config.items() if key not in config_keys_shown}
        rows.append({"run_id": record.run_id, "stage": record.stage, "cell": cell_label(record.cell),
                     "seed": record.seed, "status": "done", "t_mem": record.t_mem, "t_grok": record.t_grok,
                     "censored": record.censored, "norm_at_grok": record.norm_at_grok, "budget": record.budget,
                     **flatten_sweep(config), **{f"facts.{key}": value for key, value in record.facts.items()}})
    for run in failed:
        rows.append({"run_id": run.run_id, "stage": run.stage, "cell": cell_label(run.cell), "seed": run.seed,
                     "status": "failed", **run.cell, "error": run.error, "attempts": run.attempts})
    return rows


def evaluation_rows(store: Store, run_ids: Iterable[str]) -> list[dict[str, Any]]:
    """One row per run and evaluated step: run_id, step and every metric stored for it."""
    rows = []
    for run_id in run_ids:
        trajectory = store.trajectory(run_id)
        rows += [{"run_id": run_id, **{key: values[i] for key, values in trajectory.items()}}
                 for i in range(len(trajectory["step"]))]
    return rows


def column_dtype(values: Sequence[Any]) -> str | None:
    """The pandas dtype for a column's values: ``bool``/``boolean`` for booleans, ``int64``/``Int64``
    for integers (the capitalised, nullable one where some value is None), ``float64`` for numbers
    (None as NaN); None (pandas' own inference) for anything else or for a column of Nones."""
    present = [value for value in values if value is not None]
    missing = len(present) < len(values)
    if not present:
        return None
    if all(isinstance(value, bool) for value in present):
        return "boolean" if missing else "bool"
    if all(isinstance(value, int) and not isinstance(value, bool) for value in present):
        return "Int64" if missing else "int64"
    if all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in present):
        return "float64"
    return None


def typed_frame(pandas: Any, rows: list[dict[str, Any]], leading: Sequence[str],
                fixed: dict[str, str]) -> Any:
    """``rows`` as a DataFrame: the ``leading`` columns first (present even without rows), then every
    other key of any row in order of first appearance; each column of the dtype :func:`column_dtype`
    gives, or the one ``fixed`` names for it (whatever its values, e.g. ``{"t_grok": "Int64"}``)."""
    names = list(dict.fromkeys([*leading, *(key for row in rows for key in row)]))
    columns = {}
    for name in names:
        values = [row.get(name) for row in rows]
        dtype = fixed.get(name) or column_dtype(values)
        if dtype is None:
            columns[name] = pandas.Series(values, dtype=object if not rows or all(v is None for v in values)
                                          else None)
        else:
            columns[name] = pandas.Series(values, dtype=dtype)
    return pandas.DataFrame(columns, columns=names)
