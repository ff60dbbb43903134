"""Replicate agreement on the papers' released runs: each cell's seeds are cut into k disjoint sets, each
set is fitted alone by ``delay_law``, and ``replicate_agreement`` counts how often one set's alpha lies
inside another set's 95% interval, for the seed-block interval and the papers' cell bootstrap.

Calibrated intervals give about 83% (both estimates vary; see gnorm.builtins.analyzers.replicates).
The sets share the Wc the authors measured on all seeds, so Wc is taken as given (not resampled) here.

    python benchmarks/replicates_reference.py [--reference ../shared/reference] [--json replicates.json]

No training; the numbers are the same on every run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gnorm.builtins.analyzers.replicates import ReplicateAgreementConfig, replicate_agreement_analyzer
from gnorm.importers import read_experiment

ROOT = Path(__file__).resolve().parents[1]
RHO_085_115 = [0.85, 1.15]
#: (name, experiment, stage, within, seed sets k)
SPLITS = [("dense sweep p=59", "paper-a/denserho", "denserho/clamp", {}, 2),
          ("dense sweep p=59", "paper-a/denserho", "denserho/clamp", {}, 4),
          *[(f"p scan p={p}", "paper-a/pscan", "pscan/clamp", {"task.p": [p, p], "controller.rho": RHO_085_115}, 2)
            for p in (41, 53, 59, 71)],
          *[(f"rho x lr matrix lr={lr:g}", "paper-a/efflr", "efflr/clamp", {"optimizer.lr": [lr, lr]}, k)
            for lr in (1e-3, 2e-3, 4e-3, 8e-3) for k in (2, 4)]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, default=ROOT.parent / "shared" / "reference")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    experiments: dict[str, list] = {}
    rows, totals = [], {}
    print("| sweep | sets x seeds | alpha per set | sd | seed-block: inside | cell: inside | "
          "mean width seed-block / cell |")
    print("|---|---|---|---|---|---|---|")
    for name, folder, stage, within, parts in SPLITS:
        if folder not in experiments:
            experiments[folder] = [run.record for run in read_experiment(args.reference / folder).runs]
        config = ReplicateAgreementConfig(stages=[stage], within=within, split=parts, resamples=args.resamples)
        numbers = replicate_agreement_analyzer(config)(experiments[folder]).numbers
        agreement = numbers["agreement"]
        for interval, found in agreement.items():
            hits, pairs = totals.get(interval, (0, 0))
            totals[interval] = (hits + found["hits"], pairs + found["pairs"])
        seeds = numbers["replicates"][0]["seeds"]
        alphas = ", ".join(f"{r['alpha']:.2f}" for r in numbers["replicates"] if r["alpha"] is not None)
        print(f"| {name} | {parts} x {seeds} | {alphas} | {numbers['alpha_sd']:.2f} | "
              f"{agreement['seed_block']['hits']}/{agreement['seed_block']['pairs']} | "
              f"{agreement['cell']['hits']}/{agreement['cell']['pairs']} | "
              f"{agreement['seed_block']['mean_width']:.2f} / {agreement['cell']['mean_width']:.2f} |", flush=True)
        rows.append({"sweep": name, "sets": parts, "within": within, **numbers})
    print("| all | | | | " + " | ".join(f"{h}/{p} ({h / p:.0%})" for h, p in
                                          (totals["seed_block"], totals["cell"])) + " | |")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "totals": totals}, indent=1))


if __name__ == "__main__":
    main()
