"""Bias + activation (+ gain, + clamp) for conv and linear outputs (StyleGAN2-ADA's bias_act)."""
from __future__ import annotations

import torch

from fastgan.ops.activations import apply_activation_ref, get_activation
from fastgan.ops._impl import resolve_impl


def _bias_act_ref(x, b, dim, act, alpha, gain, clamp):
    if b is not None:
        shape = [1] * x.ndim
        shape[dim] = -1
        x = x + b.to(x.dtype).reshape(shape)   # the input's dtype, as a stock layer under autocast
    y = apply_activation_ref(x, act, alpha, gain)
    if clamp is not None and clamp >= 0:
        y = y.clamp(-clamp, clamp)
    return y


def bias_act(
    x: torch.Tensor,
    b: torch.Tensor | None = None,
    *,
    dim: int = 1,
    act: str = "linear",
    alpha: float | None = None,
    gain: float = 1.0,
    clamp: float | None = None,
    impl: str | None = None,
) -> torch.Tensor:
    """``clamp(gain * act(x + b), -clamp, clamp)`` with ``b`` broadcast along ``dim``."""
    get_activation(act)
    if resolve_impl(impl, x) == "triton":
        from fastgan.ops._bias_act_triton import bias_act_triton

        return bias_act_triton(x, b, dim, act, alpha, gain, clamp)
    return _bias_act_ref(x, b, dim, act, alpha, gain, clamp)
