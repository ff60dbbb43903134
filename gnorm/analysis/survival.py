"""Accelerated failure time (AFT) models of T_grok with right censoring: the likelihood, its maximum,
Wald and profile-likelihood intervals of the delay exponent, and the fitted median.

The model, for run j of seed i in group g(j) at x_j (rho, or the held norm)::

    ln T_j = intercept[g(j)] + alpha * x_j + b_i + sigma * eps_j

with eps standard normal (``lognormal``: T is log-normal) or standard minimum extreme value
(``weibull``: density exp(e - exp(e)), T is Weibull with shape 1 / sigma), and b_i = 0 (no seed
effect) or b_i ~ N(0, tau^2), one per seed, shared by that seed's runs across x (the matched design:
a seed's initialization and split are the same at every rho). A run that grokked at step t
contributes its density, one that did not grok by its censoring time c (its budget) its survival::

    grokked:   ln f(t) = ln f_eps(z) - ln sigma - ln t,   z = (ln t - mu) / sigma
    censored:  ln S(c) = ln S_eps(z),                      z = (ln c - mu) / sigma
    lognormal: ln f_eps(z) = -z^2 / 2 - ln(2 pi) / 2,   ln S_eps(z) = ln Phi(-z)
    weibull:   ln f_eps(z) = z - exp(z),                ln S_eps(z) = -exp(z)

With a seed effect the seed's runs are integrated over b by adaptive Gauss-Hermite quadrature with
nodes u_k and weights w_k (of the weight exp(-u^2)), centred on the mode m_i of the integrand and
scaled by its curvature r_i (see :func:`aft_log_likelihood`)::

    L_i = integral prod_j f_j(b) N(b; 0, tau^2) db
       ~= sqrt(2) r_i sum_k w_k exp(u_k^2) prod_j f_j(b_ik) N(b_ik; 0, tau^2),  b_ik = m_i + sqrt(2) r_i u_k

With ``scale_slope`` the scale moves with x (seeds spread less where grokking is slower, as in paper
A's dense sweep): ln sigma_j = ln sigma + gamma * x_j, every sigma above then being run j's sigma_j.

The parameters are theta = (intercept[0..G-1], alpha, ln sigma[, ln tau][, gamma]); the log-likelihood and
its gradient are exact (in float64), the observed information is the central finite difference of
the gradient, and the maximum is found by damped Newton steps with a backtracking line search.
Everything here is numpy: no optimizer library is needed for a handful of parameters, and the
likelihood is checked against lifelines' ``LogNormalAFTFitter`` / ``WeibullAFTFitter`` in the tests.
"""

from __future__ import annotations

import functools
import math
from statistics import NormalDist
from typing import Callable, Sequence

import attrs
import numpy as np

DISTRIBUTIONS = ("lognormal", "weibull")
#: ln(ln 2): the median of the standard minimum extreme value distribution.
LOG_LOG_2 = math.log(math.log(2.0))
_ERFC = np.frompyfunc(math.erfc, 1, 1)


# ---------------------------------------------------------------------------------------------------
# The standard error distributions.


def log_normal_cdf(x: np.ndarray) -> np.ndarray:
    """ln Phi(x), Phi the standard normal CDF: ln(erfc(-x / sqrt 2) / 2) for x <= 0,
    log1p(-erfc(x / sqrt 2) / 2) for x > 0, and for x < -20 the asymptotic series
    -x^2/2 - ln(-x) - ln(2 pi)/2 + ln(1 - 1/x^2 + 3/x^4 - 15/x^6 + 105/x^8)."""
    x = np.asarray(x, float)
    out = np.empty_like(x)
    far, low, high = x < -20.0, (x >= -20.0) & (x <= 0.0), x > 0.0
    if far.any():
        v = x[far]
        inv = 1.0 / v**2
        out[far] = (-0.5 * v**2 - np.log(-v) - 0.5 * math.log(2 * math.pi)
                    + np.log1p(-inv + 3 * inv**2 - 15 * inv**3 + 105 * inv**4))
    if low.any():
        out[low] = np.log(0.5 * _ERFC(-x[low] / math.sqrt(2.0)).astype(float))
    if high.any():
        out[high] = np.log1p(-0.5 * _ERFC(x[high] / math.sqrt(2.0)).astype(float))
    return out


