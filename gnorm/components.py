"""What a plugin hands to gnorm: one frozen description per piece, and the protocols the pieces meet.

Every registration hook returns a list of these. A description carries the piece's name (what an
experiment file writes in ``name = "..."``), a one-line summary (shown by ``gnorm plugins``), the attrs
class that the piece's TOML table is structured into, and a factory that builds the working object.
Beyond that, a description declares what the core must know about its piece (its contract): the config
field that starts an intervention, the weight-norm groups it needs, the facts it records, the
command-line options it adds. The core reads these fields and never probes a piece's config.

torch and numpy appear here in annotations only, so importing this module (as every plugin module does)
does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ClassVar, Protocol

import attrs

if TYPE_CHECKING:
    import numpy as np
    import torch


@attrs.frozen
class Component:
    """A named, configurable piece of an experiment."""

    kind: ClassVar[str] = "component"
    name: str
    summary: str
    config_class: type
    factory: Callable[..., Any]


@attrs.frozen
class Task(Component):
    """A supervised task. ``factory(config) -> TaskData`` (see :class:`TaskData`)."""

    kind: ClassVar[str] = "task"


@attrs.frozen
class Architecture(Component):
    """A single-model ``torch.nn.Module``. ``factory(config, task: TaskData) -> WeightNormModule``.

    gnorm trains the seeds of a cell as one batched ensemble built from this ordinary module, so the
    module needs no batching code of its own.
    """

    kind: ClassVar[str] = "architecture"


@attrs.frozen
class NormController(Component):
    """What happens to the weight norm after each optimizer step.

    ``factory(config, context: ControllerContext) -> Controller``. The contract, declared here:

    - ``uses_critical_norm``: the controller needs the critical norm Wc (the stage's ``critical_norm``
      key then becomes required).
    - ``starts_at``: the name of the config field holding the step at which the intervention starts
      (``"t_start"`` for every built-in controller that has one), or None. The loader reads it to refuse
      an intervention that starts before a fork it continues.
    - ``groups``: ``groups(config) -> list[str]``, the weight-norm groups the configured controller needs,
      or None; the loader checks them against the architecture's groups when the file is read.
    - ``facts``: the names of the facts the controller records once per run (the keys its
      ``after_step`` / ``before_training`` return), e.g. ``("norm_before_clamp", "held_norm")``.

    For example::

        gnorm.NormController(name="group_halve", summary="halve one group at t_start",
                             config_class=GroupHalveConfig, factory=GroupHalve,
                             starts_at="t_start", groups=lambda config: [config.group],
                             facts=("group_norm_before_halving",))
    """

    kind: ClassVar[str] = "norm_controller"
    uses_critical_norm: bool = False
    starts_at: str | None = None
    groups: Callable[[Any], list[str]] | None = None
    facts: tuple[str, ...] = ()


@attrs.frozen
class GrokCriterion(Component):
    """Decides T_mem and T_grok from a run's evaluations. ``factory(config) -> Criterion``."""

    kind: ClassVar[str] = "grok_criterion"


@attrs.frozen
class Analyzer(Component):
    """Turns stored runs into findings. ``factory(config) -> callable(records) -> Analysis``.

    ``report``: ``report(config, analysis, context) -> ReportSection | None``, the analyzer's section of
    ``gnorm report`` (title, paragraphs, tables, named figures) built from its own ``Analysis``; the
    context (:class:`gnorm.reporting.ReportContext`) gives the records, the store's trajectories and
    where figures go. None (the default): the report shows the analysis's tables and notes.
    ``report_config``: ``report_config(records) -> config | None`` chooses its settings for a report
    whose experiment file has no ``[[analysis]]`` table for it (None: it does not apply; without the
    field, the config class's defaults).
    """

    kind: ClassVar[str] = "analyzer"
    report: Callable[[Any, Any, Any], Any] | None = None
    report_config: Callable[[Any], Any] | None = None


@attrs.frozen
class Observable(Component):
    """Per-member scalars measured at every scheduled evaluation, without autograd, from the logits
    the evaluation computes anyway and the weights. ``factory(config, context: ObservableContext) ->
    ObservableMeter``; an experiment switches it on with ``[evaluation] observables = ["<name>"]``.

    The contract, declared here:

    - ``requires_groups``: weight-norm groups the architecture must have; an experiment that asks for
      the observable on an architecture without them is refused when the file is read.
    - ``at_grok``: metric keys whose value at T_grok the engine records as the fact ``<key>_at_grok``
      (the built-in ``logit_scale`` declares ``("logit_scale",)``, giving ``logit_scale_at_grok``).
    - ``facts``: the names of the facts recorded for this observable (``("logit_scale_at_grok",)``).
    """

    kind: ClassVar[str] = "observable"
    requires_groups: tuple[str, ...] = ()
    at_grok: tuple[str, ...] = ()
    facts: tuple[str, ...] = ()


