"""The delay law's intervals respect the design: whole seeds are resampled across all their cells and
their free run, Wc's estimation is carried through rho, small seed counts are widened, and the old
per-cell bootstrap stays available. The coverage simulator and the replicate agreement are checked at
small size (numpy only, no training)."""

from __future__ import annotations

import math

import attrs
import numpy as np
import pytest

from gnorm.analysis.resampling import (
    NO_SOURCE,
    SeedBlockSample,
    expanded_level,
    median_over_present,
    resampled_log_ratio,
    seed_block_draws,
    seed_block_interval,
    seed_block_replicates,
)
from gnorm.analysis.seed_blocks import CriticalNormSources, seed_block_sample
from gnorm.analysis.simulation import (
    SweepModel,
    fit_generative_model,
    interval_coverage,
    model_from_records,
    on_grid,
    simulate_study,
)
from gnorm.analysis.statistics import bootstrap_cell_medians
from gnorm.builtins.analyzers.delay_law import (
    DelayLawConfig,
    SharedExponentConfig,
    delay_law_analyzer,
    shared_exponent_analyzer,
)
from gnorm.builtins.analyzers.levers import LeversConfig, levers_analyzer
from gnorm.builtins.analyzers.replicates import (
    ReplicateAgreementConfig,
    agreement,
    expected_agreement,
    replicate_agreement_analyzer,
    seed_sets,
)
from gnorm.components import RunRecord
from gnorm.science import ols_line, ols_slopes, percentile_interval

RHO = np.array([0.9, 1.0, 1.1, 1.2])
#: A quiet model like paper A's dense sweep (its fitted spreads, rounded).
MODEL = SweepModel(alpha=7.6, intercept=0.7, seed_intercept_sd=0.08, seed_slope_sd=0.37,
                   intercept_slope_correlation=-0.8, residual_sd=0.04, critical_norm=54.5, critical_norm_sd=0.7,
                   critical_norm_intercept_correlation=0.4)


def width(interval):
    return interval[1] - interval[0]


# -- the pure pieces ---------------------------------------------------------------------------------


def test_median_over_present_is_numpys_nanmedian():
    rng = np.random.default_rng(3)
    values = rng.normal(size=(5, 40, 7))
    values[rng.random(values.shape) < 0.3] = np.nan
    values[0, 0] = np.nan  # a row with nothing present
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        expected = np.nanmedian(values, axis=-1)
    np.testing.assert_array_equal(median_over_present(values), expected)


def test_a_draw_stays_within_each_stratum_and_keeps_its_size():
    stratum = np.array([0, 0, 0, 1, 1, 2])
    draws = seed_block_draws(stratum, 500, np.random.default_rng(0))
    assert draws.shape == (500, 6)
    assert (stratum[draws] == stratum[None, :]).all()
    assert set(draws[:, 0]) == {0, 1, 2} and set(draws[:, 5]) == {5}


def test_expanded_level_undoes_the_bootstraps_shrinkage():
    z = 1.959963984540054
    assert expanded_level(0.95, 6) == pytest.approx(2 * (0.5 * (1 + math.erf(z * math.sqrt(6 / 5) / math.sqrt(2)))) - 1)
    assert 0.95 < expanded_level(0.95, 16) < expanded_level(0.95, 6) < expanded_level(0.95, 3) < 1
    assert expanded_level(0.95, 1) == 0.95


def test_shared_seed_effects_cancel_in_the_seed_block_slope_but_not_in_the_cell_bootstrap():
    """ln T = a + alpha rho + u_s: each seed shifts every cell alike, so a whole-seed resample leaves the
    slope unchanged, while drawing seeds cell by cell mixes fast and slow seeds across rho."""
    rng = np.random.default_rng(1)
    u = rng.normal(0, 0.3, 8)
    times = np.exp(1.0 + 7.5 * RHO[:, None] + u[None, :])
    low, high = seed_block_interval(SeedBlockSample.of(RHO, times), 400, 0.95)
    assert low == pytest.approx(7.5, abs=1e-9) and high == pytest.approx(7.5, abs=1e-9)
    cells = bootstrap_cell_medians(times.tolist(), 400)
    slopes = [ols_line(RHO, np.log(cells[:, b])).slope for b in range(400)]
    assert width(percentile_interval(slopes, 0.95)) > 1.0


