"""Experiment files, as they were imported before the run model and the loader were split: a facade
that re-exports every public name from the modules that now hold it.

- :mod:`gnorm.runmodel`: the fixed sections, component choices, forks, :class:`RunSpec` and its ids,
  stages, the experiment, :func:`cells_of` (imports neither the loader, the converter nor torch);
- :mod:`gnorm.converter`: the strict cattrs converter, :func:`structure`, :func:`naming`;
- :mod:`gnorm.experiment_file`: reading a file safely;
- :mod:`gnorm.loader`: :func:`load_experiment` and its checks (with :mod:`gnorm.build_checks` and
  :mod:`gnorm.analysis_options`);
- :mod:`gnorm.overrides`: ``--set``, dotted keys, merging;
- :mod:`gnorm.executor_table`: the ``[executor]`` table.
"""

from gnorm.converter import (  # noqa: F401
    DERIVED_KEYS,
    NAMES,
    converter,
    make_converter,
    naming,
    out_of_int64,
    structure,
)
from gnorm.executor_table import (  # noqa: F401
    DEFAULT_EXECUTOR,
    EXECUTOR_LIMITS,
    ExecutorChoice,
    executor_choice,
    with_executor,
)
from gnorm.experiment_file import MAX_FILE_BYTES, UTF8_BOM, read_experiment_text  # noqa: F401
from gnorm.loader import FORK_KEYS, STAGE_KEYS, TOP_LEVEL_KEYS, load_experiment  # noqa: F401
from gnorm.overrides import parse_override  # noqa: F401
from gnorm.runmodel import (  # noqa: F401
    COMPONENT_SECTIONS,
    EXECUTION_SETTINGS,
    INT64_MAX,
    INT64_MIN,
    MAX_NORM,
    MAX_PARAMETERS,
    MAX_POINTS,
    MAX_RUNS,
    MAX_SEED,
    MAX_SEEDS,
    MAX_STEPS,
    RUN_SECTIONS,
    SECTION_CLASSES,
    ComponentChoice,
    EvaluationConfig,
    Experiment,
    ExperimentMeta,
    ForkSpec,
    RunSpec,
    Stage,
    TrainingConfig,
    cells_of,
    dotted_value,
)
from gnorm.builtins.optimizers import AdamWConfig as OptimizerConfig  # noqa: F401,E402 - moved (issue 14)
