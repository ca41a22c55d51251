"""Gradient penalties on a discriminator's input gradients.

* WGAN-GP (Gulrajani et al. 2017): ``mean_i (‖g_i‖ - 1)²`` on interpolates between real and fake.
* R1 (Mescheder et al. 2018): ``mean_i ‖g_i‖²`` on reals (the caller multiplies by γ/2).

``g`` is the gradient of the summed logits w.r.t. D's input, obtained with
``torch.autograd.grad(..., create_graph=True)``; the reduction here is differentiable so the
penalty can be backpropagated into D's weights (double backward).
"""
from __future__ import annotations

import torch

from fastgan.errors import ConfigError
from fastgan.ops._impl import resolve_impl, upcast

PENALTIES = ("wgan-gp", "r1")


def _grad_penalty_ref(grads: torch.Tensor, kind: str, center: float) -> torch.Tensor:
    sq = upcast(grads).flatten(1).square().sum(dim=1)
    if kind == "r1":
        return sq.mean()
    norm = (sq + 1e-12).sqrt()
    return (norm - center).square().mean()


def grad_penalty(grads: torch.Tensor, kind: str = "wgan-gp", *, center: float = 1.0,
                 impl: str | None = None) -> torch.Tensor:
    """Reduce per-sample input gradients (N, ...) to the penalty scalar."""
    if kind not in PENALTIES:
        raise ConfigError(f"unknown gradient penalty {kind!r}; choose one of {', '.join(PENALTIES)}")
    if resolve_impl(impl, grads) == "triton":
        from fastgan.ops._penalty_triton import grad_penalty_triton

        return grad_penalty_triton(grads, kind, center)
    return _grad_penalty_ref(grads, kind, center)
