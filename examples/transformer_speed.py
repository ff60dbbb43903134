"""Training speed of the attention model on a W1-like cell: p = 59, training fraction 0.4, 16 seeds,
AdamW lr 1e-3, weight decay 1, the papers' sizes (d = 128, 4 heads, MLP 512). Prints member-steps per
second (one seed advanced one full-batch step), eager and compiled, and the paper MLP eager for scale.

    OMP_NUM_THREADS=2 python examples/transformer_speed.py [seconds per measurement, default 15]
"""

from __future__ import annotations

import sys
import time

import torch

from gnorm.builtins.architectures import MLP, MLPConfig, Transformer, TransformerConfig
from gnorm.builtins.tasks import ModularConfig, ModularTask
from gnorm.config import OptimizerConfig
from gnorm.engine import BatchedAdamW, Ensemble, deterministic_algorithms

SEEDS, P = 16, 59


def ensemble_of(architecture: str, compile: bool) -> Ensemble:
    task = ModularTask(ModularConfig(p=P, train_fraction=0.4), torch.add)
    modules = []
    for seed in range(SEEDS):
        torch.manual_seed(seed)
        modules.append(Transformer(TransformerConfig(), task) if architecture == "transformer"
                       else MLP(MLPConfig(), task))
    return Ensemble(modules, [task.split(seed) for seed in range(SEEDS)], torch.device("cpu"), torch.float32, compile)


def member_steps_per_second(architecture: str, compile: bool, seconds: float) -> tuple[float, float]:
    """(member-steps per second after warm-up, seconds the first step took, compiling included)."""
    ensemble = ensemble_of(architecture, compile)
    optimizer = BatchedAdamW(ensemble.parameters, [n in ensemble.norm_names for n in ensemble.params],
                             OptimizerConfig(lr=1e-3, weight_decay=1.0))
    started = time.perf_counter()
    for _ in range(2):  # the first calls compile (with dynamic shapes, twice at most)
        optimizer.step(ensemble.parameters, ensemble.gradients())
    first = time.perf_counter() - started
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        optimizer.step(ensemble.parameters, ensemble.gradients())
        steps += 1
    assert not compile or ensemble.is_compiled, "torch.compile fell back to eager"
    return SEEDS * steps / (time.perf_counter() - started), first


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 15.0
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, p = {P}, {SEEDS} seeds")
    with deterministic_algorithms():
        for architecture, compile in (("mlp", False), ("transformer", False), ("transformer", True)):
            rate, first = member_steps_per_second(architecture, compile, seconds)
            mode = "compiled" if compile else "eager"
            print(f"{architecture:12s} {mode:8s} {rate:7.1f} member-steps/s  (first two steps {first:.1f} s)")


if __name__ == "__main__":
    main()
