"""Seed-block bootstrap of the delay law: resample whole seeds, not seeds within cells.

A *seed* (a block) is one initialization and data split: its free run and every clamp arm trained from
it (the same seed runs at every rho, paper A's matched counterfactual). A seed-block replicate draws,
within each stratum (the seeds of one base configuration: task, architecture, weight decay), as many
seeds as the stratum has, with replacement, and uses that one draw in every cell and in the free runs:

* cell medians: M*_c = median over the drawn seeds' grokked T_grok in cell c (censored seeds drawn
  count, but only grokked ones enter the median, as for the cell bootstrap);
* the critical norm: Wc*_s = median over the drawn seeds' grokked free runs of ||W|| at T_grok, for
  each Wc source s (the free cell whose median set a clamp's held norm);
* x carried through Wc: a clamp held h_c = rho_c * Wc_s; re-expressed relative to the resampled Wc,
  its rho is rho*_c = h_c / Wc*_s = rho_c * Wc_s / Wc*_s. For x = rho (a law in the relative norm)
  the x values move with Wc*; for x = held_norm they are the norms actually held and do not move
  (resampling Wc does not change what a stored run was trained at);
* the slope: alpha* = sum_c (x*_c - xbar*_g)(y*_c - ybar*_g) / sum_c (x*_c - xbar*_g)^2 with
  y*_c = ln M*_c and means within each group g (one group: the OLS slope; several: the shared slope
  with one intercept per group).

The interval is the *expanded* percentile interval of alpha* over the replicates in which every cell
drew a grokked seed (the others are discarded and counted): a bootstrap over n independent units
estimates a statistic's variance (n - 1) / n too small, which matters at the few seeds of a study
(n = 6: 9% too narrow in sd), so the percentiles are read at the level whose normal quantile is
sqrt(n / (n - 1)) times the requested one: level' = 2 Phi(z_((1 + level) / 2) sqrt(n / (n - 1))) - 1,
with n the mean number of seeds per stratum (Hesterberg's expansion without its t correction). These are pure functions of arrays; reading
records into them is :mod:`gnorm.analysis.seed_blocks`.
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Sequence

import attrs
import numpy as np

from gnorm.science import percentile_interval

#: A cell whose x does not move with a resampled Wc (x is not rho, or its Wc was given, not estimated).
NO_SOURCE = -1


def median_over_present(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """The median over the entries of ``values`` along ``axis`` that are not NaN (for a cell: the
    median T_grok over its grokked seeds), NaN where there are none. With k present values sorted
    v_(0) <= ... <= v_(k-1): median = (v_((k-1)//2) + v_(k//2)) / 2."""
    ordered = np.sort(np.moveaxis(np.asarray(values, float), axis, -1), axis=-1)  # NaN sorts last
    count = np.sum(~np.isnan(ordered), axis=-1)
    low = np.take_along_axis(ordered, np.maximum((count - 1) // 2, 0)[..., None], axis=-1)[..., 0]
    high = np.take_along_axis(ordered, np.maximum(count // 2, 0)[..., None], axis=-1)[..., 0]
    return np.where(count > 0, (low + high) / 2.0, np.nan)


@attrs.frozen(eq=False)
class SeedBlockSample:
    """What a seed-block interval of the delay law reads, as arrays.

    ``x[c]``: cell c's x (rho, or the held norm, or any key). ``times[c, j]`` (or ``times[c, j, k]``
    when a cell pools several runs of one seed): seed j's T_grok in cell c, NaN where it was censored
    or did not run. ``group[c]``: the group of cell c (one intercept each; all 0 for one fit).
    ``stratum[j]``: seed j's stratum (seeds of one base configuration; resampled separately).
    ``free_norms[s, j]``: ||W|| at T_grok of seed j's free run in Wc source s (NaN: censored or not in
    that source). ``source[c]``: the Wc source whose median set cell c's held norm and against which
    its x is relative, or ``NO_SOURCE`` (x does not move)."""

    x: np.ndarray
    times: np.ndarray
    group: np.ndarray
    stratum: np.ndarray
    free_norms: np.ndarray
    source: np.ndarray

    @classmethod
    def of(cls, x: Sequence[float], times: np.ndarray, group: Sequence[int] | None = None,
           stratum: Sequence[int] | None = None, free_norms: np.ndarray | None = None,
           source: Sequence[int] | None = None) -> "SeedBlockSample":
        """A sample from plain arrays; left out: one group, one stratum, no Wc source (x fixed)."""
        times = np.asarray(times, float)
        cells, seeds = times.shape[:2]
        return cls(np.asarray(x, float), times,
                   np.zeros(cells, int) if group is None else np.asarray(group, int),
                   np.zeros(seeds, int) if stratum is None else np.asarray(stratum, int),
                   np.empty((0, seeds)) if free_norms is None else np.asarray(free_norms, float),
                   np.full(cells, NO_SOURCE) if source is None else np.asarray(source, int))


def seed_block_draws(stratum: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """draws[b, j]: the seed that stands in column j of replicate b, drawn with replacement from the
    seeds of j's stratum (so each stratum keeps its size, and one draw serves every cell)."""
    stratum = np.asarray(stratum)
    draws = np.empty((resamples, stratum.size), int)
    for value in np.unique(stratum):
        members = np.flatnonzero(stratum == value)
        draws[:, members] = members[rng.integers(0, members.size, (resamples, members.size))]
    return draws


def resampled_cell_medians(times: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """medians[c, b] = median over present values of times[c, draws[b]] (all of a drawn seed's runs in
    the cell); NaN where the draw holds no grokked seed of the cell."""
    times = np.asarray(times, float)
    if times.ndim == 2:
        times = times[:, :, None]
    gathered = times[:, draws, :]  # [C, B, N, K]
    return median_over_present(gathered.reshape(*gathered.shape[:2], -1))


def carried_x(sample: SeedBlockSample, draws: np.ndarray) -> np.ndarray:
    """x*[c, b] = x_c * Wc_s / Wc*_s(b) for cells with a Wc source s (Wc_s the median over all seeds'
    grokked free runs, Wc*_s over the drawn ones), x_c for the others."""
    x = np.repeat(sample.x[:, None], draws.shape[0], axis=1)
    for s in np.unique(sample.source[sample.source != NO_SOURCE]):
        original = median_over_present(sample.free_norms[s])
        resampled = median_over_present(sample.free_norms[s][draws])
        rows = sample.source == s
        x[rows] = sample.x[rows, None] * (original / resampled)[None, :]
    return x


def grouped_slopes(x: np.ndarray, y: np.ndarray, group: np.ndarray) -> np.ndarray:
    """slope[b] = sum_c (x[c,b] - xbar_g)(y[c,b] - ybar_g) / sum_c (x[c,b] - xbar_g)^2, the means taken
    within each cell's group g: the OLS slope for one group, the shared slope with per-group intercepts
    for several."""
    x_centred, y_centred = np.empty_like(x), np.empty_like(y)
    for g in np.unique(group):
        rows = group == g
        x_centred[rows] = x[rows] - x[rows].mean(axis=0)
        y_centred[rows] = y[rows] - y[rows].mean(axis=0)
    return np.sum(x_centred * y_centred, axis=0) / np.sum(x_centred**2, axis=0)


@attrs.frozen(eq=False)
class SeedBlockReplicates:
    """The usable replicates: ``slopes[b]``, each group's centroid (``x_mean[g, b]``, ``y_mean[g, b]``,
    so that the line is ln T = y_mean + slope * (x - x_mean)), and how many were discarded."""

    slopes: np.ndarray
    x_mean: np.ndarray
    y_mean: np.ndarray
    discarded: int


def seed_block_replicates(sample: SeedBlockSample, resamples: int, seed: int = 0) -> SeedBlockReplicates:
    """``resamples`` seed-block replicates of the delay-law slope (see the module docstring); those
    in which some cell drew no grokked seed are discarded."""
    rng = np.random.default_rng(seed)
    draws = seed_block_draws(sample.stratum, resamples, rng)
    medians = resampled_cell_medians(sample.times, draws)
    x = carried_x(sample, draws)
    usable = ~np.isnan(medians).any(axis=0) & ~np.isnan(x).any(axis=0)
    y, x = np.log(medians[:, usable]), x[:, usable]
    groups = np.unique(sample.group)
    x_mean = np.array([x[sample.group == g].mean(axis=0) for g in groups]).reshape(len(groups), -1)
    y_mean = np.array([y[sample.group == g].mean(axis=0) for g in groups]).reshape(len(groups), -1)
    return SeedBlockReplicates(grouped_slopes(x, y, sample.group), x_mean, y_mean, int((~usable).sum()))


def expanded_level(level: float, seeds: float) -> float:
    """level' = 2 Phi(z sqrt(n / (n - 1))) - 1 with z = Phi^-1((1 + level) / 2) and n = ``seeds``: the
    percentile level that undoes the bootstrap's (n - 1) / n shrinkage of the variance; ``level``
    itself when n <= 1."""
    if seeds <= 1:
        return level
    normal = NormalDist()
    return 2.0 * normal.cdf(normal.inv_cdf((1.0 + level) / 2.0) * (seeds / (seeds - 1.0)) ** 0.5) - 1.0


def seeds_per_stratum(sample: SeedBlockSample) -> float:
    """The mean number of seeds per stratum of ``sample`` (the n of :func:`expanded_level`)."""
    return float(np.mean(np.unique(sample.stratum, return_counts=True)[1])) if sample.stratum.size else 0.0


def seed_block_interval(sample: SeedBlockSample, resamples: int = 2000, level: float = 0.95, seed: int = 0,
                        expand: bool = True) -> tuple[float | None, float | None]:
    """The seed-block interval (low, high) of the delay law's alpha: the percentile interval of the
    replicates' slopes at :func:`expanded_level` (at ``level`` itself when not ``expand``); see the
    module docstring. (None, None) when no replicate is usable."""
    slopes = seed_block_replicates(sample, resamples, seed).slopes
    return slope_interval(slopes, expanded_level(level, seeds_per_stratum(sample)) if expand else level)


def slope_interval(slopes: np.ndarray, level: float) -> tuple[float | None, float | None]:
    """The central ``level`` percentile interval of the finite ``slopes``; (None, None) if none."""
    slopes = slopes[np.isfinite(slopes)]
    return percentile_interval(slopes, level) if slopes.size else (None, None)


def resampled_log_ratio(sample: SeedBlockSample, fast: int, slow: int, resamples: int, seed: int = 0,
                        ) -> tuple[np.ndarray, int]:
    """Seed-block replicates of ln(M*_slow / M*_fast), the log lever between two cells; when the cells'
    x is relative to a resampled Wc it is carried to the nominal x by the exponential law:
    ln ratio * (x_slow - x_fast) / (x*_slow - x*_fast). Returns the usable replicates and the count
    discarded."""
    rng = np.random.default_rng(seed)
    draws = seed_block_draws(sample.stratum, resamples, rng)
    medians = resampled_cell_medians(sample.times, draws)
    log_ratio = np.log(medians[slow] / medians[fast])
    if sample.source[slow] != NO_SOURCE or sample.source[fast] != NO_SOURCE:
        x = carried_x(sample, draws)
        log_ratio = log_ratio * (sample.x[slow] - sample.x[fast]) / (x[slow] - x[fast])
    usable = np.isfinite(log_ratio)
    return log_ratio[usable], int((~usable).sum())
