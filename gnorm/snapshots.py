"""Weight snapshots for mechanistic analysis: where the coordinator keeps them, and loading them back.

``[snapshots] at = ["t_mem", "t_grok", "end", 1000]`` (optional ``optimizer_state = true``) makes every
run keep its weights at those moments (gnorm.training.snapshots takes them in the worker; they travel
back with the run's result, so workers never write the results directory). The coordinator writes
each one to ``<results>/snapshots/<sha256[:2]>/<sha256>.pt``, named by the SHA-256 of its bytes
(identical weights are one file), atomically (a temporary file, fsynced, renamed), and then indexes
them in the store in the same transaction as the run (table ``snapshots``, gnorm.snapshot_index). A
kill leaves at worst a file no row names; a stored run's rows always name written files.

Loading: :func:`load_module` gives a ready single-model ``torch.nn.Module`` (the run's architecture,
built from its stored configuration, the snapshot's weights loaded, in eval mode), :func:`load_split`
the run's own data split, :func:`load_snapshot` the raw tensors (with the optimizer state where it was
kept). This module imports torch only inside those functions, so ``gnorm show`` stays light.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import attrs

from gnorm.atomic_files import write_atomically
from gnorm.converter import structure, suggest
from gnorm.errors import Problem, UserError, write_failure
from gnorm.runmodel import SNAPSHOT_MOMENTS, split_seed
from gnorm.snapshot_index import SnapshotEntry
from gnorm.store import Store

if TYPE_CHECKING:
    import torch

    from gnorm.components import RunRecord, Split
    from gnorm.registry import Registry

SNAPSHOT_FOLDER = "snapshots"


# ---------------------------------------------------------------------------------------------------
# Writing (the coordinator).


def snapshot_sha256(data: bytes) -> str:
    """The address of a snapshot file: SHA-256 of its bytes, in hex."""
    return hashlib.sha256(data).hexdigest()


def write_file_atomically(path: Path, data: bytes) -> None:
    """``data`` at ``path``, written atomically (:func:`gnorm.atomic_files.write_atomically`). A file
    already there is kept (same name, same bytes)."""
    if not path.exists():
        write_atomically(path, lambda handle: handle.write(data))


def write_snapshots(results_dir: str | Path, run_id: str, snapshots: Sequence[dict[str, Any]],
                    optimizer_state: bool) -> list[SnapshotEntry]:
    """Write a finished run's snapshots (as gnorm.training.snapshots takes them) under
    ``results_dir/snapshots/``; return their index rows, one per moment, for ``Store.write_run``."""
    entries = []
    for snapshot in snapshots:
        data = snapshot["data"]
        digest = snapshot_sha256(data)
        for moment in snapshot["moments"]:
            entry = SnapshotEntry(run_id, str(moment), snapshot["step"], digest, len(data), optimizer_state)
            entries.append(entry)
        try:
            write_file_atomically(Path(results_dir) / entry.file, data)
        except OSError as error:
            raise UserError([Problem(str(Path(results_dir) / SNAPSHOT_FOLDER), "", "cannot write a weight "
                                     f"snapshot here: {error.strerror or error}; the runs stored so far are "
                                     "intact, run the same command again to resume")]) from None
    return entries


@attrs.frozen
class SnapshotSummary:
    """What ``gnorm show`` says: snapshots indexed, runs with any, distinct files and their bytes."""

    snapshots: int
    runs: int
    files: int
    bytes: int

    def line(self) -> str:
        return (f"snapshots: {self.snapshots} of {self.runs} runs ({self.files} files, "
                f"{self.bytes / 2**20:.2f} MiB in {SNAPSHOT_FOLDER}/)")


def summary(entries: Sequence[SnapshotEntry]) -> SnapshotSummary:
    files = {entry.sha256: entry.bytes for entry in entries}
    return SnapshotSummary(len(entries), len({entry.run_id for entry in entries}), len(files), sum(files.values()))


def export_snapshots(results_dir: str | Path, entries: Sequence[SnapshotEntry], target: Path,
                     option: str = "") -> Path:
    """Copy the files of ``entries`` to ``target/snapshots/`` (each whole or not at all) and write
    ``target/snapshots.json``: one object per entry (run_id, moment, step, sha256, bytes,
    optimizer_state, and file: its path relative to ``target``). Returns the index's path; a failed
    write is one line naming ``option`` (the command line's) and the path."""
    destination = index = target / "snapshots.json"
    try:
        for entry in dict((entry.sha256, entry) for entry in entries).values():
            source = stored_file(results_dir, entry)
            destination = target / entry.file
            destination.parent.mkdir(parents=True, exist_ok=True)
            temporary = destination.with_name(f".{destination.name}.tmp-{os.getpid()}")
            shutil.copyfile(source, temporary)
            os.replace(temporary, destination)
        destination = index
        temporary = index.with_name(f".{index.name}.tmp-{os.getpid()}")
        temporary.write_text(json.dumps([{**attrs.asdict(entry), "file": entry.file} for entry in entries], indent=1))
        os.replace(temporary, index)
    except OSError as error:
        raise write_failure(option, destination, error) from None
    return index


# ---------------------------------------------------------------------------------------------------
# Reading.


def stored_file(results_dir: str | Path, entry: SnapshotEntry) -> Path:
    """The file of ``entry``, checked to exist."""
    path = Path(results_dir) / entry.file
    if not path.is_file():
        raise UserError([Problem(str(path), "", f"missing: the store indexes it as run {entry.run_id}'s snapshot at "
                                 f"{entry.moment}; the results directory lost it")])
    return path


def find_snapshot(results_dir: str | Path, run_id: str, at: str | int) -> tuple[RunRecord, SnapshotEntry]:
    """The stored run ``run_id`` and its snapshot at ``at``: "t_mem", "t_grok", "end", or a step (an
    integer, or its digits): any snapshot taken at that step. Raises :class:`UserError` saying why where
    there is none."""
    store = Store(results_dir, read_only=True)
    try:
        records = {record.run_id: record for record in store.records(planned_only=False)}
        if run_id not in records:
            raise UserError([Problem(str(store.path), f"run {run_id}", f"no such stored run ({len(records)} runs "
                                     f"are stored){suggest(run_id, records)}")])
        entries = store.snapshots(run_id)
    finally:
        store.close()
    record = records[run_id]
    moment = at_moment(at)
    found = [e for e in entries if (e.step == moment if isinstance(moment, int) else e.moment == moment)]
    if not found:
        raise UserError([Problem(str(Path(results_dir)), f"run {run_id}", missing_reason(record, entries, moment))])
    return record, found[0]


def at_moment(at: Any) -> str | int:
    """``at`` as a moment name or a step; anything else is refused naming the valid ones."""
    if isinstance(at, str) and at.isdigit():
        return int(at)
    if isinstance(at, str) and at in SNAPSHOT_MOMENTS or isinstance(at, int) and not isinstance(at, bool) and at > 0:
        return at
    raise UserError(f"at: expected one of {', '.join(SNAPSHOT_MOMENTS)} or an evaluation step, found {at!r}"
                    + (suggest(at, SNAPSHOT_MOMENTS) if isinstance(at, str) else ""))


def missing_reason(record: RunRecord, entries: Sequence[SnapshotEntry], moment: str | int) -> str:
    """Why run ``record`` has no snapshot at ``moment``, in words, with the snapshots it has."""
    if not entries:
        return ("has no snapshots: it was stored without a [snapshots] table (a table added later does not "
                "retrain stored runs; train it again in a new results directory to get them)")
    has = ", ".join(f"{e.moment} (step {e.step})" for e in entries)
    if moment in ("t_mem", "t_grok") and getattr(record, moment) is None:
        what = "never memorized" if moment == "t_mem" else f"never grokked (censored at step {record.budget})"
        return f"{what}, so it has no {moment} snapshot; it has {has}"
    trained = record.facts.get("steps_trained")
    if isinstance(moment, int) and isinstance(trained, (int, float)) and moment > trained:
        return f"stopped at step {int(trained)}, before step {moment}; it has {has}"
    return f"has no snapshot at {moment} (not among the moments it was trained with); it has {has}"


def load_snapshot(results_dir: str | Path, run_id: str, at: str | int) -> dict[str, Any]:
    """The stored snapshot of run ``run_id`` at ``at`` (see :func:`find_snapshot`) as saved:
    ``{"step", "moment", "tensors": {part: {name: tensor}}, "optimizer_steps"}``, its bytes checked
    against their SHA-256."""
    import torch
    import io

    _, entry = find_snapshot(results_dir, run_id, at)
    path = stored_file(results_dir, entry)
    data = path.read_bytes()
    if snapshot_sha256(data) != entry.sha256:
        raise UserError([Problem(str(path), "", "damaged: its bytes no longer hash to its name")])
    saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    return {"step": entry.step, "moment": entry.moment, "tensors": saved["tensors"],
            "optimizer_steps": saved.get("optimizer_steps")}


def load_module(results_dir: str | Path, run_id: str, at: str | int,
                registry: Registry | None = None) -> torch.nn.Module:
    """A ready single-model module of run ``run_id`` at ``at`` ("t_mem", "t_grok", "end" or a step):
    the run's architecture built from its stored configuration (with ``registry``, default this
    process's), the snapshot's parameters and buffers loaded, in the weights' dtype, in eval mode. It
    computes the logits before any loss temperature; arg-max accuracy on the run's test split
    (:func:`load_split`) is the stored ``test_acc`` of the snapshot's step."""
    import torch

    record, _ = find_snapshot(results_dir, run_id, at)
    snapshot = load_snapshot(results_dir, run_id, at)
    registry = _registry(registry)
    task = _component(registry, "task", record, None)
    with torch.random.fork_rng(devices=[]):
        module = _component(registry, "architecture", record, task)
    _load_weights(module, snapshot["tensors"]["params"], snapshot["tensors"]["buffers"], record.run_id)
    return module.eval()


def _load_weights(module: torch.nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                  run_id: str) -> None:
    """Put the stored tensors in ``module`` as the ensemble held them: every parameter and buffer by
    the name ``named_parameters`` / ``named_buffers`` gives it (non-persistent buffers and tied
    weights included), in the stored dtype."""
    import torch

    names = ({name for name, _ in module.named_parameters()}, {name for name, _ in module.named_buffers()})
    if names != (set(params), set(buffers)):
        raise UserError([Problem(f"run {run_id}", "architecture", "the snapshot's tensors do not match the "
                                 "architecture built from the stored configuration (another version of its plugin?)")])
    for kind, stored, named in (("_parameters", params, module.named_parameters),
                                ("_buffers", buffers, module.named_buffers)):
        replacement = {id(tensor): stored[name] for name, tensor in named()}
        for name, tensor in list(named(remove_duplicate=False)):
            owner, _, leaf = name.rpartition(".")
            value = replacement[id(tensor)]
            getattr(module.get_submodule(owner), kind)[leaf] = torch.nn.Parameter(value) if kind == "_parameters" \
                else value


def load_split(results_dir: str | Path, run_id: str, registry: Registry | None = None) -> Split:
    """Run ``run_id``'s own data split (inputs, labels, train and test indices), rebuilt from its
    stored task configuration and seed."""
    store = Store(results_dir, read_only=True)
    try:
        record = next((r for r in store.records(planned_only=False) if r.run_id == run_id), None)
    finally:
        store.close()
    if record is None:
        raise UserError([Problem(str(Path(results_dir)), f"run {run_id}", "no such stored run")])
    task = _component(_registry(registry), "task", record, None)
    return task.split(split_seed(record.config["task"], record.seed))


def _registry(registry: Registry | None) -> Registry:
    if registry is not None:
        return registry
    from gnorm.registry import default_registry

    return default_registry()


def _component(registry: Registry, section: str, record: RunRecord, task: Any) -> Any:
    """The run's task (``task`` None) or architecture (on ``task``), built from its stored table."""
    options = dict(record.config[section])
    name = options.pop("name")
    component = registry.get(section, name)
    config, problems = structure(options, component.config_class)
    if config is None:
        raise UserError([Problem(f"run {record.run_id}", f"{section}.{'.'.join(path)}", message)
                         for path, message, _ in problems])
    return component.factory(config) if task is None else component.factory(config, task)
