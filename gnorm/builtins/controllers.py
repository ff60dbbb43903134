"""Built-in norm controllers: free training, the clamp that holds ||W|| at rho * Wc, and the papers' other
interventions (one-shot and group rescales, group clamps, layer allocation, same-state forks, row
clipping, an initial rescale). Each class's docstring states what it does to the weights."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

import gnorm
from gnorm.components import ControllerContext
from gnorm.errors import Problem, UserError
from gnorm.science import allocated_shares, clip_rows, held_norm, rescale_to_norm, weight_norm

if TYPE_CHECKING:
    import torch


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
        import torch

        if step < self.t_start:
            return None
        before = rescale_to_norm(norm_tensors, self.held_norm)
        if step == self.t_start:
            return {"norm_before_clamp": before, "norm_after_clamp": weight_norm(norm_tensors),
                    "held_norm": torch.full_like(before, self.held_norm)}
        return None


def _above_minus_one(instance, attribute, value) -> None:
    if value <= -1:
        raise ValueError(f"'{attribute.name}' must be above -1 (a share cannot shrink below zero), found {value}")


def _group_name(instance, attribute, value) -> None:
    if not value:
        raise ValueError(f"'{attribute.name}' must name a weight-norm group (e.g. embedding, hidden, readout)")


#: The group name that means every weight-norm tensor (paper A's "layer all" arm), unless an
#: architecture defines a group of that name itself.
ALL_GROUPS = "all"


def _group_positions(context: ControllerContext, group: str, key: str = "controller.group") -> list[int]:
    """Positions of ``group``'s tensors in ``norm_tensors`` (``all``: every one); an unknown group is the
    user's error."""
    if group == ALL_GROUPS and group not in context.groups:
        return sorted(i for positions in context.groups.values() for i in positions)
    if group not in context.groups:
        raise UserError([Problem("", key, f"unknown weight-norm group {group!r}; this architecture's groups "
                                          f"are {', '.join(map(repr, context.groups)) or 'none'}")])
    return context.groups[group]


def _group_critical_norm(context: ControllerContext, group: str) -> float:
    """Wc_g: the group's median norm at grok in the source stage (for ``all``, Wc itself); when the stage
    gives Wc as a number (no per-group values known), that number is Wc_g."""
    if group in context.group_critical_norms:
        return context.group_critical_norms[group]
    if context.critical_norm is not None and (group == ALL_GROUPS or not context.group_critical_norms):
        return context.critical_norm
    raise UserError([Problem("", "critical_norm", f"the source stage recorded no norm at grok for group "
                                                  f"{group!r}, so its critical norm is unknown")])


def _scale_members(tensors: list[torch.Tensor], scale: torch.Tensor) -> None:
    """W_k[m] <- W_k[m] * scale_m for every tensor k, in place."""
    for tensor in tensors:
        tensor.mul_(scale.view(-1, *([1] * (tensor.dim() - 1))))


@attrs.frozen
class RescaleConfig:
    """Once, after step ``t_start``, set ||W|| to ``rho`` * Wc; free afterwards."""

    rho: float = attrs.field(default=1.0, validator=_positive)
    t_start: int = attrs.field(default=500, validator=_positive)


class Rescale:
    """Paper A's one-shot rescale: after optimizer step t_start only, W <- W * (rho Wc / ||W||), one
    scalar per member for all norm tensors; every later step is free training."""

    def __init__(self, config: RescaleConfig, context: ControllerContext):
        self.t_start = config.t_start
        self.target_norm = held_norm(config.rho, context.critical_norm)

    def after_step(self, step: int, norm_tensors: list[torch.Tensor]) -> dict[str, torch.Tensor] | None:
        if step != self.t_start:
            return None
        before = rescale_to_norm(norm_tensors, self.target_norm)
        return {"norm_before_intervention": before, "norm_after_intervention": weight_norm(norm_tensors)}


@attrs.frozen
class GroupClampConfig:
    """Hold one weight-norm group's norm at ``rho`` * that group's Wc from step ``t_start`` on."""

    group: str = attrs.field(validator=_group_name)
    rho: float = attrs.field(default=1.0, validator=_positive)
    t_start: int = attrs.field(default=500, validator=_positive)


