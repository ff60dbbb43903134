"""Shared helpers for gnorm's tests."""

from __future__ import annotations

import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT.parent / "shared" / "reference"
GNORM = [sys.executable, "-m", "gnorm.cli"]


TINY_STUDY = """
[experiment]
name = "tiny"
seeds = {seeds}

[task]
name = "modular_addition"
p = {p}
train_fraction = 0.5

[architecture]
name = "mlp"
embed_dim = 16
hidden_dim = 32

[optimizer]
lr = 5e-3

[training]
max_steps = {max_steps}

[evaluation]
schedule = "every"
every = 20

[[stage]]
name = "free"

[[stage]]
name = "clamp"
critical_norm = {critical_norm}
controller = {{ name = "clamp", t_start = 100 }}
sweep = {{ "controller.rho" = {rhos} }}
"""


def tiny_study(tmp_path: Path, seeds: int = 2, p: int = 97, max_steps: int = 1500, critical_norm: str = '"free"',
               rhos: str = "[0.9, 1.1]") -> Path:
    """A study that trains and groks in seconds (p = 97, d = 16, H = 32, lr 5e-3, half the pairs)."""
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_STUDY.format(seeds=seeds, p=p, max_steps=max_steps, critical_norm=critical_norm, rhos=rhos))
    return path
