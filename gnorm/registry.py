"""The plugin manager: loads every plugin through the ``gnorm`` entry-point group, reports the ones that
fail, refuses name conflicts, and answers "which piece is called X".

Built-in pieces arrive by the same path as third-party ones (gnorm's own pyproject declares them), so
this module never imports a built-in by name.
"""

from __future__ import annotations

import difflib
import inspect
import os
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any, Iterable

import attrs
import pluggy

from gnorm import PROJECT_NAME, hookspecs
from gnorm.components import COMPONENT_KINDS, Component
from gnorm.errors import PluginError, Problem

ENTRY_POINT_GROUP = "gnorm"
#: Set to 1 to load only gnorm's own plugins (third-party entry points are ignored).
DISABLE_AUTOLOAD_ENV = "GNORM_DISABLE_PLUGIN_AUTOLOAD"
#: How to get past a plugin set that cannot be used, said with each such problem (two packages, one).
WAY_OUT = f"uninstall one of them, or set {DISABLE_AUTOLOAD_ENV}=1 to load gnorm's own plugins only"
WAY_OUT_ONE = f"fix or uninstall that package, or set {DISABLE_AUTOLOAD_ENV}=1 to load gnorm's own plugins only"

#: Registration hook per component kind.
REGISTRATION_HOOKS: dict[str, str] = {
    "task": "gnorm_tasks",
    "architecture": "gnorm_architectures",
    "norm_controller": "gnorm_norm_controllers",
    "grok_criterion": "gnorm_grok_criteria",
    "analyzer": "gnorm_analyzers",
    "observable": "gnorm_observables",
    "executor": "gnorm_executors",
}
_CLASS_OF_KIND = {cls.kind: cls for cls in COMPONENT_KINDS}
#: Every hook a plugin may implement (registration and lifecycle), as specified in gnorm.hookspecs.
HOOK_NAMES: list[str] = sorted(name for name, value in vars(hookspecs).items()
                               if hasattr(value, f"{PROJECT_NAME}_spec"))


@attrs.frozen
class Provider:
    package: str
    version: str

    def __str__(self) -> str:
        return f"{self.package} {self.version}"


@attrs.frozen
class LoadFailure:
    """An entry point that could not be loaded; it is skipped, never fatal."""

    entry_point: str
    provider: Provider
    error: str


@attrs.frozen
class Registered:
    component: Component
    provider: Provider


class UnknownComponent(LookupError):
    def __init__(self, kind: str, name: str, known: list[str]):
        self.kind, self.name, self.known = kind, name, known
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        super().__init__(f"unknown {kind} {name!r}{hint}; known: {', '.join(sorted(known)) or 'none'}")


class Registry:
    """Every loaded component, by kind and name, plus the pluggy hook relay for lifecycle hooks."""

    def __init__(self, plugin_manager: pluggy.PluginManager, registered: dict[tuple[str, str], Registered],
                 failures: list[LoadFailure]):
        self.plugin_manager = plugin_manager
        self.hook = plugin_manager.hook
        self._registered = registered
        self.failures = failures

    def get(self, kind: str, name: str) -> Component:
        try:
            return self._registered[(kind, name)].component
        except KeyError:
            raise UnknownComponent(kind, name, self.names(kind)) from None

    def names(self, kind: str) -> list[str]:
        return sorted(name for (k, name) in self._registered if k == kind)

    def entries(self) -> list[Registered]:
        return sorted(self._registered.values(), key=lambda r: (r.component.kind, r.component.name))


def _provider_of(entry_point: Any) -> Provider:
    dist = getattr(entry_point, "dist", None)
    if dist is None:
        return Provider(package="?", version="?")
    return Provider(package=dist.metadata["Name"], version=dist.version)


def _hook_problems(plugin: Any, plugin_manager: pluggy.PluginManager) -> list[str]:
    """Functions named ``gnorm_*`` that pluggy would silently ignore: a name that is no hook (with the
    nearest hook name), or a hook name without the ``@gnorm.hookimpl`` marker."""
    problems = []
    for attribute in dir(plugin):
        if not attribute.startswith(f"{PROJECT_NAME}_") or not inspect.isroutine(getattr(plugin, attribute, None)):
            continue
        if attribute not in HOOK_NAMES:
            close = difflib.get_close_matches(attribute, HOOK_NAMES, n=1)
            problems.append(f"unknown hook {attribute}" + (f" (did you mean {close[0]}?)" if close else ""))
        elif plugin_manager.parse_hookimpl_opts(plugin, attribute) is None:
            problems.append(f"hook {attribute} is not marked with @gnorm.hookimpl")
    return problems


