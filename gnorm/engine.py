"""The training core: the seeds of a cell trained as one batched ensemble.

Architectures are ordinary single-model ``torch.nn.Module`` s. The ensemble stacks their parameters on
a leading member axis and runs ``vmap(functional_call)`` over it, so one forward/backward trains every
seed; each member's loss depends only on its own parameters, so the gradient of the summed loss is
each member's own gradient. Members that finish leave the ensemble and stop costing compute.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import shutil
import time
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import attrs
import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from gnorm.checkpoints import Checkpoints, CellState, pickled_components, unpickled_components
from gnorm.components import ControllerContext, EvaluationChunk, GrokTimes, ObservableContext, RunRecord
from gnorm.config import OptimizerConfig, RunSpec, TrainingConfig
from gnorm.errors import Problem, UserError
from gnorm.forks import TrunkState, state_sha256
from gnorm.registry import Registry
from gnorm.science import contraction_norms, every_schedule, example_losses, geometric_schedule, weight_norm

METRICS = ("train_loss", "test_loss", "train_acc", "test_acc", "weight_norm")


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when present, else the CPU; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError([Problem("", "training.device",
                                 f"{name!r} is not a device torch knows (try auto, cpu, cuda)")]) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError([Problem("", "training.device",
                                 "cuda was asked for, but torch sees no CUDA device here; use auto or cpu")])
    return device


def evaluation_steps(run: RunSpec) -> np.ndarray:
    """The scheduled evaluation steps; a forked run's are those after its fork step."""
    evaluation, budget = run.evaluation, run.training.max_steps
    if evaluation.schedule == "geometric":
        steps = geometric_schedule(budget, evaluation.points)
    else:
        steps = every_schedule(budget, evaluation.every)
    return steps[steps > run.fork.at_step] if run.fork is not None else steps


