"""Tidy rows written as a Parquet file with pyarrow, an optional dependency (``gnorm[parquet]``):
``gnorm export --format parquet``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from gnorm.errors import Problem, UserError, write_failure

INSTALL = "pip install 'gnorm[parquet]'"


def require_pyarrow(option: str) -> None:
    """Refuse, naming ``option``, where pyarrow is not installed."""
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise UserError([Problem(option, "parquet", f"needs pyarrow, which is not installed here: {INSTALL} "
                                                    "(or choose --format csv or json)")]) from None


def columns_of(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Rows as columns, every key of any row a column (None where a row lacks it), in order of first
    appearance."""
    names = list(dict.fromkeys(key for row in rows for key in row)) or ["run_id"]
    return {name: [row.get(name) for row in rows] for name in names}


def write_parquet(option: str, path: Path, rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` to ``path`` whole or not at all (a temporary file, then a rename). A column whose
    values have no one Arrow type (numbers in some rows, text in others) is written as JSON text; a
    failed write is one line naming ``option`` and the path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = {}
    for name, values in columns_of(rows).items():
        try:
            arrays[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arrays[name] = pa.array([None if v is None else json.dumps(v, default=str) for v in values], pa.string())
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(pa.table(arrays), temporary)
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise write_failure(option, path, error) from None
