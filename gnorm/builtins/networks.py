"""The built-in architectures' ``torch.nn.Module`` classes: the papers' MLP and their one-layer
attention model (their options and descriptors are in :mod:`gnorm.builtins.architectures`)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gnorm.builtins.architectures import MLPConfig, TransformerConfig
from gnorm.components import TaskData
from gnorm.errors import UserError

#: Hidden-layer nonlinearities an MLP may use, by the name an experiment file writes
#: (``gnorm.builtins.architectures.ACTIVATION_NAMES``).
ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "tanh": torch.tanh}


def scaled_normal(fan_in: int, *shape: int) -> torch.Tensor:
    """A tensor of ``shape`` drawn N(0, 1) / sqrt(fan_in). The division is in place: the same
    arithmetic, but on the meta device (``gnorm validate``, the loader's build checks) an out-of-place
    division goes through torch's Python reference kernels and imports its compiler."""
    return torch.randn(*shape).div_(math.sqrt(fan_in))


class MLP(torch.nn.Module):
    """logits = act(... act([E[x_1]; ...; E[x_L]] W1 + b1) ... W_k + b_k) W_out + b_out, with a
    parameter-free LayerNorm on the last hidden layer when ``final_layernorm``. For vector inputs the
    embedding is skipped.

    Initialisation (papers A and B): E ~ N(0,1)/sqrt(d), W1 ~ N(0,1)/sqrt(fan_in), W_out ~ N(0,1)/sqrt(H),
    biases 0; hidden layers k = 2..num_layers (``w_hidden_k``, ``b_hidden_k``) W_k ~ N(0,1)/sqrt(H), drawn
    after W_out so that depth leaves the other weights' draws unchanged. The weight norm is
    ||W|| = sqrt(||E||^2 + sum_k ||W_k||^2 + ||W_out||^2); every W_k is in the group ``hidden``; biases
    are outside the norm.
    """

    def __init__(self, config: MLPConfig, task: TaskData):
        super().__init__()
        spec = task.input_spec
        self.tokens = spec.kind == "tokens"
        self.final_layernorm = config.final_layernorm
        self.activation = ACTIVATIONS[config.activation]
        width = spec.length * config.embed_dim if self.tokens else spec.length
        if self.tokens:
            self.embedding = torch.nn.Parameter(scaled_normal(config.embed_dim, spec.vocab_size, config.embed_dim))
        self.w_in = torch.nn.Parameter(scaled_normal(width, width, config.hidden_dim))
        self.b_in = torch.nn.Parameter(torch.zeros(config.hidden_dim))
        self.w_out = torch.nn.Parameter(scaled_normal(config.hidden_dim, config.hidden_dim, task.num_classes))
        self.b_out = torch.nn.Parameter(torch.zeros(task.num_classes))
        self.deeper = [f"hidden_{k}" for k in range(2, config.num_layers + 1)]
        for name in self.deeper:
            self.register_parameter(f"w_{name}", torch.nn.Parameter(
                scaled_normal(config.hidden_dim, config.hidden_dim, config.hidden_dim)))
            self.register_parameter(f"b_{name}", torch.nn.Parameter(torch.zeros(config.hidden_dim)))

    def hidden_input(self, x: torch.Tensor) -> torch.Tensor:
        """[E[x_1]; ...; E[x_L]] W1 + b1, computed exactly as b1 + sum_l (E W1_l)[x_l], with W1_l the l-th
        block of d rows: the vocabulary is far smaller than the batch, so projecting the vocabulary first
        and looking rows up is the cheap order (``F.embedding``: whole rows, where ``torch.gather`` takes
        one index per element)."""
        if not self.tokens:
            return x @ self.w_in + self.b_in
        blocks = self.w_in.unflatten(0, (x.shape[-1], self.embedding.shape[1]))
        hidden = None
        for position in range(x.shape[-1]):
            table = self.embedding @ blocks[position]
            rows = F.embedding(x[..., position], table if hidden is not None else table + self.b_in)
            hidden = rows if hidden is None else hidden.add_(rows)  # in place: one pass over the batch
        return hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.activation(self.hidden_input(x))
        for name in self.deeper:
            hidden = self.activation(hidden @ getattr(self, f"w_{name}") + getattr(self, f"b_{name}"))
        if self.final_layernorm:
            hidden = F.layer_norm(hidden, hidden.shape[-1:])
        return hidden @ self.w_out + self.b_out

    def weight_norm_groups(self) -> dict[str, list[str]]:
        groups = {"hidden": ["w_in", *(f"w_{name}" for name in self.deeper)], "readout": ["w_out"]}
        return {"embedding": ["embedding"], **groups} if self.tokens else groups


class TransformerBlock(torch.nn.Module):
    """One attention + MLP block acting on the last position. Parameters (no biases): ``query``, ``key``,
    ``value``, ``out`` (d x d) and ``mlp_in`` (d x mlp_dim), ``mlp_out`` (mlp_dim x d)."""

    def __init__(self, embed_dim: int, mlp_dim: int):
        super().__init__()
        for name in ("query", "key", "value", "out"):
            self.register_parameter(name, torch.nn.Parameter(scaled_normal(embed_dim, embed_dim, embed_dim)))
        self.mlp_in = torch.nn.Parameter(scaled_normal(embed_dim, embed_dim, mlp_dim))
        self.mlp_out = torch.nn.Parameter(scaled_normal(mlp_dim, mlp_dim, embed_dim))


class Transformer(torch.nn.Module):
    """The papers' attention model on the tokens [a, b, =] ("=" has id vocab_size, so the vocabulary is
    the task's plus one), with the query taken from the last position only:

        x_j = E[t_j] + P_j                       (j = 0, 1, 2; residual streams)
        per block:  u = N(x_2);  q = u Wq;  k_j = N(x_j) Wk;  v_j = N(x_j) Wv
                    x_2 <- x_2 + concat_h( sum_j softmax_j(q_h . k_jh / sqrt(d_h)) v_jh ) Wo
                    x_2 <- x_2 + GELU(N(x_2) W_in) W_out
        logits = N'(x_2) W_U                     (vocab_size + 1 logits)

    N is the parameter-free LayerNorm with ``layernorm = "pre"`` and the identity otherwise; N' is
    LayerNorm with "pre" or "final". With one block this is exactly a standard bidirectional transformer
    block read at the last position (only that position's output reaches the logits). With more blocks
    every block again queries from the last position only, so the a and b streams stay their embeddings.

    Because the a and b streams never change, their keys and values are per-vocabulary tables
    N(E + P_j) Wk (rows gathered per example), and the first block's query is one vector.

    Initialisation: every matrix N(0,1)/sqrt(fan_in); the token embedding N(0,1)/sqrt(d); the positions
    start at zero (the papers' released step-0 embedding-group norms, 7.73 at p = 59 and 7.35 at p = 53
    over the seeds, equal sqrt(p + 1) for the token table alone). All tensors, positions included, are
    in the weight norm, in groups ``embedding`` (E, P), ``attention`` (Wq, Wk, Wv, Wo of every block),
    ``mlp`` (W_in, W_out of every block) and ``unembedding`` (W_U).
    """

    def __init__(self, config: TransformerConfig, task: TaskData):
        super().__init__()
        spec = task.input_spec
        if spec.kind != "tokens" or spec.length != 2:
            raise UserError(f"architecture: transformer reads two tokens [a, b]; this task gives "
                            f"{spec.length} {spec.kind} inputs")
        d, vocab = config.embed_dim, spec.vocab_size + 1
        self.num_heads, self.layernorm = config.num_heads, config.layernorm
        self.equals_token = spec.vocab_size
        self.token_embedding = torch.nn.Parameter(scaled_normal(d, vocab, d))
        self.positions = torch.nn.Parameter(torch.zeros(3, d))
        self.blocks = torch.nn.ModuleList(TransformerBlock(d, config.mlp_dim) for _ in range(config.num_layers))
        self.unembedding = torch.nn.Parameter(scaled_normal(d, d, vocab))

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:]) if self.layernorm == "pre" else x

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        streams = [self._norm(self.token_embedding + self.positions[j]) for j in range(2)]  # per-vocab tables
        last = self.token_embedding[self.equals_token] + self.positions[2]  # (d,), becomes (..., d)
        for block in self.blocks:
            keys, values = [], []
            for j, table in enumerate(streams):
                keys.append(self._heads(F.embedding(x[..., j], table @ block.key)))
                values.append(self._heads(F.embedding(x[..., j], table @ block.value)))
            reader = self._norm(last)
            query = self._heads(reader @ block.query)
            keys.append(self._heads(reader @ block.key))
            values.append(self._heads(reader @ block.value))
            scores = torch.broadcast_tensors(*((query * key).sum(-1) for key in keys))  # the first query is shared
            weights = torch.softmax(torch.stack(scores, dim=-1) / math.sqrt(query.shape[-1]), dim=-1)
            attended = sum((weights[..., j, None] * values[j] for j in range(1, 3)), weights[..., 0, None] * values[0])
            last = last + attended.flatten(-2) @ block.out
            last = last + F.gelu(self._norm(last) @ block.mlp_in) @ block.mlp_out
        if self.layernorm != "none":
            last = F.layer_norm(last, last.shape[-1:])
        return last @ self.unembedding

    def weight_norm_groups(self) -> dict[str, list[str]]:
        blocks = [f"blocks.{i}" for i in range(len(self.blocks))]
        return {"embedding": ["token_embedding", "positions"],
                "attention": [f"{b}.{name}" for b in blocks for name in ("query", "key", "value", "out")],
                "mlp": [f"{b}.{name}" for b in blocks for name in ("mlp_in", "mlp_out")],
                "unembedding": ["unembedding"]}
