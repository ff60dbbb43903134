"""gradient_clip_norm clips one model's gradient as torch.nn.utils.clip_grad_norm_ does, and gnorm's
batched chain clips each run by its own norm."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from gnorm.components import TransformContext
from gnorm.training.transforms import GradientTransformChain


def plugin():
    """The package read from its folder, without putting the folder on sys.path."""
    path = Path(__file__).resolve().parents[1] / "gnorm_plugin_gradclip" / "__init__.py"
    spec = importlib.util.spec_from_file_location("gnorm_plugin_gradclip_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def built(max_norm: float):
    module = plugin()
    [component] = module.gnorm_gradient_transforms()
    return component.factory(component.config_class(max_norm=max_norm), TransformContext(["w"]))


@pytest.mark.parametrize("max_norm", [0.05, 1e3])
def test_it_clips_one_model_as_torch_clip_grad_norm_does(max_norm):
    generator = torch.Generator().manual_seed(0)
    grads = {"w": torch.randn(4, 3, generator=generator), "b": torch.randn(3, generator=generator)}
    clipped, _ = built(max_norm).update(grads, {}, grads)
    parameters = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads.values()]
    for parameter, g in zip(parameters, grads.values()):
        parameter.grad = g.clone()
    torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    for parameter, name in zip(parameters, grads):
        torch.testing.assert_close(clipped[name], parameter.grad)


def test_each_run_of_an_ensemble_is_clipped_by_its_own_norm():
    transform = built(1.0)
    grads = [torch.stack([torch.full((2, 2), 0.1), torch.full((2, 2), 10.0)])]
    params = {"w": torch.ones(2, 2, 2)}
    chain = GradientTransformChain([("gradient_clip_norm", transform)], params)
    [out] = chain.update(grads, params)
    torch.testing.assert_close(out[0], grads[0][0])  # norm 0.2: untouched
    assert torch.linalg.vector_norm(out[1]).item() == pytest.approx(1.0, rel=1e-5)
