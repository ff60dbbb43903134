"""Experiment files for tests, built from Python data: the tiny study's sections, changed where a test
changes them, written as TOML by a small test-only writer (tables, arrays of tables, inline values).

A test that is about a file's text itself (a broken file, a typo, a byte-identical fixture) keeps its
literal TOML; every other test that varies the tiny study says only what it varies::

    write_study(tmp_path, task={"p": 31}, training={"max_steps": 300}, stages=[FREE, clamp_stage(30.0)])
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, Sequence

#: The tiny study (p = 67, d = 16, H = 32, lr 1e-2, half the pairs): every seed memorizes, then groks within a
#: few hundred steps, later the higher the held norm; a whole study trains in seconds.
TINY_SECTIONS: dict[str, dict[str, Any]] = {
    "experiment": {"name": "tiny", "seeds": 2},
    "task": {"name": "modular_addition", "p": 67, "train_fraction": 0.5},
    "architecture": {"name": "mlp", "embed_dim": 16, "hidden_dim": 32},
    "optimizer": {"lr": 1e-2},
    "training": {"max_steps": 1500},
    "evaluation": {"schedule": "every", "every": 20},
}
#: The tiny study's free stage.
FREE = {"name": "free"}


def clamp_stage(critical_norm: Any = "free", rhos: Sequence[float] = (0.9, 1.1), t_start: int = 100,
                name: str = "clamp", controller: str = "clamp") -> dict[str, Any]:
    """The tiny study's clamp stage: Wc from ``critical_norm`` (a stage name or a number), rho swept."""
    return {"name": name, "critical_norm": critical_norm, "controller": {"name": controller, "t_start": t_start},
            "sweep": {"controller.rho": list(rhos)}}


def fork_stage(name: str, at_step: int, **keys: Any) -> dict[str, Any]:
    """A forked stage: its arms start from the trunk's state at ``at_step``; ``keys`` are the stage's
    other keys (``critical_norm``, ``controller``, ``sweep``...)."""
    return {"name": name, "fork": {"at_step": at_step}, **keys}


def experiment_data(stages: Sequence[dict[str, Any]] | None = None, **sections: dict[str, Any] | None) -> dict:
    """The tiny study as data, each named section updated with the given keys (a key given None is
    removed; a section given None is left out; a section the tiny study lacks is added); a stage's key
    given None is left out of it, and no stages (``stages=[]``) write no ``[[stage]]`` table."""
    data: dict[str, Any] = copy.deepcopy(TINY_SECTIONS)
    for section, changes in sections.items():
        if changes is None:
            data.pop(section, None)
            continue
        table = data.setdefault(section, {})
        for key, value in changes.items():
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value
    data["stage"] = [{key: value for key, value in stage.items() if value is not None}
                     for stage in (stages if stages is not None else [FREE, clamp_stage()])]
    if not data["stage"]:
        del data["stage"]
    return data


def experiment_toml(stages: Sequence[dict[str, Any]] | None = None, **sections: dict[str, Any] | None) -> str:
    """The TOML text of :func:`experiment_data`."""
    return toml_text(experiment_data(stages, **sections))


def write_study(directory: Path, stages: Sequence[dict[str, Any]] | None = None, filename: str = "tiny.toml",
                **sections: dict[str, Any] | None) -> Path:
    """Write :func:`experiment_toml` to ``directory / filename`` and return the path."""
    path = Path(directory) / filename
    path.write_text(experiment_toml(stages, **sections))
    return path


BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_key(key: str) -> str:
    return key if BARE_KEY.fullmatch(key) else json.dumps(key)


def toml_value(value: Any) -> str:
    """An inline TOML value: a bool, number, string, array or inline table."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML form for {value!r}")


def toml_text(data: dict[str, Any]) -> str:
    """A TOML document: top-level values first, then one ``[table]`` per dict and one ``[[table]]`` per
    entry of a list of dicts; values inside a table are written inline."""
    def is_tables(value: Any) -> bool:
        return isinstance(value, list) and bool(value) and all(isinstance(item, dict) for item in value)

    lines = [f"{toml_key(k)} = {toml_value(v)}" for k, v in data.items() if not isinstance(v, dict) and not is_tables(v)]
    for key, value in data.items():
        if isinstance(value, dict):
            lines += ["", f"[{toml_key(key)}]", *(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items())]
    for key, value in data.items():
        if is_tables(value):
            for table in value:
                lines += ["", f"[[{toml_key(key)}]]", *(f"{toml_key(k)} = {toml_value(v)}" for k, v in table.items())]
    return "\n".join(lines).lstrip("\n") + "\n"
