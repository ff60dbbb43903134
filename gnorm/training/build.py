"""The build step: where the training core meets the plugin registry. A job's task, modules,
controller, criterion and observers are looked up in the registry it is given and built, then handed
to the loop (gnorm.training.loop), which knows nothing of where they came from."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from gnorm.components import (BatchedOptimizer, ControllerContext, ObservableContext, OptimizerContext, RunRecord,
                              TransformContext)
from gnorm.forks import TrunkState
from gnorm.training import loop
from gnorm.training.batches import MemberBatches
from gnorm.training.compiling import should_compile
from gnorm.training.ensemble import Ensemble
from gnorm.training.jobs import CellJob, TrunkJob
from gnorm.training.numerics import numerics, resolve_device
from gnorm.training.runlog import RunLog
from gnorm.training.segments import SegmentedController, SegmentedOptimizer
from gnorm.training.transforms import GradientTransformChain

if TYPE_CHECKING:
    from gnorm.registry import Registry

#: What a run records at T_grok when no registered observable declares ``at_grok`` (descriptors from
#: before the field existed): the logit scale, as gnorm always has.
UNDECLARED_AT_GROK = ("logit_scale",)


def train_cell(job: CellJob, registry: Registry, on_finished: Callable[[RunRecord, RunLog], None],
               on_progress: Callable[[int, int], None] = lambda step, active: None,
               report: loop.Report = loop.no_report) -> None:
    """Build the cell's components from ``registry`` and train it (see gnorm.training.loop.train_cell),
    under the numerics its runs ask for."""
    with numerics(job.runs[0].training):
        loop.train_cell(job, build_cell(job, registry), on_finished, on_progress, report)


def train_trunk(job: TrunkJob | CellJob, registry: Registry, report: loop.Report = loop.no_report) -> list[TrunkState]:
    """Build a fork's trunk from ``registry`` and train it (see gnorm.training.loop.train_trunk): each
    run's state at ``fork.at_step``, in order. (A CellJob stands for the trunk of its runs.)"""
    job = job if isinstance(job, TrunkJob) else TrunkJob(job.runs)
    with numerics(job.runs[0].training):
        return loop.train_trunk(job, build_trunk(job, registry), report)


def build_cell(job: CellJob, registry: Registry) -> loop.CellParts:
    """A cell's components: ensemble, optimizer, the grok criterion, the observers switched on, and the
    run's controller told the step training resumes after (a fork's ``at_step``, else 0)."""
    first = job.runs[0]
    ensemble, task = build_ensemble(job, registry)
    optimizer = build_cell_optimizer(job, ensemble, registry)
    criterion = registry.get("grok_criterion", first.criterion.name).factory(first.criterion.config)
    context = ObservableContext(dict(ensemble.groups), task.input_spec, task.num_classes)
    observables = [registry.get("observable", name) for name in first.evaluation.observables]
    observers = [observable.factory(observable.config_class(), context) for observable in observables]
    start = first.fork.at_step if first.fork is not None else 0
    return loop.CellParts(ensemble, optimizer, build_controller(job, ensemble, registry, start), criterion, observers,
                          at_grok_keys(registry, first.evaluation.observables),
                          transforms=build_transforms(job, ensemble, registry),
                          snapshots=job.snapshots if job.snapshots is not None and job.snapshots.enabled else None)


def build_trunk(job: TrunkJob, registry: Registry) -> loop.CellParts:
    """A trunk's components: the ensemble built as for its budget of ``fork.at_step``, the optimizer, and the
    fork's controller (no Wc; no criterion or observers, a trunk is never evaluated)."""
    cell = job.as_cell()
    first = cell.runs[0]
    ensemble, _ = build_ensemble(cell, registry)
    optimizer = build_optimizer(ensemble, first.optimizer, registry)
    controller = registry.get("norm_controller", first.fork.controller.name).factory(
        first.fork.controller.config, controller_context(cell, ensemble))
    return loop.CellParts(ensemble, optimizer, controller, None)


def build_ensemble(job: CellJob, registry: Registry) -> tuple[Ensemble, Any]:
    """The cell's ensemble and task, training on the run's loss (the logits divided by its temperature,
    where the loss declares one). Each seed's split and initial weights depend only on its base
    configuration and seed, and so does its stream of mini-batches (its split seed)."""
    first = job.runs[0]
    task = registry.get("task", first.task.name).factory(first.task.config)
    architecture = registry.get("architecture", first.architecture.name)
    modules = []
    for run in job.runs:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(run.init_seed)
            modules.append(architecture.factory(first.architecture.config, task))
    splits = [task.split(run.split_seed) for run in job.runs]
    dtype = {"float32": torch.float32, "float64": torch.float64}[first.training.precision]
    device = resolve_device(first.training.device)
    parameters = sum(p.numel() for p in modules[0].parameters())
    compile = should_compile(first.training.compile, device, first.training.max_steps, parameters)
    loss = registry.get("loss", first.loss.name)
    batches = MemberBatches([run.split_seed for run in job.runs], len(splits[0].train_index),
                            first.training.batch_size, device)
    return Ensemble(modules, splits, device, dtype, compile, first.training.members_per_chunk,
                    loss=loss.factory(first.loss.config), temperature=loss_temperature(loss, first.loss.config),
                    batches=batches), task


