"""gnorm's analyzers, fed the papers' released per-seed results, print the papers' numbers.

The reference data lives outside the repository (``../shared/reference``); without it this module is
skipped. Each experiment folder is imported into one store, as gnorm would store its own runs, and the
analyzers run on ``Store.records()``. A number "agrees" when it rounds to the paper's printed value
(e.g. 7.638 -> "7.64"), allowing half a unit in the last printed digit.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from gnorm.builtins.analyzers.critical_norm import CriticalNormConfig, critical_norm_analyzer
from gnorm.builtins.analyzers.delay_law import (
    DelayLawConfig,
    SharedExponentConfig,
    delay_law_analyzer,
    shared_exponent_analyzer,
)
from gnorm.builtins.analyzers.levers import LeversConfig, levers_analyzer
from gnorm.importers import import_reference, read_experiment
from gnorm.science import first_crossing
from gnorm.store import Store

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
if not REFERENCE.is_dir():
    pytest.skip(f"no reference data at {REFERENCE}", allow_module_level=True)

EXPERIMENTS = ("paper-a/denserho", "paper-a/pscan", "paper-a/efflr", "paper-a/tfnoln_long", "paper-a/normint",
               "paper-a/grokfss", "paper-a/tfgrok", "paper-a/parity", "paper-b/dose", "paper-b/mediation", "paper-b/collapse", "paper-b/samestate")
RHO_085_115 = {"controller.rho": [0.85, 1.15]}


def agrees(value: float | None, printed: str) -> bool:
    """``value`` is within half a unit of the last digit of the paper's ``printed`` number."""
    decimals = len(printed.split(".")[1]) if "." in printed else 0
    return value is not None and abs(value - float(printed)) <= 0.5 * 10**-decimals + 1e-9


def assert_agrees(value: float | None, printed: str, what: str) -> None:
    assert agrees(value, printed), f"{what}: gnorm {value}, paper {printed}"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("reference"), create=True)
    for experiment in EXPERIMENTS:
        import_reference(REFERENCE / experiment, store)
    yield store
    store.close()


@pytest.fixture(scope="module")
def records(store):
    return store.records()


def only(analysis, **group):
    return next(g for g in analysis.numbers["groups"] if g["group"] == group)


def cells(analysis, stage):
    return {json.dumps(c["cell"], sort_keys=True): c for c in analysis.numbers["cells"] if c["stage"] == stage}


# -- the import itself ------------------------------------------------------------------------------


def test_imported_runs_are_shaped_like_gnorm_runs(store, records):
    clamp = next(r for r in records if r.stage == "denserho/clamp" and r.cell == {"controller.rho": 0.85})
    assert clamp.config["task"] == {"name": "modular_addition", "p": 59, "train_fraction": 0.4}
    assert clamp.config["controller"] == {"name": "clamp", "rho": 0.85, "t_start": 500}
    assert clamp.config["evaluation"]["schedule"] == "geometric" and clamp.config["evaluation"]["points"] == 360
    assert clamp.budget == 8000 and clamp.facts["held_norm"] == pytest.approx(0.85 * clamp.facts["critical_norm"])
    assert clamp.norm_at_grok == pytest.approx(clamp.facts["held_norm"], rel=1e-5)
    assert "alpha" not in json.dumps({k: v for k, v in clamp.config.items() if k != "imported"})
    free = next(r for r in records if r.stage == "denserho/free")
    assert free.config["controller"] == {"name": "free"} and free.config["critical_norm"] is None
    assert json.loads(store.meta("reference_sources"))[0].endswith("paper-a/denserho")
    assert "paper" in store.meta("evaluation_schedule")


def test_the_papers_t_grok_is_gnorms_criterion_on_the_papers_trajectory(store, records):
    run = next(r for r in records if r.stage == "denserho/clamp" and r.cell == {"controller.rho": 1.1})
    trajectory = store.trajectory(run.run_id)
    steps = np.array(trajectory["step"])
    assert first_crossing(steps, trajectory["test_acc"], 0.9) == run.t_grok
    assert first_crossing(steps, trajectory["train_acc"], 0.99) == run.t_mem
    assert {"norm/embedding", "norm/hidden", "norm/readout"} <= set(trajectory)


