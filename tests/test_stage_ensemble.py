"""Whole stages as one ensemble (gnorm.merging, gnorm.training.segments): several cells of a stage
trained as one job store, member by member, exactly what each cell stores when it trains alone."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
import torch

import gnorm.training.loop
from builders import FREE, clamp_stage, write_study
from gnorm.checkpoints import CHECKPOINT_FOLDER, checkpoint_path, job_identity
from gnorm.loader import load_experiment
from gnorm.merging import merge_key, merged
from gnorm.planner import PendingCell, checkpointed_parts, split_cell
from gnorm.progress import Progress
from gnorm.registry import build_registry
from gnorm.runmodel import cells_of
from gnorm.scheduler import run_experiment
from gnorm.store import Store
from gnorm.training.build import train_cell
from gnorm.training.jobs import CellJob
from gnorm.worker import torch_threads, train_cell_task

REGISTRY = build_registry(autoload=False)
RHOS = (0.8, 1.0, 1.2)
#: Each rho cell's own Wc (a merged job holds one per cell).
WCS = (27.0, 30.0, 33.0)


def study(tmp_path: Path, seeds=(0, 1), max_steps: int = 300, stages=None, **sections) -> Path:
    """The tiny study at p = 59, lr 1e-2 (d = 16, H = 32; seeds 0 and 1 grok near step 230): by default
    a clamp stage at Wc 30 sweeping ``RHOS``."""
    stages = stages if stages is not None else [clamp_stage(30.0, RHOS, t_start=100)]
    sections.setdefault("training", {"max_steps": max_steps, "checkpoint_seconds": 0})
    return write_study(tmp_path, experiment={"name": "merged", "seeds": list(seeds)}, task={"p": 59},
                       optimizer={"lr": 1e-2}, stages=stages, **sections)


def comparable(results) -> dict:
    """run id -> (record without its wall time, evaluation steps, metric columns)."""
    rows = {}
    for result in results:
        record = attrs.asdict(result.record)
        record["facts"] = {k: v for k, v in record["facts"].items() if k != "wall_seconds"}
        rows[result.record.run_id] = (record, result.steps, result.metrics)
    return rows


def merged_job(cells, wcs, **keys) -> CellJob:
    return CellJob([run for cell in cells for run in cell], None, {}, **keys,
                   cell_norms={cell[0].cell_id: (wc, {}) for cell, wc in zip(cells, wcs)})


def alone(cells, wcs) -> dict:
    out = {}
    for cell, wc in zip(cells, wcs):
        out.update(comparable(train_cell_task(CellJob(cell, wc), 1, REGISTRY)))
    return out


def assert_members_left_early(results: dict) -> None:
    """Some member grokked (and left the ensemble) while others trained on."""
    grok_steps = {record["t_grok"] for record, _, _ in results.values()}
    assert len(grok_steps) >= 2 and grok_steps - {None}, grok_steps


# ---------------------------------------------------------------------------------------------------
# The job: each member as its cell alone, bit for bit.


def test_a_merged_clamp_stage_stores_each_member_as_its_cell_alone(tmp_path):
    cells = cells_of(load_experiment(study(tmp_path), REGISTRY).runs)
    assert len(cells) == 3 and len({merge_key(cell[0]) for cell in cells}) == 1
    merged = comparable(train_cell_task(merged_job(cells, WCS), 1, REGISTRY))
    expected = alone(cells, WCS)
    assert merged.keys() == expected.keys() and len(merged) == 6
    for run_id, (record, steps, metrics) in expected.items():
        assert merged[run_id] == (record, steps, metrics), run_id  # T_grok, facts, every metric, bit for bit
    held = {record["facts"]["critical_norm"]: record["facts"]["held_norm"] for record, _, _ in merged.values()}
    assert held == pytest.approx({wc: rho * wc for rho, wc in zip(RHOS, WCS)})  # each cell its own rho * Wc


def test_members_leave_a_merged_job_from_their_own_segment(tmp_path):
    """Seeds that grok leave the ensemble at different steps; a controller with per-member state
    (relative_clamp) keeps the state of the members that stay, segment by segment."""
    held = {"name": "held", "controller": {"name": "relative_clamp", "t_start": 100},
            "sweep": {"controller.factor": [0.9, 1.0, 1.1]}}
    cells = cells_of(load_experiment(study(tmp_path, seeds=(0, 1, 2), stages=[held]), REGISTRY).runs)
    merged = comparable(train_cell_task(merged_job(cells, (None,) * 3), 1, REGISTRY))
    expected = alone(cells, (None,) * 3)
    assert merged == expected
    assert_members_left_early(merged)


def test_cells_with_different_controllers_share_one_job(tmp_path):
    """The per-member controller is generic: a free cell, a clamp cell and a one-shot rescale cell."""
    stages = [FREE, clamp_stage(30.0, (1.0,), t_start=100),
              {"name": "rescale", "critical_norm": 30.0, "controller": {"name": "rescale", "rho": 0.9, "t_start": 150}}]
    cells = cells_of(load_experiment(study(tmp_path, stages=stages), REGISTRY).runs)
    wcs = (None, 30.0, 30.0)
    assert comparable(train_cell_task(merged_job(cells, wcs), 1, REGISTRY)) == alone(cells, wcs)


def test_cells_with_different_learning_rates_share_one_job(tmp_path):
    """Each cell's own AdamW on its members' views (gnorm.training.segments.SegmentedOptimizer): lr and
    rho swept together, members leaving, every member as its cell alone."""
    stage = {**clamp_stage(30.0, (1.0,), t_start=100), "sweep": {"controller.rho": [0.9, 1.1], "optimizer.lr": [1e-2, 8e-3]}}
    cells = cells_of(load_experiment(study(tmp_path, stages=[stage]), REGISTRY).runs)
    assert len(cells) == 4 and len({merge_key(cell[0]) for cell in cells}) == 1
    wcs = (30.0,) * 4
    merged = comparable(train_cell_task(merged_job(cells, wcs), 1, REGISTRY))
    assert merged == alone(cells, wcs)
    assert_members_left_early(merged)


def test_a_merged_job_resumes_from_its_checkpoint_bit_identical(tmp_path):
    class Interrupted(Exception):
        pass

    cells = cells_of(load_experiment(study(tmp_path, training={"max_steps": 300, "checkpoint_seconds": 1e-6}),
                                     REGISTRY).runs)
    runs = [run for cell in cells for run in cell]
    job = merged_job(cells, WCS, checkpoint=str(checkpoint_path(tmp_path / "ckpt", [r.run_id for r in runs])))
    uninterrupted = comparable(train_cell_task(attrs.evolve(job, checkpoint=None), 1, REGISTRY))

    def progress(at: int, active: int) -> None:
        if at >= 200:
            raise Interrupted(at)
    with torch_threads(1), pytest.raises(Interrupted):
        train_cell(job, REGISTRY, lambda record, log: None, progress)
    assert torch.load(job.checkpoint, weights_only=True)["step"] == 180
    other = attrs.evolve(job, cell_norms={**job.cell_norms, cells[0][0].cell_id: (28.0, {})})
    assert job_identity(other, "cpu") != job_identity(job, "cpu")  # another cell's Wc: not this job's state
    assert comparable(train_cell_task(job, 1, REGISTRY)) == uninterrupted


# ---------------------------------------------------------------------------------------------------
# The study: merge_cells chooses, never changes a run's id or a result.


def stored(out: Path) -> dict:
    store = Store(out)
    return {r.run_id: (r.t_grok, r.t_mem, r.norm_at_grok, {k: v for k, v in r.facts.items() if k != "wall_seconds"},
                       store.trajectory(r.run_id)) for r in store.records()}


def run_study(path: Path, out: Path, overrides: dict | None = None, **executor) -> str:
    """Run the study at ``path`` into ``out`` with these ``[executor]`` keys (and other ``overrides``)."""
    stream = io.StringIO()
    experiment = load_experiment(path, REGISTRY, {**(overrides or {}), **{f"executor.{k}": v for k, v in executor.items()}})
    assert run_experiment(experiment, REGISTRY, Store(out, create=True), Progress(stream)) == []
    return stream.getvalue()


CHECKPOINT_EVERY_EVALUATION = {"training.checkpoint_seconds": 1e-6}


@pytest.fixture(scope="module")
def two_stages(tmp_path_factory):
    """The free stage, then a clamp stage taking Wc from it (3 rho cells x 2 seeds), trained unmerged."""
    tmp_path = tmp_path_factory.mktemp("two_stages")
    path = study(tmp_path, stages=[FREE, clamp_stage("free", RHOS, t_start=100)])
    run_study(path, tmp_path / "apart", name="serial", merge_cells="off")
    return path, stored(tmp_path / "apart")


def test_a_study_with_merged_cells_stores_what_it_stores_unmerged(two_stages, tmp_path):
    path, apart = two_stages
    log = run_study(path, tmp_path / "merged", name="serial", merge_cells="auto")
    assert "[clamp] 3 cells (rho=0.8, rho=1.0, rho=1.2): started (6 seeds" in log, log
    assert stored(tmp_path / "merged") == apart


def test_merged_cells_are_split_over_the_workers(two_stages, tmp_path):
    path, apart = two_stages
    log = run_study(path, tmp_path / "merged", name="local", workers=2, merge_cells="auto")
    # each part holds a seed of every cell, so that neither is made of the slow high-rho cell
    assert "[clamp] rho=0.8 seeds 0-0, rho=1.0 seeds 0-0, rho=1.2 seeds 0-0: started (3 seeds" in log, log
    assert "[clamp] rho=0.8 seeds 1-1, rho=1.0 seeds 1-1, rho=1.2 seeds 1-1: started (3 seeds" in log, log
    assert stored(tmp_path / "merged") == apart


@pytest.mark.parametrize("seeds, parts", [(4, 2), (4, 4), (4, 3), (4, 5), (1, 2), (2, 3)])
def test_a_merged_job_is_split_within_each_cell_and_an_earlier_parts_checkpoint_is_found(tmp_path, seeds, parts):
    path = study(tmp_path, seeds=tuple(range(seeds)))
    (stage,) = load_experiment(path, REGISTRY).stages
    cells = cells_of(stage.runs)
    job = merged([PendingCell(stage, cell, f"[clamp] rho={cell[0].controller.config.rho}", 30.0 + i, {},
                              resolved=True) for i, cell in enumerate(cells)])
    split = split_cell(job, parts)
    assert sorted(run.run_id for part in split for run in part.runs) == sorted(run.run_id for run in job.runs)
    assert len(split) == min(parts, len(job.runs))
    assert max(len(p.runs) for p in split) - min(len(p.runs) for p in split) <= 1
    order = [cell[0].cell_id for cell in cells]
    for part in split:  # cell after cell, each cell's seeds consecutive, each run with its cell's Wc
        by_cell = cells_of(part.runs)
        assert [cell[0].cell_id for cell in by_cell] == sorted((cell[0].cell_id for cell in by_cell), key=order.index)
        for cell in by_cell:
            assert [run.seed for run in cell] == list(range(cell[0].seed, cell[0].seed + len(cell)))
        assert all(part.norms_of(run) == job.norms_of(run) for run in part.runs)
        if seeds % parts == 0:  # the same seeds of every cell: each part its share of the slow cells
            assert len(by_cell) == len(cells) and len({tuple(run.seed for run in cell) for cell in by_cell}) == 1
    earlier = split[-1].runs  # the checkpoint an earlier invocation's last part left
    found = checkpointed_parts(job, lambda runs: [r.run_id for r in runs] == [r.run_id for r in earlier])
    assert earlier in [part.runs for part in found]  # it resumes; the other runs are split anew
    assert sorted(run.run_id for part in found for run in part.runs) == sorted(run.run_id for run in job.runs)
    assert checkpointed_parts(job, lambda runs: False) is None


def test_an_interrupted_merged_study_resumes_its_checkpoint(two_stages, tmp_path, monkeypatch):
    path, apart = two_stages
    out = tmp_path / "out"
    real = gnorm.training.loop.evaluate
    with monkeypatch.context() as patch:
        def evaluate(parts, logs, at, *rest):
            if at >= 200 and parts.ensemble.size > 3:  # the merged clamp job
                raise KeyboardInterrupt
            return real(parts, logs, at, *rest)
        patch.setattr(gnorm.training.loop, "evaluate", evaluate)
        with pytest.raises(KeyboardInterrupt):
            run_study(path, out, CHECKPOINT_EVERY_EVALUATION, name="serial", merge_cells="auto")
    assert len(list((out / CHECKPOINT_FOLDER).glob("*.pt"))) == 1
    resumed_from = []
    real_resume = gnorm.training.loop.resume
    monkeypatch.setattr(gnorm.training.loop, "resume", lambda job, state, *rest: resumed_from.append(state.step)
                        or real_resume(job, state, *rest))
    run_study(path, out, CHECKPOINT_EVERY_EVALUATION, name="serial", merge_cells="auto")
    assert resumed_from == [180]
    assert list((out / CHECKPOINT_FOLDER).glob("*.pt")) == []
    assert stored(out) == apart


def test_cells_that_differ_in_more_than_the_controller_stay_apart(tmp_path):
    stage = {**clamp_stage(30.0, (1.0,), t_start=100),
             "sweep": {"controller.rho": [0.9, 1.1], "optimizer.beta2": [0.999, 0.99]}}
    path = study(tmp_path, stages=[stage], training={"max_steps": 60})
    cells = cells_of(load_experiment(path, REGISTRY).runs)
    keys = [merge_key(cell[0]) for cell in cells]
    assert len(cells) == 4 and len(set(keys)) == 2  # beta2 keeps cells apart, rho does not
    log = run_study(path, tmp_path / "out", name="serial", merge_cells="auto")
    assert "[clamp] 2 cells (rho=0.9, beta2=0.999, rho=1.1, beta2=0.999): started (4 seeds)" in log, log
    assert "[clamp] 2 cells (rho=0.9, beta2=0.99, rho=1.1, beta2=0.99): started (4 seeds)" in log, log


@pytest.mark.parametrize("value", ["on", 1, True])
def test_a_bad_merge_cells_is_one_line_naming_the_file_and_key(tmp_path, value):
    path = study(tmp_path, executor={"merge_cells": value})
    result = subprocess.run([sys.executable, "-m", "gnorm.cli", "run", str(path), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(path) in lines[0] and "executor.merge_cells" in lines[0], result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()
