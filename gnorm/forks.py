"""Same-state forks: the trunk state a forked run starts from, its hash, and its files.

A stage with ``fork = { at_step = N }`` starts every run from the full training state (weights,
buffers, AdamW moments and step count) that the run's seed reaches at step N under the trunk's
controller. The trunk is trained once per seed and stored under the results directory as
``trunks/<trunk_id>.pt``, content-addressed by :meth:`gnorm.runmodel.RunSpec.trunk_identity`, so every
arm, every stage and every later ``gnorm run`` reuses it. A file is written whole or not at all.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import attrs
import torch

from gnorm.errors import UserError

TRUNK_FOLDER = "trunks"
FORMAT_VERSION = 1


@attrs.frozen(eq=False)
class TrunkState:
    """One member's full training state after ``step`` optimizer steps (tensors on the CPU, in the
    working precision): parameters and buffers by name, AdamW's first and second moments by
    parameter name, and another optimizer's state parts in ``optimizer_state`` (part -> name -> tensor)."""

    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]
    exp_avg: dict[str, torch.Tensor]
    exp_avg_sq: dict[str, torch.Tensor]
    step: int
    optimizer_state: dict[str, dict[str, torch.Tensor]] = attrs.field(factory=dict)

    @classmethod
    def from_parts(cls, parts: dict[str, dict[str, torch.Tensor]], step: int) -> "TrunkState":
        """A state from its parts by name (``params``, ``buffers``, the optimizer's state parts)."""
        rest = {part: tensors for part, tensors in parts.items() if part not in _FIXED_PARTS}
        return cls(*(parts.get(part, {}) for part in _FIXED_PARTS), step=step, optimizer_state=rest)

    def parts(self) -> dict[str, dict[str, torch.Tensor]]:
        """Every part by name, the optimizer's own among them (AdamW's ``exp_avg`` and ``exp_avg_sq`` only
        where it has them)."""
        fixed = {part: getattr(self, part) for part in _FIXED_PARTS}
        return {part: tensors for part, tensors in fixed.items() if tensors or part in ("params", "buffers")} \
            | self.optimizer_state

    def plain(self) -> dict[str, Any]:
        plain = {"params": self.params, "buffers": self.buffers, "exp_avg": self.exp_avg,
                 "exp_avg_sq": self.exp_avg_sq, "step": self.step}
        return plain | ({"optimizer_state": self.optimizer_state} if self.optimizer_state else {})


#: The parts every state has a field for (AdamW's moments among them, from before optimizers were plugins).
_FIXED_PARTS = ("params", "buffers", "exp_avg", "exp_avg_sq")


def state_sha256(state: TrunkState) -> str:
    """SHA-256 over the step count and, part by part and name by name in sorted order, each tensor's
    name, dtype, shape and bytes: equal hashes mean bit-identical states."""
    digest = hashlib.sha256(f"step={state.step}".encode())
    parts = {part: getattr(state, part) for part in _FIXED_PARTS} | dict(sorted(state.optimizer_state.items()))
    for part, tensors in parts.items():
        for name in sorted(tensors):
            tensor = tensors[name].detach().cpu().contiguous()
            digest.update(f"|{part}/{name}:{tensor.dtype}:{tuple(tensor.shape)}|".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class TrunkFiles:
    """Trunk states on disk, one file per trunk id (one seed's trunk)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def path(self, trunk_id: str) -> Path:
        return self.directory / f"{trunk_id}.pt"

    def has(self, trunk_id: str) -> bool:
        return self.path(trunk_id).exists()

    def save(self, trunk_id: str, identity: dict[str, Any], state: TrunkState) -> None:
        """Write to a temporary name, then rename: an interrupted write leaves no file behind."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(trunk_id)
        temporary = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        torch.save({"format": FORMAT_VERSION, "trunk_id": trunk_id, "identity": json.dumps(identity, sort_keys=True),
                    "sha256": state_sha256(state), "state": state.plain()}, temporary)
        os.replace(temporary, path)

    def load(self, trunk_id: str) -> TrunkState:
        """The stored state; refuses a file whose content no longer matches the hash it was saved with."""
        path = self.path(trunk_id)
        refusal = f"{path}: trunk state is damaged or from another gnorm; delete it to train the trunk again"
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            state = TrunkState(**data["state"])
        except Exception:  # unreadable or of another layout: same advice
            raise UserError(refusal) from None
        if data.get("format") != FORMAT_VERSION or state_sha256(state) != data["sha256"]:
            raise UserError(refusal)
        return state
