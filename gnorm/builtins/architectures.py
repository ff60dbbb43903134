"""Built-in architectures: the papers' MLP."""

from __future__ import annotations

import math

import attrs
import torch
import torch.nn.functional as F

import gnorm
from gnorm.components import TaskData


def _positive(instance, attribute, value) -> None:
    if value < 1:
        raise ValueError(f"'{attribute.name}' must be at least 1, found {value}")


@attrs.frozen
class MLPConfig:
    """The papers' MLP: shared embedding (``embed_dim``), concatenation, one GELU hidden layer
    (``hidden_dim``), readout with biases; ``final_layernorm`` adds a parameter-free LayerNorm before it."""

    embed_dim: int = attrs.field(default=128, validator=_positive)
    hidden_dim: int = attrs.field(default=256, validator=_positive)
    final_layernorm: bool = False


class MLP(torch.nn.Module):
    """logits = GELU([E[x_1]; ...; E[x_L]] W1 + b1) W2 + b2, with a parameter-free LayerNorm on the
    hidden layer when ``final_layernorm``. For vector inputs the embedding is skipped.

    Initialisation (papers A and B): E ~ N(0,1)/sqrt(d), W1 ~ N(0,1)/sqrt(fan_in), W2 ~ N(0,1)/sqrt(H),
    biases 0. The weight norm is ||W|| = sqrt(||E||^2 + ||W1||^2 + ||W2||^2); biases are outside it.
    """

    def __init__(self, config: MLPConfig, task: TaskData):
        super().__init__()
        spec = task.input_spec
        self.tokens = spec.kind == "tokens"
        self.final_layernorm = config.final_layernorm
        width = spec.length * config.embed_dim if self.tokens else spec.length
        if self.tokens:
            self.embedding = torch.nn.Parameter(torch.randn(spec.vocab_size, config.embed_dim) / math.sqrt(config.embed_dim))
        self.w_in = torch.nn.Parameter(torch.randn(width, config.hidden_dim) / math.sqrt(width))
        self.b_in = torch.nn.Parameter(torch.zeros(config.hidden_dim))
        self.w_out = torch.nn.Parameter(torch.randn(config.hidden_dim, task.num_classes) / math.sqrt(config.hidden_dim))
        self.b_out = torch.nn.Parameter(torch.zeros(task.num_classes))

    def hidden_input(self, x: torch.Tensor) -> torch.Tensor:
        """[E[x_1]; ...; E[x_L]] W1 + b1, computed exactly as b1 + sum_l (E W1_l)[x_l], with W1_l the l-th
        block of d rows: the vocabulary is far smaller than the batch, so projecting the vocabulary first
        and gathering rows is the cheap order."""
        if not self.tokens:
            return x @ self.w_in + self.b_in
        blocks = self.w_in.unflatten(0, (x.shape[-1], self.embedding.shape[1]))
        hidden = None
        for position in range(x.shape[-1]):
            table = self.embedding @ blocks[position]
            rows = torch.gather(table if hidden is not None else table + self.b_in, 0,
                                x[..., position].unsqueeze(-1).expand(*x.shape[:-1], table.shape[-1]))
            hidden = rows if hidden is None else hidden.add_(rows)  # in place: one pass over the batch
        return hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.gelu(self.hidden_input(x))
        if self.final_layernorm:
            hidden = F.layer_norm(hidden, hidden.shape[-1:])
        return hidden @ self.w_out + self.b_out

    def weight_norm_groups(self) -> dict[str, list[str]]:
        groups = {"hidden": ["w_in"], "readout": ["w_out"]}
        return {"embedding": ["embedding"], **groups} if self.tokens else groups


@gnorm.hookimpl
def gnorm_architectures() -> list[gnorm.Architecture]:
    return [gnorm.Architecture(name="mlp", summary="the papers' one-hidden-layer GELU MLP on a shared embedding",
                               config_class=MLPConfig, factory=MLP)]
