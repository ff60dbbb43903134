"""Loading an experiment file: read it, structure every table, expand stages and sweeps into runs, and
check what each run would build, collecting every problem with the file and the dotted key.

:func:`load_experiment` reads top to bottom, one named step per part of the file: the command line's
``--set`` keys, the top-level keys, ``[experiment]``, the ``[[stage]]`` tables, their runs (one per
sweep point and seed), the ``[[analysis]]`` tables, the matched source runs of each clamp, the
``[executor]`` table and the ``[snapshots]`` table.
"""

from __future__ import annotations

import copy
import itertools
import math
from pathlib import Path
from typing import Any, Iterable

import attrs

from gnorm.analysis_options import analyses
from gnorm.build_checks import Builds, Origin
from gnorm.converter import Found, converter, structure, suggest, without_index
from gnorm.describe import describe, short
from gnorm.errors import Problem, UserError
from gnorm.experiment_file import parse_experiment
from gnorm.executor_table import DEFAULT_EXECUTOR, resolve_executor_table
from gnorm.overrides import deep_merge, flatten_sweep, merge_options, name_the_command_line, set_dotted
from gnorm.registry import Registry, UnknownComponent
from gnorm.runmodel import (COMPONENT_SECTIONS, MAX_NORM, MAX_RUNS, MAX_STEPS, RUN_SECTIONS, SECTION_CLASSES,
                            ComponentChoice, Experiment, ExperimentMeta, ForkSpec, RunSpec, Stage, cells_of)
from gnorm.runmodel import TRANSFORMS_SECTION
from gnorm.snapshot_table import snapshot_config

TOP_LEVEL_KEYS = ("experiment", *RUN_SECTIONS, "sweep", "zip", "stage", "analysis", "executor", "snapshots",
                  "observers")
STAGE_KEYS = ("name", "critical_norm", "seeds", "fork", "init_weight_decay", "sweep", "zip", "adaptive",
              *RUN_SECTIONS)
FORK_KEYS = ("at_step", "controller")
#: A sweep point: dotted key -> (value, where the file wrote the value).
Point = dict[str, tuple[Any, str]]


def load_experiment(path: str | Path, registry: Registry, overrides: dict[str, Any] | None = None,
                    text: str | None = None) -> Experiment:
    """Read, check and expand an experiment file (or ``text``, the file's content as stored, named by
    ``path``). Raises :class:`UserError` listing every problem."""
    path = Path(path)
    text, data = parse_experiment(path, text)
    loader = Loader(str(path), registry)
    _apply_overrides(loader, data, overrides or {})
    loader.unknown_keys(data, TOP_LEVEL_KEYS, "")
    meta, default_seeds = _experiment_meta(loader, data)
    raw_stages, stage_names = _stage_tables(loader, data)
    stages = _stages(loader, data, raw_stages, stage_names, default_seeds)
    chosen_analyses = analyses(loader, data, stages, stage_names)
    if not loader.problems:
        stages = _attach_critical_norm_sources(loader, stages)
        _refuse_duplicate_runs(loader, stages)
    executor = _executor_table(loader, data)
    snapshots = snapshot_config(data.get("snapshots"), stages, loader.problem)
    observers = _observers_table(loader, data)
    if loader.problems:
        raise UserError(name_the_command_line(loader.problems, overrides or {}, data))
    return Experiment(path, meta, stages, chosen_analyses, text, executor, snapshots, observers)


# ---------------------------------------------------------------------------------------------------
# The steps, in the order load_experiment takes them.


def _apply_overrides(loader: Loader, data: dict, overrides: dict[str, Any]) -> None:
    """Write each ``--set`` key into the file's data; a key that cannot be set names the command line."""
    loader.problems += [Problem("--set", dotted, why) for dotted, value in overrides.items()
                        if (why := set_dotted(data, dotted, value)) is not None]


