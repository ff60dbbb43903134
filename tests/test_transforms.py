"""Gradient transforms: Grokfast's EMA and MA filters equal their formulas, the orthogonal gradient is
orthogonal to its tensor, the batched chain equals each member's transform applied to it alone (also
after members leave), a cell with a transform resumes from its checkpoint bit for bit, runs without
transforms keep their ids, the ``[gradient_transforms]`` table is checked when the file loads, and a
separately installed package adds a transform that ``gnorm run`` uses by name."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
import torch

from builders import FREE, fork_stage, write_study
from gnorm.components import TransformContext
from gnorm.errors import UserError
from gnorm.loader import load_experiment
from gnorm.registry import Provider, build_registry
from gnorm.runmodel import cells_of
from gnorm.store import Store
from gnorm.training.jobs import CellJob
from gnorm.training.transforms import GradientTransformChain
from gnorm.worker import train_cell_task
from test_checkpoints import comparable, interrupt_at, jobs, saved, study
from test_plugins import run_gnorm, setuptools_version

REGISTRY = build_registry(autoload=False)
REPO = Path(__file__).resolve().parent.parent
GRADCLIP_DIR = REPO / "plugins" / "gnorm-plugin-gradclip"
GRADCLIP = Provider("gnorm-plugin-gradclip", "0.1.0")
CONTEXT = TransformContext(norm_names=["w"], groups={"all": ["w"]}, param_names=["w", "b"])


def transform(name: str, context: TransformContext = CONTEXT, **options):
    """The registered transform ``name`` built with ``options`` for one model."""
    component = REGISTRY.get("gradient_transform", name)
    return component.factory(component.config_class(**options), context)


def through(single, gradients: list[float]) -> list[float]:
    """A one-tensor model's gradients g_1, g_2, ... (scalars) through a single-model transform, in order."""
    params = {"w": torch.zeros((), dtype=torch.float64)}
    state, out = single.init(params), []
    for g in gradients:
        grads, state = single.update({"w": torch.tensor(g, dtype=torch.float64)}, state, params)
        out.append(grads["w"].item())
    return out


# ---------------------------------------------------------------------------------------------------
# The filters equal their formulas.


def test_the_builtins_are_registered_as_gradient_transforms_with_the_authors_defaults():
    assert {"grokfast_ema", "grokfast_ma", "orthogonal_gradient"} <= set(REGISTRY.names("gradient_transform"))
    ema = REGISTRY.get("gradient_transform", "grokfast_ema").config_class()
    ma = REGISTRY.get("gradient_transform", "grokfast_ma").config_class()
    assert (ema.alpha, ema.lamb) == (0.98, 2.0)
    assert (ma.window_size, ma.lamb, ma.filter_type, ma.warmup) == (100, 5.0, "mean", True)


def test_grokfast_ema_adds_lamb_times_the_moving_average_starting_from_the_first_gradient():
    # alpha 1/2, lamb 2 on g = 1, 2, 4: h = 1, 1.5, 2.75, so g + 2h = 3, 5, 9.5
    assert through(transform("grokfast_ema", alpha=0.5, lamb=2.0), [1.0, 2.0, 4.0]) == [3.0, 5.0, 9.5]


def test_grokfast_ma_waits_for_a_full_window_then_adds_lamb_times_its_mean():
    # window 2, lamb 1 on g = 1, 3, 5, 7: unchanged until the window is full, then g + mean(last two)
    assert through(transform("grokfast_ma", window_size=2, lamb=1.0), [1.0, 3.0, 5.0, 7.0]) == [1.0, 5.0, 9.0, 13.0]


def test_grokfast_ma_without_warmup_averages_what_it_has_and_sum_adds_the_window_total():
    # no warmup: g + mean of the gradients so far (at most 2): 1 + 1, 3 + 2, 5 + 4
    assert through(transform("grokfast_ma", window_size=2, lamb=1.0, warmup=False), [1.0, 3.0, 5.0]) == [2.0, 5.0, 9.0]
    # sum over a window of 3, lamb 0.5: 6 + 0.5 (1 + 2 + 6) once full, then 4 + 0.5 (2 + 6 + 4)
    assert through(transform("grokfast_ma", window_size=3, lamb=0.5, filter_type="sum"),
                   [1.0, 2.0, 6.0, 4.0]) == [1.0, 2.0, 10.5, 10.0]


