"""An experiment given as Python data (``gnorm.run({...})``) written as the TOML text of the file it
stands for, so that it is checked, stored and read back exactly as a file is. A value TOML cannot
hold (None, a set, an object) is a problem naming its dotted key."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from gnorm.describe import describe
from gnorm.errors import Problem, UserError

#: The source named in the problems of an experiment given as data.
DICT_SOURCE = "<dict>"
BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_key(key: str) -> str:
    """A key as TOML writes it: bare where it may be, else a basic string."""
    return key if BARE_KEY.fullmatch(key) else json.dumps(key)


def toml_value(value: Any, key: str, problems: list[Problem]) -> str:
    """An inline TOML value (bool, integer, float, string, array, inline table); a value of another
    type is added to ``problems`` at ``key``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")) if not math.isfinite(value) \
            else repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item, f"{key}[{i}]", problems) for i, item in enumerate(value)) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{toml_key(str(k))} = {toml_value(v, f'{key}.{k}', problems)}"
                                for k, v in _string_keys(value, key, problems).items()) + " }"
    problems.append(Problem(DICT_SOURCE, key, f"{describe(value)} has no TOML form: use a bool, number, string, "
                                              "list or dict, or leave the key out"))
    return '""'


def _string_keys(table: dict, where: str, problems: list[Problem]) -> dict[str, Any]:
    """``table`` with its non-string keys reported (TOML keys are strings) and left out."""
    for key in table:
        if not isinstance(key, str):
            problems.append(Problem(DICT_SOURCE, f"{where}.{key!r}" if where else repr(key),
                                    f"a key must be a string, found {describe(key)}"))
    return {k: v for k, v in table.items() if isinstance(k, str)}


def toml_document(data: Any) -> str:
    """``data`` (a dict with the experiment file's schema) as a TOML document: top-level values, then a
    ``[table]`` per dict and a ``[[table]]`` per entry of a list of dicts, their values inline. Raises
    :class:`UserError` naming every key whose value TOML cannot hold."""
    if not isinstance(data, dict):
        raise UserError([Problem(DICT_SOURCE, "", f"an experiment is a dict of tables, found {describe(data)}")])
    problems: list[Problem] = []
    data = _string_keys(data, "", problems)

    def is_tables(value: Any) -> bool:
        return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(item, dict) for item in value)

    def body(table: dict, where: str) -> list[str]:
        return [f"{toml_key(k)} = {toml_value(v, f'{where}.{k}', problems)}"
                for k, v in _string_keys(table, where, problems).items()]

    lines = [f"{toml_key(k)} = {toml_value(v, k, problems)}" for k, v in data.items()
             if not isinstance(v, dict) and not is_tables(v)]
    for key, value in data.items():
        if isinstance(value, dict):
            lines += ["", f"[{toml_key(key)}]", *body(value, key)]
    for key, value in data.items():
        if is_tables(value):
            for index, table in enumerate(value):
                lines += ["", f"[[{toml_key(key)}]]", *body(table, f"{key}[{index + 1}]")]
    if problems:
        raise UserError(problems)
    return "\n".join(lines).lstrip("\n") + "\n"
