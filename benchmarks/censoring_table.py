"""The README's "Censoring and the delay law" table: alpha from the median-of-grokked fits
(``delay_law`` / ``shared_exponent``) and from ``censored_delay_law`` on the papers' released data.

    python benchmarks/censoring_table.py [REFERENCE]   # default: ../shared/reference beside the checkout

The last column fits the same AFT models to the grokked seeds only (the censored ones dropped, as a
median-of-grokked fit does): its difference from the AFT column is what censoring alone changes.
Each experiment folder is imported into a temporary store with ``gnorm.importers.import_reference``
(what ``gnorm import`` does) and the analyzers run on ``Store.records()``. Prints a Markdown table.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from gnorm.builtins.analyzers.censored_delay_law import CensoredDelayLawConfig, censored_delay_law_analyzer
from gnorm.builtins.analyzers.delay_law import (
    DelayLawConfig,
    SharedExponentConfig,
    delay_law_analyzer,
    shared_exponent_analyzer,
)
from gnorm.importers import import_reference
from gnorm.store import Store

RHO = "controller.rho"
#: (what, experiment folder, options shared by both fits); group_by set -> shared alpha.
CASES = [
    ("dense rho sweep, p = 59", "paper-a/denserho", {"stages": ["denserho/clamp"]}),
    ("p scan, rho 0.85-1.15, shared alpha over p = 31..71", "paper-a/pscan",
     {"stages": ["pscan/clamp"], "group_by": ["task.p"], "within": {RHO: [0.85, 1.15]}}),
    ("p scan, rho 0.85-1.15, shared alpha over p = 41..71", "paper-a/pscan",
     {"stages": ["pscan/clamp"], "group_by": ["task.p"], "within": {RHO: [0.85, 1.15], "task.p": [41, 71]}}),
    ("p scan, p = 31 alone (rho 0.85-1.15)", "paper-a/pscan",
     {"stages": ["pscan/clamp"], "within": {RHO: [0.85, 1.15], "task.p": [31, 31]}}),
    ("rho x lr matrix, lr = 1e-3 alone", "paper-a/efflr",
     {"stages": ["efflr/clamp"], "within": {"optimizer.lr": [1e-3, 1e-3]}}),
    ("rho x lr matrix, shared alpha over lr", "paper-a/efflr",
     {"stages": ["efflr/clamp"], "group_by": ["optimizer.lr"]}),
    ("no-LN attention model, rho 0.85-1.15", "paper-a/tfnoln_long",
     {"stages": ["tfnoln_long/clamp"], "within": {RHO: [0.85, 1.15]}}),
]


def group_text(group: dict) -> str:
    return ", ".join(f"{key.split('.')[-1]}={value}" for key, value in group.items())


def number(value, digits=2):
    return "-" if value is None else f"{value:.{digits}f}"


def interval(pair):
    return "-" if pair is None or None in pair else f"[{pair[0]:.2f}, {pair[1]:.2f}]"


def main(reference: Path) -> None:
    stores: dict[str, list] = {}
    print("| data | median-of-grokked alpha [95% bootstrap CI] | cells dropped (< 3 grokked) | censored seeds | "
          "AFT model (by AIC) | AFT alpha [95% profile CI] | AFT - median | AFT on grokked seeds only |")
    print("|---|---:|---|---:|---|---:|---:|---:|")
    for what, folder, options in CASES:
        if folder not in stores:
            store = Store(Path(tempfile.mkdtemp()), create=True)
            import_reference(reference / folder, store)
            stores[folder] = store.records()
        records = stores[folder]
        if options.get("group_by"):
            median = shared_exponent_analyzer(SharedExponentConfig(**options))(records).numbers
            dropped_text = ", ".join(f"{group_text(g['group'])} (group left out)" for g in median["groups_dropped"])
            dropped_text = dropped_text or "none"
            median_alpha, median_ci = median["alpha"], median.get("alpha_ci")
        else:
            (group,) = delay_law_analyzer(DelayLawConfig(**options))(records).numbers["groups"]
            dropped_text = ", ".join(f"rho {x:g}" for x in group["cells_dropped"]) or "none"
            median_alpha, median_ci = group["alpha"], group.get("alpha_ci")
        censored = censored_delay_law_analyzer(CensoredDelayLawConfig(**options))(records).numbers
        chosen = censored["chosen"]
        # the same AFT models with the censored seeds dropped: what censoring alone changes
        grokked_only = censored_delay_law_analyzer(CensoredDelayLawConfig(**options, profile=False))(
            [r for r in records if not r.censored]).numbers["chosen"]
        total = sum(c["seeds"] for c in censored["cells"])
        missing = sum(c["censored"] for c in censored["cells"])
        alpha = chosen["alpha"] if chosen else None
        print(f"| {what} | {number(median_alpha)} {interval(median_ci)} | {dropped_text} | {missing}/{total} | "
              f"{chosen['model'] if chosen else '-'} | {number(alpha)} {interval(chosen and chosen['profile_ci'])} | "
              f"{number(alpha - median_alpha) if alpha is not None and median_alpha is not None else '-'} | "
              f"{number(grokked_only and grokked_only['alpha'])} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared" / "reference")
