"""Mini-batch training: full batch stays the default and keeps every id; a member's batches depend
only on its seed (the same in every arm) and cover each training example once per epoch; the
ensemble on batches trains each member exactly as it would be trained alone on the same batches; a
checkpointed mini-batch cell resumes bit for bit."""

from __future__ import annotations

import copy
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gnorm.builtins.architectures import MLP, MLPConfig
from gnorm.builtins.tasks import ModularConfig, ModularTask
from gnorm.errors import UserError
from gnorm.loader import load_experiment
from gnorm.registry import build_registry
from gnorm.builtins.optimizers import AdamWConfig as OptimizerConfig
from gnorm.runmodel import TrainingConfig, cells_of
from gnorm.training.batches import MemberBatches, SamplingStream, epoch_permutation
from gnorm.training.build import build_cell
from gnorm.training.ensemble import Ensemble
from gnorm.training.jobs import CellJob
from gnorm.training.optimizer import BatchedAdamW
from gnorm.worker import train_cell_task
from test_checkpoints import comparable, interrupt_at, jobs, saved, study

REGISTRY = build_registry(autoload=False)

#: Two arms on the same seeds: a free run and a clamp, at another learning rate.
ARMS = """
[experiment]
name = "arms"
seeds = [0, 1, 2]
[task]
name = "modular_addition"
p = 13
train_fraction = 0.5
[architecture]
name = "mlp"
embed_dim = 8
hidden_dim = 16
[training]
max_steps = 100
{batch}
[[stage]]
name = "free"
[[stage]]
name = "held"
critical_norm = 10.0
optimizer = {{ lr = 2e-3 }}
controller = {{ name = "clamp", t_start = 20 }}
"""


def arms(tmp_path: Path, batch: str = ""):
    path = tmp_path / f"arms{abs(hash(batch))}.toml"
    path.write_text(ARMS.format(batch=batch))
    return load_experiment(path, REGISTRY)


def test_full_batch_is_the_default_and_keeps_every_run_id(tmp_path):
    assert TrainingConfig().batch_size == 0
    unset, zero = arms(tmp_path), arms(tmp_path, "batch_size = 0")
    assert [r.run_id for r in unset.runs] == [r.run_id for r in zero.runs]
    assert "batch_size" not in unset.runs[0].identity()["training"]


def test_a_batch_size_enters_the_identity_but_never_the_initialization_or_the_split(tmp_path):
    full, batched = arms(tmp_path), arms(tmp_path, "batch_size = 16")
    assert not {r.run_id for r in full.runs} & {r.run_id for r in batched.runs}
    assert [(r.init_seed, r.split_seed) for r in full.runs] == [(r.init_seed, r.split_seed) for r in batched.runs]


def test_a_batch_larger_than_the_training_set_is_refused_when_the_file_loads(tmp_path):
    with pytest.raises(UserError, match=r"training\.batch_size.*at most the 84 training examples"):
        arms(tmp_path, "batch_size = 85")  # p = 13, half of the 169 pairs: 84 (rounded) train


def test_a_members_batches_depend_only_on_its_seed_the_same_in_every_arm(tmp_path):
    experiment = arms(tmp_path, "batch_size = 16")
    free, held = (build_cell(CellJob(cell, stage.critical_norm), REGISTRY).ensemble.batches
                  for stage in experiment.stages for cell in cells_of(stage.runs))
    for step in range(1, 40):
        assert torch.equal(free.at(step), held.at(step))
    rows = free.at(1)
    assert not torch.equal(rows[0], rows[1])  # but each seed has its own stream