def test_after_orthogonal_gradient_each_weight_tensors_gradient_is_orthogonal_to_it():
    generator = torch.Generator().manual_seed(0)
    params = {"w": torch.randn(5, 7, generator=generator), "v": torch.randn(3, generator=generator),
              "b": torch.randn(7, generator=generator)}
    grads = {name: torch.randn(p.shape, generator=generator) + 3 * p for name, p in params.items()}
    context = TransformContext(norm_names=["w", "v"], param_names=list(params))
    out, _ = transform("orthogonal_gradient", context).update(grads, {}, params)
    for name in ("w", "v"):
        cosine = (out[name] * params[name]).sum() / (out[name].norm() * params[name].norm())
        assert abs(cosine.item()) < 1e-6
        before = (grads[name] * params[name]).sum() / (grads[name].norm() * params[name].norm())
        assert abs(before.item()) > 0.5  # the gradients had a large component along w to remove
    assert torch.equal(out["b"], grads["b"])  # not a weight-norm tensor: untouched
    only_v, _ = transform("orthogonal_gradient", context, tensors=["v"]).update(grads, {}, params)
    assert torch.equal(only_v["w"], grads["w"]) and torch.equal(only_v["v"], out["v"])


# ---------------------------------------------------------------------------------------------------
# The batched chain is each member's transform applied to it alone.


def test_the_batched_chain_equals_each_member_alone_also_after_members_leave():
    generator = torch.Generator().manual_seed(1)
    members = 3
    shapes = {"w": (4, 3), "b": (3,)}
    stacked = {name: torch.randn(members, *shape, generator=generator, dtype=torch.float64)
               for name, shape in shapes.items()}
    context = TransformContext(norm_names=["w"], param_names=list(shapes))
    options = [("grokfast_ema", {"alpha": 0.9, "lamb": 2.0}), ("grokfast_ma", {"window_size": 3, "lamb": 5.0}),
               ("orthogonal_gradient", {})]
    chain = GradientTransformChain([(name, transform(name, context, **o)) for name, o in options], stacked)
    alone = [[transform(name, context, **o) for name, o in options] for _ in range(members)]
    states = [[single.init({n: p[m] for n, p in stacked.items()}) for single in alone[m]] for m in range(members)]
    staying = list(range(members))
    for step in range(8):
        if step == 5:  # member 1 leaves the ensemble, taking its state with it
            staying = [0, 2]
            chain.keep(torch.tensor(staying))
            stacked = {n: p[staying] for n, p in stacked.items()}
        grads = [torch.randn(len(staying), *shape, generator=generator, dtype=torch.float64)
                 for shape in shapes.values()]
        batched = chain.update(grads, stacked)
        for row, member in enumerate(staying):
            params = {n: p[row] for n, p in stacked.items()}
            own = {n: g[row] for n, g in zip(shapes, grads)}
            for position, single in enumerate(alone[member]):
                own, states[member][position] = single.update(own, states[member][position], params)
            for name, tensor in zip(shapes, batched):
                torch.testing.assert_close(tensor[row], own[name], rtol=1e-12, atol=1e-12)


def test_a_chain_without_transforms_hands_the_gradients_back_untouched():
    grads = [torch.randn(2, 3)]
    assert GradientTransformChain().update(grads, {"w": torch.zeros(2, 3)})[0] is grads[0]


CHAIN = {"grokfast_ema": {"alpha": 0.9}, "orthogonal_gradient": {}}


def transformed(tmp_path: Path, seeds: int | list[int] | tuple[int, ...] = (0, 1), transforms: dict | None = CHAIN,
                stages: list[dict] | tuple[dict, ...] = (), filename: str = "transformed.toml") -> Path:
    """p = 23, d = 8, H = 16 for 60 steps with the ``[gradient_transforms]`` chain ``transforms`` (in
    order; None: no table) and ``stages`` (none by default)."""
    return write_study(tmp_path, filename=filename, stages=list(stages),
                       experiment={"name": "transformed", "seeds": seeds}, task={"p": 23},
                       architecture={"embed_dim": 8, "hidden_dim": 16},
                       training={"max_steps": 60, "checkpoint_seconds": 0}, gradient_transforms=transforms)


