"""Triton fast path of :func:`fastgan.ops.pixel_norm`: launchers and op registration.

* ``fastgan::pixel_norm(x, eps) -> y`` — one launch; backward saves only ``x`` (``rstd`` is
  recomputed in the backward's own pass over the channels, so no statistics are stored).
* ``fastgan::pixel_norm_bwd(dy, x, eps) -> dx`` — one launch:
  ``dx = rstd · (dy − x · rstd² · mean_c(dy · x))``.

The VJP op has a backward of its own (torch ops through the reference, like instance norm's),
so a pixel-normed network can sit under a gradient penalty too; it is not a fast path.

Layouts: any dense tensor — NCHW, channels_last, the mapping network's (N, C) — is processed
in place in memory order (``[R, C, I]``, see :mod:`fastgan.kernels.pixel_norm`); a non-dense one
is first copied into a dense tensor.
"""
from __future__ import annotations

import torch

from fastgan.errors import FastganError
from fastgan.kernels.pixel_norm import _pixel_norm_bwd_kernel, _pixel_norm_fwd_kernel
from fastgan.ops._bias_act_triton import _acc_dtype, _dense, _like, _view3
from fastgan.ops._instance_norm_triton import _second_order
from fastgan.ops.norm_act import _pixel_norm_ref
from fastgan.ops._impl import cdiv, eager_twin, next_pow2, device_guard as _device_guard

TILE = 4096          # elements per [BLOCK_R, BLOCK_C, BLOCK_I] tile (more when C is large)
MAX_BLOCK_C = 1024   # channels reduced in registers in one pass; more are looped over twice
MIN_BLOCK_I = 8      # contiguous pixels per channel row in NCHW (≥ one 32-byte sector in fp32)
NUM_WARPS = 8


def _launch(R: int, C: int, I: int) -> tuple[int, int, int, int, bool]:
    """(BLOCK_R, BLOCK_C, BLOCK_I, programs, ONE_PASS) for an [R, C, I] view."""
    block_c = min(next_pow2(C), MAX_BLOCK_C)
    block_i = min(next_pow2(I), max(MIN_BLOCK_I, TILE // block_c))
    block_r = min(next_pow2(R), max(1, TILE // (block_c * block_i)))
    programs = cdiv(R, block_r) * cdiv(I, block_i)
    return block_r, block_c, block_i, programs, block_c >= C


def pixel_norm_fwd(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Launch the forward: ``y = x / sqrt(mean_c(x²) + eps)``."""
    x = _dense(x)
    y = torch.empty_like(x)
    if x.numel() == 0:
        return y
    R, C, I = _view3(x, 1, True)
    block_r, block_c, block_i, programs, one_pass = _launch(R, C, I)
    with _device_guard(x):
        _pixel_norm_fwd_kernel[(programs,)](
            x, y, R, C, I, eps, ONE_PASS=one_pass, ACC=_acc_dtype(x),
            BLOCK_R=block_r, BLOCK_C=block_c, BLOCK_I=block_i, num_warps=NUM_WARPS,
        )
    return y


def pixel_norm_bwd(dy: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Launch the VJP: ``dx = rstd · (dy − x · rstd² · mean_c(dy · x))``."""
    x = _dense(x)
    dy = _like(dy, x)
    dx = torch.empty_like(x)
    if x.numel() == 0:
        return dx
    R, C, I = _view3(x, 1, True)
    block_r, block_c, block_i, programs, one_pass = _launch(R, C, I)
    with _device_guard(x):
        _pixel_norm_bwd_kernel[(programs,)](
            dy, x, dx, R, C, I, eps, ONE_PASS=one_pass, ACC=_acc_dtype(x),
            BLOCK_R=block_r, BLOCK_C=block_c, BLOCK_I=block_i, num_warps=NUM_WARPS,
        )
    return dx


# -- torch.library registration -------------------------------------------------------------

@torch.library.custom_op("fastgan::pixel_norm", mutates_args=())
def _pixel_norm_op(x: torch.Tensor, eps: float) -> torch.Tensor:
    return pixel_norm_fwd(x, eps)


@_pixel_norm_op.register_fake
def _(x, eps):
    return torch.empty_like(_dense(x))


def _fwd_setup(ctx, inputs, output):
    x, eps = inputs
    ctx.eps = eps
    ctx.save_for_backward(x)


def _fwd_backward(ctx, dy):
    (x,) = ctx.saved_tensors
    return _bwd_call(dy, x, ctx.eps), None


_pixel_norm_op.register_autograd(_fwd_backward, setup_context=_fwd_setup)


@torch.library.custom_op("fastgan::pixel_norm_bwd", mutates_args=())
def _pixel_norm_bwd_op(dy: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    return pixel_norm_bwd(dy, x, eps)


@_pixel_norm_bwd_op.register_fake
def _(dy, x, eps):
    return torch.empty_like(_dense(x))


def _bwd_setup(ctx, inputs, output):
    dy, x, eps = inputs
    ctx.eps = eps
    ctx.save_for_backward(dy, x)


def _bwd_backward(ctx, g_dx):
    dy, x = ctx.saved_tensors
    eps = ctx.eps
    d_dy, d_x = _second_order(lambda x_: _pixel_norm_ref(x_, eps), [x], dy, [g_dx])
    return d_dy, d_x, None


_pixel_norm_bwd_op.register_autograd(_bwd_backward, setup_context=_bwd_setup)

# Eager calls skip torch.library's dispatch (see fastgan.ops._impl.eager_twin); traced ones use the ops.
_fwd_call = eager_twin(_pixel_norm_op, pixel_norm_fwd, backward=_fwd_backward, setup_context=_fwd_setup,
                       name="PixelNormFunction")
_bwd_call = eager_twin(_pixel_norm_bwd_op, pixel_norm_bwd, backward=_bwd_backward, setup_context=_bwd_setup,
                       name="PixelNormBackwardFunction")


# -- entry point used by fastgan.ops.pixel_norm ------------------------------------------------

def pixel_norm_triton(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Validate the arguments, then call the ``fastgan::pixel_norm`` op."""
    if x.ndim < 2:
        raise FastganError(f"pixel_norm needs an (N, C, *spatial) or (N, C) tensor, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise FastganError(f"pixel_norm needs a floating-point tensor, got {x.dtype}")
    return _fwd_call(x, float(eps))
