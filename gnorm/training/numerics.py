"""How a cell computes on its device: which device, deterministic kernels, and the precision of float32
matmuls; process-wide torch settings a cell sets while it trains and puts back after."""

from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

import torch

from gnorm.errors import Problem, UserError

if TYPE_CHECKING:
    from gnorm.runmodel import TrainingConfig


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
