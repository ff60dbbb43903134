"""The plugin manager: registers gnorm's built-in plugins (the modules listed in
``gnorm.builtins.BUILTIN_PLUGINS``), then every package of the ``gnorm`` entry-point group; reports the
ones that fail, refuses name conflicts, and answers "which piece is called X".

Built-in and third-party plugins are modules of the same kind, registered by the same code; this
module names no built-in, it only reads the tuple.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any, Iterable

import attrs
import pluggy

from gnorm import PROJECT_NAME, __version__, hookspecs
from gnorm.builtins import BUILTIN_PLUGINS
from gnorm.components import COMPONENT_KINDS, Component
from gnorm.errors import PluginError, Problem

ENTRY_POINT_GROUP = "gnorm"
#: Entry points of plugins that add commands: the only ones the command line imports to list or find a
#: command (``gnorm --help``), so a plugin module that imports torch at the top costs ``--help`` nothing.
COMMANDS_ENTRY_POINT_GROUP = "gnorm.commands"
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
    "gradient_transform": "gnorm_gradient_transforms",
}
REGISTRATION_HOOKS.update({"optimizer": "gnorm_optimizers", "loss": "gnorm_losses"})  # issue 14: how members learn
REGISTRATION_HOOKS["observer"] = "gnorm_observers"  # issue 15: trackers configured by [observers.<name>]
_CLASS_OF_KIND = {cls.kind: cls for cls in COMPONENT_KINDS}
#: Every hook a plugin may implement (registration and lifecycle), as specified in gnorm.hookspecs.
HOOK_NAMES: list[str] = sorted(name for name, value in vars(hookspecs).items()
                               if hasattr(value, f"{PROJECT_NAME}_spec"))
#: The hooks that observe a study and its runs (what makes a plugin an "observer" in ``gnorm plugins``).
LIFECYCLE_HOOKS: tuple[str, ...] = ("gnorm_before_study", "gnorm_before_run", "gnorm_after_evaluation",
                                    "gnorm_after_run", "gnorm_after_study")
COMMAND_HOOK = "gnorm_commands"


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


@attrs.frozen
class Plugin:
    """A registered plugin module: its name (``<package>:<entry point>``), who provides it, the hooks it
    implements and the module's docstring's first line."""

    name: str
    provider: Provider
    hooks: tuple[str, ...]
    summary: str = ""
    module: str = ""

    @property
    def observes(self) -> tuple[str, ...]:
        return tuple(hook for hook in self.hooks if hook in LIFECYCLE_HOOKS)


class UnknownComponent(LookupError):
    def __init__(self, kind: str, name: str, known: list[str]):
        self.kind, self.name, self.known = kind, name, known
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        super().__init__(f"unknown {kind} {name!r}{hint}; known: {', '.join(sorted(known)) or 'none'}")


class Registry:
    """Every loaded component, by kind and name, plus the pluggy hook relay for lifecycle hooks."""

    def __init__(self, plugin_manager: pluggy.PluginManager, registered: dict[tuple[str, str], Registered],
                 failures: list[LoadFailure], plugins: list[Plugin] | None = None):
        self.plugin_manager = plugin_manager
        self.hook = plugin_manager.hook
        self._registered = registered
        self.failures = failures
        self.plugins = plugins or []

    def get(self, kind: str, name: str) -> Component:
        try:
            return self._registered[(kind, name)].component
        except KeyError:
            raise UnknownComponent(kind, name, self.names(kind)) from None

    def names(self, kind: str) -> list[str]:
        return sorted(name for (k, name) in self._registered if k == kind)

    def entries(self) -> list[Registered]:
        return sorted(self._registered.values(), key=lambda r: (r.component.kind, r.component.name))


#: Who provides the built-ins: gnorm itself (``0.0.0`` in a source tree that was never installed).
BUILTIN_PROVIDER = Provider(package=PROJECT_NAME, version=__version__)


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


def _builtin_candidates(failures: list[LoadFailure]) -> list[tuple[str, Any, Provider]]:
    """gnorm's own plugin modules, imported by name from ``BUILTIN_PLUGINS``."""
    candidates = []
    for module_name in BUILTIN_PLUGINS:
        try:
            plugin = importlib.import_module(module_name)
        except (Exception, SystemExit) as error:
            failures.append(LoadFailure(module_name, BUILTIN_PROVIDER, f"{type(error).__name__}: {error}"))
            continue
        candidates.append((f"{PROJECT_NAME}:{module_name.rsplit('.', 1)[-1]}", plugin, BUILTIN_PROVIDER))
    return candidates


