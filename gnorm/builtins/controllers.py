"""Built-in norm controllers: free training, and the clamp that holds ||W|| at rho * Wc."""

from __future__ import annotations

import attrs
import torch

import gnorm
from gnorm.components import ControllerContext
from gnorm.science import held_norm, rescale_to_norm, weight_norm


@attrs.frozen
class FreeConfig:
    """No options: the norm evolves under AdamW with decoupled weight decay alone."""


class Free:
    def __init__(self, config: FreeConfig, context: ControllerContext):
        pass

    def after_step(self, step: int, norm_tensors: list[torch.Tensor]) -> None:
        return None


def _positive(instance, attribute, value) -> None:
    if value <= 0:
        raise ValueError(f"'{attribute.name}' must be positive, found {value}")


@attrs.frozen
class ClampConfig:
    """Hold ||W|| at ``rho`` * Wc from step ``t_start`` on (the stage's ``critical_norm`` gives Wc)."""

    rho: float = attrs.field(default=1.0, validator=_positive)
    t_start: int = attrs.field(default=500, validator=_positive)


class Clamp:
    """After every optimizer step t >= t_start: W <- W * (rho Wc / ||W||), one scalar per member for
    all norm tensors together. Adam moments are untouched; weight decay stays on."""

    def __init__(self, config: ClampConfig, context: ControllerContext):
        self.t_start = config.t_start
        self.held_norm = held_norm(config.rho, context.critical_norm)

    def after_step(self, step: int, norm_tensors: list[torch.Tensor]) -> dict[str, torch.Tensor] | None:
        if step < self.t_start:
            return None
        before = rescale_to_norm(norm_tensors, self.held_norm)
        if step == self.t_start:
            return {"norm_before_clamp": before, "norm_after_clamp": weight_norm(norm_tensors),
                    "held_norm": torch.full_like(before, self.held_norm)}
        return None


@gnorm.hookimpl
def gnorm_norm_controllers() -> list[gnorm.NormController]:
    return [
        gnorm.NormController(name="free", summary="free AdamW training; the norm follows weight decay",
                             config_class=FreeConfig, factory=Free),
        gnorm.NormController(name="clamp", summary="hold ||W|| at rho * Wc after every step from t_start",
                             config_class=ClampConfig, factory=Clamp, uses_critical_norm=True),
    ]
