"""Every hook a gnorm plugin can implement, in one place.

Implement a hook by defining a module-level function of the same name marked with ``@gnorm.hookimpl``
and declaring the module under the ``gnorm`` entry-point group of your package::

    # pyproject.toml of gnorm-plugin-xyz
    [project.entry-points.gnorm]
    xyz = "gnorm_plugin_xyz"

gnorm's own plugins (``gnorm.builtins.BUILTIN_PLUGINS``) are registered first, in code; then every
package of the entry-point group. An implementation may take any subset of a hook's arguments.

Sections: registration hooks (what pieces exist), lifecycle hooks (observers of a study and its runs),
then the command hook (subcommands of ``gnorm``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

from gnorm import PROJECT_NAME
from gnorm.components import (Analyzer, Architecture, Executor, GrokCriterion, NormController, Observable,
                              RunRecord, Task)
from gnorm.components import GradientTransform
from gnorm.components import Loss, Optimizer
from gnorm.components import Observer

if TYPE_CHECKING:
    import click

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
    ``after_step`` and ``before_training`` may return per-member tensors to record as facts.

    The descriptor declares the controller's contract: ``starts_at`` names the config field holding the
    step the intervention starts at (checked against a fork's step when the file loads),
    ``groups(config)`` the weight-norm groups it needs (checked against the architecture's groups when
    the file loads), ``facts`` the fact names it records, ``uses_critical_norm`` that it needs Wc::

        @attrs.frozen
        class HalveConfig:
            at_step: int = 100

        class Halve:
            def __init__(self, config, context):
                self.at_step = config.at_step
            def after_step(self, step, norm_tensors):
                if step == self.at_step:
                    before = gnorm.science.weight_norm(norm_tensors)
                    for tensor in norm_tensors:
                        tensor.mul_(0.5)
                    return {"norm_before_halving": before}

        @gnorm.hookimpl
        def gnorm_norm_controllers():
            return [gnorm.NormController(name="halve", summary="halve the weights once",
                                         config_class=HalveConfig, factory=Halve,
                                         starts_at="at_step", facts=("norm_before_halving",))]
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
    a :class:`gnorm.components.Analysis`. The descriptor's ``report(config, analysis, context)``, when
    given, returns the analyzer's section of ``gnorm report`` (a :class:`gnorm.reporting.ReportSection`
    with paragraphs, tables and named figures, or None to add nothing) from that same analysis::

        def count_grokked(config):
            def analyze(records):
                grokked = sum(not r.censored for r in records)
                return Analysis(analyzer="count", numbers={"grokked": grokked})
            return analyze

        @gnorm.hookimpl
        def gnorm_analyzers():
            return [gnorm.Analyzer(name="count", summary="how many runs grokked", config_class=EmptyConfig,
                                   factory=count_grokked)]
    """


@hookspec
def gnorm_observables() -> list[Observable]:
    """Register observables. Called once at start-up; return a list of :class:`gnorm.Observable`.

    An experiment switches one on with ``[evaluation] observables = ["<name>"]``. ``factory(config,
    context)`` (context: :class:`gnorm.components.ObservableContext`) returns an object whose
    ``observe(chunk)`` is called under ``torch.no_grad()`` for every chunk of ensemble members at every
    scheduled evaluation (chunk: :class:`gnorm.components.EvaluationChunk`, with the logits the
    evaluation has already computed) and returns metric key -> one value per member of the chunk; the
    values are stored as trajectory columns. The descriptor declares ``requires_groups`` (weight-norm
    groups the architecture must have, checked when the file loads), ``at_grok`` (metric keys whose
    value at T_grok is recorded as the fact ``<key>_at_grok``) and ``facts`` (the fact names that gives)::

        class MaxLogit:
            def __init__(self, config, context):
                pass
            def observe(self, chunk):
                return {"max_logit": chunk.logits.amax(dim=(1, 2))}

        @gnorm.hookimpl
        def gnorm_observables():
            return [gnorm.Observable(name="max_logit", summary="largest logit over all examples",
                                     config_class=EmptyConfig, factory=MaxLogit,
                                     at_grok=("max_logit",), facts=("max_logit_at_grok",))]
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
    ``[executor] name = "..."`` (or ``gnorm run --executor NAME``). The descriptor's ``options``
    (:class:`gnorm.ExecutorOption`) add options to ``gnorm run``, each setting one key of the
    ``[executor]`` table::

        @attrs.frozen
        class PoolConfig:
            workers: int = 2

        @gnorm.hookimpl
        def gnorm_executors():
            return [gnorm.Executor(name="processes", summary="a plain process pool", config_class=PoolConfig,
                                   factory=lambda config, context: ProcessPoolExecutor(config.workers),
                                   options=(gnorm.ExecutorOption(flag="--workers", key="workers", metavar="N",
                                                                 help="worker processes"),))]

    (Not a thread pool: a cell sets process-wide torch state, such as its thread count and
    deterministic kernels, so cells must not share a process at the same time.)
    """


