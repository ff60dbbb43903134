"""Observables: the formulas, their place in the evaluation (chunked, reusing its logits), the
trajectory columns they become, and the experiment-file errors for asking for them wrongly."""

from __future__ import annotations

import math
from types import SimpleNamespace

import attrs
import pytest
import torch

import gnorm
from builders import write_study
from gnorm.builtins.observables import (
    effective_rank,
    fourier_gini,
    fourier_power,
    gini,
    logit_scale,
    singular_value_entropy,
    softmax_collapse_fraction,
)
from gnorm.components import ObservableContext
from gnorm.errors import UserError
from gnorm.loader import load_experiment
from gnorm.progress import Progress
from gnorm.registry import Provider, build_registry
from gnorm.scheduler import run_experiment
from gnorm.store import Store
from gnorm.training.build import build_ensemble
from gnorm.training.jobs import CellJob

REGISTRY = build_registry(autoload=False)
ALL_BUILTINS = ["logit_scale", "softmax_collapse", "fourier", "spectral_all"]

def write(tmp_path, observables=ALL_BUILTINS, chunk=0, architecture="mlp"):
    """Three seeds at p = 17, d = 8, H = 16 for 60 steps (no stages), evaluating ``observables``."""
    return write_study(tmp_path, filename="observed.toml", stages=[], experiment={"name": "observed", "seeds": 3},
                       task={"p": 17}, architecture={"name": architecture, "embed_dim": 8, "hidden_dim": 16},
                       training={"max_steps": 60, "members_per_chunk": chunk},
                       evaluation={"observables": list(observables)})


def quiet() -> Progress:
    return Progress(SimpleNamespace(isatty=lambda: False, write=lambda text: None, flush=lambda: None))


# ---------------------------------------------------------------------------------------------------
# The formulas.


def test_gini_is_zero_for_equal_values_and_n_minus_1_over_n_when_one_holds_everything():
    assert gini(torch.full((1, 5), 3.0)).item() == pytest.approx(0.0, abs=1e-7)
    assert gini(torch.tensor([[0.0, 0.0, 0.0, 7.0]])).item() == pytest.approx(3 / 4)
    # sum_ij |x_i - x_j| = 20 for 1..4, and 2 n^2 mean = 80
    assert gini(torch.tensor([[4.0, 1.0, 3.0, 2.0]], dtype=torch.float64)).item() == pytest.approx(0.25)


def test_fourier_power_obeys_parseval_and_a_single_frequency_embedding_has_a_high_gini():
    p, d = 13, 4
    embedding = torch.randn(1, p, d, dtype=torch.float64)
    assert fourier_power(embedding).sum().item() == pytest.approx(p * embedding.pow(2).sum().item())
    residues = torch.arange(p, dtype=torch.float64)
    single = torch.stack([torch.cos(2 * math.pi * 3 * residues / p)] * d, dim=1).unsqueeze(0)
    power = fourier_power(single)[0]
    assert set(torch.nonzero(power > 1e-9).flatten().tolist()) == {3, p - 3}
    assert fourier_gini(single).item() == pytest.approx((p - 2) / p)  # two of p frequencies hold it all
    assert fourier_gini(embedding).item() < 0.5


def test_spectral_entropy_is_ln_n_for_an_identity_and_zero_for_rank_one():
    identity = torch.eye(6, dtype=torch.float64).unsqueeze(0)
    entropy = singular_value_entropy(identity)
    assert entropy.item() == pytest.approx(math.log(6))
    assert effective_rank(entropy).item() == pytest.approx(6.0)
    rank_one = torch.outer(torch.arange(1.0, 5.0), torch.arange(1.0, 4.0)).unsqueeze(0).double()
    assert singular_value_entropy(rank_one).item() == pytest.approx(0.0, abs=1e-12)


def test_logit_scale_is_the_mean_l2_norm_of_the_logit_vectors():
    logits = torch.tensor([[[3.0, 4.0], [0.0, 1.0]], [[6.0, 8.0], [0.0, 0.0]]])
    assert logit_scale(logits).tolist() == [3.0, 5.0]


def test_softmax_collapse_counts_exact_ones_in_the_working_precision_on_training_examples_only():
    """A margin of 20 makes p(correct) exactly 1.0 in float32 (e^-20 < 2^-24) but not in float64."""
    logits = torch.tensor([[[20.0, 0.0], [20.0, 0.0], [1.0, 0.0], [20.0, 0.0]]])
    labels = torch.zeros(1, 4, dtype=torch.long)
    train = torch.tensor([[True, True, True, False]])
    assert softmax_collapse_fraction(logits, labels, train).item() == pytest.approx(2 / 3)
    assert softmax_collapse_fraction(logits.double(), labels, train).item() == 0.0


# ---------------------------------------------------------------------------------------------------
# In the evaluation.


def _ensemble(tmp_path, chunk):
    experiment = load_experiment(write(tmp_path, chunk=chunk), REGISTRY)
    ensemble, task = build_ensemble(CellJob(experiment.runs, None), REGISTRY)
    context = ObservableContext(dict(ensemble.groups), task.input_spec, task.num_classes)
    observers = [REGISTRY.get("observable", name).factory(REGISTRY.get("observable", name).config_class(), context)
                 for name in ALL_BUILTINS]
    return ensemble, observers