@pytest.mark.parametrize("batch_size", [16, 21, 84])
def test_a_stream_covers_each_training_example_once_per_epoch(batch_size):
    train_size, epochs = 84, 4
    stream = SamplingStream(split_seed=12345, train_size=train_size, batch_size=batch_size)
    steps = -(-epochs * train_size // batch_size)
    read = torch.cat([stream.at(step) for step in range(1, steps + 1)])
    for epoch in range(epochs):
        positions = read[epoch * train_size:(epoch + 1) * train_size]
        assert sorted(positions.tolist()) == list(range(train_size))
        assert torch.equal(positions, epoch_permutation(12345, train_size, epoch))
    assert not torch.equal(read[:train_size], read[train_size:2 * train_size])  # reshuffled every epoch


def test_a_stream_read_from_any_step_gives_that_steps_batch():
    """No state: a stream created at a later step (a resumed cell, a fork's arm) reads what one read
    from step 1 reads there."""
    from_start = SamplingStream(7, 84, 21)
    batches = [from_start.at(step) for step in range(1, 30)]
    assert all(torch.equal(SamplingStream(7, 84, 21).at(step), batches[step - 1]) for step in (1, 5, 17, 29))


OPTIMIZER = OptimizerConfig(lr=3e-3, weight_decay=1.0)


def _members(seeds, p=13):
    task = ModularTask(ModularConfig(p=p, train_fraction=0.5), torch.add)
    modules, splits = [], []
    for seed in seeds:
        torch.manual_seed(seed)
        modules.append(MLP(MLPConfig(embed_dim=8, hidden_dim=16), task))
        splits.append(task.split(seed))
    return modules, splits


def _alone_on_batches(module, split, split_seed, batch_size, steps):
    """One torch module and torch.optim.AdamW (decay on the weight-norm tensors only), each step on
    the examples its seed's stream names: the mini-batch loop users write."""
    module = copy.deepcopy(module).to(torch.float64)
    norm_names = [n for group in module.weight_norm_groups().values() for n in group]
    optimizer = torch.optim.AdamW(
        [{"params": [p for n, p in module.named_parameters() if n in norm_names], "weight_decay": 1.0},
         {"params": [p for n, p in module.named_parameters() if n not in norm_names], "weight_decay": 0.0}],
        lr=OPTIMIZER.lr, betas=(OPTIMIZER.beta1, OPTIMIZER.beta2), eps=OPTIMIZER.eps)
    stream = SamplingStream(split_seed, len(split.train_index), batch_size)
    for step in range(1, steps + 1):
        examples = split.train_index[stream.at(step)]
        loss = F.cross_entropy(module(split.inputs[examples]), split.labels[examples])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return [p.detach() for p in module.parameters()]


def test_the_ensemble_on_batches_equals_each_member_trained_alone_on_the_same_batches():
    seeds, split_seeds, batch_size, steps, leaves_at = [0, 1, 2], [101, 202, 303], 21, 150, 60
    modules, splits = _members(seeds)
    batches = MemberBatches(split_seeds, len(splits[0].train_index), batch_size)
    ensemble = Ensemble(modules, splits, torch.device("cpu"), torch.float64, batches=batches)
    optimizer = BatchedAdamW(ensemble.parameters, [n in ensemble.norm_names for n in ensemble.params], OPTIMIZER)
    for step in range(1, steps + 1):
        optimizer.step(ensemble.parameters, ensemble.gradients(ensemble.batches.at(step)))
        if step == leaves_at:  # member 1 leaves: the others keep their own streams
            index = torch.tensor([0, 2])
            ensemble.keep(index)
            optimizer.keep(index)
    for position, member in enumerate([0, 2]):
        alone = _alone_on_batches(modules[member], splits[member], split_seeds[member], batch_size, steps)
        for together, single in zip(ensemble.parameters, alone):
            np.testing.assert_allclose(together[position].numpy(), single.numpy(), rtol=1e-9, atol=1e-12)


def test_full_batch_gradients_are_the_ones_full_batch_training_always_computed():
    modules, splits = _members([0, 1])
    plain = Ensemble(modules, splits, torch.device("cpu"), torch.float32)
    explicit = Ensemble(modules, splits, torch.device("cpu"), torch.float32, batches=MemberBatches([1, 2], 84, 0))
    assert explicit.batches.at(1) is None
    assert all(torch.equal(a, b) for a, b in zip(plain.gradients(), explicit.gradients(explicit.batches.at(1))))


def test_a_checkpointed_mini_batch_cell_resumes_bit_for_bit(tmp_path):
    path = study(tmp_path, max_steps=300, held=False)
    path.write_text(path.read_text().replace("[training]\n", "[training]\nbatch_size = 128\n"))
    (job,) = jobs(path, tmp_path / "checkpoints").values()
    assert job.runs[0].training.batch_size == 128
    uninterrupted = comparable(train_cell_task(attrs.evolve(job, checkpoint=None), 1, REGISTRY))
    interrupt_at(job, 100)
    assert saved(job)["step"] == 80
    assert comparable(train_cell_task(job, 1, REGISTRY)) == uninterrupted
