"""Where the commands write: a file whole or not at all, an output directory or file checked before any
work (each failure one line naming the command-line option), ``--json FILE|-`` (``-``: standard
output), and tidy rows as CSV or JSON text."""

from __future__ import annotations

import csv
import errno
import io
import json
import os
from pathlib import Path
from typing import Any

import click

from gnorm.errors import write_failure


def write_text(option: str, path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (a temporary file, then a rename), so a full disk
    never leaves a truncated file; a failure is one line naming ``option`` and the path."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        temporary.write_text(text)
        os.replace(temporary, path)
    except OSError as error:
        try:
            temporary.unlink()
        except OSError:
            pass
        raise write_failure(option, path, error) from None


#: The ``--json`` value that writes the JSON to standard output (the text for people then goes to stderr).
STDOUT = "-"


def check_json_option(path: str | None) -> None:
    """Refuse, before any work, a ``--json`` file that cannot be written (``-`` is standard output)."""
    if path and path != STDOUT:
        output_file("--json", Path(path))


def write_json(path: str | None, data: Any) -> None:
    """``data`` as JSON to ``--json``'s file (whole or not at all), or to standard output for ``-``."""
    text = json.dumps(data, indent=2, default=str)
    if path == STDOUT:
        click.echo(text)
    elif path:
        write_text("--json", Path(path), text)


def output_directory(option: str, path: Path) -> Path:
    """``path`` made (with its parents) to write into; a failure is one line naming ``option`` (or, for
    a default path, the path alone)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise write_failure(option, path, error) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise write_failure(option, path, PermissionError(errno.EACCES, "permission denied"))
    return path


def output_file(option: str, path: Path) -> Path:
    """Refuse, before any work, a file path whose directory is missing or that names a directory."""
    if path.is_dir():
        raise write_failure(option, path, IsADirectoryError(errno.EISDIR, "is a directory"))
    if not path.parent.is_dir():
        raise write_failure(option, path, FileNotFoundError(errno.ENOENT, "no such directory"))
    return path


def table_text(rows: list[dict[str, Any]], fmt: str) -> str:
    """``rows`` as the text of a JSON list or of a CSV file with every key of any row as a column."""
    if fmt == "json":
        return json.dumps(rows, indent=1)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()
