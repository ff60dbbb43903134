"""AdamW on stacked ensemble tensors, computed member by member as torch's own AdamW computes it."""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Sequence

import torch

if TYPE_CHECKING:
    from gnorm.runmodel import OptimizerConfig


@functools.cache
def has_fused_adamw(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether torch's fused AdamW kernel (private ``torch._fused_adamw_``, the one behind
    ``torch.optim.AdamW(fused=True)``) runs here: tried once per device and dtype on a one-element
    tensor."""
    if not hasattr(torch, "_fused_adamw_"):
        return False
    try:
        one = [torch.zeros(1, device=device, dtype=dtype) for _ in range(4)]
        torch._fused_adamw_([one[0]], [one[1]], [one[2]], [one[3]], [], [torch.ones((), device=device)], lr=1e-3,
                            beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8, amsgrad=False, maximize=False)
    except (RuntimeError, NotImplementedError):
        return False
    return True


class BatchedAdamW:
    """torch.optim.AdamW's update on stacked member tensors, with decoupled weight decay on the
    weight-norm tensors only:

        W <- W (1 - lr lambda)                       (norm tensors)
        m <- beta1 m + (1 - beta1) g,  v <- beta2 v + (1 - beta2) g^2
        W <- W - lr (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)

    computed by torch's fused AdamW kernel (the one behind ``torch.optim.AdamW(fused=True)``: one pass
    over each tensor instead of six), or op by op where that kernel is missing for the device.
    """

    def __init__(self, params: Sequence[torch.Tensor], decayed: Sequence[bool], config: OptimizerConfig):
        self.config = config
        self.decayed = list(decayed)
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        self.step_count = 0
        self.fused = has_fused_adamw(params[0].device, params[0].dtype) if params else False

    @torch.no_grad()
    def step(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> None:
        self.step_count += 1
        if self.fused:
            return self._fused_step(params, grads)
        c = self.config
        bias_correction1 = 1 - c.beta1 ** self.step_count
        bias_correction2_sqrt = math.sqrt(1 - c.beta2 ** self.step_count)
        for p, g, m, v, decayed in zip(params, grads, self.exp_avg, self.exp_avg_sq, self.decayed):
            if decayed:
                p.mul_(1 - c.lr * c.weight_decay)
            m.lerp_(g, 1 - c.beta1)
            v.mul_(c.beta2).addcmul_(g, g, value=1 - c.beta2)
            p.addcdiv_(m, (v.sqrt() / bias_correction2_sqrt).add_(c.eps), value=-c.lr / bias_correction1)

    def _fused_step(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> None:
        """One fused call per group (decayed or not), each member's slice passed as its own tensor: the
        kernel treats a tensor's last few elements apart from the rest (vector body, scalar tail), so
        slicing per member keeps a member's arithmetic independent of how many members share it."""
        c = self.config

        def members(tensors: Sequence[torch.Tensor], chosen: list[int]) -> list[torch.Tensor]:
            return [tensors[i][m] for i in chosen for m in range(tensors[i].shape[0])]

        for decayed in (True, False):
            chosen = [i for i, d in enumerate(self.decayed) if d == decayed]
            if not chosen:
                continue
            sliced = members(params, chosen)
            # The kernel reads the step count (t in the bias corrections) and never writes it, so one
            # tensor can stand for every slice's.
            steps = [torch.full((), float(self.step_count), device=sliced[0].device)] * len(sliced)
            torch._fused_adamw_(sliced, members(grads, chosen), members(self.exp_avg, chosen),
                                members(self.exp_avg_sq, chosen), [], steps, lr=c.lr, beta1=c.beta1,
                                beta2=c.beta2, weight_decay=c.weight_decay if decayed else 0.0, eps=c.eps,
                                amsgrad=False, maximize=False)

    def keep(self, index: torch.Tensor) -> None:
        self.exp_avg = [m[index] for m in self.exp_avg]
        self.exp_avg_sq = [v[index] for v in self.exp_avg_sq]