@hookspec
def gnorm_gradient_transforms() -> list[GradientTransform]:
    """Register gradient transforms. Called once at start-up; return a list of
    :class:`gnorm.GradientTransform`.

    A transform is written for one model: ``factory(config, context)`` (context:
    :class:`gnorm.components.TransformContext`, with the weight-norm tensor names) returns an object with
    pure functions ``init(params) -> state`` and ``update(grads, state, params) -> (grads, state)``
    over dicts of tensors by parameter name; gnorm batches them over the ensemble with
    ``torch.func.vmap`` and keeps, drops and checkpoints each member's state. An experiment applies it
    with a ``[gradient_transforms.<name>]`` table of its options (tables in the file's order form the
    chain, run after backward and before the optimizer step)::

        @attrs.frozen
        class ScaleConfig:
            factor: float = 0.5

        class Scale:
            def __init__(self, config, context):
                self.factor = config.factor
            def init(self, params):
                return {}
            def update(self, grads, state, params):
                return {name: g * self.factor for name, g in grads.items()}, state

        @gnorm.hookimpl
        def gnorm_gradient_transforms():
            return [gnorm.GradientTransform(name="scale", summary="multiply every gradient by a factor",
                                            config_class=ScaleConfig, factory=Scale)]
    """


# How members learn (issue 14): optimizers and losses.


@hookspec
def gnorm_optimizers() -> list[Optimizer]:
    """Register optimizers. Called once at start-up; return a list of :class:`gnorm.Optimizer`.

    An experiment picks one with ``[optimizer] name = "..."`` (default ``adamw``); the table's other
    keys are structured into ``config_class``. ``factory(config, context)`` (context:
    :class:`gnorm.components.OptimizerContext`: the stacked parameters, their names, which are
    weight-norm tensors) returns a :class:`gnorm.components.BatchedOptimizer`: ``step(params, grads)``
    updates every member in place, ``state_tensors()`` names its per-parameter state (checkpointed and
    forked with the weights), ``keep(index)`` drops finished members, ``step_count`` counts steps.
    Tensors carry a leading member axis; an elementwise update is per member by construction::

        @attrs.frozen
        class SignConfig:
            lr: float = 1e-3

        class SignDescent:
            def __init__(self, config, context):
                self.lr, self.step_count = config.lr, 0
            def step(self, params, grads):
                self.step_count += 1
                for p, g in zip(params, grads):
                    p.sub_(self.lr * g.sign())
            def state_tensors(self):
                return {}
            def keep(self, index):
                pass

        @gnorm.hookimpl
        def gnorm_optimizers():
            return [gnorm.Optimizer(name="sign_descent", summary="p <- p - lr sign(g)",
                                    config_class=SignConfig, factory=SignDescent)]
    """


@hookspec
def gnorm_losses() -> list[Loss]:
    """Register training losses. Called once at start-up; return a list of :class:`gnorm.Loss`.

    An experiment picks one with ``[loss] name = "..."`` (default ``cross_entropy``).
    ``factory(config)`` returns ``losses(logits, labels)``, written for one model: logits ``[N, C]``
    and labels ``[N]`` give per-example losses ``[N]`` (gnorm batches it over members). Declare
    ``temperature`` (the config field holding tau) to have gnorm divide the logits by it::

        @attrs.frozen
        class HingeConfig:
            margin: float = 1.0
            temperature: float = 1.0

        def hinge(config):
            def losses(logits, labels):
                correct = logits.gather(1, labels[:, None])
                return (config.margin - correct + logits).clamp(min=0).sum(1) - config.margin
            return losses

        @gnorm.hookimpl
        def gnorm_losses():
            return [gnorm.Loss(name="hinge", summary="multi-class hinge loss", config_class=HingeConfig,
                               factory=hinge, temperature="temperature")]
    """


# Trackers (issue 15): observers configured by the experiment file.


@hookspec
def gnorm_observers() -> list[Observer]:
    """Register observers (trackers). Called once at start-up; return a list of :class:`gnorm.Observer`.

    An experiment switches one on with an ``[observers.<name>]`` table of its options (``[observers.
    <name>]`` alone: its defaults); observers never change what trains or a run's id. ``factory(config,
    context)`` (context: :class:`gnorm.components.ObserverContext`: results directory, experiment name,
    file) is called in the coordinator when ``gnorm run`` starts and returns an object with any of
    ``before_study``, ``before_run``, ``after_evaluation``, ``after_run``, ``after_study``: the
    lifecycle hooks below without their ``gnorm_`` prefix, called at the same moments with the same
    arguments (a method takes any subset of them, by name). A method that raises is reported in one
    line and the observer gets no more events but ``after_study``; training and the store go on::

        @attrs.frozen
        class PrintConfig:
            every: int = 100

        class PrintTracker:
            def __init__(self, config, context):
                self.every = config.every
            def after_evaluation(self, run_id, step, metrics):
                if step % self.every == 0:
                    print(run_id, step, metrics["test_acc"])

        @gnorm.hookimpl
        def gnorm_observers():
            return [gnorm.Observer(name="print", summary="print test accuracy now and then",
                                   config_class=PrintConfig, factory=PrintTracker)]
    """


