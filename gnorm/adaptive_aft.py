"""The adaptive policy's censoring-aware side: alpha's interval from the log-normal accelerated failure
time fit (:mod:`gnorm.analysis.survival`) of the seeds seen so far, and the next seed *and its budget*
chosen by the information on alpha that seed adds to that fit, per expected model-step.

The model (as ``censored_delay_law``'s log-normal fit with a seed effect): run j of seed i has
ln T_ij = a + alpha * x_j + b_i + sigma(x_j) eps_ij, eps ~ N(0, 1), b_i ~ N(0, tau^2) shared by the
seed's runs, ln sigma(x) = s + gamma * x (gamma = 0 without a scale slope); a run censored at its
budget B costs B, not its T_grok. A run at x with budget B is censored at z_c = (ln B - mu(x)) /
sigma(x); the expected information one such run carries on (mu, ln sigma) is, with phi, Phi the
standard normal density and CDF and M = phi(z_c) / (1 - Phi(z_c))::

    I_mu,mu   = (Phi + phi (M - z_c)) / sigma^2  =  w(z_c) / sigma^2
    I_mu,lns  = (z_c phi (M - z_c) - phi) / sigma
    I_lns,lns = 2 Phi - z_c phi + z_c^2 phi (M - z_c)

(uncensored, z_c -> inf: 1 / sigma^2, 0, 2). For the design the scales are taken as known and a
censored run as an uncensored one with variance d_j = sigma(x_j)^2 / w(z_c,j); a seed's runs then have
covariance V_i = diag(d) + tau^2 1 1^T, and the information on (a, alpha) is the generalized least
squares one, by Sherman-Morrison::

    I = sum_i [ sum_j u_j u_j^T / d_j - tau^2 / (1 + tau^2 sum_j 1 / d_j) v_i v_i^T ],
    u_j = (1, x_j),  v_i = sum_j u_j / d_j

var(alpha) = [I^-1]_alpha,alpha. A candidate run's value is the drop in var(alpha) it brings per
expected model-step E[min(T, B)]; the candidate at x is the next seed in the cell's order (so a seed
already trained at other x adds a within-seed contrast), at the cell's own budget or a cap at one of the
law's ``budget_quantiles`` of T there.
"""

from __future__ import annotations

import math
from typing import Sequence

import attrs
import numpy as np

from gnorm.analysis.survival import AftFit, AftModel, SurvivalData, fit_aft
from gnorm.budget import normal_cdf, normal_quantile

#: The ``adaptive`` table's ``interval`` values: the ``delay_law`` bootstrap (seeds resampled within
#: cells) or the log-normal AFT fit's Wald interval.
INTERVALS = ("bootstrap", "aft")


def censored_information(z_c: float) -> np.ndarray:
    """The expected information of one N(mu, sigma^2) observation of ln T censored at standardized
    z_c, on (mu, ln sigma), in units where sigma = 1 (see the module docstring); z_c > 8: uncensored."""
    if z_c > 8.0:  # 1 - Phi(8) ~ 6e-16: no run is censored
        return np.array([[1.0, 0.0], [0.0, 2.0]])
    density = math.exp(-0.5 * z_c * z_c) / math.sqrt(2 * math.pi)
    above = 0.5 * math.erfc(z_c / math.sqrt(2.0))
    below = 1.0 - above
    mills = density / above
    tail = density * (mills - z_c)
    return np.array([[below + tail, z_c * tail - density],
                     [z_c * tail - density, 2 * below - z_c * density + z_c * z_c * tail]])


@attrs.frozen
class AftLaw:
    """A fitted log-normal AFT law: mu(x) = intercept + alpha * x, ln sigma(x) = log_sigma + gamma * x,
    and the sd ``tau`` of the per-seed effect (0: none)."""

    intercept: float
    alpha: float
    log_sigma: float
    gamma: float = 0.0
    tau: float = 0.0

    @classmethod
    def of(cls, fit: AftFit) -> "AftLaw":
        return cls(float(fit.intercepts[0]), fit.alpha, math.log(fit.sigma), fit.scale_slope or 0.0, fit.tau or 0.0)

    def mu(self, x: float) -> float:
        return self.intercept + self.alpha * x

    def sigma(self, x: float) -> float:
        return math.exp(self.log_sigma + self.gamma * x)

    def quantile(self, x: float, q: float) -> float:
        """The q-quantile of T at x: exp(mu(x) + sigma(x) Phi^-1(q))."""
        return math.exp(self.mu(x) + self.sigma(x) * normal_quantile(q))

    def expected_steps(self, x: float, budget: float) -> float:
        """E[min(T, B)] = exp(mu + s^2/2) Phi((ln B - mu - s^2)/s) + B (1 - Phi((ln B - mu)/s)), s = sigma(x)."""
        mu, s = self.mu(x), max(self.sigma(x), 1e-9)
        z = (math.log(budget) - mu) / s
        return math.exp(mu + s * s / 2) * normal_cdf(z - s) + budget * (1.0 - normal_cdf(z))

    def grok_within(self, x: float, budget: float, factor: float) -> float:
        """P(T <= factor * B | T > B) = (Phi(z(factor B)) - Phi(z(B))) / (1 - Phi(z(B))), z(b) = (ln b - mu) / sigma."""
        z = lambda b: (math.log(b) - self.mu(x)) / max(self.sigma(x), 1e-9)  # noqa: E731
        beyond = 1.0 - normal_cdf(z(budget))
        return 1.0 if beyond <= 0 else (normal_cdf(z(factor * budget)) - normal_cdf(z(budget))) / beyond

    def run_variance(self, x: float, budget: float) -> float:
        """d = sigma(x)^2 / w(z_c): the variance of an uncensored run carrying the same information on mu."""
        s = max(self.sigma(x), 1e-9)
        weight = censored_information((math.log(budget) - self.mu(x)) / s)[0, 0]
        return s * s / max(weight, 1e-12)