def test_observables_do_not_depend_on_how_members_are_chunked_and_match_a_direct_computation(tmp_path):
    one_at_a_time, observers = _ensemble(tmp_path, chunk=1)
    all_together, _ = _ensemble(tmp_path, chunk=3)
    chunked, whole = one_at_a_time.evaluate(observers), all_together.evaluate(observers)
    assert set(chunked) == set(whole) >= {"logit_scale", "softmax_collapse_fraction", "fourier_gini",
                                          "spectral_entropy/embedding", "effective_rank/hidden",
                                          "spectral_entropy/readout", "train_loss", "norm/embedding"}
    for key in chunked:
        assert torch.allclose(chunked[key], whole[key], rtol=1e-5, atol=0), key
    # the logit scale is that of the model's logits over all p^2 pairs, member by member
    from torch.func import functional_call
    base = one_at_a_time._base
    for member in range(3):
        params = {n: p[member] for n, p in one_at_a_time.params.items()}
        logits = functional_call(base, params, (one_at_a_time.inputs[member],))
        assert logits.shape[0] == 17 * 17
        assert chunked["logit_scale"][member].item() == pytest.approx(logits.norm(dim=-1).mean().item(), rel=1e-5)
        assert chunked["fourier_gini"][member].item() == pytest.approx(
            fourier_gini(params["embedding"].unsqueeze(0)).item(), rel=1e-5)


def test_without_observables_the_evaluation_holds_what_it_always_did(tmp_path):
    ensemble, _ = _ensemble(tmp_path, chunk=0)
    assert set(ensemble.evaluate()) == {"train_loss", "test_loss", "train_acc", "test_acc", "weight_norm",
                                       "norm/embedding", "norm/hidden", "norm/readout"}


def test_switched_on_observables_become_trajectory_columns_in_the_store(tmp_path):
    experiment = load_experiment(write(tmp_path, observables=["logit_scale", "spectral"]), REGISTRY)
    run_experiment(experiment, REGISTRY, Store(tmp_path / "out", create=True), quiet())
    store = Store(tmp_path / "out")
    for record in store.records():
        trajectory = store.trajectory(record.run_id)
        assert trajectory["step"] == [20, 40, 60]
        assert len(trajectory["logit_scale"]) == 3 and all(v > 0 for v in trajectory["logit_scale"])
        assert all(1 <= v <= 8 for v in trajectory["effective_rank/embedding"])  # 17 x 8: rank <= 8
        assert "fourier_gini" not in trajectory and "softmax_collapse_fraction" not in trajectory
        assert "effective_rank/hidden" not in trajectory  # spectral: the embedding only; spectral_all: every group


def test_runs_without_observables_keep_their_ids_and_runs_with_them_are_different_runs(tmp_path):
    plain = load_experiment(write(tmp_path, observables=[]), REGISTRY).runs[0]
    observed = load_experiment(write(tmp_path, observables=["logit_scale"]), REGISTRY).runs[0]
    assert "observables" not in plain.plain()["evaluation"]
    assert observed.plain()["evaluation"]["observables"] == ["logit_scale"]
    assert plain.run_id != observed.run_id and plain.init_seed == observed.init_seed


# ---------------------------------------------------------------------------------------------------
# Asking for them wrongly.


def problems(path, registry=REGISTRY) -> list[str]:
    with pytest.raises(UserError) as raised:
        load_experiment(path, registry)
    return [str(problem) for problem in raised.value.problems]


def test_an_unknown_observable_is_named_with_file_key_and_suggestion(tmp_path):
    path = write(tmp_path, observables=["logit_scale", "spectrl"])
    [line] = problems(path)
    assert line.startswith(f"{path}: evaluation.observables[1]: unknown observable 'spectrl'")
    assert "did you mean 'spectral'?" in line


def test_an_observable_listed_twice_is_refused(tmp_path):
    path = write(tmp_path, observables=["fourier", "fourier"])
    assert problems(path) == [f"{path}: evaluation.observables[1]: 'fourier' is listed twice"]


@attrs.frozen
class NoOptions:
    pass


class FlatMLP(torch.nn.Module):
    """A model with no embedding group."""

    def __init__(self, config, task):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(task.input_spec.length, task.num_classes))

    def forward(self, x):
        return x.float() @ self.w

    def weight_norm_groups(self):
        return {"all": ["w"]}


class FlatPlugin:
    @staticmethod
    @gnorm.hookimpl
    def gnorm_architectures():
        return [gnorm.Architecture(name="flat", summary="one matrix", config_class=attrs.make_class(
            "FlatConfig", {"embed_dim": attrs.field(default=0), "hidden_dim": attrs.field(default=0)}),
            factory=FlatMLP)]


def test_fourier_on_an_architecture_without_an_embedding_group_is_a_config_error(tmp_path):
    registry = build_registry(extra_plugins=[(FlatPlugin, Provider("test-flat", "0"))], autoload=False)
    path = write(tmp_path, observables=["logit_scale", "fourier", "spectral_all"], architecture="flat")
    [line] = problems(path, registry)
    assert line == (f"{path}: evaluation.observables[1]: observable 'fourier' needs the weight-norm group(s) "
                    "'embedding', which architecture 'flat' does not have here (its groups: all)")