# ---------------------------------------------------------------------------------------------------
# Lifecycle: observers (trackers, loggers). Every one of them is called in the coordinator process (the
# one that runs ``gnorm run``), never in a worker, so a tracker can open a run in ``gnorm_before_run``
# and close it in ``gnorm_after_run``. They must not change anything; their return values are ignored.
# Order: ``gnorm_before_study``; then for each run, when its cell's results reach the coordinator,
# ``gnorm_before_run``, ``gnorm_after_evaluation`` for each stored evaluation in step order,
# ``gnorm_after_run``; finally ``gnorm_after_study``. Runs already in the store are not announced.
# A run is written to the store before it is announced, and an implementation that raises is reported
# in one line and called no more in that study (but for ``gnorm_after_study``): a tracker's bug never
# costs a computed result (gnorm.observers).


@hookspec
def gnorm_before_study(results_dir: str, experiment: str, runs: int) -> None:
    """Called once in the coordinator process when ``gnorm run`` starts a study, before any cell is
    submitted, with the results directory, the experiment's name and the number of runs still to train::

        @gnorm.hookimpl
        def gnorm_before_study(results_dir, experiment, runs):
            print(f"{experiment}: {runs} runs into {results_dir}")
    """


@hookspec
def gnorm_after_study(results_dir: str, experiment: str, done: int, failed: int) -> None:
    """Called once in the coordinator process when the study ends (also after an interruption or
    failures), with how many runs were stored as finished and as failed in this study::

        @gnorm.hookimpl
        def gnorm_after_study(results_dir, experiment, done, failed):
            print(f"{experiment}: {done} done, {failed} failed")
    """


@hookspec
def gnorm_before_run(run_id: str, stage: str, seed: int, config: dict[str, Any], results_dir: str,
                     cell_label: str, critical_norm: float | None) -> None:
    """Called once per run in the coordinator process, when its cell's results arrive and before that
    run's evaluations are announced. ``config`` is the run's resolved configuration as plain data,
    ``cell_label`` names its cell as the summary tables do (e.g. ``controller.rho=1.1``) and
    ``critical_norm`` is the Wc it was given (None for a stage without one)::

        @gnorm.hookimpl
        def gnorm_before_run(run_id, stage, cell_label, critical_norm):
            tracker.start(run_id, group=f"{stage} {cell_label}", wc=critical_norm)
    """


@hookspec
def gnorm_after_evaluation(run_id: str, step: int, metrics: dict[str, float], results_dir: str,
                           cell_label: str) -> None:
    """Called in the coordinator process for every stored evaluation of a run, in step order, between
    that run's ``gnorm_before_run`` and ``gnorm_after_run``, with its metrics (train_loss, test_loss,
    train_acc, test_acc, weight_norm, one ``norm/<group>`` per parameter group and the keys of the
    observables the experiment switched on)::

        @gnorm.hookimpl
        def gnorm_after_evaluation(run_id, step, metrics):
            tracker.log(run_id, metrics, step=step)
    """


@hookspec
def gnorm_after_run(record: RunRecord, results_dir: str, cell_label: str, critical_norm: float | None) -> None:
    """Called once per run in the coordinator process after it is stored (grokked, or out of budget),
    after its last ``gnorm_after_evaluation``::

        @gnorm.hookimpl
        def gnorm_after_run(record, critical_norm):
            tracker.finish(record.run_id, t_grok=record.t_grok, wc=critical_norm)
    """


# ---------------------------------------------------------------------------------------------------
# Commands.


@hookspec
def gnorm_commands(cli: click.Group) -> None:
    """Add subcommands to ``gnorm``: called with the ``gnorm`` click group when the command line needs
    the plugins' commands (``gnorm --help``, or a command name gnorm itself does not have), before any
    registry is built. Add commands with ``@cli.command()``; a name gnorm already has is refused.

    Keep the module that implements this hook light: ``gnorm --help`` imports it, so import torch and
    gnorm's engine inside the command, not at the top::

        @gnorm.hookimpl
        def gnorm_commands(cli):
            @cli.command()
            @click.argument("directory")
            def hello(directory):
                \"\"\"Say hello to DIRECTORY.\"\"\"
                click.echo(f"hello {directory}")
    """
