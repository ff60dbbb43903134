"""The law comparison picks the law that generated the data; the free-contraction fit recovers kappa."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gnorm.builtins.analyzers.laws import (
    FreeContractionConfig,
    LawComparisonConfig,
    free_contraction_analyzer,
    law_comparison_analyzer,
)
from gnorm.components import RunRecord
from gnorm.science import (
    akaike_information,
    compare_laws,
    contraction_norms,
    contraction_time,
    origin_fit,
    power_law_offset_fit,
)

RHO = np.linspace(0.85, 1.25, 9)


def noisy(t, scale=0.03, seed=0):
    return np.asarray(t) * np.exp(np.random.default_rng(seed).normal(0, scale, len(t)))


def test_aic_is_n_log_mean_square_plus_twice_the_parameters():
    assert akaike_information(0.5, 10, 3) == pytest.approx(10 * math.log(0.05) + 6)


@pytest.mark.parametrize("seed", range(5))
def test_exponential_data_pick_the_exponential(seed):
    comparison = compare_laws(RHO, noisy(np.exp(0.5 + 7.5 * RHO), seed=seed))
    assert comparison["winner"] == "exponential"
    assert comparison["laws"]["saddle_node"]["delta_aic"] > 2


@pytest.mark.parametrize("seed", range(5))
def test_power_law_with_offset_data_pick_the_power_law(seed):
    comparison = compare_laws(RHO, noisy(300 * (RHO - 0.7) ** 2.5, seed=seed))
    assert comparison["winner"] == "power_offset"
    assert comparison["laws"]["exponential"]["delta_aic"] > 4


def test_saddle_node_data_pick_the_saddle_node():
    comparison = compare_laws(RHO, noisy(200 / np.sqrt(1.35 - RHO) + 100, scale=0.02))
    assert comparison["winner"] == "saddle_node"
    assert comparison["laws"]["saddle_node"]["parameters"]["x_c"] == pytest.approx(1.35, abs=0.03)


def test_power_law_fit_recovers_offset_and_exponent_without_noise():
    fit = power_law_offset_fit(RHO, 300 * (RHO - 0.7) ** 2.5)
    assert fit.parameters["x0"] == pytest.approx(0.7, abs=1e-3)
    assert fit.parameters["exponent"] == pytest.approx(2.5, rel=1e-2)
    assert not fit.at_search_edge


def record(run_id, t_grok, t_mem=100, norm_at_grok=50.0, facts=None, p=59, rho=1.0, lr=1e-3, decay=1.0,
           controller=None):
    config = {"task": {"p": p}, "optimizer": {"lr": lr, "weight_decay": decay},
              "controller": controller or {"name": "clamp", "rho": rho}}
    return RunRecord(run_id=run_id, stage="s", cell={"controller.rho": rho}, seed=0, config=config, t_mem=t_mem,
                     t_grok=t_grok, norm_at_grok=norm_at_grok, budget=100_000, facts=facts or {"held_norm": rho * 50})


def test_law_comparison_analyzer_groups_drops_and_names_the_winner():
    records = []
    for p, law in ((59, lambda x: np.exp(0.5 + 7.5 * x)), (97, lambda x: 300 * (x - 0.7) ** 2.5)):
        for i, (rho, t) in enumerate(zip(RHO, noisy(law(RHO), seed=p))):
            records += [record(f"{p}-{i}-{s}", int(t * (1 + 0.01 * s)), p=p, rho=rho) for s in range(3)]
    records += [record(f"59-late-{s}", None if s else 90_000, p=59, rho=1.4) for s in range(3)]
    analysis = law_comparison_analyzer(LawComparisonConfig(x="controller.rho"))(records)
    winners = {g["group"]["task.p"]: g["winner"] for g in analysis.numbers["groups"]}
    assert winners == {59: "exponential", 97: "power_offset"}
    assert any("p=59: dropped controller.rho=1.4 (1/3" in note for note in analysis.notes)


def test_contraction_norms_reads_the_trajectory():
    steps, norms = [0, 10, 20, 30, 40], [20.0, 60.0, 70.0, 55.0, 80.0]
    assert contraction_norms(steps, norms, 10, 30) == {"norm_at_memorization": 60.0, "peak_norm": 70.0}
    assert contraction_norms(steps, norms, None, None) == {}


def test_free_contraction_recovers_kappa_and_counts_skipped_runs():
    kappa, lr, decay, v_star = 0.2, 1e-3, 1.0, 50.0**2
    rng = np.random.default_rng(1)
    records = []
    for i, peak in enumerate(rng.uniform(55, 80, 12)):
        delay = contraction_time(peak**2, v_star, lr, decay, kappa) * math.exp(rng.normal(0, 0.02))
        records.append(record(f"r{i}", 100 + round(delay), facts={"peak_norm": float(peak)},
                              controller={"name": "free"}))
    records += [record("censored", None, facts={"peak_norm": 70.0}, controller={"name": "free"}),
                record("no-mem", 5000, t_mem=None, facts={"peak_norm": 70.0}, controller={"name": "free"}),
                record("flat", 5000, facts={"peak_norm": 45.0}, controller={"name": "free"}),
                record("bare", 5000, facts={}, controller={"name": "free"}),
                record("clamped", 5000, facts={"peak_norm": 70.0})]
    analysis = free_contraction_analyzer(FreeContractionConfig(v_mem="peak"))(records)
    (group,) = analysis.numbers["groups"]
    assert group["kappa"] == pytest.approx(kappa, rel=0.03) and group["r_squared"] > 0.95
    assert group["runs_used"] == 12 and group["runs"] == 16
    assert group["skipped"] == {"censored": 1, "no_t_mem": 1, "no_norm_fact": 1, "no_contraction": 1}
    assert any("lack facts.peak_norm" in note for note in analysis.notes)
    without = free_contraction_analyzer(FreeContractionConfig())(records)  # at_memorization: no such facts
    assert without.numbers["groups"][0]["kappa"] is None
    assert any("no fit" in note for note in without.notes)


def test_origin_fit_slope_is_sum_xy_over_sum_xx():
    fit = origin_fit([1.0, 2.0, 3.0], [2.0, 4.1, 5.9])
    assert fit.slope == pytest.approx((2 + 8.2 + 17.7) / 14)


def test_matched_delay_interpolates_in_logit_scale_and_never_extrapolates():
    from gnorm.science import matched_delay, recovery_fraction

    scales, delays = [30.0, 20.0, 25.0], [9000.0, 3000.0, 6000.0]
    assert matched_delay(22.5, scales, delays) == pytest.approx(4500.0)
    assert matched_delay(19.0, scales, delays) is None and matched_delay(31.0, scales, delays) is None
    assert recovery_fraction(9000.0, 4500.0, 3000.0) == pytest.approx(0.75)  # 4500 of 6000 steps undone


def test_r_squared_is_one_for_an_exact_line_and_added_predictors_never_lower_it():
    from gnorm.science import r_squared

    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert r_squared(3.0 + 2.0 * x, x) == pytest.approx(1.0)
    y = np.array([1.0, 3.0, 2.0, 5.0, 4.0])
    noise = np.array([0.3, -0.1, 0.4, 0.0, -0.2])
    assert r_squared(y, x) == pytest.approx(np.corrcoef(x, y)[0, 1] ** 2)
    assert r_squared(y, x, noise) >= r_squared(y, x)
