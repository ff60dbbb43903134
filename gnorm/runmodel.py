"""The run model: what an experiment file resolves to, and what makes a run that run.

The fixed sections (``[training]``, ``[evaluation]``, ``[experiment]``), a component choice (a
plugin's name and its structured config: task, architecture, controller, criterion, loss, optimizer), a fork, and :class:`RunSpec`: one
stage, cell and seed with every setting resolved, its content-addressed ids and the seeds its
initialization and split derive from. Stages, the experiment and :func:`cells_of` complete it.

This module sits at the bottom of the import graph: it imports neither the registry, the file loader,
the strict converter (cattrs) nor torch, so anything may import it.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterable

import attrs

from gnorm.describe import short


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from the canonical JSON of ``parts``: int(sha256(json)[:16], 16) >> 1.

    Used so that a run's initialization depends only on the base configuration it is given, never on
    the intervention arm, and for the content addresses of runs, cells and trunks.
    """
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return int(hashlib.sha256(text.encode()).hexdigest()[:16], 16) >> 1


def plain_data(value: Any) -> Any:
    """A structured config as plain data, exactly as gnorm's strict converter unstructures it: an attrs
    instance becomes a table of its fields (in order, by field name), a list or tuple a list, a set or
    frozenset the same kind of set, an enum member its value; anything else is itself."""
    if attrs.has(type(value)):
        return {field.name: plain_data(getattr(value, field.name)) for field in attrs.fields(type(value))}
    if isinstance(value, (list, tuple)):
        return [plain_data(item) for item in value]
    if isinstance(value, dict):
        return {plain_data(key): plain_data(item) for key, item in value.items()}
    if isinstance(value, (set, frozenset)):
        return type(value)(plain_data(item) for item in value)
    if isinstance(value, enum.Enum):
        return value.value
    return value


def dotted_value(data: dict[str, Any], dotted: str) -> Any:
    """``data["a"]["b"]`` for ``"a.b"``; None where a part is missing."""
    for part in dotted.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


# ---------------------------------------------------------------------------------------------------
# The fixed sections.


def _plain_name(instance: Any, attribute: Any, value: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value):
        raise ValueError(f"'{attribute.name}' must be letters, digits, '_', '.' or '-' (it names a folder), "
                         f"found {value!r}")


#: The longest training budget a file may ask for, and the largest critical norm it may give.
MAX_STEPS = 10**9
MAX_NORM = 1e12
#: The most evaluation points a geometric schedule may ask for.
MAX_POINTS = 100_000
#: The most parameters one seed's model may have.
MAX_PARAMETERS = 2**31
#: The most runs one file may plan (all stages, sweep points and seeds together).
MAX_RUNS = 100_000
#: SQLite stores integers as signed 64-bit: the range every integer in a file must lie in.
INT64_MIN, INT64_MAX = -2**63, 2**63 - 1
#: The most seeds a stage may run per cell, and the largest seed (seeds are stored as 64-bit integers).
MAX_SEEDS = 10_000
MAX_SEED = INT64_MAX


def _at_most_max_steps(instance: Any, attribute: Any, value: int) -> None:
    if value > MAX_STEPS:
        raise ValueError(f"'{attribute.name}' must be at most {MAX_STEPS:_} steps, found {short(value)}")


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
    #: Examples each member trains on per step (see gnorm.training.batches): 0 is full batch (every
    #: training example every step, the default); B > 0 draws B a step from the member's sampling
    #: stream, shuffled epochs without replacement that depend only on the seed's split seed. Part of a
    #: run's identity when positive.
    batch_size: int = attrs.field(default=0, validator=attrs.validators.ge(0))
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


