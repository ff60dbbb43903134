"""The benchmark behind ``gnorm bench``: gnorm's engine against two reference trainers written the way
users write them, timed in the same process on the same workload, reported as ratios.

W1: the paper's MLP at p = 59, training fraction 0.4, 16 seeds, AdamW lr 1e-3 with weight decay 1,
clamp from step 500 at a fixed held norm, 2000 steps, evaluation on a 360-point geometric grid.
Reference (a): one torch module and torch.optim.AdamW per seed, seeds one after another.
Reference (b): all seeds in one tensor, einsum forward, hand-written AdamW (the papers' own style).
W2: a full cell at rho = 0.85 to completion, gnorm vs reference (b) from the same weights and splits:
per-seed T_grok must agree within one step of the geometric grid.
"""

from __future__ import annotations

import concurrent.futures
import math
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import attrs
import numpy as np
import torch
import torch.nn.functional as F

from gnorm.components import Table
from gnorm.loader import load_experiment
from gnorm.registry import Registry, default_registry
from gnorm.science import first_crossing
from gnorm.training.build import build_ensemble, train_cell
from gnorm.training.jobs import CellJob, evaluation_steps
from gnorm.training.numerics import deterministic_algorithms
from gnorm.worker import keep_freed_memory

CRITICAL_NORM = 54.8  # paper A's Wc at p = 59, training fraction 0.4

WORKLOAD = """
[experiment]
name = "bench"
seeds = {seeds}
[task]
name = "modular_addition"
p = {p}
train_fraction = 0.4
[architecture]
name = "mlp"
[optimizer]
lr = 1e-3
weight_decay = 1.0
[training]
max_steps = {steps}
device = "{device}"
compile = "{compile}"
matmul_precision = "{matmul_precision}"
[evaluation]
schedule = "geometric"
points = 360
stop_when_grokked = {stop}
[[stage]]
name = "clamp"
critical_norm = {critical_norm}
controller = {{ name = "clamp", rho = {rho}, t_start = 500 }}
"""


def workload_file(directory: str, seeds: int, steps: int, rho: float, stop: bool, p: int = 59,
                  compile: str = "auto", matmul_precision: str = "full", device: str = "cpu") -> Path:
    """The benchmark's experiment file, written into ``directory``."""
    path = Path(directory) / "bench.toml"
    path.write_text(WORKLOAD.format(seeds=seeds, p=p, steps=steps, rho=rho, stop=str(stop).lower(),
                                    critical_norm=CRITICAL_NORM, compile=compile, matmul_precision=matmul_precision,
                                    device=device))
    return path


def workload_job(registry: Registry, seeds: int, steps: int, rho: float, stop: bool, p: int = 59,
                 compile: str = "auto", matmul_precision: str = "full", device: str = "cpu") -> CellJob:
    """The benchmark cell, built through the same experiment-file path users take."""
    with tempfile.TemporaryDirectory() as directory:
        path = workload_file(directory, seeds, steps, rho, stop, p, compile, matmul_precision, device)
        experiment = load_experiment(path, registry)
    return CellJob(experiment.runs, CRITICAL_NORM)


def paper_model_flops(n_train: int, p: int, embed_dim: int = 128, hidden: int = 256) -> float:
    """FLOPs of one training step of the paper's MLP as written (concatenate, then two matmuls):
    forward 2 n (2d H + H p), backward twice that, so 6 n (2d H + H p)."""
    return 6.0 * n_train * (2 * embed_dim * hidden + hidden * p)


def gnorm_model_flops(n_train: int, p: int, embed_dim: int = 128, hidden: int = 256) -> float:
    """FLOPs of one training step of the same MLP as gnorm computes it (the vocabulary tables E W1_l,
    then gathered rows): forward 2 x 2 p d H (two tables) + 2 n H p (readout); backward 2 x 4 p d H
    (each table's gradient into E and W1_l) + 4 n H p; so 12 p d H + 6 n H p. Gathers and
    scatter-adds are not counted (no multiplications)."""
    return 12.0 * p * embed_dim * hidden + 6.0 * n_train * hidden * p