def test_seed_slopes_widen_the_seed_block_interval_beyond_the_cell_bootstraps():
    """ln T = a + (alpha + v_s)(rho - 1): the seeds cross at rho = 1, where a cell draw sees no spread."""
    rng = np.random.default_rng(2)
    v = rng.normal(0, 1.0, 8)
    times = np.exp(8.0 + (7.5 + v[None, :]) * (RHO[:, None] - 1.0))
    seed_block = seed_block_interval(SeedBlockSample.of(RHO, times), 1000, 0.95)
    cells = bootstrap_cell_medians(times.tolist(), 1000)
    cell = percentile_interval([ols_line(RHO, np.log(cells[:, b])).slope for b in range(1000)], 0.95)
    assert width(seed_block) > 1.2 * width(cell)


def test_wc_is_carried_through_rho_but_not_through_the_held_norm():
    """Every seed groks at exp(alpha rho) exactly; only the free runs' norms at grok differ. In rho
    (relative to Wc), a resampled Wc moves the law; in the held norm, it does not."""
    norms = np.array([53.0, 54.0, 54.5, 55.0, 56.0, 57.5])
    times = np.exp(1.0 + 7.5 * RHO[:, None]) * np.ones((1, 6))
    relative = SeedBlockSample.of(RHO, times, free_norms=norms[None, :], source=[0] * 4)
    low, high = seed_block_interval(relative, 2000, 0.95, expand=False)
    wc = np.median(norms)
    assert low < 7.5 < high
    # alpha* = (alpha / Wc) * Wc*: the exponent in the held norm, times the resampled Wc
    assert low >= 7.5 * norms.min() / wc - 1e-9 and high <= 7.5 * norms.max() / wc + 1e-9
    held = SeedBlockSample.of(RHO * wc, times, free_norms=norms[None, :], source=[NO_SOURCE] * 4)
    low, high = seed_block_interval(held, 2000, 0.95)
    assert low == pytest.approx(7.5 / wc) and high == pytest.approx(7.5 / wc)


def test_a_replicate_where_a_cell_drew_no_grokked_seed_is_discarded_and_counted():
    times = np.exp(7.0 + 7.5 * RHO[:, None]) * np.ones((1, 4))
    times[3, :3] = np.nan  # one grokked seed of four at the top rho
    replicates = seed_block_replicates(SeedBlockSample.of(RHO, times), 1000)
    assert 0 < replicates.discarded < 1000 and replicates.slopes.size == 1000 - replicates.discarded


def test_the_log_lever_between_two_cells_moves_with_wc_only_in_rho():
    norms = np.array([53.0, 54.0, 55.0, 56.0, 57.0])
    times = np.exp(np.array([[7.0], [8.5]]) * np.ones((1, 5)))
    fixed, _ = resampled_log_ratio(SeedBlockSample.of([0.9, 1.1], times), 0, 1, 300)
    assert np.allclose(fixed, 1.5)
    carried, _ = resampled_log_ratio(SeedBlockSample.of([0.9, 1.1], times, free_norms=norms[None, :],
                                                        source=[0, 0]), 0, 1, 300)
    assert carried.std() > 0 and np.allclose(np.median(carried), 1.5, atol=0.05)


# -- records: seeds, Wc sources, the analyzers ------------------------------------------------------


def test_a_simulated_studys_clamps_find_their_free_runs_by_name_and_by_median():
    records = simulate_study(MODEL, RHO, 5, np.random.default_rng(0))
    clamp = next(r for r in records if r.stage == "sim/clamp")
    sources = CriticalNormSources(records)
    named = sources.source_of(clamp)
    assert named is not None and len(named) == 5
    unnamed = RunRecord(clamp.run_id, clamp.stage, clamp.cell, clamp.seed,
                        {k: v for k, v in clamp.config.items() if k != "critical_norm_source"},
                        clamp.t_mem, clamp.t_grok, clamp.norm_at_grok, clamp.budget, clamp.facts)
    assert sources.source_of(unnamed) == named  # imported results: the free cell whose median is Wc
    given = RunRecord(clamp.run_id, clamp.stage, clamp.cell, clamp.seed, unnamed.config, clamp.t_mem, clamp.t_grok,
                      clamp.norm_at_grok, clamp.budget, clamp.facts | {"critical_norm": 50.0})
    assert sources.source_of(given) is None


