"""Tasks: labels checked by hand, splits that depend only on the seed, and refused configurations."""

from __future__ import annotations

import pytest
import torch

from builders import write_study
from gnorm.builtins.architectures import MLP, MLPConfig
from gnorm.builtins.tasks import (ModularConfig, PrimeModularConfig, SparseParityConfig, SparseParityTask,
                                  is_prime, modular_inverses, parity_labels)
from gnorm.errors import UserError
from gnorm.loader import load_experiment
from gnorm.registry import build_registry
from gnorm.builtins.optimizers import AdamWConfig as OptimizerConfig
from gnorm.training.ensemble import Ensemble
from gnorm.training.optimizer import BatchedAdamW

REGISTRY = build_registry(autoload=False)


def _task(name: str, **config):
    component = REGISTRY.get("task", name)
    return component.factory(component.config_class(**config))


def _label(task, a: int, b: int) -> int:
    rows = ((task.inputs[:, 0] == a) & (task.inputs[:, 1] == b)).nonzero().flatten()
    assert len(rows) == 1
    return int(task.labels[rows[0]])


@pytest.mark.parametrize("name, pairs", [
    ("modular_subtraction", {(5, 3): 2, (3, 5): 11, (0, 1): 12, (7, 7): 0}),
    ("modular_sum_of_squares", {(2, 3): 0, (1, 1): 2, (12, 12): 2, (5, 0): 12}),
    ("modular_division", {(1, 2): 7, (6, 3): 2, (1, 12): 12, (0, 5): 0, (4, 8): 7}),
])
def test_labels_of_hand_checked_pairs_at_p_13(name, pairs):
    task = _task(name, p=13, train_fraction=0.5)
    assert task.num_classes == 13 and task.input_spec.vocab_size == 13
    for (a, b), label in pairs.items():
        assert _label(task, a, b) == label, (a, b)


def test_division_covers_the_pairs_with_nonzero_divisor_and_inverts_multiplication():
    p = 13
    division = _task("modular_division", p=p, train_fraction=0.5)
    assert len(division.labels) == p * (p - 1) and bool((division.inputs[:, 1] != 0).all())
    a, b = division.inputs.unbind(1)
    assert torch.equal(division.labels * b % p, a)  # (a / b) * b = a
    assert torch.equal(modular_inverses(p)[1:] * torch.arange(1, p) % p, torch.ones(p - 1, dtype=torch.long))


def test_division_by_a_composite_modulus_is_refused_under_its_key(tmp_path):
    path = write_study(tmp_path, filename="division.toml", task={"name": "modular_division", "p": 12})
    with pytest.raises(UserError) as raised:
        load_experiment(path, REGISTRY)
    assert [str(problem) for problem in raised.value.problems] == [
        f"{path}: task.p: 'p' must be prime (division needs every b != 0 to have an inverse), found 12"]
    assert [n for n in range(20) if is_prime(n)] == [2, 3, 5, 7, 11, 13, 17, 19]
    PrimeModularConfig(p=13)  # accepted


@pytest.mark.parametrize("name", ["modular_subtraction", "modular_division", "modular_sum_of_squares"])
def test_modular_splits_depend_only_on_the_seed_and_are_disjoint(name):
    task = _task(name, p=11, train_fraction=0.4)
    first, again, other = task.split(3), task.split(3), task.split(4)
    assert torch.equal(first.train_index, again.train_index)
    assert not torch.equal(first.train_index, other.train_index)
    assert set(first.train_index.tolist()).isdisjoint(first.test_index.tolist())
    assert len(first.train_index) + len(first.test_index) == len(task.labels)
    assert len(first.train_index) == round(0.4 * len(task.labels))


def test_parity_labels_by_hand():
    x = torch.tensor([[1.0, 1, 1, -1], [-1.0, 1, 1, -1], [-1.0, -1, 1, 1], [-1.0, -1, -1, 1]])
    assert parity_labels(x, 3).tolist() == [0, 1, 0, 1]  # odd number of -1 among the first 3 bits -> 1
    assert parity_labels(x, 1).tolist() == [0, 1, 1, 1]


def test_sparse_parity_draws_train_and_test_sets_from_the_seed():
    config = SparseParityConfig(n_bits=30, k=3, train_size=100, test_size=200)
    task = SparseParityTask(config)
    assert task.input_spec.kind == "vector" and task.input_spec.length == 30 and task.num_classes == 2
    split, again, other = task.split(5), task.split(5), task.split(6)
    assert split.inputs.shape == (300, 30) and split.inputs.dtype.is_floating_point
    assert set(split.inputs.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(split.inputs, again.inputs) and torch.equal(split.train_index, again.train_index)
    assert not torch.equal(split.inputs, other.inputs)  # a fresh sample, training and test alike
    assert len(split.train_index) == 100 and len(split.test_index) == 200
    assert set(split.train_index.tolist()).isdisjoint(split.test_index.tolist())
    signs = split.inputs[:, :3].prod(1)
    assert torch.equal(split.labels, (signs < 0).long())
    assert 0.35 < split.labels.float().mean() < 0.65  # both classes, about half each


def test_each_ensemble_member_trains_on_its_own_parity_sample():
    task = SparseParityTask(SparseParityConfig(n_bits=10, k=2, train_size=64, test_size=64))
    splits = [task.split(seed) for seed in (0, 1)]
    modules = []
    for _ in splits:
        torch.manual_seed(0)  # the same initial weights; only the samples differ
        modules.append(MLP(MLPConfig(hidden_dim=16), task))
    ensemble = Ensemble(modules, splits, torch.device("cpu"), torch.float64)
    assert torch.equal(ensemble.train_inputs[1], splits[1].inputs[:64].double())
    optimizer = BatchedAdamW(ensemble.parameters, [n in ensemble.norm_names for n in ensemble.params],
                             OptimizerConfig(lr=1e-2, weight_decay=0.1))
    start = ensemble.evaluate()
    for _ in range(100):
        optimizer.step(ensemble.parameters, ensemble.gradients())
    end = ensemble.evaluate()
    assert (end["train_loss"] < 0.5 * start["train_loss"]).all()  # each fits its own sample
    assert end["train_loss"][0] != end["train_loss"][1]


def test_sparse_parity_defaults_match_the_paper():
    assert SparseParityConfig() == SparseParityConfig(n_bits=30, k=3, train_size=1000, test_size=2000)


def test_parity_with_more_relevant_bits_than_bits_is_refused(tmp_path):
    path = write_study(tmp_path, filename="parity.toml",
                       task={"name": "sparse_parity", "p": None, "train_fraction": None, "n_bits": 4, "k": 5})
    with pytest.raises(UserError) as raised:
        load_experiment(path, REGISTRY)
    assert [str(problem) for problem in raised.value.problems] == [
        f"{path}: task.k: 'k' must be at most n_bits (4), found 5"]


def test_modular_config_is_unchanged():
    assert ModularConfig() == ModularConfig(p=97, train_fraction=0.4)