def matmul_peak_gflops(size: int = 2048, repeats: int = 5) -> float:
    """Achieved float32 GFLOP/s of a size x size matmul (2 size^3 FLOPs), best of ``repeats``."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


# ---------------------------------------------------------------------------------------------------
# The reference trainers. Both start from gnorm's initial weights and splits, evaluate on the same
# schedule and clamp the same way, so that they differ from gnorm only in how they compute.


@attrs.frozen
class Start:
    """Initial weights (per seed: embedding, w_in, b_in, w_out, b_out) and splits of a cell."""

    weights: list[dict[str, torch.Tensor]]
    splits: list[Any]
    eval_steps: np.ndarray
    eval_set: frozenset[int]
    steps: int
    held_norm: float
    lr: float = 1e-3
    weight_decay: float = 1.0
    t_start: int = 500


def start_of(job: CellJob, registry: Registry) -> Start:
    ensemble, task = build_ensemble(job, registry)
    weights = [{name: tensor[i].detach().cpu().clone() for name, tensor in ensemble.params.items()}
               for i in range(ensemble.size)]
    splits = [task.split(run.split_seed) for run in job.runs]
    run = job.runs[0]
    schedule = evaluation_steps(run)
    return Start(weights, splits, schedule, frozenset(schedule.tolist()), run.training.max_steps,
                 run.controller.config.rho * job.critical_norm)


class PaperMLP(torch.nn.Module):
    """The paper's MLP written plainly: embed both tokens, concatenate, GELU hidden layer, readout."""

    def __init__(self, weights: dict[str, torch.Tensor]):
        super().__init__()
        self.embedding = torch.nn.Parameter(weights["embedding"].clone())
        self.w_in = torch.nn.Parameter(weights["w_in"].clone())
        self.b_in = torch.nn.Parameter(weights["b_in"].clone())
        self.w_out = torch.nn.Parameter(weights["w_out"].clone())
        self.b_out = torch.nn.Parameter(weights["b_out"].clone())

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        x = self.embedding[pairs].flatten(1)
        return F.gelu(x @ self.w_in + self.b_in) @ self.w_out + self.b_out


@attrs.frozen
class Outcome:
    """Per seed: T_mem and T_grok (None if not reached) and the train and test loss at the last
    evaluation."""

    t_mem: list[int | None]
    t_grok: list[int | None]
    last_train_loss: list[float]
    last_test_loss: list[float]


def reference_per_seed(start: Start, seeds: int) -> Outcome:
    """Reference (a): one module and torch.optim.AdamW per seed, seeds one after another. Like gnorm
    (and like any runner that reports T_mem), it evaluates the training and the test set."""
    t_mem, t_grok, last_train, last_test = [], [], [], []
    for weights, split in list(zip(start.weights, start.splits))[:seeds]:
        model = PaperMLP(weights)
        decayed = [model.embedding, model.w_in, model.w_out]
        optimizer = torch.optim.AdamW([{"params": decayed, "weight_decay": start.weight_decay},
                                       {"params": [model.b_in, model.b_out], "weight_decay": 0.0}], lr=start.lr)
        x, y = split.inputs[split.train_index], split.labels[split.train_index]
        test_x, test_y = split.inputs[split.test_index], split.labels[split.test_index]
        steps, train_accuracy, test_accuracy = [], [], []
        for step in range(1, start.steps + 1):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step >= start.t_start:
                with torch.no_grad():
                    scale = start.held_norm / torch.sqrt(sum(p.pow(2).sum() for p in decayed))
                    for p in decayed:
                        p.mul_(scale)
            if step in start.eval_set:
                with torch.no_grad():
                    train_logits, test_logits = model(x), model(test_x)
                    steps.append(step)
                    train_loss = F.cross_entropy(train_logits, y).item()
                    train_accuracy.append((train_logits.argmax(-1) == y).float().mean().item())
                    test_loss = F.cross_entropy(test_logits, test_y).item()
                    test_accuracy.append((test_logits.argmax(-1) == test_y).float().mean().item())
        t_mem.append(first_crossing(np.array(steps), np.array(train_accuracy), 0.99))
        t_grok.append(first_crossing(np.array(steps), np.array(test_accuracy), 0.9))
        last_train.append(train_loss)
        last_test.append(test_loss)
    return Outcome(t_mem, t_grok, last_train, last_test)


