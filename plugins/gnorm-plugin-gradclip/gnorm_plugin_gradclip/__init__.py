"""gnorm-plugin-gradclip: the gradient_clip_norm gradient transform (clip each run's total gradient norm)."""

from __future__ import annotations

import attrs

import gnorm


@attrs.frozen
class GradientClipNormConfig:
    """``[gradient_transforms.gradient_clip_norm]``: the largest total gradient norm a step may use."""

    max_norm: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))


class GradientClipNorm:
    """Clip one model's gradient by its total norm, as ``torch.nn.utils.clip_grad_norm_`` does:

        n = sqrt(sum over tensors of ||g||^2);  g <- g * min(1, max_norm / (n + 1e-6))

    Written for one model; gnorm batches it over a cell's runs, so each run is clipped by its own norm.
    It keeps no state."""

    def __init__(self, config: GradientClipNormConfig, context):
        self.max_norm = config.max_norm

    def init(self, params):
        return {}

    def update(self, grads, state, params):
        import torch  # here, not at the top: listing plugins stays quick

        total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads.values()]))
        scale = torch.clamp(self.max_norm / (total + 1e-6), max=1.0)
        return {name: g * scale for name, g in grads.items()}, state


@gnorm.hookimpl
def gnorm_gradient_transforms():
    return [gnorm.GradientTransform(name="gradient_clip_norm",
                                    summary="rescale each run's gradient to a total norm of at most max_norm",
                                    config_class=GradientClipNormConfig, factory=GradientClipNorm)]
