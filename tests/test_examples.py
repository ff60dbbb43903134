"""Every example file validates, and each runs at the reduced size its header comment gives.

The reduced command is read from the file itself (the ``gnorm run`` line under ``# Reduced``), so the
comment a user copies is the command that is tested. Full runs are marked slow.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from gnorm.cli import main
from gnorm.loader import load_experiment
from gnorm.overrides import parse_override
from gnorm.registry import default_registry
from gnorm.store import Store

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FILES = sorted(EXAMPLES.rglob("*.toml"))
PAPER_FILES = [f for f in FILES if f.parent.name in ("paper-a", "paper-b")]


def reduced_overrides(path: Path) -> list[str]:
    """The ``--set`` values of the reduced ``gnorm run`` command in the file's header comment."""
    lines = path.read_text().splitlines()
    reduced = next(i for i, line in enumerate(lines) if line.startswith("# Reduced"))
    start = next(i for i, line in enumerate(lines) if i > reduced and line.lstrip("# ").startswith("gnorm run"))
    command = []
    for line in lines[start:]:
        text = line.lstrip("#").strip()
        command.append(text.rstrip("\\").strip())
        if not text.endswith("\\"):
            break
    words = shlex.split(" ".join(command))
    assert words[:3] == ["gnorm", "run", str(path.relative_to(EXAMPLES.parent))], words[:3]
    return [words[i + 1] for i, word in enumerate(words) if word == "--set"]


@pytest.fixture(scope="module")
def registry():
    return default_registry()


def test_there_is_an_example_per_paper_experiment():
    assert {f.parent.name for f in PAPER_FILES} == {"paper-a", "paper-b"} and len(PAPER_FILES) >= 10


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_every_example_validates_at_full_and_reduced_size(path, registry):
    full = load_experiment(path, registry)
    assert full.runs
    if path in PAPER_FILES:
        overrides = dict(parse_override(text) for text in reduced_overrides(path))
        reduced = load_experiment(path, registry, overrides)
        assert 0 < len(reduced.runs) < len(full.runs)


@pytest.mark.slow
@pytest.mark.parametrize("path", PAPER_FILES, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_every_paper_example_runs_at_its_reduced_size(path, tmp_path):
    arguments = ["run", str(path), "--out", str(tmp_path / "out")]
    for text in reduced_overrides(path):
        arguments += ["--set", text]
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 0, result.output
    store = Store(tmp_path / "out")
    assert len(store.records()) == len(store.plan()) > 0  # every planned run finished and is stored
