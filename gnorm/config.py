"""Experiment files: TOML structured into attrs classes by a strict cattrs converter.

A file has base sections (``[task]``, ``[architecture]``, ``[controller]``, ``[criterion]``,
``[loss]``, ``[optimizer]``, ``[training]``, ``[evaluation]``), optional ``[sweep]`` / ``[zip]`` tables
that apply to every stage, and ``[[stage]]`` tables that override any base section and add their own
sweeps. Each stage expands to runs: one per sweep point and seed. Every problem in a file is collected and reported with
the file and the dotted key, all at once.
"""

from __future__ import annotations

import collections.abc
import copy
import difflib
import functools
import itertools
import json
import math
import os
import re
import stat
import sys
import typing
from pathlib import Path
from typing import Any, Iterable

import attrs
import cattrs
import cattrs.cols
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

from gnorm.components import ControllerContext
from gnorm.errors import Problem, UserError
from gnorm.registry import Registry, UnknownComponent
from gnorm.science import derive_seed

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


# ---------------------------------------------------------------------------------------------------
# The fixed sections.


def _plain_name(instance: Any, attribute: Any, value: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value):
        raise ValueError(f"'{attribute.name}' must be letters, digits, '_', '.' or '-' (it names a folder), "
                         f"found {value!r}")


def _unit_interval(instance: Any, attribute: Any, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"'{attribute.name}' must be in [0, 1), found {value}")


#: The longest training budget a file may ask for, and the largest critical norm it may give.
MAX_STEPS = 10**9
MAX_NORM = 1e12
#: The most evaluation points a geometric schedule may ask for.
MAX_POINTS = 100_000
#: The most parameters one seed's model may have.
MAX_PARAMETERS = 2**31
#: The most runs one file may plan (all stages, sweep points and seeds together).
MAX_RUNS = 100_000


def _at_most_max_steps(instance: Any, attribute: Any, value: int) -> None:
    if value > MAX_STEPS:
        raise ValueError(f"'{attribute.name}' must be at most {MAX_STEPS:_} steps, found {_short(value)}")


def _device_name(instance: Any, attribute: Any, value: str) -> None:
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
        raise ValueError(f"'{attribute.name}' must be auto, cpu, cuda, cuda:N or mps, found {value!r}")


def _float32_matmuls_on_a_named_device(instance: Any, attribute: Any, value: str) -> None:
    if value != "full" and instance.precision != "float32":
        raise ValueError(f"{value!r} applies to float32 matmuls; with precision = {instance.precision!r} "
                         f"use \"full\"")
    if value != "full" and instance.device == "auto":
        raise ValueError(f"{value!r} is computed on one kind of device: set training.device to "
                         f"{'cpu' if value == 'bfloat16' else 'cuda'} (auto may pick another on a worker)")


@attrs.frozen
class ExperimentMeta:
    name: str = attrs.field(validator=_plain_name)
    seeds: int | list[int] = 4
    output_dir: str | None = None
    description: str = ""


@attrs.frozen
class OptimizerConfig:
    """Full-batch AdamW with decoupled weight decay on the weight-norm tensors only."""

    lr: float = attrs.field(default=1e-3, validator=attrs.validators.gt(0))
    weight_decay: float = attrs.field(default=1.0, validator=attrs.validators.ge(0))
    beta1: float = attrs.field(default=0.9, validator=_unit_interval)
    beta2: float = attrs.field(default=0.999, validator=_unit_interval)
    eps: float = attrs.field(default=1e-8, validator=attrs.validators.gt(0))


@attrs.frozen
class TrainingConfig:
    max_steps: int = attrs.field(default=10_000, validator=[attrs.validators.gt(0), _at_most_max_steps])
    precision: str = attrs.field(default="float32", validator=attrs.validators.in_(["float32", "float64"]))
    #: How float32 matmuls compute, opt-in and part of a run's identity (precision changes the science:
    #: softmax collapse, paper B): "full" (float32 throughout, whatever the process had set),
    #: "bfloat16" (inputs rounded to 8 significant bits, products accumulated in float32; oneDNN on a
    #: CPU, ``device = "cpu"``) or "tensorfloat32" (11 significant bits; CUDA from compute capability
    #: 8.0, ``device = "cuda"``). Everything but the matmuls stays float32.
    matmul_precision: str = attrs.field(default="full", validator=[
        attrs.validators.in_(["full", "bfloat16", "tensorfloat32"]), _float32_matmuls_on_a_named_device])
    device: str = attrs.field(default="auto", validator=_device_name)
    #: torch.compile the forward and backward: "auto" (when a compiler is present and the cell is big
    #: enough to repay compiling), "on" or "off". The eager path computes the same function.
    compile: str = attrs.field(default="auto", validator=attrs.validators.in_(["auto", "on", "off"]))
    #: Members trained per chunk (0: chosen from the batch size so a chunk's activations stay in cache).
    members_per_chunk: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    #: Wall seconds between checkpoints of a cell in flight (see gnorm.checkpoints): one is written at
    #: the first evaluation after this many seconds; 0 turns checkpoints off. Never changes a result.
    checkpoint_seconds: float = attrs.field(default=300.0, validator=attrs.validators.ge(0))


@attrs.frozen
class EvaluationConfig:
    """When runs are evaluated: ``geometric`` (``points`` steps on a geometric grid over the budget,
    paper A) or ``every`` (every ``every`` steps, paper B). With ``stop_when_grokked`` a run stops at
    its T_grok, and a cell ends once all its seeds have grokked. ``observables``: names of registered
    observables measured at every evaluation besides the losses, accuracies and norms."""

    schedule: str = attrs.field(default="geometric", validator=attrs.validators.in_(["geometric", "every"]))
    points: int = attrs.field(default=360, validator=[attrs.validators.gt(0), attrs.validators.le(MAX_POINTS)])
    every: int = attrs.field(default=25, validator=attrs.validators.gt(0))
    stop_when_grokked: bool = True
    observables: list[str] = attrs.field(factory=list)


@attrs.frozen
class LossConfig:
    """The training loss on logits divided by the output temperature: ``cross_entropy`` or ``mse``
    (paper B). ``temperature`` tau > 0 divides the logits before the loss and is outside the weight norm;
    evaluation loss and accuracy see the same logits / tau."""

    name: str = attrs.field(default="cross_entropy", validator=attrs.validators.in_(["cross_entropy", "mse"]))
    temperature: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))


