"""The built-in optimizers on stacked ensemble tensors, each computed member by member as torch's own
(AdamW, Adam, SGD) computes it."""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import torch


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

    def __init__(self, params: Sequence[torch.Tensor], decayed: Sequence[bool], config: Any):
        """``config`` has lr, beta1, beta2, eps and (for AdamW) weight_decay; without weight_decay (Adam)
        nothing decays."""
        self.config = config
        self.weight_decay = getattr(config, "weight_decay", 0.0)
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
                p.mul_(1 - c.lr * self.weight_decay)
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
                                beta2=c.beta2, weight_decay=self.weight_decay if decayed else 0.0, eps=c.eps,
                                amsgrad=False, maximize=False)

    def state_tensors(self) -> dict[str, list[torch.Tensor]]:
        return {"exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq}

    def keep(self, index: torch.Tensor) -> None:
        self.exp_avg = [m[index] for m in self.exp_avg]
        self.exp_avg_sq = [v[index] for v in self.exp_avg_sq]


def member_slices(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Every member's slice of every stacked tensor, tensor by tensor: an update on this list computes
    each member exactly as on that member alone (a kernel's vector body and scalar tail then fall on
    the same elements whatever the member count)."""
    return [tensor[m] for tensor in tensors for m in range(tensor.shape[0])]


class BatchedSGD:
    """torch.optim.SGD's update on stacked member tensors (its single-tensor arithmetic, member slice by
    member slice), with weight decay on the weight-norm tensors only:

        g <- g + lambda W                                        (norm tensors; L2 as torch's SGD adds it)
        b <- g at step 1, else b <- mu b + (1 - dampening) g     (momentum mu > 0)
        g <- g + mu b (Nesterov) or g <- b
        W <- W - lr g

    Without momentum the decay step is decoupled decay exactly: W <- W (1 - lr lambda) - lr g.
    """

    def __init__(self, params: Sequence[torch.Tensor], decayed: Sequence[bool], config: Any):
        self.config = config
        self.decayed = list(decayed)
        self.momentum_buffer = [torch.zeros_like(p) for p in params] if config.momentum != 0 else []
        self.step_count = 0

    @torch.no_grad()
    def step(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> None:
        self.step_count += 1
        c = self.config
        grads = list(grads)
        if c.weight_decay != 0:
            grads = [g.add(p, alpha=c.weight_decay) if decayed else g
                     for p, g, decayed in zip(params, grads, self.decayed)]
        slices = member_slices(grads)
        if c.momentum != 0:
            buffers = member_slices(self.momentum_buffer)
            if self.step_count == 1:
                torch._foreach_copy_(buffers, slices)
            else:
                torch._foreach_mul_(buffers, c.momentum)
                torch._foreach_add_(buffers, slices, alpha=1 - c.dampening)
            slices = torch._foreach_add(slices, buffers, alpha=c.momentum) if c.nesterov else buffers
        torch._foreach_add_(member_slices(params), slices, alpha=-c.lr)

    def state_tensors(self) -> dict[str, list[torch.Tensor]]:
        return {"momentum_buffer": self.momentum_buffer} if self.momentum_buffer else {}

    def keep(self, index: torch.Tensor) -> None:
        self.momentum_buffer = [b[index] for b in self.momentum_buffer]