def error_log_terms(z: np.ndarray, grokked: np.ndarray, distribution: str,
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per observation l(z) = ln f_eps(z) (grokked) or ln S_eps(z) (censored), and its first and
    second derivatives in z, with M(z) = phi(z) / Phi(-z) (the inverse Mills ratio)::

        lognormal grokked:  l = -z^2/2 - ln(2 pi)/2,  l' = -z,       l'' = -1
        lognormal censored: l = ln Phi(-z),            l' = -M(z),    l'' = -M(z) (M(z) - z)
        weibull grokked:    l = z - e^z,               l' = 1 - e^z,  l'' = -e^z
        weibull censored:   l = -e^z,                  l' = -e^z,     l'' = -e^z
    """
    censored = np.broadcast_to(~np.asarray(grokked, bool), z.shape)
    if distribution == "lognormal":
        log_density = -0.5 * z**2 - 0.5 * math.log(2 * math.pi)
        log_survival = np.zeros(z.shape)
        log_survival[censored] = log_normal_cdf(-z[censored])
        mills = np.where(censored, np.exp(log_density - log_survival), 0.0)
        return (np.where(censored, log_survival, log_density), np.where(censored, -mills, -z),
                np.where(censored, -mills * (mills - z), -1.0))
    if distribution == "weibull":
        ez = np.exp(np.minimum(z, 700.0))
        return np.where(censored, -ez, z - ez), np.where(censored, -ez, 1.0 - ez), -ez
    raise ValueError(f"unknown distribution {distribution!r}; known: {', '.join(DISTRIBUTIONS)}")


def median_offset(distribution: str) -> float:
    """The median of eps: 0 (lognormal) or ln(ln 2) (weibull), so median T = exp(mu + sigma * offset)."""
    return 0.0 if distribution == "lognormal" else LOG_LOG_2


def aft_median(intercept: float, alpha: float, sigma: float, x: np.ndarray, distribution: str) -> np.ndarray:
    """The fitted median T_grok of a seed with no seed effect (b = 0):
    exp(intercept + alpha * x + sigma * median(eps)). For the log-normal model this is also the
    median over seeds with a seed effect (ln T is then normal with mean mu)."""
    return np.exp(intercept + alpha * np.asarray(x, float) + sigma * median_offset(distribution))


# ---------------------------------------------------------------------------------------------------
# Data and likelihood.


@attrs.frozen(eq=False)
class SurvivalData:
    """One observation per run: ``log_time`` = ln T_grok (grokked) or ln(censoring time) (censored),
    ``grokked``, ``x``, ``group`` (0..G-1, one intercept each) and ``seed`` (0..S-1, the cluster of
    the seed effect)."""

    log_time: np.ndarray
    grokked: np.ndarray
    x: np.ndarray
    group: np.ndarray
    seed: np.ndarray

    @classmethod
    def build(cls, times: Sequence[float], grokked: Sequence[bool], x: Sequence[float],
              group: Sequence[int] | None = None, seed: Sequence[int] | None = None) -> "SurvivalData":
        """From times (T_grok, or the censoring time where not ``grokked``); groups and seeds are
        renumbered 0.. in order of first appearance (all 0 when not given)."""
        times = np.asarray(times, float)
        if times.size == 0 or np.any(~np.isfinite(times)) or np.any(times <= 0):
            raise ValueError("survival times must be positive and finite")
        n = times.size
        return cls(np.log(times), np.asarray(grokked, bool), np.asarray(x, float),
                   _renumber(group if group is not None else [0] * n),
                   _renumber(seed if seed is not None else list(range(n))))

    @property
    def groups(self) -> int:
        return int(self.group.max()) + 1

    @property
    def seeds(self) -> int:
        return int(self.seed.max()) + 1


def _renumber(labels: Sequence) -> np.ndarray:
    order = {label: i for i, label in enumerate(dict.fromkeys(labels))}
    return np.array([order[label] for label in labels], int)


@attrs.frozen
class AftModel:
    """Which AFT model: the error ``distribution``, whether a normal ``seed_effect`` is integrated out,
    the Gauss-Hermite ``quadrature_points`` for it, and whether ln sigma is linear in x
    (``scale_slope``: ln sigma_j = ln sigma + gamma * x_j)."""

    distribution: str = "lognormal"
    seed_effect: bool = False
    quadrature_points: int = 24
    scale_slope: bool = False

    def parameter_count(self, groups: int) -> int:
        """G intercepts, alpha, ln sigma, ln tau with a seed effect, gamma with a scale slope."""
        return groups + 2 + int(self.seed_effect) + int(self.scale_slope)


def aft_log_likelihood(theta: np.ndarray, data: SurvivalData, model: AftModel) -> tuple[float, np.ndarray]:
    """The log-likelihood (see the module docstring) at theta = (intercepts, alpha, ln sigma[, ln tau]
    [, gamma]) and its gradient (with a scale slope, sigma is each run's sigma_j and
    dl/d gamma = sum_j x_j dl/d ln sigma_j).

    Without a seed effect: l = sum_j [l_eps(z_j) - delta_j (ln sigma + ln t_j)], with
    dl/dmu_j = -l_eps'(z_j) / sigma and dl/d ln sigma = sum_j (-z_j l_eps'(z_j) - delta_j).
    With one, each seed's integral is taken by adaptive Gauss-Hermite quadrature: centred on the mode
    m_i of h_i(b) = sum_{j in i} l_j(b) + ln N(b; 0, tau^2) and scaled by r_i = (-h_i''(m_i))^(-1/2),
    b_ik = m_i + sqrt(2) r_i u_k and
    ln L_i = ln(sqrt(2) r_i) + ln sum_k w_k exp(u_k^2 + h_i(b_ik)); each gradient is the
    posterior-weighted sum over the nodes (pi_ik proportional to w_k exp(u_k^2 + h_i(b_ik))) at fixed
    nodes, with d ln N(b; 0, tau^2) / d ln tau = b^2 / tau^2 - 1.
    """
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return _log_likelihood(theta, data, model)


def _log_likelihood(theta: np.ndarray, data: SurvivalData, model: AftModel) -> tuple[float, np.ndarray]:
    groups = data.groups
    intercepts, alpha = theta[:groups], theta[groups]
    log_sigma = theta[groups + 1] + (theta[-1] * data.x if model.scale_slope else np.zeros(data.x.size))
    sigma = np.exp(log_sigma)
    mu = intercepts[data.group] + alpha * data.x
    jacobian = data.grokked * (log_sigma + data.log_time)
    if not model.seed_effect:
        z = (data.log_time - mu) / sigma
        terms, slope, _ = error_log_terms(z, data.grokked, model.distribution)
        d_mu = -slope / sigma
        d_log_sigma = -z * slope - data.grokked
        gradient = np.concatenate([np.bincount(data.group, d_mu, groups), [np.dot(d_mu, data.x)],
                                   [np.sum(d_log_sigma)]]
                                  + ([[np.dot(d_log_sigma, data.x)]] if model.scale_slope else []))
        return float(np.sum(terms - jacobian)), gradient
    tau = math.exp(theta[groups + 2])
    centre, scale = seed_effect_modes(data, mu, sigma, tau, model.distribution)
    nodes, weights = hermite_rule(model.quadrature_points)
    effects = centre[:, None] + math.sqrt(2.0) * scale[:, None] * nodes[None, :]    # b_ik [seeds, K]
    run_effects = effects[data.seed]                                                # [runs, K]
    z = (data.log_time[:, None] - mu[:, None] - run_effects) / sigma[:, None]
    terms, slope, _ = error_log_terms(z, data.grokked[:, None], model.distribution)
    per_seed = np.zeros(effects.shape)
    np.add.at(per_seed, data.seed, terms - jacobian[:, None])
    log_prior = -0.5 * (effects / tau) ** 2 - math.log(tau) - 0.5 * math.log(2 * math.pi)
    log_weighted = per_seed + log_prior + (np.log(weights) + nodes**2)[None, :]
    peak = log_weighted.max(axis=1, keepdims=True)
    log_sum = peak[:, 0] + np.log(np.exp(log_weighted - peak).sum(axis=1))
    posterior = np.exp(log_weighted - log_sum[:, None])                             # [seeds, K]
    weight = posterior[data.seed]
    d_mu_run = np.sum(weight * (-slope / sigma[:, None]), axis=1)
    d_log_sigma_run = np.sum(weight * (-z * slope - data.grokked[:, None]), axis=1)
    gradient = np.concatenate([
        np.bincount(data.group, d_mu_run, groups), [np.dot(d_mu_run, data.x)],
        [np.sum(d_log_sigma_run)],
        [np.sum(posterior * ((effects / tau) ** 2 - 1.0))]]
        + ([[np.dot(d_log_sigma_run, data.x)]] if model.scale_slope else []))
    return float(np.sum(log_sum + np.log(math.sqrt(2.0) * scale))), gradient


@functools.lru_cache(maxsize=16)
def hermite_rule(points: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Hermite nodes u_k and weights w_k: integral e^(-u^2) g(u) du ~= sum_k w_k g(u_k)."""
    nodes, weights = np.polynomial.hermite.hermgauss(points)
    nodes.setflags(write=False)
    weights.setflags(write=False)
    return nodes, weights