SECTION_CLASSES: dict[str, type] = {
    "loss": LossConfig,
    "optimizer": OptimizerConfig,
    "training": TrainingConfig,
    "evaluation": EvaluationConfig,
}
#: Sections that name a plugin component, with the component kind and the default choice.
COMPONENT_SECTIONS: dict[str, tuple[str, str | None]] = {
    "task": ("task", None),
    "architecture": ("architecture", None),
    "controller": ("norm_controller", "free"),
    "criterion": ("grok_criterion", "test_accuracy"),
}
RUN_SECTIONS = tuple(COMPONENT_SECTIONS) + tuple(SECTION_CLASSES)
#: Training settings that choose how a run is computed, not what it computes.
EXECUTION_SETTINGS = ("device", "compile", "members_per_chunk", "checkpoint_seconds")
TOP_LEVEL_KEYS = ("experiment", *RUN_SECTIONS, "sweep", "zip", "stage", "analysis", "executor")
STAGE_KEYS = ("name", "critical_norm", "seeds", "fork", "sweep", "zip", *RUN_SECTIONS)
FORK_KEYS = ("at_step", "controller")


# ---------------------------------------------------------------------------------------------------
# What a file resolves to.


@attrs.frozen
class ComponentChoice:
    name: str
    config: Any


@attrs.frozen
class ForkSpec:
    """A same-state fork: the run starts from the state its seed reaches at ``at_step`` under the
    trunk ``controller`` (same base configuration, optimizer, precision and matmul precision)."""

    at_step: int
    controller: ComponentChoice


@attrs.frozen
class RunSpec:
    """One run: a stage, a cell (the swept values) and a seed, with every setting resolved."""

    stage: str
    cell: dict[str, Any]
    seed: int
    task: ComponentChoice
    architecture: ComponentChoice
    controller: ComponentChoice
    criterion: ComponentChoice
    optimizer: OptimizerConfig
    training: TrainingConfig
    evaluation: EvaluationConfig
    critical_norm: float | str | None
    #: The runs whose median norm at grok is this run's Wc (when ``critical_norm`` names a stage).
    critical_norm_source: tuple[str, ...] = ()
    loss: LossConfig = LossConfig()
    fork: ForkSpec | None = None

    def plain(self) -> dict[str, Any]:
        """The run's configuration as plain JSON data. ``fork`` and ``evaluation.observables`` appear
        only when used, so runs that use neither keep the ids they always had."""
        data: dict[str, Any] = {"stage": self.stage, "seed": self.seed, "critical_norm": self.critical_norm,
                                "critical_norm_source": list(self.critical_norm_source)}
        for section in COMPONENT_SECTIONS:
            choice = getattr(self, section)
            data[section] = {"name": choice.name, **converter.unstructure(choice.config)}
        for section in SECTION_CLASSES:
            data[section] = converter.unstructure(getattr(self, section))
        if not self.evaluation.observables:
            del data["evaluation"]["observables"]
        if self.fork is not None:
            data["fork"] = {"at_step": self.fork.at_step, "controller": {
                "name": self.fork.controller.name, **converter.unstructure(self.fork.controller.config)}}
        return data

    def identity(self) -> dict[str, Any]:
        """What makes a run this run: its configuration without the settings that only choose how it
        is computed (device, compile, members per chunk), so changing those never retrains."""
        data = self.plain()
        data["training"] = {k: v for k, v in data["training"].items() if k not in EXECUTION_SETTINGS}
        if self.loss == LossConfig():  # runs from before [loss] existed keep their ids
            del data["loss"]
        if self.training.matmul_precision == "full":  # and runs from before matmul_precision existed
            del data["training"]["matmul_precision"]
        return data

    @property
    def run_id(self) -> str:
        """Content address of the run: the same settings always give the same id. A clamp run's id
        includes the runs its Wc comes from, so new source seeds mean new clamp runs."""
        return f"{derive_seed('run', self.identity()):016x}"[:16]

    @property
    def cell_id(self) -> str:
        data = self.identity()
        del data["seed"]
        return f"{derive_seed('cell', data):016x}"[:16]

    def base_configuration(self) -> dict[str, Any]:
        """What a seed's initialization and split may depend on: task, architecture, weight decay.
        Never the controller, its rho, the learning rate or the budget."""
        plain = self.plain()
        return {"task": plain["task"], "architecture": plain["architecture"],
                "weight_decay": self.optimizer.weight_decay}

    def matches_source(self, source: "RunSpec") -> bool:
        """Is ``source`` (a run of the stage that gives Wc) this run's matched free run? Same base
        configuration (task, architecture, weight decay), same precision (of the weights and of the
        matmuls), and the same value for every key the source stage sweeps. The learning rate may
        differ (paper A holds one Wc across lr)."""
        mine = self.plain()
        return (self.base_configuration() == source.base_configuration()
                and self.training.precision == source.training.precision
                and self.training.matmul_precision == source.training.matmul_precision
                and all(dotted_value(mine, key) == value for key, value in source.cell.items()))

    def trunk_identity(self) -> dict[str, Any] | None:
        """What a forked run's starting state depends on: base configuration, seed, optimizer, loss
        (and temperature), precision and matmul precision, the fork step and the trunk's controller. Arms
        that share it share the trunk."""
        if self.fork is None:
            return None
        plain = self.plain()
        identity = {"base": self.base_configuration(), "seed": self.seed, "optimizer": plain["optimizer"],
                    "loss": plain["loss"], "precision": self.training.precision, "fork": plain["fork"]}
        if self.training.matmul_precision != "full":  # trunks stored before it existed keep their ids
            identity["matmul_precision"] = self.training.matmul_precision
        return identity

    @property
    def trunk_id(self) -> str | None:
        """Content address of the trunk state this run starts from (None when not forked)."""
        identity = self.trunk_identity()
        return None if identity is None else f"{derive_seed('trunk', identity):016x}"[:16]

    @property
    def init_seed(self) -> int:
        return derive_seed("init", self.base_configuration(), self.seed)

    @property
    def split_seed(self) -> int:
        return derive_seed("split", self.base_configuration()["task"], self.seed)


@attrs.frozen
class Stage:
    name: str
    critical_norm: float | str | None
    runs: list[RunSpec]


@attrs.frozen
class Experiment:
    source: Path
    meta: ExperimentMeta
    stages: list[Stage]
    analyses: list[ComponentChoice]
    text: str
    #: The file's ``[executor]`` table as written; resolved by :func:`executor_choice` when the study
    #: runs, so that results can be analysed where the executor's plugin is not installed.
    executor: dict[str, Any] = attrs.field(factory=dict)

    @property
    def runs(self) -> list[RunSpec]:
        return [run for stage in self.stages for run in stage.runs]


# ---------------------------------------------------------------------------------------------------
# A strict converter: no silent 1.7 -> 1, "no" -> True or 3 -> "3".


