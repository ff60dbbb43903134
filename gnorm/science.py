"""The science as small pure functions: norms, schedules, crossing times, seeds, fits.

Each docstring states the formula it computes.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Sequence

import attrs
import numpy as np
import torch


def weight_norm(norm_tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-member weight norm of stacked tensors (leading axis: member).

    ||W||_m = sqrt( sum_k ||W_k[m]||_F^2 ), summed over the tensors in the norm (E, W1, W2 for the MLP).
    """
    squares = [tensor.detach().pow(2).flatten(1).sum(1) for tensor in norm_tensors]
    return torch.stack(squares).sum(0).sqrt()


def rescale_to_norm(norm_tensors: Sequence[torch.Tensor], target: torch.Tensor | float) -> torch.Tensor:
    """Multiply each member's norm tensors by one scalar so that its weight norm equals ``target``.

    W_k[m] <- W_k[m] * target_m / ||W||_m, in place. Returns the norms before rescaling.
    """
    before = weight_norm(norm_tensors)
    scale = torch.as_tensor(target, dtype=before.dtype, device=before.device) / before
    for tensor in norm_tensors:
        tensor.mul_(scale.view(-1, *([1] * (tensor.dim() - 1))))
    return before


def held_norm(rho: float, critical_norm: float) -> float:
    """The norm a clamp holds: rho * Wc."""
    return rho * critical_norm


def geometric_schedule(max_steps: int, points: int) -> np.ndarray:
    """Evaluation steps on a geometric grid: round(max_steps^(i/(points-1))), i = 0..points-1,
    deduplicated (so early steps are every step and late ones ~ ln(max_steps)/points apart), always
    ending at ``max_steps``."""
    grid = np.unique(np.round(np.geomspace(1, max_steps, points)).astype(np.int64))
    return np.union1d(grid, [max_steps])


def every_schedule(max_steps: int, every: int) -> np.ndarray:
    """Evaluation steps every ``every`` steps: every, 2*every, ..., plus ``max_steps``."""
    return np.union1d(np.arange(every, max_steps + 1, every, dtype=np.int64), [max_steps])


def first_crossing(steps: np.ndarray, values: np.ndarray, threshold: float) -> int | None:
    """The first evaluated step whose value is >= threshold, or None if none is."""
    hits = np.flatnonzero(np.asarray(values) >= threshold)
    return int(steps[hits[0]]) if hits.size else None


def critical_norm(norms_at_grok: Sequence[float | None]) -> float | None:
    """Wc = median over grokked seeds of ||W|| at T_grok (None entries are censored seeds).

    Returns None when no seed grokked.
    """
    grokked = [value for value in norms_at_grok if value is not None]
    return float(np.median(grokked)) if grokked else None


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from the canonical JSON of ``parts``: int(sha256(json)[:16], 16) >> 1.

    Used so that a run's initialization depends only on the base configuration it is given, never on
    the intervention arm.
    """
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return int(hashlib.sha256(text.encode()).hexdigest()[:16], 16) >> 1


@attrs.frozen
class LineFit:
    """y = intercept + slope * x by ordinary least squares."""

    slope: float
    intercept: float
    r_squared: float
    n: int


def ols_line(x: Sequence[float], y: Sequence[float]) -> LineFit:
    """OLS of y on x: slope = cov(x, y) / var(x), intercept = mean(y) - slope * mean(x),
    R^2 = 1 - SSE / SST."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size < 2 or np.ptp(x) == 0:
        raise ValueError("a line needs at least two distinct x values")
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (intercept + slope * x)
    total = np.sum((y - y.mean()) ** 2)
    r_squared = 1.0 - np.sum(residual**2) / total if total > 0 else 1.0
    return LineFit(float(slope), float(intercept), float(r_squared), int(x.size))


def delay_law_fit(rho: Sequence[float], median_t_grok: Sequence[float]) -> LineFit:
    """The delay law T_grok ~ exp(alpha * rho): OLS of ln(median T_grok) on rho; slope = alpha."""
    return ols_line(rho, np.log(np.asarray(median_t_grok, float)))


def percentile_interval(samples: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap samples."""
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(np.asarray(samples, float), [tail, 100 - tail])
    return float(low), float(high)


def coefficient_of_variation(values: Sequence[float]) -> float:
    """CV = std / mean (population std)."""
    values = np.asarray(values, float)
    return float(values.std() / values.mean()) if values.size and values.mean() else math.nan


def ols_slopes(x: Sequence[float], ys: np.ndarray) -> np.ndarray:
    """Slopes of many OLS lines at once: for each column b of ``ys`` (shape len(x) x B),
    slope_b = sum_i (x_i - mean x)(y_ib - mean y_b) / sum_i (x_i - mean x)^2."""
    x = np.asarray(x, float)
    centred = x - x.mean()
    ys = np.asarray(ys, float)
    return centred @ (ys - ys.mean(axis=0)) / np.sum(centred**2)


@attrs.frozen
class SharedSlopeFit:
    """y = intercept[g] + slope * x: one slope shared by all groups, one intercept per group (OLS).

    ``r_squared`` = 1 - SSE / sum (y - mean y)^2 (total sum of squares about the grand mean);
    ``within_r_squared`` = 1 - SSE / sum (y - mean of y in its group)^2 (what the slope alone explains).
    """

    slope: float
    groups: list[Any]
    intercepts: list[float]
    r_squared: float
    within_r_squared: float
    sse: float
    n: int


def shared_slope_design(x: Sequence[float], groups: Sequence[Any]) -> tuple[np.ndarray, list[Any]]:
    """The design matrix [x, 1{g = g_1}, ..., 1{g = g_G}] of a shared-slope fit, and the group order."""
    order = list(dict.fromkeys(groups))
    columns = [np.asarray(x, float)] + [np.array([g == group for g in groups], float) for group in order]
    return np.column_stack(columns), order


def shared_slope_fit(x: Sequence[float], y: Sequence[float], groups: Sequence[Any]) -> SharedSlopeFit:
    """OLS of y = intercept[g] + slope * x (see :class:`SharedSlopeFit`)."""
    design, order = shared_slope_design(x, groups)
    y = np.asarray(y, float)
    coefficients, *_ = np.linalg.lstsq(design, y, rcond=None)
    sse = float(np.sum((y - design @ coefficients) ** 2))
    total = float(np.sum((y - y.mean()) ** 2))
    group_means = design[:, 1:] @ (design[:, 1:].T @ y / design[:, 1:].sum(axis=0))
    within = float(np.sum((y - group_means) ** 2))
    return SharedSlopeFit(slope=float(coefficients[0]), groups=order, intercepts=[float(c) for c in coefficients[1:]],
                          r_squared=1.0 - sse / total if total > 0 else 1.0,
                          within_r_squared=1.0 - sse / within if within > 0 else 1.0, sse=sse, n=int(y.size))
