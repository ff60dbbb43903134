"""Built-in observables: the effective logit scale, softmax collapse, the embedding's Fourier
sparsity and the spectra of the weight matrices (paper B's mediators and the papers' trajectories).

Each is switched on per experiment with ``[evaluation] observables = [...]`` and computed at every
scheduled evaluation, chunk by chunk of ensemble members, from the logits the evaluation already has.
The science is in the pure functions below; every tensor has a leading member axis.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

import gnorm
from gnorm.components import EvaluationChunk, ObservableContext

if TYPE_CHECKING:
    import torch


@attrs.frozen
class NoOptions:
    """This observable has no options."""


def logit_scale(logits: torch.Tensor) -> torch.Tensor:
    """L_m = (1/N) sum_i ||z_mi||_2 over all N examples (train and test), z_mi the logit vector of
    member m on example i as the loss sees it (after any temperature)."""
    import torch

    return torch.linalg.vector_norm(logits, dim=-1).mean(dim=-1)


def softmax_collapse_fraction(logits: torch.Tensor, labels: torch.Tensor, train_mask: torch.Tensor) -> torch.Tensor:
    """Share of member m's training examples whose correct-class probability softmax(z_mi)[y_mi] is
    exactly 1.0 in the logits' own precision (float32 or float64, as trained)."""
    import torch

    correct = torch.softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    collapsed = (correct == 1.0) & train_mask
    return collapsed.sum(-1).to(logits.dtype) / train_mask.sum(-1).to(logits.dtype)


def gini(values: torch.Tensor) -> torch.Tensor:
    """Gini coefficient along the last axis of non-negative values x_1..x_n:
    G = sum_i sum_j |x_i - x_j| / (2 n^2 mean(x)) = sum_k (2k - n - 1) x_(k) / (n sum x), with x_(k) the
    k-th smallest. 0 when all are equal; (n - 1) / n when one holds everything."""
    import torch

    n = values.shape[-1]
    ordered = values.sort(dim=-1).values
    weights = 2 * torch.arange(1, n + 1, dtype=values.dtype, device=values.device) - n - 1
    return (ordered * weights).sum(-1) / (n * ordered.sum(-1))


def fourier_power(embedding: torch.Tensor) -> torch.Tensor:
    """Power of a token embedding E (p rows, one per residue a of Z_p; d columns) at each frequency
    k = 0..p-1 of Z_p: P_k = sum_j |sum_a E[a, j] exp(-2 pi i k a / p)|^2."""
    import torch

    return torch.fft.fft(embedding, dim=-2).abs().pow(2).sum(-1)


def fourier_gini(embedding: torch.Tensor) -> torch.Tensor:
    """Gini coefficient of the embedding's Fourier power over the p frequencies (``fourier_power``):
    near 0 for a random embedding, towards 1 when a few frequencies carry the power, as after
    grokking. At the papers' initialization (p = 59, d = 128, E ~ N(0,1)/sqrt(d)) this gives 0.0491
    (mean of 40 draws); their released ``fourier_gini`` at step 0 is 0.0497 (mean over their seeds)."""
    return gini(fourier_power(embedding))


def singular_value_entropy(matrix: torch.Tensor) -> torch.Tensor:
    """Spectral entropy of a matrix with singular values s_i: H = -sum_i q_i ln q_i with
    q_i = s_i^2 / sum_j s_j^2 (the share of the squared Frobenius norm; 0 ln 0 = 0). At the papers'
    initialization (p = 59, d = 128) this gives 3.8435 (mean of 40 draws); their released
    ``spec_entropy_E`` at step 0 is 3.8443. Shares s_i / sum s_j would give 4.007 instead."""
    import torch

    energy = torch.linalg.svdvals(matrix).pow(2)
    shares = energy / energy.sum(-1, keepdim=True)
    return -torch.special.xlogy(shares, shares).sum(-1)


def effective_rank(entropy: torch.Tensor) -> torch.Tensor:
    """Effective rank exp(H) of a spectral entropy H: the number of equal singular values with the
    same entropy."""
    return entropy.exp()


