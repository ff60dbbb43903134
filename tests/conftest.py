"""Shared helpers for gnorm's tests."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from builders import FREE, clamp_stage, write_study

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT.parent / "shared" / "reference"
GNORM = [sys.executable, "-m", "gnorm.cli"]


def tiny_study(tmp_path: Path, seeds: int = 2, p: int = 67, max_steps: int = 1500, critical_norm: str = '"free"',
               rhos: str = "[0.9, 1.1]", lr: float = 1e-2) -> Path:
    """A study that trains and groks in seconds (p = 67, d = 16, H = 32, lr 1e-2, half the pairs): the
    free stage and a clamp stage taking Wc from ``critical_norm``, sweeping rho over ``rhos`` (both
    written as TOML values, e.g. ``critical_norm="30.0"``, ``rhos="[1.1]"``). Tests that must catch a
    study while its cells train use ``SLOW_TINY`` (its cells train for a thousand steps and more). For
    other changes use :func:`builders.write_study`."""
    return write_study(tmp_path, experiment={"seeds": seeds}, task={"p": p}, training={"max_steps": max_steps},
                       optimizer={"lr": lr}, stages=[FREE, clamp_stage(toml_literal(critical_norm), toml_literal(rhos))])


#: ``tiny_study``'s keys for a slower study (p = 97, lr 5e-3, the tiny study's old settings): its clamp cells
#: train for about a thousand steps, so that a test can interrupt them.
SLOW_TINY = {"p": 97, "lr": 5e-3}


def sigint_as_a_terminal_sends_it() -> None:
    """``preexec_fn`` for a child that a test interrupts with SIGINT: its default disposition, unblocked,
    whatever the test process inherited (an ignored or blocked signal would be inherited by the child)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])


def toml_literal(text: str) -> Any:
    """The value a TOML literal reads as (``'"free"'`` is the string free, ``"[0.9, 1.1]"`` a list)."""
    return tomllib.loads(f"value = {text}")["value"]
