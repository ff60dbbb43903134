"""What one member of a cell has produced so far, and the run record it becomes."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Sequence

import attrs

from gnorm.components import GrokTimes, RunRecord
from gnorm.science import contraction_norms

if TYPE_CHECKING:
    from gnorm.runmodel import RunSpec

#: The metrics every evaluation records (besides one ``norm/<group>`` per group and the observables').
METRICS = ("train_loss", "test_loss", "train_acc", "test_acc", "weight_norm")


@attrs.define
class RunLog:
    """What one member has produced so far (host side)."""

    run: RunSpec
    steps: list[int] = attrs.field(factory=list)
    metrics: dict[str, list[float]] = attrs.field(factory=dict)
    facts: dict[str, float] = attrs.field(factory=dict)
    times: GrokTimes = GrokTimes(None, None)
    started: float = attrs.field(factory=time.perf_counter)
    #: The weight snapshots taken so far (see gnorm.training.snapshots; empty without ``[snapshots]``).
    snapshots: list[dict[str, Any]] = attrs.field(factory=list)

    def append(self, step: int, values: dict[str, float]) -> None:
        self.steps.append(step)
        for key, value in values.items():
            self.metrics.setdefault(key, []).append(value)

    def plain(self) -> dict[str, Any]:
        """What a checkpoint keeps of this log: evaluations, facts, T_mem and T_grok so far, the
        seconds trained, and the snapshots taken."""
        return {"run_id": self.run.run_id, "steps": self.steps, "metrics": self.metrics, "facts": self.facts,
                "t_mem": self.times.t_mem, "t_grok": self.times.t_grok,
                "seconds": time.perf_counter() - self.started, "snapshots": self.snapshots}

    @classmethod
    def from_plain(cls, run: RunSpec, data: dict[str, Any]) -> "RunLog":
        """The log ``plain`` gave, for ``run``; its clock goes on from the seconds trained."""
        return cls(run, list(data["steps"]), {k: list(v) for k, v in data["metrics"].items()}, dict(data["facts"]),
                   GrokTimes(data["t_mem"], data["t_grok"]), time.perf_counter() - data["seconds"],
                   list(data.get("snapshots", [])))

    def record(self, critical_norm: float | None, compiled: bool = False, at_grok: Sequence[str] = ()) -> RunRecord:
        """The run as stored. A grokked run's facts hold each group's norm at T_grok as
        ``norm_at_grok/<group>`` (what per-group critical norms are the median of) and, for each metric
        key in ``at_grok`` (the keys the cell's observables declare) that was observed, its value at
        T_grok as ``<key>_at_grok``; every run's facts hold ``norm_at_memorization`` and ``peak_norm``
        (read by ``free_contraction``) where defined."""
        norm_at_grok = None
        facts = dict(self.facts)
        if self.times.t_grok is not None:
            grok_index = self.steps.index(self.times.t_grok)
            norm_at_grok = self.metrics["weight_norm"][grok_index]
            facts.update({f"norm_at_grok/{key[len('norm/'):]}": values[grok_index]
                          for key, values in self.metrics.items() if key.startswith("norm/")})
            facts.update({f"{key}_at_grok": self.metrics[key][grok_index] for key in at_grok if key in self.metrics})
        if self.steps:
            facts.update(contraction_norms(self.steps, self.metrics["weight_norm"], self.times.t_mem, self.times.t_grok))
        facts.update(steps_trained=self.steps[-1] if self.steps else 0,
                     wall_seconds=time.perf_counter() - self.started, compiled=float(compiled))
        if critical_norm is not None:
            facts["critical_norm"] = critical_norm
        return RunRecord(run_id=self.run.run_id, stage=self.run.stage, cell=self.run.cell, seed=self.run.seed,
                         config=self.run.plain(), t_mem=self.times.t_mem, t_grok=self.times.t_grok,
                         norm_at_grok=norm_at_grok, budget=self.run.training.max_steps, facts=facts)