SECTION_CLASSES: dict[str, type] = {
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
#: How members learn (issue 14): the optimizer and the training loss, each a plugin chosen by name.
COMPONENT_SECTIONS.update({"loss": ("loss", "cross_entropy"), "optimizer": ("optimizer", "adamw")})
#: What every run stored before optimizers and losses were plugins trained with: AdamW (its
#: ``[optimizer]`` stored without a name) and cross-entropy at tau = 1 (no ``[loss]`` in its identity).
LEGACY_OPTIMIZER = "adamw"
LEGACY_LOSS = {"name": "cross_entropy", "temperature": 1.0}
RUN_SECTIONS = tuple(COMPONENT_SECTIONS) + tuple(SECTION_CLASSES)
#: The chain of gradient transforms: ``[gradient_transforms.<name>]`` tables of options, in file order.
TRANSFORMS_SECTION = "gradient_transforms"
RUN_SECTIONS += (TRANSFORMS_SECTION,)
#: Training settings that choose how a run is computed, not what it computes.
EXECUTION_SETTINGS = ("device", "compile", "members_per_chunk", "checkpoint_seconds")


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
    optimizer: ComponentChoice
    loss: ComponentChoice
    training: TrainingConfig
    evaluation: EvaluationConfig
    critical_norm: float | str | None
    #: The runs whose median norm at grok is this run's Wc (when ``critical_norm`` names a stage).
    critical_norm_source: tuple[str, ...] = ()
    fork: ForkSpec | None = None
    #: The gradient transforms applied before each optimizer step, in order (empty: none).
    gradient_transforms: tuple[ComponentChoice, ...] = ()
    #: The weight decay this run's seed is initialized as (None: its own; a stage's ``init_weight_decay``).
    init_weight_decay: float | None = None

    def plain(self) -> dict[str, Any]:
        """The run's configuration as plain JSON data. ``fork``, ``evaluation.observables`` and
        ``gradient_transforms`` (name -> options, in chain order) appear only when used, so runs that use
        none of them keep the ids they always had."""
        data: dict[str, Any] = {"stage": self.stage, "seed": self.seed, "critical_norm": self.critical_norm,
                                "critical_norm_source": list(self.critical_norm_source)}
        for section in COMPONENT_SECTIONS:
            choice = getattr(self, section)
            data[section] = {"name": choice.name, **plain_data(choice.config)}
        for section in SECTION_CLASSES:
            data[section] = plain_data(getattr(self, section))
        if not self.evaluation.observables:
            del data["evaluation"]["observables"]
        if self.fork is not None:
            data["fork"] = {"at_step": self.fork.at_step, "controller": {
                "name": self.fork.controller.name, **plain_data(self.fork.controller.config)}}
        if self.gradient_transforms:
            data[TRANSFORMS_SECTION] = {choice.name: plain_data(choice.config) for choice in self.gradient_transforms}
        if self.init_weight_decay is not None:
            data["init_weight_decay"] = self.init_weight_decay
        return data

    def identity(self) -> dict[str, Any]:
        """What makes a run this run: its configuration without the settings that only choose how it
        is computed (device, compile, members per chunk), so changing those never retrains."""
        data = self.plain()
        data["training"] = {k: v for k, v in data["training"].items() if k not in EXECUTION_SETTINGS}
        if data["loss"] == LEGACY_LOSS:  # runs from before [loss] existed keep their ids
            del data["loss"]
        data["optimizer"] = legacy_optimizer(data["optimizer"])  # and runs from before optimizers had names
        if self.training.matmul_precision == "full":  # and runs from before matmul_precision existed
            del data["training"]["matmul_precision"]
        if self.gradient_transforms:  # a list, so the chain's order counts (ids hash JSON with sorted keys)
            data[TRANSFORMS_SECTION] = [{"name": choice.name, **plain_data(choice.config)}
                                        for choice in self.gradient_transforms]
        if self.training.batch_size == 0:  # and full-batch runs from before batch_size existed
            del data["training"]["batch_size"]
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
        """What a seed's initialization and split may depend on: task, architecture, weight decay (the
        optimizer's ``weight_decay`` option, 0 for one without, or the stage's ``init_weight_decay``). Never the controller, its rho, the
        optimizer's name, the learning rate, the loss, the gradient transforms or the budget."""
        plain = self.plain()
        own = getattr(self.optimizer.config, "weight_decay", 0.0)
        return {"task": plain["task"], "architecture": plain["architecture"],
                "weight_decay": own if self.init_weight_decay is None else self.init_weight_decay}

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
        identity = {"base": self.base_configuration(), "seed": self.seed,
                    "optimizer": legacy_optimizer(plain["optimizer"]),
                    "loss": plain["loss"], "precision": self.training.precision, "fork": plain["fork"]}
        if self.training.matmul_precision != "full":  # trunks stored before it existed keep their ids
            identity["matmul_precision"] = self.training.matmul_precision
        if self.training.batch_size:  # a trunk trained on mini-batches (full-batch trunks keep their ids)
            identity["batch_size"] = self.training.batch_size
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
        return split_seed(self.base_configuration()["task"], self.seed)


def split_seed(task: dict[str, Any], seed: int) -> int:
    """The seed of a run's data split: from its ``[task]`` table as plain data (name and options) and
    its seed only."""
    return derive_seed("split", task, seed)


def legacy_optimizer(plain_optimizer: dict[str, Any]) -> dict[str, Any]:
    """An ``[optimizer]`` table as identities hold it: AdamW's without its name (as every run stored
    before optimizers were plugins has it), any other optimizer's with its name."""
    if plain_optimizer.get("name") == LEGACY_OPTIMIZER:
        return {key: value for key, value in plain_optimizer.items() if key != "name"}
    return plain_optimizer


#: The moments ``[snapshots] at`` may name besides evaluation steps (integers).
SNAPSHOT_MOMENTS = ("t_mem", "t_grok", "end")


@attrs.frozen
class SnapshotConfig:
    """``[snapshots]``: the moments at which every run keeps its weights (see gnorm.snapshots): "t_mem"
    and "t_grok" (the evaluation step where each was detected), "end" (the run's last step) and
    evaluation steps (integers); with ``optimizer_state`` also the optimizer's state. Never part of a
    run's identity; ``at`` empty (the default) keeps none."""

    at: tuple[str | int, ...] = ()
    optimizer_state: bool = False

    @property
    def enabled(self) -> bool:
        return bool(self.at)

    def plain(self) -> dict[str, Any]:
        return {"at": list(self.at), "optimizer_state": self.optimizer_state}


@attrs.frozen
class Stage:
    name: str
    critical_norm: float | str | None
    runs: list[RunSpec]
    #: The stage's adaptive policy (``gnorm.adaptive.AdaptivePolicy``), None for a plain stage: its runs
    #: are then the pool the policy draws seeds from, and their ids are those of the plain stage.
    adaptive: Any = None


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
    #: The ``[snapshots]`` table (no snapshots when the file has none).
    snapshots: SnapshotConfig = SnapshotConfig()
    #: The file's ``[observers.<name>]`` tables as written (trackers; never part of a run's identity),
    #: resolved when the study runs (see gnorm.observers).
    observers: dict[str, Any] = attrs.field(factory=dict)

    @property
    def runs(self) -> list[RunSpec]:
        return [run for stage in self.stages for run in stage.runs]


def cells_of(runs: Iterable[RunSpec]) -> list[list[RunSpec]]:
    """Runs grouped by cell (same settings but the seed), in the order they were written."""
    cells: dict[str, list[RunSpec]] = {}
    for run in runs:
        cells.setdefault(run.cell_id, []).append(run)
    return list(cells.values())
