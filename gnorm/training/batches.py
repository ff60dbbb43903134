"""Mini-batches: each member's sampling stream over its own training set.

With ``[training] batch_size = B > 0`` every step trains each member on B of its n_train training
examples. A member's stream is shuffled epochs without replacement: epoch e is a random permutation
of positions 0 .. n_train - 1 (positions in the member's ``train_index``), seeded by the member's
split seed and e only, and the epochs are read one after another, B positions a step (a batch may
run from the end of one epoch into the next). So

* step t trains on stream positions (t - 1) B .. t B - 1: the batch of a step is a pure function of
  (split seed, n_train, B, t), with no state to carry; a checkpoint or a fork's trunk that records
  the step records the stream;
* every training example is seen exactly once per epoch;
* the stream depends on the seed's split seed (task and seed: ``RunSpec.split_seed``), never on the
  arm, so every arm of a comparison sees the same batches at the same step.

``batch_size = 0`` is full batch (gnorm's default): no stream at all, and the gradient is the one
full-batch training always computed.
"""

from __future__ import annotations

from typing import Sequence

import torch

from gnorm.runmodel import derive_seed

#: The permutations a stream keeps cached: the epoch a batch starts in and the one it runs into.
_CACHED_EPOCHS = 2


def epoch_permutation(split_seed: int, train_size: int, epoch: int) -> torch.Tensor:
    """Epoch ``epoch``'s order of the positions 0 .. train_size - 1: ``torch.randperm`` on the CPU,
    seeded by derive_seed("batches", split_seed, epoch)."""
    generator = torch.Generator().manual_seed(derive_seed("batches", split_seed, epoch))
    return torch.randperm(train_size, generator=generator)


class SamplingStream:
    """One member's stream of training positions (see the module docstring), read by step."""

    def __init__(self, split_seed: int, train_size: int, batch_size: int):
        if not 0 < batch_size <= train_size:
            raise ValueError(f"batch_size must be from 1 to the {train_size} training examples, found {batch_size}")
        self.split_seed, self.train_size, self.batch_size = split_seed, train_size, batch_size
        self._epochs: dict[int, torch.Tensor] = {}

    def _epoch(self, epoch: int) -> torch.Tensor:
        if epoch not in self._epochs:
            if len(self._epochs) >= _CACHED_EPOCHS:
                del self._epochs[min(self._epochs)]
            self._epochs[epoch] = epoch_permutation(self.split_seed, self.train_size, epoch)
        return self._epochs[epoch]

    def at(self, step: int) -> torch.Tensor:
        """The positions (into the member's training set) step ``step`` (from 1) trains on: stream
        positions (step - 1) B .. step B - 1."""
        start = (step - 1) * self.batch_size
        first, offset = divmod(start, self.train_size)
        head = self._epoch(first)[offset:offset + self.batch_size]
        if head.numel() == self.batch_size:
            return head
        return torch.cat([head, self._epoch(first + 1)[:self.batch_size - head.numel()]])


class MemberBatches:
    """The ensemble's members' streams, in ensemble order; ``at(step)`` stacks their batches
    ([members, B] positions) or is None for full-batch training (``batch_size`` 0)."""

    def __init__(self, split_seeds: Sequence[int], train_size: int, batch_size: int,
                 device: torch.device | str = "cpu"):
        self.batch_size, self.device = batch_size, torch.device(device)
        self.streams = [SamplingStream(seed, train_size, batch_size) for seed in split_seeds] if batch_size else []

    def at(self, step: int) -> torch.Tensor | None:
        if not self.batch_size:
            return None
        return torch.stack([stream.at(step) for stream in self.streams]).to(self.device)

    def keep(self, index: torch.Tensor) -> None:
        """Drop every member's stream not in ``index`` (positions of those that stay)."""
        if self.streams:
            self.streams = [self.streams[i] for i in index.tolist()]
