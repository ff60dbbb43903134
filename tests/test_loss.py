"""The [loss] section: cross-entropy or MSE (loss plugins) on logits divided by the output temperature tau."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from builders import write_study
from gnorm.builtins.architectures import MLP, MLPConfig
from gnorm.builtins.tasks import ModularConfig, ModularTask
from gnorm.builtins.losses import TemperatureConfig
from gnorm.errors import UserError
from gnorm.loader import load_experiment
from gnorm.registry import build_registry
from gnorm.runmodel import ComponentChoice
from gnorm.science import cross_entropy_losses, mse_losses
from gnorm.training.build import build_ensemble, train_cell
from gnorm.training.ensemble import Ensemble
from gnorm.training.jobs import CellJob

BUILTINS = build_registry(autoload=False)


def ensemble(loss=cross_entropy_losses, temperature: float = 1.0) -> tuple[Ensemble, list, list]:
    task = ModularTask(ModularConfig(p=11, train_fraction=0.5), torch.add)
    modules, splits = [], []
    for seed in (0, 1):
        torch.manual_seed(seed)
        modules.append(MLP(MLPConfig(embed_dim=8, hidden_dim=16), task).double())
        splits.append(task.split(seed))
    return (Ensemble(modules, splits, torch.device("cpu"), torch.float64, loss=loss, temperature=temperature),
            modules, splits)


def hand_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """mean_i [log sum_c exp(z_ic) - z_iy]."""
    return (torch.logsumexp(logits, -1) - logits.gather(1, labels.unsqueeze(1)).squeeze(1)).mean()


def test_example_losses_match_their_formulas_on_numbers_worked_by_hand():
    logits, labels = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, -1.0]]), torch.tensor([0, 2])
    expected_ce = [math.log(1 + 2 * math.exp(-2)), math.log(1 + math.e + math.exp(-1)) + 1]
    torch.testing.assert_close(cross_entropy_losses(logits, labels), torch.tensor(expected_ce))
    torch.testing.assert_close(mse_losses(logits, labels), torch.tensor([1 / 3, (0 + 1 + 4) / 3]))


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_temperature_divides_the_logits_before_the_cross_entropy(temperature):
    members, modules, splits = ensemble(temperature=temperature)
    measured = members.evaluate()
    for m, (module, split) in enumerate(zip(modules, splits)):
        with torch.no_grad():
            logits = module(split.inputs) / temperature
        for name, index in (("train", split.train_index), ("test", split.test_index)):
            expected = hand_cross_entropy(logits[index], split.labels[index])
            assert measured[f"{name}_loss"][m].item() == pytest.approx(expected.item(), rel=1e-12)
            accuracy = (logits[index].argmax(-1) == split.labels[index]).double().mean()
            assert measured[f"{name}_acc"][m].item() == pytest.approx(accuracy.item())
    if temperature != 1.0:
        assert not torch.allclose(measured["train_loss"], ensemble()[0].evaluate()["train_loss"])


def test_training_gradients_are_those_of_the_tempered_loss():
    members, modules, splits = ensemble(temperature=2.5)
    gradients = dict(zip(members.params, members.gradients()))
    for m, (module, split) in enumerate(zip(modules, splits)):
        loss = F.cross_entropy(module(split.inputs[split.train_index]) / 2.5, split.labels[split.train_index])
        names = [name for name, _ in module.named_parameters()]
        for name, grad in zip(names, torch.autograd.grad(loss, list(module.parameters()))):
            torch.testing.assert_close(gradients[name][m], grad, rtol=1e-10, atol=1e-12)


def test_mse_loss_is_the_mean_squared_error_to_the_one_hot_label_of_the_tempered_logits():
    members, modules, splits = ensemble(loss=mse_losses, temperature=1.5)
    measured = members.evaluate()
    for m, (module, split) in enumerate(zip(modules, splits)):
        with torch.no_grad():
            logits = module(split.inputs[split.train_index]) / 1.5
        one_hot = F.one_hot(split.labels[split.train_index], 11).double()
        expected = ((logits - one_hot) ** 2).sum(1).mean() / 11
        assert measured["train_loss"][m].item() == pytest.approx(expected.item(), rel=1e-12)


def load(tmp_path, loss: dict | None = None, stage: dict | None = None, training: dict | None = None):
    """The cell (p = 11, d = 8, H = 16, lr 1e-2, 300 steps) with its ``[loss]`` table, its stage's and its
    training table's extra keys."""
    path = write_study(tmp_path, filename="loss.toml", experiment={"name": "loss"}, task={"p": 11},
                       architecture={"embed_dim": 8, "hidden_dim": 16}, optimizer={"lr": 1e-2},
                       training={"max_steps": 300, **(training or {})},
                       evaluation={"every": 50, "stop_when_grokked": False}, loss=loss or {},
                       stages=[{"name": "main", **(stage or {})}])
    return load_experiment(path, BUILTINS)


