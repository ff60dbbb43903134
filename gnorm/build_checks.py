"""What a worker will build, checked when the file loads: for each run's settings the task, the
architecture on the meta device (no memory, no arithmetic), its weight-norm groups against what the
observables and the controller declare they need, the controllers (the run's and a fork's trunk's), the
grok criterion and the observables. Every refusal they would raise when the cell trains is reported now,
under the file's key, so a user error never reaches a worker to be retried as a crash."""

from __future__ import annotations

import json
from typing import Any, Callable

import attrs

from gnorm.components import ControllerContext, ObservableContext, TransformContext
from gnorm.converter import converter
from gnorm.errors import UserError
from gnorm.registry import Registry, UnknownComponent
from gnorm.runmodel import MAX_PARAMETERS, ComponentChoice, EvaluationConfig, ForkSpec

#: Where a key of the run's configuration was written: (section, key, ...) -> the dotted key to report.
Origin = Callable[[tuple[str, ...]], str]
#: Records a problem at a dotted key.
Report = Callable[[str, str], None]


def declared_groups(descriptor: Any, config: Any) -> list[str]:
    """The weight-norm groups a configured controller declares it needs (its descriptor's ``groups``, a
    callable of its config); none where it declares nothing."""
    groups = getattr(descriptor, "groups", None)
    return list(groups(config)) if callable(groups) else []


