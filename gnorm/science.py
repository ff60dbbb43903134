"""The science as small pure functions: norms, schedules, crossing times, fits.

Each docstring states the formula it computes. The tensor functions import torch where they run, so
that the analyses (and ``gnorm plugins``, which imports the analyzers) never wait for it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

import attrs
import numpy as np

if TYPE_CHECKING:
    import torch


def weight_norm(norm_tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-member weight norm of stacked tensors (leading axis: member).

    ||W||_m = sqrt( sum_k ||W_k[m]||_F^2 ), summed over the tensors in the norm (E, W1, W2 for the MLP).
    """
    import torch

    squares = [tensor.detach().pow(2).flatten(1).sum(1) for tensor in norm_tensors]
    return torch.stack(squares).sum(0).sqrt()


def rescale_to_norm(norm_tensors: Sequence[torch.Tensor], target: torch.Tensor | float) -> torch.Tensor:
    """Multiply each member's norm tensors by one scalar so that its weight norm equals ``target``.

    W_k[m] <- W_k[m] * target_m / ||W||_m, in place. Returns the norms before rescaling.
    """
    import torch

    before = weight_norm(norm_tensors)
    scale = torch.as_tensor(target, dtype=before.dtype, device=before.device) / before
    for tensor in norm_tensors:
        tensor.mul_(scale.view(-1, *([1] * (tensor.dim() - 1))))
    return before


def cross_entropy_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy of logits z (N, C) against integer labels y (N): -log softmax(z)_y
    = log sum_c exp(z_c) - z_y."""
    import torch.nn.functional as F

    return F.cross_entropy(logits, labels, reduction="none")


def mse_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example squared error to the one-hot label (paper B), mean over the C classes:
    (1/C) sum_c (z_c - [c = y])^2."""
    import torch.nn.functional as F

    one_hot = F.one_hot(labels, logits.shape[-1]).to(logits.dtype)
    return (logits - one_hot).pow(2).mean(-1)


def stablemax_scores(logits: torch.Tensor) -> torch.Tensor:
    """StableMax's positive scores (Prieto et al. 2025), elementwise: s(x) = x + 1 for x >= 0 and
    1 / (1 - x) for x < 0 (continuous with slope 1 at 0, linear rather than exponential growth)."""
    import torch

    negative = logits.clamp(max=0.0)  # the 1/(1-x) branch never sees x > 0, so its gradient stays finite
    return torch.where(logits >= 0, logits + 1, 1 / (1 - negative))


def stablemax(logits: torch.Tensor) -> torch.Tensor:
    """StableMax probabilities over the last axis: p_i = s(x_i) / sum_j s(x_j)."""
    scores = stablemax_scores(logits)
    return scores / scores.sum(-1, keepdim=True)


def stablemax_cross_entropy_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example StableMax cross-entropy: -log p_y = log sum_j s(z_j) - log s(z_y)."""
    scores = stablemax_scores(logits)
    return scores.sum(-1).log() - scores.gather(-1, labels.unsqueeze(-1)).squeeze(-1).log()


def clip_rows(tensor: torch.Tensor, max_row_norm: float) -> None:
    """Per-row L2 clipping in place; a row is a vector along the last axis (a 1-D tensor per member is
    one row): r <- r * min(1, max_row_norm / ||r||_2)."""
    import torch

    row_norms = tensor.norm(dim=-1, keepdim=True)
    tensor.mul_((max_row_norm / row_norms.clamp_min(torch.finfo(tensor.dtype).tiny)).clamp(max=1.0))


def allocated_shares(group_share: torch.Tensor, partner_share: torch.Tensor,
                     allocation: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Paper B's layer allocation: a group's share s_g = ||W_g||^2 / ||W||^2 of the squared norm moves
    to S_g = clip(s_g (1 + allocation), 0, s_g + s_p), and the partner's share s_p absorbs the change,
    S_p = s_g + s_p - S_g, so the total share is unchanged. Returns (S_g, S_p)."""
    import torch

    pooled = group_share + partner_share
    target = torch.minimum((group_share * (1 + allocation)).clamp_min(0), pooled)
    return target, pooled - target


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
    from gnorm.analysis.statistics import median_or_none  # the analysis layer imports science, not the reverse

    return median_or_none(norms_at_grok)


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