def design_information(law: AftLaw, runs: Sequence[tuple[int, float, int]]) -> np.ndarray:
    """The information on (a, alpha) of ``runs`` (seed, x, budget), each seed's runs correlated by the
    seed effect (see the module docstring)."""
    information = np.zeros((2, 2))
    by_seed: dict[int, list[tuple[float, int]]] = {}
    for seed, x, budget in runs:
        by_seed.setdefault(seed, []).append((x, budget))
    for seed_runs in by_seed.values():
        u = np.array([[1.0, x] for x, _ in seed_runs])
        inverse = 1.0 / np.array([law.run_variance(x, b) for x, b in seed_runs])
        v = (u * inverse[:, None]).sum(axis=0)
        information += (u * inverse[:, None]).T @ u
        information -= law.tau**2 / (1.0 + law.tau**2 * inverse.sum()) * np.outer(v, v)
    return information


def alpha_variance(information: np.ndarray) -> float:
    """[I^-1]_alpha,alpha (inf where I is singular)."""
    determinant = information[0, 0] * information[1, 1] - information[0, 1] ** 2
    return information[0, 0] / determinant if determinant > 1e-12 * max(information[0, 0] * information[1, 1], 1e-300) \
        else math.inf


def candidate_budgets(law: AftLaw, x: float, budget: int, quantiles: Sequence[float]) -> list[int]:
    """The budgets a seed at x may get: ceil of the law's q-quantile of T for each q in ``quantiles``
    (those below ``budget``), and ``budget`` itself."""
    capped = {int(math.ceil(law.quantile(x, q))) for q in quantiles}
    return sorted({b for b in capped if 0 < b < budget} | {int(budget)})


def next_seed(law: AftLaw, trained: Sequence[tuple[int, float, int]], budgets: dict[float, int],
              pools: dict[float, Sequence[int]], quantiles: Sequence[float] = (), target_width: float | None = None,
              level: float = 0.95) -> tuple[float, int] | None:
    """The (x, budget) of the run that lowers var(alpha) most per expected model-step, given the
    ``trained`` runs (seed, x, budget) and each cell's untrained seeds in order (``pools``: the first is
    the one it trains next); None when every pool is empty. A capped budget is not a candidate where it
    would put a reachable target out of reach: where the design with the seed uncapped and every other
    pooled seed at its cell's budget has var(alpha) <= g = (target_width / (2 z_((1+level)/2)))^2 and
    the same design with the seed capped has not. Ties go to the lower x, then the lower budget."""
    before = alpha_variance(design_information(law, trained))
    goal = None if target_width is None else (target_width / (2 * normal_quantile(0.5 + level / 2))) ** 2
    best: tuple[float, float, int] | None = None
    for x in sorted(x for x, pool in pools.items() if pool):
        rest = [(seed, other, budgets[other]) for other, pool in pools.items()
                for seed in (pool[1:] if other == x else pool)]
        reachable = goal is not None and alpha_variance(
            design_information(law, list(trained) + [(pools[x][0], x, budgets[x])] + rest)) <= goal
        for budget in candidate_budgets(law, x, budgets[x], quantiles):
            run = (pools[x][0], x, budget)
            if budget < budgets[x] and reachable and \
                    alpha_variance(design_information(law, list(trained) + [run] + rest)) > goal:
                continue
            after = alpha_variance(design_information(law, list(trained) + [run]))
            value = (before - after) / law.expected_steps(x, budget) if math.isfinite(before) else -after
            if best is None or value > best[0]:
                best = (value, x, budget)
    return None if best is None else (best[1], best[2])


@attrs.frozen
class AftInterval:
    """alpha's Wald interval at ``level`` from the log-normal AFT fit with ``seed_effect`` and
    ``scale_slope`` of per-seed arrays (x, T_grok with NaN = censored, budget[, seed]); None when
    fewer than 3 seeds grokked, they sit at fewer than 2 x values, or the fit gives no standard error."""

    seed_effect: bool = True
    scale_slope: bool = False
    level: float = 0.95
    quadrature_points: int = 16
    takes_seeds = True

    @property
    def model(self) -> AftModel:
        return AftModel("lognormal", self.seed_effect, self.quadrature_points, self.scale_slope)

    def fit(self, x: np.ndarray, t_grok: np.ndarray, budget: np.ndarray, seeds: np.ndarray | None = None,
            ) -> AftFit | None:
        grokked = ~np.isnan(t_grok)
        if grokked.sum() < 3 or len(set(np.asarray(x)[grokked])) < 2:
            return None
        data = SurvivalData.build(np.where(grokked, t_grok, budget), grokked, x, None, seeds)
        fit = fit_aft(data, self.model)
        return fit if fit.alpha_se is not None else None

    def __call__(self, x: np.ndarray, t_grok: np.ndarray, budget: np.ndarray, seeds: np.ndarray | None = None,
                 ) -> tuple[float, float] | None:
        fit = self.fit(x, t_grok, budget, seeds)
        if fit is None:
            return None
        low, high = fit.wald_interval(self.level)
        return (low, high) if low is not None and high is not None else None

    def describe(self) -> str:
        return ("log-normal AFT fit, Wald interval" + (", per-seed effect" if self.seed_effect else "")
                + (", ln sigma linear in rho" if self.scale_slope else ""))
