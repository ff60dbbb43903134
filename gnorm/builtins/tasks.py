"""Built-in tasks: modular arithmetic on all p^2 pairs (a, b)."""

from __future__ import annotations

from typing import Callable

import attrs
import torch

import gnorm
from gnorm.components import InputSpec, Split
from gnorm.errors import UserError


def _check_fraction(instance, attribute, value) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"'{attribute.name}' must be between 0 and 1 (exclusive), found {value}")


def _check_modulus(instance, attribute, value) -> None:
    if value < 2:
        raise ValueError(f"'{attribute.name}' must be at least 2, found {value}")


@attrs.frozen
class ModularConfig:
    """``p``: the modulus; ``train_fraction``: share of the p^2 pairs used for training."""

    p: int = attrs.field(default=97, validator=_check_modulus)
    train_fraction: float = attrs.field(default=0.4, validator=_check_fraction)


def train_size(num_examples: int, train_fraction: float) -> int:
    """n_train = round(train_fraction * num_examples)."""
    return int(round(train_fraction * num_examples))


def random_split(num_examples: int, train_fraction: float, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random permutation of the examples: the first n_train are the training set."""
    generator = torch.Generator().manual_seed(split_seed)
    order = torch.randperm(num_examples, generator=generator)
    n_train = train_size(num_examples, train_fraction)
    return order[:n_train].sort().values, order[n_train:].sort().values


class ModularTask:
    """All pairs (a, b) in [0, p)^2 with label op(a, b) mod p; inputs are the two token ids."""

    def __init__(self, config: ModularConfig, operation: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        self.config = config
        self.num_classes = config.p
        self.input_spec = InputSpec(kind="tokens", length=2, vocab_size=config.p)
        a, b = torch.cartesian_prod(torch.arange(config.p), torch.arange(config.p)).unbind(1)
        self.inputs = torch.stack([a, b], dim=1)
        self.labels = operation(a, b) % config.p

    def split(self, split_seed: int) -> Split:
        n_train = train_size(len(self.labels), self.config.train_fraction)
        if not 0 < n_train < len(self.labels):
            raise UserError(f"task: train_fraction {self.config.train_fraction} of the {len(self.labels)} pairs at "
                            f"p = {self.config.p} leaves an empty training or test set")
        train_index, test_index = random_split(len(self.labels), self.config.train_fraction, split_seed)
        return Split(self.inputs, self.labels, train_index, test_index)


@gnorm.hookimpl
def gnorm_tasks() -> list[gnorm.Task]:
    return [
        gnorm.Task(name="modular_addition", summary="(a + b) mod p on all p^2 pairs",
                   config_class=ModularConfig, factory=lambda config: ModularTask(config, torch.add)),
        gnorm.Task(name="modular_multiplication", summary="(a * b) mod p on all p^2 pairs",
                   config_class=ModularConfig, factory=lambda config: ModularTask(config, torch.mul)),
    ]
