"""gnorm: run and analyse weight-norm interventions in grokking."""

from importlib.metadata import PackageNotFoundError, version

import pluggy

try:
    __version__ = version("gnorm")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

PROJECT_NAME = "gnorm"

#: Marker for plugin hook implementations: ``@gnorm.hookimpl def gnorm_norm_controllers(): ...``
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

from gnorm.components import (  # noqa: E402  (re-exported for plugin authors)
    Analyzer,
    Architecture,
    Executor,
    GrokCriterion,
    NormController,
    Observable,
    Task,
)

__all__ = [
    "Analyzer",
    "Architecture",
    "Executor",
    "GrokCriterion",
    "NormController",
    "Observable",
    "Task",
    "__version__",
    "hookimpl",
]