def train(experiment) -> list:
    records = []
    train_cell(CellJob(experiment.runs, None), BUILTINS, lambda record, log: records.append((record, log)))
    return records


def test_a_run_trained_under_mse_lowers_its_mse(tmp_path):
    experiment = load(tmp_path, loss={"name": "mse", "temperature": 2.0})
    assert {run.loss for run in experiment.runs} == {ComponentChoice("mse", TemperatureConfig(2.0))}
    for _, log in train(experiment):
        assert log.metrics["train_loss"][-1] < 0.5 * log.metrics["train_loss"][0]


def test_a_float64_run_trains_in_float64(tmp_path):
    experiment = load(tmp_path, training={"precision": "float64"})
    members, _ = build_ensemble(CellJob(experiment.runs, None), BUILTINS)
    assert {p.dtype for p in members.parameters} == {torch.float64}
    for _, log in train(experiment):
        assert log.metrics["train_loss"][-1] < 0.5 * log.metrics["train_loss"][0]


def test_temperature_is_part_of_a_runs_identity_but_not_of_its_start(tmp_path):
    experiment = load(tmp_path, stage={"sweep": {"loss.temperature": [1.0, 1.5]}})
    by_tau = {}
    for run in experiment.runs:
        by_tau.setdefault(run.loss.config.temperature, []).append(run)
    assert set(by_tau) == {1.0, 1.5}
    assert by_tau[1.5][0].plain()["loss"] == {"name": "cross_entropy", "temperature": 1.5}
    for cold, hot in zip(by_tau[1.0], by_tau[1.5]):
        assert cold.run_id != hot.run_id
        assert (cold.init_seed, cold.split_seed) == (hot.init_seed, hot.split_seed)


def test_a_stage_can_set_its_own_loss(tmp_path):
    experiment = load(tmp_path, stage={"loss": {"name": "mse"}})
    assert {run.loss for run in experiment.runs} == {ComponentChoice("mse", TemperatureConfig(1.0))}


@pytest.mark.parametrize("loss, stage, line", [
    ({"name": "hinge"}, {}, "loss.name: unknown loss 'hinge'; known: cross_entropy, mse, stablemax_cross_entropy"),
    ({"temperature": 0}, {}, "loss.temperature: 'temperature' must be > 0: 0.0"),
    ({"temprature": 2.0}, {}, "loss.temprature: unknown key (did you mean 'temperature'?)"),
    ({}, {"sweep": {"loss.temperature": [1.0, -2.0]}},
     "stage[main].sweep.\"loss.temperature\"[1]: 'temperature' must be > 0: -2.0"),
])
def test_a_bad_loss_setting_is_one_line_naming_the_file_and_key(tmp_path, loss, stage, line):
    with pytest.raises(UserError) as raised:
        load(tmp_path, loss=loss, stage=stage)
    assert [str(problem) for problem in raised.value.problems] == [f"{tmp_path / 'loss.toml'}: {line}"]