def test_paper_b_keeps_seed_means_apart_from_per_seed_columns(store, records):
    run = next(r for r in records if r.stage == "dose/clamp")
    trajectory = store.trajectory(run.run_id)
    assert all(v is None for v in trajectory["weight_norm"]) and "seed_mean/logit_scale" in trajectory
    assert run.config["evaluation"] == {"schedule": "every", "points": 360, "every": 25, "stop_when_grokked": True}
    assert run.config["loss"] == {"name": "cross_entropy", "temperature": 1.0}


def test_a_duplicated_cell_file_is_imported_once():
    experiment = read_experiment(REFERENCE / "paper-b" / "mediation")
    assert any("mlp_mse_full_p59_ctrl.npz" in note for note in experiment.notes)
    base = [r for r in (run.record for run in experiment.runs)
            if r.cell.get("loss.name") == "mse" and r.cell.get("task.p") == 59 and r.cell.get("controller.rho") == 1.0]
    assert len(base) == 12


# -- paper A ---------------------------------------------------------------------------------------


def test_dense_rho_sweep_gives_alpha_7_64(records):
    analysis = delay_law_analyzer(DelayLawConfig(stages=["denserho/clamp"]))(records)
    fit = only(analysis)
    assert_agrees(fit["alpha"], "7.64", "dense alpha")
    assert_agrees(fit["alpha"], "7.638", "dense alpha")
    assert_agrees(fit["r_squared"], "0.994", "dense R^2")
    assert_agrees(fit["r_squared"], "0.9944", "dense R^2")
    low, high = fit["alpha_ci"]  # seed-block (gnorm's default): whole seeds across all rho, Wc carried through
    assert low < 7.45 and high > 7.79  # the seeds' own slopes differ, which resampling within cells misses
    paper = only(delay_law_analyzer(DelayLawConfig(stages=["denserho/clamp"], interval="cell"))(records))
    low, high = paper["alpha_ci"]  # the paper's bootstrap, seeds within cells: 7.45-7.79 vs the paper's 7.47-7.81
    assert abs(low - 7.47) < 0.03 and abs(high - 7.81) < 0.03
    medians = [fit["median_t_grok"][x] for x in fit["cells_used"]]
    for value, printed in zip(medians, "1495 1781 2470 3999 6380 9433 13030 19407 26929".split()):
        assert_agrees(value, printed, "dense median T_grok")


def test_per_p_alphas_over_rho_085_to_115(records):
    analysis = delay_law_analyzer(DelayLawConfig(stages=["pscan/clamp"], group_by=["task.p"],
                                                 within=RHO_085_115))(records)
    for p, printed in zip((41, 53, 59, 71), ("7.92", "7.56", "7.42", "7.07")):
        assert_agrees(only(analysis, **{"task.p": p})["alpha"], printed, f"alpha at p={p}")
    p31 = only(analysis, **{"task.p": 31})  # rho 0.85 never groks in 15k steps: dropped, not hidden
    assert p31["alpha"] is None and p31["cells_dropped"] == {0.85: 0} and p31["censored"][0.85] == 12
    assert any("p=31: dropped controller.rho=0.85 (0/12" in note for note in analysis.notes)


def test_shared_alpha_across_p(records):
    analysis = shared_exponent_analyzer(SharedExponentConfig(stages=["pscan/clamp"], within=RHO_085_115,
                                                             interval="cell"))(records)
    numbers = analysis.numbers
    assert_agrees(numbers["alpha"], "7.49", "shared alpha")
    assert_agrees(numbers["r_squared"], "0.996", "shared R^2")
    assert_agrees(numbers["r_squared"], "0.9955", "shared R^2")
    low, high = numbers["alpha_ci"]  # the paper's bootstrap (seeds within cells): 7.14-7.70 vs its 7.16-7.69
    assert abs(low - 7.16) < 0.03 and abs(high - 7.69) < 0.03
    seed_block = shared_exponent_analyzer(SharedExponentConfig(stages=["pscan/clamp"], within=RHO_085_115))(records)
    low, high = seed_block.numbers["alpha_ci"]  # whole seeds per p, each p's Wc from its own free runs
    assert seed_block.numbers["alpha"] == numbers["alpha"] and low < numbers["alpha"] < high
    assert [g["task.p"] for g in numbers["groups_used"]] == [41, 53, 59, 71]
    assert numbers["sse_separate"] < numbers["sse_shared"]


