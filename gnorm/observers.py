"""Observers of a study: the ``[observers.<name>]`` tables resolved to observer plugins when a study
runs (so results can be analysed where a tracker is not installed), and the lifecycle events, told in
the coordinator to the plain lifecycle hooks and to each configured observer.

What a tracker's bug costs: a listener (one plugin's hook implementations, or one observer) that
raises is reported in one line and hears nothing more in that study but ``after_study`` (so it can
close what it opened); training goes on and every run is still stored. The store is the record and a
tracker holds a copy of it, so a tracker must never cost a computed result; stopping the study for it
would cost the cells in flight. The line is printed when it happens and again among the study's
problems at the end (``gnorm run`` then exits with status 1).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable

import attrs

from gnorm import hookspecs
from gnorm.components import ObserverContext
from gnorm.converter import structure, suggest
from gnorm.describe import describe
from gnorm.errors import Problem, UserError
from gnorm.registry import Registry, UnknownComponent
from gnorm.runmodel import Experiment

#: The experiment file's table of observers: ``[observers.<name>]``, one table of options each.
OBSERVERS_SECTION = "observers"
#: The lifecycle events, in the order of a study, and the arguments each is told with: those of the
#: hook ``gnorm_<event>`` in gnorm.hookspecs.
EVENTS: dict[str, tuple[str, ...]] = {
    event: tuple(inspect.signature(getattr(hookspecs, f"gnorm_{event}")).parameters)
    for event in ("before_study", "before_run", "after_evaluation", "after_run", "after_study")}


@attrs.frozen
class ObserverChoice:
    """An observer plugin the file switches on, and its structured options."""

    name: str
    config: Any


def observer_choices(experiment: Experiment, registry: Registry) -> list[ObserverChoice]:
    """Resolve the file's ``[observers.<name>]`` tables, in the file's order; raises :class:`UserError`
    naming the file and the dotted key of every problem (an unknown name lists the known ones)."""
    source, problems, choices = str(experiment.source), [], []
    table = experiment.observers
    if not isinstance(table, dict):
        raise UserError([Problem(source, OBSERVERS_SECTION, f"expected a table of observer name -> options "
                                 f"table (like [observers.tensorboard]), found {describe(table)}")])
    for name, options in table.items():
        key = f"{OBSERVERS_SECTION}.{name}"
        try:
            component = registry.get("observer", name)
        except UnknownComponent as unknown:
            problems.append(Problem(source, key, f"{unknown} (observers are plugins: see gnorm plugins)"))
            continue
        if not isinstance(options, dict):
            problems.append(Problem(source, key, f"expected a table of {name}'s options (empty for its defaults: "
                                    f"[observers.{name}]), found {describe(options)}"))
            continue
        config, found = structure(options, component.config_class)
        problems += [Problem(source, ".".join((OBSERVERS_SECTION, name) + path),
                             message + (suggest(path[-1], valid) if valid else "")) for path, message, valid in found]
        if config is not None:
            choices.append(ObserverChoice(name, config))
    if problems:
        raise UserError(problems)
    return choices


@attrs.define
class Listener:
    """Who hears the events: a name for messages, and per event the function and the argument names it
    takes (None: all of them)."""

    name: str
    methods: dict[str, tuple[Callable[..., Any], tuple[str, ...] | None]]
    failed: bool = False


def hook_listeners(registry: Registry) -> list[Listener]:
    """One listener per plugin implementing lifecycle hooks, in the order pluggy calls them (the last
    registered first); each implementation is given the arguments it names, as pluggy gives them."""
    listeners: dict[str, Listener] = {}
    for event in EVENTS:
        for implementation in reversed(getattr(registry.hook, f"gnorm_{event}").get_hookimpls()):
            if implementation.hookwrapper or getattr(implementation, "wrapper", False):
                continue  # a wrapper is not an observer; lifecycle hooks are plain calls
            listener = listeners.setdefault(implementation.plugin_name,
                                            Listener(f"plugin {implementation.plugin_name}", {}))
            listener.methods[event] = (implementation.function, tuple(implementation.argnames))
    return list(listeners.values())


def observer_listener(name: str, observer: Any) -> Listener:
    """The lifecycle methods of an observer's object; raises TypeError for a method that requires an
    argument its event does not have."""
    methods: dict[str, tuple[Callable[..., Any], tuple[str, ...] | None]] = {}
    for event, given in EVENTS.items():
        method = getattr(observer, event, None)
        if not callable(method):
            continue
        parameters = inspect.signature(method).parameters.values()
        if any(p.kind is p.VAR_KEYWORD for p in parameters):
            methods[event] = (method, None)
            continue
        named = [p for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        unknown = [p.name for p in parameters if p.default is p.empty and (
            p.kind is p.POSITIONAL_ONLY or (p in named and p.name not in given))]
        if unknown:
            raise TypeError(f"its {event}() requires {', '.join(unknown)}, which gnorm does not give "
                            f"(it gives {', '.join(given)})")
        methods[event] = (method, tuple(p.name for p in named if p.name in given))
    return Listener(f"observer {name}", methods)


class Lifecycle:
    """Tells each event to every listener; a listener that raises is reported (``warn`` and
    ``problems``) and hears nothing more but ``after_study``."""

    def __init__(self, listeners: list[Listener], warn: Callable[[str], None]):
        self.listeners, self.warn = listeners, warn
        self.problems: list[str] = []

    def tell(self, event: str, **arguments: Any) -> None:
        for listener in self.listeners:
            entry = listener.methods.get(event)
            if entry is None or (listener.failed and event != "after_study"):
                continue
            function, names = entry
            try:
                function(**(arguments if names is None else {name: arguments[name] for name in names}))
            except Exception as error:  # a tracker's bug: reported, never fatal (see the module's docstring)
                self.failed(listener, event, arguments, error)

    def failed(self, listener: Listener, event: str, arguments: dict[str, Any], error: Exception) -> None:
        run_id = arguments.get("run_id") or getattr(arguments.get("record"), "run_id", None)
        about = f" (run {run_id})" if run_id else ""
        text = " ".join(str(error).split()) or "(no message)"
        more = "" if event == "after_study" else "; it hears nothing more in this study, the runs are still stored"
        line = f"{listener.name} failed in {event}{about}: {type(error).__name__}: {text}"[:400] + more
        listener.failed = True
        self.warn(line)
        self.problems.append(line)


def study_lifecycle(experiment: Experiment, registry: Registry, results_dir: str | Path,
                    choices: list[ObserverChoice] | None, warn: Callable[[str], None]) -> Lifecycle:
    """The plain lifecycle hooks' listeners, then each chosen observer's (``choices``; None: the file's
    ``[observers]`` tables), built by its factory; an observer that cannot be built is a
    :class:`UserError` naming its table, raised before anything trains."""
    choices = observer_choices(experiment, registry) if choices is None else choices
    context = ObserverContext(str(Path(results_dir).resolve()), experiment.meta.name, str(experiment.source))
    listeners = hook_listeners(registry)
    for choice in choices:
        try:
            observer = registry.get("observer", choice.name).factory(choice.config, context)
            listeners.append(observer_listener(choice.name, observer))
        except Exception as error:
            text = " ".join(str(error).split()) or "(no message)"
            raise UserError([Problem(str(experiment.source), f"{OBSERVERS_SECTION}.{choice.name}",
                                     f"observer {choice.name!r} could not start: {type(error).__name__}: "
                                     f"{text}"[:500])]) from None
    return Lifecycle(listeners, warn)