# ---------------------------------------------------------------------------------------------------
# Competing delay laws, compared by AIC on ln T (paper B, Table 1).


def akaike_information(sse: float, n: int, n_parameters: int) -> float:
    """AIC of a least-squares fit: AIC = n ln(SSE / n) + 2k (k fitted parameters; the noise variance is
    left out of k, which shifts every law's AIC equally). SSE = 0 gives -inf."""
    return n * math.log(sse / n) + 2 * n_parameters if sse > 0 else -math.inf


def corrected_akaike_information(sse: float, n: int, n_parameters: int) -> float | None:
    """AICc = AIC + 2k(k + 1) / (n - k - 1), the small-sample correction; None when n <= k + 1."""
    if n <= n_parameters + 1:
        return None
    return akaike_information(sse, n, n_parameters) + 2 * n_parameters * (n_parameters + 1) / (n - n_parameters - 1)


@attrs.frozen
class LawFit:
    """One candidate law fitted by least squares on ln T: its parameters, the SSE of the ln T residuals,
    the number of fitted parameters k and of points n. ``at_search_edge``: the 1-D search for the
    law's position parameter (x0 or x_c) ended at the edge of its range (the law is degenerating)."""

    law: str
    parameters: dict[str, float]
    sse: float
    n_parameters: int
    n: int
    at_search_edge: bool = False

    @property
    def aic(self) -> float:
        return akaike_information(self.sse, self.n, self.n_parameters)

    @property
    def aicc(self) -> float | None:
        return corrected_akaike_information(self.sse, self.n, self.n_parameters)


def _distances(span: float, points: int = 401) -> np.ndarray:
    """Candidate distances of a law's position parameter from the data: span * 10^[-3, 3], log-spaced."""
    return span * np.geomspace(1e-3, 1e3, points)


def _refine(distances: np.ndarray, sse: np.ndarray, evaluate, rounds: int = 3) -> tuple[float, float, bool]:
    """Minimum of sse over a log-spaced grid of distances, refined ``rounds`` times on a finer grid
    between the best point's neighbours. Returns (distance, sse, whether the coarse best was at an edge)."""
    best = int(np.nanargmin(sse))
    at_edge = best in (0, distances.size - 1)
    distance, value = float(distances[best]), float(sse[best])
    for _ in range(rounds):
        low = distances[max(best - 1, 0)]
        high = distances[min(best + 1, distances.size - 1)]
        distances = np.geomspace(low, high, 41)
        sse = np.array([evaluate(d) for d in distances])
        best = int(np.nanargmin(sse))
        if sse[best] < value:
            distance, value = float(distances[best]), float(sse[best])
    return distance, value, at_edge


def exponential_law_fit(x: Sequence[float], t: Sequence[float]) -> LawFit:
    """The exponential law T = exp(a + b x): OLS of ln T on x; SSE of the ln T residuals, k = 2."""
    x, y = np.asarray(x, float), np.log(np.asarray(t, float))
    line = ols_line(x, y)
    sse = float(np.sum((y - line.intercept - line.slope * x) ** 2))
    return LawFit("exponential", {"a": line.intercept, "b": line.slope}, sse, 2, int(x.size))


def power_law_offset_fit(x: Sequence[float], t: Sequence[float]) -> LawFit:
    """The power law with offset T = A (x - x0)^k, x0 < min(x) (reported as ln A, which stays finite
    where A under- or overflows): for each x0 on a log-spaced grid of
    distances min(x) - x0 = range(x) * 10^[-3, 3], OLS of ln T on ln(x - x0) gives ln A and k; the x0
    with the least SSE of ln T residuals is kept (grid refined around it). k = 3 parameters
    (A, x0, exponent). As x0 -> -inf the law tends to the exponential, so a best x0 at the far edge
    means the data do not want a power law."""
    x, y = np.asarray(x, float), np.log(np.asarray(t, float))

    def fit(distance: float) -> tuple[float, float, float]:
        u = np.log(x - (x.min() - distance))
        slope, intercept = np.polyfit(u, y, 1)
        return float(np.sum((y - intercept - slope * u) ** 2)), float(slope), float(intercept)

    distances = _distances(float(np.ptp(x)))
    distance, sse, at_edge = _refine(distances, np.array([fit(d)[0] for d in distances]), lambda d: fit(d)[0])
    _, exponent, log_amplitude = fit(distance)
    return LawFit("power_offset", {"ln_amplitude": log_amplitude, "x0": float(x.min() - distance),
                                   "exponent": exponent}, sse, 3, int(x.size), at_edge)