def _experiment_meta(loader: Loader, data: dict) -> tuple[ExperimentMeta | None, list[int]]:
    """``[experiment]`` structured, and the seeds every stage runs unless it names its own."""
    meta, problems = structure(data.get("experiment", {}), ExperimentMeta)
    for path_parts, message, valid in problems:
        loader.problem(".".join(("experiment",) + path_parts),
                       message + (suggest(path_parts[-1], valid) if valid else ""))
    return meta, (loader.seeds(meta.seeds, "experiment.seeds") if meta else [])


def _stage_tables(loader: Loader, data: dict) -> tuple[list[dict], list[str]]:
    """The ``[[stage]]`` tables (one stage ``main`` when there are none) and their names (``#N`` for a
    stage whose name is missing or not a string); every stage has a distinct string name."""
    raw_stages = data.get("stage", [{"name": "main"}])
    if not isinstance(raw_stages, list) or not all(isinstance(s, dict) for s in raw_stages):
        loader.problem("stage", "expected [[stage]] tables")
        raw_stages = []
    stage_names = [s.get("name") if isinstance(s.get("name"), str) else f"#{i + 1}" for i, s in enumerate(raw_stages)]
    for i, raw_stage in enumerate(raw_stages):
        if "name" not in raw_stage:
            loader.problem(f"stage[{i + 1}].name", "required key is missing")
        elif not isinstance(raw_stage["name"], str):
            loader.problem(f"stage[{i + 1}].name", f"expected a string, found {describe(raw_stage['name'])}")
    for name in {n for n in stage_names if stage_names.count(n) > 1}:
        loader.problem(f"stage[{name}]", "two stages have this name")
    return raw_stages, stage_names


def _stages(loader: Loader, data: dict, raw_stages: list[dict], stage_names: list[str],
            default_seeds: list[int]) -> list[Stage]:
    """Every stage with its runs: the file-level sweep crossed with the stage's own, times its seeds;
    at most ``MAX_RUNS`` runs in the whole file."""
    base = {section: data[section] for section in RUN_SECTIONS if section in data}
    global_points = loader.sweep_points(data.get("sweep"), data.get("zip"), "")
    stages: list[Stage] = []
    planned_runs = 0
    for index, raw_stage in enumerate(raw_stages):
        stage = _read_stage(loader, raw_stage, index, stage_names, base, default_seeds)
        file_points = _stage_global_points(loader, data, raw_stage, global_points)
        planned = len(file_points) * len(stage.points) * len(stage.seeds)
        if planned_runs + planned > MAX_RUNS:
            loader.problem(stage.key, f"plans {planned} runs ({planned_runs} before it); a file may plan "
                           f"at most {MAX_RUNS} runs")
            file_points = []
        planned_runs += planned
        runs = [run for file_point, stage_point in itertools.product(file_points, stage.points)
                for run in _runs_at(loader, stage, {**file_point, **stage_point})]
        stages.append(Stage(stage.name, stage.critical_norm, runs, _adaptive(loader, raw_stage, stage.where, runs)))
    return stages


def _adaptive(loader: Loader, raw_stage: dict, where: str, runs: list[RunSpec]) -> Any:
    """The stage's ``adaptive`` table as a :class:`gnorm.adaptive.AdaptivePolicy` (None when absent); the
    stage must sweep ``controller.rho`` over 3 or more values."""
    if "adaptive" not in raw_stage:
        return None
    from gnorm.adaptive import AdaptivePolicy, cell_x

    policy, problems = structure(raw_stage["adaptive"], AdaptivePolicy)
    for path_parts, message, valid in problems:
        loader.problem(".".join((f"{where}adaptive",) + path_parts),
                       message + (suggest(path_parts[-1], valid) if valid and path_parts else ""))
    levels = {cell_x(run) for run in runs} - {None}
    if runs and len(levels) < 3:
        loader.problem(f"{where}adaptive", f"needs a sweep of controller.rho over 3 or more values, found "
                       f"{len(levels)}")
    return policy


