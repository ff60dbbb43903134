"""The ``gnorm bench`` command, added to gnorm's command line through the ``gnorm_commands`` hook.

Only click is imported here; torch, gnorm's engine and the benchmark are imported when the command runs.
"""

from __future__ import annotations

from typing import Any, Callable

import click

import gnorm
from gnorm.cli import reports_user_errors
from gnorm.errors import UserError


@gnorm.hookimpl
def gnorm_commands(cli: click.Group) -> None:
    cli.add_command(bench)


#: Issue 18's memory target: p = 113 with 16 seeds under 1 GiB of peak resident memory.
MEMORY_TARGET_MIB = 1024


@click.command()
@click.option("--workload", "workloads", multiple=True, default=("w1", "w3"), show_default=True,
              type=click.Choice(["w1", "w1-process", "w3"]),
              help="What to time (repeatable): w1, gnorm's engine and gnorm run in this process against the two "
                   "reference trainers; w1-process, W1 as whole processes (gnorm run of the W1 file against "
                   "reference (b) as a script); w3, the small exploratory study as whole processes.")
@click.option("--w3-steps", default=2000, show_default=True, type=click.IntRange(min=1),
              help="W3 length in steps (the issue's W3: 2000).")
@click.option("--w3-seeds", default=8, show_default=True, type=click.IntRange(min=1), help="Seeds in the W3 cell.")
@click.option("--steps", default=2000, show_default=True, help="W1 length in steps (the issue's W1: 2000).")
@click.option("--seeds", default=16, show_default=True, help="Seeds in the W1 cell.")
@click.option("--reference-a-seeds", default=4, show_default=True,
              help="Seeds timed for reference (a); it trains seeds one after another, so its rate does not "
                   "depend on how many.")
@click.option("--w2/--no-w2", default=False, show_default=True,
              help="Also run W2: a full rho = 0.85 cell to completion, gnorm vs reference (b), and check "
                   "per-seed T_grok agreement.")
@click.option("--memory/--no-memory", default=True, show_default=True,
              help="Measure peak memory of p = 113 with 16 seeds in a fresh process.")
@click.option("--repeats", default=1, show_default=True, type=click.IntRange(min=1),
              help="Rounds of timing, every other one in the reverse order; the table and the targets use the "
                   "median of the rounds (ratios are taken within a round).")
@click.option("--bfloat16/--no-bfloat16", default=None,
              help="Also time (and with --w2, check) gnorm with matmul_precision = \"bfloat16\": opt-in, lower "
                   "precision, not counted for the targets. Default: when this CPU computes in bfloat16.")
@reports_user_errors
def bench(workloads: tuple[str, ...], w3_steps: int, w3_seeds: int, steps: int, seeds: int, reference_a_seeds: int,
          w2: bool, memory: bool, bfloat16: bool | None, repeats: int) -> None:
    """Time gnorm against reference trainers written without it, on W1 and W3, in one run, and print the
    ratios."""
    import torch

    from gnorm.builtins.executors import machine_cores
    from gnorm.components import Table
    from gnorm.registry import default_registry
    from gnorm.tables import format_table
    from gnorm.training.numerics import cpu_computes_bfloat16
    from gnorm_bench import bench as benchmark

    registry = default_registry()  # W1 uses built-in pieces only
    w1 = (f", W1 = p 59, {seeds} seeds, {steps} steps, clamp from step 500, geometric evaluation grid"
          if "w1" in workloads else "")
    click.echo(f"gnorm bench: torch {torch.__version__}, {torch.get_num_threads()} threads{w1}", err=True)
    workers = machine_cores()
    if bfloat16 and not cpu_computes_bfloat16():
        raise UserError("--bfloat16: this CPU's oneDNN does not compute in bfloat16 (or oneDNN is off)")
    bfloat16 = cpu_computes_bfloat16() if bfloat16 is None else bfloat16
    echo = lambda line: click.echo(line, err=True)  # noqa: E731 - progress lines, kept off stdout
    if "w1" in workloads:
        peak = benchmark.matmul_peak_gflops()
        rounds = benchmark.bench_w1(registry, steps, seeds, reference_a_seeds, echo, workers, bfloat16, repeats)
        table, lines = benchmark.w1_report(rounds, peak)
        click.echo(format_table(table))
        for line in lines:
            click.echo(line)
    _whole_processes(workloads, w3_steps, w3_seeds, steps, seeds, repeats, echo)
    if memory:
        mib = benchmark.peak_memory_mib(p=113, seeds=16)
        verdict = "met" if mib < MEMORY_TARGET_MIB else "NOT met"
        click.echo(f"peak memory, p 113 with 16 seeds: {mib:.0f} MiB (target under {MEMORY_TARGET_MIB} MiB: {verdict})")
    for precision in ("full", "bfloat16") if w2 and bfloat16 else ("full",) if w2 else ():
        ours, theirs, grid = benchmark.bench_w2(registry, seeds, 30_000, precision)
        ours_t, theirs_t = ours.t_grok, theirs.t_grok
        agree = benchmark.grid_agreement(ours_t, theirs_t, grid)
        name, label = ("W2", "gnorm") if precision == "full" else ("W2 with bfloat16 matmuls", "gnorm bfloat16")
        click.echo(format_table(Table(f"{name}: rho 0.85 cell, per-seed T_grok",
                                      ["seed", label, "reference (b)", "agree"],
                                      [[i, a, b, ok] for i, (a, b, ok) in enumerate(zip(ours_t, theirs_t, agree))])))
        target = "target >= 15/16" if precision == "full" else "not a target: precision changes the science"
        click.echo(f"{name}: {sum(agree)}/{len(agree)} seeds agree within one grid step ({target})")


def _whole_processes(workloads: tuple[str, ...], w3_steps: int, w3_seeds: int, steps: int, seeds: int,
                     repeats: int, echo: Callable[[str], None]) -> None:
    """The whole-process workloads asked for: W1 (``w1-process``) and W3, each a table and its target."""
    from gnorm.tables import format_table
    from gnorm_bench import whole_process
    from gnorm_bench.bench import timed_rounds

    if "w1-process" in workloads:
        echo(f"W1 as whole processes: gnorm run of the W1 file vs python batched_script.py, {seeds} seeds, "
             f"{steps} steps")
        whole_process.warm_up(echo, "W1", whole_process.w1_file_text(seeds, steps))
        rounds = timed_rounds(whole_process.w1_trainers(seeds, steps), repeats, echo)
        _echo_report(*whole_process.whole_process_report("W1", rounds, target=4), format_table)
    if "w3" in workloads:
        study = whole_process.SmallStudy(seeds=w3_seeds, steps=w3_steps)
        echo(f"W3: (a*b) mod {study.p}, d {study.embed_dim}, H {study.hidden_dim}, {study.seeds} seeds, "
             f"{study.steps} full steps, evaluation every {study.every}; whole processes")
        whole_process.warm_up(echo, "W3", study.experiment_text())
        rounds = timed_rounds(whole_process.w3_trainers(study), repeats, echo)
        _echo_report(*whole_process.whole_process_report("W3", rounds, target=4), format_table)


def _echo_report(table: Any, lines: list[str], format_table: Callable[[Any], str]) -> None:
    click.echo(format_table(table))
    for line in lines:
        click.echo(line)