def test_measured_critical_norms(records):
    analysis = critical_norm_analyzer(CriticalNormConfig())(records)
    pscan = cells(analysis, "pscan/free")
    for p, printed in zip((31, 41, 53, 59, 71), ("40.1", "49.5", "52.5", "54.7", "58.7")):
        assert_agrees(pscan[json.dumps({"task.p": p})]["critical_norm"], printed, f"Wc at p={p}")
    assert_agrees(cells(analysis, "tfnoln_long/free")["{}"]["critical_norm"], "36.9", "attention Wc")


def test_critical_norm_across_training_fractions_and_free_grokking_times(records):
    analysis = critical_norm_analyzer(CriticalNormConfig(stages=["grokfss/free"]))(records)
    by_cell = {(c["cell"]["task.p"], c["cell"]["task.train_fraction"], c["cell"]["optimizer.lr"],
                c["cell"]["optimizer.weight_decay"]): c for c in analysis.numbers["cells"]}
    # The paper's table of Wc across f prints the mean norm at grok (the medians differ by <= 0.25).
    for f, printed in zip((0.3, 0.35, 0.4, 0.5, 0.65), ("56.4", "55.9", "54.8", "55.1", "55.7")):
        assert_agrees(by_cell[(59, f, 0.001, 1.0)]["mean"], printed, f"Wc at f={f}")
    for p, printed in zip((29, 41, 59, 79, 97), ("27.5", "11.0", "5.1", "3.5", "2.9")):
        cell = by_cell[(p, 0.4, 0.001, 1.0)]
        assert abs(cell["median_t_grok"] / 1000 - float(printed)) <= 0.05 + 1e-9, f"free T_grok at p={p}"
    assert by_cell[(29, 0.4, 0.001, 1.0)]["grokked"] == 12 and by_cell[(29, 0.4, 0.001, 1.0)]["seeds"] == 20


def test_norm_lever_and_learning_rate_lever(records):
    analysis = levers_analyzer(LeversConfig(stages=["efflr/clamp"]))(records)
    assert_agrees(analysis.numbers["x_lever"], "18.7", "norm lever at lr 1e-3")
    assert_agrees(analysis.numbers["across_lever"], "2.54", "lr lever at rho 0.85")
    delays = {(d["x"], d["across"]): d["median_t_grok"] for d in analysis.numbers["median_t_grok"]}
    for lr, printed in ((0.001, "1492 4077 13426 27925"), (0.008, "587 1256 8007 16893")):
        for rho, value in zip((0.85, 1.0, 1.15, 1.3), printed.split()):
            assert abs(delays[(rho, lr)] - float(value)) <= 0.5, f"T at rho={rho}, lr={lr}"
    assert any("rho=1.3, optimizer.lr=0.001: 4/16 seeds censored" in note for note in analysis.notes)


def test_alpha_is_larger_at_larger_learning_rates(records):
    analysis = delay_law_analyzer(DelayLawConfig(stages=["efflr/clamp"], group_by=["optimizer.lr"],
                                                 within=RHO_085_115))(records)
    for lr in (0.002, 0.004, 0.008):  # "at lr 2e-3..8e-3 the fitted alpha is 8.7-9.0"
        assert 8.65 <= only(analysis, **{"optimizer.lr": lr})["alpha"] <= 9.05


def test_one_shot_rescale_moves_t_grok_only_1_23x(records):
    analysis = levers_analyzer(LeversConfig(stages=["normint/rescale"], across=""))(records)
    assert analysis.numbers["x_levers"][0]["from"] == 0.7 and analysis.numbers["x_levers"][0]["to"] == 1.3
    assert_agrees(analysis.numbers["x_lever"], "1.23", "rescale lever")


def test_attention_model_alpha_15_45(records):
    analysis = delay_law_analyzer(DelayLawConfig(stages=["tfnoln_long/clamp"], within=RHO_085_115))(records)
    assert_agrees(only(analysis)["alpha"], "15.45", "attention alpha")
    everything = only(delay_law_analyzer(DelayLawConfig(stages=["tfnoln_long/clamp"]))(records))
    for value, printed in zip(everything["median_t_grok"].values(), ("718", "6608", "73966", "99920")):
        assert_agrees(value, printed, "attention median T_grok")


