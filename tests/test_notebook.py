"""examples/notebooks/tour.ipynb: its study is a valid experiment (fast), and the notebook runs top to
bottom in a real Jupyter kernel (slow: it trains the study)."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest

from conftest import ROOT

import gnorm

NOTEBOOK = ROOT / "examples" / "notebooks" / "tour.ipynb"


def _study_of(notebook: dict) -> dict:
    """The ``study = {...}`` dict the notebook runs, read without running anything."""
    for cell in notebook["cells"]:
        if cell["cell_type"] != "code":
            continue
        for node in ast.parse("".join(cell["source"])).body:
            if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["study"]:
                return ast.literal_eval(node.value)
    raise AssertionError("the notebook has no `study = {...}` cell")


def test_the_tour_notebooks_study_loads_as_a_free_and_a_four_level_clamp_stage():
    from gnorm.registry import default_registry
    from gnorm.studies import load

    experiment = load(_study_of(json.loads(NOTEBOOK.read_text())), default_registry())
    assert [stage.name for stage in experiment.stages] == ["free", "clamp"]
    assert len(experiment.runs) == 2 + 4 * 2


@pytest.mark.slow
def test_the_tour_notebook_runs_top_to_bottom_in_a_real_kernel(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="running the notebook needs gnorm[notebook]")
    nbclient = pytest.importorskip("nbclient", reason="running the notebook needs gnorm[notebook]")
    pytest.importorskip("ipykernel", reason="running the notebook needs a kernel (gnorm[notebook])")
    pytest.importorskip("pandas", reason="the notebook's API calls need pandas (gnorm[notebook])")
    # The kernel is a new process: it imports this tree's gnorm, as the test does.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, kernel_name="python3", timeout=1800,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, where a cell fails
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    figures = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(figures) == 2  # T_grok against rho, and the learning curves
    with gnorm.open(tmp_path / "runs" / "tour") as results:
        runs = results.runs()
    assert len(runs) == 10 and set(runs["stage"]) == {"free", "clamp"}
    printed = "".join(output.get("text", "") for output in outputs if output.output_type == "stream")
    assert "delay law" in printed and "alpha =" in printed
