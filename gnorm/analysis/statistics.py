"""Statistics of cells of seeds: medians that skip what is missing, and bootstrap intervals that
resample seeds with replacement within each cell."""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from gnorm.science import percentile_interval


def median_or_none(values: Sequence[float | None]) -> float | None:
    """The median of the values that are not None (for T_grok: the cell's delay, censored seeds
    skipped); None when there are none."""
    present = [v for v in values if v is not None]
    return float(np.median(present)) if present else None


def nanmedian_over_seeds(values: np.ndarray) -> np.ndarray:
    """``median[i]`` over the seeds (rows) of ``values[:, i]`` that are not NaN; NaN where none is."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a step no seed has reached yet: NaN
        return np.nanmedian(values, axis=0)


def bootstrap_median_interval(values: Sequence[float], resamples: int, level: float,
                              seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the median over ``resamples`` resamples of ``values`` with replacement."""
    values = np.asarray(values, float)
    rng = np.random.default_rng(seed)
    medians = np.median(values[rng.integers(0, values.size, (resamples, values.size))], axis=1)
    return percentile_interval(medians, level)


def bootstrap_cell_medians(cells: Sequence[Sequence[int | None]], resamples: int, seed: int = 0) -> np.ndarray:
    """medians[c, b] = median T_grok over the grokked seeds among n_c seeds drawn with replacement from
    all n_c seeds of cell c (censored ones included); NaN where a draw holds no grokked seed."""
    rng = np.random.default_rng(seed)
    medians = np.empty((len(cells), resamples))
    for c, times in enumerate(cells):
        values = np.array([np.nan if t is None else t for t in times], float)
        draws = values[rng.integers(0, values.size, (resamples, values.size))]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-censored draws: NaN, counted by the caller
            medians[c] = np.nanmedian(draws, axis=1)
    return medians