def loss_temperature(loss: Any, config: Any) -> float:
    """The output temperature tau of a configured loss: its config's field that the descriptor declares
    (``Loss.temperature``), 1 where it declares none."""
    field = getattr(loss, "temperature", None)
    return float(getattr(config, field)) if field else 1.0


def build_optimizer(ensemble: Ensemble, choice: Any, registry: Registry) -> BatchedOptimizer:
    """The run's optimizer over the ensemble's parameters, told which are weight-norm tensors (the
    only ones decoupled weight decay applies to)."""
    names = list(ensemble.params)
    context = OptimizerContext(ensemble.parameters, names, [n in ensemble.norm_names for n in names])
    return registry.get("optimizer", choice.name).factory(choice.config, context)


def build_cell_optimizer(job: CellJob, ensemble: Ensemble, registry: Registry) -> BatchedOptimizer:
    """The job's optimizer; for a job of several cells whose optimizer options differ (their learning
    rates, see gnorm.merging), each cell's own optimizer on its stretch of members, as one
    :class:`SegmentedOptimizer`."""
    segments = job.segments()
    choices = [job.runs[start].optimizer for start, _ in segments]
    if all(choice == choices[0] for choice in choices):
        return build_optimizer(ensemble, choices[0], registry)
    names = list(ensemble.params)
    decayed = [n in ensemble.norm_names for n in names]
    built = []
    for (start, end), choice in zip(segments, choices):
        context = OptimizerContext([p[start:end] for p in ensemble.parameters], names, decayed)
        built.append((end - start, registry.get("optimizer", choice.name).factory(choice.config, context)))
    return SegmentedOptimizer(built)


def build_transforms(job: CellJob, ensemble: Ensemble, registry: Registry) -> GradientTransformChain:
    """The cell's gradient transforms, in the order its file wrote them, batched over the ensemble."""
    context = transform_context(ensemble)
    transforms = [(choice.name, registry.get("gradient_transform", choice.name).factory(choice.config, context))
                  for choice in job.runs[0].gradient_transforms]
    return GradientTransformChain(transforms, ensemble.params)


def transform_context(ensemble: Ensemble) -> TransformContext:
    """What a gradient transform is told: the weight-norm tensor names, the groups, every parameter name."""
    return TransformContext(list(ensemble.norm_names), dict(ensemble.groups), list(ensemble.params))


def build_controller(job: CellJob, ensemble: Ensemble, registry: Registry, start_step: int = 0) -> Any:
    """The cell's controller; for a job of several cells (``job.segments()``), each cell's own
    controller (its options, its Wc, its member count) on its stretch of members, as one
    :class:`SegmentedController`."""
    built = []
    for start, end in job.segments():
        run = job.runs[start]
        context = controller_context(job, ensemble, start_step, start, end)
        built.append((end - start, registry.get("norm_controller", run.controller.name).factory(run.controller.config,
                                                                                               context)))
    return built[0][1] if len(built) == 1 else SegmentedController(built)


def controller_context(job: CellJob, ensemble: Ensemble, start_step: int = 0, start: int = 0,
                       end: int | None = None) -> ControllerContext:
    """What the controller of the job's runs ``start`` to ``end`` (all by default; one cell's) is told:
    its Wc (total and per group), its member count, where each weight-norm group's tensors sit in
    ``ensemble.norm_tensors``, and the step training resumes from (a fork's ``at_step``, else 0)."""
    runs = job.runs[start:end]
    critical_norm, group_critical_norms = job.norms_of(runs[0])
    positions = {name: i for i, name in enumerate(ensemble.norm_names)}
    groups = {group: [positions[name] for name in names] for group, names in ensemble.groups.items()}
    return ControllerContext(critical_norm, len(runs), groups=groups, group_critical_norms=dict(group_critical_norms),
                             tensor_names=list(ensemble.norm_names), start_step=start_step)


def at_grok_keys(registry: Registry, observables: Sequence[str]) -> tuple[str, ...]:
    """The metric keys whose value at T_grok a run records as ``<key>_at_grok``: those its switched-on
    observables declare (``Observable.at_grok``); ``UNDECLARED_AT_GROK`` where no registered observable
    declares any (descriptors without the field)."""
    declared = any(getattr(registry.get("observable", name), "at_grok", ()) for name in registry.names("observable"))
    if not declared:
        return UNDECLARED_AT_GROK
    return tuple(key for name in observables for key in getattr(registry.get("observable", name), "at_grok", ()))