def experiment(tmp_path: Path, seeds: int | list[int] | tuple[int, ...] = (0, 1), transforms: dict | None = CHAIN,
               **overrides):
    return load_experiment(transformed(tmp_path, seeds, transforms), REGISTRY, overrides)


def test_a_cell_with_transforms_trains_each_seed_as_it_trains_alone(tmp_path):
    (both,) = cells_of(experiment(tmp_path).runs)
    (alone,) = cells_of(experiment(tmp_path, seeds=[1]).runs)
    together = comparable(train_cell_task(CellJob(both, None), 1, REGISTRY))
    by_itself = comparable(train_cell_task(CellJob(alone, None), 1, REGISTRY))
    assert [row for row in together if row[0]["seed"] == 1] == by_itself


# ---------------------------------------------------------------------------------------------------
# Checkpoints keep the chain's state.


def test_a_cell_with_transforms_checkpointed_and_resumed_equals_an_uninterrupted_one(tmp_path):
    path = study(tmp_path, max_steps=480, held=False,  # seed 1 groks at 400 and leaves; seed 0 trains on
                 free={"gradient_transforms": {"grokfast_ema": {"alpha": 0.9, "lamb": 1.0},
                                               "grokfast_ma": {"window_size": 7, "lamb": 0.5}}})
    uninterrupted = comparable(train_cell_task(attrs.evolve(jobs(path, tmp_path / "unused")["free"],
                                                            checkpoint=None), 1, REGISTRY))
    job = jobs(path, tmp_path)["free"]
    interrupt_at(job, 100)
    states = saved(job)["transform_states"]
    assert [sorted(state)[0] for state in states] == ["ema.b_in", "count"]  # EMA's, then MA's
    assert states[1]["count"].tolist() == [80, 80] and states[1]["window.w_in"].shape[:2] == (2, 7)
    interrupt_at(job, 440)  # seed 1 left at 400: the chain kept seed 0's state only
    assert len(saved(job)["members"]) == 1 and len(saved(job)["finished"]) == 1
    assert saved(job)["transform_states"][1]["count"].tolist() == [420]
    assert comparable(train_cell_task(job, 1, REGISTRY)) == uninterrupted


# ---------------------------------------------------------------------------------------------------
# Identity: the chain enters a run's id; without one nothing changes.


def test_without_transforms_a_run_keeps_its_id_and_a_chain_changes_the_id_but_not_the_seeds(tmp_path):
    plain = experiment(tmp_path, transforms=None).runs
    empty = experiment(tmp_path, transforms={}).runs
    chained = experiment(tmp_path).runs
    swapped = experiment(tmp_path, transforms={"orthogonal_gradient": {}, "grokfast_ema": {"alpha": 0.9}}).runs
    assert [r.run_id for r in empty] == [r.run_id for r in plain]
    assert "gradient_transforms" not in plain[0].identity() and "gradient_transforms" not in plain[0].plain()
    assert len({r.run_id for r in plain + chained + swapped}) == 6  # order matters
    assert [(r.init_seed, r.split_seed) for r in chained] == [(r.init_seed, r.split_seed) for r in plain]
    assert chained[0].plain()["gradient_transforms"] == {"grokfast_ema": {"alpha": 0.9, "lamb": 2.0},
                                                         "orthogonal_gradient": {"tensors": []}}


def test_transform_options_are_sweepable_by_dotted_key_and_a_stage_overrides_the_chain(tmp_path):
    path = transformed(tmp_path, seeds=1, filename="sweep.toml", stages=[
        {"name": "swept", "sweep": {"gradient_transforms.grokfast_ema.lamb": [1.0, 4.0]}},
        {"name": "windowed", "gradient_transforms": {"grokfast_ma": {"window_size": 10}}}])
    stages = {stage.name: stage.runs for stage in load_experiment(path, REGISTRY).stages}
    assert [run.gradient_transforms[0].config.lamb for run in stages["swept"]] == [1.0, 4.0]
    assert [c.name for c in stages["windowed"][0].gradient_transforms] == ["grokfast_ema", "orthogonal_gradient",
                                                                           "grokfast_ma"]
    assert stages["windowed"][0].gradient_transforms[2].config.window_size == 10


