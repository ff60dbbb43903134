"""Built-in architectures: the papers' MLP and their one-layer attention model (``transformer``).

This module holds their options and descriptors; the ``torch.nn.Module`` classes are in
:mod:`gnorm.builtins.networks`, imported when a model is built, so registering the architectures
(``gnorm plugins``) does not import torch. ``MLP`` and ``Transformer`` are importable from here too.
"""

from __future__ import annotations

from typing import Any

import attrs

import gnorm
from gnorm.components import TaskData


def _positive(instance, attribute, value) -> None:
    if value < 1:
        raise ValueError(f"'{attribute.name}' must be at least 1, found {value}")


#: Hidden-layer nonlinearities an MLP may use, by the name an experiment file writes (the functions are
#: :data:`gnorm.builtins.networks.ACTIVATIONS`).
ACTIVATION_NAMES = ("gelu", "relu", "tanh")


@attrs.frozen
class MLPConfig:
    """The papers' MLP: shared embedding (``embed_dim``), concatenation, ``num_layers`` hidden layers of
    width ``hidden_dim`` with ``activation`` (gelu, relu or tanh), readout with biases;
    ``final_layernorm`` adds a parameter-free LayerNorm before the readout."""

    embed_dim: int = attrs.field(default=128, validator=_positive)
    hidden_dim: int = attrs.field(default=256, validator=_positive)
    final_layernorm: bool = False
    num_layers: int = attrs.field(default=1, validator=_positive)
    activation: str = attrs.field(default="gelu", validator=attrs.validators.in_(list(ACTIVATION_NAMES)))


@attrs.frozen
class TransformerConfig:
    """The papers' attention model: ``embed_dim`` (d), ``num_heads`` heads of d / num_heads, an MLP of
    width ``mlp_dim``, ``num_layers`` blocks, and a parameter-free ``layernorm``: "none", "final" (before
    the unembedding) or "pre" (before attention, before the MLP and before the unembedding)."""

    embed_dim: int = attrs.field(default=128, validator=_positive)
    num_heads: int = attrs.field(default=4, validator=_positive)
    mlp_dim: int = attrs.field(default=512, validator=_positive)
    num_layers: int = attrs.field(default=1, validator=_positive)
    layernorm: str = attrs.field(default="none", validator=attrs.validators.in_(["none", "final", "pre"]))

    @num_heads.validator
    def _divides_embed_dim(self, attribute, value) -> None:
        if value >= 1 and self.embed_dim % value:
            raise ValueError(f"'num_heads' must divide embed_dim ({self.embed_dim}), found {value}")


#: The model classes, defined in :mod:`gnorm.builtins.networks` and read from there on first use.
_NETWORKS = ("ACTIVATIONS", "MLP", "Transformer", "TransformerBlock")


def __getattr__(name: str) -> Any:
    if name in _NETWORKS:
        from gnorm.builtins import networks

        return getattr(networks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def mlp(config: MLPConfig, task: TaskData) -> Any:
    """The ``mlp`` architecture's factory: :class:`gnorm.builtins.networks.MLP`."""
    from gnorm.builtins.networks import MLP

    return MLP(config, task)


def transformer(config: TransformerConfig, task: TaskData) -> Any:
    """The ``transformer`` architecture's factory: :class:`gnorm.builtins.networks.Transformer`."""
    from gnorm.builtins.networks import Transformer

    return Transformer(config, task)


@gnorm.hookimpl
def gnorm_architectures() -> list[gnorm.Architecture]:
    return [
        gnorm.Architecture(name="mlp", config_class=MLPConfig, factory=mlp,
                           summary="the papers' GELU MLP on a shared embedding (depth and activation optional)"),
        gnorm.Architecture(name="transformer", config_class=TransformerConfig, factory=transformer,
                           summary="the papers' one-layer attention model on [a, b, =], query from the last position"),
    ]