def _entry_point_candidates(autoload: bool, failures: list[LoadFailure],
                            groups: tuple[str, ...] = (ENTRY_POINT_GROUP, COMMANDS_ENTRY_POINT_GROUP)
                            ) -> list[tuple[str, Any, Provider]]:
    """Third-party plugin modules of the ``groups`` entry-point groups (none when ``autoload`` is off),
    each module once. Entry points of the gnorm distribution itself (metadata left by an older install)
    are ignored: the built-ins are registered from ``BUILTIN_PLUGINS``."""
    if not autoload:
        return []
    candidates, seen = [], set()
    for group in groups:
        for entry_point in entry_points(group=group):
            provider = _provider_of(entry_point)
            if provider.package == PROJECT_NAME or entry_point.value in seen:
                continue
            seen.add(entry_point.value)
            try:
                plugin = entry_point.load()
            except (Exception, SystemExit) as error:  # a broken third-party package must not take gnorm down
                failures.append(LoadFailure(entry_point.value, provider, f"{type(error).__name__}: {error}"))
                continue
            candidates.append((f"{provider.package}:{entry_point.name}", plugin, provider))
    return candidates


def _autoload(autoload: bool | None) -> bool:
    return os.environ.get(DISABLE_AUTOLOAD_ENV, "") in ("", "0") if autoload is None else autoload


def _register(plugin_manager: pluggy.PluginManager, candidates: list[tuple[str, Any, Provider]],
              problems: list[Problem]) -> dict[str, Provider]:
    """Register each candidate whose hooks are all known and marked; return plugin name -> provider.
    A module named twice (two entry points, or a built-in an entry point names too) is registered once."""
    providers: dict[str, Provider] = {}
    for plugin_name, plugin, provider in candidates:
        if plugin_manager.is_registered(plugin):
            continue
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
    return providers


def _new_plugin_manager() -> pluggy.PluginManager:
    plugin_manager = pluggy.PluginManager(PROJECT_NAME)
    plugin_manager.add_hookspecs(hookspecs)
    return plugin_manager


def _plugins(plugin_manager: pluggy.PluginManager, providers: dict[str, Provider]) -> list[Plugin]:
    plugins = []
    for plugin_name, provider in providers.items():
        module = plugin_manager.get_plugin(plugin_name)
        hooks = tuple(sorted(caller.name for caller in plugin_manager.get_hookcallers(module) or ()))
        doc = (inspect.getdoc(module) or "").strip().splitlines()
        plugins.append(Plugin(plugin_name, provider, hooks, doc[0] if doc else "",
                              getattr(module, "__name__", plugin_name)))
    return plugins


def build_registry(extra_plugins: Iterable[tuple[Any, Provider]] = (), autoload: bool | None = None) -> Registry:
    """Register gnorm's built-in plugins (``BUILTIN_PLUGINS``), then the ``gnorm`` entry points
    (third-party; unless disabled) and ``extra_plugins``, then collect their components.

    Raises :class:`PluginError` for a misspelled hook or a component name given by two packages; a
    plugin that fails to import (even by ``sys.exit()``) or whose registration hook raises or returns
    something other than a list of components is reported in ``failures`` and skipped.
    """
    plugin_manager = _new_plugin_manager()
    failures: list[LoadFailure] = []
    problems: list[Problem] = []
    candidates = _builtin_candidates(failures) + _entry_point_candidates(_autoload(autoload), failures)
    for index, (plugin, provider) in enumerate(extra_plugins):
        candidates.append((f"{provider.package}:extra{index}", plugin, provider))
    providers = _register(plugin_manager, candidates, problems)

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
    return Registry(plugin_manager, registered, failures,
                    [plugin for plugin in _plugins(plugin_manager, providers) if plugin.name not in skipped])


def command_plugins(autoload: bool | None = None) -> tuple[pluggy.PluginManager, list[LoadFailure]]:
    """The plugins of the ``gnorm.commands`` entry-point group in a plugin manager of their own, for
    their ``gnorm_commands``, without gnorm's built-ins and component plugins (they add no commands, and
    may import torch): what the command line loads to list or find a plugin's command. A plugin with a
    misspelled hook is left out here (the registry refuses it when a command builds one)."""
    plugin_manager = _new_plugin_manager()
    failures: list[LoadFailure] = []
    _register(plugin_manager, _entry_point_candidates(_autoload(autoload), failures, (COMMANDS_ENTRY_POINT_GROUP,)),
              [])
    return plugin_manager, failures


@lru_cache(maxsize=1)
def default_registry() -> Registry:
    """The registry of this process, built on first use."""
    return build_registry()