class Builds:
    """The checks, with each (task, architecture) built once per file."""

    def __init__(self, registry: Registry, problem: Report):
        self.registry = registry
        self.problem = problem
        self._built: dict[str, tuple[Any, Any]] = {}

    def module(self, task: ComponentChoice, architecture: ComponentChoice) -> Any:
        """The architecture's module on the task, built on the meta device, once per (task, architecture):
        the module, the UserError its task or architecture raised, or None where building it failed
        otherwise (left for training to report)."""
        return self._build(task, architecture)[0]

    def task_data(self, task: ComponentChoice, architecture: ComponentChoice) -> Any:
        """The task's data built with that module (None where it was not built)."""
        return self._build(task, architecture)[1]

    def _build(self, task: ComponentChoice, architecture: ComponentChoice) -> tuple[Any, Any]:
        import torch  # only a file whose runs resolve pays for it

        cache_key = json.dumps([task.name, converter.unstructure(task.config), architecture.name,
                                converter.unstructure(architecture.config)], sort_keys=True, default=str)
        if cache_key not in self._built:
            try:
                task_data = self.registry.get("task", task.name).factory(task.config)
                with torch.device("meta"):
                    module = self.registry.get("architecture", architecture.name).factory(architecture.config,
                                                                                          task_data)
                self._built[cache_key] = (module, task_data)
            except UserError as error:
                self._built[cache_key] = (error, None)
            except Exception:  # noqa: BLE001 - not the file's fault as far as the loader can tell
                self._built[cache_key] = (None, None)
        return self._built[cache_key]

    def architecture_groups(self, task: ComponentChoice, architecture: ComponentChoice) -> list[str]:
        """The weight-norm groups of an architecture on a task; none where it cannot be built."""
        built = self.module(task, architecture)
        return [] if isinstance(built, UserError) or built is None else list(built.weight_norm_groups())

    def observables(self, evaluation: EvaluationConfig, task: ComponentChoice | None,
                    architecture: ComponentChoice | None, origin: Origin) -> None:
        """Every name in ``evaluation.observables`` is a registered observable, listed once, whose
        required weight-norm groups the architecture has."""
        key = origin(("evaluation", "observables"))
        names = evaluation.observables
        for index, name in enumerate(names):
            try:
                observable = self.registry.get("observable", name)
            except UnknownComponent as unknown:
                self.problem(f"{key}[{index}]", str(unknown))
                continue
            if names.index(name) != index:
                self.problem(f"{key}[{index}]", f"{name!r} is listed twice")
            if observable.requires_groups and task is not None and architecture is not None:
                groups = self.architecture_groups(task, architecture)
                missing = [g for g in observable.requires_groups if g not in groups]
                if missing:
                    self.problem(f"{key}[{index}]", f"observable {name!r} needs the weight-norm group(s) "
                                 f"{', '.join(map(repr, missing))}, which architecture {architecture.name!r} "
                                 f"does not have here (its groups: {', '.join(groups) or 'none'})")

    def buildable(self, resolved: dict[str, Any], critical: float | str | None, fork: ForkSpec | None,
                  origin: Origin, where: str) -> None:
        """Build what a worker would build for these settings, without weights: every refusal the task,
        the architecture, a controller, the criterion or an observable would raise when the cell trains
        is reported now, under its key."""
        task, architecture = resolved["task"], resolved["architecture"]
        module = self.module(task, architecture)
        if isinstance(module, UserError):
            for problem in module.problems:
                section = "architecture" if problem.message.startswith("architecture:") else "task"
                message = problem.message.removeprefix(f"{section}:").strip()
                key = problem.key or f"{section}.name"
                self.problem(origin(tuple(key.split("."))), message)
            return
        if module is None:
            return
        parameters = sum(parameter.numel() for parameter in module.parameters())
        if parameters > MAX_PARAMETERS:
            self.problem(origin(("architecture",)), f"has {parameters:_} parameters per seed on this task; "
                         f"gnorm trains at most {MAX_PARAMETERS:_} (2^31)")
        groups = module.weight_norm_groups()
        arms = [(resolved["controller"], origin)]
        if fork is not None:
            arms.append((fork.controller, lambda parts: f"{where}fork." + ".".join(parts)))
        context = _controller_context(groups, critical, fork)
        for choice, where_is in arms:
            if self._has_declared_groups(choice, architecture.name, list(groups), where_is):
                self._refusals(lambda: self.registry.get("norm_controller", choice.name).factory(choice.config,
                                                                                                 context),
                               "controller", where_is)
        names = [name for group in groups.values() for name in group]
        transform_context = TransformContext(names, dict(groups), [name for name, _ in module.named_parameters()])
        for choice in resolved.get("gradient_transforms") or ():
            self._refusals(lambda: self.registry.get("gradient_transform", choice.name).factory(
                choice.config, transform_context), f"gradient_transforms.{choice.name}", origin)
        if resolved.get("criterion") is not None:
            criterion = resolved["criterion"]
            self._refusals(lambda: self.registry.get("grok_criterion", criterion.name).factory(criterion.config),
                           "criterion", origin)
        if resolved.get("evaluation") is not None:
            self._observers(resolved["evaluation"], groups, self.task_data(task, architecture), origin)
        if resolved.get("training") is not None and resolved["training"].batch_size:
            self._batch_fits(resolved["training"].batch_size, self.task_data(task, architecture), origin)

    def _batch_fits(self, batch_size: int, task_data: Any, origin: Origin) -> None:
        """A mini-batch is drawn from one seed's training set without replacement: at most n_train."""
        train_size = len(task_data.split(0).train_index) if task_data is not None else batch_size
        if batch_size > train_size:
            self.problem(origin(("training", "batch_size")), f"must be at most the {train_size} training "
                         f"examples of this task (0 for full batch), found {batch_size}")

    def _has_declared_groups(self, choice: ComponentChoice, architecture: str, groups: list[str],
                             where_is: Origin) -> bool:
        """Does the architecture have every weight-norm group the controller declares it needs? Each
        missing one is reported under the option that names it (``controller.group``)."""
        try:
            needed = declared_groups(self.registry.get("norm_controller", choice.name), choice.config)
        except Exception:  # noqa: BLE001 - a plugin's declaration that fails is left for building to report
            return True
        missing = [group for group in dict.fromkeys(needed) if group not in groups]
        for group in missing:
            option = next((name for name, value in _options(choice.config) if value == group), None)
            self.problem(where_is(("controller", option) if option else ("controller",)),
                         f"controller {choice.name!r} needs the weight-norm group {group!r}, which architecture "
                         f"{architecture!r} does not have here (its groups: {', '.join(groups) or 'none'})")
        return not missing

    def _observers(self, evaluation: EvaluationConfig, groups: dict[str, list[str]], task_data: Any,
                   origin: Origin) -> None:
        """Build each observable as the engine does, with the architecture's groups and the task's shapes."""
        if task_data is None:
            return
        context = ObservableContext(dict(groups), task_data.input_spec, task_data.num_classes)
        key = origin(("evaluation", "observables"))
        for index, name in enumerate(evaluation.observables):
            try:
                observable = self.registry.get("observable", name)
            except UnknownComponent:  # reported by the names check
                continue
            self._refusals(lambda: observable.factory(observable.config_class(), context), "evaluation",
                           lambda parts, index=index: f"{key}[{index}]")

    def _refusals(self, build: Callable[[], Any], section: str, where_is: Origin) -> None:
        """Run ``build``; report each problem of a UserError it raises under the section's key (a problem
        whose key names another section is reported at the section itself). Other failures are left for
        training to report."""
        try:
            build()
        except UserError as error:
            for problem in error.problems:
                key = problem.key if problem.key.startswith(section) else section
                self.problem(where_is(tuple(key.split("."))), problem.message)
        except Exception:  # noqa: BLE001 - left for training to report
            pass


def _controller_context(groups: dict[str, list[str]], critical: float | str | None,
                        fork: ForkSpec | None) -> ControllerContext:
    """The context a worker gives the controllers, with Wc 1.0 where it comes from another stage."""
    names = [name for group in groups.values() for name in group]
    positions = {name: i for i, name in enumerate(names)}
    return ControllerContext(critical if isinstance(critical, float) else 1.0, 1,
                             groups={g: [positions[n] for n in members] for g, members in groups.items()},
                             tensor_names=names, start_step=fork.at_step if fork else 0)


def _options(config: Any) -> list[tuple[str, Any]]:
    """(field name, value) of an attrs config; none for anything else."""
    return [(field.name, getattr(config, field.name)) for field in attrs.fields(type(config))] \
        if attrs.has(type(config)) else []
