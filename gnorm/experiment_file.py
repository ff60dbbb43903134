"""Reading an experiment file safely: a regular file of bounded size, UTF-8 text, valid TOML. Every
refusal names the file and happens before a byte of anything else is read (a named pipe or a device
never blocks)."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import Any

from gnorm.errors import Problem, UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


#: The largest experiment file read; anything larger is refused before reading.
MAX_FILE_BYTES = 16 * 1024 * 1024
UTF8_BOM = "\ufeff"


def _file_kind(mode: int) -> str:
    """What a non-regular file is, in words, from its ``st_mode``."""
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def read_experiment_text(path: Path) -> str:
    """The text of an experiment file: a regular file of at most ``MAX_FILE_BYTES`` bytes of UTF-8 (a
    leading byte-order mark is dropped). Anything else is refused, naming the file, before a byte is
    read (so a named pipe or a device never blocks)."""
    source = str(path)
    try:
        status = os.stat(path)
    except OSError as error:
        raise UserError([Problem(source, "", f"cannot read the file: {error.strerror}")]) from None
    if not stat.S_ISREG(status.st_mode):
        raise UserError([Problem(source, "", f"is {_file_kind(status.st_mode)}, not an experiment file "
                                             "(a regular TOML file)")])
    if status.st_size > MAX_FILE_BYTES:
        raise UserError([Problem(source, "", f"is {status.st_size} bytes; an experiment file is at most "
                                             f"{MAX_FILE_BYTES // (1024 * 1024)} MiB of TOML")])
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise UserError([Problem(source, "", f"cannot read the file: {error.strerror}")]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise UserError([Problem(source, "", f"is over {MAX_FILE_BYTES // (1024 * 1024)} MiB; an experiment "
                                             "file is at most that much TOML")])
    try:
        return raw.decode("utf-8").removeprefix(UTF8_BOM)
    except UnicodeDecodeError as error:
        raise UserError([Problem(source, "", f"is not UTF-8 text (byte 0x{raw[error.start]:02x} at offset "
                                             f"{error.start}); save it as UTF-8")]) from None


def parse_experiment(path: Path, text: str | None = None) -> tuple[str, dict[str, Any]]:
    """The file's text (or ``text``, its content as stored) and its TOML data; raises :class:`UserError`
    naming the file where it is not valid TOML."""
    source = str(path)
    text = read_experiment_text(path) if text is None else text.removeprefix(UTF8_BOM)
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UserError([Problem(source, "", f"not valid TOML: {error}")]) from None
    except RecursionError:
        raise UserError([Problem(source, "", "not valid TOML here: arrays or tables nested too deeply")]) from None
