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

#: Component classes re-exported for plugin authors (``gnorm.NormController``), imported on first use so
#: that ``import gnorm`` (and the command line's start) does not wait for torch.
_COMPONENTS = ("Analyzer", "Architecture", "Executor", "ExecutorOption", "GrokCriterion", "NormController",
               "Observable", "Task")
_COMPONENTS += ("GradientTransform",)
_COMPONENTS += ("Loss", "Optimizer")  # issue 14: how members learn
_COMPONENTS += ("Observer",)  # issue 15: trackers
#: The Python API (gnorm.api): ``gnorm.open(results_dir)`` and ``gnorm.run(experiment, out=...)``.
_API = ("Results", "open", "run")


def __getattr__(name: str):
    if name in _COMPONENTS:
        from gnorm import components

        return getattr(components, name)
    if name in _API:
        from gnorm import api

        return getattr(api, name)
    raise AttributeError(f"module 'gnorm' has no attribute {name!r}")


__all__ = [
    "Analyzer",
    "Architecture",
    "Executor",
    "ExecutorOption",
    "GradientTransform",
    "GrokCriterion",
    "Loss",
    "NormController",
    "Observable",
    "Observer",
    "Optimizer",
    "Results",
    "Task",
    "__version__",
    "hookimpl",
    "open",
    "run",
]
