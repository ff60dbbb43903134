"""The adaptive policy (gnorm.adaptive) replayed on paper A's dense rho sweep, against the full sweep.

1. The replay on the released data (16 seeds x 9 rho levels, imported with gnorm's importer): in file
   seed order and in ``--orders`` random seed orders; model-steps to reach the full sweep's own interval
   width on alpha (the ``delay_law`` bootstrap, seeds resampled within cells, 2000 resamples).
2. The yardstick: the fewest model-steps any design drawn from those 16 seeds per level needs for the
   same large-sample width (gnorm.adaptive.cheapest_design_bound), knowing the outcomes in advance.
3. A synthetic sweep from the law fitted to the same data (each level's own seed spread) with a deeper
   pool of ``--pool`` seeds per level: the target is the width of a 16-seed full sweep drawn from the
   same model, so the policy may put more than 16 seeds where they are cheap. ``--replicates`` studies.

4. With ``--aft``: the same replay with alpha's interval on both sides the log-normal AFT fit's Wald
   interval (one effect per seed; censored seeds count at their budgets), without and with budget caps
   (``--caps``: the quantiles of the law's T_grok at which a new seed may be stopped), in file order and
   in ``--orders`` random orders, and its yardstick (gnorm.adaptive.aft_design_bound).

Model-steps count each seed to its T_grok or its budget, whichever comes first (gnorm stops a seed when
it groks), for both designs.

    python benchmarks/adaptive_replay.py [--reference ../shared/reference/paper-a/denserho] [--orders 10]
    python benchmarks/adaptive_replay.py --aft --orders 10 --replicates 0
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from gnorm.adaptive import (AdaptivePolicy, Outcome, StoredSeed, aft_design_bound, cheapest_design_bound,
                            current_interval, replay, sweep_from_records)
from gnorm.budget import cell_seed_sds, law_from_times
from gnorm.importers import import_reference
from gnorm.store import Store


def dense_sweep(reference: Path) -> dict[float, list[StoredSeed]]:
    with tempfile.TemporaryDirectory() as directory:
        store = Store(Path(directory) / "denserho", create=True)
        with store.exclusive():
            import_reference(reference, store)
        return sweep_from_records(store.records(), "controller.rho", "denserho/clamp")


def synthetic(sweep: dict[float, list[StoredSeed]], pool: int, rng: np.random.Generator,
              ) -> tuple[dict[float, list[StoredSeed]], dict[float, list[StoredSeed]]]:
    """(a 16-seed full sweep, a deeper pool) drawn from the law fitted to ``sweep``, each level with its own
    seed spread."""
    cells = {x: [s.t_grok for s in seeds] for x, seeds in sweep.items()}
    law = law_from_times(cells)
    spreads = cell_seed_sds(cells, law.seed_sd, prior_seeds=0.0)
    budgets = {x: max(s.budget for s in seeds) for x, seeds in sweep.items()}

    def draw(count: int) -> dict[float, list[StoredSeed]]:
        drawn = {}
        for x in sweep:
            times = np.round(np.exp(law.log_median(x) + spreads[x] * rng.standard_normal(count)))
            drawn[x] = [StoredSeed(int(t), budgets[x]) if t <= budgets[x] else StoredSeed(None, budgets[x])
                        for t in times]
        return drawn
    return draw(len(next(iter(sweep.values())))), draw(pool)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", default="../shared/reference/paper-a/denserho",
                        help="the released dense sweep (relative to the repository root by default)")
    parser.add_argument("--orders", type=int, default=10)
    parser.add_argument("--pool", type=int, default=48)
    parser.add_argument("--replicates", type=int, default=5)
    parser.add_argument("--initial-seeds", type=int, default=3)
    parser.add_argument("--aft", action="store_true", help="replay with the AFT interval on both sides instead")
    parser.add_argument("--caps", type=float, nargs="*", default=[0.2, 0.4, 0.6, 0.8])
    arguments = parser.parse_args()
    policy = AdaptivePolicy(initial_seeds=arguments.initial_seeds)

    sweep = dense_sweep(Path(arguments.reference))
    if arguments.aft:
        aft_replays(sweep, arguments)
        return
    result = replay(sweep, policy)
    low, high = result.full_interval
    print(f"dense sweep: {sum(map(len, sweep.values()))} seeds at {len(sweep)} rho levels, {result.full_model_steps:,} "
          f"model-steps, alpha interval [{low:.3f}, {high:.3f}] (width {high - low:.3f})")
    low, high = result.interval
    print(f"  adaptive, file order: {sum(result.seeds.values())} seeds, {result.model_steps:,} model-steps, "
          f"width {high - low:.3f}: {result.saving:.2f}x fewer; seeds per rho "
          + ", ".join(f"{x:g}: {n}" for x, n in sorted(result.seeds.items())))
    print(f"  had every seed trained its whole budget (paper A's practice): {result.budget_steps:,} vs "
          f"{result.full_budget_steps:,} model-steps, {result.full_budget_steps / result.budget_steps:.2f}x fewer")
    rng = np.random.default_rng(0)
    savings = []
    for _ in range(arguments.orders):
        order = {x: list(rng.permutation(len(s))) for x, s in sweep.items()}
        savings.append(replay(sweep, policy, order=order).saving)
    if savings:
        print(f"  adaptive, {len(savings)} random seed orders: {np.median(savings):.2f}x fewer (median; "
              f"range {min(savings):.2f}-{max(savings):.2f}x)")
    bound, seeds = cheapest_design_bound(sweep)
    print(f"  cheapest design from these seeds for the same large-sample width (outcomes known in advance): "
          f"{bound:,.0f} model-steps, {result.full_model_steps / bound:.2f}x fewer; seeds per rho "
          + ", ".join(f"{x:g}: {n}" for x, n in sorted(seeds.items())))

    rng = np.random.default_rng(1)
    ratios = []
    for _ in range(arguments.replicates):
        full, pool = synthetic(sweep, arguments.pool, rng)
        target = current_interval([Outcome(x, i, s.t_grok, s.budget, 0) for x, seeds in full.items()
                                   for i, s in enumerate(seeds)])
        deep = replay(pool, AdaptivePolicy(target[1] - target[0], initial_seeds=arguments.initial_seeds))
        full_steps = sum(s.t_grok if s.t_grok is not None else s.budget for seeds in full.values() for s in seeds)
        ratios.append(full_steps / deep.model_steps if deep.reached else float("nan"))
    if ratios:
        print(f"synthetic (law fitted to the dense sweep, {arguments.pool} seeds per level to draw from, target the "
              f"width of a 16-seed full sweep): {np.nanmedian(ratios):.2f}x fewer (median of {len(ratios)}; range "
              f"{np.nanmin(ratios):.2f}-{np.nanmax(ratios):.2f}x; target missed in {int(np.isnan(ratios).sum())})")


def aft_replays(sweep: dict[float, list[StoredSeed]], arguments: argparse.Namespace) -> None:
    """Section 4: the AFT replays and the yardstick."""
    for caps in ([], arguments.caps):
        policy = AdaptivePolicy(initial_seeds=arguments.initial_seeds, interval="aft", budget_quantiles=list(caps))
        result = replay(sweep, policy)
        low, high = result.full_interval
        if not caps:
            print(f"dense sweep, AFT interval (log-normal, per-seed effect, Wald): {result.full_model_steps:,} "
                  f"model-steps, "
                  f"alpha [{low:.3f}, {high:.3f}] (width {high - low:.3f})")
        low, high = result.interval
        capped = sum(o.budget < result.cell_budgets[o.x] for o in result.outcomes)
        label = f"caps at quantiles {', '.join(f'{q:g}' for q in caps)}" if caps else "no caps"
        print(f"  adaptive, {label}, file order: {sum(result.seeds.values())} seeds ({capped} capped), "
              f"{result.model_steps:,} model-steps, width {high - low:.3f}, "
              f"{'reached' if result.reached else 'missed'}: {result.saving:.2f}x fewer; seeds per rho "
              + ", ".join(f"{x:g}: {n}" for x, n in sorted(result.seeds.items())))
        rng = np.random.default_rng(0)
        others = [replay(sweep, policy, order={x: list(rng.permutation(len(s))) for x, s in sweep.items()})
                  for _ in range(arguments.orders)]
        if others:
            savings = [o.saving for o in others]
            print(f"  adaptive, {label}, {len(others)} random seed orders: {np.median(savings):.2f}x fewer (median; "
                  f"range {min(savings):.2f}-{max(savings):.2f}x; target reached in {sum(o.reached for o in others)})")
        bound = aft_design_bound(sweep, policy)
        if bound is not None:
            steps, full_steps, seeds, capped = bound
            print(f"  yardstick, {label} (AFT law of the whole sweep known, large-sample width): {steps:,.0f} vs "
                  f"{full_steps:,.0f} expected model-steps, {full_steps / steps:.2f}x fewer, {capped} capped; seeds "
                  "per rho " + ", ".join(f"{x:g}: {n}" for x, n in sorted(seeds.items())))


if __name__ == "__main__":
    main()