class GroupClamp:
    """After every optimizer step t >= t_start: W_g <- W_g * (rho Wc_g / ||W_g||) for the tensors of group
    g only (one scalar per member); the other groups train freely. Wc_g = median over grokked source
    seeds of ||W_g|| at T_grok."""

    def __init__(self, config: GroupClampConfig, context: ControllerContext):
        self.t_start = config.t_start
        self.positions = _group_positions(context, config.group)
        self.group_critical_norm = _group_critical_norm(context, config.group)
        self.held_norm = held_norm(config.rho, self.group_critical_norm)

    def after_step(self, step: int, norm_tensors: list[torch.Tensor]) -> dict[str, torch.Tensor] | None:
        import torch

        if step < self.t_start:
            return None
        total_before = weight_norm(norm_tensors) if step == self.t_start else None
        before = rescale_to_norm([norm_tensors[i] for i in self.positions], self.held_norm)
        if step == self.t_start:
            return {"norm_before_clamp": total_before, "norm_after_clamp": weight_norm(norm_tensors),
                    "group_norm_before_clamp": before, "held_norm": torch.full_like(before, self.held_norm),
                    "group_critical_norm": torch.full_like(before, self.group_critical_norm)}
        return None


@attrs.frozen
class GroupRescaleConfig:
    """Once, after step ``t_start``, multiply one weight-norm group (``all``: every one) by ``factor``;
    free afterwards."""

    group: str = attrs.field(validator=_group_name)
    factor: float = attrs.field(default=1.0, validator=_positive)
    t_start: int = attrs.field(default=500, validator=_positive)


class GroupRescale:
    """Paper A's single-group rescale: after optimizer step t_start only, W_g <- factor * W_g for the
    tensors of group g; every later step is free training."""

    def __init__(self, config: GroupRescaleConfig, context: ControllerContext):
        self.t_start, self.factor = config.t_start, config.factor
        self.positions = _group_positions(context, config.group)

    def after_step(self, step: int, norm_tensors: list[torch.Tensor]) -> dict[str, torch.Tensor] | None:
        if step != self.t_start:
            return None
        group = [norm_tensors[i] for i in self.positions]
        before, group_before = weight_norm(norm_tensors), weight_norm(group)
        for tensor in group:
            tensor.mul_(self.factor)
        return {"norm_before_intervention": before, "norm_after_intervention": weight_norm(norm_tensors),
                "group_norm_before_intervention": group_before,
                "group_norm_after_intervention": weight_norm(group)}


@attrs.frozen
class LayerAllocationConfig:
    """Hold ||W|| at ``rho`` * Wc from ``t_start`` on, with ``group``'s share of the squared norm moved by
    ``allocation`` (gamma) and ``partner`` absorbing the change (paper B: readout and embedding)."""

    rho: float = attrs.field(default=1.0, validator=_positive)
    allocation: float = attrs.field(default=0.0, validator=_above_minus_one)
    group: str = attrs.field(default="readout", validator=_group_name)
    #: The group whose share absorbs the change; "" spreads it over every other group in proportion.
    partner: str = "embedding"
    t_start: int = attrs.field(default=500, validator=_positive)


