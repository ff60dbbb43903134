"""Every hook a gnorm plugin can implement, in one place.

Implement a hook by defining a module-level function of the same name marked with ``@gnorm.hookimpl``
and declaring the module under the ``gnorm`` entry-point group of your package::

    # pyproject.toml of gnorm-plugin-xyz
    [project.entry-points.gnorm]
    xyz = "gnorm_plugin_xyz"

Sections: registration hooks (what pieces exist), then run-lifecycle hooks (observers).
"""

from __future__ import annotations

from typing import Any

import pluggy

from gnorm import PROJECT_NAME
from gnorm.components import (Analyzer, Architecture, Executor, GrokCriterion, NormController, Observable,
                              RunRecord, Task)

hookspec = pluggy.HookspecMarker(PROJECT_NAME)

# ---------------------------------------------------------------------------------------------------
# Registration: called once, when the plugin registry is built (before any file is read). Each returns
# a list of frozen component descriptions; a name given by two packages is an error naming both.


@hookspec
def gnorm_tasks() -> list[Task]:
    """Register tasks. Called once at start-up; return a list of :class:`gnorm.Task`.

    ``factory(config)`` returns an object with ``input_spec``, ``num_classes`` and
    ``split(split_seed) -> gnorm.components.Split``::

        @attrs.frozen
        class XorConfig:
            bits: int = 8

        @gnorm.hookimpl
        def gnorm_tasks():
            return [gnorm.Task(name="xor", summary="XOR of two bit strings",
                               config_class=XorConfig, factory=XorTask)]
    """


@hookspec
def gnorm_architectures() -> list[Architecture]:
    """Register architectures. Called once at start-up; return a list of :class:`gnorm.Architecture`.

    ``factory(config, task)`` returns an ordinary single-model ``torch.nn.Module`` whose
    ``weight_norm_groups()`` maps group names to the parameter names that form the weight norm::

        class Linear(torch.nn.Module):
            def __init__(self, config, task):
                super().__init__()
                self.w = torch.nn.Parameter(torch.randn(task.input_spec.length, task.num_classes))
            def forward(self, x):
                return x @ self.w
            def weight_norm_groups(self):
                return {"all": ["w"]}

        @gnorm.hookimpl
        def gnorm_architectures():
            return [gnorm.Architecture(name="linear", summary="one matrix",
                                       config_class=EmptyConfig, factory=Linear)]
    """


@hookspec
def gnorm_norm_controllers() -> list[NormController]:
    """Register norm controllers. Called once at start-up; return a list of :class:`gnorm.NormController`.

    ``factory(config, context)`` returns an object whose ``after_step(step, norm_tensors)`` runs after
    every optimizer step on the stacked weight-norm tensors (leading axis: ensemble member). The
    context (:class:`gnorm.components.ControllerContext`) gives Wc (``critical_norm``, and per group
    ``group_critical_norms``), the member count, and ``groups``: group name -> positions of its tensors
    in ``norm_tensors``. Optional: ``before_training(norm_tensors)``, called once before step 1, and
    ``keep(index)``, called with the positions of the members that stay when others finish. Both
    ``after_step`` and ``before_training`` may return per-member tensors to record as facts::

        @attrs.frozen
        class HalveConfig:
            at_step: int = 100

        class Halve:
            def __init__(self, config, context):
                self.at_step = config.at_step
            def after_step(self, step, norm_tensors):
                if step == self.at_step:
                    for tensor in norm_tensors:
                        tensor.mul_(0.5)

        @gnorm.hookimpl
        def gnorm_norm_controllers():
            return [gnorm.NormController(name="halve", summary="halve the weights once",
                                         config_class=HalveConfig, factory=Halve)]
    """


@hookspec
def gnorm_grok_criteria() -> list[GrokCriterion]:
    """Register grok criteria. Called once at start-up; return a list of :class:`gnorm.GrokCriterion`.

    ``factory(config)`` returns an object whose ``times(steps, metrics) -> GrokTimes`` reads a run's
    evaluations so far::

        class LowLoss:
            def __init__(self, config):
                self.level = config.level
            def times(self, steps, metrics):
                hit = np.flatnonzero(metrics["test_loss"] <= self.level)
                return GrokTimes(t_mem=None, t_grok=int(steps[hit[0]]) if hit.size else None)
    """


@hookspec
def gnorm_analyzers() -> list[Analyzer]:
    """Register analyzers. Called once at start-up; return a list of :class:`gnorm.Analyzer`.

    ``factory(config)`` returns a callable taking the stored runs (``list[RunRecord]``) and returning
    a :class:`gnorm.components.Analysis`::

        def count_grokked(config):
            def analyze(records):
                grokked = sum(not r.censored for r in records)
                return Analysis(analyzer="count", numbers={"grokked": grokked})
            return analyze
    """


