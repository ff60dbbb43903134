"""Record queries: a run's value of a key, which runs an analysis reads, how runs group into cells,
and the labels that name cells and groups in tables and figures.

Keys are dotted config keys (``controller.rho``, ``task.p``), ``facts.<name>`` for what a controller
or observable recorded, or ``held_norm``: the norm a clamp holds, rho * Wc.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Any, Sequence

from gnorm.components import RunRecord
from gnorm.runmodel import dotted_value
from gnorm.science import held_norm


def record_value(record: RunRecord, key: str) -> Any:
    """A run's value of ``key``: ``facts.<name>``, ``held_norm`` (the recorded ``facts.held_norm``, else
    ``controller.rho * critical_norm``) or a dotted config key."""
    if key.startswith("facts."):
        return record.facts.get(key[len("facts."):])
    if key == "held_norm":
        if record.facts.get("held_norm") is not None:
            return record.facts["held_norm"]
        rho, wc = dotted_value(record.config, "controller.rho"), record.facts.get("critical_norm")
        wc = wc if wc is not None else record.config.get("critical_norm")
        return held_norm(rho, wc) if isinstance(rho, (int, float)) and isinstance(wc, (int, float)) else None
    return dotted_value(record.config, key)


def numeric(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def select(records: Sequence[RunRecord], stages: Sequence[str], within: dict[str, list[float]]) -> list[RunRecord]:
    """The records in ``stages`` (all if empty) whose value of every key in ``within`` lies in its
    closed interval [low, high] (a relative tolerance of 1e-9 absorbs float32 rounding)."""
    kept = []
    for record in records:
        if stages and record.stage not in stages:
            continue
        inside = True
        for key, (low, high) in within.items():
            value = record_value(record, key)
            slack = 1e-9 * max(abs(low), abs(high), 1.0)
            if not isinstance(value, (int, float)) or not low - slack <= value <= high + slack:
                inside = False
                break
        if inside:
            kept.append(record)
    return kept


def value_order(values: Sequence[Any]) -> tuple:
    """A sort key: numbers in numeric order, before anything else in text order."""
    return tuple((0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)) for v in values)


def cell_label(cell: dict[str, Any]) -> str:
    """``rho=1.1, p=97`` from ``{"controller.rho": 1.1, "task.p": 97}``; ``(all)`` for an unswept stage.
    Keys are shortened to their last part unless two would then read the same."""
    if not cell:
        return "(all)"
    short = [key.split(".")[-1] for key in cell]
    names = short if len(set(short)) == len(short) else list(cell)
    return ", ".join(f"{name}={value}" for name, value in zip(names, cell.values()))


def group_label(keys: Sequence[str], values: Sequence[Any]) -> str:
    """``p=59, lr=0.001`` from the keys a group is split by and its values; ``(all)`` for no keys."""
    return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in zip(keys, values)) or "(all)"


def series_labels(settings: Sequence[dict[str, Any]]) -> list[str]:
    """Labels naming only the settings that differ between ``settings`` (``train_fraction=0.3``), with
    numbers as numbers so that they sort; ``(all)`` when nothing differs."""
    keys = [k for k in dict.fromkeys(k for s in settings for k in s)
            if len({json.dumps(s.get(k)) for s in settings}) > 1]
    return [group_label(keys, [s.get(k) for k in keys]) for s in settings]


def varying_keys(records: Sequence[RunRecord], exclude: Sequence[str] = ()) -> list[str]:
    """Cell keys whose values differ between ``records`` (in first-seen order), with ``stage`` first
    when the records span several stages."""
    keys = [k for k in dict.fromkeys(k for r in records for k in r.cell) if k not in exclude]
    keys = [k for k in keys if len({json.dumps(record_value(r, k)) for r in records}) > 1]
    return (["stage"] if len({r.stage for r in records}) > 1 else []) + keys


def records_by_cell(records: Sequence[RunRecord]) -> dict[tuple[str, str], list[RunRecord]]:
    """The records of each cell, keyed by (stage, cell label), in first-seen order."""
    cells: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    for record in records:
        cells[(record.stage, cell_label(record.cell))].append(record)
    return dict(cells)


def group_records(records: Sequence[RunRecord], keys: Sequence[str]) -> dict[tuple, list[RunRecord]]:
    """The records of each group: keyed by the tuple of their values of ``keys``, in first-seen order."""
    groups: dict[tuple, list[RunRecord]] = defaultdict(list)
    for record in records:
        groups[tuple(record_value(record, k) for k in keys)].append(record)
    return dict(groups)


def t_grok_by_x(records: Sequence[RunRecord], x_key: str, group_by: Sequence[str],
                ) -> tuple[dict[tuple, dict[float, list[int | None]]], dict[tuple, dict[float, set[str]]]]:
    """groups[key][x] -> the T_grok of every seed (None = censored) of the runs whose value of
    ``x_key`` is a number (rounded to 9 decimals), per group of ``group_by`` values; and which
    distinct cells (``stage: label``) each (group, x) pooled."""
    groups: dict[tuple, dict[float, list[int | None]]] = defaultdict(lambda: defaultdict(list))
    pooled: dict[tuple, dict[float, set[str]]] = defaultdict(lambda: defaultdict(set))
    for record in records:
        x = record_value(record, x_key)
        if not isinstance(x, (int, float)):
            continue
        key = tuple(record_value(record, k) for k in group_by)
        x = round(float(x), 9)
        groups[key][x].append(record.t_grok)
        pooled[key][x].add(f"{record.stage}: {cell_label(record.cell)}")
    return groups, pooled


def pooling_notes(label: str, x_key: str, pooled: dict[float, set[str]]) -> list[str]:
    """A note for each x of a group at which :func:`t_grok_by_x` pooled several distinct cells."""
    return [f"{label}: {x_key}={x} pools {len(cells)} cells ({'; '.join(sorted(cells))}); add a group_by key"
            for x, cells in pooled.items() if len(cells) > 1]
