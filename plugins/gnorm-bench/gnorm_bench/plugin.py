"""The ``gnorm bench`` command, added to gnorm's command line through the ``gnorm_commands`` hook.

Only click is imported here; torch, gnorm's engine and the benchmark are imported when the command runs.
"""

from __future__ import annotations

import click

import gnorm
from gnorm.cli import reports_user_errors
from gnorm.errors import UserError


@gnorm.hookimpl
def gnorm_commands(cli: click.Group) -> None:
    cli.add_command(bench)


@click.command()
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
def bench(steps: int, seeds: int, reference_a_seeds: int, w2: bool, memory: bool, bfloat16: bool | None,
          repeats: int) -> None:
    """Time gnorm's engine against two reference trainers on W1, in one run, and print the ratios."""
    import torch

    from gnorm.builtins.executors import machine_cores
    from gnorm.components import Table
    from gnorm.registry import default_registry
    from gnorm.tables import format_table
    from gnorm.training.numerics import cpu_computes_bfloat16
    from gnorm_bench import bench as benchmark

    registry = default_registry()  # W1 uses built-in pieces only
    click.echo(f"gnorm bench: torch {torch.__version__}, {torch.get_num_threads()} threads, W1 = p 59, "
               f"{seeds} seeds, {steps} steps, clamp from step 500, geometric evaluation grid", err=True)
    peak = benchmark.matmul_peak_gflops()
    workers = machine_cores()
    if bfloat16 and not cpu_computes_bfloat16():
        raise UserError("--bfloat16: this CPU's oneDNN does not compute in bfloat16 (or oneDNN is off)")
    bfloat16 = cpu_computes_bfloat16() if bfloat16 is None else bfloat16
    rounds = benchmark.bench_w1(registry, steps, seeds, reference_a_seeds, lambda line: click.echo(line, err=True),
                                workers, bfloat16, repeats)
    table, lines = benchmark.w1_report(rounds, peak)
    click.echo(format_table(table))
    for line in lines:
        click.echo(line)
    if memory:
        mib = benchmark.peak_memory_mib(p=113, seeds=16)
        click.echo(f"peak memory, p 113 with 16 seeds: {mib:.0f} MiB ({'under' if mib < 2048 else 'OVER'} 2 GiB)")
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
