"""``gnorm plan``: before anything trains, each cell's predicted cost (model-steps from a delay law, wall
time from a short calibration on this machine), the interval width on alpha the design reaches, and
cheaper designs for the same width; ``gnorm plan --replay DIR``: the adaptive policy replayed on a
finished sweep. The logic lives in :mod:`gnorm.budget` and :mod:`gnorm.adaptive`; this module reads
the input and prints."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from gnorm.errors import Problem, UserError

X_KEY = "controller.rho"


def _number(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 3600:
        return f"{value / 3600:.1f} h"
    return f"{value / 60:.1f} min" if value >= 60 else f"{value:.1f} s"


# ---------------------------------------------------------------------------------------------------
# Reading the file and the store.


def cell_x(run: Any) -> float | None:
    """The cell's x: its controller's ``rho`` where it has one, else None (a free cell)."""
    from gnorm.adaptive import cell_x as x_of

    return x_of(run)


def law_from_store(directory: str, option: str = "--from") -> Any:
    """The delay law fitted to the store's runs with a numeric rho (pooled over every stage and group),
    its free T_grok from the runs of free controllers; one line naming ``option`` when none fits."""
    from gnorm.analysis.records import numeric, record_value
    from gnorm.budget import law_from_times
    from gnorm.store import Store

    records = Store(directory, read_only=True).records()
    cells: dict[float, list[int | None]] = {}
    free = []
    for record in records:
        x = record_value(record, X_KEY)
        if numeric(x):
            cells.setdefault(round(float(x), 9), []).append(record.t_grok)
        elif record_value(record, "controller.name") == "free":
            free.append(record.t_grok)
    law = law_from_times(cells, free, source=f"fitted to {directory} ({sum(map(len, cells.values()))} runs at "
                                             f"{len(cells)} values of rho)")
    if law is None:
        raise UserError([Problem(option, directory, "holds no sweep of controller.rho with 2 grokked seeds at 2 "
                                 "or more values: no delay law to plan from")])
    return law


def design_of(experiment: Any) -> list[tuple[str, Any, Any]]:
    """(stage name, CellDesign, first run) for every cell of the experiment, in file order."""
    from gnorm.analysis.records import cell_label
    from gnorm.budget import CellDesign
    from gnorm.runmodel import cells_of

    cells = []
    for stage in experiment.stages:
        for cell in cells_of(stage.runs):
            first = cell[0]
            label = f"[{stage.name}] {cell_label(first.cell)}"
            cells.append((stage.name, CellDesign(cell_x(first), len(cell), first.training.max_steps,
                                                 first.evaluation.stop_when_grokked, label), first))
    return cells


def fit_groups(cells: list[tuple[str, Any, Any]]) -> dict[tuple[str, str], list[Any]]:
    """The swept cells (x not None) of each fit: per stage and per value of the stage's other swept keys
    (``p=59``; the budget, part of the design, is not one), as the ``delay_law`` analyzer groups them."""
    from gnorm.analysis.records import cell_label

    groups: dict[tuple[str, str], list[Any]] = {}
    for stage_name, design, first in cells:
        if design.x is None:
            continue
        others = {k: v for k, v in first.cell.items() if k not in (X_KEY, "training.max_steps")}
        groups.setdefault((stage_name, cell_label(others) if others else ""), []).append(design)
    return groups


def calibrate(cell_runs: list[Any], registry: Any, steps: int) -> float:
    """Wall seconds per model-step of a cell on this machine: its ensemble (all its seeds, on its
    device, compiling off, one torch thread as a local worker trains) built and ``steps`` training
    steps timed after two untimed ones."""
    import attrs
    import torch

    from gnorm.training.build import build_cell
    from gnorm.training.jobs import CellJob
    from gnorm.training.numerics import numerics
    from gnorm.worker import torch_threads

    runs = [attrs.evolve(run, training=attrs.evolve(run.training, compile="off", checkpoint_seconds=0.0))
            for run in cell_runs]
    critical_norm = None if isinstance(runs[0].critical_norm, str) else runs[0].critical_norm
    job = CellJob(runs, critical_norm if critical_norm is not None else 1.0)
    with numerics(runs[0].training), torch_threads(1):
        parts = build_cell(job, registry)
        ensemble = parts.ensemble

        def one(step: int) -> None:
            grads = parts.transforms.update(ensemble.gradients(ensemble.batches.at(step)), ensemble.params)
            parts.optimizer.step(ensemble.parameters, grads)
            with torch.no_grad():
                parts.controller.after_step(step, ensemble.norm_tensors)
        one(1)
        one(2)
        start = time.perf_counter()
        for step in range(3, 3 + steps):
            one(step)
        elapsed = time.perf_counter() - start
    return elapsed / steps / len(runs)


def calibration_key(run: Any) -> str:
    """What a step's cost depends on: the run's configuration without its seed, controller options,
    budget and evaluation (cells that differ only in rho or budget share one calibration)."""
    data = run.plain()
    for key in ("seed", "stage", "critical_norm", "critical_norm_source", "evaluation"):
        data.pop(key, None)
    data["controller"] = {"name": data["controller"]["name"]}
    data["training"] = {k: v for k, v in data["training"].items() if k != "max_steps"}
    return json.dumps(data, sort_keys=True, default=str)


# ---------------------------------------------------------------------------------------------------
# The command.


def _law_for(first_run: Any, prior_cache: dict) -> Any:
    from gnorm.budget import prior_law

    p = getattr(first_run.task.config, "p", None)
    lr = getattr(first_run.optimizer.config, "lr", None)
    key = (first_run.architecture.name, p, lr)
    if key not in prior_cache:
        prior_cache[key] = prior_law(first_run.architecture.name, p if isinstance(p, int) else None,
                                     lr if isinstance(lr, (int, float)) else None)
    return prior_cache[key]


def plan_numbers(experiment: Any, registry: Any, from_dir: str | None, calibration_steps: int,
                 simulations: int) -> dict[str, Any]:
    """Every number ``gnorm plan`` prints, as plain data."""
    import attrs

    from gnorm.budget import analytic_width, design_rows, predicted_width, suggest_designs

    stored_law = law_from_store(from_dir) if from_dir else None
    cells = design_of(experiment)
    priors: dict = {}
    laws = {design.label: (stored_law if stored_law is not None and (design.x is not None or stored_law.free_t_grok)
                           else _law_for(first, priors)) for _, design, first in cells}
    rates: dict[str, float] = {}
    notes: list[str] = []
    if calibration_steps:
        measured: dict[str, float] = {}
        for stage_name, design, first in cells:
            key = calibration_key(first)
            if key not in measured:
                stage = next(s for s in experiment.stages if s.name == stage_name)
                runs = [r for r in stage.runs if r.cell_id == first.cell_id]
                try:
                    measured[key] = calibrate(runs, registry, calibration_steps)
                except Exception as error:  # a cell the calibration cannot build alone: no wall time, said so
                    measured[key] = None
                    notes.append(f"{design.label}: not calibrated ({type(error).__name__}: {error})")
            if measured[key] is not None:
                rates[design.label] = measured[key]
    rows = []
    for _, design, _ in cells:
        law = laws[design.label]
        if design.x is None and law.free_t_grok is None:
            rows.append({"cell": design.label, "x": None, "seeds": design.seeds, "budget": design.budget,
                         "note": "free cell and no free T_grok known: cost at the full budget"})
            rows[-1]["model_steps"] = design.seeds * design.budget
            rate = rates.get(design.label)
            rows[-1]["wall_seconds"] = rows[-1]["model_steps"] * rate if rate is not None else None
            continue
        rows += design_rows(law, [design], rates)
    stages = []
    for (stage_name, group), swept in fit_groups(cells).items():
        if len({d.x for d in swept}) < 3:
            continue
        law = laws[swept[0].label]
        width = predicted_width(law, swept, simulations=simulations)
        suggestions = suggest_designs(law, swept, simulations=simulations, simulated_width=width.median)
        stages.append({"stage": stage_name + (f" {group}" if group else ""), "law": attrs.asdict(law),
                       "analytic_width": analytic_width(law, swept),
                       "predicted_width": attrs.asdict(width),
                       "suggestions": [{"name": s.name, "model_steps": s.model_steps,
                                        "analytic_width": s.analytic_width,
                                        "predicted_width": attrs.asdict(s.simulated) if s.simulated else None,
                                        "cells": [{"x": c.x, "seeds": c.seeds, "budget": c.budget} for c in s.cells]}
                                       for s in suggestions]})
    total_steps = sum(r["model_steps"] for r in rows)
    walls = [r.get("wall_seconds") for r in rows]
    total_wall = sum(walls) if walls and all(w is not None and math.isfinite(w) for w in walls) else None
    return {"experiment": experiment.meta.name, "law_source": "from" if from_dir else "priors",
            "laws": {label: attrs.asdict(law) for label, law in laws.items()}, "cells": rows,
            "model_steps": total_steps, "wall_seconds": total_wall, "calibration_steps": calibration_steps,
            "stages": stages, "notes": notes, "interval": "delay_law bootstrap (seeds resampled within cells)",
            "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None, "cores": os.cpu_count()}


def echo_plan(numbers: dict[str, Any]) -> None:
    """The plan as text."""
    sources = sorted({law["source"] for law in numbers["laws"].values()})
    click.echo(f"plan of {numbers['experiment']}: law " + "; ".join(sources))
    click.echo(f"{'cell':<34} {'seeds':>5} {'budget':>8} {'median T':>9} {'P(grok)':>7} {'model-steps':>12} "
               f"{'wall':>9}")
    for row in numbers["cells"]:
        click.echo(f"{row['cell'][:34]:<34} {row['seeds']:>5} {row['budget']:>8} "
                   f"{_number(row.get('median_t_grok')):>9} {_number(row.get('grok_probability'), 2):>7} "
                   f"{_number(row['model_steps']):>12} {_seconds(row.get('wall_seconds')):>9}")
    click.echo(f"{'total':<34} {'':>5} {'':>8} {'':>9} {'':>7} {_number(numbers['model_steps']):>12} "
               f"{_seconds(numbers['wall_seconds']):>9}")
    if numbers["calibration_steps"]:
        load = numbers["load_average"]
        measured_under = f", load average {load:.1f} on {numbers['cores']} cores" if load is not None else ""
        click.echo(f"wall time: {numbers['calibration_steps']} steps of each cell's ensemble timed here, one torch "
                   f"thread, compiling off{measured_under}; a study's workers share it out")
    for note in numbers["notes"]:
        click.echo(f"note: {note}")
    for stage in numbers["stages"]:
        width = stage["predicted_width"]
        quartiles = width["quartiles"]
        click.echo(f"\n[{stage['stage']}] alpha = {stage['law']['alpha']:.2f}: predicted 95% interval width "
                   f"{_number(width['median'])} (quartiles {_number(quartiles[0])}-{_number(quartiles[1])}, "
                   f"{width['simulations']} simulated studies, {numbers['interval']}; large-sample "
                   f"{_number(stage['analytic_width'])})")
        if not stage["suggestions"]:
            click.echo("  no cheaper design found for the same width")
        for s in stage["suggestions"]:
            simulated = s["predicted_width"]["median"] if s["predicted_width"] else None
            cells = ", ".join(f"{c['x']:g}: {c['seeds']} x {c['budget']}" for c in s["cells"])
            click.echo(f"  cheaper: {s['name']}: {_number(s['model_steps'])} model-steps, width "
                       f"{_number(simulated)} (large-sample {_number(s['analytic_width'])}); rho: seeds x budget "
                       f"{cells}")


def echo_replay(result: Any, sweep_sizes: dict[float, int], orders: list[Any], interval_name: str = "",
                bound: Any = None) -> None:
    """The replay as text: the full sweep, the adaptive policy, and the saving (over random orders too),
    both widths by ``interval_name``; ``bound``: the AFT yardstick (:func:`gnorm.adaptive.aft_design_bound`)."""
    if interval_name:
        click.echo(f"interval (both sides): {interval_name}")
    low, high = result.interval or (math.nan, math.nan)
    full_low, full_high = result.full_interval or (math.nan, math.nan)
    click.echo(f"full sweep: {sum(sweep_sizes.values())} seeds, "
               f"{result.full_model_steps:,} model-steps, alpha 95% interval [{full_low:.3f}, {full_high:.3f}] "
               f"(width {full_high - full_low:.3f})")
    capped = sum(1 for o in result.outcomes if o.budget < result.cell_budgets.get(o.x, o.budget))
    click.echo(f"adaptive:   {sum(result.seeds.values())} seeds, {result.model_steps:,} model-steps, "
               f"interval [{low:.3f}, {high:.3f}] (width {high - low:.3f}), "
               f"{'reached' if result.reached else 'did not reach'} the target; {result.extended} seeds extended"
               + (f", {capped} trained under a budget cap" if capped else ""))
    click.echo("seeds per rho: " + ", ".join(f"{x:g}: {n}" for x, n in sorted(result.seeds.items())))
    click.echo(f"saving: {result.saving:.2f}x fewer model-steps (both stop each seed at its T_grok)")
    if result.budget_steps:
        click.echo(f"had every seed trained its whole budget (paper A's practice): {result.budget_steps:,} vs "
                   f"{result.full_budget_steps:,} model-steps, {result.full_budget_steps / result.budget_steps:.2f}x fewer")
    if orders:
        savings = [o.saving for o in orders]
        reached = sum(o.reached for o in orders)
        click.echo(f"over {len(orders)} random seed orders: saving median {sorted(savings)[len(savings) // 2]:.2f}x "
                   f"(min {min(savings):.2f}x, max {max(savings):.2f}x), target reached in {reached}")
    if bound is not None:
        steps, full_steps, seeds, capped = bound
        click.echo(f"yardstick (AFT law of the whole sweep taken as known, large-sample width): the cheapest design "
                   f"from these seeds needs {steps:,.0f} expected model-steps vs the full sweep's {full_steps:,.0f} "
                   f"({full_steps / steps:.2f}x); seeds per rho "
                   + ", ".join(f"{x:g}: {n}" for x, n in sorted(seeds.items()))
                   + (f"; {capped} capped" if capped else ""))


def _positive(option: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise UserError([Problem(option, "", f"expected a positive number, found {value}")])


@click.command()
@click.argument("experiment_file", required=False, type=click.Path(dir_okay=False))
@click.option("--from", "from_dir", type=click.Path(file_okay=False),
              help="A results directory (gnorm's own or `gnorm import`ed) to fit the law to; default: the papers' "
                   "published fits.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a key of the file.")
@click.option("--json", "json_path", help="Also write every number as JSON to this file ('-': stdout only).")
@click.option("--calibrate", "calibration_steps", type=click.IntRange(0, 1000), default=5, show_default=True,
              help="Training steps timed per distinct cell for the wall time (0: no calibration).")
@click.option("--simulations", type=click.IntRange(2, 2000), default=20, show_default=True,
              help="Simulated studies behind each predicted width.")
@click.option("--replay", "replay_dir", type=click.Path(file_okay=False),
              help="Replay the adaptive policy on this finished sweep instead (no FILE).")
@click.option("--target-width", type=float, help="Replay: the interval width to reach (default: the full sweep's).")
@click.option("--initial-seeds", type=click.IntRange(1, 10_000), default=3, show_default=True,
              help="Replay: seeds every cell starts with.")
@click.option("--extend-factor", type=float, default=2.0, show_default=True,
              help="Replay: how much longer a censored seed may be retrained.")
@click.option("--orders", type=click.IntRange(0, 1000), default=0, show_default=True,
              help="Replay: also replay this many random seed orders.")
@click.option("--stage", "stage", help="Replay: only this stage's runs.")
@click.option("--interval", "interval", type=click.Choice(["bootstrap", "aft"]), default="bootstrap", show_default=True,
              help="Replay: alpha's interval on both sides: the delay_law bootstrap, or the log-normal AFT fit's "
                   "Wald interval (censored seeds count; one effect per seed).")
@click.option("--scale-slope", is_flag=True, help="Replay with --interval aft: ln sigma linear in rho.")
@click.option("--budget-quantile", "budget_quantiles", type=float, multiple=True,
              help="Replay with --interval aft: a new seed's budget may be capped at this quantile of "
                                  "the law's T_grok at its level (repeatable).")
def plan(experiment_file: str | None, from_dir: str | None, overrides: tuple[str, ...], json_path: str | None,
         calibration_steps: int, simulations: int, replay_dir: str | None, target_width: float | None,
         initial_seeds: int, extend_factor: float, orders: int, stage: str | None, interval: str,
         scale_slope: bool, budget_quantiles: tuple[float, ...]) -> None:
    """Predict what EXPERIMENT_FILE costs (model-steps, wall time here) and how precisely it pins alpha,
    before anything trains; suggest cheaper designs for the same width. With --replay DIR, replay the
    adaptive policy on a finished sweep."""
    from gnorm.cli import _load, _output_file, _write_text

    json_file = _output_file("--json", Path(json_path)) if json_path and json_path != "-" else None
    if replay_dir is not None:
        if experiment_file is not None:
            raise UserError([Problem("--replay", "", "replays a finished sweep: give either FILE or --replay DIR")])
        _positive("--target-width", target_width)
        _positive("--extend-factor", extend_factor)
        for quantile in budget_quantiles:
            if not 0 < quantile < 1:
                raise UserError([Problem("--budget-quantile", "",
                                         f"expected a number between 0 and 1, found {quantile}")])
        if (budget_quantiles or scale_slope) and interval != "aft":
            raise UserError([Problem("--budget-quantile" if budget_quantiles else "--scale-slope", "",
                                     "needs --interval aft (a fit that reads censored seeds)")])
        numbers = replay_numbers(replay_dir, target_width, initial_seeds, extend_factor, orders, stage,
                                 quiet=json_path == "-", interval=interval, scale_slope=scale_slope,
                                 budget_quantiles=list(budget_quantiles))
    else:
        if experiment_file is None:
            raise UserError([Problem("gnorm plan", "FILE", "missing: name an experiment file (or --replay DIR)")])
        if from_dir is not None:
            law_from_store(from_dir)  # a bad --from is refused before anything is built
        experiment, registry = _load(experiment_file, overrides)
        numbers = plan_numbers(experiment, registry, from_dir, calibration_steps, simulations)
        if json_path != "-":
            echo_plan(numbers)
    text = json.dumps(numbers, indent=1, default=str)
    if json_path == "-":
        sys.stdout.write(text + "\n")
    elif json_file is not None:
        _write_text("--json", json_file, text)


def replay_numbers(directory: str, target_width: float | None, initial_seeds: int, extend_factor: float,
                   orders: int, stage: str | None, quiet: bool, interval: str = "bootstrap", scale_slope: bool = False,
                   budget_quantiles: list[float] | None = None) -> dict[str, Any]:
    """Replay the adaptive policy on DIRECTORY's rho sweep; print unless ``quiet``; the numbers."""
    import attrs
    import numpy as np

    from gnorm.adaptive import AdaptivePolicy, aft_design_bound, policy_interval, replay, sweep_from_records
    from gnorm.store import Store

    from gnorm.analysis.records import numeric, record_value, varying_keys

    records = Store(directory, read_only=True).records()
    sweep = sweep_from_records(records, X_KEY, stage)
    swept = [r for r in records if numeric(record_value(r, X_KEY)) and (stage is None or r.stage == stage)]
    pooled = varying_keys(swept, exclude=[X_KEY])
    notes = ([f"the replay pools runs that differ in {', '.join(pooled)} at each rho; name one stage with --stage"]
             if pooled else [])
    if len(sweep) < 3:
        raise UserError([Problem("--replay", directory, f"holds {len(sweep)} values of controller.rho"
                                 + (f" in stage {stage!r}" if stage else "") + "; a replay needs 3 or more")])
    policy = AdaptivePolicy(target_width, None, extend_factor, initial_seeds, interval=interval,
                            scale_slope=scale_slope, budget_quantiles=budget_quantiles or [])
    interval_function = policy_interval(policy)
    interval_name = (interval_function.describe() if interval == "aft"
                     else "delay_law bootstrap (seeds resampled within cells, 2000 resamples)")
    result = replay(sweep, policy)
    bound = aft_design_bound(sweep, policy) if interval == "aft" else None
    rng = np.random.default_rng(0)
    others = [replay(sweep, policy, order={x: list(rng.permutation(len(s))) for x, s in sweep.items()})
              for _ in range(orders)]
    if not quiet:
        for note in notes:
            click.echo(f"note: {note}")
        echo_replay(result, {x: len(s) for x, s in sweep.items()}, others, interval_name, bound)
    return {"directory": directory, "policy": attrs.asdict(policy), "model_steps": result.model_steps,
            "budget_steps": result.budget_steps, "full_budget_steps": result.full_budget_steps,
            "full_model_steps": result.full_model_steps, "saving": result.saving, "interval": result.interval,
            "full_interval": result.full_interval, "reached": result.reached,
            "seeds": {str(x): n for x, n in result.seeds.items()}, "extended": result.extended,
            "orders": [{"saving": o.saving, "reached": o.reached, "model_steps": o.model_steps} for o in others],
            "notes": notes, "interval_function": interval_name,
            "capped": sum(1 for o in result.outcomes if o.budget < result.cell_budgets.get(o.x, o.budget)),
            "bound": None if bound is None else {"model_steps": bound[0], "full_model_steps": bound[1],
                                                 "seeds": {str(x): n for x, n in bound[2].items()},
                                                 "capped": bound[3]}}

