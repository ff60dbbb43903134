"""Edits of an experiment's data by dotted key: ``--set key=value`` from the command line, the keys a
sweep sets, a stage's tables merged over the base sections, and problems at a key a ``--set`` wrote
named as the command line's rather than the file's."""

from __future__ import annotations

import re
import sys
from typing import Any, Iterable

import attrs

from gnorm.describe import describe
from gnorm.errors import Problem, UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` from the command line; the value is read as a TOML value (strings may be bare)."""
    if "=" not in text:
        raise UserError([Problem("--set", text, "expected key=value")])
    key, value = text.split("=", 1)
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return key.strip(), parsed


def set_dotted(data: dict, dotted: str, value: Any) -> str | None:
    """Set ``a.b.c`` in nested tables, creating missing ones. In a list of tables (``stage``) a part picks
    the table by its ``name`` or its 0-based index. Returns why the key cannot be set, or None."""
    parts = dotted.split(".")
    for depth, part in enumerate(parts):
        where = ".".join(parts[:depth])
        if isinstance(data, list):
            names = [t.get("name") if isinstance(t, dict) else None for t in data]
            if part in names:
                data = data[names.index(part)]
            elif part.isdigit() and int(part) < len(data):
                data = data[int(part)]
            else:
                return (f"{where} has no table named or numbered {part!r} "
                        f"(names: {', '.join(str(n) for n in names if n is not None) or 'none'})")
        elif not isinstance(data, dict):
            return f"{where} is {describe(data)}, not a table"
        elif depth == len(parts) - 1:
            data[part] = value
            return None
        else:
            data = data.setdefault(part, {})
    return f"{dotted} is a table in a list, not a key; name a key inside it"


def deep_merge(base: dict, override: dict) -> dict:
    """``override``'s tables merged key by key into ``base``'s; a table naming another component than the
    base's replaces it whole (the base's options belong to the other component)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            if "name" in value and value.get("name") != merged[key].get("name"):
                merged[key] = dict(value)  # another component: the base's options do not apply to it
            else:
                merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def flatten_sweep(table: dict, prefix: str = "") -> dict[str, Any]:
    """Nested tables as dotted keys: ``{"task": {"p": [..]}}`` -> ``{"task.p": [..]}``."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_sweep(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def merge_options(options: Iterable[dict]) -> dict:
    """One table of the keys of several, later ones winning."""
    return {key: value for option in options for key, value in option.items()}


def _key_parts(key: str) -> list[str]:
    """A problem's dotted key as plain parts: ``stage[clamp].sweep."task.p"[0]`` -> stage, clamp, sweep,
    task, p, 0."""
    return [part for quoted, bracket, plain in re.findall(r'"([^"]*)"|\[([^\]]*)\]|([^.\["]+)', key)
            for part in (quoted or bracket or plain).split(".")]


def _override_parts(dotted: str, data: dict) -> list[str]:
    """The parts of a ``--set`` key as problem keys spell them: a ``[[stage]]`` picked by index becomes its
    name, an ``[[analysis]]`` table its 1-based number."""
    parts = dotted.split(".")
    tables = data.get(parts[0]) if len(parts) > 1 else None
    if parts[0] in ("stage", "analysis") and isinstance(tables, list):
        names = [t.get("name") if isinstance(t, dict) else None for t in tables]
        index = names.index(parts[1]) if parts[1] in names else int(parts[1]) if parts[1].isdigit() else None
        if index is not None and index < len(tables):
            stage_name = names[index] if isinstance(names[index], str) else f"#{index + 1}"
            parts[1] = stage_name if parts[0] == "stage" else str(index + 1)
    return parts


def name_the_command_line(problems: list[Problem], overrides: dict[str, Any], data: dict) -> list[Problem]:
    """Problems at a key that a ``--set`` wrote (or inside it) name the command line, not the file."""
    written = [_override_parts(dotted, data) for dotted in overrides]
    return [attrs.evolve(problem, source="--set")
            if any(_key_parts(problem.key)[:len(parts)] == parts for parts in written) else problem
            for problem in problems]