def reference_batched(start: Start, stop_when_grokked: bool = False) -> Outcome:
    """Reference (b): all seeds in one tensor, einsum forward, hand-written AdamW."""
    E = torch.stack([w["embedding"] for w in start.weights]).requires_grad_()
    W1 = torch.stack([w["w_in"] for w in start.weights]).requires_grad_()
    b1 = torch.stack([w["b_in"] for w in start.weights]).requires_grad_()
    W2 = torch.stack([w["w_out"] for w in start.weights]).requires_grad_()
    b2 = torch.stack([w["b_out"] for w in start.weights]).requires_grad_()
    params, decay = [E, W1, b1, W2, b2], [True, True, False, True, False]
    m1 = [torch.zeros_like(p) for p in params]
    m2 = [torch.zeros_like(p) for p in params]
    seeds = len(start.weights)
    member = torch.arange(seeds).unsqueeze(1)
    train_x = torch.stack([s.inputs[s.train_index] for s in start.splits])
    train_y = torch.stack([s.labels[s.train_index] for s in start.splits])
    test_x = torch.stack([s.inputs[s.test_index] for s in start.splits])
    test_y = torch.stack([s.labels[s.test_index] for s in start.splits])

    def forward(pairs: torch.Tensor) -> torch.Tensor:
        x = torch.cat([E[member, pairs[..., 0]], E[member, pairs[..., 1]]], dim=-1)
        h = F.gelu(torch.einsum("snk,skh->snh", x, W1) + b1[:, None])
        return torch.einsum("snh,shc->snc", h, W2) + b2[:, None]

    t_mem: list[int | None] = [None] * seeds
    t_grok: list[int | None] = [None] * seeds
    train_loss = test_loss = torch.zeros(seeds)
    for step in range(1, start.steps + 1):
        logits = forward(train_x)
        loss = F.cross_entropy(logits.flatten(0, 1), train_y.flatten()) * seeds
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g, m, v, decayed in zip(params, grads, m1, m2, decay):
                if decayed:
                    p.mul_(1 - start.lr * start.weight_decay)
                m.mul_(0.9).add_(g, alpha=0.1)
                v.mul_(0.999).addcmul_(g, g, value=0.001)
                m_hat = m / (1 - 0.9**step)
                v_hat = v / (1 - 0.999**step)
                p.sub_(start.lr * m_hat / (v_hat.sqrt() + 1e-8))
            if step >= start.t_start:
                norm = torch.sqrt(E.pow(2).sum((1, 2)) + W1.pow(2).sum((1, 2)) + W2.pow(2).sum((1, 2)))
                for p in (E, W1, W2):
                    p.mul_((start.held_norm / norm).view(-1, 1, 1))
            if step in start.eval_set:
                train_logits, test_logits = forward(train_x), forward(test_x)
                train_loss = F.cross_entropy(train_logits.transpose(1, 2), train_y, reduction="none").mean(1)
                train_accuracy = (train_logits.argmax(-1) == train_y).float().mean(1)
                test_loss = F.cross_entropy(test_logits.transpose(1, 2), test_y, reduction="none").mean(1)
                test_accuracy = (test_logits.argmax(-1) == test_y).float().mean(1)
                for seed in range(seeds):
                    if t_mem[seed] is None and train_accuracy[seed] >= 0.99:
                        t_mem[seed] = step
                    if t_grok[seed] is None and test_accuracy[seed] >= 0.9:
                        t_grok[seed] = step
                if stop_when_grokked and all(t is not None for t in t_grok):
                    break
    return Outcome(t_mem, t_grok, train_loss.tolist(), test_loss.tolist())


def gnorm_engine(job: CellJob, registry: Registry) -> Outcome:
    logs = {}
    train_cell(job, registry, lambda record, log: logs.__setitem__(record.seed, (record, log)))
    ordered = [logs[run.seed] for run in job.runs]
    return Outcome([record.t_mem for record, _ in ordered], [record.t_grok for record, _ in ordered],
                   [log.metrics["train_loss"][-1] for _, log in ordered],
                   [log.metrics["test_loss"][-1] for _, log in ordered])