class LogitScale:
    def __init__(self, config: NoOptions, context: ObservableContext):
        pass

    def observe(self, chunk: EvaluationChunk) -> dict[str, torch.Tensor]:
        return {"logit_scale": logit_scale(chunk.logits)}


class SoftmaxCollapse:
    def __init__(self, config: NoOptions, context: ObservableContext):
        pass

    def observe(self, chunk: EvaluationChunk) -> dict[str, torch.Tensor]:
        return {"softmax_collapse_fraction": softmax_collapse_fraction(chunk.logits, chunk.labels, chunk.train_mask)}


class FourierGini:
    """Over the first p rows of the embedding group's token table (p = the number of classes, the
    residues of Z_p; a vocabulary may add tokens such as '=' after them)."""

    def __init__(self, config: NoOptions, context: ObservableContext):
        self.residues = context.num_classes
        self.names = list(context.groups.get("embedding", []))

    def observe(self, chunk: EvaluationChunk) -> dict[str, torch.Tensor]:
        tables = [chunk.params[n] for n in self.names if chunk.params[n].dim() == 3
                  and chunk.params[n].shape[1] >= self.residues]
        if not tables:
            raise ValueError(f"fourier: the embedding group has no token table with {self.residues} rows")
        return {"fourier_gini": fourier_gini(tables[0][:, :self.residues])}


class Spectral:
    """For every 2-D weight matrix of the chosen weight-norm groups: ``spectral_entropy/<group>`` and
    ``effective_rank/<group>`` (``.../<group>/<parameter>`` where a group holds several matrices).

    ``spectral`` covers the embedding group only (a p x d matrix: cheap); ``spectral_all`` every group.
    The SVD of a large hidden matrix is what costs: on W1 (16 seeds, p = 59, one thread of a shared
    2-core CPU; benchmarks/observables_overhead.py) ``spectral`` adds 4 ms to a 129 ms evaluation,
    ``spectral_all`` 78 ms, most of it the 256 x 256 hidden matrix's SVD.
    """

    def __init__(self, config: NoOptions, context: ObservableContext, only: tuple[str, ...] | None = None):
        self.groups = {g: names for g, names in context.groups.items() if only is None or g in only}

    def observe(self, chunk: EvaluationChunk) -> dict[str, torch.Tensor]:
        out = {}
        for group, names in self.groups.items():
            matrices = [n for n in names if chunk.params[n].dim() == 3]  # member axis + 2
            for name in matrices:
                label = group if len(matrices) == 1 else f"{group}/{name}"
                entropy = singular_value_entropy(chunk.params[name])
                out[f"spectral_entropy/{label}"] = entropy
                out[f"effective_rank/{label}"] = effective_rank(entropy)
        return out


@gnorm.hookimpl
def gnorm_observables() -> list[gnorm.Observable]:
    return [
        gnorm.Observable(name="logit_scale", summary="logit_scale: mean over all pairs of ||logits / tau||",
                         config_class=NoOptions, factory=LogitScale, at_grok=("logit_scale",),
                         facts=("logit_scale_at_grok",)),
        gnorm.Observable(name="softmax_collapse",
                         summary="softmax_collapse_fraction: share of train pairs with p(correct) == 1.0 exactly",
                         config_class=NoOptions, factory=SoftmaxCollapse),
        gnorm.Observable(name="fourier", summary="fourier_gini: Gini of the embedding's power over Z_p frequencies",
                         config_class=NoOptions, factory=FourierGini, requires_groups=("embedding",)),
        gnorm.Observable(name="spectral",
                         summary="spectral_entropy/embedding, effective_rank/embedding (singular values)",
                         config_class=NoOptions, factory=lambda config, context: Spectral(config, context, ("embedding",)),
                         requires_groups=("embedding",)),
        gnorm.Observable(name="spectral_all",
                         summary="spectral_entropy/<group>, effective_rank/<group> of every weight matrix",
                         config_class=NoOptions, factory=Spectral),
    ]
