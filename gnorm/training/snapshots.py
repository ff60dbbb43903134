"""Weight snapshots taken by the training loop: at an evaluation step, one member's weights (and, where
asked, its optimizer state) copied off the ensemble and serialized, kept in the member's log until the
run is returned (and in checkpoints meanwhile). Where the coordinator keeps them: gnorm.snapshots.

A snapshot is plain data, ``{"step": int, "moments": [moment, ...], "data": bytes}``: the bytes are
``torch.save`` of ``{"format": 1, "tensors": {part: {name: tensor}}, "optimizer_steps": int | None}``,
with parts "params" and "buffers" (and the optimizer's state parts, e.g. AdamW's "exp_avg" and
"exp_avg_sq", with ``optimizer_state``). The same tensors always give the same bytes, so the
coordinator can address a file by the SHA-256 of its bytes.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any, Sequence

import torch

if TYPE_CHECKING:
    from gnorm.components import BatchedOptimizer
    from gnorm.runmodel import SnapshotConfig
    from gnorm.training.ensemble import Ensemble
    from gnorm.training.runlog import RunLog

SNAPSHOT_FORMAT = 1


def member_snapshot(ensemble: Ensemble, optimizer: BatchedOptimizer, position: int, optimizer_state: bool) -> bytes:
    """Member ``position``'s parameters and buffers (and optimizer state), copied to the CPU (only that
    member's slices are copied) and serialized."""
    if optimizer_state:
        parts = ensemble.training_tensors(optimizer)
    else:
        parts = {"params": ensemble.params, "buffers": ensemble.buffers}
    tensors = {part: {name: tensor[position].detach().to("cpu", copy=True) for name, tensor in named.items()}
               for part, named in parts.items()}
    buffer = io.BytesIO()
    torch.save({"format": SNAPSHOT_FORMAT, "tensors": tensors,
                "optimizer_steps": optimizer.step_count if optimizer_state else None}, buffer)
    return buffer.getvalue()


def moments_due(config: SnapshotConfig, log: RunLog, step: int, ending: bool) -> list[str | int]:
    """The moments of ``config.at`` that fall on the evaluation at ``step`` for this member: t_mem or
    t_grok where the criterion dates it at this very step, "end" where the member stops here
    (``ending``), an integer equal to ``step``."""
    hits = {"t_mem": log.times.t_mem == step, "t_grok": log.times.t_grok == step, "end": ending}
    return [moment for moment in config.at if (hits[moment] if isinstance(moment, str) else moment == step)]


def take_snapshots(config: SnapshotConfig, ensemble: Ensemble, optimizer: BatchedOptimizer, logs: Sequence[RunLog],
                   step: int, ending: Sequence[int]) -> None:
    """After the evaluation at ``step``: each member with a moment due (``ending``: positions of the
    members that stop here) keeps one snapshot of its state for all of them."""
    for position, log in enumerate(logs):
        moments = moments_due(config, log, step, position in ending)
        if moments:
            log.snapshots.append({"step": step, "moments": moments,
                                  "data": member_snapshot(ensemble, optimizer, position, config.optimizer_state)})


def settled(snapshots: Sequence[dict[str, Any]], t_mem: int | None, t_grok: int | None) -> list[dict[str, Any]]:
    """A finished run's snapshots, without a t_mem or t_grok label whose step is no longer the run's
    T_mem or T_grok (a criterion that revised it later); snapshots left with no moment are dropped."""
    final = {"t_mem": t_mem, "t_grok": t_grok}
    kept = []
    for snapshot in snapshots:
        moments = [m for m in snapshot["moments"] if m not in final or final[m] == snapshot["step"]]
        if moments:
            kept.append({**snapshot, "moments": moments})
    return kept
