"""Built-in analyzers, one module per family, each with its config classes, analyzers and report section:

* :mod:`.critical_norm`: ``critical_norm``, Wc per cell, its spread and power law in p (figure
  ``critical_norm_vs_p``);
* :mod:`.delay_law`: ``delay_law`` (ln T_grok = a + alpha * x per group) and ``shared_exponent`` (one
  alpha for all groups) (figures ``delay_law``);
* :mod:`.censored_delay_law`: ``censored_delay_law``, log-normal and Weibull accelerated failure time
  fits of every seed's T_grok on x, censored seeds included at their budget, with a per-seed effect,
  chosen by AIC (figure ``censored_delay_law``);
* :mod:`.levers`: ``levers``, how many times slower or faster grokking gets between the ends of a
  sweep (figures ``rho_lr_heatmap``, in the delay-law section);
* :mod:`.laws`: ``law_comparison`` (which delay law, by AIC) and ``free_contraction`` (kappa);
* :mod:`.mediation`: ``logit_mediation``, the delay recovered at matched logit scale (figure
  ``logit_scale_collapse``);
* :mod:`.arms`: ``arms``, T_grok per intervention arm on matched seeds, with CIs and censoring
  (figure ``arms_test_accuracy``);
* :mod:`.replicates`: ``replicate_agreement``, how often each independent seed set's alpha falls
  inside the others' intervals.

Conventions shared by all of them (those of papers A and B):

* A cell's delay is the median T_grok over its grokked seeds; censored seeds (no grok within the
  budget) are counted and reported, never imputed.
* Cells with fewer than ``min_grokked`` grokked seeds are dropped from fits and named in the notes.
* ``stages`` keeps only those stages; ``within = {"controller.rho" = [0.85, 1.15]}`` keeps only runs
  whose value of each dotted key lies in the closed interval (the papers' fits use rho 0.85-1.15).
* Keys are dotted config keys (``controller.rho``, ``task.p``, ``optimizer.lr``), ``facts.<name>``
  for what a controller recorded, or ``held_norm``: the norm a clamp holds, rho * Wc (the recorded
  ``facts.held_norm``, else ``controller.rho * critical_norm``).
* Bootstrap CIs of ``delay_law``, ``shared_exponent`` and ``levers`` resample whole seeds by default
  (``interval = "seed_block"``: a seed's free run and all its clamp arms together, one draw for every
  cell, Wc recomputed from the drawn free runs and carried through rho; see
  :mod:`gnorm.analysis.resampling`); ``interval = "cell"`` resamples seeds with replacement within each
  cell independently (the papers' bootstrap). Censored seeds are drawn too (a resample's cell delay is
  the median over the grokked seeds it drew; a replicate in which some cell drew no grokked seed is
  discarded and counted). The interval is a percentile interval (the papers' shared-exponent CIs are
  asymmetric, which a normal interval cannot be).
"""

from __future__ import annotations

import gnorm
from gnorm.builtins.analyzers import (arms, censored_delay_law, critical_norm, delay_law, laws, levers, mediation,
                                      replicates)

#: The family modules, in the order their analyzers are listed.
FAMILIES = (critical_norm, delay_law, censored_delay_law, levers, laws, mediation, arms, replicates)


@gnorm.hookimpl
def gnorm_analyzers() -> list[gnorm.Analyzer]:
    return [analyzer for family in FAMILIES for analyzer in family.ANALYZERS]
