"""gnorm-tensorboard: every gnorm run as one TensorBoard run: its evaluations as scalars, its config and outcome.

Switched on by an ``[observers.tensorboard]`` table in the experiment file. Each gnorm run gets the folder
``<log_dir>/<study>/<stage>/<cell>/seed<seed>-<run_id>`` (``log_dir`` defaults to
``<results_dir>/tensorboard``), holding every stored evaluation's metrics as scalars at their step, the
run's resolved configuration as text (and, with ``hparams = true``, flattened into the HParams
dashboard) and its outcome (``outcome/t_grok`` and the rest, as scalars at the run's last evaluated
step, and as text). A run announced again (trained again after an interruption) replaces its folder,
so a run's events are never written twice; a finished study run again announces nothing.

This module imports no torch and no tensorboard until a study starts with the table, so listing
plugins stays fast.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import attrs

import gnorm


@attrs.frozen
class TensorBoardConfig:
    #: Where the event files go (default ``<results_dir>/tensorboard``); a relative path is relative to
    #: the current directory, as ``--out`` is.
    log_dir: str | None = None
    #: Also write each run's flattened configuration and outcome for TensorBoard's HParams dashboard.
    hparams: bool = True


def flattened(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables as one table of dotted keys: ``{"task": {"p": 97}}`` -> ``{"task.p": 97}``."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flattened(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def folder_name(text: str) -> str:
    """``text`` as one folder name: runs of characters other than letters, digits, ``.``, ``=``, ``_``
    and ``-`` become one ``_`` (``rho=1.1, lr=0.001`` -> ``rho=1.1_lr=0.001``; ``(all)`` -> ``all``)."""
    return re.sub(r"[^A-Za-z0-9.=_-]+", "_", text).strip("_") or "_"


def run_folder(log_dir: Path, study: str, stage: str, cell_label: str, seed: int, run_id: str) -> Path:
    """``<log_dir>/<study>/<stage>/<cell>/seed<seed>-<run_id>``: one TensorBoard run per gnorm run,
    grouped by study, stage and cell (a cell's label names it only within its stage)."""
    return log_dir / folder_name(study) / folder_name(stage) / folder_name(cell_label) / f"seed{seed}-{run_id}"


def outcome(record: Any, critical_norm: float | None) -> dict[str, float]:
    """The run's outcome as numbers: ``censored`` (1 when it never grokked within its budget),
    ``budget``, and where known ``t_mem``, ``t_grok``, ``norm_at_grok`` and the ``critical_norm`` Wc it
    was given."""
    numbers = {"censored": float(record.censored), "budget": float(record.budget)}
    for key, value in (("t_mem", record.t_mem), ("t_grok", record.t_grok), ("norm_at_grok", record.norm_at_grok),
                       ("critical_norm", critical_norm)):
        if value is not None:
            numbers[key] = float(value)
    return numbers


def hparam_value(value: Any) -> bool | int | float | str:
    """A configuration value as the HParams dashboard takes it: numbers, booleans and strings as they
    are, anything else (None, lists) as its JSON text."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value)


class TensorBoardObserver:
    """Writes each announced run with ``torch.utils.tensorboard.SummaryWriter``."""

    def __init__(self, config: TensorBoardConfig, context: Any):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package: checked at start

        self.writer_class = SummaryWriter
        self.log_dir = Path(config.log_dir) if config.log_dir else Path(context.results_dir) / "tensorboard"
        self.hparams = config.hparams
        self.study = context.experiment
        self.open: dict[str, tuple[Any, dict[str, Any], int]] = {}  # run id -> writer, config, last step

    def before_run(self, run_id: str, stage: str, seed: int, config: dict[str, Any], cell_label: str) -> None:
        folder = run_folder(self.log_dir, self.study, stage, cell_label, seed, run_id)
        if folder.exists():  # announced before (trained again after an interruption): written afresh
            shutil.rmtree(folder)
        writer = self.writer_class(str(folder))
        writer.add_text("config", "```\n" + json.dumps(config, indent=2, sort_keys=True) + "\n```", 0)
        self.open[run_id] = (writer, config, 0)

    def after_evaluation(self, run_id: str, step: int, metrics: dict[str, float]) -> None:
        writer, config, _ = self.open[run_id]
        for key, value in metrics.items():
            if value is not None:
                writer.add_scalar(key, float(value), step)
        self.open[run_id] = (writer, config, step)

    def after_run(self, record: Any, critical_norm: float | None) -> None:
        writer, config, last_step = self.open.pop(record.run_id)
        numbers = outcome(record, critical_norm)
        for key, value in numbers.items():
            writer.add_scalar(f"outcome/{key}", value, last_step)
        writer.add_text("outcome", "\n".join(f"- {key}: {value:g}" for key, value in numbers.items())
                        + ("\n- grokked: no (censored)" if record.censored else ""), last_step)
        if self.hparams:
            from torch.utils.tensorboard.summary import hparams

            values = {key: hparam_value(value) for key, value in flattened(config).items()
                      if not (isinstance(value, float) and not math.isfinite(value))}
            for summary in hparams(values, {f"outcome/{key}": value for key, value in numbers.items()}):
                writer.file_writer.add_summary(summary)
        writer.close()

    def after_study(self) -> None:
        for writer, _, _ in self.open.values():  # runs whose announcement was cut short
            writer.close()
        self.open.clear()


@gnorm.hookimpl
def gnorm_observers():
    return [gnorm.Observer(name="tensorboard", summary="each run's evaluations, config and outcome as a "
                           "TensorBoard run under <results_dir>/tensorboard", config_class=TensorBoardConfig,
                           factory=TensorBoardObserver)]
