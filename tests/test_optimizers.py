"""The optimizer plugins: each built-in equals torch.optim's own on one model, the batched ensemble
trains every member as it would train alone, and the choice is a run's identity but never its start."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from gnorm.builtins.architectures import MLP, MLPConfig
from gnorm.builtins.optimizers import AdamConfig, AdamWConfig, SGDConfig
from gnorm.builtins.tasks import ModularConfig, ModularTask
from gnorm.errors import UserError
from gnorm.loader import load_experiment
from gnorm.registry import build_registry
from gnorm.runmodel import ComponentChoice
from gnorm.training.build import build_optimizer
from gnorm.training.ensemble import Ensemble

BUILTINS = build_registry(autoload=False)
STEPS = 50

#: name, config, and the torch.optim optimizer that computes the same update given param groups
#: (weight-norm tensors, the rest).
CASES = {
    "adamw": (AdamWConfig(lr=3e-3, weight_decay=1.0),
              lambda norm, rest, c: torch.optim.AdamW([{"params": norm, "weight_decay": c.weight_decay},
                                                       {"params": rest, "weight_decay": 0.0}],
                                                      lr=c.lr, betas=(c.beta1, c.beta2), eps=c.eps)),
    "adam": (AdamConfig(lr=3e-3),
             lambda norm, rest, c: torch.optim.Adam(norm + rest, lr=c.lr, betas=(c.beta1, c.beta2), eps=c.eps)),
    "sgd": (SGDConfig(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01),
            lambda norm, rest, c: torch.optim.SGD([{"params": norm, "weight_decay": c.weight_decay},
                                                   {"params": rest, "weight_decay": 0.0}],
                                                  lr=c.lr, momentum=c.momentum, dampening=c.dampening)),
    "sgd_nesterov": (SGDConfig(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
                     lambda norm, rest, c: torch.optim.SGD([{"params": norm, "weight_decay": c.weight_decay},
                                                            {"params": rest, "weight_decay": 0.0}],
                                                           lr=c.lr, momentum=c.momentum, nesterov=True)),
    "sgd_plain": (SGDConfig(lr=0.1), lambda norm, rest, c: torch.optim.SGD(norm + rest, lr=c.lr)),
}


def members(seeds=(0, 1, 2)):
    task = ModularTask(ModularConfig(p=11, train_fraction=0.5), torch.add)
    modules, splits = [], []
    for seed in seeds:
        torch.manual_seed(seed)
        modules.append(MLP(MLPConfig(embed_dim=8, hidden_dim=16), task).double())
        splits.append(task.split(seed))
    return modules, splits


def train_together(modules, splits, name: str, config, steps: int = STEPS) -> Ensemble:
    ensemble = Ensemble(modules, splits, torch.device("cpu"), torch.float64)
    optimizer = build_optimizer(ensemble, ComponentChoice(name, config), BUILTINS)
    for _ in range(steps):
        optimizer.step(ensemble.parameters, ensemble.gradients())
    return ensemble


def train_alone_with_torch(module, split, make_optimizer, config, steps: int = STEPS) -> torch.nn.Module:
    """One module and torch.optim, the way users write it: decay on the weight-norm tensors only."""
    module = copy.deepcopy(module)
    norm_names = {n for group in module.weight_norm_groups().values() for n in group}
    norm = [p for n, p in module.named_parameters() if n in norm_names]
    rest = [p for n, p in module.named_parameters() if n not in norm_names]
    optimizer = make_optimizer(norm, rest, config)
    inputs, labels = split.inputs[split.train_index], split.labels[split.train_index]
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(module(inputs), labels).backward()
        optimizer.step()
    return module


@pytest.mark.parametrize("case", list(CASES))
def test_each_optimizer_equals_torch_optims_on_every_member(case):
    name = case.split("_")[0]
    config, make_optimizer = CASES[case]
    modules, splits = members()
    ensemble = train_together(modules, splits, name, config)
    for m, (module, split) in enumerate(zip(modules, splits)):
        alone = train_alone_with_torch(module, split, make_optimizer, config)
        for n, p in alone.named_parameters():
            moved = (p - module.get_parameter(n)).abs().max()
            assert moved > 1e-3, f"{n} barely trained"  # the comparison is not of untouched weights
            torch.testing.assert_close(ensemble.params[n][m], p.detach(), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name, config", [("adam", AdamConfig(lr=3e-3)),
                                          ("sgd", SGDConfig(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01))])
def test_three_members_trained_as_one_ensemble_equal_each_trained_alone(name, config):
    modules, splits = members()
    together = train_together(modules, splits, name, config, steps=50)
    for m in range(3):
        alone = train_together([modules[m]], [splits[m]], name, config, steps=50)
        for n in together.params:
            torch.testing.assert_close(together.params[n][m], alone.params[n][0], rtol=1e-12, atol=1e-14)


def test_sgd_momentum_state_travels_with_its_member_into_a_fork_and_out_of_the_ensemble():
    modules, splits = members()
    ensemble = Ensemble(modules, splits, torch.device("cpu"), torch.float64)
    optimizer = build_optimizer(ensemble, ComponentChoice("sgd", SGDConfig(lr=0.05, momentum=0.9)), BUILTINS)
    for _ in range(5):
        optimizer.step(ensemble.parameters, ensemble.gradients())
    states = [ensemble.member_state(optimizer, m) for m in range(3)]
    assert set(states[0].parts()) == {"params", "buffers", "momentum_buffer"}
    copy_ = Ensemble(modules, splits, torch.device("cpu"), torch.float64)
    copied = build_optimizer(copy_, ComponentChoice("sgd", SGDConfig(lr=0.05, momentum=0.9)), BUILTINS)
    copy_.start_from(copied, states)
    for _ in range(5):
        optimizer.step(ensemble.parameters, ensemble.gradients())
        copied.step(copy_.parameters, copy_.gradients())
    assert all(torch.equal(a, b) for a, b in zip(ensemble.parameters, copy_.parameters))
    ensemble.keep(torch.tensor([2]))
    optimizer.keep(torch.tensor([2]))
    assert all(b.shape[0] == 1 for b in optimizer.state_tensors()["momentum_buffer"])


FILE = """
[experiment]
name = "optimizers"
seeds = 2

