"""The adaptive policy's censoring-aware side (issue 17): the AFT interval, the expected information of a
censored seed, budget caps chosen by information per model-step, the replay with the same interval on
both sides, and the live adaptive stage's capped runs."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

from gnorm.adaptive import (AdaptivePolicy, Outcome, StoredSeed, aft_design_bound, current_interval, policy_interval,
                            replay)
from gnorm.adaptive_aft import (AftInterval, AftLaw, alpha_variance, candidate_budgets, censored_information,
                                design_information, next_seed)
from gnorm.analysis.survival import AftModel, SurvivalData, aft_log_likelihood, error_log_terms, fit_aft

RHOS = [0.85, 0.95, 1.05, 1.15, 1.25]
LAW = AftLaw(intercept=math.log(4000) - 7.5, alpha=7.5, log_sigma=math.log(0.1), tau=0.05)


def law_sweep(law: AftLaw, seeds: int = 12, budget_factor: float = 3.0, seed: int = 2) -> dict[float, list[StoredSeed]]:
    """Seeds drawn from ``law`` (one effect per seed, shared across x), each level's budget
    ``budget_factor`` times its median."""
    rng = np.random.default_rng(seed)
    effects = law.tau * rng.standard_normal(seeds)
    sweep = {}
    for x in RHOS:
        budget = int(budget_factor * math.exp(law.mu(x)))
        times = np.round(np.exp(law.mu(x) + effects + law.sigma(x) * rng.standard_normal(seeds)))
        sweep[x] = [StoredSeed(int(t), budget) if t <= budget else StoredSeed(None, budget) for t in times]
    return sweep


# ---------------------------------------------------------------------------------------------------
# The information a censored seed carries.


@pytest.mark.parametrize("z_c", [-2.0, -0.5, 0.0, 0.7, 2.5])
def test_the_censored_information_is_the_expected_negative_curvature_of_the_log_normal_likelihood(z_c):
    # E[-d2 l] over eps ~ N(0,1) censored at z_c, from the likelihood's own second derivatives in z
    z = np.linspace(-12.0, z_c, 200_001)
    density = np.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    _, slope, curvature = error_log_terms(z, np.ones(z.size, bool), "lognormal")
    _, c_slope, c_curv = error_log_terms(np.array([z_c]), np.array([False]), "lognormal")
    tail = 0.5 * math.erfc(z_c / math.sqrt(2))

    def expected(grokked_term, censored_term):
        return np.trapezoid(grokked_term * density, z) + tail * censored_term[0]
    mu_mu = expected(-curvature, -c_curv)
    mu_ls = expected(-(slope + z * curvature), -(c_slope + z_c * c_curv))
    ls_ls = expected(-(z * slope + z**2 * curvature), -(z_c * c_slope + z_c**2 * c_curv))
    assert censored_information(z_c) == pytest.approx(np.array([[mu_mu, mu_ls], [mu_ls, ls_ls]]), abs=1e-4)


def test_an_uncensored_seed_carries_the_full_information_and_a_censored_one_less():
    assert censored_information(9.0) == pytest.approx(np.array([[1.0, 0.0], [0.0, 2.0]]))
    weights = [censored_information(z)[0, 0] for z in (-2.0, -1.0, 0.0, 1.0, 3.0)]
    assert all(a < b for a, b in zip(weights, weights[1:])) and weights[-1] < 1.0


def test_the_laws_expected_steps_and_grok_within_match_draws():
    rng = np.random.default_rng(1)
    for x, budget in [(1.0, 3500), (1.0, 6000), (1.2, 9000)]:
        draws = np.exp(LAW.mu(x) + LAW.sigma(x) * rng.standard_normal(400_000))
        assert LAW.expected_steps(x, budget) == pytest.approx(np.minimum(draws, budget).mean(), rel=2e-3)
        beyond = draws[draws > budget]
        assert LAW.grok_within(x, budget, 1.5) == pytest.approx((beyond <= 1.5 * budget).mean(), abs=0.01)


def test_the_design_information_is_the_generalized_least_squares_one_with_a_seed_effect():
    runs = [(0, 0.85, 9000), (0, 1.25, 30000), (1, 0.85, 9000), (1, 1.05, 5000), (2, 1.25, 20000)]
    by_seed = {}
    for seed, x, budget in runs:
        by_seed.setdefault(seed, []).append((x, budget))
    dense = np.zeros((2, 2))
    for seed_runs in by_seed.values():
        u = np.array([[1.0, x] for x, _ in seed_runs])
        covariance = np.diag([LAW.run_variance(x, b) for x, b in seed_runs]) + LAW.tau**2
        dense += u.T @ np.linalg.inv(covariance) @ u
    assert design_information(LAW, runs) == pytest.approx(dense, rel=1e-9)
    # a seed effect is cancelled by running the same seed at both ends: more information on alpha
    same = [(0, 0.85, 10**6), (0, 1.25, 10**7), (1, 0.85, 10**6), (1, 1.25, 10**7)]
    crossed = [(0, 0.85, 10**6), (1, 1.25, 10**7), (2, 0.85, 10**6), (3, 1.25, 10**7)]
    assert alpha_variance(design_information(LAW, same)) < alpha_variance(design_information(LAW, crossed))


# ---------------------------------------------------------------------------------------------------
# The next seed and its budget.


def test_candidate_budgets_are_the_laws_quantiles_below_the_cells_budget():
    budgets = candidate_budgets(LAW, 1.05, 8000, [0.2, 0.5, 0.999999])  # the last quantile is past 8000
    assert budgets[-1] == 8000 and len(budgets) == 3
    assert budgets[:2] == [math.ceil(LAW.quantile(1.05, 0.2)), math.ceil(LAW.quantile(1.05, 0.5))]


def test_a_cap_is_chosen_where_the_spread_is_wide_and_never_when_it_would_put_the_target_out_of_reach():
    wide = AftLaw(LAW.intercept, LAW.alpha, math.log(0.8), tau=0.0)
    budgets = {x: int(20 * math.exp(wide.mu(x))) for x in RHOS}
    trained = [(i, x, budgets[x]) for x in RHOS for i in range(3)]
    pools = {x: list(range(3, 12)) for x in RHOS}
    x, budget = next_seed(wide, trained, budgets, pools, [0.3, 0.5])
    assert budget < budgets[x]  # with a wide spread a capped seed buys more per step
    full = design_information(wide, trained + [(s, x, budgets[x]) for x in RHOS for s in pools[x]])
    reachable = 2 * 1.959964 * math.sqrt(alpha_variance(full)) * 1.0001  # only with every pooled seed uncapped
    x, budget = next_seed(wide, trained, budgets, pools, [0.3, 0.5], target_width=reachable)
    assert budget == budgets[x]
    x, budget = next_seed(wide, trained, budgets, pools, [0.3, 0.5], target_width=reachable / 2)
    assert budget < budgets[x]  # out of reach anyway: caps still buy more per step
    narrow = AftLaw(LAW.intercept, LAW.alpha, math.log(0.05), tau=0.0)  # a narrow spread: caps cost more than they save
    x, budget = next_seed(narrow, trained, budgets, pools, [0.3, 0.5])
    assert budget == budgets[x]
    assert next_seed(LAW, trained, budgets, {x: [] for x in RHOS}) is None


# ---------------------------------------------------------------------------------------------------
# The replay with the AFT interval on both sides.


def test_the_aft_replay_takes_both_widths_with_the_same_fit_and_counts_steps_alike():
    sweep = law_sweep(LAW)
    policy = AdaptivePolicy(interval="aft")
    result = replay(sweep, policy)
    every = [Outcome(x, i, s.t_grok, s.budget, 0) for x, seeds in sweep.items() for i, s in enumerate(seeds)]
    assert result.full_interval == pytest.approx(current_interval(every, AftInterval()))
    width = result.interval[1] - result.interval[0]
    assert result.reached and width <= result.full_interval[1] - result.full_interval[0]
    assert result.model_steps <= result.full_model_steps
    assert result.model_steps == sum(o.model_steps for o in result.outcomes)
    for outcome in result.outcomes:  # each seed to its T_grok or its budget, whichever first
        stored = sweep[outcome.x][outcome.seed_index]
        assert outcome.model_steps == (stored.t_grok if outcome.t_grok is not None else outcome.budget)


def test_a_seed_the_policy_caps_costs_its_cap_and_is_not_extended():
    wide = AftLaw(LAW.intercept, LAW.alpha, math.log(0.7), tau=0.0)
    sweep = law_sweep(wide, seeds=16, budget_factor=20.0)
    result = replay(sweep, AdaptivePolicy(interval="aft", budget_quantiles=[0.3, 0.6], target_width=1e-3,
                                         max_model_steps=400_000))
    capped = [o for o in result.outcomes if o.budget < result.cell_budgets[o.x]]
    assert capped and result.extended == 0
    for outcome in capped:
        stored = sweep[outcome.x][outcome.seed_index]
        grokked = stored.t_grok is not None and stored.t_grok <= outcome.budget
        assert outcome.t_grok == (stored.t_grok if grokked else None)
        assert outcome.model_steps == (stored.t_grok if grokked else outcome.budget)


def test_the_aft_interval_reads_censored_seeds_and_the_seed_effect():
    sweep = law_sweep(LAW, budget_factor=1.05)  # about a third censored at every level
    outcomes = [Outcome(x, i, s.t_grok, s.budget, 0) for x, seeds in sweep.items() for i, s in enumerate(seeds)]
    assert any(o.t_grok is None for o in outcomes)
    x = np.array([o.x for o in outcomes])
    t = np.array([math.nan if o.t_grok is None else o.t_grok for o in outcomes])
    b = np.array([o.budget for o in outcomes], float)
    seeds = np.array([o.seed_index for o in outcomes])
    fit = fit_aft(SurvivalData.build(np.where(np.isnan(t), b, t), ~np.isnan(t), x, None, seeds),
                  AftModel("lognormal", True, 16))
    assert AftInterval()(x, t, b, seeds) == pytest.approx(fit.wald_interval(0.95))
    low, high = AftInterval()(x, t, b, seeds)
    assert low < LAW.alpha < high
    assert AftInterval()(x[:2], t[:2], b[:2]) is None


def test_the_policy_interval_is_the_bootstrap_unless_aft_is_asked_for():
    assert isinstance(policy_interval(AdaptivePolicy(interval="aft", scale_slope=True)), AftInterval)
    assert policy_interval(AdaptivePolicy(interval="aft", scale_slope=True)).scale_slope
    assert not isinstance(policy_interval(AdaptivePolicy()), AftInterval)
    with pytest.raises(ValueError, match="budget_quantiles"):
        AdaptivePolicy(budget_quantiles=[0.5])
    with pytest.raises(ValueError, match="interval"):
        AdaptivePolicy(interval="profile")
    with pytest.raises(ValueError, match="budget_quantiles"):
        AdaptivePolicy(interval="aft", budget_quantiles=[1.5])


# ---------------------------------------------------------------------------------------------------
# The scale that moves with x.


def test_the_scale_slopes_gradient_is_exact_and_the_fit_recovers_it():
    rng = np.random.default_rng(4)
    x = np.repeat(RHOS, 40)
    log_sigma = math.log(0.3) - 2.0 * (x - 1.05)
    seeds = np.tile(np.arange(40), len(RHOS))
    effects = 0.1 * rng.standard_normal(40)[seeds]
    times = np.exp(1.0 + 6.0 * x + effects + np.exp(log_sigma) * rng.standard_normal(x.size))
    budget = np.exp(1.0 + 6.0 * x + 0.25)
    data = SurvivalData.build(np.minimum(times, budget), times <= budget, x, None, seeds)
    for model in (AftModel("lognormal", False, 12, True), AftModel("weibull", True, 12, True)):
        theta = np.array([1.0, 6.0, math.log(0.3) + 2.1] + ([math.log(0.1)] if model.seed_effect else []) + [-2.0])
        value, gradient = aft_log_likelihood(theta, data, model)
        numeric = [(aft_log_likelihood(theta + h, data, model)[0] - aft_log_likelihood(theta - h, data, model)[0])
                   / 2e-6 for h in np.eye(theta.size) * 1e-6]
        assert gradient == pytest.approx(numeric, rel=1e-5, abs=1e-3)
    fit = fit_aft(data, AftModel("lognormal", True, 16, True))
    assert fit.scale_slope == pytest.approx(-2.0, abs=0.5) and fit.alpha == pytest.approx(6.0, abs=0.2)
    assert fit.sigma_at(1.05) == pytest.approx(0.3, rel=0.15)
    assert fit.parameters == 5 and AftModel().parameter_count(1) == 3  # the default model is unchanged


# ---------------------------------------------------------------------------------------------------
# The live adaptive stage.


def test_a_live_aft_stage_caps_a_seed_as_the_run_a_plain_file_with_that_budget_holds(tmp_path):
    from gnorm.adaptive_stage import extended_run, next_round, stage_outcomes
    from test_plan import adaptive_file, fake_record, loaded

    table = {"target_width": 1e-3, "initial_seeds": 3, "seeds_per_round": 3, "interval": "aft",
             "budget_quantiles": [0.3], "extend_factor": 1.0}
    experiment = loaded(adaptive_file(tmp_path, table, seeds=8, max_steps=200_000))
    rng = np.random.default_rng(0)
    wide = AftLaw(math.log(400) - 6.0, 6.0, math.log(0.8))

    def outcome(run):
        if not run.cell:
            return fake_record(run, 600)
        t = int(math.exp(wide.mu(run.cell["controller.rho"]) + 0.8 * rng.standard_normal()))
        return fake_record(run, t if t <= run.training.max_steps else None)
    stored = [outcome(run) for run in next_round(experiment, []).runs]
    second = next_round(experiment, stored)
    added = [r for r in second.stages[1].runs if r.run_id not in {s.run_id for s in stored}]
    capped = [r for r in added if r.training.max_steps < 200_000]
    assert added and capped  # a wide spread and no reachable target: caps pay
    pool = {(r.cell["controller.rho"], r.seed): r for r in experiment.stages[1].runs}
    for run in capped:
        assert run.run_id == extended_run(pool[(run.cell["controller.rho"], run.seed)], run.training.max_steps).run_id
        assert run.run_id != pool[(run.cell["controller.rho"], run.seed)].run_id  # a different budget, a different run
    plain_ids = {r.run_id for r in experiment.stages[1].runs}
    assert all(r.run_id in plain_ids for r in added if r not in capped)  # uncapped seeds keep the plain ids
    stored += [outcome(run) for run in added]
    outcomes, runs = stage_outcomes(experiment.stages[1], {r.run_id: r for r in stored})
    assert {r.run_id for r in capped} <= {r.run_id for r in runs}  # a stored capped run counts as that seed
    third = next_round(experiment, stored)
    again = [r for r in third.stages[1].runs if r.run_id not in {s.run_id for s in stored}]
    seed_of = lambda runs: {(r.cell["controller.rho"], r.seed) for r in runs}  # noqa: E731
    assert not seed_of(again) & seed_of(capped)  # a capped seed is not trained again


def test_a_bad_adaptive_interval_or_quantile_is_named_by_its_key(tmp_path):
    from gnorm.errors import UserError
    from test_plan import adaptive_file, loaded

    for table, key in [({"interval": "wald"}, "stage[clamp].adaptive.interval"),
                       ({"budget_quantiles": [0.5]}, "stage[clamp].adaptive.budget_quantiles")]:
        with pytest.raises(UserError) as error:
            loaded(adaptive_file(tmp_path, table))
        assert any(p.key == key for p in error.value.problems), [str(p) for p in error.value.problems]


# ---------------------------------------------------------------------------------------------------
# On paper A's released dense sweep (skipped where ../shared/reference is absent).

REFERENCE = Path(os.environ.get("GNORM_REFERENCE", Path(__file__).resolve().parents[2] / "shared" / "reference"))


@pytest.mark.skipif(not (REFERENCE / "paper-a" / "denserho").is_dir(), reason=f"no reference data at {REFERENCE}")
def test_on_the_dense_sweep_no_design_from_its_seeds_reaches_the_aft_width_at_half_the_steps(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from adaptive_replay import dense_sweep

    sweep = dense_sweep(REFERENCE / "paper-a" / "denserho")
    steps, full_steps, seeds, capped = aft_design_bound(sweep, AdaptivePolicy(interval="aft",
                                                                              budget_quantiles=[0.2, 0.5, 0.8]))
    assert full_steps / steps < 1.2 and capped == 0  # the README's yardstick: 1.06x


# ---------------------------------------------------------------------------------------------------
# gnorm plan --replay --interval aft.


def small_store(path: Path) -> Path:
    from gnorm.components import RunRecord
    from gnorm.store import Store

    store = Store(path, create=True)
    sweep = law_sweep(LAW, seeds=6)
    records = [RunRecord(f"r{i}-{x}", "clamp", {"controller.rho": x}, i, {"controller": {"name": "clamp", "rho": x}},
                         10, s.t_grok, 50.0, s.budget) for x, seeds in sweep.items() for i, s in enumerate(seeds)]
    for record in records:
        store.write_run(record, [0], {k: [0.0] for k in ("train_loss", "test_loss", "train_acc", "test_acc",
                                                         "weight_norm")})
    store.add_to_plan([(r.run_id, r.stage, r.cell) for r in records])
    store.close()
    return path


def test_gnorm_plan_replays_with_the_aft_interval_on_both_sides(tmp_path):
    import json

    from click.testing import CliRunner

    from gnorm.cli import main

    runs = small_store(tmp_path / "runs")
    result = CliRunner().invoke(main, ["plan", "--replay", str(runs), "--interval", "aft", "--budget-quantile", "0.5",
                                       "--json", "-"])
    assert result.exit_code == 0, result.output
    numbers = json.loads(result.output)
    assert numbers["interval_function"].startswith("log-normal AFT fit")
    assert numbers["policy"]["budget_quantiles"] == [0.5]
    assert numbers["bound"]["full_model_steps"] > 0 and numbers["model_steps"] <= numbers["full_model_steps"]
    printed = CliRunner().invoke(main, ["plan", "--replay", str(runs), "--interval", "aft"])
    assert printed.exit_code == 0 and "interval (both sides): log-normal AFT fit" in printed.output
    assert "yardstick" in printed.output


@pytest.mark.parametrize("arguments, named", [
    (["--budget-quantile", "0.5"], "--budget-quantile"),
    (["--scale-slope"], "--scale-slope"),
    (["--interval", "aft", "--budget-quantile", "1.5"], "--budget-quantile"),
])
def test_a_replay_option_that_needs_the_aft_interval_is_refused_in_one_line(tmp_path, arguments, named):
    from click.testing import CliRunner

    from gnorm.cli import main

    runs = small_store(tmp_path / "runs")
    result = CliRunner().invoke(main, ["plan", "--replay", str(runs)] + arguments)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and named in lines[0] and "Traceback" not in result.output
