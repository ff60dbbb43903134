"""Facade: the training core lives in gnorm.training (one module per concern); these names stay
importable from here."""

from gnorm.training.build import (UNDECLARED_AT_GROK, at_grok_keys, build_cell, build_ensemble,  # noqa: F401
                                  build_optimizer, build_trunk, controller_context, train_cell, train_trunk)
from gnorm.training.compiling import COMPILE_WORK_THRESHOLD, CompiledOrEager, should_compile  # noqa: F401
from gnorm.training.ensemble import ROWS_PER_CHUNK, Ensemble, members_per_chunk  # noqa: F401
from gnorm.training.jobs import CellJob, TrunkJob, evaluation_steps  # noqa: F401
from gnorm.training.loop import CellParts  # noqa: F401
from gnorm.training.numerics import (cpu_computes_bfloat16, deterministic_algorithms,  # noqa: F401
                                     matmuls_computed_in, numerics, resolve_device, torch_matmul_precision)
from gnorm.training.optimizer import BatchedAdamW, has_fused_adamw  # noqa: F401
from gnorm.training.runlog import METRICS, RunLog  # noqa: F401
