"""Built-in grok criterion: test accuracy crossing a threshold."""

from __future__ import annotations

import attrs
import numpy as np

import gnorm
from gnorm.components import GrokTimes
from gnorm.science import first_crossing


def _fraction(instance, attribute, value) -> None:
    if not 0.0 < value <= 1.0:
        raise ValueError(f"'{attribute.name}' must be in (0, 1], found {value}")


@attrs.frozen
class AccuracyCriterionConfig:
    """T_grok: first evaluated step with test accuracy >= ``threshold``; T_mem: first with train
    accuracy >= ``memorization_threshold``."""

    threshold: float = attrs.field(default=0.90, validator=_fraction)
    memorization_threshold: float = attrs.field(default=0.99, validator=_fraction)


class AccuracyCriterion:
    def __init__(self, config: AccuracyCriterionConfig):
        self.config = config

    def times(self, steps: np.ndarray, metrics: dict[str, np.ndarray]) -> GrokTimes:
        return GrokTimes(t_mem=first_crossing(steps, metrics["train_acc"], self.config.memorization_threshold),
                         t_grok=first_crossing(steps, metrics["test_acc"], self.config.threshold))


@gnorm.hookimpl
def gnorm_grok_criteria() -> list[gnorm.GrokCriterion]:
    return [gnorm.GrokCriterion(name="test_accuracy", summary="T_grok when test accuracy first reaches a threshold",
                                config_class=AccuracyCriterionConfig, factory=AccuracyCriterion)]
