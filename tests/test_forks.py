"""Same-state forks (paper B): every arm of a forked stage starts from the state its seed reaches at
``fork.at_step`` on a trunk that is trained once per seed, stored, and reused (also after an
interruption); a forked free arm is the unforked free run, continued."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import gnorm.worker
from builders import FREE, fork_stage, write_study
from gnorm.builtins.executors import SerialExecutor
from gnorm.errors import UserError
from gnorm.forks import TRUNK_FOLDER, TrunkFiles, state_sha256
from gnorm.loader import load_experiment
from gnorm.progress import Progress
from gnorm.registry import build_registry
from gnorm.scheduler import run_experiment
from gnorm.store import Store
from gnorm.training.build import build_ensemble
from gnorm.training.jobs import CellJob
from gnorm.training.optimizer import BatchedAdamW

REGISTRY = build_registry(autoload=False)

#: p = 41 at these settings groks near step 800 (both seeds), after the fork at step 300.
STAGES = [FREE, fork_stage("arm_free", 300),
          fork_stage("arm_clamp", 300, critical_norm=25.0, controller={"name": "clamp", "rho": 1.1, "t_start": 301})]


def write(tmp_path, stages=STAGES, p=41, max_steps=1200, filename="forked.toml", optimizer=None, training=None,
          **sections):
    """The forked study (lr 1e-2, the in-process executor, so the tests can count and interrupt what
    trains) with ``stages``; ``sections`` change it further."""
    return write_study(tmp_path, stages=stages, filename=filename, experiment={"name": "forked"}, task={"p": p},
                       optimizer={"lr": 1e-2, **(optimizer or {})},
                       training={"max_steps": max_steps, **(training or {})}, executor={"name": "serial"},
                       **sections)


def quiet() -> Progress:
    return Progress(SimpleNamespace(isatty=lambda: False, write=lambda text: None, flush=lambda: None))


class TrunkCount:
    """Wraps the real train_trunk (what a worker's trunk task calls) and records which seeds each call
    trained."""

    def __init__(self):
        self.calls: list[list[int]] = []
        self.real = gnorm.worker.train_trunk

    def __call__(self, job, registry, **options):
        self.calls.append([run.seed for run in job.runs])
        return self.real(job, registry, **options)


@pytest.fixture(scope="module")
def forked_study(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("forked")
    experiment = load_experiment(write(tmp_path), REGISTRY)
    count, tasks = TrunkCount(), []
    real_submit = SerialExecutor.submit

    def submit(self, fn, *args):
        tasks.append((fn.__name__, args[0].runs[0].stage))
        return real_submit(self, fn, *args)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gnorm.worker, "train_trunk", count)
        patch.setattr(SerialExecutor, "submit", submit)
        run_experiment(experiment, REGISTRY, Store(tmp_path / "out", create=True), quiet())
    store = Store(tmp_path / "out")
    records = {(r.stage, r.seed): r for r in store.records()}
    return SimpleNamespace(experiment=experiment, store=store, records=records, count=count, tasks=tasks,
                           files=TrunkFiles(tmp_path / "out" / TRUNK_FOLDER))


def test_the_trunk_is_trained_once_per_seed_and_both_arms_reuse_it(forked_study):
    assert forked_study.count.calls == [[0, 1]]
    assert sorted(p.name for p in forked_study.files.directory.iterdir()) == sorted(
        f"{run.trunk_id}.pt" for run in forked_study.experiment.runs if run.stage == "arm_free")


def test_the_trunk_is_an_executor_task_of_its_own_submitted_before_its_arms(forked_study):
    assert forked_study.tasks == [("train_cell_task", "free"), ("train_trunk_task", "arm_free"),
                                  ("train_cell_task", "arm_free"), ("train_cell_task", "arm_clamp")]


def test_arms_of_a_fork_record_the_same_starting_state_hash_which_is_the_stored_trunks(forked_study):
    records, runs = forked_study.records, {(r.stage, r.seed): r for r in forked_study.experiment.runs}
    for seed in (0, 1):
        free_arm, clamp_arm = records[("arm_free", seed)], records[("arm_clamp", seed)]
        assert free_arm.facts["fork_state_sha256"] == clamp_arm.facts["fork_state_sha256"]
        stored = forked_study.files.load(runs[("arm_clamp", seed)].trunk_id)
        assert free_arm.facts["fork_state_sha256"] == state_sha256(stored)
        assert stored.step == 300
    assert records[("arm_free", 0)].facts["fork_state_sha256"] != records[("arm_free", 1)].facts["fork_state_sha256"]
    assert "fork_state_sha256" not in records[("free", 0)].facts


def test_two_arms_hold_bit_identical_weights_and_adam_moments_at_the_fork_step(forked_study):
    states = {}
    for stage in ("arm_free", "arm_clamp"):
        runs = [run for run in forked_study.experiment.runs if run.stage == stage]
        job = CellJob(runs, 25.0, start_states=[forked_study.files.load(run.trunk_id) for run in runs])
        ensemble, _ = build_ensemble(job, REGISTRY)
        initial = {n: p.clone() for n, p in ensemble.params.items()}
        optimizer = BatchedAdamW(ensemble.parameters, [n in ensemble.norm_names for n in ensemble.params],
                                 runs[0].optimizer)
        ensemble.start_from(optimizer, job.start_states)
        assert optimizer.step_count == 300
        assert not torch.equal(initial["w_out"], ensemble.params["w_out"])  # trained, not the initialization
        states[stage] = (ensemble, optimizer)
    (free, free_adam), (clamp, clamp_adam) = states["arm_free"], states["arm_clamp"]
    assert all(torch.equal(free.params[n], clamp.params[n]) for n in free.params)
    assert all(torch.equal(a, b) for a, b in zip(free_adam.exp_avg, clamp_adam.exp_avg))
    assert all(torch.equal(a, b) for a, b in zip(free_adam.exp_avg_sq, clamp_adam.exp_avg_sq))
    assert any(m.abs().sum() > 0 for m in free_adam.exp_avg_sq)


def test_a_forked_free_arm_repeats_the_unforked_free_run_after_the_fork(forked_study):
    records, store = forked_study.records, forked_study.store
    for seed in (0, 1):
        free, arm = records[("free", seed)], records[("arm_free", seed)]
        assert free.t_grok is not None and free.t_grok > 300
        assert arm.t_grok == free.t_grok
        whole, forked = store.trajectory(free.run_id), store.trajectory(arm.run_id)
        after = whole["step"].index(forked["step"][0])
        for key in ("train_loss", "test_loss", "test_acc", "weight_norm"):
            assert forked[key] == whole[key][after:], key
        assert arm.facts["norm_at_fork"] == pytest.approx(whole["weight_norm"][whole["step"].index(300)], rel=1e-6)


def test_an_arm_is_evaluated_only_after_the_fork_and_its_controller_acts_from_there(forked_study):
    clamp = forked_study.records[("arm_clamp", 0)]
    trajectory = forked_study.store.trajectory(clamp.run_id)
    assert trajectory["step"][0] == 320
    assert trajectory["weight_norm"][0] == pytest.approx(1.1 * 25.0, rel=1e-5)
    assert clamp.facts["norm_before_clamp"] == pytest.approx(clamp.facts["norm_at_fork"], rel=0.05)


RESUMABLE = [fork_stage("arm_a", 40),
             fork_stage("arm_b", 40, critical_norm=10.0, controller={"name": "clamp", "rho": 1.0, "t_start": 41})]


def test_a_study_interrupted_after_the_trunk_resumes_without_training_it_again(tmp_path, monkeypatch):
    experiment = load_experiment(write(tmp_path, stages=RESUMABLE, p=17, max_steps=120), REGISTRY)
    count = TrunkCount()
    monkeypatch.setattr(gnorm.worker, "train_trunk", count)
    real_train_cell, cells = gnorm.worker.train_cell, []

    def interrupted_in_second_cell(job, *args, **options):
        cells.append(job.runs[0].stage)
        if len(cells) == 2:
            raise KeyboardInterrupt
        return real_train_cell(job, *args, **options)

    monkeypatch.setattr(gnorm.worker, "train_cell", interrupted_in_second_cell)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(experiment, REGISTRY, Store(tmp_path / "out", create=True), quiet())
    assert count.calls == [[0, 1]]
    assert {r.stage for r in Store(tmp_path / "out").records()} == {"arm_a"}

    monkeypatch.setattr(gnorm.worker, "train_cell", real_train_cell)
    run_experiment(experiment, REGISTRY, Store(tmp_path / "out"), quiet())
    assert count.calls == [[0, 1]]  # not trained again
    records = {(r.stage, r.seed): r for r in Store(tmp_path / "out").records()}
    assert len(records) == 4
    for seed in (0, 1):
        assert records[("arm_a", seed)].facts["fork_state_sha256"] == records[("arm_b", seed)].facts["fork_state_sha256"]


def test_a_damaged_trunk_file_is_refused_not_used(forked_study, tmp_path):
    run = next(run for run in forked_study.experiment.runs if run.stage == "arm_free")
    original = forked_study.files.load(run.trunk_id)
    files = TrunkFiles(tmp_path / TRUNK_FOLDER)
    files.save(run.trunk_id, run.trunk_identity(), original)
    data = torch.load(files.path(run.trunk_id), weights_only=True)
    data["state"]["params"]["w_out"][0, 0] += 1.0  # one weight changed after the hash was taken
    torch.save(data, files.path(run.trunk_id))
    with pytest.raises(UserError, match="trunk state is damaged"):
        files.load(run.trunk_id)
    files.path(run.trunk_id).write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="delete it to train the trunk again"):
        files.load(run.trunk_id)


# ---------------------------------------------------------------------------------------------------
# The experiment file.


def test_arms_share_a_trunk_id_and_anything_the_trunk_depends_on_changes_it(tmp_path):
    runs = {(r.stage, r.seed): r for r in load_experiment(write(tmp_path), REGISTRY).runs}
    assert runs[("arm_free", 0)].trunk_id == runs[("arm_clamp", 0)].trunk_id
    assert runs[("arm_free", 0)].trunk_id != runs[("arm_free", 1)].trunk_id
    assert runs[("free", 0)].trunk_id is None and "fork" not in runs[("free", 0)].plain()
    forked_at_299 = [FREE, *({**stage, "fork": {"at_step": 299}} for stage in STAGES[1:])]
    for changed in {"optimizer": {"lr": 2e-2}}, {"training": {"precision": "float64"}}, {"stages": forked_at_299}:
        path = write(tmp_path, filename="changed.toml", **changed)
        other = {(r.stage, r.seed): r for r in load_experiment(path, REGISTRY).runs}
        assert other[("arm_free", 0)].trunk_id != runs[("arm_free", 0)].trunk_id, changed
    path = write(tmp_path, filename="changed.toml", max_steps=1500, evaluation={"every": 10})
    other = {(r.stage, r.seed): r for r in load_experiment(path, REGISTRY).runs}
    assert other[("arm_free", 0)].trunk_id == runs[("arm_free", 0)].trunk_id  # budget, schedule: arm only


def problems(tmp_path, stages) -> list[str]:
    path = write(tmp_path, stages=stages)
    with pytest.raises(UserError) as raised:
        load_experiment(path, REGISTRY)
    return [str(problem).replace(f"{path}: ", "") for problem in raised.value.problems]


def test_fork_mistakes_are_named_by_file_and_key(tmp_path):
    assert problems(tmp_path, [fork_stage("a", 1200)]) == [
        "stage[a].fork.at_step: must be below training.max_steps (1200), found 1200"]
    assert problems(tmp_path, [{"name": "a", "fork": {"step": 10}}]) == [
        "stage[a].fork.step: unknown key (did you mean 'at_step'?)",
        "stage[a].fork.at_step: required key is missing (the step whose state every arm starts from)"]
    [unknown] = problems(tmp_path, [{"name": "a", "fork": {"at_step": 10, "controller": {"name": "frre"}}}])
    assert unknown.startswith("stage[a].fork.controller.name: unknown norm_controller 'frre' (did you mean 'free'?); "
                              "known: clamp, ")
    assert problems(tmp_path, [{"name": "a", "fork": {"at_step": 10, "controller": {"name": "clamp"}}}]) == [
        "stage[a].fork.controller.name: the trunk cannot use 'clamp': it needs Wc; give the trunk a controller "
        "without a critical norm (default free)"]
    assert problems(tmp_path, [{"name": "a", "fork": 800}]) == [
        "stage[a].fork: expected a table like { at_step = 800 }, found an integer (800)"]


def test_a_relative_clamp_from_the_fork_holds_each_seed_at_factor_times_its_forked_norm(tmp_path):
    stages = [fork_stage("raised", 300, controller={"name": "relative_clamp", "factor": 1.15, "t_start": 300})]
    store = Store(tmp_path / "out", create=True)
    experiment = load_experiment(write(tmp_path, stages, max_steps=600), REGISTRY)
    run_experiment(experiment, REGISTRY, store, quiet())
    for record in store.records():
        assert record.facts["held_norm"] == pytest.approx(1.15 * record.facts["norm_at_fork"], rel=1e-6)
        trajectory = store.trajectory(record.run_id)
        assert trajectory["weight_norm"] == pytest.approx([record.facts["held_norm"]] * len(trajectory["step"]), rel=1e-5)


def test_a_clamp_that_starts_at_the_fork_acts_on_the_forked_state_and_one_before_it_is_refused(tmp_path):
    def stages_starting_at(t_start):
        return [fork_stage("hold", 300, critical_norm=25.0,
                           controller={"name": "clamp", "rho": 1.0, "t_start": t_start})]
    stages = stages_starting_at(300)
    store = Store(tmp_path / "out", create=True)
    run_experiment(load_experiment(write(tmp_path, stages, max_steps=400), REGISTRY), REGISTRY, store, quiet())
    for record in store.records():  # the first clamp happens after step 300, as without the fork
        assert record.facts["norm_before_clamp"] == pytest.approx(record.facts["norm_at_fork"], rel=1e-6)
        assert record.facts["norm_after_clamp"] == pytest.approx(25.0, rel=1e-6)
    assert problems(tmp_path, stages_starting_at(200)) == [
        "stage[hold].controller.t_start: is before fork.at_step (300): the trunk trains without this controller up "
        "to step 300; start it at or after the fork, found 200"]
