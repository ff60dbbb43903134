"""Several cells' controllers in one ensemble: each cell of a merged job (gnorm.merging) is a segment,
a stretch of consecutive members, with the controller its cell would have alone (its own options and
its own Wc), called on its members' slices of the stacked norm tensors.

A slice along the member axis is a view, so a controller that rescales its slice in place rescales
those members of the ensemble; a member's norm reductions run over its own row, as they do when its
cell trains alone, so each member is computed as it would be there.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch


class SegmentFacts(list):
    """Facts from several segments: a list of (start, end, facts) where ``facts`` holds per-member
    tensors for members ``start`` to ``end`` (positions in the ensemble as it stands)."""


class SegmentedController:
    """The controllers of consecutive stretches of members, as one controller.

    ``segments``: (size, controller) in member order. ``after_step`` and ``before_training`` call each
    segment's controller on its members' views and return their facts as :class:`SegmentFacts`;
    ``keep(index)`` drops members from the segments they belong to (a segment left without members
    is dropped, the others are told their own positions that stay)."""

    def __init__(self, segments: Sequence[tuple[int, Any]]):
        self.segments = [[size, controller] for size, controller in segments]

    def _each(self, method: str, norm_tensors: list[torch.Tensor], *args: Any) -> SegmentFacts:
        facts, start = SegmentFacts(), 0
        for size, controller in self.segments:
            call = getattr(controller, method, None)
            if call is not None:
                found = call(*args, [tensor[start:start + size] for tensor in norm_tensors])
                if found:
                    facts.append((start, start + size, found))
            start += size
        return facts

    def after_step(self, step: int, norm_tensors: list[torch.Tensor]) -> SegmentFacts:
        return self._each("after_step", norm_tensors, step)

    def before_training(self, norm_tensors: list[torch.Tensor]) -> SegmentFacts:
        return self._each("before_training", norm_tensors)

    def keep(self, index: torch.Tensor) -> None:
        kept, start = [], 0
        for size, controller in self.segments:
            local = index[(index >= start) & (index < start + size)] - start
            if len(local) == size:
                kept.append([size, controller])
            elif len(local):
                getattr(controller, "keep", lambda index: None)(local)
                kept.append([len(local), controller])
            start += size
        self.segments = kept


class SegmentedOptimizer:
    """The optimizers of consecutive stretches of members (one per cell: its own learning rate), as
    one optimizer over the stacked tensors.

    ``segments``: (size, optimizer) in member order, each built on its members' views of the stacked
    parameters. ``step`` hands each its members' views of the parameters and gradients (an update in
    place of a view is an update of those members). The state is kept stacked, as the loop's checkpoints
    and trunks read and write it (``state_tensors``): each segment's state tensors are replaced by views
    of the stacked ones, which needs optimizers whose ``state_tensors()`` returns their own lists (the
    built-in ones; gnorm.merging merges learning rates only for them)."""

    def __init__(self, segments: Sequence[tuple[int, Any]]):
        self.segments = [[size, optimizer] for size, optimizer in segments]
        self._stack()

    def _stack(self) -> None:
        """Stack the segments' state tensors, part by part, and point each segment at its views."""
        parts = self.segments[0][1].state_tensors()
        self.state = {part: [torch.cat([optimizer.state_tensors()[part][i] for _, optimizer in self.segments])
                             for i in range(len(tensors))] for part, tensors in parts.items()}
        start = 0
        for size, optimizer in self.segments:
            own = optimizer.state_tensors()
            for part, stacked in self.state.items():
                for i, tensor in enumerate(stacked):
                    own[part][i] = tensor[start:start + size]
                if any(a is not b for a, b in zip(optimizer.state_tensors()[part], own[part])):
                    raise TypeError(f"{type(optimizer).__name__}.state_tensors() does not return its own state")
            start += size

    @property
    def step_count(self) -> int:
        return self.segments[0][1].step_count

    @step_count.setter
    def step_count(self, value: int) -> None:
        for _, optimizer in self.segments:
            optimizer.step_count = value

    @torch.no_grad()
    def step(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> None:
        start = 0
        for size, optimizer in self.segments:
            optimizer.step([p[start:start + size] for p in params], [g[start:start + size] for g in grads])
            start += size

    def state_tensors(self) -> dict[str, list[torch.Tensor]]:
        return self.state

    def keep(self, index: torch.Tensor) -> None:
        kept, start = [], 0
        for size, optimizer in self.segments:
            local = index[(index >= start) & (index < start + size)] - start
            if len(local):
                if len(local) < size:
                    optimizer.keep(local)
                kept.append([len(local), optimizer])
            start += size
        self.segments = kept
        self._stack()