def test_with_layernorm_the_total_norm_spreads_but_the_unembedding_norm_concentrates(records):
    spread = {}
    for norm in ("total", "unembedding"):
        analysis = critical_norm_analyzer(CriticalNormConfig(
            stages=["tfgrok/free"], norm=norm, across=["task.train_fraction"],
            within={"optimizer.lr": [1e-3, 1e-3], "optimizer.weight_decay": [1.0, 1.0]}))(records)
        spread[norm] = {s["at"]["task.p"]: s["cv"] for s in analysis.numbers["spread"]}
        if norm == "unembedding":
            assert_agrees(analysis.numbers["power_law"]["exponent"], "0.77", "unembedding Wc ~ p^b")
    assert sorted(spread["total"]) == [53, 71, 97]
    for p in (53, 71, 97):  # across training fractions: total 12-21%, unembedding 3.6-5.4% (paper: 12-17%, 3-5%)
        assert spread["unembedding"][p] < 0.06 and spread["total"][p] > 2 * spread["unembedding"][p]


def test_sparse_parity(records):
    analysis = critical_norm_analyzer(CriticalNormConfig(stages=["parity/free", "parity/clamp"]))(records)
    free = cells(analysis, "parity/free")[json.dumps({"task.n_bits": 30, "task.train_size": 1000}, sort_keys=True)]
    assert_agrees(free["critical_norm"], "20.6", "parity Wc")
    assert_agrees(free["median_t_grok"], "2648", "parity free T_grok")
    clamp = cells(analysis, "parity/clamp")[json.dumps({"controller.rho": 1.3})]
    assert_agrees(clamp["median_t_grok"] / free["median_t_grok"], "2.5", "parity slowdown at rho 1.3")


# -- paper B ---------------------------------------------------------------------------------------


def test_dose_slopes_against_the_held_norm(records):
    analysis = delay_law_analyzer(DelayLawConfig(stages=["dose/clamp"], x="held_norm", group_by=["task.p"],
                                                 within=RHO_085_115))(records)
    for p, printed in zip((59, 67, 97, 113), ("0.140", "0.126", "0.094", "0.087")):
        assert_agrees(only(analysis, **{"task.p": p})["alpha"], printed, f"dose slope at p={p}")


def test_temperature_undoes_the_norm_induced_delay(records):
    analysis = critical_norm_analyzer(CriticalNormConfig(stages=["mediation/clamp"]))(records)
    delays = {(c["cell"]["task.p"], c["cell"]["controller.rho"], c["cell"]["loss.temperature"]): c["median_t_grok"]
              for c in analysis.numbers["cells"] if c["cell"]["loss.name"] == "cross_entropy"}
    assert_agrees(delays[(59, 1.0, 1.0)], "3675", "baseline")
    for tau, printed in zip((1.0, 1.15, 1.3, 1.5, 1.7), ("12600", "9100", "6825", "4700", "3450")):
        assert_agrees(delays[(59, 1.15, tau)], printed, f"rho 1.15, tau {tau}")


def test_matching_the_logit_scale_recovers_most_of_the_delay(records):
    from gnorm.builtins.analyzers.mediation import LogitMediationConfig, logit_mediation_analyzer

    analysis = logit_mediation_analyzer(LogitMediationConfig(stages=["mediation/clamp"]))(records)
    assert analysis.numbers["logit_scale_fact"] == "seed_mean_logit_scale_at_grok"
    for p, printed in ((59, "0.83"), (97, "0.89")):
        recovery = only(analysis, **{"task.p": p, "loss.name": "cross_entropy"})["recovery"]
        assert_agrees(recovery["recovery_fraction"], printed, f"recovery at p={p}")
        low, high = recovery["ci"]
        assert low < recovery["recovery_fraction"] < high and recovery["paired_seeds"] == 12
    for p in (59, 97):  # under MSE the logit scale stays near 1 and matching it recovers far less
        cross_entropy = only(analysis, **{"task.p": p, "loss.name": "cross_entropy"})["recovery"]
        mse = only(analysis, **{"task.p": p, "loss.name": "mse"})["recovery"]
        assert mse["baseline_logit_scale"] < 1.5 < cross_entropy["baseline_logit_scale"]
        assert mse["recovery_fraction"] < cross_entropy["recovery_fraction"] - 0.25