def _log_residual_fit(u: np.ndarray, t: np.ndarray, iterations: int = 30) -> tuple[float, float, float]:
    """min over (A, B) of sum (ln t - ln(A u + B))^2 with A u + B > 0: start from the relative-error
    linear fit (A u + B - t) / t, then Gauss-Newton steps, halved until the SSE drops. Returns (sse, A, B)."""
    design = np.column_stack([u / t, 1 / t])
    (a, b), *_ = np.linalg.lstsq(design, np.ones_like(t), rcond=None)
    y = np.log(t)

    def sse_of(a: float, b: float) -> float:
        model = a * u + b
        return float(np.sum((y - np.log(model)) ** 2)) if np.all(model > 0) else math.inf

    value = sse_of(a, b)
    if not math.isfinite(value):
        return math.inf, float(a), float(b)
    for _ in range(iterations):
        model = a * u + b
        jacobian = np.column_stack([u / model, 1 / model])
        step, *_ = np.linalg.lstsq(jacobian, y - np.log(model), rcond=None)
        scale = 1.0
        while scale > 1e-6:
            trial = sse_of(a + scale * step[0], b + scale * step[1])
            if trial < value:
                a, b, value = a + scale * step[0], b + scale * step[1], trial
                break
            scale /= 2
        else:
            break
    return value, float(a), float(b)


def saddle_node_fit(x: Sequence[float], t: Sequence[float]) -> LawFit:
    """The saddle-node (bottleneck) law T = A / sqrt(x_c - x) + B, x_c > max(x): the passage time
    through the ghost of a saddle-node bifurcation diverges as (x_c - x)^(-1/2) when the control
    parameter x approaches its critical value x_c from below. For each x_c on a log-spaced grid of
    distances x_c - max(x) = range(x) * 10^[-3, 3], A and B minimize the SSE of ln T residuals
    (Gauss-Newton); the best x_c is kept (grid refined around it). k = 3 parameters (A, B, x_c)."""
    x, t = np.asarray(x, float), np.asarray(t, float)

    def fit(distance: float) -> tuple[float, float, float]:
        return _log_residual_fit(1 / np.sqrt(x.max() + distance - x), t)

    distances = _distances(float(np.ptp(x)))
    distance, sse, at_edge = _refine(distances, np.array([fit(d)[0] for d in distances]), lambda d: fit(d)[0])
    _, amplitude, offset = fit(distance)
    return LawFit("saddle_node", {"amplitude": amplitude, "x_c": float(x.max() + distance), "offset": offset},
                  sse, 3, int(x.size), at_edge)


def compare_laws(x: Sequence[float], t: Sequence[float]) -> dict[str, Any]:
    """Fit the exponential, power-with-offset and saddle-node laws to (x, T) on ln T and compare them by
    AIC: delta_AIC = AIC - min AIC; the winner has delta 0. AICc is reported alongside."""
    fits = [exponential_law_fit(x, t), power_law_offset_fit(x, t), saddle_node_fit(x, t)]
    best = min(fit.aic for fit in fits)
    laws = {fit.law: {"parameters": fit.parameters, "sse": fit.sse, "n_parameters": fit.n_parameters,
                      "aic": fit.aic, "aicc": fit.aicc, "delta_aic": fit.aic - best,
                      "at_search_edge": fit.at_search_edge} for fit in fits}
    winner = min(fits, key=lambda fit: fit.aic).law
    return {"laws": laws, "winner": winner, "n": fits[0].n}