@hookspec
def gnorm_observables() -> list[Observable]:
    """Register observables. Called once at start-up; return a list of :class:`gnorm.Observable`.

    An experiment switches one on with ``[evaluation] observables = ["<name>"]``. ``factory(config,
    context)`` (context: :class:`gnorm.components.ObservableContext`) returns an object whose
    ``observe(chunk)`` is called under ``torch.no_grad()`` for every chunk of ensemble members at every
    scheduled evaluation (chunk: :class:`gnorm.components.EvaluationChunk`, with the logits the
    evaluation has already computed) and returns metric key -> one value per member of the chunk; the
    values are stored as trajectory columns::

        class MaxLogit:
            def __init__(self, config, context):
                pass
            def observe(self, chunk):
                return {"max_logit": chunk.logits.amax(dim=(1, 2))}

        @gnorm.hookimpl
        def gnorm_observables():
            return [gnorm.Observable(name="max_logit", summary="largest logit over all examples",
                                     config_class=EmptyConfig, factory=MaxLogit)]
    """


@hookspec
def gnorm_executors() -> list[Executor]:
    """Register executors (where cells train). Called once at start-up; return a list of
    :class:`gnorm.Executor`.

    ``factory(config, context)`` returns something that behaves like ``concurrent.futures.Executor``:
    ``submit(fn, *args)`` returning a ``concurrent.futures.Future``, and ``shutdown(wait=True,
    cancel_futures=False)`` (the coordinator passes both). The
    coordinator submits one task per cell; the task only trains and returns its runs' results, so an
    executor never sees the store. Optional: a ``capacity`` attribute (the coordinator keeps at most
    that many cells submitted; default: all that are ready) and ``terminate_workers()`` (called instead
    of ``shutdown`` when the study is interrupted). An experiment picks one with
    ``[executor] name = "..."`` (or ``gnorm run --executor NAME``)::

        @attrs.frozen
        class PoolConfig:
            workers: int = 2

        @gnorm.hookimpl
        def gnorm_executors():
            return [gnorm.Executor(name="processes", summary="a plain process pool", config_class=PoolConfig,
                                   factory=lambda config, context: ProcessPoolExecutor(config.workers))]

    (Not a thread pool: a cell sets process-wide torch state, such as its thread count and
    deterministic kernels, so cells must not share a process at the same time.)
    """


# ---------------------------------------------------------------------------------------------------
# Lifecycle: observers (trackers, loggers). Every one is called in the coordinator process (the one that
# runs ``gnorm run``), never in a worker. Order: ``gnorm_before_study``; for each run, when its cell's
# results reach the coordinator, ``gnorm_before_run``, ``gnorm_after_evaluation`` for each evaluation in
# step order, ``gnorm_after_run``; finally ``gnorm_after_study``. They must not change anything; their
# return values are ignored. (Docstrings to be completed by the hookspec owner.)


@hookspec
def gnorm_before_study(results_dir: str, experiment: str, runs: int) -> None:
    """Called once when a study starts, before any cell is submitted: the results directory, the
    experiment's name and the number of runs still to train."""


@hookspec
def gnorm_after_study(results_dir: str, experiment: str, done: int, failed: int) -> None:
    """Called once when a study ends (also when interrupted): runs stored as finished and as failed by
    this invocation."""


@hookspec
def gnorm_before_run(run_id: str, stage: str, seed: int, config: dict[str, Any], results_dir: str,
                     cell_label: str, critical_norm: float | None) -> None:
    """Called once per run when its cell's results arrive, before its evaluations are announced::

        @gnorm.hookimpl
        def gnorm_before_run(run_id, stage, seed, config):
            print("starting", run_id)
    """


@hookspec
def gnorm_after_evaluation(run_id: str, step: int, metrics: dict[str, float], results_dir: str,
                           cell_label: str) -> None:
    """Called for every stored evaluation of a run, in step order, with that run's metrics (train_loss,
    test_loss, train_acc, test_acc, weight_norm, one ``norm/<group>`` per parameter group and the keys
    of the observables the experiment switched on)::

        @gnorm.hookimpl
        def gnorm_after_evaluation(run_id, step, metrics):
            tracker.log(metrics, step=step)
    """


@hookspec
def gnorm_after_run(record: RunRecord, results_dir: str, cell_label: str, critical_norm: float | None) -> None:
    """Called once per run after it is stored (grokked, or out of budget), after its last evaluation::

        @gnorm.hookimpl
        def gnorm_after_run(record):
            print(record.run_id, record.t_grok)
    """
