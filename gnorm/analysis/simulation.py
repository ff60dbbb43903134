"""A generative model of a matched rho sweep, fitted to real runs, and studies simulated from it (to
measure how often an interval of alpha covers the true alpha).

The model, for seed s (free run and clamp arms) at rho_c, with rhobar the mean of the design's rho:

    Wc_s = Wc + sd_w * (r_uw * z_u + sqrt(1 - r_uw^2) * z_w)        (the seed's norm at grok, free run)
    u_s = sd_u * z_u,  v_s = sd_v * (r_uv * z_u + sqrt(1 - r_uv^2) * z_v)   (seed intercept and slope)
    held norm h_c = rho_c * Wc_hat, Wc_hat = median_s Wc_s           (the study's own Wc sets its clamps)
    ln T_sc = intercept + (alpha / Wc) * h_c + u_s + v_s * (rho_c - rhobar) + e_sc,  e_sc ~ N(0, sd_e^2)

so the law is exponential in the absolute held norm with exponent alpha / Wc, and alpha is the
exponent in rho relative to the population's Wc (the estimand of a fit in rho). A time is read on
the study's evaluation grid (the first evaluated step at or after it, a geometric grid of ``points``
steps over the budget) and a seed whose time passes the budget is censored.

:func:`fit_generative_model` estimates the model from a matched sweep by moments (see its docstring);
:func:`simulate_study` draws one study as :class:`~gnorm.components.RunRecord` s shaped like gnorm's
own, so the analyzers read them exactly as they read a store.
"""

from __future__ import annotations

import math
from typing import Sequence

import attrs
import numpy as np

from gnorm.components import RunRecord
from gnorm.science import geometric_schedule, ols_line


@attrs.frozen
class SweepModel:
    """The generative model's parameters (see the module docstring); ``budget_factor``: every cell's
    budget is budget_factor * exp(intercept + alpha * max rho), the median delay of the slowest cell."""

    alpha: float
    intercept: float
    seed_intercept_sd: float
    seed_slope_sd: float
    intercept_slope_correlation: float
    residual_sd: float
    critical_norm: float
    critical_norm_sd: float
    critical_norm_intercept_correlation: float
    budget_factor: float = 3.0
    points: int = 360

    def scaled(self, noise: float, slopes: float = 1.0) -> "SweepModel":
        """The same model with every seed-to-seed spread (sd_u, sd_v, sd_e, sd_w) times ``noise``, and
        the seeds' slopes (sd_v) times ``slopes`` besides."""
        return attrs.evolve(self, seed_intercept_sd=self.seed_intercept_sd * noise,
                            seed_slope_sd=self.seed_slope_sd * noise * slopes, residual_sd=self.residual_sd * noise,
                            critical_norm_sd=self.critical_norm_sd * noise)


def _clip(value: float, low: float = -0.99, high: float = 0.99) -> float:
    return float(min(max(value, low), high)) if math.isfinite(value) else 0.0


def fit_generative_model(rho: Sequence[float], log_t: np.ndarray, free_norms: Sequence[float]) -> SweepModel:
    """Moment estimates from a matched sweep, ``log_t[c, s]`` = ln T_grok of seed s at rho[c] (every
    seed grokked in every cell) and ``free_norms[s]`` = its free run's norm at grok.

    With D[c, s] = log_t[c, s] - mean_s log_t[c, s] (cell effects removed), per seed the OLS line
    D = u_s + v_s * (rho - rhobar) with residuals R: sd_e^2 = sum R^2 / ((C - 2)(S - 1));
    sd_u^2 = var(u_s) - sd_e^2 / C; sd_v^2 = var(v_s) - sd_e^2 / sum (rho - rhobar)^2 (floored at 0);
    r_uv = cov(u_s, v_s) / (sd_u sd_v); alpha, intercept: the OLS line of the cell means on rho;
    Wc, sd_w: median and sd of the free norms; r_uw: their correlation with u_s."""
    rho = np.asarray(rho, float)
    log_t = np.asarray(log_t, float)
    free_norms = np.asarray(free_norms, float)
    cells, seeds = log_t.shape
    centred = rho - rho.mean()
    deviations = log_t - log_t.mean(axis=1, keepdims=True)
    u = deviations.mean(axis=0)
    v = centred @ deviations / (centred @ centred)
    residuals = deviations - u[None, :] - np.outer(centred, v)
    residual_var = float(np.sum(residuals**2) / max((cells - 2) * (seeds - 1), 1))
    u_var = max(float(np.var(u, ddof=1)) - residual_var / cells, 0.0)
    v_var = max(float(np.var(v, ddof=1)) - residual_var / float(centred @ centred), 0.0)
    covariance = float(np.cov(u, v)[0, 1])
    line = ols_line(rho, log_t.mean(axis=1))
    return SweepModel(alpha=line.slope, intercept=line.intercept, seed_intercept_sd=math.sqrt(u_var),
                      seed_slope_sd=math.sqrt(v_var),
                      intercept_slope_correlation=_clip(covariance / math.sqrt(u_var * v_var)) if u_var * v_var > 0 else 0.0,
                      residual_sd=math.sqrt(residual_var), critical_norm=float(np.median(free_norms)),
                      critical_norm_sd=float(np.std(free_norms, ddof=1)),
                      critical_norm_intercept_correlation=_clip(float(np.corrcoef(free_norms, u)[0, 1])))


