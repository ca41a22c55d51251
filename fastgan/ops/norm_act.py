"""Normalization fused with affine and activation: batch norm, instance norm, pixel norm.

Each public op takes ``impl=`` (see :mod:`fastgan.ops._impl`); ``_*_ref`` is the reference
written only with torch ops (differentiable to any order, so gradient penalties can go
through it).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fastgan.ops._impl import resolve_impl
from fastgan.ops.activations import apply_activation_ref, get_activation


def _batch_norm_act_ref(x, weight, bias, running_mean, running_var, training, momentum, eps, act, alpha):
    y = F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)
    return apply_activation_ref(y, act, alpha)


def batch_norm_act(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    *,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    act: str = "linear",
    alpha: float | None = None,
    impl: str | None = None,
) -> torch.Tensor:
    """``act(batch_norm(x) * weight + bias)`` for (N, C) or (N, C, *spatial) inputs.

    Semantics follow ``torch.nn.functional.batch_norm``: in training, batch statistics are
    used and the running buffers (if given) are updated in place with ``momentum`` and the
    unbiased variance; in eval the running statistics are used.
    """
    get_activation(act)
    if resolve_impl(impl, x) == "triton":
        from fastgan.ops._batch_norm_triton import batch_norm_act_triton

        return batch_norm_act_triton(x, weight, bias, running_mean, running_var, training, momentum, eps, act, alpha)
    return _batch_norm_act_ref(x, weight, bias, running_mean, running_var, training, momentum, eps, act, alpha)


def _instance_norm_act_ref(x, weight, bias, eps, act, alpha):
    # Written out with elementwise ops and means, not F.instance_norm: that routes through
    # batch_norm, whose derivative is not differentiable past second order on current torch, and
    # penalties of penalties need third order. Statistics in fp32 (at least) for half inputs.
    dtype = torch.promote_types(x.dtype, torch.float32)
    xf = x.to(dtype)
    dims = tuple(range(2, x.dim()))                                   # spatial dims of (N, C, *spatial)
    mean = xf.mean(dim=dims, keepdim=True)                            # (N, C, 1, ...)
    xc = xf - mean
    y = xc * torch.rsqrt(xc.square().mean(dim=dims, keepdim=True) + eps)   # biased variance
    shape = (1, -1) + (1,) * (x.dim() - 2)                            # per-channel affine, broadcast
    if weight is not None:
        y = y * weight.to(dtype).reshape(shape)
    if bias is not None:
        y = y + bias.to(dtype).reshape(shape)
    return apply_activation_ref(y.to(x.dtype), act, alpha)


def instance_norm_act(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    *,
    eps: float = 1e-5,
    act: str = "linear",
    alpha: float | None = None,
    impl: str | None = None,
) -> torch.Tensor:
    """``act(instance_norm(x) * weight + bias)`` (per-sample, per-channel statistics)."""
    get_activation(act)
    if resolve_impl(impl, x) == "triton":
        from fastgan.ops._instance_norm_triton import instance_norm_act_triton

        return instance_norm_act_triton(x, weight, bias, eps, act, alpha)
    return _instance_norm_act_ref(x, weight, bias, eps, act, alpha)


def _pixel_norm_ref(x, eps):
    return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + eps)


def pixel_norm(x: torch.Tensor, *, eps: float = 1e-8, impl: str | None = None) -> torch.Tensor:
    """``x / sqrt(mean_c(x²) + eps)`` over the channel dimension (ProGAN / StyleGAN mapping)."""
    if resolve_impl(impl, x) == "triton":
        from fastgan.ops._pixel_norm_triton import pixel_norm_triton

        return pixel_norm_triton(x, eps)
    return _pixel_norm_ref(x, eps)