# ---------------------------------------------------------------------------------------------------
# Free contraction of the norm (theory T): T_grok - T_mem = ln(V_mem / V*) / (2 kappa lr lambda).


def contraction_norms(steps: Sequence[int], norms: Sequence[float | None], t_mem: int | None,
                      t_grok: int | None) -> dict[str, float]:
    """From a run's trajectory of ||W||: ``norm_at_memorization`` = ||W|| at the evaluated step T_mem,
    ``peak_norm`` = max ||W|| over evaluated steps <= T_grok. Keys are left out where not defined
    (no T_mem / T_grok, or no norm logged there)."""
    known = {int(s): float(v) for s, v in zip(steps, norms) if v is not None}
    facts: dict[str, float] = {}
    if t_mem is not None and t_mem in known:
        facts["norm_at_memorization"] = known[t_mem]
    if t_grok is not None:
        before = [v for s, v in known.items() if s <= t_grok]
        if before:
            facts["peak_norm"] = max(before)
    return facts


def contraction_time(v_mem: float, v_star: float, lr: float, weight_decay: float, kappa: float = 1.0) -> float:
    """The free-decay prediction T_grok - T_mem = ln(V_mem / V*) / (2 kappa lr lambda), V = ||W||^2."""
    return math.log(v_mem / v_star) / (2 * kappa * lr * weight_decay)


@attrs.frozen
class OriginFit:
    """y = slope * x through the origin (least squares): slope = sum x y / sum x^2.

    ``r_squared`` = 1 - SSE / sum (y - mean y)^2 (centred, so it can be negative and is not inflated
    the way the uncentred 1 - SSE / sum y^2 is); ``correlation``: Pearson r of (x, y)."""

    slope: float
    r_squared: float
    correlation: float | None
    n: int


def origin_fit(x: Sequence[float], y: Sequence[float]) -> OriginFit:
    """Least squares of y on x through the origin (see :class:`OriginFit`)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size < 1 or not np.any(x):
        raise ValueError("a line through the origin needs a nonzero x")
    slope = float(x @ y / (x @ x))
    total = float(np.sum((y - y.mean()) ** 2))
    r_squared = 1.0 - float(np.sum((y - slope * x) ** 2)) / total if total > 0 else math.nan
    correlation = float(np.corrcoef(x, y)[0, 1]) if x.size > 2 and np.ptp(x) > 0 and np.ptp(y) > 0 else None
    return OriginFit(slope, r_squared, correlation, int(x.size))


# ---------------------------------------------------------------------------------------------------
# Logit-scale mediation (paper B).


def matched_delay(target_logit_scale: float, logit_scales: Sequence[float], delays: Sequence[float]) -> float | None:
    """T*(L0): the delay at logit scale L0, by linear interpolation of the arms' delays T_k against their
    logit scales L_k (sorted by L). None when L0 lies outside [min L_k, max L_k]: no extrapolation."""
    scales, times = np.asarray(logit_scales, float), np.asarray(delays, float)
    order = np.argsort(scales)
    scales, times = scales[order], times[order]
    if scales.size < 2 or not scales[0] <= target_logit_scale <= scales[-1]:
        return None
    return float(np.interp(target_logit_scale, scales, times))


def recovery_fraction(raised_delay: float, matched: float, baseline_delay: float) -> float:
    """R = (T_raised - T*) / (T_raised - T_base): the share of the norm-induced delay T_raised - T_base
    that is undone when the logit scale is brought back to the baseline's (T* = delay at matched L)."""
    return (raised_delay - matched) / (raised_delay - baseline_delay)


def r_squared(y: Sequence[float], *predictors: Sequence[float]) -> float:
    """R^2 = 1 - SSE / sum (y - mean y)^2 of the OLS fit y = b0 + sum_j b_j x_j."""
    y = np.asarray(y, float)
    design = np.column_stack([np.ones_like(y), *[np.asarray(x, float) for x in predictors]])
    coefficients = np.linalg.lstsq(design, y, rcond=None)[0]
    residual = y - design @ coefficients
    return float(1.0 - residual @ residual / np.sum((y - y.mean()) ** 2))