def model_from_records(records: Sequence[RunRecord], rho_range: tuple[float, float] = (0.0, math.inf),
                       **options: float) -> SweepModel:
    """:func:`fit_generative_model` over one matched sweep's records: the clamp cells (controller
    ``clamp``) with rho in ``rho_range`` in which every seed grokked, the seeds that ran in all of them,
    and those seeds' free runs (controller ``free``, grokked). ``options`` set the model's budget_factor
    or points."""
    free = {r.seed: r.norm_at_grok for r in records
            if r.config["controller"]["name"] == "free" and not r.censored and r.norm_at_grok is not None}
    cells: dict[float, dict[int, int | None]] = {}
    for record in records:
        controller = record.config["controller"]
        if controller["name"] == "clamp" and rho_range[0] - 1e-9 <= controller["rho"] <= rho_range[1] + 1e-9:
            cells.setdefault(round(controller["rho"], 9), {})[record.seed] = record.t_grok
    complete = {x: times for x, times in cells.items() if all(t is not None for t in times.values())}
    seeds = sorted(set(free).intersection(*[set(times) for times in complete.values()]))
    rho = sorted(complete)
    if len(rho) < 3 or len(seeds) < 3:
        raise ValueError(f"a model needs 3 or more fully grokked cells and seeds (found {len(rho)} and {len(seeds)})")
    log_t = np.log([[complete[x][s] for s in seeds] for x in rho])
    return attrs.evolve(fit_generative_model(rho, log_t, [free[s] for s in seeds]), **options)


def on_grid(times: np.ndarray, budget: int, points: int) -> np.ndarray:
    """Each time read on the evaluation grid: the first step of ``geometric_schedule(budget, points)``
    at or after it; NaN (censored) past the budget."""
    grid = geometric_schedule(budget, points).astype(float)
    index = np.searchsorted(grid, times, side="left")
    return np.where(index < grid.size, grid[np.minimum(index, grid.size - 1)], np.nan)


def simulate_study(model: SweepModel, rho: Sequence[float], seeds: int, rng: np.random.Generator,
                   stage: str = "sim") -> list[RunRecord]:
    """One simulated study: ``seeds`` free runs (stage ``<stage>/free``) and the clamp arms of each
    seed at every rho (``<stage>/clamp``, Wc = the median of the free runs' norms at grok, named as
    their ``critical_norm_source``), drawn from ``model`` (see the module docstring)."""
    rho = np.asarray(rho, float)
    z_u, z_v, z_w = rng.standard_normal((3, seeds))
    u = model.seed_intercept_sd * z_u
    r = model.intercept_slope_correlation
    v = model.seed_slope_sd * (r * z_u + math.sqrt(1 - r * r) * z_v)
    r = model.critical_norm_intercept_correlation
    norms = model.critical_norm + model.critical_norm_sd * (r * z_u + math.sqrt(1 - r * r) * z_w)
    wc = float(np.median(norms))
    log_t = (model.intercept + model.alpha / model.critical_norm * (rho * wc)[:, None] + u[None, :]
             + v[None, :] * (rho - rho.mean())[:, None] + model.residual_sd * rng.standard_normal((rho.size, seeds)))
    budget = int(math.ceil(model.budget_factor * math.exp(model.intercept + model.alpha * rho.max())))
    times = on_grid(np.exp(log_t), budget, model.points)
    task = {"name": "modular_addition", "p": 59, "train_fraction": 0.4}
    base = {"task": task, "architecture": {"name": "mlp"}, "optimizer": {"weight_decay": 1.0}}
    free = [RunRecord(f"{stage}-free-{s}", f"{stage}/free", {}, s, base | {"stage": f"{stage}/free",
                      "controller": {"name": "free"}, "critical_norm": None}, None, budget // 2,
                      float(norms[s]), budget) for s in range(seeds)]
    source = [r.run_id for r in free]
    clamps = [RunRecord(f"{stage}-clamp-{c}-{s}", f"{stage}/clamp", {"controller.rho": float(x)}, s,
                        base | {"stage": f"{stage}/clamp", "controller": {"name": "clamp", "rho": float(x)},
                                "critical_norm": f"{stage}/free", "critical_norm_source": source},
                        None, None if math.isnan(times[c, s]) else int(times[c, s]),
                        None if math.isnan(times[c, s]) else float(x * wc), budget,
                        {"critical_norm": wc, "held_norm": float(x * wc)})
              for c, x in enumerate(rho) for s in range(seeds)]
    return free + clamps