def _describe(value: Any) -> str:
    kind = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "a list",
            dict: "a table"}.get(type(value), f"a {type(value).__name__}")
    if isinstance(value, (list, dict)):
        return kind
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{kind} ({_short(value)})"
    text = json.dumps(value, default=str)
    return f"{kind} ({text if len(text) <= 80 else text[:77] + '...'})"


#: SQLite stores integers as signed 64-bit: the range every integer in a file must lie in.
INT64_MIN, INT64_MAX = -2**63, 2**63 - 1


def out_of_int64(value: Any) -> bool:
    """Is ``value`` an integer (not a boolean) that a signed 64-bit integer cannot hold?"""
    return isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX


def _finite_float(value: int | float) -> float:
    """float(value), refused (TypeError) where it is not a finite number: nan, inf, or an integer beyond
    the float range."""
    try:
        number = float(value)
    except OverflowError:
        raise TypeError(f"expected a number, found an integer too large for a float ({_short(value)})") from None
    if not math.isfinite(number):
        raise TypeError(f"expected a number, found {value} (not finite)")
    return number


def _short(value: Any) -> str:
    """An integer in words short enough for one line: its digits, or its sign and digit count."""
    text = str(value)
    return text if len(text) <= 24 else f"{text[:8]}... ({len(text.lstrip('-'))} digits)"


