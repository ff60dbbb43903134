"""gnorm's built-in gradient transforms: Grokfast's slow-gradient amplifiers (Lee et al. 2024) and the
perpendicular gradient of Prieto et al. (2025).

Each is written for one model (``init(params)``, ``update(grads, state, params)`` on dicts of tensors,
pure, no branching on tensor values); gnorm batches it over the ensemble (gnorm.training.transforms).

Defaults follow the authors. ``grokfast_ema``: alpha 0.98, lamb 2.0 (``gradfilter_ema`` in
ironjr/grokfast's ``grokfast.py`` and the README's command for algorithmic data). ``grokfast_ma``:
window_size 100, lamb 5.0, the mean over the window, applied only once the window is full
(``gradfilter_ma``'s defaults in ``grokfast.py`` and its README's "Arguments" section; the README's
command for algorithmic data, ``--filter ma --window_size 100 --lamb 5.0``, uses the same).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

import gnorm
from gnorm.components import GradientTransform, TransformContext
from gnorm.errors import Problem, UserError

if TYPE_CHECKING:
    import torch

#: The longest Grokfast-MA window a file may ask for (each member keeps ``window_size`` gradients).
MAX_WINDOW = 10_000


def _unit_interval(instance: Any, attribute: Any, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"'{attribute.name}' must be in [0, 1), found {value}")


def _device(params: dict[str, torch.Tensor]) -> torch.device | None:
    """Where a model's state lives: with its parameters."""
    return next(iter(params.values())).device if params else None


# ---------------------------------------------------------------------------------------------------
# Grokfast, EMA filter.


@attrs.frozen
class GrokfastEMAConfig:
    """h <- alpha h + (1 - alpha) g; g <- g + lamb h (Lee et al. 2024, "Grokfast")."""

    alpha: float = attrs.field(default=0.98, validator=_unit_interval)
    lamb: float = attrs.field(default=2.0, validator=attrs.validators.ge(0))