@attrs.frozen
class Executor(Component):
    """Where cells train. ``factory(config, context: ExecutorContext)`` returns an object that behaves
    like ``concurrent.futures.Executor`` (``submit(fn, *args) -> concurrent.futures.Future`` and
    ``shutdown(wait=True, cancel_futures=False)``, both keywords used). gnorm's coordinator submits one task per cell (a picklable function and a
    :class:`gnorm.training.jobs.CellJob`) and keeps planning, retries and the store to itself.

    Set ``in_process`` when tasks run in the coordinator's own process: they then receive the
    coordinator's plugin registry (so plugins registered in-process work); other executors' workers
    build the registry themselves (gnorm's built-ins, then the ``gnorm`` entry points).

    The pool may offer ``progress_channel(receive)`` for step progress from its tasks (see
    gnorm.progress_channels); without it, cells show their start and end only.

    ``options``: command-line options this executor adds to ``gnorm run``, each setting one key of the
    ``[executor]`` table (see :class:`ExecutorOption`); the dask plugin declares ``--scheduler``::

        options=(gnorm.ExecutorOption(flag="--scheduler", key="scheduler", metavar="ADDRESS",
                                      help="address of a running dask scheduler"),)
    """

    kind: ClassVar[str] = "executor"
    in_process: bool = False
    options: tuple[ExecutorOption, ...] = ()


@attrs.frozen
class ExecutorOption:
    """A command-line option of ``gnorm run`` contributed by an executor plugin: ``gnorm run FILE flag
    VALUE`` sets ``executor.<key> = VALUE`` (read as a TOML value, so numbers and booleans keep their
    type, as with ``--set``). ``flag`` is a long option (``--scheduler``); ``help`` is its line in
    ``gnorm run --help``."""

    flag: str
    key: str
    help: str
    metavar: str = "VALUE"


# How members learn: the optimizer and the training loss (issue 14).


@attrs.frozen
class Optimizer(Component):
    """How each member's parameters move given its gradients, chosen by ``[optimizer] name`` (default
    ``adamw``). ``factory(config, context: OptimizerContext) -> BatchedOptimizer``.

    The optimizer works on the ensemble's stacked tensors (leading axis: member); its update must treat
    each member's slice on its own (elementwise, or slice by slice), so that a member trains as it would
    alone. Decoupled weight decay, where an optimizer has it, applies to ``context.decayed`` tensors only
    (the weight-norm tensors). A seed's initialization reads the config's ``weight_decay`` (0 without
    one), never the optimizer's name.
    """

    kind: ClassVar[str] = "optimizer"


@attrs.frozen
class Loss(Component):
    """The training loss, chosen by ``[loss] name`` (default ``cross_entropy``). ``factory(config) ->
    losses``, where ``losses(logits, labels) -> per-example losses`` is written for ONE model: logits
    ``[N, C]``, integer labels ``[N]``, losses ``[N]``, each example's loss depending on its own row only
    (gnorm batches it over members by stacking their rows). A run's training loss is the mean over its
    training examples; evaluation reports the same per-example losses on train and test.

    The contract, declared here:

    - ``temperature``: the name of the config field holding the output temperature tau > 0 (the
      built-ins' ``"temperature"``), or None. gnorm divides the logits by tau before the loss and in
      evaluation (outside the weight norm), so observables and accuracy see the same logits / tau.
    """

    kind: ClassVar[str] = "loss"
    temperature: str | None = None


COMPONENT_KINDS: tuple[type[Component], ...] = (Task, Architecture, NormController, GrokCriterion, Analyzer,
                                                Observable, Executor)
#: The kinds issue 14 added for how members learn.
COMPONENT_KINDS += (Optimizer, Loss)


# ---------------------------------------------------------------------------------------------------
# Gradient transforms (issue 14): what happens to each member's gradients before the optimizer step.


@attrs.frozen
class GradientTransform(Component):
    """A step of the gradient chain, written for ONE model in the style of optax.

    ``factory(config, context: TransformContext)`` returns an object with two pure functions of
    ``dict[str, Tensor]`` (parameter name -> tensor):

    - ``init(params) -> state``: the transform's state for one model (a dict of tensors, possibly empty);
    - ``update(grads, state, params) -> (new_grads, new_state)``: the gradients the next transform (or
      the optimizer) sees, and the state after this step. No Python branching on tensor values: gnorm
      batches both functions over the ensemble with ``torch.func.vmap`` over the member axis.

    An experiment chains transforms with ``[gradient_transforms.<name>]`` tables (applied in the file's
    order, each holding that transform's options). gnorm keeps each member's state stacked, drops it
    when the member leaves the ensemble and checkpoints it with the cell.
    """

    kind: ClassVar[str] = "gradient_transform"