def _timed(function: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


@attrs.frozen
class Row:
    """One timed trainer; ``counted``: whether the targets may use it (False for opt-in lower precision)."""

    trainer: str
    model_steps: int
    seconds: float
    counted: bool = True

    @property
    def rate(self) -> float:
        return self.model_steps / self.seconds


def gnorm_run_local(registry: Registry, seeds: int, steps: int, workers: int, compile: str = "auto",
                    matmul_precision: str = "full") -> None:
    """W1 as ``gnorm run`` trains it: the study coordinator with the ``local`` executor (``workers``
    processes with one torch thread each; the lone cell's seeds are split over them), worker start-up,
    compiling and storing included."""
    import io

    from gnorm.builtins.executors import LocalConfig
    from gnorm.executor_table import ExecutorChoice
    from gnorm.progress import Progress
    from gnorm.scheduler import run_experiment
    from gnorm.store import Store

    with tempfile.TemporaryDirectory() as directory:
        path = workload_file(directory, seeds, steps, rho=1.0, stop=False, compile=compile,
                             matmul_precision=matmul_precision)
        experiment = load_experiment(path, registry)
        store = Store(Path(directory) / "out", create=True)
        try:
            problems = run_experiment(experiment, registry, store, Progress(io.StringIO()),
                                      ExecutorChoice("local", LocalConfig(workers=workers), threads=1))
        finally:
            store.close()
        if problems:  # a failed run's short time is not a speed
            raise RuntimeError(f"W1 through gnorm run did not finish: {problems[0]}")


def warm_compile_cache(registry: Registry, seeds: int, workers: int) -> float:
    """Train W1's cell for a few steps with compiling on, the way each timed gnorm row will, and return
    the seconds it took. torch.compile keeps the code it generates in an on-disk cache, so the timed
    rows then start from it, as every cell of a study does once the first cell of its shape has
    compiled; from a cold cache, this function's time is what compiling W1 costs."""
    def both() -> None:
        with deterministic_algorithms():
            gnorm_engine(workload_job(registry, seeds, 20, rho=1.0, stop=False, compile="on"), registry)
        if workers > 1:
            gnorm_run_local(registry, seeds, 20, workers, compile="on")
    return _timed(both)[1]


def time_reference(which: str, seeds: int, steps: int, reference_a_seeds: int, threads: int) -> float:
    """Seconds reference ``which`` ("a" or "b") takes to train W1 in this process, with ``threads``
    torch threads (the reference trains ``reference_a_seeds`` of the cell's seeds for (a), all for (b)).
    W1 uses built-in components only, so the default registry builds the same weights and splits as
    the bench's own."""
    torch.set_num_threads(threads)
    registry = default_registry()
    start = start_of(workload_job(registry, seeds, steps, rho=1.0, stop=False), registry)
    train = {"a": lambda: reference_per_seed(start, reference_a_seeds), "b": lambda: reference_batched(start)}[which]
    with deterministic_algorithms():
        return _timed(train)[1]


def reference_seconds(which: str, seeds: int, steps: int, reference_a_seeds: int) -> float:
    """``time_reference`` in a fresh process: it then runs with the C library's default allocator, as
    users run it, whatever this process's allocator keeps (``keep_freed_memory`` is process-wide and
    cannot be undone), and with this process's torch thread count."""
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(time_reference, which, seeds, steps, reference_a_seeds, torch.get_num_threads()).result()


@attrs.frozen
class Trainer:
    """A row to time: its label, the model-steps it trains, a function that trains them and returns the
    seconds that took, and whether the targets may use it."""

    name: str
    model_steps: int
    seconds: Callable[[], float]
    counted: bool = True


def timed_rounds(trainers: Sequence[Trainer], repeats: int, echo: Callable[[str], None]) -> list[list[Row]]:
    """``repeats`` rounds of timing every trainer once, every other round in the reverse order (so that
    a machine slowing down or speeding up over the run favours no trainer); each round's rows come in
    the order of ``trainers``."""
    rounds = []
    for number in range(repeats):
        seconds = {}
        for trainer in trainers if number % 2 == 0 else trainers[::-1]:
            seconds[trainer.name] = trainer.seconds()
            echo(f"  {f'round {number + 1}: ' if repeats > 1 else ''}{trainer.name}: {seconds[trainer.name]:.1f}s")
        rounds.append([Row(t.name, t.model_steps, seconds[t.name], t.counted) for t in trainers])
    return rounds


def bench_w1(registry: Registry, steps: int, seeds: int, reference_a_seeds: int,
             echo: Callable[[str], None], workers: int = 0, bfloat16: bool = False,
             repeats: int = 1) -> list[list[Row]]:
    """``repeats`` rounds (see ``timed_rounds``) of: the two reference trainers (each in a fresh process,
    see ``reference_seconds``), gnorm's engine in this process (torch's default threads), then, with
    ``workers`` > 1, W1 as ``gnorm run`` trains it on that many worker processes, and with ``bfloat16``
    the same again with ``matmul_precision = "bfloat16"`` (opt-in; labelled as such). gnorm's rows run
    as gnorm trains, with ``keep_freed_memory``, and start from a warm compile cache (see
    ``warm_compile_cache``)."""
    keep_freed_memory()
    job = workload_job(registry, seeds, steps, rho=1.0, stop=False)
    if build_ensemble(job, registry)[0].compiled:
        echo(f"  warm-up, compiling W1's graphs into torch's on-disk cache (untimed): "
             f"{warm_compile_cache(registry, seeds, workers):.1f}s")

    def timed_here(train: Callable[[], Any]) -> Callable[[], float]:
        def seconds() -> float:
            with deterministic_algorithms():
                return _timed(train)[1]
        return seconds

    def in_bfloat16() -> None:  # the way the last float32 gnorm row trains
        if workers > 1:
            gnorm_run_local(registry, seeds, steps, workers, matmul_precision="bfloat16")
        else:
            gnorm_engine(workload_job(registry, seeds, steps, rho=1.0, stop=False, matmul_precision="bfloat16"),
                         registry)

    engine = f"gnorm engine, one process ({torch.get_num_threads()} threads)"
    local = f"gnorm run, local executor ({workers} workers x 1 thread)"
    trainers = [Trainer("reference (b): seed-batched einsum, hand AdamW", seeds * steps,
                        lambda: reference_seconds("b", seeds, steps, reference_a_seeds)),
                Trainer(f"reference (a): module + torch AdamW per seed ({reference_a_seeds} seeds)",
                        reference_a_seeds * steps, lambda: reference_seconds("a", seeds, steps, reference_a_seeds)),
                Trainer(engine, seeds * steps, timed_here(lambda: gnorm_engine(job, registry)))]
    if workers > 1:
        trainers.append(Trainer(local, seeds * steps,
                                timed_here(lambda: gnorm_run_local(registry, seeds, steps, workers))))
    if bfloat16:
        trainers.append(Trainer(f"{local if workers > 1 else engine}, bfloat16 matmuls (opt-in)", seeds * steps,
                                timed_here(in_bfloat16), counted=False))
    return timed_rounds(trainers, repeats, echo)


def fastest_counted_gnorm(rows: list[Row]) -> float:
    """The faster float32 way gnorm trained W1 in one round (model-steps/s): the targets compare like
    with like."""
    return max(row.rate for row in rows if row.trainer.startswith("gnorm") and row.counted)


def reference_rate(which: str) -> Callable[[list[Row]], float]:
    """The rate of reference trainer ``which`` ("a" or "b") in a round's rows."""
    return lambda rows: next(row.rate for row in rows if row.trainer.startswith(f"reference ({which})"))


def row_rate(position: int) -> Callable[[list[Row]], float]:
    """The rate of the row at ``position`` in a round's rows."""
    return lambda rows: rows[position].rate


def speed_ups(rounds: list[list[Row]], over: Callable[[list[Row]], float],
              of: Callable[[list[Row]], float] = fastest_counted_gnorm) -> list[float]:
    """Per round: the rate ``of`` picks over the rate ``over`` picks, both timed in that round."""
    return [of(rows) / over(rows) for rows in rounds]


def w1_report(rounds: list[list[Row]], peak_gflops: float, p: int = 59,
              train_fraction: float = 0.4) -> tuple[Table, list[str]]:
    """W1's table (per trainer: the median rate over the rounds, with its range when there are several,
    the median of the per-round ratios of the fastest counted gnorm row to it, and the GFLOP/s its
    median rate achieves in the FLOPs that trainer computes, against ``peak_gflops``) and the lines
    that follow it: each target's median ratio, per-round ratios and verdict, then, for rows not
    counted, their median ratios to the references."""
    repeats = len(rounds)
    n_train = round(train_fraction * p * p)
    paper_flops, gnorm_flops = paper_model_flops(n_train, p), gnorm_model_flops(n_train, p)
    median = statistics.median

    def achieved(trainer: str, rate: float) -> float:  # GFLOP/s of the FLOPs the trainer itself computes
        return rate * (gnorm_flops if trainer.startswith("gnorm") else paper_flops) / 1e9

    table_rows = []
    for position, row in enumerate(rounds[0]):
        rates = [rows[position].rate for rows in rounds]
        rate = median(rates)
        spread = [f"{min(rates):.0f}-{max(rates):.0f}"] if repeats > 1 else []
        table_rows.append([row.trainer, rate, *spread, median(speed_ups(rounds, row_rate(position))),
                           achieved(row.trainer, rate), 100 * achieved(row.trainer, rate) / peak_gflops])
    rate_header = ["model-steps/s"] if repeats == 1 else [f"model-steps/s (median of {repeats} rounds)", "range"]
    table = Table(f"W1 (matmul peak measured in this run: {peak_gflops:.1f} GFLOP/s; one step is "
                  f"{paper_flops / 1e6:.0f} MFLOP as the references compute it, {gnorm_flops / 1e6:.0f} MFLOP as "
                  "gnorm does)", ["trainer", *rate_header, "fastest float32 gnorm's speed-up", "achieved GFLOP/s",
                                  "% of peak"], table_rows)
    lines = []
    for which, target in (("b", 3), ("a", 5)):
        ratios = speed_ups(rounds, reference_rate(which))
        ratio = median(ratios)
        per_round = (f" (median of {repeats} rounds: {', '.join(f'{r:.2f}x' for r in ratios)}; met in "
                     f"{sum(r >= target for r in ratios)} of {repeats})") if repeats > 1 else ""
        lines.append(f"target W1 >= {target}x reference ({which}): {ratio:.2f}x{per_round} "
                     f"{'met' if ratio >= target else 'NOT met'}")
    lines.append("(each reference ran in a fresh process, with the C library's default allocator, as users run "
                 "them; gnorm's rows as gnorm trains, with freed memory kept for reuse"
                 f"{'; every other round in the reverse order' if repeats > 1 else ''})")
    for position, row in enumerate(rounds[0]):
        if not row.counted:
            over = {which: median(speed_ups(rounds, reference_rate(which), row_rate(position))) for which in "ba"}
            lines.append(f"opt-in bfloat16 matmuls: {over['b']:.2f}x reference (b), {over['a']:.2f}x reference "
                         "(a) (not the targets: the references compute in float32)")
    return table, lines


def bench_w2(registry: Registry, seeds: int, steps: int, matmul_precision: str = "full",
             device: str = "cpu") -> tuple[Outcome, Outcome, np.ndarray]:
    """W2 with gnorm computing its matmuls as ``matmul_precision`` says, on ``device``; reference (b) in
    float32 on the CPU."""
    job = workload_job(registry, seeds, steps, rho=0.85, stop=True, matmul_precision=matmul_precision,
                       device=device)
    start = start_of(job, registry)  # neither the precision nor the device changes the weights or the splits
    with deterministic_algorithms():
        ours = gnorm_engine(job, registry)
        theirs = reference_batched(start, stop_when_grokked=True)
    return ours, theirs, start.eval_steps


def grid_agreement(ours: list[int | None], theirs: list[int | None], grid: np.ndarray) -> list[bool]:
    """Per seed: do the two T_grok lie within one step of the evaluation grid of each other (or are
    both censored)?"""
    position = {int(step): i for i, step in enumerate(grid)}
    return [(a is None and b is None) or (a is not None and b is not None and abs(position[a] - position[b]) <= 1)
            for a, b in zip(ours, theirs)]


def peak_memory_mib(p: int, seeds: int, steps: int = 20) -> float:
    """Peak resident memory of a fresh process training ``seeds`` seeds at modulus ``p`` for ``steps``."""
    code = ("import resource, gnorm_bench.bench as b; from gnorm.registry import default_registry as r; "
            "b.keep_freed_memory(); "
            f"b.gnorm_engine(b.workload_job(r(), {seeds}, {steps}, 1.0, False, p={p}), r()); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(output.stdout.strip().splitlines()[-1]) / 1024