class GrokfastEMA:
    """Amplify the slow part of every gradient: an exponential moving average h of past gradients,

        h_1 = g_1;  h_t = alpha h_{t-1} + (1 - alpha) g_t;  g_t <- g_t + lamb h_t

    computed as the authors' ``gradfilter_ema`` computes it (its first call starts h at the first
    gradient and then applies the same update, so h_1 = alpha g_1 + (1 - alpha) g_1)."""

    def __init__(self, config: GrokfastEMAConfig, context: TransformContext):
        self.alpha, self.lamb = config.alpha, config.lamb

    def init(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        import torch

        state = {f"ema.{name}": torch.zeros_like(p) for name, p in params.items()}
        state["started"] = torch.zeros((), dtype=torch.bool, device=_device(params))
        return state

    def update(self, grads: dict[str, torch.Tensor], state: dict[str, torch.Tensor],
               params: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        import torch

        started = state["started"]
        new_grads, new_state = {}, {"started": torch.ones_like(started)}
        for name, g in grads.items():
            previous = torch.where(started, state[f"ema.{name}"], g)
            ema = previous * self.alpha + g * (1 - self.alpha)
            new_state[f"ema.{name}"] = ema
            new_grads[name] = g + ema * self.lamb
        return new_grads, new_state


# ---------------------------------------------------------------------------------------------------
# Grokfast, moving-average filter.


@attrs.frozen
class GrokfastMAConfig:
    """g <- g + lamb * (mean, or sum, of the last ``window_size`` gradients, this one included);
    with ``warmup`` (the authors' default) nothing changes until the window is full."""

    window_size: int = attrs.field(default=100, validator=[attrs.validators.gt(0), attrs.validators.le(MAX_WINDOW)])
    lamb: float = attrs.field(default=5.0, validator=attrs.validators.ge(0))
    filter_type: str = attrs.field(default="mean", validator=attrs.validators.in_(["mean", "sum"]))
    warmup: bool = True


class GrokfastMA:
    """The windowed filter: the last w gradients G_t = (g_{t-w+1}, ..., g_t) (fewer before step w),

        mean: g_t <- g_t + lamb * sum(G_t) / |G_t|;   sum: g_t <- g_t + lamb * sum(G_t)

    applied from step w on when ``warmup``, from step 1 otherwise (the authors' ``gradfilter_ma``)."""

    def __init__(self, config: GrokfastMAConfig, context: TransformContext):
        self.window_size, self.lamb = config.window_size, config.lamb
        self.mean, self.warmup = config.filter_type == "mean", config.warmup

    def init(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        import torch

        state = {f"window.{name}": torch.zeros((self.window_size, *p.shape), dtype=p.dtype, device=p.device)
                 for name, p in params.items()}
        state["count"] = torch.zeros((), dtype=torch.int64, device=_device(params))
        return state

    def update(self, grads: dict[str, torch.Tensor], state: dict[str, torch.Tensor],
               params: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        import torch

        count = state["count"] + 1
        filled = torch.clamp(count, max=self.window_size)  # |G_t|
        apply = filled == self.window_size if self.warmup else torch.ones_like(filled, dtype=torch.bool)
        new_grads, new_state = {}, {"count": count}
        for name, g in grads.items():
            window = torch.cat([state[f"window.{name}"][1:], g.unsqueeze(0)])  # oldest out, newest in
            new_state[f"window.{name}"] = window
            total = window.sum(0)  # slots not yet filled hold zeros
            average = total / filled.to(g.dtype) if self.mean else total
            new_grads[name] = torch.where(apply, g + average * self.lamb, g)
        return new_grads, new_state


# ---------------------------------------------------------------------------------------------------
# The perpendicular gradient.


@attrs.frozen
class OrthogonalGradientConfig:
    """Which tensors get the perpendicular gradient: parameter names (empty: every weight-norm tensor)."""

    tensors: list[str] = attrs.field(factory=list)


class OrthogonalGradient:
    """Prieto et al. (2025)'s perpendicular gradient: for each chosen weight tensor w, remove from its
    gradient the component along w,

        g <- g - (<g, w> / <w, w>) w

    so a step of plain gradient descent does not move ||w|| to first order (a tensor that is all zeros
    keeps its gradient). The other tensors' gradients pass unchanged."""

    def __init__(self, config: OrthogonalGradientConfig, context: TransformContext):
        known = context.param_names or context.norm_names
        unknown = [name for name in config.tensors if name not in known]
        if unknown:
            raise UserError([Problem("", "gradient_transforms.orthogonal_gradient.tensors",
                                     f"no parameter named {', '.join(map(repr, unknown))} in this architecture "
                                     f"(its parameters: {', '.join(known)})")])
        self.tensors = tuple(config.tensors) or tuple(context.norm_names)

    def init(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {}

    def update(self, grads: dict[str, torch.Tensor], state: dict[str, torch.Tensor],
               params: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        import torch

        new_grads = dict(grads)
        for name in self.tensors:
            g, w = grads[name], params[name]
            along = (g * w).sum() / (w * w).sum()
            new_grads[name] = torch.where((w * w).sum() > 0, g - along * w, g)
        return new_grads, state


@gnorm.hookimpl
def gnorm_gradient_transforms() -> list[GradientTransform]:
    return [
        GradientTransform(name="grokfast_ema", summary="Grokfast: add lamb x the EMA of past gradients "
                          "(alpha 0.98, lamb 2)", config_class=GrokfastEMAConfig, factory=GrokfastEMA),
        GradientTransform(name="grokfast_ma", summary="Grokfast-MA: add lamb x the mean of the last "
                          "window_size gradients (100, lamb 5)", config_class=GrokfastMAConfig, factory=GrokfastMA),
        GradientTransform(name="orthogonal_gradient", summary="remove each weight tensor's gradient component "
                          "along that tensor (Prieto et al. 2025)", config_class=OrthogonalGradientConfig,
                          factory=OrthogonalGradient),
    ]