@attrs.frozen
class TransformContext:
    """What a gradient transform may know when it is built: the weight-norm tensor names (the
    parameters in some ``weight_norm_groups()`` group, in group order), the groups themselves
    (group -> parameter names) and every parameter name."""

    norm_names: list[str]
    groups: dict[str, list[str]] = attrs.field(factory=dict)
    param_names: list[str] = attrs.field(factory=list)


COMPONENT_KINDS = COMPONENT_KINDS + (GradientTransform,)


# ---------------------------------------------------------------------------------------------------
# Observers (issue 15): trackers configured by ``[observers.<name>]`` tables.


@attrs.frozen
class Observer(Component):
    """A tracker of a study (TensorBoard, MLflow, ...), switched on by an ``[observers.<name>]`` table
    of its options (an empty table: the defaults); it never changes what trains or a run's id.

    ``factory(config, context: ObserverContext)`` is called once per ``gnorm run`` in the coordinator,
    before the study starts, and returns an object with any of the lifecycle methods, named and
    called like the lifecycle hooks without their ``gnorm_`` prefix (each may take any subset of the
    hook's arguments, by name): ``before_study``, ``before_run``, ``after_evaluation`` (every stored
    evaluation of a run, in step order), ``after_run`` and ``after_study``. A method that raises is
    reported in one line and the observer gets no more events but ``after_study``; the study goes on.
    """

    kind: ClassVar[str] = "observer"


@attrs.frozen
class ObserverContext:
    """What an observer may know when it is built: the results directory (absolute), the experiment's
    name and the path of its file."""

    results_dir: str
    experiment: str
    source: str


COMPONENT_KINDS = COMPONENT_KINDS + (Observer,)


# ---------------------------------------------------------------------------------------------------
# What the factories return.


@attrs.frozen
class InputSpec:
    """The shape of a task's inputs: ``tokens`` (``length`` integer ids below ``vocab_size``) or
    ``vector`` (``length`` floats)."""

    kind: str
    length: int
    vocab_size: int = 0


@attrs.frozen(eq=False)
class Split:
    """One seed's data: every example, and which of them are for training.

    ``inputs[i]`` and ``labels[i]`` are example ``i``; ``train_index`` and ``test_index`` are disjoint
    index tensors into them.
    """

    inputs: torch.Tensor
    labels: torch.Tensor
    train_index: torch.Tensor
    test_index: torch.Tensor


class TaskData(Protocol):
    input_spec: InputSpec
    num_classes: int

    def split(self, split_seed: int) -> Split:
        """Return the examples and the train/test split for one seed; must depend only on the seed."""


class WeightNormModule(Protocol):
    def weight_norm_groups(self) -> dict[str, list[str]]:
        """Group name -> names of the parameters in that group. Parameters in any group form the weight
        norm ||W||, receive weight decay and are rescaled by controllers; the rest (biases) do not."""


@attrs.frozen
class ControllerContext:
    """What a norm controller may know when it is built.

    ``groups`` maps each weight-norm group (``weight_norm_groups()``) to the positions of its tensors in
    the ``norm_tensors`` list the controller is handed, and ``tensor_names`` names those tensors in that
    order. ``group_critical_norms`` holds each group's critical norm (median over grokked source seeds
    of the group's norm at T_grok) when the stage takes Wc from another stage; empty otherwise.
    ``start_step`` is the step training resumes after: 0, or a same-state fork's ``at_step``. A forked
    arm's controller is not given ``before_training``; its first call is ``after_step(at_step)`` on the
    forked state (what a run without the fork would have seen right after that step), then every step
    from ``at_step + 1`` on. Where several cells of a stage train as one job (gnorm.merging), each
    cell's controller is built with its own context (its Wc, its member count) and handed its own
    members' slices of the stacked tensors only.
    """

    critical_norm: float | None
    num_members: int
    groups: dict[str, list[int]] = attrs.field(factory=dict)
    group_critical_norms: dict[str, float] = attrs.field(factory=dict)
    tensor_names: list[str] = attrs.field(factory=list)
    start_step: int = 0


