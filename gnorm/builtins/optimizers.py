"""Built-in optimizers: ``adamw`` (the default: torch's AdamW, fused where the kernel exists), ``adam``
(no weight decay) and ``sgd`` (momentum, Nesterov, dampening). Decoupled weight decay, where an optimizer
has it, falls on the weight-norm tensors only; each member's update is its own (see
gnorm.training.optimizer)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

import gnorm
from gnorm.components import OptimizerContext

if TYPE_CHECKING:  # the optimizers themselves (torch) are imported when one is built
    from gnorm.training.optimizer import BatchedAdamW, BatchedSGD


def _unit_interval(instance: Any, attribute: Any, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"'{attribute.name}' must be in [0, 1), found {value}")


def _momentum_for_nesterov(instance: Any, attribute: Any, value: bool) -> None:
    if value and (instance.momentum <= 0 or instance.dampening != 0):
        raise ValueError(f"'{attribute.name}' needs momentum > 0 and dampening = 0 (as torch's SGD), found "
                         f"momentum = {instance.momentum}, dampening = {instance.dampening}")


@attrs.frozen
class AdamWConfig:
    """Full-batch AdamW with decoupled weight decay on the weight-norm tensors only (the fields, in this
    order, are what every run before optimizers were pluggable stored as its ``[optimizer]``)."""

    lr: float = attrs.field(default=1e-3, validator=attrs.validators.gt(0))
    weight_decay: float = attrs.field(default=1.0, validator=attrs.validators.ge(0))
    beta1: float = attrs.field(default=0.9, validator=_unit_interval)
    beta2: float = attrs.field(default=0.999, validator=_unit_interval)
    eps: float = attrs.field(default=1e-8, validator=attrs.validators.gt(0))


@attrs.frozen
class AdamConfig:
    """Adam (torch.optim.Adam): AdamW's moments without any weight decay."""

    lr: float = attrs.field(default=1e-3, validator=attrs.validators.gt(0))
    beta1: float = attrs.field(default=0.9, validator=_unit_interval)
    beta2: float = attrs.field(default=0.999, validator=_unit_interval)
    eps: float = attrs.field(default=1e-8, validator=attrs.validators.gt(0))


@attrs.frozen
class SGDConfig:
    """torch.optim.SGD: momentum mu, dampening, Nesterov momentum; ``weight_decay`` adds lambda W to
    the gradient of the weight-norm tensors only (as torch's SGD does; decoupled decay when mu = 0)."""

    lr: float = attrs.field(default=1e-2, validator=attrs.validators.gt(0))
    momentum: float = attrs.field(default=0.0, validator=_unit_interval)
    dampening: float = attrs.field(default=0.0, validator=_unit_interval)
    weight_decay: float = attrs.field(default=0.0, validator=attrs.validators.ge(0))
    nesterov: bool = attrs.field(default=False, validator=_momentum_for_nesterov)


def adamw(config: AdamWConfig, context: OptimizerContext) -> BatchedAdamW:
    from gnorm.training.optimizer import BatchedAdamW

    return BatchedAdamW(context.params, context.decayed, config)


def adam(config: AdamConfig, context: OptimizerContext) -> BatchedAdamW:
    from gnorm.training.optimizer import BatchedAdamW

    return BatchedAdamW(context.params, [False] * len(context.params), config)


def sgd(config: SGDConfig, context: OptimizerContext) -> BatchedSGD:
    from gnorm.training.optimizer import BatchedSGD

    return BatchedSGD(context.params, context.decayed, config)


@gnorm.hookimpl
def gnorm_optimizers() -> list[gnorm.Optimizer]:
    return [
        gnorm.Optimizer(name="adamw", summary="AdamW, decoupled weight decay on the weight-norm tensors (default)",
                        config_class=AdamWConfig, factory=adamw),
        gnorm.Optimizer(name="adam", summary="Adam, no weight decay", config_class=AdamConfig, factory=adam),
        gnorm.Optimizer(name="sgd", summary="SGD with momentum or Nesterov; weight decay on the weight-norm tensors",
                        config_class=SGDConfig, factory=sgd),
    ]