@attrs.frozen
class _StageTable:
    """One ``[[stage]]`` table as read before its sweep points are expanded."""

    name: str
    raw: dict
    #: The base sections with the stage's tables merged over them.
    merged: dict
    #: The run sections the stage writes itself.
    written: dict
    #: Sections the stage writes whole (no base table, or another component): every key is the stage's.
    owned: set[str]
    seeds: list[int]
    critical_norm: float | str | None
    #: The stage's own sweep points.
    points: list[Point]
    fork: ForkSpec | None
    #: The weight decay the stage's seeds are initialized as (None: the stage's own).
    init_weight_decay: float | None = None

    @property
    def where(self) -> str:
        """The prefix of the stage's keys: ``stage[clamp].``."""
        return f"stage[{self.name}]."

    @property
    def key(self) -> str:
        return f"stage[{self.name}]"


def _read_stage(loader: Loader, raw_stage: dict, index: int, stage_names: list[str], base: dict,
                default_seeds: list[int]) -> _StageTable:
    """A stage's keys, seeds, critical norm, own sweep points and fork, checked."""
    name = stage_names[index]
    where = f"stage[{name}]."
    loader.unknown_keys(raw_stage, STAGE_KEYS, where)
    written = {s: raw_stage[s] for s in RUN_SECTIONS if s in raw_stage}
    merged = deep_merge(base, written)
    seeds = loader.seeds(raw_stage["seeds"], f"{where}seeds") if "seeds" in raw_stage else default_seeds
    critical = loader.critical_norm(raw_stage.get("critical_norm"), f"{where}critical_norm",
                                    stage_names, stage_names[:index])
    points = loader.sweep_points(raw_stage.get("sweep"), raw_stage.get("zip"), where)
    fork = loader.fork(raw_stage.get("fork"), where)
    owned = {s for s, value in written.items() if merged[s] == value}
    init_weight_decay = _init_weight_decay(loader, raw_stage.get("init_weight_decay"), f"{where}init_weight_decay")
    return _StageTable(name, raw_stage, merged, written, owned, seeds, critical, points, fork, init_weight_decay)


def _init_weight_decay(loader: Loader, raw: Any, key: str) -> float | None:
    """``init_weight_decay = 1.0``: the stage's seeds start from the weights a run with that weight decay
    starts from (so arms without decay share the decayed arms' initial weights); absent: their own."""
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw) or raw < 0:
        loader.problem(key, f"expected a finite weight decay >= 0, found {describe(raw)}")
        return None
    return float(raw)


@attrs.frozen
class _Where:
    """Where the file wrote a key of one run's configuration: in the sweep point that set it, in the
    stage's own tables, or in the base sections."""

    point: Point
    stage: _StageTable

    def __call__(self, parts: tuple[str, ...]) -> str:
        for length in range(len(parts), 0, -1):
            dotted = ".".join(parts[:length])
            if dotted in self.point:
                return self.point[dotted][1] + (("." + ".".join(parts[length:])) if parts[length:] else "")
        if parts[0] in self.stage.owned:
            return self.stage.where + ".".join(parts)
        table: Any = self.stage.written
        for part in parts:
            if not isinstance(table, dict) or part not in table:
                return ".".join(parts)
            table = table[part]
        return self.stage.where + ".".join(parts)


def _runs_at(loader: Loader, stage: _StageTable, point: Point) -> list[RunSpec]:
    """The stage's runs at one sweep point, one per seed; none where the point's settings have problems."""
    config = copy.deepcopy(stage.merged)
    refused = [(origin_of_value, why) for dotted, (value, origin_of_value) in point.items()
               if (why := set_dotted(config, dotted, value)) is not None]
    for origin_of_value, why in refused:
        loader.problem(without_index(origin_of_value), f"cannot sweep this key: {why}")
    origin = _Where(point, stage)
    resolved = {s: loader.component(s, config.get(s), origin) for s in COMPONENT_SECTIONS}
    resolved.update({s: loader.section(s, config.get(s), origin) for s in SECTION_CLASSES})
    resolved[TRANSFORMS_SECTION] = loader.transforms(config.get(TRANSFORMS_SECTION), origin)
    _check_run(loader, stage, resolved, origin)
    if refused or any(value is None for value in resolved.values()):
        return []
    cell = {dotted: value for dotted, (value, _) in point.items()}
    return [RunSpec(stage=stage.name, cell=cell, seed=seed, critical_norm=stage.critical_norm, fork=stage.fork,
                    init_weight_decay=stage.init_weight_decay, **resolved) for seed in stage.seeds]