def test_ln_t_grok_collapses_on_the_logit_scale(records):
    from gnorm.builtins.analyzers.mediation import LogitMediationConfig, logit_mediation_analyzer

    analysis = logit_mediation_analyzer(LogitMediationConfig(stages=["collapse/clamp"]))(records)
    for p in (59, 97):
        collapse = only(analysis, **{"task.p": p, "loss.name": "cross_entropy"})["collapse"]
        assert collapse["cells"] == 12
        assert 0.01 <= collapse["added_by_norm"] <= 0.02 and collapse["r_squared_norm"] < 0.5
    assert_agrees(only(analysis, **{"task.p": 59, "loss.name": "cross_entropy"})["collapse"]["r_squared_logit_scale"],
                  "0.97", "R^2 of ln T on L")


def test_same_state_fork(records):
    analysis = levers_analyzer(LeversConfig(stages=["samestate/relative_clamp"], x="controller.factor", across="",
                                            delay_from="controller.t_start",
                                            within={"task.p": [59, 59], "controller.factor": [1.0, 1.15]}))(records)
    assert_agrees(analysis.numbers["x_lever"], "3.36", "clamp at 1.15x vs hold, from the fork")


# -- competing delay laws (paper B, Table 1) and the free contraction (theory T) ----------------------


def test_the_exponential_law_beats_power_and_saddle_node_forms(records):
    from gnorm.builtins.analyzers.laws import LawComparisonConfig, law_comparison_analyzer

    dose = law_comparison_analyzer(LawComparisonConfig(stages=["dose/clamp"]))(records)
    for p in (59, 67, 97, 113):  # p = 43 (one cell dropped, 7 left) prefers the power law with offset
        group = only(dose, **{"task.p": p})
        assert group["winner"] == "exponential", f"p={p}: {group['laws']}"
        assert group["laws"]["saddle_node"]["delta_aic"] > 2
    dense = law_comparison_analyzer(LawComparisonConfig(stages=["denserho/clamp"], x="controller.rho",
                                                        group_by=[]))(records)
    assert only(dense)["winner"] == "exponential" and only(dense)["laws"]["saddle_node"]["delta_aic"] > 10


@pytest.fixture(scope="module")
def free_runs_with_contraction_norms(store, records):
    import attrs

    from gnorm.science import contraction_norms

    runs = []
    for run in (r for r in records if r.stage == "grokfss/free"):
        trajectory = store.trajectory(run.run_id)
        norms = contraction_norms(trajectory["step"], trajectory["weight_norm"], run.t_mem, run.t_grok)
        runs.append(attrs.evolve(run, facts=run.facts | norms))
    return runs


def test_free_contraction_kappa_from_the_peak_norm(free_runs_with_contraction_norms):
    from gnorm.builtins.analyzers.laws import FreeContractionConfig, free_contraction_analyzer

    runs = free_runs_with_contraction_norms
    analysis = free_contraction_analyzer(FreeContractionConfig(v_mem="peak"))(runs)
    usable = [r for r in runs if r.t_grok is not None and r.t_mem is not None
              and r.facts["peak_norm"] > r.norm_at_grok]
    assert sum(g["runs_used"] for g in analysis.numbers["groups"]) == len(usable) == analysis.numbers["pooled"]["runs_used"]
    for group in analysis.numbers["groups"]:
        assert group["kappa"] is not None and 0 < group["kappa"] < math.inf and group["r_squared"] is not None
    pooled = analysis.numbers["pooled"]  # lr * lambda spans 100x across setups; one kappa gives r ~ 0.28 only
    assert 0 < pooled["kappa"] < math.inf and pooled["correlation"] > 0


def test_the_norm_at_memorization_is_mostly_below_the_norm_at_grok(free_runs_with_contraction_norms):
    from gnorm.builtins.analyzers.laws import FreeContractionConfig, free_contraction_analyzer

    analysis = free_contraction_analyzer(FreeContractionConfig())(free_runs_with_contraction_norms)
    group = only(analysis, **{"task.p": 59, "optimizer.lr": 0.001, "optimizer.weight_decay": 1.0})
    assert group["skipped"]["no_contraction"] > group["runs_used"]  # the overshoot comes after memorization