[task]
name = "modular_addition"
p = 11

[architecture]
name = "mlp"
embed_dim = 8
hidden_dim = 16

[optimizer]
{optimizer}

[training]
max_steps = 100
"""


def load(tmp_path, optimizer: str = ""):
    path = tmp_path / "optimizers.toml"
    path.write_text(FILE.format(optimizer=optimizer))
    return load_experiment(path, BUILTINS)


def test_adamw_by_name_or_by_default_is_the_same_run_as_before_optimizers_had_names(tmp_path):
    default, named = load(tmp_path, "lr = 1e-3"), load(tmp_path, 'name = "adamw"\nlr = 1e-3')
    assert [r.run_id for r in default.runs] == [r.run_id for r in named.runs]
    assert "name" not in default.runs[0].identity()["optimizer"]
    assert default.runs[0].plain()["optimizer"]["name"] == "adamw"


def test_another_optimizer_is_another_run_from_the_same_start(tmp_path):
    adamw = load(tmp_path, "weight_decay = 0.0")
    sgd = load(tmp_path, 'name = "sgd"\nmomentum = 0.9')
    assert sgd.runs[0].optimizer == ComponentChoice("sgd", SGDConfig(momentum=0.9))
    assert sgd.runs[0].identity()["optimizer"]["name"] == "sgd"
    for a, s in zip(adamw.runs, sgd.runs):
        assert a.run_id != s.run_id
        assert (a.init_seed, a.split_seed) == (s.init_seed, s.split_seed)


@pytest.mark.parametrize("optimizer, line", [
    ('name = "lion"', "optimizer.name: unknown optimizer 'lion'; known: adam, adamw, sgd"),
    ('name = "sgd"\nbeta1 = 0.9', "optimizer.beta1: unknown key"),
    ('name = "sgd"\nnesterov = true', "optimizer.nesterov: 'nesterov' needs momentum > 0"),
])
def test_a_bad_optimizer_setting_is_one_line_naming_the_file_and_key(tmp_path, optimizer, line):
    with pytest.raises(UserError) as raised:
        load(tmp_path, optimizer)
    assert len(raised.value.problems) == 1
    assert str(raised.value.problems[0]).startswith(f"{tmp_path / 'optimizers.toml'}: {line}")


def test_gnorm_lists_the_optimizer_and_loss_kinds_with_their_built_ins():
    assert BUILTINS.names("optimizer") == ["adam", "adamw", "sgd"]
    assert BUILTINS.names("loss") == ["cross_entropy", "mse", "stablemax_cross_entropy"]
