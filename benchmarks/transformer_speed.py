"""Training speed of the attention model on a W1-like cell: p = 59, training fraction 0.4, 16 seeds,
AdamW lr 1e-3, weight decay 1, the papers' sizes (d = 128, 4 heads, MLP 512). Prints member-steps per
second (one seed advanced one full-batch step), eager and compiled, with the paper MLP eager for scale.

The three are timed in interleaved rounds, so that load from other processes falls on all of them;
the best round is the closest to the machine's speed, the median says how noisy it was.

    OMP_NUM_THREADS=2 python benchmarks/transformer_speed.py [rounds, default 5] [seconds a round, default 4]
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from gnorm.builtins.architectures import MLP, MLPConfig, Transformer, TransformerConfig
from gnorm.builtins.tasks import ModularConfig, ModularTask
from gnorm.builtins.optimizers import AdamWConfig as OptimizerConfig
from gnorm.training.ensemble import Ensemble
from gnorm.training.numerics import deterministic_algorithms
from gnorm.training.optimizer import BatchedAdamW

SEEDS, P = 16, 59


class Trainer:
    """One W1-like ensemble and its optimizer."""

    def __init__(self, architecture: str, compile: bool):
        task = ModularTask(ModularConfig(p=P, train_fraction=0.4), torch.add)
        modules = []
        for seed in range(SEEDS):
            torch.manual_seed(seed)
            modules.append(Transformer(TransformerConfig(), task) if architecture == "transformer"
                           else MLP(MLPConfig(), task))
        self.name = f"{architecture} {'compiled' if compile else 'eager'}"
        self.ensemble = Ensemble(modules, [task.split(seed) for seed in range(SEEDS)], torch.device("cpu"),
                                 torch.float32, compile)
        self.optimizer = BatchedAdamW(self.ensemble.parameters,
                                      [n in self.ensemble.norm_names for n in self.ensemble.params],
                                      OptimizerConfig(lr=1e-3, weight_decay=1.0))
        self.rates: list[float] = []
        started = time.perf_counter()
        for _ in range(2):  # the first calls compile (with dynamic shapes, twice at most)
            self.step()
        self.warmup_seconds = time.perf_counter() - started
        assert not compile or self.ensemble.is_compiled, "torch.compile fell back to eager"

    def step(self) -> None:
        self.optimizer.step(self.ensemble.parameters, self.ensemble.gradients())

    def round(self, seconds: float) -> None:
        """Train for ``seconds``; record member-steps per second."""
        steps, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            self.step()
            steps += 1
        self.rates.append(SEEDS * steps / (time.perf_counter() - started))


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 4.0
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, p = {P}, {SEEDS} seeds")
    with deterministic_algorithms():
        trainers = [Trainer("mlp", False), Trainer("transformer", False), Trainer("transformer", True)]
        for _ in range(rounds):
            for trainer in trainers:
                trainer.round(seconds)
    for trainer in trainers:
        print(f"{trainer.name:22s} best {max(trainer.rates):6.1f}  median {statistics.median(trainer.rates):6.1f} "
              f"member-steps/s  (first two steps {trainer.warmup_seconds:.1f} s)")


if __name__ == "__main__":
    main()
