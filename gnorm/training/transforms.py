"""The gradient chain: each member's gradients, after backward and before the optimizer step, passed
through a cell's gradient transforms in order.

A transform is written for one model (``init(params) -> state``, ``update(grads, state, params) ->
(grads, state)`` on dicts of tensors by parameter name; see :class:`gnorm.GradientTransform`). The
chain batches both over the ensemble with ``torch.func.vmap`` over the leading member axis, so member m
sees only its own gradients, weights and state, exactly as if it trained alone. Each transform's state
is kept stacked (leading axis: member); members that leave the ensemble take their state with them
(:meth:`GradientTransformChain.keep`) and a checkpoint saves and restores it (:meth:`state`,
:meth:`load_state`). A chain with no transforms hands the gradients back untouched.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch.func import vmap


class GradientTransformChain:
    """A cell's transforms (``(name, transform)`` pairs, in the order the file wrote them) over its
    ensemble's stacked parameters."""

    def __init__(self, transforms: Sequence[tuple[str, Any]] = (), params: dict[str, torch.Tensor] | None = None):
        self.transforms = list(transforms)
        self.states: list[dict[str, torch.Tensor]] = []
        if self.transforms:
            if params is None:
                raise ValueError("a chain of gradient transforms needs the ensemble's parameters to start from")
            with torch.no_grad():
                self.states = [vmap(transform.init)(params) for _, transform in self.transforms]

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.transforms]

    @torch.no_grad()
    def update(self, grads: Sequence[torch.Tensor], params: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Every member's gradients (stacked, in ``params`` order) through the chain; each transform's
        state advances one step."""
        if not self.transforms:
            return list(grads)
        names = list(params)
        by_name = dict(zip(names, grads))
        for position, (_, transform) in enumerate(self.transforms):
            by_name, self.states[position] = vmap(transform.update)(by_name, self.states[position], params)
        return [by_name[name] for name in names]

    def keep(self, index: torch.Tensor) -> None:
        """Keep the state of the members at positions ``index`` only (those that stay in the ensemble)."""
        self.states = [{key: tensor[index] for key, tensor in state.items()} for state in self.states]

    def state(self) -> list[dict[str, torch.Tensor]]:
        """Each transform's stacked state, copied to the CPU (what a checkpoint keeps)."""
        return [{key: tensor.detach().cpu().clone() for key, tensor in state.items()} for state in self.states]

    def load_state(self, states: Sequence[dict[str, torch.Tensor]]) -> None:
        """Replace every transform's state with ``states`` (as :meth:`state` gives them, for the members
        now in the ensemble)."""
        if len(states) != len(self.states) or any(set(saved) != set(own) for saved, own in zip(states, self.states)):
            raise ValueError(f"the checkpoint's gradient-transform states do not match this chain "
                             f"({', '.join(self.names) or 'no transforms'})")
        self.states = [{key: saved[key].to(own[key].device, own[key].dtype) for key in own}
                       for saved, own in zip(states, self.states)]