class LayerAllocation:
    """Paper B's layer allocation at fixed total norm H = rho Wc.

    After optimizer step t_start (before holding) each member's shares s_k = ||W_k||^2 / ||W||^2 of
    its groups are read; group g's share becomes S_g = clip(s_g (1 + gamma), 0, s_g + s_p) and the
    partner's S_p = s_g + s_p - S_g; every other group keeps S_k = s_k. From then on, after every step,
    each group k is rescaled to ||W_k|| = sqrt(S_k) H (one scalar per member and group), so
    ||W|| = H. The released data fit this: at p = 59 the readout share goes 0.205 -> 0.266 for
    gamma = 0.3 while the hidden layer's stays 0.646 and the embedding's drops 0.149 -> 0.087.
    With ``partner = ""`` the partner is all other groups together, each keeping its proportion.
    """

    def __init__(self, config: LayerAllocationConfig, context: ControllerContext):
        self.t_start, self.allocation = config.t_start, config.allocation
        self.held_norm = held_norm(config.rho, context.critical_norm)
        self.group = _group_positions(context, config.group)
        if config.partner == config.group:
            raise UserError([Problem("", "controller.partner", "must be another group than controller.group")])
        if config.partner:
            partners = [_group_positions(context, config.partner, "controller.partner")]
        else:
            partners = [positions for name, positions in context.groups.items() if name != config.group]
        others = [positions for name, positions in context.groups.items()
                  if config.partner and name not in (config.group, config.partner)]
        self.parts = [self.group, *partners, *others]
        self.partner_count = len(partners)
        self.held_shares: torch.Tensor | None = None  # (members, parts)

    def after_step(self, step: int, norm_tensors: list[torch.Tensor]) -> dict[str, torch.Tensor] | None:
        import torch

        if step < self.t_start:
            return None
        parts = [[norm_tensors[i] for i in positions] for positions in self.parts]
        norms = torch.stack([weight_norm(part) for part in parts], 1)
        facts = None
        if self.held_shares is None:
            shares = norms.pow(2) / norms.pow(2).sum(1, keepdim=True)
            partner = slice(1, 1 + self.partner_count)
            group_share, partner_shares = shares[:, 0], shares[:, partner]
            target, partner_target = allocated_shares(group_share, partner_shares.sum(1), self.allocation)
            held = shares.clone()
            held[:, 0] = target
            pooled = partner_shares.sum(1, keepdim=True)
            held[:, partner] = partner_shares * torch.where(pooled > 0, partner_target.unsqueeze(1) / pooled, 0.0)
            self.held_shares = held
            facts = {"norm_before_intervention": norms.pow(2).sum(1).sqrt(), "share_before": group_share,
                     "held_share": target, "held_norm": torch.full_like(target, self.held_norm)}
        targets = self.held_shares.sqrt() * self.held_norm
        for k, part in enumerate(parts):
            _scale_members(part, torch.where(norms[:, k] > 0, targets[:, k] / norms[:, k], 1.0))
        if facts is not None:
            facts["norm_after_intervention"] = weight_norm(norm_tensors)
        return facts

    def keep(self, index: torch.Tensor) -> None:
        if self.held_shares is not None:
            self.held_shares = self.held_shares[index]


@attrs.frozen
class RelativeClampConfig:
    """Hold ||W|| at ``factor`` x each member's own norm at step ``t_start`` (paper B's same-state forks)."""

    factor: float = attrs.field(default=1.0, validator=_positive)
    t_start: int = attrs.field(default=800, validator=_positive)


class RelativeClamp:
    """After every optimizer step t >= t_start: W_m <- W_m * (factor N_m / ||W_m||), where N_m is member
    m's own ||W|| right after step t_start (before any rescale); in a same-state fork at step t_start
    that is the forked state's norm. Paper B's arms: factor 1 holds the current norm ("clamp_same"),
    1.15 raises it, 1/1.15 lowers it."""

    def __init__(self, config: RelativeClampConfig, context: ControllerContext):
        self.t_start, self.factor = config.t_start, config.factor
        self.held: torch.Tensor | None = None

    def after_step(self, step: int, norm_tensors: list[torch.Tensor]) -> dict[str, torch.Tensor] | None:
        if step < self.t_start:
            return None
        if self.held is None:
            before = weight_norm(norm_tensors)
            self.held = self.factor * before
            rescale_to_norm(norm_tensors, self.held)
            return {"norm_before_clamp": before, "norm_after_clamp": weight_norm(norm_tensors),
                    "held_norm": self.held.clone()}
        rescale_to_norm(norm_tensors, self.held)
        return None

    def keep(self, index: torch.Tensor) -> None:
        if self.held is not None:
            self.held = self.held[index]


@attrs.frozen
class ClipRowsConfig:
    """Clip every row of the chosen matrices to L2 norm ``max_row_norm`` after every step from
    ``t_start``. ``matrices``: group names or parameter names; empty means every weight-norm tensor."""

    max_row_norm: float = attrs.field(validator=_positive)
    matrices: list[str] = attrs.field(factory=list)
    t_start: int = attrs.field(default=1, validator=_positive)


class ClipRows:
    """After every optimizer step t >= t_start, each row r (a vector along the last axis) of the chosen
    tensors: r <- r * min(1, max_row_norm / ||r||_2). Rows already within the bound are untouched."""

    def __init__(self, config: ClipRowsConfig, context: ControllerContext):
        self.t_start, self.max_row_norm = config.t_start, config.max_row_norm
        names = {name: [i] for i, name in enumerate(context.tensor_names)}
        choices = {**names, **context.groups}
        unknown = [name for name in config.matrices if name not in choices]
        if unknown:
            raise UserError([Problem("", "controller.matrices", f"unknown {', '.join(map(repr, unknown))}; expected "
                                     f"group names ({', '.join(context.groups)}) or parameter names "
                                     f"({', '.join(context.tensor_names)})")])
        chosen = [i for name in config.matrices for i in choices[name]] if config.matrices else \
            [i for positions in context.groups.values() for i in positions]
        self.positions = sorted(set(chosen))

    def after_step(self, step: int, norm_tensors: list[torch.Tensor]) -> None:
        if step >= self.t_start:
            for i in self.positions:
                clip_rows(norm_tensors[i], self.max_row_norm)
        return None


