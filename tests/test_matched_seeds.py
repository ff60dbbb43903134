"""Matched counterfactual across interventions: arms that change only how a seed learns (optimizer,
loss, gradient transforms, controller) start from the same weights and split; an arm without weight
decay starts from the decayed arms' weights when its stage says ``init_weight_decay``."""

from __future__ import annotations

from builders import FREE, write_study
from gnorm.loader import load_experiment
from gnorm.registry import build_registry

BUILTINS = build_registry(autoload=False)


def _runs(tmp_path, *stages):
    path = write_study(tmp_path, stages=[FREE, *stages])
    return {stage: [run for run in load_experiment(path, BUILTINS).runs if run.stage == stage]
            for stage in ("free", *(s["name"] for s in stages))}


def test_arms_that_change_how_seeds_learn_start_from_the_free_runs_weights_and_split(tmp_path):
    runs = _runs(tmp_path, {"name": "grokfast", "gradient_transforms": {"grokfast_ema": {}}},
                 {"name": "stablemax", "loss": {"name": "stablemax_cross_entropy"}},
                 {"name": "sgd", "optimizer": {"name": "sgd", "lr": 0.1, "weight_decay": 1.0}})
    for stage in ("grokfast", "stablemax", "sgd"):
        for free, arm in zip(runs["free"], runs[stage]):
            assert (arm.init_seed, arm.split_seed) == (free.init_seed, free.split_seed)
            assert arm.run_id != free.run_id


def test_an_arm_without_weight_decay_starts_from_the_decayed_arms_weights_when_asked(tmp_path):
    runs = _runs(tmp_path, {"name": "own", "optimizer": {"weight_decay": 0.0}},
                 {"name": "matched", "optimizer": {"weight_decay": 0.0}, "init_weight_decay": 1.0})
    for free, own, matched in zip(runs["free"], runs["own"], runs["matched"]):
        assert own.init_seed != free.init_seed  # weight decay is part of a seed's base configuration
        assert (matched.init_seed, matched.split_seed) == (free.init_seed, free.split_seed)
        assert own.split_seed == free.split_seed
        assert matched.run_id != own.run_id  # the start is part of what the run is
        assert "init_weight_decay" not in free.identity() and matched.identity()["init_weight_decay"] == 1.0


def test_a_bad_init_weight_decay_is_one_line_naming_the_stage_key(tmp_path):
    from click.testing import CliRunner

    from gnorm.cli import main

    path = write_study(tmp_path, stages=[FREE, {"name": "matched", "init_weight_decay": -1.0}])
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip() == (f"error: {path}: stage[matched].init_weight_decay: expected a finite weight "
                                     "decay >= 0, found a float (-1.0)")


def test_every_arm_of_the_comparison_example_starts_each_seed_identically():
    from conftest import ROOT

    runs = load_experiment(ROOT / "examples" / "interventions" / "compare.toml", BUILTINS).runs
    starts = {}
    for run in runs:
        starts.setdefault(run.seed, set()).add((run.init_seed, run.split_seed))
    assert len({run.stage for run in runs}) == 7
    assert all(len(start) == 1 for start in starts.values())
