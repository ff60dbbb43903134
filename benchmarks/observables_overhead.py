"""What each built-in observable adds to an evaluation on the W1 workload (gnorm bench's: the papers'
MLP at p = 59, training fraction 0.4, 16 seeds).

The ensemble is first trained for ``--warmup`` steps (so the weights are not the initialization).
Then, each the median of ``--repeats`` timings: a training step, an evaluation without observables,
each observable alone on the chunks (logits included) that one evaluation hands it, and an evaluation
with all of them. Each observable's cost is also given as a share of an evaluation and of a whole W1
run (``--steps`` training steps and ``--evaluations`` evaluations).

    OMP_NUM_THREADS=1 python benchmarks/observables_overhead.py [--device cpu] [--repeats 9]
"""

from __future__ import annotations

import argparse
import statistics
import time

import attrs
import torch

from gnorm_bench.bench import workload_job
from gnorm.components import EvaluationChunk, ObservableContext
from gnorm.registry import build_registry
from gnorm.training.build import build_ensemble
from gnorm.training.numerics import numerics
from gnorm.training.optimizer import BatchedAdamW

OBSERVABLES = ["logit_scale", "softmax_collapse", "fourier", "spectral", "spectral_all"]


def median_seconds(function, repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--evaluations", type=int, default=360)
    args = parser.parse_args()

    registry = build_registry(autoload=False)
    job = workload_job(registry, args.seeds, args.steps, rho=1.0, stop=False)
    runs = [attrs.evolve(run, training=attrs.evolve(run.training, device=args.device, compile="off"))
            for run in job.runs]
    job = attrs.evolve(job, runs=runs)
    with numerics(runs[0].training):  # as train_cell computes: kernels and matmuls for the device
        ensemble, task = build_ensemble(job, registry)
        device = ensemble.labels.device
        optimizer = BatchedAdamW(ensemble.parameters, [n in ensemble.norm_names for n in ensemble.params],
                                 runs[0].optimizer)
        for _ in range(args.warmup):
            optimizer.step(ensemble.parameters, ensemble.gradients())
        context = ObservableContext(dict(ensemble.groups), task.input_spec, task.num_classes)

        def observers(names):
            return [registry.get("observable", n).factory(registry.get("observable", n).config_class(), context)
                    for n in names]

        step = median_seconds(lambda: optimizer.step(ensemble.parameters, ensemble.gradients()), args.repeats, device)
        base = median_seconds(lambda: ensemble.evaluate(), args.repeats, device)
        run_seconds = args.steps * step + args.evaluations * base
        # The chunks one evaluation hands to observers, kept so that each observer is timed on its own.
        views = []
        with torch.no_grad():
            for chunk in ensemble._chunks(ensemble.eval_chunk):
                params = {n: p[chunk] for n, p in ensemble.params.items()}
                _, _, logits = ensemble._losses_and_hits(params, {n: b[chunk] for n, b in ensemble.buffers.items()},
                                                         ensemble.inputs[chunk], ensemble.labels[chunk])
                views.append(EvaluationChunk(logits, ensemble.labels[chunk], ensemble.train_mask[chunk], params))
        print(f"W1: p = 59, {args.seeds} seeds, device {device}, torch threads {torch.get_num_threads()}, "
              f"eval chunk {ensemble.eval_chunk} members")
        print(f"training step {step * 1e3:.1f} ms; evaluation without observables {base * 1e3:.1f} ms; "
              f"W1 run ({args.steps} steps, {args.evaluations} evaluations) ~ {run_seconds:.1f} s")
        print(f"{'observable':<20} {'ms/eval':>8} {'% of an evaluation':>19} {'% of a W1 run':>14}")
        for name in OBSERVABLES:
            [observer] = observers([name])

            def observe_all(observer=observer):
                with torch.no_grad():
                    for view in views:
                        observer.observe(view)
            added = median_seconds(observe_all, args.repeats, device)
            print(f"{name:<20} {added * 1e3:8.1f} {100 * added / base:18.1f}% "
                  f"{100 * args.evaluations * added / run_seconds:13.1f}%")
        everything = observers(OBSERVABLES)
        seconds = median_seconds(lambda: ensemble.evaluate(everything), args.repeats, device)
        print(f"evaluation with all of them: {seconds * 1e3:.1f} ms (without: {base * 1e3:.1f} ms)")

if __name__ == "__main__":
    main()