def test_the_seed_block_sample_joins_a_seeds_free_run_and_clamp_arms():
    records = simulate_study(MODEL, RHO, 5, np.random.default_rng(0))
    cells = [(0, float(x), [r for r in records if r.cell.get("controller.rho") == x]) for x in RHO]
    sample, notes = seed_block_sample(cells, "controller.rho", CriticalNormSources(records))
    assert sample.times.shape[:2] == (4, 5) and sample.free_norms.shape == (1, 5) and not notes
    assert (sample.source == 0).all()
    free = {r.seed: r.norm_at_grok for r in records if r.stage == "sim/free"}
    clamp_seeds = [r.seed for r in cells[0][2]]
    np.testing.assert_allclose(sample.free_norms[0], [free[s] for s in clamp_seeds])


def test_the_analyzers_default_to_seed_block_and_cell_is_the_old_bootstrap():
    records = simulate_study(MODEL, RHO, 6, np.random.default_rng(4))
    seed_block = delay_law_analyzer(DelayLawConfig(stages=["sim/clamp"], resamples=300))(records)
    cell = delay_law_analyzer(DelayLawConfig(stages=["sim/clamp"], resamples=300, interval="cell"))(records)
    assert seed_block.numbers["interval"] == "seed_block" and seed_block.tables[0].columns[3] == "95% seed-block CI low"
    assert cell.tables[0].columns[3] == "95% CI low"  # as 0.1 printed it
    ours, old = seed_block.numbers["groups"][0], cell.numbers["groups"][0]
    assert ours["alpha"] == old["alpha"] and ours["alpha_ci"] != old["alpha_ci"]
    # the old interval, computed as 0.1 computed it
    xs = np.array(old["cells_used"])
    times = [[r.t_grok for r in records if r.cell.get("controller.rho") == x] for x in xs]
    replicates = bootstrap_cell_medians(times, 300, 0)
    slopes = ols_slopes(xs, np.log(replicates[:, ~np.isnan(replicates).any(axis=0)]))
    assert old["alpha_ci"] == list(percentile_interval(slopes, 0.95))


def test_the_shared_exponent_resamples_seeds_within_each_base_configuration():
    first = simulate_study(MODEL, RHO, 5, np.random.default_rng(5), stage="a")
    second = [RunRecord(r.run_id, r.stage, r.cell, r.seed, r.config | {"task": {**r.config["task"], "p": 61}},
                        r.t_mem, r.t_grok, r.norm_at_grok, r.budget, r.facts)
              for r in simulate_study(MODEL, RHO, 5, np.random.default_rng(6), stage="b")]
    records = first + second
    numbers = shared_exponent_analyzer(SharedExponentConfig(stages=["a/clamp", "b/clamp"], resamples=300))(records).numbers
    assert numbers["interval"] == "seed_block" and numbers["bootstrap_discarded"] == 0
    assert [g["task.p"] for g in numbers["groups_used"]] == [59, 61]
    low, high = numbers["alpha_ci"]
    assert low < numbers["alpha"] < high
    cell = shared_exponent_analyzer(SharedExponentConfig(stages=["a/clamp", "b/clamp"], resamples=300, interval="cell"))(records)
    assert cell.numbers["alpha"] == numbers["alpha"] and cell.numbers["alpha_ci"] != numbers["alpha_ci"]


def test_levers_carry_an_interval_of_each_ratio():
    records = simulate_study(MODEL, RHO, 6, np.random.default_rng(7))
    analysis = levers_analyzer(LeversConfig(stages=["sim/clamp"], across="", resamples=300))(records)
    [row] = analysis.numbers["x_levers"]
    low, high = row["lever_ci"]
    assert low < row["lever"] < high and analysis.tables[0].columns[-2] == "95% seed-block CI low"
    cell = levers_analyzer(LeversConfig(stages=["sim/clamp"], across="", resamples=300, interval="cell"))(records)
    assert cell.numbers["x_levers"][0]["lever"] == row["lever"]


# -- the generative model and the coverage simulation -----------------------------------------------


