"""gnorm-plugin-softclamp: the ``soft_clamp`` norm controller, and the example of a gnorm plugin.

A plugin is a module with ``@gnorm.hookimpl`` functions named after the hooks in ``gnorm.hookspecs``,
declared under the ``gnorm`` entry-point group of its package (see this package's pyproject.toml).
This one implements a single hook, ``gnorm_norm_controllers``, and adds one controller::

    [[stage]]
    name = "soft"
    critical_norm = "free"
    controller = { name = "soft_clamp", rho = 1.1, t_start = 200, strength = 0.1 }
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

import gnorm
from gnorm.components import ControllerContext
from gnorm.science import held_norm, rescale_to_norm, weight_norm

if TYPE_CHECKING:  # torch is imported where tensors are touched: listing plugins stays quick
    import torch


@attrs.frozen
class SoftClampConfig:
    """The ``controller`` table of a stage: approach ``rho`` * Wc from step ``t_start`` on, covering the
    fraction ``strength`` of the remaining distance after every step (``strength = 1`` is ``clamp``)."""

    rho: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))
    t_start: int = attrs.field(default=500, validator=attrs.validators.ge(1))
    strength: float = attrs.field(default=0.1, validator=[attrs.validators.gt(0), attrs.validators.le(1)])


class SoftClamp:
    """After every optimizer step t >= t_start, per member m:

        ||W||_m <- ||W||_m + strength * (rho Wc - ||W||_m),

    by multiplying all of the member's norm tensors by one scalar. Each step closes the fraction
    ``strength`` of the gap to the held norm while the optimizer and weight decay keep acting, so the
    norm settles where the two balance: a step's drift d away from rho Wc leaves an offset of
    d (1 - strength) / strength (none for ``strength = 1``). Adam moments are untouched."""

    def __init__(self, config: SoftClampConfig, context: ControllerContext):
        self.t_start = config.t_start
        self.strength = config.strength
        self.held_norm = held_norm(config.rho, context.critical_norm)

    def after_step(self, step: int, norm_tensors: list[torch.Tensor]) -> dict[str, torch.Tensor] | None:
        import torch

        if step < self.t_start:
            return None
        before = weight_norm(norm_tensors)
        rescale_to_norm(norm_tensors, before + self.strength * (self.held_norm - before))
        if step == self.t_start:  # recorded once per run, like the built-in clamp's facts
            return {"norm_before_clamp": before, "held_norm": torch.full_like(before, self.held_norm)}
        return None


@gnorm.hookimpl
def gnorm_norm_controllers() -> list[gnorm.NormController]:
    return [
        gnorm.NormController(name="soft_clamp",
                             summary="move ||W|| a fraction strength of the way to rho * Wc after every step",
                             config_class=SoftClampConfig, factory=SoftClamp, uses_critical_norm=True,
                             starts_at="t_start"),
    ]
