"""Law-driven budgets (issue 17): the cost and width predictions as pure functions, the adaptive policy
replayed on a small synthetic sweep, and ``gnorm plan`` on a tiny file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from builders import FREE, clamp_stage, write_study
from gnorm.adaptive import (AdaptivePolicy, Outcome, StoredSeed, extension_budget, observed_cells, replay, reveal,
                            sweep_from_records)
from gnorm.budget import (PRIORS, CellDesign, DelayLawModel, allocate_seeds, analytic_width, cell_model_steps,
                          cell_seed_sds, free_t_grok_prior, law_from_times, normal_quantile, predicted_width,
                          prior_law, simulate_outcomes, suggest_designs, suggested_budget)
from gnorm.cli import main
from gnorm.components import RunRecord
from gnorm.runmodel import cells_of
from gnorm.store import Store

LAW = DelayLawModel(intercept=math.log(4000) - 7.5, alpha=7.5, seed_sd=0.1, source="test")
RHOS = [0.85, 0.95, 1.05, 1.15, 1.25]


# ---------------------------------------------------------------------------------------------------
# The law and what a cell costs.


def test_expected_steps_is_the_mean_of_min_t_grok_and_budget_over_log_normal_seeds():
    rng = np.random.default_rng(1)
    for x, budget in [(1.0, 3000), (1.0, 4000), (1.0, 6000), (1.2, 9000)]:
        draws = np.exp(LAW.log_median(x) + LAW.seed_sd * rng.standard_normal(200_000))
        assert LAW.expected_steps(x, budget) == pytest.approx(np.minimum(draws, budget).mean(), rel=2e-3)
        assert LAW.grok_probability(x, budget) == pytest.approx((draws <= budget).mean(), abs=3e-3)


def test_a_cell_that_stops_at_grok_costs_less_than_its_seeds_times_budget_and_one_that_does_not_costs_that():
    stopping = CellDesign(1.0, 8, 12000, stop_when_grokked=True)
    assert cell_model_steps(LAW, stopping) == pytest.approx(8 * LAW.expected_steps(1.0, 12000))
    assert cell_model_steps(LAW, stopping) < 8 * 12000 * 0.4
    assert cell_model_steps(LAW, CellDesign(1.0, 8, 12000, stop_when_grokked=False)) == 8 * 12000


def test_the_mlp_prior_is_paper_a_dense_sweep_at_its_own_setting_and_moves_with_p_and_lr():
    law = prior_law("mlp", 59, 1e-3)
    assert law.alpha == PRIORS["mlp"].alpha == 7.64
    assert law.median_t_grok(1.0) == pytest.approx(3999)
    assert free_t_grok_prior(97) == pytest.approx(2900) and free_t_grok_prior(59) == pytest.approx(5100)
    assert prior_law("mlp", 97, 1e-3).median_t_grok(1.0) == pytest.approx(3999 * 2900 / 5100)
    assert prior_law("mlp", 59, 8e-3).median_t_grok(1.0) == pytest.approx(3999 * 1256 / 4077)  # rho x lr matrix
    assert prior_law("transformer", 59, 5e-4).alpha == 15.45
    assert "no prior" in prior_law("resnet", 59, 1e-3).source


def test_the_law_fitted_to_stored_times_recovers_the_slope_and_the_seed_spread():
    rng = np.random.default_rng(3)
    cells = {x: [int(t) for t in np.exp(LAW.log_median(x) + 0.1 * rng.standard_normal(400))] for x in RHOS}
    cells[1.25][:5] = [None] * 5  # censored seeds are left out of the medians
    law = law_from_times(cells, free_times=[5000, None, 5200])
    assert law.alpha == pytest.approx(7.5, abs=0.1)
    assert law.seed_sd == pytest.approx(0.1, rel=0.05)
    assert law.free_t_grok == 5100
    assert law_from_times({1.0: [4000, 4100]}) is None  # one level: no slope


def test_the_budget_suggested_for_a_cell_holds_almost_every_seed():
    budget = suggested_budget(LAW, 1.1)
    assert LAW.grok_probability(1.1, budget) > 0.99 and budget % 500 == 0
    assert budget < 2 * LAW.quantile(1.1, 0.99)


# ---------------------------------------------------------------------------------------------------
# The width a design reaches.


def test_the_large_sample_width_halves_with_four_times_the_seeds_and_needs_three_levels():
    few = [CellDesign(x, 4, 10**6) for x in RHOS]
    many = [CellDesign(x, 16, 10**6) for x in RHOS]
    assert analytic_width(LAW, many) == pytest.approx(analytic_width(LAW, few) / 2)
    assert analytic_width(LAW, few[:2]) == math.inf
    # by hand: w_c = (x - mean)/Sxx, var = sum w^2 (pi/2) s^2 / n
    weights = (np.array(RHOS) - 1.05) / np.sum((np.array(RHOS) - 1.05) ** 2)
    expected = 2 * 1.959964 * math.sqrt(np.sum(weights**2) * math.pi / 2 * 0.01 / 4)
    assert analytic_width(LAW, few) == pytest.approx(expected, rel=1e-4)


def test_simulated_studies_censor_seeds_past_their_budget():
    at_median = CellDesign(1.25, 200, int(LAW.median_t_grok(1.25)))
    x, t, budget = simulate_outcomes(LAW, [at_median, CellDesign(None, 5, 100)], np.random.default_rng(0))
    assert x.size == 200  # the free cell is not part of the sweep
    censored = np.isnan(t).mean()
    assert censored == pytest.approx(0.5, abs=0.1)


def test_the_predicted_width_uses_the_interval_function_it_is_given_on_per_seed_arrays():
    seen = []

    def interval(x, t, budget):
        seen.append((x.size, int(np.isnan(t).sum()), set(budget.tolist())))
        slope = np.polyfit(x[~np.isnan(t)], np.log(t[~np.isnan(t)]), 1)[0]
        return slope - 0.5, slope + 0.5

    width = predicted_width(LAW, [CellDesign(x, 6, 50000) for x in RHOS], interval, simulations=5)
    assert width.median == pytest.approx(1.0) and width.no_fit == 0
    assert len(seen) == 5 and all(size == 30 and budgets == {50000.0} for size, _, budgets in seen)
    assert predicted_width(LAW, [CellDesign(x, 6, 50000) for x in RHOS], lambda *a: None, 3).median is None


def test_the_bootstrap_width_the_design_reaches_narrows_with_more_seeds():
    few = predicted_width(LAW, [CellDesign(x, 4, 10**6) for x in RHOS], simulations=8)
    many = predicted_width(LAW, [CellDesign(x, 16, 10**6) for x in RHOS], simulations=8)
    assert many.median < 0.75 * few.median


def test_seeds_go_first_to_cheap_cells_far_from_the_middle_and_the_target_is_reached():
    cells = [CellDesign(x, 3, suggested_budget(LAW, x)) for x in RHOS]
    target = analytic_width(LAW, [CellDesign(x, 12, 10**6) for x in RHOS])
    design = allocate_seeds(LAW, cells, target)
    seeds = {c.x: c.seeds for c in design}
    assert analytic_width(LAW, design) <= target
    assert seeds[1.05] == 3  # the middle level does not move the slope
    assert seeds[0.85] > seeds[1.25]  # same leverage, a fraction of the cost
    assert allocate_seeds(LAW, cells, target / 100, max_seeds=10) is None


def test_suggested_designs_are_cheaper_than_the_file_and_about_as_precise():
    own = [CellDesign(x, 16, 80000) for x in RHOS]
    suggestions = suggest_designs(LAW, own, simulations=4)
    assert suggestions
    own_steps = sum(cell_model_steps(LAW, c) for c in own)
    for suggestion in suggestions:
        assert suggestion.model_steps < own_steps
        assert suggestion.analytic_width <= analytic_width(LAW, own) + 1e-9
    assert suggestions == sorted(suggestions, key=lambda s: s.model_steps)


# ---------------------------------------------------------------------------------------------------
# The adaptive policy and its replay.


def synthetic_sweep(seeds: int = 12, budget: int = 60000, seed: int = 5) -> dict[float, list[StoredSeed]]:
    rng = np.random.default_rng(seed)
    return {x: [StoredSeed(int(t), budget) if t <= budget else StoredSeed(None, budget)
                for t in np.exp(LAW.log_median(x) + LAW.seed_sd * rng.standard_normal(seeds))] for x in RHOS}


def test_revealing_a_seed_shows_its_stored_outcome_censored_at_a_shorter_budget():
    assert reveal(StoredSeed(3000, 8000), 5000) == (3000, 3000)
    assert reveal(StoredSeed(6000, 8000), 5000) == (None, 5000)
    assert reveal(StoredSeed(None, 8000), 20000) == (None, 8000)  # nothing is known past the stored budget


def test_a_censored_seed_is_extended_only_when_the_law_predicts_grokking_within_the_factor():
    policy = AdaptivePolicy(extend_factor=2.0)
    median = LAW.median_t_grok(1.2)
    assert extension_budget(LAW, 1.2, int(median * 0.7), policy) == math.ceil(2 * int(median * 0.7))
    assert extension_budget(LAW, 1.2, int(median * 0.3), policy) is None  # 2 x budget still far short
    assert extension_budget(LAW, 1.2, int(median * 0.7), AdaptivePolicy(extend_factor=1.0)) is None


def test_the_replay_reaches_the_full_sweeps_width_with_fewer_model_steps_adding_seeds_in_file_order():
    sweep = synthetic_sweep()
    result = replay(sweep, AdaptivePolicy())
    full_width = result.full_interval[1] - result.full_interval[0]
    assert result.reached and result.interval[1] - result.interval[0] <= full_width
    assert result.model_steps < result.full_model_steps
    assert result.full_model_steps == sum(s.t_grok for seeds in sweep.values() for s in seeds)
    assert sum(o.model_steps for o in result.outcomes) == result.model_steps
    for x, count in result.seeds.items():  # each cell's seeds are the first ones of the file
        assert sorted(o.seed_index for o in result.outcomes if o.x == x) == list(range(count))
    assert result.seeds[1.05] == 3 < max(result.seeds.values())


def test_the_replay_stops_at_the_compute_budget():
    result = replay(synthetic_sweep(), AdaptivePolicy(target_width=1e-6, max_model_steps=200_000))
    assert not result.reached
    last_seed = max(o.model_steps for o in result.outcomes)
    assert 200_000 <= result.model_steps < 200_000 + last_seed + 1


def test_the_replay_extends_seeds_censored_by_a_short_first_budget():
    sweep = synthetic_sweep()
    short = {x: int(LAW.median_t_grok(x) * (0.9 if x == 1.25 else 3)) for x in RHOS}
    result = replay(sweep, AdaptivePolicy(extend_factor=2.0), budgets=short)
    assert result.extended > 0
    retrained = [o for o in result.outcomes if o.x == 1.25 and o.budget > short[1.25]]
    assert retrained and all(o.budget == math.ceil(2 * short[1.25]) for o in retrained)
    cells = observed_cells(result.outcomes)
    assert len(cells[1.25]) == result.seeds[1.25]  # a retrained seed is counted once
    never = replay(sweep, AdaptivePolicy(extend_factor=1.0), budgets=short)
    assert never.extended == 0


def test_a_sweep_is_read_from_store_records_in_seed_order():
    def record(seed, rho, t):
        return RunRecord(f"r{seed}-{rho}", "clamp", {"controller.rho": rho}, seed,
                         {"controller": {"name": "clamp", "rho": rho}}, 10, t, 50.0, 9000)
    records = [record(2, 1.0, 300), record(1, 1.0, None), record(1, 0.9, 200),
               RunRecord("f", "free", {}, 1, {"controller": {"name": "free"}}, 10, 100, 50.0, 9000)]
    assert sweep_from_records(records) == {0.9: [StoredSeed(200, 9000)],
                                           1.0: [StoredSeed(None, 9000), StoredSeed(300, 9000)]}
    assert sweep_from_records(records, stage="free") == {}


def test_each_cells_seed_spread_is_shrunk_to_the_pooled_one():
    spreads = cell_seed_sds({1.0: [1000, 1000, 1000], 1.1: [None, 2000]}, pooled_sd=0.2, prior_seeds=2)
    assert spreads[1.0] == pytest.approx(math.sqrt(2 * 0.04 / 4))
    assert spreads[1.1] == pytest.approx(0.2)


def test_normal_quantile_inverts_the_cdf():
    assert normal_quantile(0.975) == pytest.approx(1.959964, abs=1e-5)


# ---------------------------------------------------------------------------------------------------
# The command.


def tiny_file(tmp_path: Path) -> Path:
    return write_study(tmp_path, experiment={"seeds": 3}, training={"max_steps": 400},
                       stages=[FREE, clamp_stage(rhos=(0.9, 1.0, 1.1))])


def test_gnorm_plan_prints_each_cells_cost_and_the_predicted_width(tmp_path):
    out = tmp_path / "plan.json"
    result = CliRunner().invoke(main, ["plan", str(tiny_file(tmp_path)), "--calibrate", "2", "--simulations", "4",
                                       "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "[clamp] rho=0.9" in result.output and "predicted 95% interval width" in result.output
    numbers = json.loads(out.read_text())
    assert [row["cell"] for row in numbers["cells"]] == ["[free] (all)", "[clamp] rho=0.9", "[clamp] rho=1.0",
                                                         "[clamp] rho=1.1"]
    for row in numbers["cells"]:
        assert 0 < row["model_steps"] <= 3 * 400 and row["wall_seconds"] > 0
    assert numbers["model_steps"] == pytest.approx(sum(row["model_steps"] for row in numbers["cells"]))
    assert numbers["stages"][0]["stage"] == "clamp" and numbers["stages"][0]["predicted_width"]["simulations"] == 4
    assert numbers["law_source"] == "priors"


def test_gnorm_plan_fits_the_law_from_a_store_and_writes_json_to_stdout(tmp_path):
    store = Store(tmp_path / "runs", create=True)
    rng = np.random.default_rng(0)
    records = [RunRecord(f"r{seed}-{rho}", "clamp", {"controller.rho": rho}, seed,
                         {"controller": {"name": "clamp", "rho": rho}}, 10,
                         int(np.exp(LAW.log_median(rho) + 0.05 * rng.standard_normal())), 50.0, 20000)
               for seed in range(4) for rho in (0.9, 1.0, 1.1)]
    for record in records:
        store.write_run(record, [0], {k: [0.0] for k in ("train_loss", "test_loss", "train_acc", "test_acc",
                                                         "weight_norm")})
    store.add_to_plan([(r.run_id, r.stage, r.cell) for r in records])
    store.close()
    result = CliRunner().invoke(main, ["plan", str(tiny_file(tmp_path)), "--from", str(tmp_path / "runs"),
                                       "--calibrate", "0", "--simulations", "3", "--json", "-"])
    assert result.exit_code == 0, result.output
    numbers = json.loads(result.output)
    law = numbers["laws"]["[clamp] rho=1.0"]
    assert law["alpha"] == pytest.approx(7.5, abs=1.0) and "fitted to" in law["source"]
    assert numbers["cells"][0]["wall_seconds"] is None  # no calibration asked for
    assert "prior" in numbers["laws"]["[free] (all)"]["source"]  # the store has no free runs
    replayed = CliRunner().invoke(main, ["plan", "--replay", str(tmp_path / "runs"), "--initial-seeds", "3"])
    assert replayed.exit_code == 0, replayed.output
    assert "full sweep: 12 seeds" in replayed.output and "saving:" in replayed.output


@pytest.mark.parametrize("arguments, named", [
    (["plan"], "FILE"),
    (["plan", "missing.toml"], "missing.toml"),
    (["plan", "{file}", "--from", "{tmp}/nowhere"], "nowhere"),
    (["plan", "{file}", "--replay", "{tmp}"], "--replay"),
    (["plan", "--replay", "{tmp}/nowhere"], "nowhere"),
    (["plan", "--replay", "{tmp}/empty"], "--replay"),
    (["plan", "--replay", "{tmp}/empty", "--extend-factor", "-1"], "--extend-factor"),
    (["plan", "{file}", "--set", "training.max_steps=-5"], "max_steps"),
])
def test_bad_input_is_one_line_naming_what_is_wrong_and_exit_status_2(tmp_path, arguments, named):
    file = tiny_file(tmp_path)
    Store(tmp_path / "empty", create=True).close()
    arguments = [a.format(file=file, tmp=tmp_path) for a in arguments]
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and named in lines[0] and "Traceback" not in result.output


# ---------------------------------------------------------------------------------------------------
# The adaptive stage.


def adaptive_file(tmp_path: Path, adaptive: dict | None, seeds: int = 6, max_steps: int = 400,
                  name: str = "tiny.toml", clamp_steps: int | None = None) -> Path:
    clamp = clamp_stage(rhos=(0.9, 1.0, 1.1))
    if clamp_steps is not None:
        clamp["training"] = {"max_steps": clamp_steps}
    if adaptive is not None:
        clamp["adaptive"] = adaptive
    return write_study(tmp_path, experiment={"seeds": seeds}, training={"max_steps": max_steps},
                       stages=[FREE, clamp], filename=name)


def loaded(path: Path):
    from gnorm.loader import load_experiment
    from gnorm.registry import build_registry

    return load_experiment(path, build_registry(autoload=False))


def fake_record(run, t_grok):
    return RunRecord(run.run_id, run.stage, run.cell, run.seed, run.plain(), 10, t_grok, 50.0,
                     run.training.max_steps)


def test_an_adaptive_stage_keeps_the_run_ids_of_the_plain_stage(tmp_path):
    plain = loaded(adaptive_file(tmp_path, None, name="plain.toml"))
    adaptive = loaded(adaptive_file(tmp_path, {"target_width": 1.0, "initial_seeds": 3}))
    assert [r.run_id for r in adaptive.runs] == [r.run_id for r in plain.runs]
    assert adaptive.stages[1].adaptive.target_width == 1.0 and plain.stages[1].adaptive is None


@pytest.mark.parametrize("table, key", [
    ({"target_wdth": 1.0}, "stage[clamp].adaptive.target_wdth"),
    ({"target_width": -1.0}, "stage[clamp].adaptive.target_width"),
    ({"extend_factor": 0.5}, "stage[clamp].adaptive.extend_factor"),
    ({"initial_seeds": 1.5}, "stage[clamp].adaptive.initial_seeds"),
])
def test_a_bad_adaptive_table_is_named_by_its_key(tmp_path, table, key):
    from gnorm.errors import UserError

    with pytest.raises(UserError) as error:
        loaded(adaptive_file(tmp_path, table))
    assert any(problem.key == key for problem in error.value.problems), [str(p) for p in error.value.problems]


def test_an_adaptive_stage_needs_three_levels_of_rho(tmp_path):
    from gnorm.errors import UserError

    clamp = clamp_stage(rhos=(0.9, 1.1))
    clamp["adaptive"] = {"target_width": 1.0}
    with pytest.raises(UserError) as error:
        loaded(write_study(tmp_path, stages=[FREE, clamp]))
    assert [p.key for p in error.value.problems] == ["stage[clamp].adaptive"]


def test_the_rounds_start_with_the_first_seeds_then_add_seeds_in_file_order_until_the_width(tmp_path):
    from gnorm.adaptive_stage import next_round

    experiment = loaded(adaptive_file(tmp_path, {"target_width": 0.05, "initial_seeds": 3, "seeds_per_round": 2}))
    pool = {cell_runs[0].cell["controller.rho"]: cell_runs for cell_runs in cells_of(experiment.stages[1].runs)}
    first = next_round(experiment, [])
    assert first.stages[0].runs == experiment.stages[0].runs  # a plain stage trains whole
    assert [r.run_id for r in first.stages[1].runs] == [r.run_id for x in sorted(pool) for r in pool[x][:3]]
    rng = np.random.default_rng(0)
    stored = [fake_record(run, int(LAW.median_t_grok(run.cell["controller.rho"]) * math.exp(0.1 * rng.standard_normal()))
                          if run.cell else 600) for run in first.runs]
    second = next_round(experiment, stored)
    added = [r for r in second.stages[1].runs if r.run_id not in {s.run_id for s in stored}]
    assert len(added) == 2
    for run in added:  # the next seeds of their cells, with the plain stage's ids
        cell = pool[run.cell["controller.rho"]]
        assert run in cell[3:5]
    assert next_round(experiment, stored + [fake_record(r, 5000) for r in added]) is not None
    wide_enough = loaded(adaptive_file(tmp_path, {"target_width": 50.0}, name="wide.toml"))
    assert next_round(wide_enough, [fake_record(r, int(LAW.median_t_grok(r.cell["controller.rho"])) + r.seed
                                                if r.cell else 600) for r in next_round(wide_enough, []).runs]) is None


def test_a_censored_seed_is_retrained_as_the_run_a_plain_file_with_the_longer_budget_holds(tmp_path):
    from gnorm.adaptive_stage import next_round

    experiment = loaded(adaptive_file(tmp_path, {"target_width": 1e-3, "initial_seeds": 3, "extend_factor": 2.0},
                                      max_steps=2000))
    first = next_round(experiment, []).runs
    times = {0.9: [300, 320, 340], 1.0: [700, 760, 800], 1.1: [1500, 1700, None]}
    stored = []
    for run in first:
        if run.stage == "free":
            stored.append(fake_record(run, 600))
            continue
        position = [r.seed for r in first if r.cell == run.cell].index(run.seed)
        stored.append(fake_record(run, times[run.cell["controller.rho"]][position]))
    second = next_round(experiment, stored)
    longer = [r for r in second.runs if r.training.max_steps == 4000]
    assert len(longer) == 1 and longer[0].cell == {"controller.rho": 1.1}
    plain_long = loaded(adaptive_file(tmp_path, None, max_steps=2000, clamp_steps=4000, name="long.toml"))
    assert longer[0].run_id in {r.run_id for r in plain_long.runs}


def test_the_default_interval_is_the_delay_law_analyzers_bootstrap():
    from gnorm.budget import delay_law_interval
    from gnorm.builtins.analyzers.delay_law import fit_delay_law

    cells = {0.9: [1800, 2000, None, 2100], 1.0: [3900, 4100, 4000], 1.1: [9000, 8000, 8800, 9900], 1.2: [None, 1]}
    x = np.array([k for k, v in cells.items() for _ in v], float)
    t = np.array([math.nan if s is None else s for v in cells.values() for s in v], float)
    interval = delay_law_interval(x, t, np.full(x.size, 10000.0), resamples=300, seed=4)
    assert interval == pytest.approx(tuple(fit_delay_law(cells, 3, 300, 0.95, 4)["alpha_ci"]))
    assert delay_law_interval(x[:7], t[:7], np.full(7, 10000.0)) is None  # two usable cells


@pytest.mark.slow
def test_gnorm_run_trains_an_adaptive_stage_in_rounds_with_the_plain_stages_ids_and_resumes(tmp_path):
    from gnorm.store import Store as ResultStore

    policy = {"target_width": 1e-3, "initial_seeds": 3, "seeds_per_round": 2, "extend_factor": 1.0}
    study = adaptive_file(tmp_path, policy, seeds=4, max_steps=1500)
    plain = loaded(adaptive_file(tmp_path, None, seeds=4, max_steps=1500, name="plain.toml"))
    out = tmp_path / "results"
    first = CliRunner().invoke(main, ["run", str(study), "--out", str(out), "--executor", "serial"])
    assert first.exit_code == 0, first.output
    stored = {r.run_id: r for r in ResultStore(out, read_only=True).records(planned_only=False)}
    clamp = [r for r in stored.values() if r.stage == "clamp"]
    assert {r.run_id for r in clamp} <= {r.run_id for r in plain.runs}  # the plain stage's ids
    per_cell = {rho: sum(r.cell["controller.rho"] == rho for r in clamp) for rho in (0.9, 1.0, 1.1)}
    assert all(count >= 3 for count in per_cell.values()) and sum(per_cell.values()) > 9  # rounds added seeds
    again = CliRunner().invoke(main, ["run", str(study), "--out", str(out), "--executor", "serial"])
    assert again.exit_code == 0, again.output
    assert set(ResultStore(out, read_only=True).finished_run_ids()) == set(stored)  # nothing retrained