def test_the_model_fitted_to_a_large_simulated_sweep_recovers_its_parameters():
    model = SweepModel(alpha=7.0, intercept=1.0, seed_intercept_sd=0.1, seed_slope_sd=0.5,
                       intercept_slope_correlation=-0.5, residual_sd=0.05, critical_norm=50.0, critical_norm_sd=1.0,
                       critical_norm_intercept_correlation=0.5, budget_factor=100.0, points=100_000)
    rho = np.linspace(0.85, 1.15, 7)
    records = simulate_study(model, rho, 3000, np.random.default_rng(0))
    fitted = model_from_records(records)
    wc = np.median([r.norm_at_grok for r in records if r.stage == "sim/free"])
    assert fitted.alpha == pytest.approx(7.0 * wc / 50.0, abs=0.05)  # this study's Wc set its held norms
    assert fitted.seed_intercept_sd == pytest.approx(0.1, rel=0.1)
    assert fitted.seed_slope_sd == pytest.approx(0.5, rel=0.1)
    assert fitted.intercept_slope_correlation == pytest.approx(-0.5, abs=0.1)
    assert fitted.residual_sd == pytest.approx(0.05, rel=0.1)
    assert fitted.critical_norm == pytest.approx(50.0, abs=0.1) and fitted.critical_norm_sd == pytest.approx(1.0, rel=0.1)
    assert fitted.critical_norm_intercept_correlation == pytest.approx(0.5, abs=0.1)


def test_times_are_read_on_the_evaluation_grid_and_censored_past_the_budget():
    read = on_grid(np.array([0.5, 99.0, 1000.0, 1001.0]), 1000, 50)
    assert read[0] >= 0.5 and read[1] >= 99.0 and read[2] == 1000.0 and math.isnan(read[3])
    censored = simulate_study(attrs.evolve(MODEL, budget_factor=0.5), RHO, 6, np.random.default_rng(0))
    assert any(r.censored for r in censored if r.stage == "sim/clamp")


def test_coverage_at_small_size_counts_every_fitted_study():
    result = interval_coverage(MODEL, RHO, 6, 12, resamples=200)
    assert result["alpha"]["studies"] == 12 and result["alpha"]["fitted"] == 12
    for name in ("cell", "seed_block", "seed_block_unexpanded"):
        assert result[name]["fitted"] == 12 and 0.0 <= result[name]["coverage"] <= 1.0
    assert result["seed_block"]["mean_width"] > result["seed_block_unexpanded"]["mean_width"]
    assert result["seed_block"]["coverage"] >= result["seed_block_unexpanded"]["coverage"]


def test_coverage_is_reproducible():
    assert interval_coverage(MODEL, RHO, 5, 4, resamples=100, seed=3) == interval_coverage(MODEL, RHO, 5, 4,
                                                                                           resamples=100, seed=3)


# -- replicates ---------------------------------------------------------------------------------------


def test_agreement_counts_ordered_pairs():
    assert agreement([1.0, 2.0, 3.0], [(0.5, 2.5), (1.5, 3.5), (2.9, 3.1)]) == (2, 6)
    assert expected_agreement(0.95) == pytest.approx(0.834, abs=1e-3)
    assert seed_sets([5, 3, 1, 0, 2, 4, 6], 3) == [[0, 1], [2, 3], [4, 5]]


def test_replicate_agreement_over_stages_and_over_split_seed_sets():
    records = []
    for index in range(3):
        records += simulate_study(MODEL, RHO, 6, np.random.default_rng(10 + index), stage=f"r{index}")
    analysis = replicate_agreement_analyzer(ReplicateAgreementConfig(stages=["r0/clamp", "r1/clamp", "r2/clamp"],
                                                                     resamples=200))(records)
    assert [r["seeds"] for r in analysis.numbers["replicates"]] == [6, 6, 6]
    assert analysis.numbers["agreement"]["seed_block"]["pairs"] == 6
    assert not any("taken as given" in note for note in analysis.notes)
    split = replicate_agreement_analyzer(ReplicateAgreementConfig(stages=["r0/clamp"], split=2, resamples=200))(records)
    assert [r["seeds"] for r in split.numbers["replicates"]] == [3, 3]
    assert split.numbers["agreement"]["cell"]["pairs"] == 2
