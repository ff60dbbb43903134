"""Where a study runs: the ``[executor]`` table, resolved to an executor plugin and its config when the
study runs (so results can be analysed where that plugin is not installed), and the command line's
choice of executor and options laid over the file's table."""

from __future__ import annotations

from typing import Any, Mapping

import attrs

from gnorm.converter import structure, suggest
from gnorm.describe import describe
from gnorm.errors import Problem, UserError
from gnorm.registry import Registry, UnknownComponent
from gnorm.runmodel import Experiment

DEFAULT_EXECUTOR = "local"
#: The ranges of the coordinator's own executor settings.
EXECUTOR_LIMITS = {"retries": (0, 100), "threads": (1, 4096)}


@attrs.frozen
class ExecutorChoice:
    """The executor plugin and its config, and what the coordinator itself reads from the table:
    ``retries`` (a failing cell is tried 1 + retries times) and ``threads`` (torch threads per cell;
    results depend on it, see gnorm.worker.torch_threads) and ``merge_cells`` (whether cells of a stage
    train as one ensemble: "auto" or "off"; see gnorm.merging)."""

    name: str
    config: Any
    retries: int = 2
    threads: int = 1
    merge_cells: str = "auto"


#: Keys of the ``[executor]`` table that the coordinator reads itself, whichever executor runs.
COORDINATOR_KEYS = ("retries", "threads", "merge_cells")
#: The values ``merge_cells`` takes (see gnorm.merging).
MERGE_CHOICES = ("auto", "off")


def with_executor(experiment: Experiment, name: str | None, options: Mapping[str, Any] | str | None = None, *,
                  scheduler: str | None = None) -> Experiment:
    """The experiment with the command line's ``--executor`` and the executor options it was given
    (``options``: table key -> value, as the executor plugin declares them; a value of None was not
    given). Naming another executor than the file's ``[executor] name`` drops that table's options (they
    belong to the other executor) but keeps ``retries`` and ``threads``. ``scheduler`` (or a string in
    place of ``options``) is the dask plugin's ``--scheduler``, as callers wrote it before options were
    declared by plugins."""
    given = {"scheduler": options} if isinstance(options, str) else dict(options or {})
    if scheduler is not None:
        given["scheduler"] = scheduler
    table = dict(experiment.executor)
    if name is not None and name != table.get("name", name):
        table = {key: table[key] for key in COORDINATOR_KEYS if key in table}
    if name is not None:
        table["name"] = name
    table.update({key: value for key, value in given.items() if value is not None})
    return attrs.evolve(experiment, executor=table)


def executor_choice(experiment: Experiment, registry: Registry) -> ExecutorChoice:
    """Resolve the ``[executor]`` table (default ``local``); raises :class:`UserError` naming the file
    and the dotted key of every problem."""
    choice, problems = resolve_executor_table(experiment.executor, registry, str(experiment.source))
    if problems:
        raise UserError(problems)
    return choice


def resolve_executor_table(table: Mapping[str, Any], registry: Registry,
                           source: str) -> tuple[ExecutorChoice | None, list[Problem]]:
    """The executor an ``[executor]`` table chooses, or every problem of the table (each naming
    ``source`` and its dotted key), and None."""
    options = dict(table)
    name = options.pop("name", DEFAULT_EXECUTOR)
    problems: list[Problem] = []
    own = {}
    for key, default in (("retries", 2), ("threads", 1)):
        value = options.pop(key, default)
        low, high = EXECUTOR_LIMITS[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            problems.append(Problem(source, f"executor.{key}",
                                    f"expected an integer from {low} to {high}, found {describe(value)}"))
        own[key] = value
    merge_cells = options.pop("merge_cells", "auto")
    if merge_cells not in MERGE_CHOICES:
        expected = ", ".join(map(repr, MERGE_CHOICES))
        problems.append(Problem(source, "executor.merge_cells", f"expected one of {expected}, found {describe(merge_cells)}"))
    own["merge_cells"] = merge_cells
    if not isinstance(name, str):
        return None, problems + [Problem(source, "executor.name", f"expected a string, found {describe(name)}")]
    try:
        component = registry.get("executor", name)
    except UnknownComponent as unknown:
        return None, problems + [Problem(source, "executor.name", str(unknown))]
    config, found = structure(options, component.config_class)
    for path, message, valid in found:
        problems.append(Problem(source, ".".join(("executor",) + path),
                                message + (suggest(path[-1], valid + ["name", *COORDINATOR_KEYS]) if valid else "")))
    return (None, problems) if problems else (ExecutorChoice(name, config, **own), [])
