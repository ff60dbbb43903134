"""Norm controllers: each one does to the weights exactly what its docstring says, in a real training run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import gnorm.cli
import gnorm.registry
from builders import FREE, experiment_toml, write_study
from gnorm.cli import main
from gnorm.components import ControllerContext, RunRecord
from gnorm.errors import UserError
from gnorm.loader import load_experiment
from gnorm.planner import resolve_critical_norms
from gnorm.registry import DISABLE_AUTOLOAD_ENV, build_registry
from gnorm.runmodel import Stage
from gnorm.science import allocated_shares, weight_norm
from gnorm.store import Store
from gnorm.training.build import train_cell
from gnorm.training.jobs import CellJob
from gnorm.training.runlog import RunLog

BUILTINS = build_registry(autoload=False)

def train(controller: dict, critical_norm: float | None = None, group_critical_norms: dict | None = None,
          steps: int = 60, precision: str = "float32") -> list[RunLog]:
    """Train one cell of three seeds (p = 13, d = 8, H = 16, lr 3e-3) under ``controller`` (its table),
    evaluated every step; the logs in seed order."""
    text = experiment_toml(experiment={"name": "controllers", "seeds": 3}, task={"p": 13},
                           architecture={"embed_dim": 8, "hidden_dim": 16}, optimizer={"lr": 3e-3},
                           training={"max_steps": steps, "precision": precision},
                           evaluation={"every": 1, "stop_when_grokked": False}, controller=controller,
                           stages=[{"name": "main", "critical_norm": critical_norm}])
    experiment = load_experiment("cell.toml", BUILTINS, text=text)
    logs: list[RunLog] = []
    train_cell(CellJob(experiment.runs, critical_norm, group_critical_norms or {}), BUILTINS,
               lambda record, log: logs.append(log))
    return sorted(logs, key=lambda log: log.run.seed)


def trajectory(log: RunLog, key: str) -> np.ndarray:
    return np.asarray(log.metrics[key])


@pytest.fixture(scope="module")
def free_logs() -> list[RunLog]:
    """The free run every intervention is compared with (same seeds, so the same start)."""
    return train({"name": "free"})


# ---------------------------------------------------------------------------------------------------
# Holding the norm.


def test_clamp_holds_the_norm_at_rho_wc_to_1e5_relative():
    logs = train({"name": "clamp", "rho": 0.8, "t_start": 20}, critical_norm=15.0)
    for log in logs:
        norms = trajectory(log, "weight_norm")
        assert np.all(np.abs(norms[19:] / (0.8 * 15.0) - 1) < 1e-5)
        assert log.facts["norm_before_clamp"] != pytest.approx(12.0, rel=1e-3)


def test_group_clamp_holds_that_group_at_rho_times_its_own_wc_and_leaves_the_others_free(free_logs):
    logs = train({"name": "group_clamp", "group": "readout", "rho": 0.5, "t_start": 20}, critical_norm=99.0,
                 group_critical_norms={"readout": 6.0, "hidden": 10.0, "embedding": 5.0})
    for log, free in zip(logs, free_logs):
        readout, hidden = trajectory(log, "norm/readout"), trajectory(log, "norm/hidden")
        assert np.all(np.abs(readout[19:] / 3.0 - 1) < 1e-5)
        np.testing.assert_array_equal(hidden[:19], trajectory(free, "norm/hidden")[:19])  # same start
        assert np.ptp(hidden[19:]) > 1e-3  # the other groups are not held
        assert log.facts["held_norm"] == pytest.approx(3.0) and log.facts["group_critical_norm"] == 6.0


def test_group_clamp_rescales_only_its_group_and_never_touches_the_others():
    tensors = [torch.randn(2, 4, 3, dtype=torch.float64) for _ in range(3)]
    untouched = [tensor.clone() for tensor in tensors[:2]]
    context = ControllerContext(None, 2, groups={"embedding": [0], "hidden": [1], "readout": [2]},
                                group_critical_norms={"readout": 2.0})
    clamp = BUILTINS.get("norm_controller", "group_clamp")
    controller = clamp.factory(clamp.config_class(group="readout", rho=1.5, t_start=1), context)
    controller.after_step(1, tensors)
    assert all(torch.equal(tensor, original) for tensor, original in zip(tensors[:2], untouched))
    torch.testing.assert_close(weight_norm(tensors[2:]), torch.full((2,), 3.0, dtype=torch.float64))


def test_a_group_the_architecture_lacks_is_an_error_naming_the_key_and_the_groups():
    with pytest.raises(UserError) as raised:
        train({"name": "group_clamp", "group": "unembed", "t_start": 20}, critical_norm=10.0,
              group_critical_norms={"readout": 6.0})
    message = str(raised.value)
    assert message.startswith("cell.toml: controller.group: controller 'group_clamp' needs the weight-norm "
                              "group 'unembed'")  # found when the file loads, before anything trains
    assert "(its groups: embedding, hidden, readout)" in message


def test_relative_clamp_holds_each_seed_at_factor_times_its_own_norm_at_t_start(free_logs):
    logs = train({"name": "relative_clamp", "factor": 1.15, "t_start": 20})
    held = []
    for log, free in zip(logs, free_logs):
        own_norm = trajectory(free, "weight_norm")[19]  # the free run's norm after step 20
        assert log.facts["norm_before_clamp"] == pytest.approx(own_norm, rel=1e-6)
        assert np.all(np.abs(trajectory(log, "weight_norm")[19:] / (1.15 * own_norm) - 1) < 1e-5)
        held.append(1.15 * own_norm)
    assert np.ptp(held) > 1e-2  # each seed has its own held norm


def test_relative_clamp_keeps_each_remaining_seeds_own_norm_when_others_leave():
    relative = BUILTINS.get("norm_controller", "relative_clamp")
    controller = relative.factory(relative.config_class(factor=2.0, t_start=1), ControllerContext(None, 3))
    tensors = [torch.randn(3, 5, dtype=torch.float64)]
    first = weight_norm(tensors)
    controller.after_step(1, tensors)
    controller.keep(torch.tensor([0, 2]))
    kept = [tensors[0][[0, 2]] * 0.5]
    controller.after_step(2, kept)
    torch.testing.assert_close(weight_norm(kept), 2.0 * first[[0, 2]])


# ---------------------------------------------------------------------------------------------------
# One-shot interventions.


def test_rescale_sets_the_norm_once_at_t_start_and_then_lets_it_evolve(free_logs):
    logs = train({"name": "rescale", "rho": 0.7, "t_start": 20}, critical_norm=15.0)
    for log, free in zip(logs, free_logs):
        norms = trajectory(log, "weight_norm")
        np.testing.assert_array_equal(norms[:19], trajectory(free, "weight_norm")[:19])
        assert norms[19] == pytest.approx(0.7 * 15.0, rel=1e-5)
        assert np.all(np.abs(norms[21:] / (0.7 * 15.0) - 1) > 1e-4)  # free afterwards
        assert log.facts["norm_after_intervention"] == pytest.approx(10.5, rel=1e-5)


def test_group_rescale_multiplies_one_group_once(free_logs):
    logs = train({"name": "group_rescale", "group": "embedding", "factor": 0.5, "t_start": 20})
    for log, free in zip(logs, free_logs):
        embedding = trajectory(log, "norm/embedding")
        free_embedding = trajectory(free, "norm/embedding")
        assert log.facts["group_norm_before_intervention"] == pytest.approx(free_embedding[19], rel=1e-6)
        assert embedding[19] == pytest.approx(0.5 * free_embedding[19], rel=1e-5)
        assert trajectory(log, "norm/hidden")[19] == pytest.approx(trajectory(free, "norm/hidden")[19], rel=1e-6)
        assert embedding[25] != pytest.approx(embedding[19], rel=1e-4)  # not held


def test_group_rescale_of_all_groups_multiplies_every_norm_tensor():
    tensors = [torch.randn(2, 4, 3, dtype=torch.float64) for _ in range(3)]
    before = weight_norm(tensors)
    context = ControllerContext(None, 2, groups={"embedding": [0], "hidden": [1], "readout": [2]})
    rescale = BUILTINS.get("norm_controller", "group_rescale")
    facts = rescale.factory(rescale.config_class(group="all", factor=0.8, t_start=3), context).after_step(3, tensors)
    torch.testing.assert_close(weight_norm(tensors), 0.8 * before)
    torch.testing.assert_close(facts["norm_after_intervention"], 0.8 * before)


def test_initial_rescale_multiplies_the_initial_norm_by_factor():
    logs = train({"name": "initial_rescale", "factor": 3.0}, steps=5)
    for log in logs:
        assert log.facts["norm_after_intervention"] == pytest.approx(3.0 * log.facts["norm_before_intervention"],
                                                                    rel=1e-6)
        assert trajectory(log, "weight_norm")[0] == pytest.approx(log.facts["norm_after_intervention"], rel=0.05)


# ---------------------------------------------------------------------------------------------------
# Layer allocation and row clipping.


def test_allocated_shares_move_the_group_share_by_gamma_and_the_partner_absorbs_it():
    target, partner = allocated_shares(torch.tensor([0.2, 0.2, 0.5]), torch.tensor([0.15, 0.15, 0.2]),
                                       0.3)
    torch.testing.assert_close(target, torch.tensor([0.26, 0.26, 0.65]))
    torch.testing.assert_close(partner, torch.tensor([0.09, 0.09, 0.05]))
    target, partner = allocated_shares(torch.tensor([0.5]), torch.tensor([0.1]), 0.6)  # clipped at the pool
    torch.testing.assert_close((target, partner), (torch.tensor([0.6]), torch.tensor([0.0])))


def test_layer_allocation_keeps_the_total_and_moves_the_share_by_gamma():
    generator = torch.Generator().manual_seed(1)
    tensors = [torch.randn(3, 6, 4, generator=generator, dtype=torch.float64) for _ in range(3)]
    norms = torch.stack([weight_norm([tensor]) for tensor in tensors], 1)
    shares = norms.pow(2) / norms.pow(2).sum(1, keepdim=True)
    context = ControllerContext(8.0, 3, groups={"embedding": [0], "hidden": [1], "readout": [2]})
    allocation = BUILTINS.get("norm_controller", "layer_allocation")
    controller = allocation.factory(allocation.config_class(rho=1.25, allocation=0.3, t_start=5), context)
    assert controller.after_step(4, tensors) is None
    facts = controller.after_step(5, tensors)
    held = 1.25 * 8.0
    for step in (5, 6):
        if step == 6:  # a step of training moves every group; the hold puts the shares back
            for tensor in tensors:
                tensor.mul_(torch.rand(3, 1, 1, generator=generator, dtype=torch.float64) + 0.5)
            controller.after_step(6, tensors)
        after = torch.stack([weight_norm([tensor]) for tensor in tensors], 1).pow(2) / held ** 2
        torch.testing.assert_close(weight_norm(tensors), torch.full((3,), held, dtype=torch.float64))
        torch.testing.assert_close(after[:, 2], shares[:, 2] * 1.3)  # readout share x (1 + gamma)
        torch.testing.assert_close(after[:, 1], shares[:, 1])  # hidden share unchanged
        torch.testing.assert_close(after[:, 0], shares[:, 0] - 0.3 * shares[:, 2])  # the embedding absorbs it
    torch.testing.assert_close(facts["share_before"], shares[:, 2])
    torch.testing.assert_close(facts["norm_after_intervention"], torch.full((3,), held, dtype=torch.float64))


def test_clip_rows_leaves_every_chosen_row_at_most_the_bound_and_others_untouched():
    generator = torch.Generator().manual_seed(2)
    tensors = [torch.randn(2, 7, 5, generator=generator, dtype=torch.float64) * 2 for _ in range(3)]
    original = [tensor.clone() for tensor in tensors]
    context = ControllerContext(None, 2, groups={"embedding": [0], "hidden": [1], "readout": [2]},
                                tensor_names=["embedding", "w_in", "w_out"])
    clip = BUILTINS.get("norm_controller", "clip_rows")
    controller = clip.factory(clip.config_class(max_row_norm=3.0, matrices=["embedding", "w_out"]), context)
    controller.after_step(1, tensors)
    for position in (0, 2):
        rows, before = tensors[position].norm(dim=-1), original[position].norm(dim=-1)
        assert (rows <= 3.0 + 1e-12).all() and (before > 3.0).any()
        torch.testing.assert_close(rows, before.clamp(max=3.0))
        directions = torch.nn.functional.cosine_similarity(tensors[position], original[position], dim=-1)
        torch.testing.assert_close(directions, torch.ones_like(directions))  # only the length changes
    assert torch.equal(tensors[1], original[1])


def test_clip_rows_in_training_keeps_rows_under_the_bound():
    logs = train({"name": "clip_rows", "max_row_norm": 0.3, "matrices": ["readout"]}, steps=30)
    for log in logs:  # 16 rows of at most 0.3: the readout norm can never exceed 0.3 * sqrt(16)
        readout = trajectory(log, "norm/readout")
        assert readout.max() <= 0.3 * 4 + 1e-5 and readout.max() > 1.0  # the bound binds (free: ~3.6)


def test_clip_rows_refuses_an_unknown_matrix_naming_the_choices():
    with pytest.raises(UserError, match=r"^cell.toml: controller.matrices: unknown 'w_hidden'; expected group names"):
        train({"name": "clip_rows", "max_row_norm": 1.0, "matrices": ["w_hidden"]}, steps=2)


# ---------------------------------------------------------------------------------------------------
# Per-group critical norms, from the records to a whole study.


def record(run_id: str, norm_at_grok: float | None, **group_norms: float) -> RunRecord:
    facts = {f"norm_at_grok/{group}": value for group, value in group_norms.items()}
    return RunRecord(run_id=run_id, stage="free", cell={}, seed=0, config={}, t_mem=10,
                     t_grok=None if norm_at_grok is None else 100, norm_at_grok=norm_at_grok, budget=200,
                     facts=facts)


def test_per_group_critical_norms_are_medians_over_grokked_source_seeds():
    source = ("a", "b", "c", "d")
    cell = [type("Run", (), {"critical_norm_source": source})()]
    records = [record("a", 10.0, readout=4.0, hidden=7.0), record("b", 12.0, readout=6.0, hidden=9.0),
               record("c", 11.0, readout=5.0, hidden=8.5), record("d", None),
               record("other", 50.0, readout=50.0, hidden=50.0)]
    wc, group_wcs = resolve_critical_norms(Stage("clamp", "free", []), cell, records)
    assert wc == 11.0 and group_wcs == {"hidden": 8.5, "readout": 5.0}
    assert resolve_critical_norms(Stage("clamp", "free", []), cell, records[3:4]) == (None, {})
    assert resolve_critical_norms(Stage("clamp", 42.0, []), cell, records) == (42.0, {})


GROUP_CLAMP = {"name": "readout_clamp", "critical_norm": "free",
               "controller": {"name": "group_clamp", "group": "readout", "rho": 1.1, "t_start": 100}}


def test_a_group_clamp_stage_holds_the_readout_at_rho_times_the_free_stages_readout_norm_at_grok(
        tmp_path, monkeypatch):
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    monkeypatch.setattr(gnorm.registry, "default_registry", lambda: BUILTINS)
    path = write_study(tmp_path, filename="groups.toml", experiment={"name": "groups"}, stages=[FREE, GROUP_CLAMP])
    result = CliRunner().invoke(main, ["run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    store = Store(tmp_path / "out")
    records = store.records()
    free = [r for r in records if r.stage == "free" and not r.censored]
    clamped = [r for r in records if r.stage == "readout_clamp"]
    assert len(free) == 2 and len(clamped) == 2
    for run in free:  # the group norms at grok add up to the total
        total = sum(run.facts[f"norm_at_grok/{group}"] ** 2 for group in ("embedding", "hidden", "readout"))
        assert np.sqrt(total) == pytest.approx(run.norm_at_grok, rel=1e-5)
    readout_wc = float(np.median([r.facts["norm_at_grok/readout"] for r in free]))
    for run in clamped:
        assert run.facts["group_critical_norm"] == pytest.approx(readout_wc)
        assert run.facts["held_norm"] == pytest.approx(1.1 * readout_wc)
        trajectory = store.trajectory(run.run_id)
        steps, readout = np.asarray(trajectory["step"]), np.asarray(trajectory["norm/readout"])
        assert np.all(np.abs(readout[steps >= 100] / (1.1 * readout_wc) - 1) < 1e-5)