@attrs.frozen
class InitialRescaleConfig:
    """Multiply every weight-norm tensor by ``factor`` once, before training (Omnigrok); free after."""

    factor: float = attrs.field(validator=_positive)


class InitialRescale:
    """Before step 1: W_k <- factor * W_k for every weight-norm tensor k, so ||W_0|| becomes
    factor * ||W_0||; training is free from then on."""

    def __init__(self, config: InitialRescaleConfig, context: ControllerContext):
        self.factor = config.factor

    def before_training(self, norm_tensors: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        before = weight_norm(norm_tensors)
        for tensor in norm_tensors:
            tensor.mul_(self.factor)
        return {"norm_before_intervention": before, "norm_after_intervention": weight_norm(norm_tensors)}

    def after_step(self, step: int, norm_tensors: list[torch.Tensor]) -> None:
        return None


def _named_groups(*names: str) -> list[str]:
    """The group names a controller's config gives, without ``all`` (every group) and "" (the rest)."""
    return [name for name in names if name and name != ALL_GROUPS]


#: The facts a controller that clamps from t_start records, and one that intervenes once.
CLAMP_FACTS = ("norm_before_clamp", "norm_after_clamp", "held_norm")
INTERVENTION_FACTS = ("norm_before_intervention", "norm_after_intervention")


@gnorm.hookimpl
def gnorm_norm_controllers() -> list[gnorm.NormController]:
    return [
        gnorm.NormController(name="free", summary="free AdamW training; the norm follows weight decay",
                             config_class=FreeConfig, factory=Free),
        gnorm.NormController(name="clamp", summary="hold ||W|| at rho * Wc after every step from t_start",
                             config_class=ClampConfig, factory=Clamp, uses_critical_norm=True,
                             starts_at="t_start", facts=CLAMP_FACTS),
        gnorm.NormController(name="rescale", summary="set ||W|| to rho * Wc once, after step t_start",
                             config_class=RescaleConfig, factory=Rescale, uses_critical_norm=True,
                             starts_at="t_start", facts=INTERVENTION_FACTS),
        gnorm.NormController(name="group_clamp", summary="hold one group's norm at rho * its own Wc from t_start",
                             config_class=GroupClampConfig, factory=GroupClamp, uses_critical_norm=True,
                             starts_at="t_start", groups=lambda config: _named_groups(config.group),
                             facts=CLAMP_FACTS + ("group_norm_before_clamp", "group_critical_norm")),
        gnorm.NormController(name="group_rescale", summary="multiply one group by factor once, after step t_start",
                             config_class=GroupRescaleConfig, factory=GroupRescale,
                             starts_at="t_start", groups=lambda config: _named_groups(config.group),
                             facts=INTERVENTION_FACTS + ("group_norm_before_intervention",
                                                         "group_norm_after_intervention")),
        gnorm.NormController(name="layer_allocation",
                             summary="hold ||W|| at rho * Wc with one group's share moved by allocation",
                             config_class=LayerAllocationConfig, factory=LayerAllocation, uses_critical_norm=True,
                             starts_at="t_start", groups=lambda config: _named_groups(config.group, config.partner),
                             facts=INTERVENTION_FACTS + ("share_before", "held_share", "held_norm")),
        gnorm.NormController(name="relative_clamp", summary="hold ||W|| at factor x each seed's own norm at t_start",
                             config_class=RelativeClampConfig, factory=RelativeClamp,
                             starts_at="t_start", facts=CLAMP_FACTS),
        gnorm.NormController(name="clip_rows", summary="clip every row of chosen matrices to max_row_norm",
                             config_class=ClipRowsConfig, factory=ClipRows, starts_at="t_start"),
        gnorm.NormController(name="initial_rescale", summary="multiply the initial weights by factor (Omnigrok)",
                             config_class=InitialRescaleConfig, factory=InitialRescale, facts=INTERVENTION_FACTS),
    ]