class Controller(Protocol):
    def after_step(self, step: int, norm_tensors: list[torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """Called after optimizer step ``step`` (1-based) under ``torch.no_grad()``.

        ``norm_tensors`` are the weight-norm parameters of every ensemble member, stacked on a leading
        member axis; change them in place. Return per-member tensors worth recording (stored once per
        run under their key, e.g. the norm before and after the first clamp), or None.

        Optional methods: ``before_training(norm_tensors)`` is called once, under ``torch.no_grad()``,
        after initialization and before step 1 (for initial rescales), and may return facts like
        ``after_step``. ``keep(index)`` is called when finished members leave the ensemble, with the
        positions of those that stay, for controllers that hold per-member state.
        """


@attrs.frozen(eq=False)
class OptimizerContext:
    """What an optimizer may know when it is built: the ensemble's stacked parameters (leading axis:
    member) in the order ``step`` receives them, their names, and which are weight-norm tensors
    (``decayed``: those decoupled weight decay applies to)."""

    params: list[torch.Tensor]
    names: list[str]
    decayed: list[bool]


class BatchedOptimizer(Protocol):
    step_count: int

    def step(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        """One update of every member, in place, under ``torch.no_grad()``; ``step_count`` counts them
        (gnorm sets it when it restores a checkpoint or a fork's trunk)."""

    def state_tensors(self) -> dict[str, list[torch.Tensor]]:
        """The optimizer's per-parameter state by name (AdamW: ``exp_avg``, ``exp_avg_sq``), each a list
        in ``params`` order of stacked tensors shaped like the parameters: gnorm copies them into
        checkpoints and fork trunks and writes them back in place."""

    def keep(self, index: torch.Tensor) -> None:
        """Drop every member not in ``index`` (positions of those that stay)."""


@attrs.frozen
class ObservableContext:
    """What an observable may know when it is built: the architecture's weight-norm groups (group ->
    parameter names), the task's input shape and its number of classes."""

    groups: dict[str, list[str]]
    input_spec: InputSpec
    num_classes: int


@attrs.frozen(eq=False)
class EvaluationChunk:
    """A chunk of ensemble members at one evaluation, as an observer sees it (leading axis: member).

    ``logits[m, i]`` is member m's logit vector for example i exactly as the loss sees it (the
    forward's output), over every example of the task; ``labels[m, i]`` its class; ``train_mask[m, i]``
    is True for member m's training examples; ``params`` are the members' parameters by name.
    """

    logits: torch.Tensor
    labels: torch.Tensor
    train_mask: torch.Tensor
    params: dict[str, torch.Tensor]


class ObservableMeter(Protocol):
    def observe(self, chunk: EvaluationChunk) -> dict[str, torch.Tensor]:
        """Called under ``torch.no_grad()`` for every chunk of members at every scheduled evaluation.
        Return metric key -> one value per member of the chunk; the values become trajectory columns."""


@attrs.frozen
class GrokTimes:
    """T_mem and T_grok of one run (None where the threshold was never reached)."""

    t_mem: int | None
    t_grok: int | None


class Criterion(Protocol):
    def times(self, steps: np.ndarray, metrics: dict[str, np.ndarray]) -> GrokTimes:
        """T_mem and T_grok from a run's evaluations so far (``metrics`` keys: train_acc, test_acc,
        train_loss, test_loss, weight_norm)."""


@attrs.frozen
class ExecutorContext:
    """What an executor may know when it is built: the coordinator's plugin registry (for in-process
    executors) and how many torch threads each cell trains with (to size a pool: workers x threads)."""

    registry: Any
    threads_per_cell: int


# ---------------------------------------------------------------------------------------------------
# What analyzers read and return.


@attrs.frozen
class RunRecord:
    """One finished run as the store holds it.

    ``cell`` holds the swept values that name the run's cell (e.g. ``{"controller.rho": 1.1}``);
    ``config`` is the run's fully resolved configuration as plain data (``config["task"]["p"]``).
    ``t_grok`` is None for a censored run, which trained for ``budget`` steps without grokking.
    ``facts`` holds what controllers recorded once per run (e.g. ``norm_before_clamp``), and for a
    forked run the hash of the state it started from (``fork_state_sha256``, a string).
    """

    run_id: str
    stage: str
    cell: dict[str, Any]
    seed: int
    config: dict[str, Any]
    t_mem: int | None
    t_grok: int | None
    norm_at_grok: float | None
    budget: int
    facts: dict[str, Any] = attrs.field(factory=dict)

    @property
    def censored(self) -> bool:
        return self.t_grok is None


@attrs.frozen
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]]


@attrs.frozen
class Analysis:
    """An analyzer's findings: tables for people, ``numbers`` for tools (plain JSON data), and notes
    (what was dropped and why)."""

    analyzer: str
    tables: list[Table] = attrs.field(factory=list)
    numbers: dict[str, Any] = attrs.field(factory=dict)
    notes: list[str] = attrs.field(factory=list)
