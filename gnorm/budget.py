"""Law-driven budgets: what a design of a delay-law study costs and how precisely it pins alpha, before
anything trains.

The model is the delay law with a log-normal seed spread: a seed's T_grok at x (the clamp's rho) has
ln T_grok ~ N(intercept + alpha * x, seed_sd^2), and a seed whose T_grok exceeds its budget B is
censored at B. From it: each cell's expected model-steps, the interval width on alpha a design
reaches (by simulating the design and fitting it), and cheaper designs for the same width.

The law comes from a store (:func:`law_from_times`) or, with none, from the papers' published fits
(:data:`PRIORS`). The interval is any :data:`IntervalFunction`; :func:`delay_law_interval` (the
``delay_law`` analyzer's bootstrap, seeds resampled within cells) is the default.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import attrs
import numpy as np

#: An interval on alpha from per-seed arrays: x, T_grok (NaN = censored) and budget, one entry per
#: seed; None when the data admit no fit. Either the ``delay_law`` bootstrap or a censoring-aware fit
#: can be plugged in.
IntervalFunction = Callable[[np.ndarray, np.ndarray, np.ndarray], "tuple[float, float] | None"]

#: Large-sample variance of the median of n normal draws, in units of sigma^2 / n.
MEDIAN_VARIANCE_FACTOR = math.pi / 2


def normal_cdf(z: float) -> float:
    """Phi(z) = (1 + erf(z / sqrt 2)) / 2."""
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def normal_quantile(q: float) -> float:
    """Phi^-1(q), by bisection on :func:`normal_cdf` (|z| <= 10)."""
    low, high = -10.0, 10.0
    for _ in range(80):
        middle = (low + high) / 2
        low, high = (middle, high) if normal_cdf(middle) < q else (low, middle)
    return (low + high) / 2


@attrs.frozen
class DelayLawModel:
    """ln T_grok(x) ~ N(intercept + alpha * x, seed_sd^2) across seeds; ``source`` says where it came from.
    ``free_t_grok``: the median T_grok of free training (cells without an x), when known."""

    intercept: float
    alpha: float
    seed_sd: float
    source: str
    free_t_grok: float | None = None

    def log_median(self, x: float | None) -> float:
        """mu(x) = intercept + alpha * x; for a free cell (x None) ln(free_t_grok)."""
        if x is None:
            if self.free_t_grok is None:
                raise ValueError("the law has no free T_grok")
            return math.log(self.free_t_grok)
        return self.intercept + self.alpha * x

    def median_t_grok(self, x: float | None) -> float:
        """exp(mu(x))."""
        return math.exp(self.log_median(x))

    def quantile(self, x: float | None, q: float) -> float:
        """The q-quantile of T_grok at x: exp(mu(x) + seed_sd * Phi^-1(q))."""
        return math.exp(self.log_median(x) + self.seed_sd * normal_quantile(q))

    def grok_probability(self, x: float | None, budget: float) -> float:
        """P(T_grok <= B) = Phi((ln B - mu(x)) / seed_sd)."""
        return normal_cdf((math.log(budget) - self.log_median(x)) / max(self.seed_sd, 1e-9))

    def expected_steps(self, x: float | None, budget: float) -> float:
        """E[min(T_grok, B)] for log-normal T: exp(mu + s^2/2) Phi((ln B - mu - s^2)/s) + B (1 - Phi((ln B - mu)/s)),
        the model-steps one seed costs when training stops at T_grok."""
        mu, s = self.log_median(x), max(self.seed_sd, 1e-9)
        grokked_part = math.exp(mu + s * s / 2) * normal_cdf((math.log(budget) - mu - s * s) / s)
        return grokked_part + budget * (1.0 - self.grok_probability(x, budget))

    def grok_within(self, x: float | None, budget: float, factor: float) -> float:
        """P(T_grok <= factor * B | T_grok > B): how likely a seed censored at B groks within ``factor``
        times its budget."""
        beyond = 1.0 - self.grok_probability(x, budget)
        if beyond <= 0:
            return 1.0
        return (self.grok_probability(x, factor * budget) - self.grok_probability(x, budget)) / beyond


# ---------------------------------------------------------------------------------------------------
# The priors: the papers' published fits, used when no store is given.


@attrs.frozen
class Prior:
    """A published delay law at its reference setting: alpha, the median T_grok at rho = 1, the seed
    spread of ln T_grok, the free T_grok at the reference p, and where the numbers come from."""

    architecture: str
    alpha: float
    t_grok_at_rho_1: float
    seed_sd: float
    reference_p: int
    reference_lr: float
    source: str


#: The published fits (../shared/PAPERS.md). seed_sd: the within-cell sd of ln T_grok in the released
#: per-seed data (paper A denserho 0.04-0.15, tfnoln 0.06-0.62), rounded up.
PRIORS: dict[str, Prior] = {
    "mlp": Prior("mlp", 7.64, 3999.0, 0.12, 59, 1e-3,
                 "paper A dense rho sweep (p = 59, lr 1e-3): alpha 7.64, median T_grok 3999 at rho 1"),
    "transformer": Prior("transformer", 15.45, 6608.0, 0.35, 59, 5e-4,
                         "paper A attention model without LayerNorm (p = 59, lr 5e-4): alpha 15.45, "
                         "median T_grok 6608 at rho 1"),
}
#: Paper A's free T_grok (MLP, f = 0.4, lr 1e-3) per p: the scale of the law at other p.
FREE_T_GROK_BY_P: dict[int, float] = {29: 27500.0, 41: 11000.0, 59: 5100.0, 79: 3500.0, 97: 2900.0}
#: T_grok ~ lr^-k: paper A's rho x lr matrix at rho 1 (4077 at lr 1e-3, 1256 at lr 8e-3): k = ln(4077/1256)/ln 8.
LR_EXPONENT = math.log(4077 / 1256) / math.log(8)


def free_t_grok_prior(p: int) -> float:
    """Paper A's free T_grok at p: log-log interpolation of :data:`FREE_T_GROK_BY_P` (held constant past
    its ends)."""
    ps = sorted(FREE_T_GROK_BY_P)
    logs = np.interp(math.log(p), np.log(ps), np.log([FREE_T_GROK_BY_P[k] for k in ps]))
    return float(math.exp(logs))


def prior_law(architecture: str, p: int | None, lr: float | None) -> DelayLawModel:
    """The published law for ``architecture`` (the MLP's when it is not in :data:`PRIORS`), its scale moved
    to p by the free T_grok ratio T_free(p) / T_free(p_ref) and to lr by (lr / lr_ref)^-k
    (k = :data:`LR_EXPONENT`): intercept = ln T_grok(rho 1) - alpha + ln(scale)."""
    prior = PRIORS.get(architecture, PRIORS["mlp"])
    scale = 1.0
    if p is not None:
        scale *= free_t_grok_prior(p) / free_t_grok_prior(prior.reference_p)
    if lr:
        scale *= (lr / prior.reference_lr) ** -LR_EXPONENT
    intercept = math.log(prior.t_grok_at_rho_1 * scale) - prior.alpha
    free = free_t_grok_prior(p if p is not None else prior.reference_p) * (
        (lr / 1e-3) ** -LR_EXPONENT if lr else 1.0)
    note = "" if architecture in PRIORS else f" (no prior for {architecture!r}: the MLP's)"
    return DelayLawModel(intercept, prior.alpha, prior.seed_sd, f"prior: {prior.source}{note}", free)


# ---------------------------------------------------------------------------------------------------
# A law fitted to stored times.


def law_from_times(cells: dict[float, Sequence[int | None]], free_times: Sequence[int | None] = (),
                   source: str = "", min_grokked: int = 2, default_sd: float = 0.12) -> DelayLawModel | None:
    """The law from per-seed T_grok (None = censored) per x: OLS of ln(median over grokked seeds) on x over
    the cells with >= ``min_grokked`` grokked seeds (two cells at least, else None); seed_sd = the pooled
    within-cell sd of ln T_grok over grokked seeds (``default_sd`` when no cell has two);
    free_t_grok = the median of ``free_times`` over grokked seeds."""
    kept = {x: [t for t in times if t is not None] for x, times in sorted(cells.items())}
    kept = {x: t for x, t in kept.items() if len(t) >= min_grokked}
    if len(kept) < 2:
        return None
    xs = np.array(list(kept), float)
    ys = np.log([np.median(t) for t in kept.values()])
    slope, intercept = np.polyfit(xs, ys, 1)
    squares = sum(float(np.sum((np.log(t) - np.log(t).mean()) ** 2)) for t in kept.values())
    dof = sum(len(t) - 1 for t in kept.values())
    seed_sd = math.sqrt(squares / dof) if dof > 0 and squares > 0 else default_sd
    free = [t for t in free_times if t is not None]
    return DelayLawModel(float(intercept), float(slope), seed_sd, source,
                         float(np.median(free)) if free else None)


def cell_seed_sds(cells: dict[float, Sequence[int | None]], pooled_sd: float, prior_seeds: float = 2.0,
                  ) -> dict[float, float]:
    """Each cell's seed spread, shrunk to the pooled one: s_c^2 = ((g_c - 1) v_c + k s^2) / (g_c - 1 + k),
    with g_c grokked seeds, v_c their sample variance of ln T_grok and k = ``prior_seeds`` (the pooled
    spread counts as k seeds' worth)."""
    spreads = {}
    for x, times in cells.items():
        logs = np.log([t for t in times if t is not None]) if any(t is not None for t in times) else np.empty(0)
        dof = max(logs.size - 1, 0)
        variance = float(np.var(logs, ddof=1)) if dof else 0.0
        spreads[x] = math.sqrt((dof * variance + prior_seeds * pooled_sd**2) / (dof + prior_seeds))
    return spreads


# ---------------------------------------------------------------------------------------------------
# A design: cells with their x, seeds and budget; what it costs.


@attrs.frozen
class CellDesign:
    """One cell of a design: its x (None for a free cell), seeds, step budget, whether training stops at
    T_grok, and its label."""

    x: float | None
    seeds: int
    budget: int
    stop_when_grokked: bool = True
    label: str = ""


def cell_model_steps(law: DelayLawModel, cell: CellDesign) -> float:
    """Expected model-steps of a cell: seeds * E[min(T_grok, B)] when training stops at T_grok, else
    seeds * B (every seed trains its whole budget)."""
    per_seed = law.expected_steps(cell.x, cell.budget) if cell.stop_when_grokked else float(cell.budget)
    return cell.seeds * per_seed


def design_model_steps(law: DelayLawModel, cells: Sequence[CellDesign]) -> float:
    """The sum of :func:`cell_model_steps` over the cells."""
    return sum(cell_model_steps(law, cell) for cell in cells)


def suggested_budget(law: DelayLawModel, x: float | None, quantile: float = 0.99, margin: float = 1.25,
                     granularity: int = 500) -> int:
    """A cell budget that almost every seed groks within: margin * the law's ``quantile`` of T_grok at x,
    rounded up to ``granularity`` steps."""
    steps = margin * law.quantile(x, quantile)
    return int(math.ceil(steps / granularity) * granularity)


# ---------------------------------------------------------------------------------------------------
# The interval width a design reaches.


def delay_law_interval(x: np.ndarray, t_grok: np.ndarray, budget: np.ndarray, resamples: int = 500,
                       level: float = 0.95, min_grokked: int = 3, seed: int = 0) -> tuple[float, float] | None:
    """The ``delay_law`` analyzer's bootstrap percentile interval on alpha from per-seed arrays: over the
    cells with >= ``min_grokked`` grokked seeds (3 cells at least, else None), each replicate redraws every
    cell's seeds with replacement (censored ones included), takes the median over its grokked draws, and
    refits the OLS slope of ln(median) on x (replicates where a cell drew no grokked seed are dropped)."""
    from gnorm.analysis.statistics import bootstrap_cell_medians
    from gnorm.science import ols_slopes, percentile_interval

    cells: dict[float, list[int | None]] = {}
    for value, time in zip(np.asarray(x, float), np.asarray(t_grok, float)):
        cells.setdefault(round(float(value), 9), []).append(None if math.isnan(time) else int(time))
    kept = {x: times for x, times in sorted(cells.items()) if sum(t is not None for t in times) >= min_grokked}
    if len(kept) < 3:
        return None
    replicates = bootstrap_cell_medians(list(kept.values()), resamples, seed)
    usable = ~np.isnan(replicates).any(axis=0)
    if not usable.any():
        return None
    return percentile_interval(ols_slopes(np.array(list(kept), float), np.log(replicates[:, usable])), level)


def simulate_outcomes(law: DelayLawModel, cells: Sequence[CellDesign], rng: np.random.Generator,
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One simulated study of the swept cells (x not None): per seed x, T_grok = round(exp(mu(x) + seed_sd z))
    (NaN where it exceeds the budget) and the budget."""
    swept = [c for c in cells if c.x is not None]
    xs = np.concatenate([np.full(c.seeds, c.x, float) for c in swept]) if swept else np.empty(0)
    budgets = np.concatenate([np.full(c.seeds, c.budget, float) for c in swept]) if swept else np.empty(0)
    mu = np.array([law.log_median(x) for x in xs])
    times = np.round(np.exp(mu + law.seed_sd * rng.standard_normal(xs.size)))
    return xs, np.where(times > budgets, np.nan, times), budgets


@attrs.frozen
class WidthPrediction:
    """The distribution of the interval width on alpha over simulated studies: its median and quartiles,
    and the share of studies that gave no interval."""

    median: float | None
    quartiles: tuple[float | None, float | None]
    no_fit: float
    simulations: int


def predicted_width(law: DelayLawModel, cells: Sequence[CellDesign], interval: IntervalFunction | None = None,
                    simulations: int = 40, seed: int = 0) -> WidthPrediction:
    """Simulate the design ``simulations`` times from the law, take each study's interval on alpha
    (``interval``, default :func:`delay_law_interval`), and summarise the widths high - low."""
    interval = interval or delay_law_interval
    rng = np.random.default_rng(seed)
    widths, failed = [], 0
    for _ in range(simulations):
        found = interval(*simulate_outcomes(law, cells, rng))
        if found is None:
            failed += 1
        else:
            widths.append(found[1] - found[0])
    if not widths:
        return WidthPrediction(None, (None, None), 1.0, simulations)
    low, middle, high = np.percentile(widths, [25, 50, 75])
    return WidthPrediction(float(middle), (float(low), float(high)), failed / simulations, simulations)


def slope_weights(xs: Sequence[float]) -> np.ndarray:
    """OLS slope weights w_c = (x_c - mean x) / sum (x - mean x)^2: alpha = sum w_c ln(median_c)."""
    xs = np.asarray(xs, float)
    deviation = xs - xs.mean()
    spread = float(np.sum(deviation**2))
    return deviation / spread if spread > 0 else np.zeros_like(xs)


def analytic_width(law: DelayLawModel, cells: Sequence[CellDesign], level: float = 0.95,
                   seed_sds: Sequence[float] | None = None) -> float:
    """The large-sample interval width on alpha: 2 z sqrt(sum w_c^2 (pi/2) s_c^2 / n_eff,c), with n_eff =
    seeds * P(T_grok <= B) the expected grokked seeds and s_c the seed spread (``seed_sds``, default the
    law's): the variance of a cell median times the OLS weights. Infinite with fewer than 3 cells."""
    swept = [c for c in cells if c.x is not None]
    if len({c.x for c in swept}) < 3:
        return math.inf
    weights = slope_weights([c.x for c in swept])
    sds = seed_sds if seed_sds is not None else [law.seed_sd] * len(swept)
    variance = 0.0
    for weight, cell, sd in zip(weights, swept, sds):
        grokked = cell.seeds * law.grok_probability(cell.x, cell.budget)
        if grokked <= 0:
            return math.inf
        variance += weight**2 * MEDIAN_VARIANCE_FACTOR * sd**2 / grokked
    return 2 * normal_quantile(0.5 + level / 2) * math.sqrt(variance)


# ---------------------------------------------------------------------------------------------------
# Cheaper designs for the same width.


def seed_value(law: DelayLawModel, cells: Sequence[CellDesign], seed_sds: Sequence[float] | None = None,
               ) -> np.ndarray:
    """Per cell, the drop in the variance of alpha one more seed buys, per expected model-step it costs:
    w_c^2 (pi/2) s_c^2 (1/n_c - 1/(n_c + P)) / E[min(T, B)], with n_c = seeds * P the expected grokked
    seeds and P = P(T <= B)."""
    weights = slope_weights([c.x for c in cells])
    sds = seed_sds if seed_sds is not None else [law.seed_sd] * len(cells)
    values = []
    for weight, cell, sd in zip(weights, cells, sds):
        p = max(law.grok_probability(cell.x, cell.budget), 1e-9)
        n = max(cell.seeds, 1) * p
        gain = weight**2 * MEDIAN_VARIANCE_FACTOR * sd**2 * (1 / n - 1 / (n + p))
        values.append(gain / max(law.expected_steps(cell.x, cell.budget), 1.0))
    return np.array(values)


def allocate_seeds(law: DelayLawModel, cells: Sequence[CellDesign], target_width: float, min_seeds: int = 3,
                   max_seeds: int = 64, level: float = 0.95) -> list[CellDesign] | None:
    """The cells with ``min_seeds`` seeds each, then one seed at a time to the cell with the highest
    :func:`seed_value`, until :func:`analytic_width` <= ``target_width``; None when ``max_seeds`` per cell
    cannot reach it."""
    design = [attrs.evolve(c, seeds=min_seeds) for c in cells]
    while analytic_width(law, design, level) > target_width:
        values = seed_value(law, design)
        values[[c.seeds >= max_seeds for c in design]] = -1.0
        best = int(np.argmax(values))
        if values[best] <= 0:
            return None
        design[best] = attrs.evolve(design[best], seeds=design[best].seeds + 1)
    return design


def level_subsets(xs: Sequence[float]) -> dict[str, list[float]]:
    """Candidate sets of x levels from the file's: all, every other one (ends kept), the ends and the
    middle, and the cheapest ones (the lower part, dropping the top levels while at least 3 stay)."""
    xs = sorted(set(xs))
    subsets = {"every level": xs}
    if len(xs) >= 5:
        subsets["every other level"] = sorted(set(xs[::2]) | {xs[-1]})
    if len(xs) >= 4:
        subsets["ends and middle"] = [xs[0], xs[len(xs) // 2], xs[-1]]
    for drop in range(1, len(xs) - 2):
        subsets[f"without the top {drop}"] = xs[:-drop]
    return subsets


@attrs.frozen
class Suggestion:
    """A cheaper design: its name, its cells (x, seeds, budget), expected model-steps and widths."""

    name: str
    cells: list[CellDesign]
    model_steps: float
    analytic_width: float
    simulated: WidthPrediction | None = None


def suggest_designs(law: DelayLawModel, cells: Sequence[CellDesign], target_width: float | None = None,
                    count: int = 3, min_seeds: int = 3, interval: IntervalFunction | None = None,
                    simulations: int = 20, simulated_width: float | None = None) -> list[Suggestion]:
    """Designs of the swept cells that reach ``target_width`` (default: the file's own analytic width) at
    the fewest expected model-steps: for each of :func:`level_subsets`, budgets from
    :func:`suggested_budget` and seeds from :func:`allocate_seeds`. The ``count`` cheapest, cheaper than
    the file's, are simulated (:func:`predicted_width`); where one's simulated width exceeds
    ``simulated_width`` (the file's own, when given), its target is tightened by the ratio and its seeds
    allocated again, once."""
    swept = [c for c in cells if c.x is not None]
    if len({c.x for c in swept}) < 3:
        return []
    target = target_width if target_width is not None else analytic_width(law, swept)
    own_steps = design_model_steps(law, swept)
    stop = all(c.stop_when_grokked for c in swept)

    def designed(name: str, levels: list[float], goal: float) -> Suggestion | None:
        base = [CellDesign(x, min_seeds, suggested_budget(law, x), stop) for x in levels]
        design = allocate_seeds(law, base, goal, min_seeds)
        if design is None:
            return None
        return Suggestion(name, design, design_model_steps(law, design), analytic_width(law, design))
    subsets = level_subsets([c.x for c in swept])
    found = [s for name, levels in subsets.items() if (s := designed(name, levels, target)) is not None]
    found = sorted((s for s in found if s.model_steps < own_steps), key=lambda s: s.model_steps)[:count]
    checked = []
    for suggestion in found:
        simulated = predicted_width(law, suggestion.cells, interval, simulations)
        if simulated_width and simulated.median and simulated.median > simulated_width:
            tighter = designed(suggestion.name, subsets[suggestion.name], target * simulated_width / simulated.median)
            if tighter is not None:
                suggestion, simulated = tighter, predicted_width(law, tighter.cells, interval, simulations)
        if suggestion.model_steps < own_steps:
            checked.append(attrs.evolve(suggestion, simulated=simulated))
    return sorted(checked, key=lambda s: s.model_steps)


def design_rows(law: DelayLawModel, cells: Sequence[CellDesign], seconds_per_model_step: dict[str, float],
                ) -> list[dict[str, Any]]:
    """Per cell: label, x, seeds, budget, the law's median T_grok and P(grok within budget), expected
    model-steps and (where calibrated) wall seconds."""
    rows = []
    for cell in cells:
        steps = cell_model_steps(law, cell)
        rate = seconds_per_model_step.get(cell.label)
        rows.append({"cell": cell.label, "x": cell.x, "seeds": cell.seeds, "budget": cell.budget,
                     "median_t_grok": law.median_t_grok(cell.x), "grok_probability":
                     law.grok_probability(cell.x, cell.budget), "model_steps": steps,
                     "wall_seconds": steps * rate if rate is not None else None})
    return rows
