"""The ``arms`` analyzer: T_grok per intervention arm with a bootstrap CI over seeds, grokked and
censored counts and the budget; its options are checked when the file loads; its report section
shows the table and a figure of every arm's test accuracy against the step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from gnorm.builtins.analyzers.arms import ArmCurves, ArmsConfig, arm_summary, arms_analyzer, arms_figure
from gnorm.cli import main
from gnorm.components import RunRecord
from gnorm.errors import UserError
from gnorm.loader import load_experiment
from gnorm.registry import build_registry

REGISTRY = build_registry(autoload=False)


def record(stage: str, seed: int, t_grok: int | None, budget: int = 5000, cell: dict | None = None) -> RunRecord:
    return RunRecord(run_id=f"{stage}-{seed}", stage=stage, cell=cell or {}, seed=seed,
                     config={"stage": stage, "seed": seed}, t_mem=50, t_grok=t_grok, norm_at_grok=None,
                     budget=budget)


RECORDS = [record("free", 0, 300), record("free", 1, 100), record("free", 2, 200),
           record("grokfast", 0, 1000), record("grokfast", 1, None), record("grokfast", 2, 2000),
           record("no_decay", 0, None, 800), record("no_decay", 1, None, 800)]


def arms_of(records, **options) -> dict[str, dict]:
    analysis = arms_analyzer(ArmsConfig(**options))(records)
    return {arm["arm"]: arm for arm in analysis.numbers["arms"]}


def test_each_arm_has_its_median_t_grok_over_grokked_seeds_its_counts_and_budget():
    arms = arms_of(RECORDS)
    assert list(arms) == ["free", "grokfast", "no_decay"]  # in the order the arms were run
    assert [(a["seeds"], a["grokked"], a["censored"], a["budget"]) for a in arms.values()] == [
        (3, 3, 0, 5000), (3, 2, 1, 5000), (2, 0, 2, 800)]
    assert arms["free"]["median_t_grok"] == 200 and arms["grokfast"]["median_t_grok"] == 1500
    assert arms["no_decay"]["median_t_grok"] is None and arms["no_decay"]["ci"] == [None, None]
    assert arms["free"]["run_ids"] == ["free-0", "free-1", "free-2"]


def test_the_interval_is_the_bootstrap_percentile_interval_of_the_median_over_seeds():
    # Three seeds at 100, 200, 300: a resample's median is 100 when two or three of its draws are 100,
    # P = 7/27 = 0.26 (300 likewise), else 200 (P = 13/27). So the 95% interval spans both ends and a
    # 40% one (tails of 30% each) is the middle value alone.
    assert arms_of(RECORDS, resamples=4000)["free"]["ci"] == [100.0, 300.0]
    assert arms_of(RECORDS, resamples=4000, confidence=0.4)["free"]["ci"] == [200.0, 200.0]
    # Seeds that agree give a narrow interval: nine seeds, eight at 500 (five draws of the odd one
    # out, P = 0.003, would move the median).
    agreeing = [record("free", seed, 500 if seed else 900) for seed in range(9)]
    assert arms_of(agreeing, resamples=4000)["free"]["ci"] == [500.0, 500.0]


def test_censored_seeds_are_resampled_and_draws_without_a_grokked_seed_are_discarded_and_counted():
    times = [1000, None, 2000]
    summary = arm_summary(times, 0.95, 27_000)
    assert 600 < summary["discarded"] < 1400  # (1/3)^3 of the draws are all the censored seed
    analysis = arms_analyzer(ArmsConfig())(RECORDS)
    assert any("grokfast: 1/3 seeds censored" in note for note in analysis.notes)
    assert any("no_decay: 2/2 seeds censored (no grok within 800 steps" in note for note in analysis.notes)


def test_stages_keeps_only_those_arms_and_a_swept_stage_gives_an_arm_per_cell():
    assert list(arms_of(RECORDS, stages=["grokfast"])) == ["grokfast"]
    swept = [record("clamp", seed, 400 + seed, cell={"controller.rho": rho}) for rho in (1.0, 1.1) for seed in (0, 1)]
    assert list(arms_of(swept)) == ["clamp (rho=1.0)", "clamp (rho=1.1)"]


def test_the_table_names_the_level_and_carries_every_arm():
    (table,) = arms_analyzer(ArmsConfig(confidence=0.9))(RECORDS).tables
    assert "90% bootstrap CI" in table.title and table.columns[-2:] == ["90% CI low", "90% CI high"]
    assert [row[:6] for row in table.rows] == [["free", 3, 3, 0, 5000, 200.0], ["grokfast", 3, 2, 1, 5000, 1500.0],
                                               ["no_decay", 2, 0, 2, 800, None]]


@pytest.mark.parametrize("option, message", [
    ("confidence = 1.0", "'confidence' must be a level between 0 and 1"),
    ("resamples = 0", "'resamples' must be from 1 to"),
    ('stages = ["fre"]', "fre"),
])
def test_bad_options_are_refused_when_the_file_loads(tmp_path, option, message):
    path = tmp_path / "arms.toml"
    path.write_text(STUDY.format(max_steps=100) + f"[[analysis]]\nname = \"arms\"\n{option}\n")
    with pytest.raises(UserError, match="analysis") as error:
        load_experiment(path, REGISTRY)
    assert message in str(error.value)


def test_the_figure_draws_a_median_line_per_arm_with_its_seeds_faintly():
    steps = np.array([0, 10, 100, 1000], float)
    arms = [ArmCurves("free", steps, np.array([[0, 0.1, 0.5, 1.0], [0, 0.1, 0.9, 1.0]]), 550.0),
            ArmCurves("no_decay", steps, np.array([[0, 0.1, 0.1, 0.2], [0, 0.1, 0.2, 0.3]]), None)]
    figure = arms_figure(arms)
    (axes,) = figure.axes
    thick = [line for line in axes.lines if line.get_linewidth() == 2.0]
    assert len(thick) == 2 and np.allclose(thick[0].get_ydata(), [0.1, 0.7, 1.0])  # median; step 0 not drawn
    assert sum(line.get_alpha() == 0.2 for line in axes.lines) == 4
    assert axes.get_xscale() == "log" and "test accuracy" in axes.get_ylabel()


STUDY = """
[experiment]
name = "tiny_arms"
seeds = [0, 1]
[task]
name = "modular_addition"
p = 13
train_fraction = 0.6
[architecture]
name = "mlp"
embed_dim = 8
hidden_dim = 16
[optimizer]
lr = 1e-2
[training]
max_steps = {max_steps}
[evaluation]
schedule = "every"
every = 20
[[stage]]
name = "free"
[[stage]]
name = "mini_batch"
training = {{ batch_size = 32 }}
"""


def test_the_report_of_a_tiny_real_comparison_shows_the_arms_table_and_figure(tmp_path):
    path = tmp_path / "tiny_arms.toml"
    path.write_text(STUDY.format(max_steps=200) + '[[analysis]]\nname = "arms"\n')
    result = CliRunner().invoke(main, ["run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "out" / "report" / "report.md").read_text()
    assert "## Comparing interventions" in report and "T_grok per arm" in report
    for arm in ("| free |", "| mini_batch |"):
        assert arm in report.replace("  ", " ")
    assert (tmp_path / "out" / "report" / "figures" / "arms_test_accuracy.png").stat().st_size > 0
    assert "arms_test_accuracy.png" in report