def _check_run(loader: Loader, stage: _StageTable, resolved: dict[str, Any], origin: Origin) -> None:
    """What one run's resolved settings must satisfy together: a controller of Wc has a critical norm,
    its observables and components can be built on its architecture, and a fork lies inside the budget
    and before the intervention starts."""
    controller = resolved["controller"]
    descriptor = loader.registry.get("norm_controller", controller.name) if controller is not None else None
    if descriptor is not None and getattr(descriptor, "uses_critical_norm", False) \
            and stage.critical_norm is None and "critical_norm" not in stage.raw:
        loader.problem(f"{stage.where}critical_norm", f"required: controller {descriptor.name!r} holds the "
                       "norm relative to Wc; give a number or the name of a free stage")
    if resolved["evaluation"] is not None:
        loader.builds.observables(resolved["evaluation"], resolved["task"], resolved["architecture"], origin)
    if all(resolved[s] is not None for s in ("task", "architecture", "controller")):
        loader.builds.buildable(resolved, stage.critical_norm, stage.fork, origin, stage.where)
    fork = stage.fork
    if fork is not None and resolved.get(TRANSFORMS_SECTION):
        loader.problem(origin((TRANSFORMS_SECTION,)), "a forked stage cannot chain gradient transforms yet: "
                       "a trunk hands its arms no transform state; drop the fork or the transforms")
    if fork is not None and resolved["training"] is not None and fork.at_step >= resolved["training"].max_steps:
        loader.problem(f"{stage.where}fork.at_step", f"must be below training.max_steps "
                       f"({resolved['training'].max_steps}), found {fork.at_step}")
    field = starts_at(descriptor) if descriptor is not None else None
    start = getattr(controller.config, field, None) if field else None
    if fork is not None and isinstance(start, int) and start < fork.at_step:
        loader.problem(origin(("controller", field)),
                       f"is before fork.at_step ({fork.at_step}): the trunk trains without this controller "
                       f"up to step {fork.at_step}; start it at or after the fork, found {start}")


#: A descriptor without a ``starts_at`` field at all (from before contracts were declared).
_UNDECLARED = object()


def starts_at(descriptor: Any) -> str | None:
    """The config field holding the step a controller's intervention starts at, as its descriptor
    declares (``NormController.starts_at``); a descriptor from before that field existed is read as
    declaring ``t_start``."""
    declared = getattr(descriptor, "starts_at", _UNDECLARED)
    return "t_start" if declared is _UNDECLARED else declared


def _stage_global_points(loader: Loader, data: dict, raw_stage: dict,
                         global_points: list[Point]) -> list[Point]:
    """The file-level sweep points as a stage sees them: a key the stage sweeps itself is taken out of
    the file-level ``sweep`` / ``zip`` (the stage's values replace the file's, never multiply them)."""
    own = set()
    for table in (raw_stage.get("sweep"), raw_stage.get("zip")):
        if isinstance(table, dict):
            own |= set(flatten_sweep(table))
    tables = [data.get("sweep"), data.get("zip")]
    if not own or not any(isinstance(t, dict) and own & set(flatten_sweep(t)) for t in tables):
        return global_points
    problems_before = len(loader.problems)  # the file-level tables were checked once already
    points = loader.sweep_points(*[{k: v for k, v in flatten_sweep(t).items() if k not in own}
                                   if isinstance(t, dict) else t for t in tables], "")
    del loader.problems[problems_before:]
    return points


