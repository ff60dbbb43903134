"""Helpers every analyzer and report section shares: record queries, labels and grouping
(:mod:`gnorm.analysis.records`), the statistics of cells of seeds (:mod:`gnorm.analysis.statistics`) and
the seed-block bootstrap of the delay law (:mod:`gnorm.analysis.resampling`, records read into it by
:mod:`gnorm.analysis.seed_blocks`; coverage simulated by :mod:`gnorm.analysis.simulation`).
The censored (accelerated failure time) likelihoods are in :mod:`gnorm.analysis.survival`, imported
from there by the one analyzer that fits them.

Each helper stands here once; analyzers, report sections, ``gnorm show`` and the study coordinator
import it from here.
"""

from gnorm.analysis.records import (  # noqa: F401
    cell_label,
    group_label,
    group_records,
    numeric,
    pooling_notes,
    record_value,
    records_by_cell,
    select,
    series_labels,
    t_grok_by_x,
    value_order,
    varying_keys,
)
from gnorm.analysis.resampling import SeedBlockSample, expanded_level, seed_block_interval  # noqa: F401
from gnorm.analysis.statistics import (  # noqa: F401
    bootstrap_cell_medians,
    bootstrap_median_interval,
    median_or_none,
    nanmedian_over_seeds,
)
