"""Whether a cell's training is compiled with ``torch.compile``, and the compiled-or-eager wrapper."""

from __future__ import annotations

import os
import shutil
import warnings
from typing import Any, Callable

import torch


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
