"""The loss plugins: StableMax cross-entropy equals its definition and does not saturate in float32
where softmax does; every loss trains each ensemble member on its own logits; the choice is a run's
identity but never its start."""

from __future__ import annotations

import math

import pytest
import torch

from gnorm.builtins.architectures import MLP, MLPConfig
from gnorm.builtins.losses import TemperatureConfig
from gnorm.builtins.tasks import ModularConfig, ModularTask
from gnorm.loader import load_experiment
from gnorm.registry import build_registry
from gnorm.science import cross_entropy_losses, stablemax, stablemax_cross_entropy_losses
from gnorm.training.ensemble import Ensemble

BUILTINS = build_registry(autoload=False)


def stablemax_by_definition(row: list[float], label: int) -> tuple[list[float], float]:
    """s(x) = x + 1 (x >= 0), 1 / (1 - x) (x < 0); p_i = s(x_i) / sum_j s(x_j); loss -log p_label."""
    scores = [x + 1 if x >= 0 else 1 / (1 - x) for x in row]
    total = sum(scores)
    return [s / total for s in scores], -math.log(scores[label] / total)


def test_stablemax_equals_its_definition_on_random_logits():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 7, generator=generator, dtype=torch.float64) * 5
    labels = torch.randint(0, 7, (64,), generator=generator)
    probabilities, losses = stablemax(logits), stablemax_cross_entropy_losses(logits, labels)
    for i in range(64):
        expected_p, expected_loss = stablemax_by_definition(logits[i].tolist(), int(labels[i]))
        assert probabilities[i].tolist() == pytest.approx(expected_p, rel=1e-12)
        assert losses[i].item() == pytest.approx(expected_loss, rel=1e-12)
    assert (logits < 0).any() and (logits >= 0).any()  # both branches of s were exercised


def test_stablemax_does_not_saturate_in_float32_where_softmax_does():
    """z = (200, 0, ..., 0): softmax gives the label exactly probability 1.0 in float32 (the others'
    e^-200 underflows), so cross-entropy and its gradient are exactly 0 and learning stops; StableMax
    gives p = 201 / 210, a positive loss and a gradient that still pushes."""
    logits = torch.zeros(1, 10)
    logits[0, 0] = 200.0
    labels = torch.tensor([0])
    assert torch.softmax(logits, -1)[0, 0].item() == 1.0
    softmax_logits = logits.clone().requires_grad_()
    ce = cross_entropy_losses(softmax_logits, labels).sum()
    (ce_grad,) = torch.autograd.grad(ce, softmax_logits)
    assert ce.item() == 0.0 and torch.count_nonzero(ce_grad) == 0
    stable_logits = logits.clone().requires_grad_()
    stable = stablemax_cross_entropy_losses(stable_logits, labels).sum()
    (stable_grad,) = torch.autograd.grad(stable, stable_logits)
    assert stable.item() == pytest.approx(math.log(210 / 201), rel=1e-5) and stable.item() > 0
    assert torch.isfinite(stable_grad).all() and torch.count_nonzero(stable_grad) == 10


def members(seeds=(0, 1, 2)):
    task = ModularTask(ModularConfig(p=11, train_fraction=0.5), torch.add)
    modules, splits = [], []
    for seed in seeds:
        torch.manual_seed(seed)
        modules.append(MLP(MLPConfig(embed_dim=8, hidden_dim=16), task).double())
        splits.append(task.split(seed))
    return modules, splits


@pytest.mark.parametrize("name", ["stablemax_cross_entropy", "mse", "cross_entropy"])
def test_every_member_gets_the_gradient_of_its_own_loss_on_its_own_logits(name):
    loss = BUILTINS.get("loss", name)
    losses = loss.factory(TemperatureConfig(2.0))
    modules, splits = members()
    ensemble = Ensemble(modules, splits, torch.device("cpu"), torch.float64, loss=losses, temperature=2.0)
    gradients = dict(zip(ensemble.params, ensemble.gradients()))
    measured = ensemble.evaluate()
    for m, (module, split) in enumerate(zip(modules, splits)):
        logits = module(split.inputs[split.train_index]) / 2.0
        own = losses(logits, split.labels[split.train_index]).mean()
        assert measured["train_loss"][m].item() == pytest.approx(own.item(), rel=1e-12)
        names = [n for n, _ in module.named_parameters()]
        for n, grad in zip(names, torch.autograd.grad(own, list(module.parameters()))):
            torch.testing.assert_close(gradients[n][m], grad, rtol=1e-10, atol=1e-12)


def test_three_members_on_stablemax_train_as_each_alone():
    losses = BUILTINS.get("loss", "stablemax_cross_entropy").factory(TemperatureConfig())
    modules, splits = members()
    together = Ensemble(modules, splits, torch.device("cpu"), torch.float64, loss=losses)
    alone = [Ensemble([modules[m]], [splits[m]], torch.device("cpu"), torch.float64, loss=losses) for m in range(3)]
    for ensemble in [together, *alone]:
        for _ in range(30):
            grads = ensemble.gradients()
            with torch.no_grad():
                for p, g in zip(ensemble.parameters, grads):
                    p.sub_(0.5 * g)
    for m in range(3):
        for n in together.params:
            torch.testing.assert_close(together.params[n][m], alone[m].params[n][0], rtol=1e-12, atol=1e-14)


FILE = """
[experiment]
name = "losses"
seeds = 2

[task]
name = "modular_addition"
p = 11

[architecture]
name = "mlp"
embed_dim = 8
hidden_dim = 16

[loss]
{loss}
"""


def load(tmp_path, loss: str = ""):
    path = tmp_path / "losses.toml"
    path.write_text(FILE.format(loss=loss))
    return load_experiment(path, BUILTINS)


def test_stablemax_is_another_run_from_the_same_start_and_the_default_loss_stays_out_of_the_identity(tmp_path):
    default, named = load(tmp_path), load(tmp_path, 'name = "cross_entropy"\ntemperature = 1.0')
    stable = load(tmp_path, 'name = "stablemax_cross_entropy"')
    assert [r.run_id for r in default.runs] == [r.run_id for r in named.runs]
    assert "loss" not in default.runs[0].identity()
    assert stable.runs[0].identity()["loss"] == {"name": "stablemax_cross_entropy", "temperature": 1.0}
    for d, s in zip(default.runs, stable.runs):
        assert d.run_id != s.run_id
        assert (d.init_seed, d.split_seed) == (s.init_seed, s.split_seed)