def _train_loss(forward: Callable, loss: str, params: dict, buffers: dict, inputs: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
    """sum_m mean_i loss(f(W_m, x_mi) / tau, y_mi): each member's loss depends on its own weights only,
    so the gradient of the sum is every member's own gradient (``forward`` already divides by tau)."""
    logits = forward(params, buffers, inputs)
    if loss == "cross_entropy":  # one fused reduction, as before losses were pluggable
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum") / labels.shape[1]
    return example_losses(loss, logits, labels).sum() / labels.shape[1]


def _example_losses_and_hits(forward: Callable, loss: str, params: dict, buffers: dict, inputs: torch.Tensor,
                             labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per member and example: the training loss, 1.0 where the arg-max class is the label, and the
    logits themselves (already divided by tau; for observables)."""
    logits = forward(params, buffers, inputs)
    losses = example_losses(loss, logits, labels)
    return losses, (logits.argmax(-1) == labels).to(losses.dtype), logits


class CompiledOrEager:
    """``torch.compile(function)``, falling back to ``function`` (with a warning) if compiling fails,
    e.g. where no C++ compiler is present."""

    def __init__(self, function: Callable):
        # Each cell compiles anew (new module, new closure); leave room for a study's many cells.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 1024)
        torch._dynamo.config.accumulated_recompile_limit = max(
            torch._dynamo.config.accumulated_recompile_limit, 4096)
        self.eager, self.compiled = function, torch.compile(function, dynamic=True)

    def __call__(self, *args: Any) -> Any:
        if self.compiled is None:
            return self.eager(*args)
        try:
            return self.compiled(*args)
        except Exception as error:  # compiler missing or unsupported op: the eager path is the same function
            warnings.warn(f"torch.compile failed, training without it: {type(error).__name__}: {error}"[:500])
            self.compiled = None
            return self.eager(*args)


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
                 dtype: torch.dtype, compile: bool = False, chunk: int = 0, loss: str = "cross_entropy",
                 temperature: float = 1.0):
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
        self.train_chunk = members_per_chunk(self.train_labels.shape[1], members, device, chunk)
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

    def gradients(self) -> list[torch.Tensor]:
        """Every member's gradient of its mean training loss, in ``parameters`` order, computed
        a chunk of members at a time."""
        chunks = self._chunks(self.train_chunk)
        for chunk in chunks:
            leaves = {n: p[chunk].requires_grad_() for n, p in self.params.items()}
            buffers = {n: b[chunk] for n, b in self.buffers.items()}
            loss = self._train_loss(leaves, buffers, self.train_inputs[chunk], self.train_labels[chunk])
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

    def training_tensors(self, optimizer: "BatchedAdamW") -> dict[str, dict[str, torch.Tensor]]:
        """The stacked tensors that make up the training state, by part ("params", "buffers",
        "exp_avg", "exp_avg_sq") and name (the ensemble's and ``optimizer``'s own, not copies)."""
        names = list(self.params)
        return {"params": self.params, "buffers": self.buffers, "exp_avg": dict(zip(names, optimizer.exp_avg)),
                "exp_avg_sq": dict(zip(names, optimizer.exp_avg_sq))}

    def member_state(self, optimizer: "BatchedAdamW", position: int) -> TrunkState:
        """Member ``position``'s full training state, copied to the CPU."""
        parts = {part: {n: t[position].detach().cpu().clone() for n, t in tensors.items()}
                 for part, tensors in self.training_tensors(optimizer).items()}
        return TrunkState(**parts, step=optimizer.step_count)

    def stacked_state(self, optimizer: "BatchedAdamW") -> dict[str, dict[str, torch.Tensor]]:
        """Every member's training state, stacked as in ``training_tensors``, copied to the CPU."""
        return {part: {n: t.detach().cpu().clone() for n, t in tensors.items()}
                for part, tensors in self.training_tensors(optimizer).items()}

    @torch.no_grad()
    def load_stacked_state(self, optimizer: "BatchedAdamW", state: dict[str, dict[str, torch.Tensor]],
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
    def start_from(self, optimizer: "BatchedAdamW", states: Sequence[TrunkState]) -> None:
        """Overwrite every member's weights, buffers and AdamW state with ``states`` (one per member,
        all after the same step)."""
        if len(states) != self.size or len({s.step for s in states}) != 1:
            raise ValueError("start_from needs one state per member, all after the same step")
        for part, tensors in self.training_tensors(optimizer).items():
            if any(set(getattr(s, part)) != set(tensors) for s in states):
                raise ValueError(f"the stored trunk state's {part} do not match this architecture's")
            for name, tensor in tensors.items():
                tensor.copy_(torch.stack([getattr(s, part)[name] for s in states]))
        optimizer.step_count = states[0].step

    def keep(self, index: torch.Tensor) -> None:
        """Drop every member not in ``index`` (positions of those that stay)."""
        self.params = {n: p[index] for n, p in self.params.items()}
        self.buffers = {n: b[index] for n, b in self.buffers.items()}
        self.grads = [torch.zeros_like(p) for p in self.params.values()]
        for name in ("inputs", "labels", "train_mask", "test_mask", "train_inputs", "train_labels"):
            setattr(self, name, getattr(self, name)[index])


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


@attrs.define
class RunLog:
    """What one member has produced so far (host side)."""

    run: RunSpec
    steps: list[int] = attrs.field(factory=list)
    metrics: dict[str, list[float]] = attrs.field(factory=dict)
    facts: dict[str, float] = attrs.field(factory=dict)
    times: GrokTimes = GrokTimes(None, None)
    started: float = attrs.field(factory=time.perf_counter)

    def append(self, step: int, values: dict[str, float]) -> None:
        self.steps.append(step)
        for key, value in values.items():
            self.metrics.setdefault(key, []).append(value)

    def plain(self) -> dict[str, Any]:
        """What a checkpoint keeps of this log: evaluations, facts, T_mem and T_grok so far, and the
        seconds trained."""
        return {"run_id": self.run.run_id, "steps": self.steps, "metrics": self.metrics, "facts": self.facts,
                "t_mem": self.times.t_mem, "t_grok": self.times.t_grok,
                "seconds": time.perf_counter() - self.started}

    @classmethod
    def from_plain(cls, run: RunSpec, data: dict[str, Any]) -> "RunLog":
        """The log ``plain`` gave, for ``run``; its clock goes on from the seconds trained."""
        return cls(run, list(data["steps"]), {k: list(v) for k, v in data["metrics"].items()}, dict(data["facts"]),
                   GrokTimes(data["t_mem"], data["t_grok"]), time.perf_counter() - data["seconds"])

    def record(self, critical_norm: float | None, compiled: bool = False) -> RunRecord:
        """The run as stored. A grokked run's facts hold each group's norm at T_grok as
        ``norm_at_grok/<group>`` (what per-group critical norms are the median of) and the logit scale
        at T_grok when it was observed (``logit_scale_at_grok``, read by ``logit_mediation``); every
        run's facts hold ``norm_at_memorization`` and ``peak_norm`` (read by ``free_contraction``) where
        defined."""
        norm_at_grok = None
        facts = dict(self.facts)
        if self.times.t_grok is not None:
            at_grok = self.steps.index(self.times.t_grok)
            norm_at_grok = self.metrics["weight_norm"][at_grok]
            facts.update({f"norm_at_grok/{key[len('norm/'):]}": values[at_grok]
                          for key, values in self.metrics.items() if key.startswith("norm/")})
            if "logit_scale" in self.metrics:
                facts["logit_scale_at_grok"] = self.metrics["logit_scale"][at_grok]
        if self.steps:
            facts.update(contraction_norms(self.steps, self.metrics["weight_norm"], self.times.t_mem, self.times.t_grok))
        facts.update(steps_trained=self.steps[-1] if self.steps else 0,
                     wall_seconds=time.perf_counter() - self.started, compiled=float(compiled))
        if critical_norm is not None:
            facts["critical_norm"] = critical_norm
        return RunRecord(run_id=self.run.run_id, stage=self.run.stage, cell=self.run.cell, seed=self.run.seed,
                         config=self.run.plain(), t_mem=self.times.t_mem, t_grok=self.times.t_grok,
                         norm_at_grok=norm_at_grok, budget=self.run.training.max_steps, facts=facts)


@attrs.frozen
class CellJob:
    """One cell's runs (same settings, different seeds) and the critical norm its controller uses, in
    total and per weight-norm group (empty when not known); for a forked cell, the trunk state each run
    starts from (see gnorm.forks); and the file its checkpoints go to (None: no checkpoints; see
    gnorm.checkpoints)."""

    runs: list[RunSpec]
    critical_norm: float | None
    group_critical_norms: dict[str, float] = attrs.field(factory=dict)
    start_states: list[TrunkState] | None = None
    checkpoint: str | None = None


#: ``compile = "auto"`` compiles runs whose max_steps x parameters reaches this (the paper's MLP over
#: 2000 steps is 1.8e8): about where compiling repays itself on a 2-core CPU. It is decided per run, not
#: per cell, so a seed is computed the same way whichever seeds share its cell.
COMPILE_WORK_THRESHOLD = 1e8


def should_compile(setting: str, device: torch.device, max_steps: int, parameters: int) -> bool:
    """``on``/``off`` as asked; ``auto``: on CUDA, or on a CPU with a C++ compiler when
    max_steps * parameters >= COMPILE_WORK_THRESHOLD."""
    if setting != "auto":
        return setting == "on"
    if device.type == "cuda":
        return True
    has_compiler = any(shutil.which(name) for name in (os.environ.get("CXX", ""), "g++", "c++", "clang++") if name)
    return has_compiler and max_steps * parameters >= COMPILE_WORK_THRESHOLD


def build_ensemble(job: CellJob, registry: Registry) -> tuple[Ensemble, Any]:
    """Each seed's split and initial weights depend only on its base configuration and seed."""
    first = job.runs[0]
    task = registry.get("task", first.task.name).factory(first.task.config)
    architecture = registry.get("architecture", first.architecture.name)
    modules = []
    for run in job.runs:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(run.init_seed)
            modules.append(architecture.factory(first.architecture.config, task))
    splits = [task.split(run.split_seed) for run in job.runs]
    dtype = {"float32": torch.float32, "float64": torch.float64}[first.training.precision]
    device = resolve_device(first.training.device)
    parameters = sum(p.numel() for p in modules[0].parameters())
    compile = should_compile(first.training.compile, device, first.training.max_steps, parameters)
    return Ensemble(modules, splits, device, dtype, compile, first.training.members_per_chunk,
                    loss=first.loss.name, temperature=first.loss.temperature), task


@contextmanager
def deterministic_algorithms(device: torch.device | str = "cpu") -> Iterator[None]:
    """Same config and seed, same result. On a CPU with one torch thread every kernel runs serially, so
    it is deterministic as it is, and torch.compile may generate its own scatter-adds (about 3x faster
    than the sorted deterministic fallback); with more threads, and on any other device (whose
    scatter-adds are atomic), torch's deterministic kernels are switched on (ops without one warn
    instead of failing)."""
    serial = torch.device(device).type == "cpu" and torch.get_num_threads() == 1
    enabled, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(not serial, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def cpu_computes_bfloat16() -> bool:
    """Whether float32 matmuls on this CPU really change when torch is told to compute them in bfloat16
    (``torch.set_float32_matmul_precision("medium")``). Decided by the effect, not by CPU flags: a CPU
    whose oneDNN reports bfloat16 support may still compute these matmuls in float32."""
    enabled = torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
    return enabled and _bfloat16_matmuls_change_results(torch.__version__)


@functools.cache
def _bfloat16_matmuls_change_results(torch_version: str) -> bool:
    """Compute a plain and a batched matmul (the shapes an ensemble's layers take) in float32 and again
    under "medium" precision; True when either result differs, in any bit, from float32's."""
    generator = torch.Generator().manual_seed(0)
    left, right = torch.randn(4, 48, 64, generator=generator), torch.randn(4, 64, 32, generator=generator)
    try:
        before = torch.get_float32_matmul_precision()
    except RuntimeError:  # the process mixed torch's per-backend and global settings
        before = "highest"
    try:
        torch.set_float32_matmul_precision("highest")
        exact = (left[0] @ right[0], torch.bmm(left, right))
        torch.set_float32_matmul_precision("medium")
        reduced = (left[0] @ right[0], torch.bmm(left, right))
    finally:
        torch.set_float32_matmul_precision(before)
    return any(not torch.equal(a, b) for a, b in zip(exact, reduced))


def torch_matmul_precision(precision: str, device: torch.device) -> str:
    """The value of ``torch.set_float32_matmul_precision`` that computes ``training.matmul_precision``
    on ``device``: "full" -> "highest" (float32, whatever the process had set), "bfloat16" -> "medium"
    (oneDNN on a CPU), "tensorfloat32" -> "high" (CUDA, compute capability 8.0 or later). A precision
    the device cannot compute is refused, never computed in float32 under a lower-precision label."""
    if precision == "full":
        return "highest"
    if precision == "bfloat16" and device.type == "cpu":
        if cpu_computes_bfloat16():
            return "medium"
        raise UserError([Problem("", "training.matmul_precision", "'bfloat16' needs a CPU whose matmuls "
                                 "compute in bfloat16 when asked (probed: this one's stay float32, or oneDNN is "
                                 "off); use \"full\"")])
    if precision == "tensorfloat32" and device.type == "cuda":
        if torch.cuda.get_device_capability(device) >= (8, 0):
            return "high"
        raise UserError([Problem("", "training.matmul_precision", "'tensorfloat32' needs a GPU of compute "
                                 "capability 8.0 or later (Ampere); this one computes float32; use \"full\"")])
    usable = {"cpu": "'bfloat16'", "cuda": "'tensorfloat32'"}.get(device.type)
    raise UserError([Problem("", "training.matmul_precision", f"{precision!r} is not computed on {device.type} "
                             f"devices (there: {usable + ' or ' if usable else ''}'full')")])


@contextmanager
def matmuls_computed_in(precision: str, device: torch.device) -> Iterator[None]:
    """Compute float32 matmuls as ``training.matmul_precision`` says (see ``torch_matmul_precision``),
    then put back the process's setting. The setting is process-wide: cells that share a process
    must not train at the same time (gnorm's executors give each cell its own process or run cells in
    turn)."""
    value = torch_matmul_precision(precision, device)
    try:
        before = torch.get_float32_matmul_precision()
    except RuntimeError:  # the process mixed torch's per-backend and global settings: restore to default
        before = "highest"
    torch.set_float32_matmul_precision(value)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


@contextmanager
def numerics(training: TrainingConfig) -> Iterator[None]:
    """How a cell computes on its device: deterministic kernels as ``deterministic_algorithms`` says,
    matmuls as ``training.matmul_precision`` says."""
    device = resolve_device(training.device)
    with deterministic_algorithms(device), matmuls_computed_in(training.matmul_precision, device):
        yield


def train_cell(job: CellJob, registry: Registry, on_finished: Callable[[RunRecord, RunLog], None],
               on_progress: Callable[[int, int], None] = lambda step, active: None) -> None:
    """Train every run of a cell together until each has grokked (when the schedule stops on grok) or
    the budget is spent; ``on_finished`` receives each run as soon as it is done. With a checkpoint
    file in the job, the cell checkpoints as it goes and resumes from a usable checkpoint there
    (gnorm.checkpoints); runs that had finished before it was written are handed over first."""
    with numerics(job.runs[0].training):
        _train_cell(job, registry, on_finished, on_progress)


def controller_context(job: CellJob, ensemble: Ensemble, start_step: int = 0) -> ControllerContext:
    """What the cell's controller is told: Wc (total and per group), the member count, where each
    weight-norm group's tensors sit in ``ensemble.norm_tensors``, and the step training resumes from
    (a fork's ``at_step``, else 0)."""
    positions = {name: i for i, name in enumerate(ensemble.norm_names)}
    groups = {group: [positions[name] for name in names] for group, names in ensemble.groups.items()}
    return ControllerContext(job.critical_norm, len(job.runs), groups=groups,
                             group_critical_norms=dict(job.group_critical_norms),
                             tensor_names=list(ensemble.norm_names), start_step=start_step)


def train_trunk(job: CellJob, registry: Registry) -> list[TrunkState]:
    """The trunk of a forked cell: each run's seed trained from its usual initialization and split for
    ``fork.at_step`` steps under the fork's controller; returns every member's state then."""
    first = job.runs[0]
    at_step = first.fork.at_step
    # The trunk is computed the same way whichever arm asks for it first: decide compiling on at_step.
    runs = [attrs.evolve(run, training=attrs.evolve(run.training, max_steps=at_step)) for run in job.runs]
    with numerics(first.training):
        ensemble, _ = build_ensemble(CellJob(runs, None), registry)
        optimizer = BatchedAdamW(ensemble.parameters, [n in ensemble.norm_names for n in ensemble.params],
                                 first.optimizer)
        controller = registry.get("norm_controller", first.fork.controller.name).factory(
            first.fork.controller.config, controller_context(CellJob(runs, None), ensemble))
        with torch.no_grad():
            getattr(controller, "before_training", lambda tensors: None)(ensemble.norm_tensors)
        for step in range(1, at_step + 1):
            optimizer.step(ensemble.parameters, ensemble.gradients())
            with torch.no_grad():
                controller.after_step(step, ensemble.norm_tensors)
        return [ensemble.member_state(optimizer, position) for position in range(ensemble.size)]


def _start_from_trunk(job: CellJob, ensemble: Ensemble, optimizer: BatchedAdamW, logs: list[RunLog]) -> int:
    """Load a forked cell's trunk states; return the step training resumes after (0 when not forked).
    Each arm records the hash of the state it really starts from, and its norm there."""
    first = job.runs[0]
    if first.fork is None:
        return 0
    if job.start_states is None:
        raise ValueError(f"stage {first.stage!r} forks at step {first.fork.at_step}; its job needs the trunk states")
    ensemble.start_from(optimizer, job.start_states)
    norms = weight_norm(ensemble.norm_tensors).tolist()
    for position, log in enumerate(logs):
        log.facts["fork_state_sha256"] = state_sha256(ensemble.member_state(optimizer, position))
        log.facts["norm_at_fork"] = norms[position]
    return first.fork.at_step


def _observers(first: RunSpec, ensemble: Ensemble, task: Any, registry: Registry) -> list[Any]:
    context = ObservableContext(dict(ensemble.groups), task.input_spec, task.num_classes)
    return [registry.get("observable", name).factory(registry.get("observable", name).config_class(), context)
            for name in first.evaluation.observables]


def _record_facts(logs: list[RunLog], facts: dict[str, torch.Tensor] | None) -> None:
    for key, values in (facts or {}).items():
        for log, value in zip(logs, values.tolist()):
            log.facts[key] = value


def _train_cell(job: CellJob, registry: Registry, on_finished: Callable[[RunRecord, RunLog], None],
                on_progress: Callable[[int, int], None]) -> None:
    first = job.runs[0]
    ensemble, task = build_ensemble(job, registry)
    optimizer = BatchedAdamW(ensemble.parameters, [n in ensemble.norm_names for n in ensemble.params], first.optimizer)
    criterion = registry.get("grok_criterion", first.criterion.name).factory(first.criterion.config)
    checkpoints = Checkpoints.for_job(job, ensemble.labels.device)
    finished: list[dict[str, Any]] = []  # the runs done in this job, as a checkpoint keeps them

    def finish(record: RunRecord, log: RunLog) -> None:
        finished.append({"record": attrs.asdict(record), "steps": log.steps, "metrics": log.metrics})
        on_finished(record, log)

    saved = checkpoints.load()
    if saved is None:
        start, logs, controller, observers = _start(job, ensemble, optimizer, task, registry)
    else:
        start, logs, controller, observers = _resume(job, saved, ensemble, optimizer, registry, finish)
    schedule = set(evaluation_steps(first).tolist())
    for step in range(start + 1, first.training.max_steps + 1):
        optimizer.step(ensemble.parameters, ensemble.gradients())
        with torch.no_grad():
            _record_facts(logs, controller.after_step(step, ensemble.norm_tensors))
        if step not in schedule:
            continue
        done = _evaluate(ensemble, logs, criterion, step, registry, first.evaluation.stop_when_grokked, observers)
        on_progress(step, len(logs))
        for position in done:
            finish(logs[position].record(job.critical_norm, ensemble.is_compiled), logs[position])
        logs = _drop_members(done, logs, ensemble, optimizer, controller)
        if not logs:
            return
        checkpoints.save_if_due(lambda: _cell_state(checkpoints.identity, step, ensemble, optimizer, logs,
                                                    finished, controller, observers))
    for log in logs:
        on_finished(log.record(job.critical_norm, ensemble.is_compiled), log)


def _start(job: CellJob, ensemble: Ensemble, optimizer: BatchedAdamW, task: Any,
           registry: Registry) -> tuple[int, list[RunLog], Any, list[Any]]:
    """A cell from its beginning (a fork's arms: from their trunk states): the runs' logs, the
    controller and observers, ``gnorm_before_run`` for every run, and the controller's first call
    (``before_training``, or a fork's ``after_step(at_step)``). Returns the step training resumes after
    with the logs, controller and observers."""
    first = job.runs[0]
    observers = _observers(first, ensemble, task, registry)
    logs = [RunLog(run) for run in job.runs]
    start = _start_from_trunk(job, ensemble, optimizer, logs)
    controller = registry.get("norm_controller", first.controller.name).factory(
        first.controller.config, controller_context(job, ensemble, start))
    for run in job.runs:
        registry.hook.gnorm_before_run(run_id=run.run_id, stage=run.stage, seed=run.seed, config=run.plain())
    with torch.no_grad():
        if start:  # a forked arm: the controller acts after step `start`, on the forked state
            _record_facts(logs, controller.after_step(start, ensemble.norm_tensors))
        elif hasattr(controller, "before_training"):
            _record_facts(logs, controller.before_training(ensemble.norm_tensors))
    return start, logs, controller, observers


def _resume(job: CellJob, saved: CellState, ensemble: Ensemble, optimizer: BatchedAdamW, registry: Registry,
            finish: Callable[[RunRecord, RunLog], None]) -> tuple[int, list[RunLog], Any, list[Any]]:
    """A cell from its checkpoint: the runs that had finished are handed to ``finish`` again (in the
    order they finished), the ensemble (built from the job as usual) keeps the members still training
    and takes their saved state, and the controller and observers are the saved ones. Only those
    members get ``gnorm_before_run``; evaluations before the checkpoint are not announced again.
    Returns the step training resumes after with the logs, controller and observers."""
    runs = {run.run_id: run for run in job.runs}
    for entry in saved.finished:
        run = runs[entry["record"]["run_id"]]
        finish(RunRecord(**entry["record"]), RunLog(run, list(entry["steps"]), dict(entry["metrics"])))
    if len(saved.members) < ensemble.size:
        positions = {run.run_id: position for position, run in enumerate(job.runs)}
        index = torch.tensor([positions[run_id] for run_id in saved.members], device=ensemble.labels.device)
        ensemble.keep(index)
        optimizer.keep(index)
    ensemble.load_stacked_state(optimizer, saved.tensors, saved.optimizer_steps)
    logs = [RunLog.from_plain(runs[run_id], data) for run_id, data in zip(saved.members, saved.logs)]
    for log in logs:
        registry.hook.gnorm_before_run(run_id=log.run.run_id, stage=log.run.stage, seed=log.run.seed,
                                       config=log.run.plain())
    controller, observers = unpickled_components(saved)
    return saved.step, logs, controller, observers


def _drop_members(done: list[int], logs: list[RunLog], ensemble: Ensemble, optimizer: BatchedAdamW,
                  controller: Any) -> list[RunLog]:
    """Take the members at positions ``done`` out of the ensemble, the optimizer and the controller;
    return the logs of those that stay."""
    if not done:
        return logs
    keep = [i for i in range(len(logs)) if i not in done]
    if keep:
        index = torch.tensor(keep, device=ensemble.labels.device)
        ensemble.keep(index)
        optimizer.keep(index)
        getattr(controller, "keep", lambda index: None)(index)
    return [logs[i] for i in keep]


def _cell_state(identity: str, step: int, ensemble: Ensemble, optimizer: BatchedAdamW, logs: list[RunLog],
                finished: list[dict[str, Any]], controller: Any, observers: list[Any]) -> CellState | None:
    """The cell's state after the evaluation at ``step``, as a checkpoint keeps it (None when the
    controller or observers cannot be pickled)."""
    components = pickled_components(controller, observers)
    if components is None:
        return None
    return CellState(identity, step, [log.run.run_id for log in logs], ensemble.stacked_state(optimizer),
                     optimizer.step_count, [log.plain() for log in logs], list(finished), components)


def _evaluate(ensemble: Ensemble, logs: list[RunLog], criterion: Any, step: int, registry: Registry,
              stop_when_grokked: bool, observers: Sequence[Any] = ()) -> list[int]:
    """Record one evaluation for every member; return the positions of members that are done."""
    values = {key: tensor.tolist() for key, tensor in ensemble.evaluate(observers).items()}
    done = []
    for position, log in enumerate(logs):
        metrics = {key: column[position] for key, column in values.items()}
        log.append(step, metrics)
        registry.hook.gnorm_after_evaluation(run_id=log.run.run_id, step=step, metrics=metrics)
        log.times = criterion.times(np.asarray(log.steps), {k: np.asarray(v) for k, v in log.metrics.items()})
        if stop_when_grokked and log.times.t_grok is not None:
            done.append(position)
    return done
