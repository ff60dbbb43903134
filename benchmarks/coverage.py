"""How often the delay law's 95% interval holds the true alpha: studies simulated from generative
models fitted to the papers' released runs (gnorm.analysis.simulation), each fitted by ``delay_law``
with the seed-block interval (gnorm's default), the same without its small-sample expansion, and the
papers' cell bootstrap (``interval = "cell"``).

Models: paper A's dense sweep (p = 59, 16 seeds, rho 0.85-1.25) and its p scan (p = 41/53/59/71,
12 seeds, rho 0.85-1.15), read through gnorm's importer. Each is simulated at the seed spreads fitted
(noise 1) and scaled (``--noise``: every spread; ``--slope-scale``: the seeds' slopes besides), with
every cell's budget ``--budget-factor`` times the slowest cell's median delay.

    python benchmarks/coverage.py [--studies 1000] [--seeds 6] [--rho 0.9,1.0,1.1,1.2] [--noise 1,2.5]
                                  [--slope-scale 1] [--budget-factor 3] [--sources 0,1,2,3,4]
                                  [--reference ../shared/reference] [--json coverage.json]

numpy only (no training); the numbers are the same on every run with the same options.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import attrs

from gnorm.analysis.simulation import COMPARED_INTERVALS, interval_coverage, model_from_records
from gnorm.importers import read_experiment

ROOT = Path(__file__).resolve().parents[1]
#: (name, experiment folder, p, rho range the model is fitted over)
SOURCES = [("dense sweep p=59", "paper-a/denserho", 59, (0.85, 1.25)),
           ("p scan p=41", "paper-a/pscan", 41, (0.85, 1.15)),
           ("p scan p=53", "paper-a/pscan", 53, (0.85, 1.15)),
           ("p scan p=59", "paper-a/pscan", 59, (0.85, 1.15)),
           ("p scan p=71", "paper-a/pscan", 71, (0.85, 1.15))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, default=ROOT.parent / "shared" / "reference")
    parser.add_argument("--studies", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--rho", default="0.9,1.0,1.1,1.2")
    parser.add_argument("--noise", default="1,2.5")
    parser.add_argument("--budget-factor", type=float, default=3.0)
    parser.add_argument("--slope-scale", type=float, default=1.0,
                        help="multiply the seeds' slope spread besides --noise (seed slopes dominating)")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--sources", default=",".join(str(i) for i in range(len(SOURCES))),
                        help="which models (indices into SOURCES)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rho = [float(v) for v in args.rho.split(",")]
    experiments: dict[str, list] = {}
    rows = []
    print(f"{args.studies} studies of {args.seeds} seeds x rho {args.rho}, 95% intervals, {args.resamples} resamples")
    print("| model | noise | true alpha | sd of fitted alpha | censored | " + " | ".join(COMPARED_INTERVALS)
          + " | mean width cell / seed_block |")
    print("|---|---|---|---|---|---|---|---|---|")
    for index in (int(i) for i in args.sources.split(",")):
        name, folder, p, rho_range = SOURCES[index]
        if folder not in experiments:
            experiments[folder] = [run.record for run in read_experiment(args.reference / folder).runs]
        records = [r for r in experiments[folder] if r.config["task"]["p"] == p]
        model = model_from_records(records, rho_range, budget_factor=args.budget_factor)
        for noise in (float(v) for v in args.noise.split(",")):
            started = time.perf_counter()
            scaled = model.scaled(noise, args.slope_scale)
            result = interval_coverage(scaled, rho, args.seeds, args.studies, COMPARED_INTERVALS,
                                       args.resamples)
            alpha = result["alpha"]
            print(f"| {name}{f', seed slopes x{args.slope_scale:g}' if args.slope_scale != 1 else ''} | {noise:g} | {model.alpha:.2f} | {alpha['sd']:.3f} | {alpha['censored_share']:.1%} | "
                  + " | ".join(f"{result[k]['coverage']:.1%}" for k in COMPARED_INTERVALS)
                  + f" | {result['cell']['mean_width']:.2f} / {result['seed_block']['mean_width']:.2f} |"
                  + f"  ({time.perf_counter() - started:.0f} s)", flush=True)
            rows.append({"model": name, "noise": noise, "slope_scale": args.slope_scale,
                         "parameters": attrs.asdict(scaled), **result})
    if args.json:
        args.json.write_text(json.dumps({"studies": args.studies, "seeds": args.seeds, "rho": rho, "rows": rows},
                                        indent=1))


if __name__ == "__main__":
    main()
