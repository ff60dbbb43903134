"""The ensemble: M copies of one module trained as one batch.

Architectures are ordinary single-model ``torch.nn.Module`` s. The ensemble stacks their parameters on
a leading member axis and runs ``vmap(functional_call)`` over it, so one forward/backward trains every
seed; each member's loss depends only on its own parameters, so the gradient of the summed loss is
each member's own gradient. Members that finish leave the ensemble and stop costing compute.
"""

from __future__ import annotations

import copy
import functools
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch.func import functional_call, vmap

from gnorm.components import EvaluationChunk
from gnorm.forks import TrunkState
from gnorm.science import cross_entropy_losses, weight_norm
from gnorm.training.batches import MemberBatches
from gnorm.training.compiling import CompiledOrEager

if TYPE_CHECKING:
    from gnorm.components import BatchedOptimizer

#: A loss plugin's per-example losses of one model: logits [N, C], labels [N] -> losses [N].
Losses = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def member_losses(losses: Losses, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A one-model loss batched over members: logits [M, N, C], labels [M, N] -> losses [M, N]. Each
    example's loss depends on its own row only, so the members' rows are stacked into one [M N, C]."""
    return losses(logits.flatten(0, -2), labels.flatten()).view(labels.shape)


def _train_loss(forward: Callable, losses: Losses, params: dict, buffers: dict, inputs: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
    """sum_m mean_i loss(f(W_m, x_mi) / tau, y_mi): each member's loss depends on its own weights only,
    so the gradient of the sum is every member's own gradient (``forward`` already divides by tau)."""
    logits = forward(params, buffers, inputs)
    return member_losses(losses, logits, labels).sum() / labels.shape[1]


def _example_losses_and_hits(forward: Callable, losses: Losses, params: dict, buffers: dict, inputs: torch.Tensor,
                             labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per member and example: the training loss, 1.0 where the arg-max class is the label, and the
    logits themselves (already divided by tau; for observables)."""
    logits = forward(params, buffers, inputs)
    losses = member_losses(losses, logits, labels)
    return losses, (logits.argmax(-1) == labels).to(losses.dtype), logits


#: Rows of training data per chunk of members: a chunk's activations then stay in the CPU's cache.
#: At p = 59 (1392 rows) that is 4 members a chunk, measured at 50 ms a step against 76 ms for one
#: batch of 16 on the 2-core development machine.
ROWS_PER_CHUNK = 6000


def members_per_chunk(rows_per_member: int, members: int, device: torch.device, requested: int = 0) -> int:
    """``requested`` if positive; on a GPU all members at once; on a CPU
    max(1, round(ROWS_PER_CHUNK / rows_per_member)). Members are independent, so chunking never
    changes their arithmetic."""
    if requested > 0:
        return requested
    return members if device.type != "cpu" else max(1, round(ROWS_PER_CHUNK / rows_per_member))


class Ensemble:
    """M copies of one module, parameters stacked on a leading member axis, each with its own split."""

    def __init__(self, modules: Sequence[torch.nn.Module], splits: Sequence[Any], device: torch.device,
                 dtype: torch.dtype, compile: bool = False, chunk: int = 0, loss: Losses = cross_entropy_losses,
                 temperature: float = 1.0, batches: MemberBatches | None = None):
        """``loss``: a loss plugin's per-example losses of one model (default cross-entropy), computed on
        the logits divided by ``temperature``; ``batches``: each member's mini-batch stream (None: full
        batch)."""
        template = modules[0]
        self._base = copy.deepcopy(template).to("meta")
        self.groups = template.weight_norm_groups()
        names = [name for name, _ in template.named_parameters()]
        missing = [n for group in self.groups.values() for n in group if n not in names]
        if missing:
            raise ValueError(f"weight_norm_groups() names parameters the module lacks: {missing}")
        self.norm_names = [n for group in self.groups.values() for n in group]
        self.params = {n: torch.stack([m.get_parameter(n).detach() for m in modules]).to(device, dtype)
                       for n in names}
        self.buffers = {n: torch.stack([b.detach() for b in [m.get_buffer(n) for m in modules]]).to(device)
                        for n, _ in template.named_buffers()}

        def floating(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, dtype) if t.is_floating_point() else t.to(device)

        self.inputs = floating(torch.stack([s.inputs for s in splits]))
        self.labels = torch.stack([s.labels for s in splits]).to(device)
        train_index = torch.stack([s.train_index for s in splits]).to(device)
        self.train_mask = torch.zeros(self.labels.shape, dtype=torch.bool, device=device)
        self.train_mask.scatter_(1, train_index, True)
        self.test_mask = torch.zeros_like(self.train_mask)
        self.test_mask.scatter_(1, torch.stack([s.test_index for s in splits]).to(device), True)
        gather = train_index.view(*train_index.shape, *([1] * (self.inputs.dim() - 2)))
        self.train_inputs = torch.take_along_dim(self.inputs, gather, dim=1)
        self.train_labels = torch.take_along_dim(self.labels, train_index, dim=1)
        members = self.labels.shape[0]
        #: Each member's sampling stream (``batches.at(step)``: the step's batch, None for full batch).
        self.batches = batches if batches is not None else MemberBatches((), 0, 0)
        rows = self.batches.batch_size or self.train_labels.shape[1]
        self.train_chunk = members_per_chunk(rows, members, device, chunk)
        self.eval_chunk = members_per_chunk(self.labels.shape[1], members, device, chunk)
        self.compiled = compile
        self.grads = [torch.zeros_like(p) for p in self.params.values()]
        self.loss, self.temperature = loss, temperature

        def logits(params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
            """One member's logits / tau: the output temperature tau is outside the weight norm."""
            out = functional_call(self._base, (params, buffers), (x,))
            return out if temperature == 1.0 else out / temperature

        #: Every member's logits / tau: ``forward(params, buffers, inputs)`` on stacked params and inputs.
        self.forward = forward = vmap(logits)
        self._train_loss = functools.partial(_train_loss, forward, loss)
        self._losses_and_hits = functools.partial(_example_losses_and_hits, forward, loss)
        if compile:
            self._train_loss = CompiledOrEager(self._train_loss)
            self._losses_and_hits = CompiledOrEager(self._losses_and_hits)

    @property
    def is_compiled(self) -> bool:
        """Whether training ran compiled (False once compiling failed and it fell back to eager)."""
        return self.compiled and getattr(self._train_loss, "compiled", None) is not None

    @property
    def size(self) -> int:
        return self.labels.shape[0]

    @property
    def parameters(self) -> list[torch.Tensor]:
        return list(self.params.values())

    @property
    def norm_tensors(self) -> list[torch.Tensor]:
        return [self.params[n] for n in self.norm_names]

    def _chunks(self, size: int) -> list[slice]:
        return [slice(start, start + size) for start in range(0, self.size, size)]

    def gradients(self, batch: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Every member's gradient of its mean training loss, in ``parameters`` order, computed
        a chunk of members at a time: over its whole training set, or where ``batch`` ([members, B]
        positions into each member's training set, as ``batches.at(step)`` gives them) is given, over
        those B examples."""
        inputs, labels = self.train_inputs, self.train_labels
        if batch is not None:
            gather = batch.view(*batch.shape, *([1] * (inputs.dim() - 2)))
            inputs = torch.take_along_dim(inputs, gather, dim=1)
            labels = torch.take_along_dim(labels, batch, dim=1)
        chunks = self._chunks(self.train_chunk)
        for chunk in chunks:
            leaves = {n: p[chunk].requires_grad_() for n, p in self.params.items()}
            buffers = {n: b[chunk] for n, b in self.buffers.items()}
            loss = self._train_loss(leaves, buffers, inputs[chunk], labels[chunk])
            grads = torch.autograd.grad(loss, list(leaves.values()))
            if len(chunks) == 1:
                return list(grads)
            for buffer, grad in zip(self.grads, grads):
                buffer[chunk] = grad
        return self.grads

    @torch.no_grad()
    def evaluate(self, observers: Sequence[Any] = ()) -> dict[str, torch.Tensor]:
        """Per-member loss and accuracy on train and test sets, the weight norm, one norm per group, and
        what each observer measures from a chunk's logits (dropped before the next chunk's are made)."""
        parts, observed = [], {}
        for chunk in self._chunks(self.eval_chunk):
            params = {n: p[chunk] for n, p in self.params.items()}
            losses, hits, logits = self._losses_and_hits(params, {n: b[chunk] for n, b in self.buffers.items()},
                                                         self.inputs[chunk], self.labels[chunk])
            parts.append((losses, hits))
            view = EvaluationChunk(logits, self.labels[chunk], self.train_mask[chunk], params)
            for observer in observers:
                for key, values in observer.observe(view).items():
                    observed.setdefault(key, []).append(values)
            del logits, view
        losses, correct = torch.cat([part[0] for part in parts]), torch.cat([part[1] for part in parts])
        out = {key: torch.cat(values) for key, values in observed.items()}
        for split, mask in (("train", self.train_mask), ("test", self.test_mask)):
            count = mask.sum(1)
            out[f"{split}_loss"] = (losses * mask).sum(1) / count
            out[f"{split}_acc"] = (correct * mask).sum(1) / count
        out["weight_norm"] = weight_norm(self.norm_tensors)
        for group, names in self.groups.items():
            out[f"norm/{group}"] = weight_norm([self.params[n] for n in names])
        return out

    def training_tensors(self, optimizer: "BatchedOptimizer") -> dict[str, dict[str, torch.Tensor]]:
        """The stacked tensors that make up the training state, by part ("params", "buffers" and the
        optimizer's state parts: AdamW's "exp_avg", "exp_avg_sq") and name (the ensemble's and ``optimizer``'s own, not copies)."""
        names = list(self.params)
        return {"params": self.params, "buffers": self.buffers,
                **{part: dict(zip(names, tensors)) for part, tensors in optimizer.state_tensors().items()}}

    def member_state(self, optimizer: "BatchedOptimizer", position: int) -> TrunkState:
        """Member ``position``'s full training state, copied to the CPU."""
        parts = {part: {n: t[position].detach().cpu().clone() for n, t in tensors.items()}
                 for part, tensors in self.training_tensors(optimizer).items()}
        return TrunkState.from_parts(parts, optimizer.step_count)

    def stacked_state(self, optimizer: "BatchedOptimizer") -> dict[str, dict[str, torch.Tensor]]:
        """Every member's training state, stacked as in ``training_tensors``, copied to the CPU."""
        return {part: {n: t.detach().cpu().clone() for n, t in tensors.items()}
                for part, tensors in self.training_tensors(optimizer).items()}

    @torch.no_grad()
    def load_stacked_state(self, optimizer: "BatchedOptimizer", state: dict[str, dict[str, torch.Tensor]],
                           step: int) -> None:
        """Overwrite every member's training state with ``state`` (as ``stacked_state`` gives it) and set
        the optimizer's step count to ``step``."""
        for part, tensors in self.training_tensors(optimizer).items():
            if set(state[part]) != set(tensors):
                raise ValueError(f"the checkpoint's {part} do not match this architecture's")
            for name, tensor in tensors.items():
                tensor.copy_(state[part][name])
        optimizer.step_count = step

    @torch.no_grad()
    def start_from(self, optimizer: "BatchedOptimizer", states: Sequence[TrunkState]) -> None:
        """Overwrite every member's weights, buffers and optimizer state with ``states`` (one per member,
        all after the same step)."""
        if len(states) != self.size or len({s.step for s in states}) != 1:
            raise ValueError("start_from needs one state per member, all after the same step")
        for part, tensors in self.training_tensors(optimizer).items():
            if any(set(s.parts().get(part, {})) != set(tensors) for s in states):
                raise ValueError(f"the stored trunk state's {part} do not match this architecture's")
            for name, tensor in tensors.items():
                tensor.copy_(torch.stack([s.parts()[part][name] for s in states]))
        optimizer.step_count = states[0].step

    def keep(self, index: torch.Tensor) -> None:
        """Drop every member not in ``index`` (positions of those that stay)."""
        self.params = {n: p[index] for n, p in self.params.items()}
        self.buffers = {n: b[index] for n, b in self.buffers.items()}
        self.grads = [torch.zeros_like(p) for p in self.params.values()]
        self.batches.keep(index)
        for name in ("inputs", "labels", "train_mask", "test_mask", "train_inputs", "train_labels"):
            setattr(self, name, getattr(self, name)[index])
