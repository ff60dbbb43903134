"""Records read into seed blocks: which runs belong to one seed, and which free runs set a clamp's Wc.

A seed's identity is its base configuration (task, architecture, weight decay: what its
initialization and data split depend on) and its ``seed``; its free run and every clamp arm share it.
A clamp's Wc source is the free cell whose median norm at grok set the clamp's held norm: the runs
named in ``config.critical_norm_source`` (gnorm's own stores), else (imported results) the free runs of
the same base configuration whose median norm at grok equals the recorded ``facts.critical_norm``. A
Wc given as a number in the file, or one no free cell reproduces, is taken as given: it does not move.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from typing import Callable, Sequence

import numpy as np

from gnorm.analysis.records import record_value
from gnorm.analysis.resampling import NO_SOURCE, SeedBlockSample
from gnorm.components import RunRecord
from gnorm.science import critical_norm

#: The x key whose values are relative to Wc (rho: the held norm is rho * Wc).
RELATIVE_X = "controller.rho"


def base_configuration(record: RunRecord) -> str:
    """What the record's initialization and split depend on, as canonical JSON: task, architecture,
    the weight decay (or the stage's ``init_weight_decay``)."""
    config = record.config
    decay = config.get("init_weight_decay", (config.get("optimizer") or {}).get("weight_decay", 0.0))
    return json.dumps({"task": config.get("task"), "architecture": config.get("architecture"),
                       "weight_decay": decay}, sort_keys=True, default=str)


def seed_key(record: RunRecord) -> tuple[str, int]:
    """The seed block a record belongs to: (base configuration, seed)."""
    return base_configuration(record), record.seed


def is_free(record: RunRecord) -> bool:
    return (record.config.get("controller") or {}).get("name") == "free"


class CriticalNormSources:
    """Finds each clamp record's Wc source among ``records`` (see the module docstring)."""

    def __init__(self, records: Sequence[RunRecord]):
        self.by_id = {r.run_id: r for r in records}
        free_cells: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
        for record in records:
            if is_free(record):
                free_cells[(record.stage, json.dumps(record.cell, sort_keys=True, default=str)
                            + base_configuration(record))].append(record)
        self.free_cells = list(free_cells.values())

    def source_of(self, record: RunRecord) -> tuple[str, ...] | None:
        """The run ids (sorted) of the free runs whose median norm at grok is the record's Wc; None when
        its Wc was given (a number in the file) or no free cell among the records reproduces it."""
        wc = record.facts.get("critical_norm")
        if not isinstance(wc, (int, float)):
            return None
        named = record.config.get("critical_norm_source") or []
        if named:
            runs = [self.by_id[i] for i in named if i in self.by_id]
            return tuple(sorted(named)) if len(runs) == len(named) and _reproduces(runs, wc) else None
        base = base_configuration(record)
        for cell in self.free_cells:
            if base_configuration(cell[0]) == base and _reproduces(cell, wc):
                return tuple(sorted(r.run_id for r in cell))
        return None


def _reproduces(runs: Sequence[RunRecord], wc: float) -> bool:
    median = critical_norm([r.norm_at_grok for r in runs if not r.censored])
    return median is not None and math.isclose(median, wc, rel_tol=1e-5)


def seed_block_sample(cells: Sequence[tuple[int, float, Sequence[RunRecord]]], x_key: str,
                      sources: CriticalNormSources, time_of: Callable[[RunRecord], float | None] | None = None,
                      ) -> tuple[SeedBlockSample, list[str]]:
    """The seed-block sample of ``cells`` ((group index, x, the runs at x) each, in fit order) and
    notes on Wc: for ``x_key`` = rho, a cell whose runs share one found Wc source has its x carried
    through the resampled Wc; otherwise (or for any other x) x stays. ``time_of``: a run's time
    (default its T_grok; None = censored)."""
    keys_of: dict[int, tuple[str, int]] = {}

    def key_of(record: RunRecord) -> tuple[str, int]:
        if id(record) not in keys_of:
            keys_of[id(record)] = seed_key(record)
        return keys_of[id(record)]
    seed_index: dict[tuple[str, int], int] = {}
    source_runs: dict[tuple[str, ...], list[RunRecord]] = {}
    cell_source: list[tuple[str, ...] | None] = []
    given: list[float] = []
    mixed = False
    for _, x, runs in cells:
        for record in runs:
            seed_index.setdefault(key_of(record), len(seed_index))
        found = {sources.source_of(r) for r in runs} if x_key == RELATIVE_X else {None}
        if len(found) == 1 and None not in found:
            key = found.pop()
            source_runs[key] = [sources.by_id[i] for i in key]
            cell_source.append(key)
            for record in source_runs[key]:
                seed_index.setdefault(key_of(record), len(seed_index))
            continue
        cell_source.append(None)
        if x_key == RELATIVE_X and any(isinstance(r.facts.get("critical_norm"), (int, float)) for r in runs):
            given.append(x)
            mixed |= len(found) > 1
    repeats = max((count for _, _, runs in cells for count in Counter(map(key_of, runs)).values()), default=1)
    times = np.full((len(cells), len(seed_index), repeats), np.nan)
    for c, (_, _, runs) in enumerate(cells):
        filled: dict[int, int] = defaultdict(int)
        for record in runs:
            j = seed_index[key_of(record)]
            value = record.t_grok if time_of is None else time_of(record)
            if value is not None:
                times[c, j, filled[j]] = value
            filled[j] += 1
    keys = list(source_runs)
    free_norms = np.full((len(keys), len(seed_index)), np.nan)
    for s, key in enumerate(keys):
        for record in source_runs[key]:
            if record.norm_at_grok is not None and not record.censored:
                free_norms[s, seed_index[key_of(record)]] = record.norm_at_grok
    strata = {base: i for i, base in enumerate(dict.fromkeys(k[0] for k in seed_index))}
    stratum = np.array([strata[k[0]] for k in seed_index], int)
    source = np.array([NO_SOURCE if key is None else keys.index(key) for key in cell_source], int)
    notes = [f"Wc taken as given (not resampled) at {x_key} = {', '.join(f'{x:g}' for x in given)}: "
             + ("runs of one cell have different Wc sources" if mixed else "no free runs among the records "
                "reproduce it")] if given else []
    sample = SeedBlockSample(np.array([x for _, x, _ in cells], float), times,
                             np.array([g for g, _, _ in cells], int), stratum, free_norms, source)
    return sample, notes


def runs_by_x(records: Sequence[RunRecord], x_key: str, group_by: Sequence[str],
              ) -> dict[tuple, dict[float, list[RunRecord]]]:
    """groups[key][x] -> the runs at x (rounded to 9 decimals) per group of ``group_by`` values, as
    :func:`gnorm.analysis.records.t_grok_by_x` groups their T_grok."""
    groups: dict[tuple, dict[float, list[RunRecord]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        x = record_value(record, x_key)
        if isinstance(x, (int, float)) and not isinstance(x, bool):
            groups[tuple(record_value(record, k) for k in group_by)][round(float(x), 9)].append(record)
    return {key: dict(cells) for key, cells in groups.items()}