def _attach_critical_norm_sources(loader: Loader, stages: list[Stage]) -> list[Stage]:
    """Give every run of a stage whose Wc comes from another stage the run ids of its matched cell."""
    by_name = {stage.name: stage for stage in stages}
    attached = []
    for stage in stages:
        if not isinstance(stage.critical_norm, str):
            attached.append(stage)
            continue
        runs = []
        source_cells = cells_of(by_name[stage.critical_norm].runs)
        for cell in cells_of(stage.runs):
            matches = [c for c in source_cells if cell[0].matches_source(c[0])]
            if len(matches) != 1:
                what = "no cell" if not matches else f"{len(matches)} cells"
                loader.problem(f"stage[{stage.name}].critical_norm",
                               f"{what} of stage {stage.critical_norm!r} match{'es' if not matches else ''} cell "
                               f"{cell_text(cell[0].cell)} (same task, architecture, weight decay, precision, "
                               "matmul precision and swept values)")
                continue
            source = tuple(sorted(run.run_id for run in matches[0]))
            runs += [attrs.evolve(run, critical_norm_source=source) for run in cell]
        attached.append(attrs.evolve(stage, runs=runs))
    return attached


def _refuse_duplicate_runs(loader: Loader, stages: list[Stage]) -> None:
    seen: dict[str, RunSpec] = {}
    for stage in stages:
        for run in stage.runs:
            if run.run_id in seen:
                loader.problem(f"stage[{stage.name}]", f"the sweeps give the same run twice (cell "
                               f"{cell_text(run.cell)}, seed {run.seed}); remove the repeated value")
            seen[run.run_id] = run


def cell_text(cell: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in cell.items()) or "(all)"


def _executor_table(loader: Loader, data: dict) -> dict[str, Any]:
    """The ``[executor]`` table as written; resolved when the study runs (see gnorm.executor_table), and
    checked now where its executor is installed."""
    executor = data.get("executor", {})
    if not isinstance(executor, dict):
        loader.problem("executor", f"expected a table, found {describe(executor)}")
        return executor
    if executor.get("name", DEFAULT_EXECUTOR) in loader.registry.names("executor"):
        # An installed executor's table is checked now too, so that a --set among it names the command line.
        loader.problems += resolve_executor_table(executor, loader.registry, loader.source)[1]
    return executor


def _observers_table(loader: Loader, data: dict) -> dict[str, Any]:
    """The ``[observers.<name>]`` tables as written, resolved when the study runs (gnorm.observers, which
    also refuses a name no plugin here gives); the options of an installed observer are checked now, so
    that a ``--set`` among them is named as the command line's."""
    observers = data.get("observers", {})
    if not isinstance(observers, dict):
        loader.problem("observers", f"expected a table of observer name -> options table (like "
                                    f"[observers.tensorboard]), found {describe(observers)}")
        return {}
    for name, options in observers.items():
        if isinstance(options, dict) and name in loader.registry.names("observer"):
            _, problems = structure(options, loader.registry.get("observer", name).config_class)
            loader.report("observers", [((name,) + path, message, valid) for path, message, valid in problems],
                          lambda parts: ".".join(parts))
    return observers


# ---------------------------------------------------------------------------------------------------
# Collecting problems while resolving tables.