#: The intervals :func:`interval_coverage` compares: the analyzers' two, and the seed-block percentile
#: interval without the small-sample expansion (to show what the expansion buys).
COMPARED_INTERVALS = ("cell", "seed_block", "seed_block_unexpanded")


def study_intervals(records: Sequence[RunRecord], intervals: Sequence[str], resamples: int, level: float,
                    seed: int) -> tuple[float | None, dict[str, tuple[float | None, float | None]]]:
    """One simulated study's alpha (``delay_law``, x = rho, stage ``sim/clamp``) and its interval under
    each of ``intervals`` (names from :data:`COMPARED_INTERVALS`)."""
    from gnorm.analysis.resampling import seed_block_interval
    from gnorm.analysis.seed_blocks import CriticalNormSources, runs_by_x, seed_block_sample
    from gnorm.builtins.analyzers.delay_law import DelayLawConfig, delay_law_analyzer

    alpha, found = None, {}
    for name in intervals:
        if name == "seed_block_unexpanded":
            continue
        config = DelayLawConfig(stages=["sim/clamp"], interval=name, resamples=resamples, confidence=level, seed=seed)
        fit = delay_law_analyzer(config)(records).numbers["groups"][0]
        alpha, found[name] = fit["alpha"], tuple(fit.get("alpha_ci", (None, None)))
        used = fit["cells_used"]
    if "seed_block_unexpanded" in intervals:
        if alpha is None:
            found["seed_block_unexpanded"] = (None, None)
        else:
            cells = runs_by_x([r for r in records if r.stage == "sim/clamp"], "controller.rho", [])[()]
            sample, _ = seed_block_sample([(0, x, cells[x]) for x in used], "controller.rho",
                                          CriticalNormSources(records))
            found["seed_block_unexpanded"] = seed_block_interval(sample, resamples, level, seed, expand=False)
    return alpha, found


def interval_coverage(model: SweepModel, rho: Sequence[float], seeds: int, studies: int,
                      intervals: Sequence[str] = COMPARED_INTERVALS, resamples: int = 1000, level: float = 0.95,
                      seed: int = 0) -> dict[str, dict[str, float]]:
    """Simulate ``studies`` studies from ``model`` (numpy generator seeded with ``seed``) and fit each
    with ``delay_law`` (x = rho, min_grokked 3): per interval, the share of fitted studies whose
    interval holds the true alpha (``coverage``), the mean width and the number fitted; and
    ``alpha``: the mean and sd of the fitted alphas."""
    rng = np.random.default_rng(seed)
    hits: dict[str, list[bool]] = {name: [] for name in intervals}
    widths: dict[str, list[float]] = {name: [] for name in intervals}
    alphas, censored = [], []
    for study in range(studies):
        records = simulate_study(model, rho, seeds, rng)
        censored.append(np.mean([r.censored for r in records if r.stage == "sim/clamp"]))
        alpha, found = study_intervals(records, intervals, resamples, level, study)
        if alpha is None:
            continue
        alphas.append(alpha)
        for name, (low, high) in found.items():
            if low is not None:
                hits[name].append(low <= model.alpha <= high)
                widths[name].append(high - low)
    result: dict[str, dict[str, float]] = {
        name: {"coverage": float(np.mean(hits[name])) if hits[name] else math.nan,
               "mean_width": float(np.mean(widths[name])) if widths[name] else math.nan,
               "fitted": len(hits[name])} for name in intervals}
    return result | {"alpha": {"mean": float(np.mean(alphas)) if alphas else math.nan,
                               "sd": float(np.std(alphas, ddof=1)) if len(alphas) > 1 else math.nan,
                               "fitted": len(alphas), "studies": studies,
                               "censored_share": float(np.mean(censored)) if censored else math.nan}}