def seed_effect_modes(data: SurvivalData, mu: np.ndarray, sigma: float | np.ndarray, tau: float, distribution: str,
                      iterations: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Per seed, the mode m_i of h_i(b) = sum_{j in i} l_eps((ln t_j - mu_j - b) / sigma) - b^2 / (2 tau^2)
    (concave: l_eps is) by Newton steps from 0, each at most max(sigma, tau) long (sigma: a number, or
    one per run), and
    r_i = (-h_i''(m_i))^(-1/2) with h'' = sum_j l_eps''(z_j) / sigma^2 - 1 / tau^2."""
    centre = np.zeros(data.seeds)
    limit = max(float(np.max(sigma)), tau)
    for _ in range(iterations):
        z = (data.log_time - mu - centre[data.seed]) / sigma
        _, slope, curvature = error_log_terms(z, data.grokked, distribution)
        first = np.bincount(data.seed, -slope / sigma, data.seeds) - centre / tau**2
        second = np.bincount(data.seed, curvature / sigma**2, data.seeds) - 1.0 / tau**2
        step = np.clip(-first / second, -limit, limit)
        centre = centre + step
        if np.max(np.abs(step)) < 1e-10 * (1.0 + limit):
            break
    z = (data.log_time - mu - centre[data.seed]) / sigma
    curvature = error_log_terms(z, data.grokked, distribution)[2]
    second = np.bincount(data.seed, curvature / sigma**2, data.seeds) - 1.0 / tau**2
    return centre, 1.0 / np.sqrt(-second)


def observed_information(function: Callable[[np.ndarray], tuple[float, np.ndarray]], theta: np.ndarray,
                         free: np.ndarray | None = None) -> np.ndarray:
    """-d^2 l / d theta^2 over the ``free`` parameters, by central differences of the exact gradient
    with step 1e-5 * (1 + |theta_j|), symmetrized."""
    free = np.arange(theta.size) if free is None else free
    information = np.empty((free.size, free.size))
    for column, j in enumerate(free):
        step = 1e-5 * (1.0 + abs(theta[j]))
        up, down = theta.copy(), theta.copy()
        up[j] += step
        down[j] -= step
        information[:, column] = -(function(up)[1][free] - function(down)[1][free]) / (2 * step)
    return 0.5 * (information + information.T)


@attrs.frozen
class Maximum:
    """Where a log-likelihood is largest: ``theta``, ``log_likelihood``, whether Newton ``converged``
    (gradient below tolerance) and in how many ``iterations``."""

    theta: np.ndarray
    log_likelihood: float
    converged: bool
    iterations: int


#: Iterations over which a maximization must raise the log-likelihood measurably (see ``maximize``).
STALL_ITERATIONS = 10


def maximize(function: Callable[[np.ndarray], tuple[float, np.ndarray]], start: np.ndarray,
             free: np.ndarray | None = None, tolerance: float = 1e-7, max_iterations: int = 200) -> Maximum:
    """Damped Newton ascent over the ``free`` parameters (the others stay at ``start``): the step
    solves (I + lambda 1) d = g, I the observed information, lambda = 0 while I is positive definite
    (else just enough to make it so), and is halved until l does not decrease. Converged when
    max |g| < tolerance * (1 + |l|). Not converged, and stopped, when l rose by less than
    1e-9 * (1 + |l|) over the last ``STALL_ITERATIONS`` iterations (a maximum on the boundary, e.g.
    sigma or tau going to 0, which Newton only creeps towards)."""
    theta = np.asarray(start, float).copy()
    free = np.arange(theta.size) if free is None else np.asarray(free)
    value, gradient = function(theta)
    history = [value]
    for iteration in range(1, max_iterations + 1):
        if len(history) > STALL_ITERATIONS and value - history[-1 - STALL_ITERATIONS] < 1e-9 * (1.0 + abs(value)):
            return Maximum(theta, value, False, iteration - 1)
        g = gradient[free]
        if np.max(np.abs(g)) < tolerance * (1.0 + abs(value)):
            return Maximum(theta, value, True, iteration - 1)
        information = observed_information(function, theta, free)
        lowest = np.linalg.eigvalsh(information).min()
        damping = 0.0 if lowest > 1e-10 else 1e-6 - lowest + 1e-3 * (1.0 + abs(lowest))
        direction = np.linalg.solve(information + damping * np.eye(free.size), g)
        direction *= min(1.0, 5.0 / max(np.max(np.abs(direction)), 1e-300))  # never more than 5 in a step
        step = 1.0
        for _ in range(60):
            trial = theta.copy()
            trial[free] += step * direction
            trial_value, trial_gradient = function(trial)
            finite = np.isfinite(trial_value) and np.all(np.isfinite(trial_gradient))
            if finite and trial_value >= value - 1e-12 * (1.0 + abs(value)):
                break
            step *= 0.5
        else:
            return Maximum(theta, value, False, iteration)
        stalled = abs(trial_value - value) < 1e-14 * (1.0 + abs(value)) and step < 1e-6
        theta, value, gradient = trial, trial_value, trial_gradient
        history.append(value)
        if stalled:
            return Maximum(theta, value, bool(np.max(np.abs(gradient[free])) < 1e-4 * (1.0 + abs(value))),
                           iteration)
    return Maximum(theta, value, False, max_iterations)


# ---------------------------------------------------------------------------------------------------
# Fitting one model.


@attrs.frozen(eq=False)
class AftFit:
    """A fitted AFT model: the maximum, alpha with its Wald standard error (from the observed
    information) and its profile-likelihood interval (None where the profile does not fall far enough
    within the searched range: an interval open on that side)."""

    model: AftModel
    theta: np.ndarray
    log_likelihood: float
    converged: bool
    iterations: int
    covariance: np.ndarray | None
    groups: int
    runs: int

    @property
    def intercepts(self) -> np.ndarray:
        return self.theta[:self.groups]

    @property
    def alpha(self) -> float:
        return float(self.theta[self.groups])

    @property
    def sigma(self) -> float:
        """The scale sigma (with a scale slope: sigma at x = 0; see :meth:`sigma_at`)."""
        return math.exp(self.theta[self.groups + 1])

    @property
    def scale_slope(self) -> float | None:
        """gamma in ln sigma(x) = ln sigma + gamma * x, None without a scale slope."""
        return float(self.theta[-1]) if self.model.scale_slope else None

    def sigma_at(self, x: float) -> float:
        """sigma(x) = exp(ln sigma + gamma * x) (sigma itself without a scale slope)."""
        return math.exp(self.theta[self.groups + 1] + (self.scale_slope or 0.0) * x)

    @property
    def tau(self) -> float | None:
        return math.exp(self.theta[self.groups + 2]) if self.model.seed_effect else None

    @property
    def alpha_se(self) -> float | None:
        if self.covariance is None or not self.covariance[self.groups, self.groups] > 0:
            return None
        return math.sqrt(self.covariance[self.groups, self.groups])

    @property
    def parameters(self) -> int:
        return self.model.parameter_count(self.groups)

    @property
    def aic(self) -> float:
        """AIC = 2k - 2 ln L."""
        return 2 * self.parameters - 2 * self.log_likelihood

    def wald_interval(self, level: float) -> tuple[float | None, float | None]:
        """alpha -/+ z_{(1+level)/2} * se(alpha)."""
        if self.alpha_se is None:
            return None, None
        half = NormalDist().inv_cdf(0.5 + level / 2) * self.alpha_se
        return self.alpha - half, self.alpha + half


def starting_values(data: SurvivalData, model: AftModel) -> np.ndarray:
    """Least squares of ln t on the group dummies and x over all runs (censored ones at their
    censoring time), ln sigma from its residuals (at least ln 0.05), intercepts shifted by the mean of
    eps (-0.5772 sigma for weibull), ln tau = ln(sigma / 2) and gamma = 0."""
    design = np.column_stack([np.eye(data.groups)[data.group], data.x])
    coefficients = np.linalg.lstsq(design, data.log_time, rcond=None)[0]
    residual = data.log_time - design @ coefficients
    sigma = max(float(np.std(residual)), 0.05)
    if model.distribution == "weibull":
        coefficients[:data.groups] += 0.5772156649 * sigma
    start = list(coefficients) + [math.log(sigma)]
    return np.array(start + ([math.log(sigma / 2)] if model.seed_effect else [])
                    + ([0.0] if model.scale_slope else []), float)


def fit_aft(data: SurvivalData, model: AftModel, start: np.ndarray | None = None) -> AftFit:
    """The maximum-likelihood fit of ``model`` to ``data``, with the inverse observed information as
    the covariance of theta (None where it is singular)."""
    function = lambda theta: aft_log_likelihood(theta, data, model)  # noqa: E731
    maximum = maximize(function, starting_values(data, model) if start is None else start)
    if not maximum.converged:  # a second try from the least-squares start with a smaller sigma
        retry_start = starting_values(data, model)
        retry_start[data.groups + 1] -= 1.0
        retry = maximize(function, retry_start)
        maximum = retry if retry.log_likelihood > maximum.log_likelihood or retry.converged else maximum
    information = observed_information(function, maximum.theta)
    try:
        covariance = np.linalg.inv(information) if np.linalg.eigvalsh(information).min() > 0 else None
    except np.linalg.LinAlgError:
        covariance = None
    return AftFit(model, maximum.theta, maximum.log_likelihood, maximum.converged, maximum.iterations,
                  covariance, data.groups, int(data.log_time.size))


def profile_interval(fit: AftFit, data: SurvivalData, level: float, max_width: float = 50.0,
                     tolerance: float = 1e-4) -> tuple[float | None, float | None]:
    """The profile-likelihood interval of alpha: the alphas a with
    D(a) = 2 (l(theta_hat) - max_{theta: alpha = a} l(theta)) <= q, q = z_{(1+level)/2}^2 (the
    chi-square quantile with 1 degree of freedom). Each end is found on the signed root
    sqrt(D(a)), nearly linear in a: a first guess at the Wald end, extrapolated outward until
    D >= q, then regula falsi (Illinois) to ``tolerance``. An end is None where D stays below q up to
    ``max_width`` from alpha_hat (the data do not bound alpha on that side)."""
    target = NormalDist().inv_cdf(0.5 + level / 2)
    index = fit.groups
    free = np.array([i for i in range(fit.theta.size) if i != index])
    function = lambda theta: aft_log_likelihood(theta, data, fit.model)  # noqa: E731
    se = fit.alpha_se if fit.alpha_se is not None and math.isfinite(fit.alpha_se) else 0.5

    def excess(distance: float, warm: np.ndarray, sign: float) -> tuple[float, np.ndarray]:
        start = warm.copy()
        start[index] = fit.alpha + sign * distance
        maximum = maximize(function, start, free)
        return math.sqrt(max(2 * (fit.log_likelihood - maximum.log_likelihood), 0.0)) - target, maximum.theta

    ends: list[float | None] = []
    for sign in (-1.0, 1.0):
        inner, inner_value, warm = 0.0, -target, fit.theta
        outer = min(target * se, max_width)
        outer_value, theta = excess(outer, warm, sign)
        while outer_value < 0 and outer < max_width:
            inner, inner_value, warm = outer, outer_value, theta
            slope = (outer_value + target) / outer                      # signed root per unit alpha
            outer = min(max(target / max(slope, 1e-12) * 1.1, 2 * outer) if slope > 0 else 2 * outer, max_width)
            outer_value, theta = excess(outer, warm, sign)
        if outer_value < 0:
            ends.append(None)
            continue
        side = 0
        for _ in range(60):
            if outer - inner < tolerance:
                break
            guess = inner - inner_value * (outer - inner) / (outer_value - inner_value)
            guess = min(max(guess, inner + 0.01 * (outer - inner)), outer - 0.01 * (outer - inner))
            value, theta = excess(guess, warm, sign)
            if value >= 0:
                outer, outer_value = guess, value
                inner_value = inner_value / 2 if side == 1 else inner_value
                side = 1
            else:
                inner, inner_value, warm = guess, value, theta
                outer_value = outer_value / 2 if side == -1 else outer_value
                side = -1
            if abs(value) < 1e-6:
                inner = outer = guess
                break
        ends.append(fit.alpha + sign * 0.5 * (inner + outer))
    return ends[0], ends[1]
