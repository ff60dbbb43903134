"""Built-in training losses: ``cross_entropy`` (the default), ``mse`` (paper B) and
``stablemax_cross_entropy`` (Prieto et al. 2025). Each is a per-example function of one model's logits
(the formulas are in gnorm.science); every one has the output temperature tau, which gnorm divides
the logits by before the loss and in evaluation."""

from __future__ import annotations

from typing import Any, Callable

import attrs

import gnorm
from gnorm.science import cross_entropy_losses, mse_losses, stablemax_cross_entropy_losses

#: ``losses(logits, labels) -> per-example losses``, on torch tensors.
Losses = Callable[[Any, Any], Any]


@attrs.frozen
class TemperatureConfig:
    """``temperature`` tau > 0 divides the logits before the loss; it is outside the weight norm, and
    evaluation loss, accuracy and observables see the same logits / tau."""

    temperature: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))


def _fixed(losses: Losses) -> Callable[[TemperatureConfig], Losses]:
    def factory(config: TemperatureConfig) -> Losses:
        return losses
    return factory


@gnorm.hookimpl
def gnorm_losses() -> list[gnorm.Loss]:
    return [
        gnorm.Loss(name="cross_entropy", summary="softmax cross-entropy (default)", config_class=TemperatureConfig,
                   factory=_fixed(cross_entropy_losses), temperature="temperature"),
        gnorm.Loss(name="mse", summary="squared error to the one-hot label, mean over classes",
                   config_class=TemperatureConfig, factory=_fixed(mse_losses), temperature="temperature"),
        gnorm.Loss(name="stablemax_cross_entropy", summary="cross-entropy of StableMax, which does not saturate "
                   "in float32 as softmax does", config_class=TemperatureConfig,
                   factory=_fixed(stablemax_cross_entropy_losses), temperature="temperature"),
    ]