# ---------------------------------------------------------------------------------------------------
# Bad input is found when the file loads.


def problems(tmp_path: Path, transforms: dict, stages: list[dict] | tuple[dict, ...] = ()) -> str:
    path = transformed(tmp_path, seeds=1, transforms=transforms, stages=stages, filename="bad.toml")
    with pytest.raises(UserError) as refused:
        load_experiment(path, REGISTRY)
    return str(refused.value)


def test_an_unknown_transform_lists_the_known_ones_and_a_bad_option_names_its_key(tmp_path):
    message = problems(tmp_path, {"grokfast_emma": {}, "grokfast_ma": {"window": 3}, "grokfast_ema": {"alpha": 1.5}})
    assert "gradient_transforms.grokfast_emma: unknown gradient_transform 'grokfast_emma' (did you mean " \
           "'grokfast_ema'?); known: grokfast_ema, grokfast_ma, orthogonal_gradient" in message
    assert "gradient_transforms.grokfast_ma.window: unknown key (did you mean 'window_size'?)" in message
    assert "gradient_transforms.grokfast_ema.alpha: 'alpha' must be in [0, 1), found 1.5" in message


def test_a_tensor_the_architecture_lacks_and_a_forked_stage_with_transforms_are_refused(tmp_path):
    message = problems(tmp_path, {"orthogonal_gradient": {"tensors": ["w_inn"]}})
    assert "gradient_transforms.orthogonal_gradient.tensors: no parameter named 'w_inn'" in message
    message = problems(tmp_path, CHAIN, [fork_stage("forked", 20)])
    assert "gradient_transforms: a forked stage cannot chain gradient transforms yet" in message


# ---------------------------------------------------------------------------------------------------
# A third party's transform, installed as a user installs it, used by name.


@pytest.fixture(scope="module")
def gradclip_installed() -> None:
    """plugins/gnorm-plugin-gradclip pip-installed (editable) into this interpreter's environment, as a
    user would. It stays installed: its one transform conflicts with nothing."""
    if importlib.util.find_spec("pip") is None:
        pytest.skip("installing the example plugin needs pip in this environment")
    install = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--editable", str(GRADCLIP_DIR)]
    if setuptools_version() >= (77,):  # the plugin's build-system.requires: build offline with it
        install += ["--no-index", "--no-build-isolation"]
    installed = subprocess.run(install, capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stdout + installed.stderr


def test_gnorm_plugins_lists_the_installed_transform_with_its_package(gradclip_installed, tmp_path):
    listed = run_gnorm("plugins", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)["components"]
            if row["kind"] == "gradient_transform"}
    assert (rows["gradient_clip_norm"]["package"], rows["gradient_clip_norm"]["version"]) == (
        GRADCLIP.package, GRADCLIP.version)
    assert {"grokfast_ema", "grokfast_ma", "orthogonal_gradient"} <= set(rows)


def test_gnorm_run_trains_a_cell_with_the_installed_transform_by_name(gradclip_installed, tmp_path):
    study_file = transformed(tmp_path, seeds=1, transforms=None, filename="clipped.toml", stages=[
        FREE, {"name": "clipped", "gradient_transforms": {"gradient_clip_norm": {"max_norm": 0.01}}}])
    ran = run_gnorm("run", str(study_file), "--out", str(tmp_path / "results"), cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    store = Store(tmp_path / "results")
    try:
        records = {record.stage: record for record in store.records()}
        assert records["clipped"].config["gradient_transforms"] == {"gradient_clip_norm": {"max_norm": 0.01}}
        assert "gradient_transforms" not in records["free"].config
        losses = {stage: store.trajectory(record.run_id)["train_loss"] for stage, record in records.items()}
        assert len(losses["clipped"]) == 3 and list(losses["clipped"]) != list(losses["free"])  # it acted
    finally:
        store.close()