def _strict(expected: str, accept: tuple[type, ...], cast=lambda value: value):
    def hook(value: Any, _type: Any) -> Any:
        if isinstance(value, bool) and bool not in accept or not isinstance(value, accept):
            raise TypeError(f"expected {expected}, found {_describe(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise TypeError(f"expected {expected}, found {value} (not finite)")
        if out_of_int64(value) and int in accept and float not in accept:
            raise TypeError(f"expected {expected} between -2^63 and 2^63 - 1 (what the results store holds), "
                            f"found {_short(value)}")
        return cast(value)
    return hook


_ARRAY_ORIGINS = (list, tuple, set, frozenset, collections.abc.Sequence, collections.abc.MutableSequence,
                  collections.abc.Set, collections.abc.MutableSet)


def _is_array_type(type_: Any) -> bool:
    """list[...], tuple[...], Sequence[...], set[...] and the like (never str): what a TOML array holds."""
    return type_ in _ARRAY_ORIGINS or typing.get_origin(type_) in _ARRAY_ORIGINS


def _strict_array_factory(converter: cattrs.Converter):
    """Structure hooks for array types that accept only a TOML array (a list), so that a string is never
    read as its characters nor a table as its keys."""
    def factory(type_: Any):
        origin = typing.get_origin(type_) or type_
        args = typing.get_args(type_)
        if origin is tuple and args and args[-1] is not Ellipsis:  # tuple[int, str]: fixed length
            def fixed(value: Any, _type: Any) -> tuple:
                if not isinstance(value, list) or len(value) != len(args):
                    raise TypeError(f"expected a list of {len(args)} values, found {_describe(value)}")
                return tuple(converter.structure(v, t) for v, t in zip(value, args))
            return fixed
        if origin in (set, frozenset, collections.abc.Set, collections.abc.MutableSet):
            element = args[0] if args else Any
            def as_set(value: Any, _type: Any):
                if not isinstance(value, list):
                    raise TypeError(f"expected a list, found {_describe(value)}")
                return (frozenset if origin is frozenset else set)(converter.structure(v, element) for v in value)
            return as_set
        inner = (cattrs.cols.homogenous_tuple_structure_factory if origin is tuple
                 else cattrs.cols.list_structure_factory)(type_, converter)

        def array(value: Any, _type: Any):
            if not isinstance(value, list):
                raise TypeError(f"expected a list, found {_describe(value)}")
            return inner(value, _type)
        return array
    return factory


def _strict_table_factory(converter: cattrs.Converter):
    """Structure hooks for mapping types that accept only a TOML table (a dict)."""
    def factory(type_: Any):
        inner = cattrs.cols.mapping_structure_factory(type_, converter)

        def table(value: Any, _type: Any):
            if not isinstance(value, dict):
                raise TypeError(f"expected a table, found {_describe(value)}")
            return inner(value, _type)
        return table
    return factory


def make_converter() -> cattrs.Converter:
    strict = cattrs.Converter(forbid_extra_keys=True)
    strict.register_structure_hook(int, _strict("an integer", (int,)))
    strict.register_structure_hook(float, _strict("a number", (int, float), _finite_float))
    strict.register_structure_hook(bool, _strict("true or false", (bool,)))
    strict.register_structure_hook(str, _strict("a string", (str,)))
    strict.register_structure_hook_factory(_is_array_type, _strict_array_factory(strict))
    strict.register_structure_hook_factory(cattrs.cols.is_mapping, _strict_table_factory(strict))

    def seeds_hook(value: Any, _type: Any) -> int | list[int]:
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_SEEDS:
            return value
        if isinstance(value, int) and not isinstance(value, bool) and value > MAX_SEEDS:
            raise TypeError(f"expected a count of at most {MAX_SEEDS} seeds, found {_short(value)}")
        if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            bad = next((v for v in value if not 0 <= v <= MAX_SEED), None)
            if bad is not None:
                raise TypeError(f"a seed is an integer from 0 to 2^63 - 1, found {_short(bad)}")
            if len(value) > MAX_SEEDS:
                raise TypeError(f"expected at most {MAX_SEEDS} seeds, found {len(value)}")
            if len(set(value)) == len(value):
                return value
            raise TypeError(f"seed {next(v for v in value if value.count(v) > 1)} is listed twice")
        raise TypeError(f"expected a positive count or a list of distinct integer seeds, found {_describe(value)}")

    strict.register_structure_hook(int | list[int], seeds_hook)
    return strict


#: The most seeds a stage may run per cell, and the largest seed (seeds are stored as 64-bit integers).
MAX_SEEDS = 10_000
MAX_SEED = INT64_MAX


converter = make_converter()


def _flatten_errors(error: BaseException, path: tuple[str, ...]) -> Iterable[tuple[tuple[str, ...], str, list[str]]]:
    """(path, message, valid keys for suggestions) for every leaf of a cattrs error tree."""
    if isinstance(error, ClassValidationError):
        with_notes, without_notes = error.group_exceptions()
        for sub, note in with_notes:
            if isinstance(sub, KeyError):  # the note already names the missing attribute
                yield path + (note.name,), "required key is missing", []
            else:
                yield from _flatten_errors(sub, path + (note.name,))
        for sub in without_notes:
            yield from _flatten_errors(sub, path)
    elif isinstance(error, IterableValidationError):
        with_notes, without_notes = error.group_exceptions()
        for sub, note in with_notes:
            yield from _flatten_errors(sub, path[:-1] + (f"{path[-1]}[{note.index}]",) if path else path)
        for sub in without_notes:
            yield from _flatten_errors(sub, path)
    elif isinstance(error, ForbiddenExtraKeysError):
        valid = [field.name for field in attrs.fields(error.cl)]
        for extra in sorted(error.extra_fields):
            yield path + (extra,), "unknown key", valid
    elif isinstance(error, KeyError):
        yield path + (str(error.args[0]),), "required key is missing", []
    else:
        message = str(error)
        if "required positional argument" in message or "missing" in message and "argument" in message:
            name = message.rsplit("'", 2)[-2] if "'" in message else ""
            yield path + ((name,) if name else ()), "required key is missing", []
        else:
            yield path, message, []


def _validator_problems(instance: Any, path: tuple[str, ...]) -> Iterable[tuple[tuple[str, ...], str, list[str]]]:
    """Run each field's attrs validator on its own, so that every failure is reported under its key."""
    for field in attrs.fields(type(instance)):
        value = getattr(instance, field.name)
        if field.validator is not None:
            try:
                field.validator(instance, field, value)
            except Exception as error:
                if len(error.args) >= 4 and isinstance(error.args[1], attrs.Attribute):  # attrs.validators.in_
                    message = f"expected one of {', '.join(map(repr, error.args[2]))}, found {error.args[3]!r}"
                else:
                    message = str(error)
                yield path + (field.name,), message, []
        if attrs.has(type(value)):
            yield from _validator_problems(value, path + (field.name,))


def structure(raw: Any, cls: type) -> tuple[Any, list[tuple[tuple[str, ...], str, list[str]]]]:
    """Structure ``raw`` into ``cls``; return (object or None, problems as (path, message, valid keys))."""
    if not isinstance(raw, dict):
        return None, [((), f"expected a table, found {_describe(raw)}", [])]
    try:
        with attrs.validators.disabled():  # run below, field by field, so each failure names its key
            instance = converter.structure(raw, cls)
    except Exception as error:  # collected and reported, never raised past the loader
        return None, list(_flatten_errors(error, ()))
    problems = list(_validator_problems(instance, ()))
    return (None if problems else instance), problems


def _without_index(key: str) -> str:
    """``sweep."task.p"[2]`` -> ``sweep."task.p"``."""
    return re.sub(r"\[\d+\]$", "", key)


def _suggest(name: str, valid: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ---------------------------------------------------------------------------------------------------
# Loading a file.


def _deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            if "name" in value and value.get("name") != merged[key].get("name"):
                merged[key] = dict(value)  # another component: the base's options do not apply to it
            else:
                merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _flatten_sweep(table: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten_sweep(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def dotted_value(data: dict[str, Any], dotted: str) -> Any:
    """``data["a"]["b"]`` for ``"a.b"``; None where a part is missing."""
    for part in dotted.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _merge_options(options: Iterable[dict]) -> dict:
    return {key: value for option in options for key, value in option.items()}


def _set_dotted(data: dict, dotted: str, value: Any) -> str | None:
    """Set ``a.b.c`` in nested tables, creating missing ones. In a list of tables (``stage``) a part picks
    the table by its ``name`` or its 0-based index. Returns why the key cannot be set, or None."""
    parts = dotted.split(".")
    for depth, part in enumerate(parts):
        where = ".".join(parts[:depth])
        if isinstance(data, list):
            names = [t.get("name") if isinstance(t, dict) else None for t in data]
            if part in names:
                data = data[names.index(part)]
            elif part.isdigit() and int(part) < len(data):
                data = data[int(part)]
            else:
                return (f"{where} has no table named or numbered {part!r} "
                        f"(names: {', '.join(str(n) for n in names if n is not None) or 'none'})")
        elif not isinstance(data, dict):
            return f"{where} is {_describe(data)}, not a table"
        elif depth == len(parts) - 1:
            data[part] = value
            return None
        else:
            data = data.setdefault(part, {})
    return f"{dotted} is a table in a list, not a key; name a key inside it"


class _Loader:
    """Collects every problem of one file while resolving it."""

    def __init__(self, source: str, registry: Registry):
        self.source = source
        self.registry = registry
        self.problems: list[Problem] = []
        self._seen: set[tuple[str, str]] = set()
        self._groups: dict[str, list[str]] = {}

    def problem(self, key: str, message: str) -> None:
        if (key, message) not in self._seen:
            self._seen.add((key, message))
            self.problems.append(Problem(self.source, key, message))

    def unknown_keys(self, table: dict, valid: Iterable[str], where: str) -> None:
        valid = list(valid)
        for key in table:
            if key not in valid:
                self.problem(f"{where}{key}", f"unknown key{_suggest(key, valid)}")

    def sweep_points(self, sweep: Any, zipped: Any, where: str) -> list[dict[str, tuple[Any, str]]]:
        """Every point of the grid ``sweep`` crossed with the lists of ``zipped`` taken in step:
        dotted key -> (value, where the value was written)."""
        axes: dict[str, list[list[dict[str, tuple[Any, str]]]]] = {"sweep": [], "zip": []}
        for kind, table in (("sweep", sweep), ("zip", zipped)):
            if table is None:
                continue
            if not isinstance(table, dict):
                self.problem(f"{where}{kind}", f"expected a table of key = [values], found {_describe(table)}")
                continue
            for key, values in _flatten_sweep(table).items():
                origin = f'{where}{kind}."{key}"'
                section = key.split(".")[0]
                if section not in RUN_SECTIONS or "." not in key:
                    self.problem(origin, f"cannot sweep {key!r}: expected section.key with section one of "
                                         f"{', '.join(RUN_SECTIONS)}{_suggest(section, RUN_SECTIONS)}")
                elif not isinstance(values, list) or not values:
                    self.problem(origin, f"expected a non-empty list of values, found {_describe(values)}")
                else:
                    axes[kind].append([{key: (value, f"{origin}[{i}]")} for i, value in enumerate(values)])
        grid = axes["sweep"]
        if axes["zip"]:
            lengths = sorted({len(axis) for axis in axes["zip"]})
            if len(lengths) > 1:
                self.problem(f"{where}zip", f"all lists in a zip must have one length, found lengths {lengths}")
            else:
                grid = grid + [[_merge_options(combo) for combo in zip(*axes["zip"])]]
        points = math.prod(len(axis) for axis in grid)
        if points > MAX_RUNS:
            self.problem(f"{where}sweep" if axes["sweep"] else f"{where}zip",
                         f"gives {_short(points)} sweep points; a file may plan at most {MAX_RUNS} runs")
            return []
        return [_merge_options(combo) for combo in itertools.product(*grid)]

    def component(self, section: str, raw: Any, origin) -> ComponentChoice | None:
        kind, default = COMPONENT_SECTIONS[section]
        if raw is None:
            raw = {"name": default} if default else None
        if raw is None:
            self.problem(section, "required table is missing")
            return None
        if not isinstance(raw, dict):
            self.problem(origin((section,)), f"expected a table, found {_describe(raw)}")
            return None
        options = dict(raw)
        name = options.pop("name", default)
        if name is None:
            self.problem(origin((section, "name")), f"required key is missing (which {kind} to use)")
            return None
        if not isinstance(name, str):
            self.problem(origin((section, "name")), f"expected a string, found {_describe(name)}")
            return None
        try:
            component = self.registry.get(kind, name)
        except UnknownComponent as unknown:
            self.problem(origin((section, "name")), str(unknown))
            return None
        config, problems = structure(options, component.config_class)
        self.report(section, problems, origin)
        return ComponentChoice(name, config) if config is not None else None

    def fork(self, raw: Any, where: str) -> ForkSpec | None:
        """``fork = { at_step = N, controller = {...} }`` (the trunk's controller, default free)."""
        if raw is None:
            return None
        key = f"{where}fork"
        if not isinstance(raw, dict):
            self.problem(key, f"expected a table like {{ at_step = 800 }}, found {_describe(raw)}")
            return None
        self.unknown_keys(raw, FORK_KEYS, f"{key}.")
        at_step = raw.get("at_step")
        if at_step is None:
            self.problem(f"{key}.at_step", "required key is missing (the step whose state every arm starts from)")
        elif isinstance(at_step, bool) or not isinstance(at_step, int) or not 1 <= at_step <= MAX_STEPS:
            self.problem(f"{key}.at_step", f"expected a positive integer of at most {MAX_STEPS}, "
                                           f"found {_describe(at_step)}")
            at_step = None
        controller = self.component("controller", raw.get("controller"), lambda parts: f"{key}." + ".".join(parts))
        if controller is not None and getattr(self.registry.get("norm_controller", controller.name),
                                              "uses_critical_norm", False):
            self.problem(f"{key}.controller.name", f"the trunk cannot use {controller.name!r}: it needs Wc; "
                         "give the trunk a controller without a critical norm (default free)")
            return None
        return ForkSpec(at_step, controller) if at_step is not None and controller is not None else None

    def observables(self, evaluation: Any, task: ComponentChoice | None, architecture: ComponentChoice | None,
                    origin) -> None:
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

    def architecture_groups(self, task: ComponentChoice, architecture: ComponentChoice) -> list[str]:
        """The weight-norm groups of an architecture on a task, from a copy built on the meta device
        (no memory, no arithmetic); none where it cannot be built."""
        built = self._built(task, architecture)
        return [] if isinstance(built, UserError) or built is None else list(built.weight_norm_groups())

    def _built(self, task: ComponentChoice, architecture: ComponentChoice) -> Any:
        """The architecture's module on the task, built on the meta device, once per (task, architecture):
        the module, the UserError its task or architecture raised, or None where building it failed
        otherwise (left for training to report)."""
        import torch  # only a file whose runs resolve pays for it

        cache_key = json.dumps([task.name, converter.unstructure(task.config), architecture.name,
                                converter.unstructure(architecture.config)], sort_keys=True, default=str)
        if cache_key not in self._groups:
            try:
                task_data = self.registry.get("task", task.name).factory(task.config)
                with torch.device("meta"):
                    module = self.registry.get("architecture", architecture.name).factory(architecture.config,
                                                                                          task_data)
                self._groups[cache_key] = (module, task_data)
            except UserError as error:
                self._groups[cache_key] = (error, None)
            except Exception:  # noqa: BLE001 - not the file's fault as far as the loader can tell
                self._groups[cache_key] = (None, None)
        return self._groups[cache_key][0]

    def buildable(self, resolved: dict[str, Any], critical: float | str | None, fork: ForkSpec | None,
                  origin, where: str) -> None:
        """Build what a worker would build for these settings, without weights (the architecture on the
        meta device, its controllers): every refusal the task, the architecture or a controller would
        raise when the cell trains is reported now, under its key, and never reaches a worker."""
        module = self._built(resolved["task"], resolved["architecture"])
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
        names = [name for group in groups.values() for name in group]
        positions = {name: i for i, name in enumerate(names)}
        context = ControllerContext(critical if isinstance(critical, float) else 1.0, 1,
                                    groups={g: [positions[n] for n in members] for g, members in groups.items()},
                                    tensor_names=names, start_step=fork.at_step if fork else 0)
        arms = [(resolved["controller"], origin)]
        if fork is not None:
            arms.append((fork.controller, lambda parts: f"{where}fork." + ".".join(parts)))
        for choice, where_is in arms:
            try:
                self.registry.get("norm_controller", choice.name).factory(choice.config, context)
            except UserError as error:
                for problem in error.problems:
                    key = problem.key if problem.key.startswith("controller") else "controller"
                    self.problem(where_is(tuple(key.split("."))), problem.message)
            except Exception:  # noqa: BLE001 - left for training to report
                pass

    def section(self, section: str, raw: Any, origin) -> Any:
        config, problems = structure(raw if raw is not None else {}, SECTION_CLASSES[section])
        self.report(section, problems, origin)
        return config

    def report(self, section: str, problems: list[tuple[tuple[str, ...], str, list[str]]], origin) -> None:
        for path, message, valid in problems:
            if valid:  # an unknown key: wrong whichever swept value it came with, so one line for the key
                self.problem(_without_index(origin((section,) + path)), message + _suggest(path[-1], valid))
            else:
                self.problem(origin((section,) + path), message)

    def seeds(self, raw: Any, key: str) -> list[int]:
        try:
            value = converter.structure(raw, int | list[int])
        except Exception as error:
            self.problem(key, str(error))
            return []
        return list(range(value)) if isinstance(value, int) else value

    def critical_norm(self, raw: Any, key: str, stage_names: list[str], earlier: list[str]) -> float | str | None:
        if raw is None:
            return None
        if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
            self.problem(key, f"expected a number or the name of an earlier stage, found {_describe(raw)}")
            return None
        if isinstance(raw, str) and raw not in earlier:
            where = "a later stage" if raw in stage_names else "no stage"
            self.problem(key, f"{raw!r} is {where}; name an earlier stage{_suggest(raw, earlier)} or give a number")
            return None
        if isinstance(raw, float) and not math.isfinite(raw):
            self.problem(key, f"expected a finite positive norm, found {raw}")
            return None
        if not isinstance(raw, str) and raw <= 0:
            self.problem(key, f"expected a positive norm, found {raw}")
            return None
        if not isinstance(raw, str) and raw > MAX_NORM:
            self.problem(key, f"expected a norm of at most {MAX_NORM:g}, found {_describe(raw)}")
            return None
        return float(raw) if not isinstance(raw, str) else raw


#: The largest experiment file read; anything larger is refused before reading.
MAX_FILE_BYTES = 16 * 1024 * 1024
UTF8_BOM = "\ufeff"


def _file_kind(mode: int) -> str:
    """What a non-regular file is, in words, from its ``st_mode``."""
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def read_experiment_text(path: Path) -> str:
    """The text of an experiment file: a regular file of at most ``MAX_FILE_BYTES`` bytes of UTF-8 (a
    leading byte-order mark is dropped). Anything else is refused, naming the file, before a byte is
    read (so a named pipe or a device never blocks)."""
    source = str(path)
    try:
        status = os.stat(path)
    except OSError as error:
        raise UserError([Problem(source, "", f"cannot read the file: {error.strerror}")]) from None
    if not stat.S_ISREG(status.st_mode):
        raise UserError([Problem(source, "", f"is {_file_kind(status.st_mode)}, not an experiment file "
                                             "(a regular TOML file)")])
    if status.st_size > MAX_FILE_BYTES:
        raise UserError([Problem(source, "", f"is {status.st_size} bytes; an experiment file is at most "
                                             f"{MAX_FILE_BYTES // (1024 * 1024)} MiB of TOML")])
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise UserError([Problem(source, "", f"cannot read the file: {error.strerror}")]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise UserError([Problem(source, "", f"is over {MAX_FILE_BYTES // (1024 * 1024)} MiB; an experiment "
                                             "file is at most that much TOML")])
    try:
        return raw.decode("utf-8").removeprefix(UTF8_BOM)
    except UnicodeDecodeError as error:
        raise UserError([Problem(source, "", f"is not UTF-8 text (byte 0x{raw[error.start]:02x} at offset "
                                             f"{error.start}); save it as UTF-8")]) from None


def load_experiment(path: str | Path, registry: Registry, overrides: dict[str, Any] | None = None,
                    text: str | None = None) -> Experiment:
    """Read, check and expand an experiment file (or ``text``, the file's content as stored, named by
    ``path``). Raises :class:`UserError` listing every problem."""
    path = Path(path)
    source = str(path)
    text = read_experiment_text(path) if text is None else text.removeprefix(UTF8_BOM)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UserError([Problem(source, "", f"not valid TOML: {error}")]) from None
    except RecursionError:
        raise UserError([Problem(source, "", "not valid TOML here: arrays or tables nested too deeply")]) from None
    loader = _Loader(source, registry)
    loader.problems += [Problem("--set", dotted, why) for dotted, value in (overrides or {}).items()
                        if (why := _set_dotted(data, dotted, value)) is not None]
    loader.unknown_keys(data, TOP_LEVEL_KEYS, "")

    meta, problems = structure(data.get("experiment", {}), ExperimentMeta)
    for path_parts, message, valid in problems:
        loader.problem(".".join(("experiment",) + path_parts), message + (_suggest(path_parts[-1], valid) if valid else ""))
    default_seeds = loader.seeds(meta.seeds, "experiment.seeds") if meta else []

    raw_stages = data.get("stage", [{"name": "main"}])
    if not isinstance(raw_stages, list) or not all(isinstance(s, dict) for s in raw_stages):
        loader.problem("stage", "expected [[stage]] tables")
        raw_stages = []
    stage_names = [s.get("name") if isinstance(s.get("name"), str) else f"#{i + 1}" for i, s in enumerate(raw_stages)]
    for i, raw_stage in enumerate(raw_stages):
        if "name" not in raw_stage:
            loader.problem(f"stage[{i + 1}].name", "required key is missing")
        elif not isinstance(raw_stage["name"], str):
            loader.problem(f"stage[{i + 1}].name", f"expected a string, found {_describe(raw_stage['name'])}")
    for name in {n for n in stage_names if stage_names.count(n) > 1}:
        loader.problem(f"stage[{name}]", "two stages have this name")

    base = {section: data[section] for section in RUN_SECTIONS if section in data}
    global_points = loader.sweep_points(data.get("sweep"), data.get("zip"), "")
    stages: list[Stage] = []
    planned_runs = 0
    for i, raw_stage in enumerate(raw_stages):
        stage_name = stage_names[i]
        where = f"stage[{stage_name}]."
        loader.unknown_keys(raw_stage, STAGE_KEYS, where)
        overrides_here = {s: raw_stage[s] for s in RUN_SECTIONS if s in raw_stage}
        merged = _deep_merge(base, overrides_here)
        # Sections the stage writes whole (no base table, or another component): every key is the stage's.
        stage_owned = {s for s, value in overrides_here.items() if merged[s] == value}
        seeds = loader.seeds(raw_stage["seeds"], f"{where}seeds") if "seeds" in raw_stage else default_seeds
        critical = loader.critical_norm(raw_stage.get("critical_norm"), f"{where}critical_norm",
                                        stage_names, stage_names[:i])
        stage_points = loader.sweep_points(raw_stage.get("sweep"), raw_stage.get("zip"), where)
        fork = loader.fork(raw_stage.get("fork"), where)
        runs: list[RunSpec] = []
        stage_global_points = _stage_global_points(loader, data, raw_stage, global_points)
        planned = len(stage_global_points) * len(stage_points) * len(seeds)
        if planned_runs + planned > MAX_RUNS:
            loader.problem(f"{where.rstrip('.')}", f"plans {planned} runs ({planned_runs} before it); a file may plan "
                           f"at most {MAX_RUNS} runs")
            stage_global_points = []
        planned_runs += planned
        for global_point, stage_point in itertools.product(stage_global_points, stage_points):
            point = {**global_point, **stage_point}
            config = copy.deepcopy(merged)
            refused = [(origin_of_value, why) for dotted, (value, origin_of_value) in point.items()
                       if (why := _set_dotted(config, dotted, value)) is not None]
            for origin_of_value, why in refused:
                loader.problem(_without_index(origin_of_value), f"cannot sweep this key: {why}")

            def origin(parts: tuple[str, ...], point=point, overrides_here=overrides_here, where=where,
                       stage_owned=stage_owned) -> str:
                for length in range(len(parts), 0, -1):
                    dotted = ".".join(parts[:length])
                    if dotted in point:
                        return point[dotted][1] + (("." + ".".join(parts[length:])) if parts[length:] else "")
                if parts[0] in stage_owned:
                    return where + ".".join(parts)
                table: Any = overrides_here
                for part in parts:
                    if not isinstance(table, dict) or part not in table:
                        return ".".join(parts)
                    table = table[part]
                return where + ".".join(parts)

            resolved = {s: loader.component(s, config.get(s), origin) for s in COMPONENT_SECTIONS}
            resolved.update({s: loader.section(s, config.get(s), origin) for s in SECTION_CLASSES})
            if resolved["controller"] is not None:
                controller = registry.get("norm_controller", resolved["controller"].name)
                if getattr(controller, "uses_critical_norm", False) and critical is None \
                        and "critical_norm" not in raw_stage:
                    loader.problem(f"{where}critical_norm", f"required: controller {controller.name!r} holds the "
                                   "norm relative to Wc; give a number or the name of a free stage")
            if resolved["evaluation"] is not None:
                loader.observables(resolved["evaluation"], resolved["task"], resolved["architecture"], origin)
            if all(resolved[s] is not None for s in ("task", "architecture", "controller")):
                loader.buildable(resolved, critical, fork, origin, where)
            if fork is not None and resolved["training"] is not None \
                    and fork.at_step >= resolved["training"].max_steps:
                loader.problem(f"{where}fork.at_step", f"must be below training.max_steps "
                               f"({resolved['training'].max_steps}), found {fork.at_step}")
            t_start = getattr(resolved["controller"].config, "t_start", None) if resolved["controller"] else None
            if fork is not None and isinstance(t_start, int) and t_start < fork.at_step:
                loader.problem(origin(("controller", "t_start")),
                               f"is before fork.at_step ({fork.at_step}): the trunk trains without this controller "
                               f"up to step {fork.at_step}; start it at or after the fork, found {t_start}")
            if refused or any(value is None for value in resolved.values()):
                continue
            cell = {dotted: value for dotted, (value, _) in point.items()}
            for seed in seeds:
                runs.append(RunSpec(stage=stage_name, cell=cell, seed=seed, critical_norm=critical, fork=fork,
                                    **resolved))
        stages.append(Stage(stage_name, critical, runs))

    analyses: list[ComponentChoice] = []
    raw_analyses = data.get("analysis", [])
    if not isinstance(raw_analyses, list):
        loader.problem("analysis", "expected [[analysis]] tables")
        raw_analyses = []
    run_keys = functools.cache(lambda: _run_keys([run for stage in stages for run in stage.runs]))
    for i, raw in enumerate(raw_analyses):
        analyses.append(_analysis_choice(loader, raw, f"analysis[{i + 1}]", stage_names, run_keys))
    if not loader.problems:
        stages = _attach_critical_norm_sources(loader, stages)
        _refuse_duplicate_runs(loader, stages)
    executor = data.get("executor", {})
    if not isinstance(executor, dict):
        loader.problem("executor", f"expected a table, found {_describe(executor)}")
    if loader.problems:
        raise UserError(_name_the_command_line(loader.problems, overrides or {}, data))
    return Experiment(path, meta, stages, [a for a in analyses if a], text, executor)


def _key_parts(key: str) -> list[str]:
    """A problem's dotted key as plain parts: ``stage[clamp].sweep."task.p"[0]`` -> stage, clamp, sweep,
    task, p, 0."""
    return [part for quoted, bracket, plain in re.findall(r'"([^"]*)"|\[([^\]]*)\]|([^.\["]+)', key)
            for part in (quoted or bracket or plain).split(".")]


def _override_parts(dotted: str, data: dict) -> list[str]:
    """The parts of a ``--set`` key as problem keys spell them: a ``[[stage]]`` picked by index becomes its
    name, an ``[[analysis]]`` table its 1-based number."""
    parts = dotted.split(".")
    tables = data.get(parts[0]) if len(parts) > 1 else None
    if parts[0] in ("stage", "analysis") and isinstance(tables, list):
        names = [t.get("name") if isinstance(t, dict) else None for t in tables]
        index = names.index(parts[1]) if parts[1] in names else int(parts[1]) if parts[1].isdigit() else None
        if index is not None and index < len(tables):
            stage_name = names[index] if isinstance(names[index], str) else f"#{index + 1}"
            parts[1] = stage_name if parts[0] == "stage" else str(index + 1)
    return parts


def _name_the_command_line(problems: list[Problem], overrides: dict[str, Any], data: dict) -> list[Problem]:
    """Problems at a key that a ``--set`` wrote (or inside it) name the command line, not the file."""
    written = [_override_parts(dotted, data) for dotted in overrides]
    return [attrs.evolve(problem, source="--set")
            if any(_key_parts(problem.key)[:len(parts)] == parts for parts in written) else problem
            for problem in problems]


def _stage_global_points(loader: _Loader, data: dict, raw_stage: dict,
                         global_points: list[dict[str, tuple[Any, str]]]) -> list[dict[str, tuple[Any, str]]]:
    """The file-level sweep points as a stage sees them: a key the stage sweeps itself is taken out of
    the file-level ``sweep`` / ``zip`` (the stage's values replace the file's, never multiply them)."""
    own = set()
    for table in (raw_stage.get("sweep"), raw_stage.get("zip")):
        if isinstance(table, dict):
            own |= set(_flatten_sweep(table))
    tables = [data.get("sweep"), data.get("zip")]
    if not own or not any(isinstance(t, dict) and own & set(_flatten_sweep(t)) for t in tables):
        return global_points
    problems_before = len(loader.problems)  # the file-level tables were checked once already
    points = loader.sweep_points(*[{k: v for k, v in _flatten_sweep(t).items() if k not in own}
                                   if isinstance(t, dict) else t for t in tables], "")
    del loader.problems[problems_before:]
    return points


def cells_of(runs: Iterable[RunSpec]) -> list[list[RunSpec]]:
    """Runs grouped by cell (same settings but the seed), in the order they were written."""
    cells: dict[str, list[RunSpec]] = {}
    for run in runs:
        cells.setdefault(run.cell_id, []).append(run)
    return list(cells.values())


def _attach_critical_norm_sources(loader: _Loader, stages: list[Stage]) -> list[Stage]:
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
                               f"{_cell_text(cell[0].cell)} (same task, architecture, weight decay, precision, "
                               "matmul precision and swept values)")
                continue
            source = tuple(sorted(run.run_id for run in matches[0]))
            runs += [attrs.evolve(run, critical_norm_source=source) for run in cell]
        attached.append(attrs.evolve(stage, runs=runs))
    return attached


def _refuse_duplicate_runs(loader: _Loader, stages: list[Stage]) -> None:
    seen: dict[str, RunSpec] = {}
    for stage in stages:
        for run in stage.runs:
            if run.run_id in seen:
                loader.problem(f"stage[{stage.name}]", f"the sweeps give the same run twice (cell "
                               f"{_cell_text(run.cell)}, seed {run.seed}); remove the repeated value")
            seen[run.run_id] = run


def _cell_text(cell: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in cell.items()) or "(all)"


#: attrs field metadata key by which a component's config class declares what an option names: a
#: stage of the file (``naming("stage")``) or run keys (``naming("key")``: a dotted config key,
#: ``facts.<name>`` or ``held_norm``; for a table, its keys). The loader checks what the file wrote.
NAMES = "gnorm.names"
#: Run keys that are not config keys: what analyzers read besides a run's configuration.
DERIVED_KEYS = ("held_norm",)


def naming(what: str) -> dict[str, str]:
    """Field metadata declaring that an option names a ``stage`` of the file or run ``key``s."""
    return {NAMES: what}


def _named(value: Any) -> list[tuple[str, Any]]:
    """(suffix of the dotted key, name) for each name an option holds: a string, a list or a table's keys."""
    if isinstance(value, str):
        return [("", value)] if value else []
    if isinstance(value, dict):
        return [(f".{name}" if re.fullmatch(r"[A-Za-z0-9_-]+", name) else f'."{name}"', name) for name in value]
    if isinstance(value, (list, tuple)):
        return [(f"[{i}]", name) for i, name in enumerate(value)]
    return []


def _run_keys(runs: list[RunSpec]) -> set[str]:
    """Every dotted config key some run of the file has (one run per cell is read)."""
    keys: set[str] = set()

    def walk(table: dict, prefix: str) -> None:
        for key, value in table.items():
            keys.add(prefix + key)
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
    for cell in cells_of(runs):
        walk(cell[0].plain(), "")
    return keys


def _check_names(loader: _Loader, config_class: type, written: dict, where: str, stage_names: list[str],
                 run_keys: Any) -> None:
    """The stages and run keys that the options written in the file name exist in it (names that are
    not strings are left to structuring to report)."""
    for field in attrs.fields(config_class):
        what = field.metadata.get(NAMES)
        if what is None or field.name not in written:
            continue
        for suffix, name in _named(written[field.name]):
            if not isinstance(name, str):
                continue
            key = f"{where}.{field.name}{suffix}"
            if what == "stage" and name not in stage_names:
                loader.problem(key, f"no stage of this file is named {name!r}{_suggest(name, stage_names)} "
                                    f"(stages: {', '.join(stage_names)})")
            elif what == "key" and run_keys() and not (name in DERIVED_KEYS or name.startswith("facts.")
                                                       or name in run_keys()):
                loader.problem(key, f"no run of this file has the key {name!r}{_suggest(name, run_keys())}")


def _analysis_choice(loader: _Loader, raw: Any, where: str, stage_names: list[str] | None = None,
                     run_keys: Any = set) -> ComponentChoice | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        loader.problem(f"{where}.name", "required: the name of an analyzer")
        return None
    options = dict(raw)
    name = options.pop("name")
    try:
        component = loader.registry.get("analyzer", name)
    except UnknownComponent as unknown:
        loader.problem(f"{where}.name", str(unknown))
        return None
    config, problems = structure(options, component.config_class)
    for path, message, valid in problems:
        loader.problem(".".join((where,) + path), message + (_suggest(path[-1], valid) if valid else ""))
    if stage_names is not None and attrs.has(component.config_class):
        misshapen = {re.sub(r"\[.*$", "", path[0]) for path, _, _ in problems if path}
        _check_names(loader, component.config_class, {k: v for k, v in options.items() if k not in misshapen},
                     where, stage_names, run_keys)
    return ComponentChoice(name, config) if config is not None else None


# ---------------------------------------------------------------------------------------------------
# Where a study runs: the [executor] table.

DEFAULT_EXECUTOR = "local"
#: The ranges of the coordinator's own executor settings.
EXECUTOR_LIMITS = {"retries": (0, 100), "threads": (1, 4096)}


@attrs.frozen
class ExecutorChoice:
    """The executor plugin and its config, and what the coordinator itself reads from the table:
    ``retries`` (a failing cell is tried 1 + retries times) and ``threads`` (torch threads per cell;
    results depend on it, see gnorm.worker.torch_threads)."""

    name: str
    config: Any
    retries: int = 2
    threads: int = 1


def with_executor(experiment: Experiment, name: str | None, scheduler: str | None) -> Experiment:
    """The experiment with the command line's ``--executor`` / ``--scheduler``. Naming another executor
    than the file's ``[executor] name`` drops that table's options (they belong to the other executor)
    but keeps ``retries`` and ``threads``."""
    table = dict(experiment.executor)
    if name is not None and name != table.get("name", name):
        table = {key: table[key] for key in ("retries", "threads") if key in table}
    if name is not None:
        table["name"] = name
    if scheduler is not None:
        table["scheduler"] = scheduler
    return attrs.evolve(experiment, executor=table)


def executor_choice(experiment: Experiment, registry: Registry) -> ExecutorChoice:
    """Resolve the ``[executor]`` table (default ``local``); raises :class:`UserError` naming the file
    and the dotted key of every problem."""
    source = str(experiment.source)
    options = dict(experiment.executor)
    name = options.pop("name", DEFAULT_EXECUTOR)
    problems: list[Problem] = []
    own = {}
    for key, default in (("retries", 2), ("threads", 1)):
        value = options.pop(key, default)
        low, high = EXECUTOR_LIMITS[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            problems.append(Problem(source, f"executor.{key}",
                                    f"expected an integer from {low} to {high}, found {_describe(value)}"))
        own[key] = value
    if not isinstance(name, str):
        raise UserError(problems + [Problem(source, "executor.name", f"expected a string, found {_describe(name)}")])
    try:
        component = registry.get("executor", name)
    except UnknownComponent as unknown:
        raise UserError(problems + [Problem(source, "executor.name", str(unknown))]) from None
    config, found = structure(options, component.config_class)
    for path, message, valid in found:
        problems.append(Problem(source, ".".join(("executor",) + path),
                                message + (_suggest(path[-1], valid + ["name", "retries", "threads"]) if valid else "")))
    if problems:
        raise UserError(problems)
    return ExecutorChoice(name, config, **own)


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` from the command line; the value is read as a TOML value (strings may be bare)."""
    if "=" not in text:
        raise UserError([Problem("--set", text, "expected key=value")])
    key, value = text.split("=", 1)
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return key.strip(), parsed
