"""The ``[[analysis]]`` tables of a file: each names a registered analyzer whose config class structures
its options, and the options that name a stage or run keys (declared with ``naming``) are checked
against the stages and the runs the file plans."""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Any, Iterable

import attrs

from gnorm.converter import DERIVED_KEYS, NAMES, names_written, structure, suggest
from gnorm.registry import UnknownComponent
from gnorm.runmodel import ComponentChoice, RunSpec, Stage, cells_of

if TYPE_CHECKING:
    from gnorm.loader import Loader


def analyses(loader: Loader, data: dict[str, Any], stages: list[Stage],
             stage_names: list[str]) -> list[ComponentChoice]:
    """The file's ``[[analysis]]`` tables resolved, in order (those with problems left out)."""
    raw_analyses = data.get("analysis", [])
    if not isinstance(raw_analyses, list):
        loader.problem("analysis", "expected [[analysis]] tables")
        raw_analyses = []
    run_keys = functools.cache(lambda: run_keys_of([run for stage in stages for run in stage.runs]))
    chosen = [analysis_choice(loader, raw, f"analysis[{i + 1}]", stage_names, run_keys)
              for i, raw in enumerate(raw_analyses)]
    return [analysis for analysis in chosen if analysis]


def analysis_choice(loader: Loader, raw: Any, where: str, stage_names: list[str] | None = None,
                    run_keys: Any = set) -> ComponentChoice | None:
    """One ``[[analysis]]`` table: its analyzer and structured options; with ``stage_names``, the
    stages and run keys (``run_keys()``) its options name are checked too."""
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        loader.problem(f"{where}.name", "required: the name of an analyzer")
        return None
    options = dict(raw)
    name = options.pop("name")
    try:
        component = loader.registry.get("analyzer", name)
    except UnknownComponent as unknown:
        loader.problem(f"{where}.name", str(unknown))
        return None
    config, problems = structure(options, component.config_class)
    for path, message, valid in problems:
        loader.problem(".".join((where,) + path), message + (suggest(path[-1], valid) if valid else ""))
    if stage_names is not None and attrs.has(component.config_class):
        misshapen = {re.sub(r"\[.*$", "", path[0]) for path, _, _ in problems if path}
        check_names(loader, component.config_class, {k: v for k, v in options.items() if k not in misshapen},
                    where, stage_names, run_keys)
    return ComponentChoice(name, config) if config is not None else None


def check_names(loader: Loader, config_class: type, written: dict, where: str, stage_names: list[str],
                run_keys: Any) -> None:
    """The stages and run keys that the options written in the file name exist in it (names that are
    not strings are left to structuring to report)."""
    for field in attrs.fields(config_class):
        what = field.metadata.get(NAMES)
        if what is None or field.name not in written:
            continue
        for suffix, name in names_written(written[field.name]):
            if not isinstance(name, str):
                continue
            key = f"{where}.{field.name}{suffix}"
            if what == "stage" and name not in stage_names:
                loader.problem(key, f"no stage of this file is named {name!r}{suggest(name, stage_names)} "
                                    f"(stages: {', '.join(stage_names)})")
            elif what == "key" and run_keys() and not (name in DERIVED_KEYS or name.startswith("facts.")
                                                       or name in run_keys()):
                loader.problem(key, f"no run of this file has the key {name!r}{suggest(name, run_keys())}")


def run_keys_of(runs: list[RunSpec]) -> set[str]:
    """Every dotted config key some run of the file has (one run per cell is read)."""
    return dotted_keys(cell[0].plain() for cell in cells_of(runs))


def dotted_keys(tables: Iterable[dict]) -> set[str]:
    """Every dotted key of the nested ``tables``, tables included (``{"a": {"b": 1}}`` gives ``a`` and
    ``a.b``)."""
    keys: set[str] = set()

    def walk(table: dict, prefix: str) -> None:
        for key, value in table.items():
            keys.add(prefix + key)
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
    for table in tables:
        walk(table, "")
    return keys