class Loader:
    """Collects every problem of one file while resolving it."""

    def __init__(self, source: str, registry: Registry):
        self.source = source
        self.registry = registry
        self.problems: list[Problem] = []
        self._seen: set[tuple[str, str]] = set()
        #: What a worker would build for a run, checked once per (task, architecture).
        self.builds = Builds(registry, self.problem)

    def problem(self, key: str, message: str) -> None:
        """Record a problem at a dotted key of the file (once: repeats over sweep points are one)."""
        if (key, message) not in self._seen:
            self._seen.add((key, message))
            self.problems.append(Problem(self.source, key, message))

    def unknown_keys(self, table: dict, valid: Iterable[str], where: str) -> None:
        """Every key of ``table`` outside ``valid`` is reported, with the nearest valid key."""
        valid = list(valid)
        for key in table:
            if key not in valid:
                self.problem(f"{where}{key}", f"unknown key{suggest(key, valid)}")

    def sweep_points(self, sweep: Any, zipped: Any, where: str) -> list[dict[str, tuple[Any, str]]]:
        """Every point of the grid ``sweep`` crossed with the lists of ``zipped`` taken in step:
        dotted key -> (value, where the value was written)."""
        axes: dict[str, list[list[dict[str, tuple[Any, str]]]]] = {"sweep": [], "zip": []}
        for kind, table in (("sweep", sweep), ("zip", zipped)):
            if table is None:
                continue
            if not isinstance(table, dict):
                self.problem(f"{where}{kind}", f"expected a table of key = [values], found {describe(table)}")
                continue
            for key, values in flatten_sweep(table).items():
                origin = f'{where}{kind}."{key}"'
                section = key.split(".")[0]
                if section not in RUN_SECTIONS or "." not in key:
                    self.problem(origin, f"cannot sweep {key!r}: expected section.key with section one of "
                                         f"{', '.join(RUN_SECTIONS)}{suggest(section, RUN_SECTIONS)}")
                elif not isinstance(values, list) or not values:
                    self.problem(origin, f"expected a non-empty list of values, found {describe(values)}")
                else:
                    axes[kind].append([{key: (value, f"{origin}[{i}]")} for i, value in enumerate(values)])
        grid = axes["sweep"]
        if axes["zip"]:
            lengths = sorted({len(axis) for axis in axes["zip"]})
            if len(lengths) > 1:
                self.problem(f"{where}zip", f"all lists in a zip must have one length, found lengths {lengths}")
            else:
                grid = grid + [[merge_options(combo) for combo in zip(*axes["zip"])]]
        points = math.prod(len(axis) for axis in grid)
        if points > MAX_RUNS:
            self.problem(f"{where}sweep" if axes["sweep"] else f"{where}zip",
                         f"gives {short(points)} sweep points; a file may plan at most {MAX_RUNS} runs")
            return []
        return [merge_options(combo) for combo in itertools.product(*grid)]

    def component(self, section: str, raw: Any, origin: Origin) -> ComponentChoice | None:
        """A component section: its registered plugin (by ``name``, or the section's default) and its
        options structured with that plugin's config class."""
        kind, default = COMPONENT_SECTIONS[section]
        if raw is None:
            raw = {"name": default} if default else None
        if raw is None:
            self.problem(section, "required table is missing")
            return None
        if not isinstance(raw, dict):
            self.problem(origin((section,)), f"expected a table, found {describe(raw)}")
            return None
        options = dict(raw)
        name = options.pop("name", default)
        if name is None:
            self.problem(origin((section, "name")), f"required key is missing (which {kind} to use)")
            return None
        if not isinstance(name, str):
            self.problem(origin((section, "name")), f"expected a string, found {describe(name)}")
            return None
        try:
            component = self.registry.get(kind, name)
        except UnknownComponent as unknown:
            self.problem(origin((section, "name")), str(unknown))
            return None
        config, problems = structure(options, component.config_class)
        self.report(section, problems, origin)
        return ComponentChoice(name, config) if config is not None else None

    def transforms(self, raw: Any, origin: Origin) -> tuple[ComponentChoice, ...] | None:
        """``[gradient_transforms]``: transform name -> its options table, in the file's order, each
        structured with that plugin's config class (None where any has a problem)."""
        section = TRANSFORMS_SECTION
        if raw is None:
            return ()
        if not isinstance(raw, dict):
            self.problem(origin((section,)), f"expected a table of transform name -> options table "
                         f"(like [gradient_transforms.grokfast_ema]), found {describe(raw)}")
            return None
        chain: list[ComponentChoice] = []
        for name, options in raw.items():
            try:
                component = self.registry.get("gradient_transform", name)
            except UnknownComponent as unknown:
                self.problem(origin((section, name)), str(unknown))
                continue
            if not isinstance(options, dict):
                self.problem(origin((section, name)), f"expected a table of {name}'s options (empty for its "
                             f"defaults: {name} = {{}}), found {describe(options)}")
                continue
            config, problems = structure(options, component.config_class)
            self.report(section, [((name,) + path, message, valid) for path, message, valid in problems], origin)
            if config is not None:
                chain.append(ComponentChoice(name, config))
        return tuple(chain) if len(chain) == len(raw) else None

    def fork(self, raw: Any, where: str) -> ForkSpec | None:
        """``fork = { at_step = N, controller = {...} }`` (the trunk's controller, default free)."""
        if raw is None:
            return None
        key = f"{where}fork"
        if not isinstance(raw, dict):
            self.problem(key, f"expected a table like {{ at_step = 800 }}, found {describe(raw)}")
            return None
        self.unknown_keys(raw, FORK_KEYS, f"{key}.")
        at_step = raw.get("at_step")
        if at_step is None:
            self.problem(f"{key}.at_step", "required key is missing (the step whose state every arm starts from)")
        elif isinstance(at_step, bool) or not isinstance(at_step, int) or not 1 <= at_step <= MAX_STEPS:
            self.problem(f"{key}.at_step", f"expected a positive integer of at most {MAX_STEPS}, "
                                           f"found {describe(at_step)}")
            at_step = None
        controller = self.component("controller", raw.get("controller"), lambda parts: f"{key}." + ".".join(parts))
        if controller is not None and getattr(self.registry.get("norm_controller", controller.name),
                                              "uses_critical_norm", False):
            self.problem(f"{key}.controller.name", f"the trunk cannot use {controller.name!r}: it needs Wc; "
                         "give the trunk a controller without a critical norm (default free)")
            return None
        return ForkSpec(at_step, controller) if at_step is not None and controller is not None else None

    def section(self, section: str, raw: Any, origin: Origin) -> Any:
        """A fixed section (``[optimizer]``, ``[training]``...) structured into its class."""
        config, problems = structure(raw if raw is not None else {}, SECTION_CLASSES[section])
        self.report(section, problems, origin)
        return config

    def report(self, section: str, problems: list[Found], origin: Origin) -> None:
        """Structuring problems of a section, each under the key the file wrote it at."""
        for path, message, valid in problems:
            if valid:  # an unknown key: wrong whichever swept value it came with, so one line for the key
                self.problem(without_index(origin((section,) + path)), message + suggest(path[-1], valid))
            else:
                self.problem(origin((section,) + path), message)

    def seeds(self, raw: Any, key: str) -> list[int]:
        """``seeds``: a count (0..N-1) or a list of distinct seeds."""
        try:
            value = converter.structure(raw, int | list[int])
        except Exception as error:
            self.problem(key, str(error))
            return []
        return list(range(value)) if isinstance(value, int) else value

    def critical_norm(self, raw: Any, key: str, stage_names: list[str], earlier: list[str]) -> float | str | None:
        """A stage's ``critical_norm``: a positive finite number, or the name of an earlier stage."""
        if raw is None:
            return None
        if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
            self.problem(key, f"expected a number or the name of an earlier stage, found {describe(raw)}")
            return None
        if isinstance(raw, str) and raw not in earlier:
            where = "a later stage" if raw in stage_names else "no stage"
            self.problem(key, f"{raw!r} is {where}; name an earlier stage{suggest(raw, earlier)} or give a number")
            return None
        if isinstance(raw, float) and not math.isfinite(raw):
            self.problem(key, f"expected a finite positive norm, found {raw}")
            return None
        if not isinstance(raw, str) and raw <= 0:
            self.problem(key, f"expected a positive norm, found {raw}")
            return None
        if not isinstance(raw, str) and raw > MAX_NORM:
            self.problem(key, f"expected a norm of at most {MAX_NORM:g}, found {describe(raw)}")
            return None
        return float(raw) if not isinstance(raw, str) else raw