def _components_by_plugin(plugin_manager: pluggy.PluginManager, providers: dict[str, Provider],
                          failures: list[LoadFailure]) -> tuple[dict[str, list[Component]], set[str]]:
    """Each registered plugin's components, in hook order, and the plugins to skip: a registration hook
    that raises is reported and only its own components are left out; one that returns something other
    than a list of its kind's components is reported and its whole plugin is skipped."""
    offered: dict[str, list[Component]] = {name: [] for name in providers}
    skipped: set[str] = set()
    for kind, hook_name in REGISTRATION_HOOKS.items():
        expected = _CLASS_OF_KIND[kind]
        for implementation in getattr(plugin_manager.hook, hook_name).get_hookimpls():
            provider = providers[implementation.plugin_name]
            where = f"{implementation.plugin_name}.{hook_name}"
            try:
                returned = implementation.function()
            except (Exception, SystemExit) as error:
                failures.append(LoadFailure(where, provider, f"{type(error).__name__}: {error}"))
                continue
            wrong = returned_problem(returned, expected)
            if wrong:
                failures.append(LoadFailure(where, provider, f"{wrong}; the plugin is skipped"))
                skipped.add(implementation.plugin_name)
                continue
            offered[implementation.plugin_name] += list(returned)
    return offered, skipped


def returned_problem(returned: Any, expected: type) -> str:
    """What is wrong with a registration hook's return value (a list or tuple of ``expected``), or ""."""
    if not isinstance(returned, (list, tuple)):
        return f"returned {_shown(returned)}, expected a list of gnorm.{expected.__name__}"
    for item in returned:
        if not isinstance(item, expected):
            return f"returned a list holding {_shown(item)}, expected only gnorm.{expected.__name__}"
    return ""


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def build_registry(extra_plugins: Iterable[tuple[Any, Provider]] = (), autoload: bool | None = None) -> Registry:
    """Load plugins from entry points (gnorm's own always; third-party unless disabled) and
    ``extra_plugins``, then collect their components.

    Raises :class:`PluginError` for a misspelled hook or a component name given by two packages; a
    plugin that fails to import (even by ``sys.exit()``) or whose registration hook raises or returns
    something other than a list of components is reported in ``failures`` and skipped.
    """
    if autoload is None:
        autoload = os.environ.get(DISABLE_AUTOLOAD_ENV, "") in ("", "0")
    plugin_manager = pluggy.PluginManager(PROJECT_NAME)
    plugin_manager.add_hookspecs(hookspecs)
    failures: list[LoadFailure] = []
    providers: dict[str, Provider] = {}
    problems: list[Problem] = []

    candidates: list[tuple[str, Any, Provider]] = []
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        provider = _provider_of(entry_point)
        if not autoload and provider.package != PROJECT_NAME:
            continue
        try:
            plugin = entry_point.load()
        except (Exception, SystemExit) as error:  # a broken third-party package must not take gnorm down
            failures.append(LoadFailure(entry_point.value, provider, f"{type(error).__name__}: {error}"))
            continue
        candidates.append((f"{provider.package}:{entry_point.name}", plugin, provider))
    for index, (plugin, provider) in enumerate(extra_plugins):
        candidates.append((f"{provider.package}:extra{index}", plugin, provider))

    for plugin_name, plugin, provider in candidates:
        if plugin_manager.is_registered(plugin):
            continue  # two entry points naming one module
        wrong = _hook_problems(plugin, plugin_manager)
        if wrong:
            problems.append(Problem(f"plugin {plugin_name} ({provider})", "", "; ".join(wrong) + f"; {WAY_OUT_ONE}"))
            continue
        try:
            plugin_manager.register(plugin, name=plugin_name)
            plugin_manager.check_pending()  # a hookimpl(specname=...) that names no hook
        except pluggy.PluginValidationError as error:  # or an argument the hookspec does not have
            problems.append(Problem(f"plugin {plugin_name} ({provider})", "", " ".join(str(error).split())
                                    + f"; {WAY_OUT_ONE}"))
            if plugin_manager.is_registered(plugin):  # register() may stop half way
                plugin_manager.unregister(plugin)
            continue
        providers[plugin_name] = provider

    offered, skipped = _components_by_plugin(plugin_manager, providers, failures)
    registered: dict[tuple[str, str], Registered] = {}
    for plugin_name, components in offered.items():
        if plugin_name in skipped:
            continue
        provider = providers[plugin_name]
        for component in components:
            key = (component.kind, component.name)
            if key in registered:
                first = registered[key].provider
                problems.append(Problem("plugins", f"{component.kind} {component.name!r}",
                                        f"given by two packages: {first} and {provider}; {WAY_OUT}"))
                continue
            registered[key] = Registered(component, provider)
    if problems:
        raise PluginError(problems)
    return Registry(plugin_manager, registered, failures)


@lru_cache(maxsize=1)
def default_registry() -> Registry:
    """The registry of this process, built on first use."""
    return build_registry()
