"""Triton fast path of the gradient penalties: host launchers and ``torch.library`` registration.

* ``fastgan::grad_penalty(grads, kind, center) -> (pen, coef)``: two launches — the split
  sum-of-squares over a (N, S) grid, then one program that combines each sample's S partials,
  writes the penalty and the per-sample backward coefficient ``coef`` (N fp32 values).
* ``fastgan::grad_penalty_bwd(grads, coef, grad_out) -> dgrads``: one elementwise launch,
  ``dgrads = grad_out · coef_i · grads`` (grad_out read on device: no host sync).

Autograd saves ``grads`` (alive anyway: it is the create_graph gradient the penalty is taken of)
and ``coef``. ``pen.backward()`` calls the first-order backward only, whose result autograd
then propagates through the create_graph graph of ``grads`` into D's weights — so a Triton
*double* backward is not needed. When the op's backward is itself recorded (``create_graph=True``
on the penalty, i.e. a third derivative of D), the VJP is computed by differentiating the
reference with torch ops, so higher derivatives stay exact.

Layout: a sample must be a dense memory span (NCHW and channels_last both are: batch is the
outermost stride); such gradients are used in place and ``dgrads`` gets the same strides.
Any other layout (e.g. a strided slice) is copied to contiguous once, deliberately.
"""
from __future__ import annotations

import math

import torch

from fastgan.errors import FastganError
from fastgan.kernels.grad_penalty import (
    R1,
    WGAN_GP,
    _grad_penalty_bwd_kernel,
    _grad_penalty_combine_kernel,
    _grad_penalty_fwd_kernel,
)
from fastgan.ops.penalties import _grad_penalty_ref
from fastgan.ops._impl import cdiv, eager_twin, next_pow2, device_guard as _device_guard

KIND_IDS = {"wgan-gp": WGAN_GP, "r1": R1}

BLOCK_MAX = 1024        # values per program per loop iteration
TARGET_PROGRAMS = 2048  # aim for about this many programs in the (N, S) grid
COMBINE_TILE = 4096     # partials per combine-kernel tile (BLOCK_N × BLOCK_S)
COMBINE_BLOCK_S = 64    # splits per tile row in the combine kernel (more are looped over)


def samples_are_dense(g: torch.Tensor) -> bool:
    """True if every sample g[i] is a dense span of memory starting at i·stride(0) (any inner order)."""
    n, m = g.shape[0], math.prod(g.shape[1:])
    if n > 1 and g.stride(0) != m:
        return False
    expected = 1
    for stride, size in sorted((g.stride(d), g.size(d)) for d in range(1, g.ndim) if g.size(d) != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _prepared(g: torch.Tensor) -> torch.Tensor:
    return g if samples_are_dense(g) else g.contiguous()


def _split_settings(n: int, m: int) -> tuple[int, int, int, int]:
    """(BLOCK, blocks_per_split, splits S, num_warps) for N samples of M values."""
    block = min(BLOCK_MAX, max(16, next_pow2(m)))
    n_blocks = cdiv(m, block)
    want = max(1, min(n_blocks, cdiv(TARGET_PROGRAMS, n)))
    per_split = cdiv(n_blocks, want)
    return block, per_split, cdiv(n_blocks, per_split), min(8, max(1, block // 256))


def _sample_stride(g: torch.Tensor) -> int:
    return g.stride(0) if g.shape[0] > 1 else math.prod(g.shape[1:])


def grad_penalty_fwd(grads: torch.Tensor, kind: str, center: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the penalty: returns (pen fp32 scalar, coef fp32 (N,))."""
    g = _prepared(grads)
    n, m = g.shape[0], math.prod(g.shape[1:])
    block, per_split, splits, warps = _split_settings(n, m)
    partials = torch.empty((n, splits), dtype=torch.float32, device=g.device)
    pen = torch.empty((), dtype=torch.float32, device=g.device)
    coef = torch.empty((n,), dtype=torch.float32, device=g.device)
    block_s = min(COMBINE_BLOCK_S, max(2, next_pow2(splits)))
    block_n = max(2, min(next_pow2(n), COMBINE_TILE // block_s))
    with _device_guard(g):
        _grad_penalty_fwd_kernel[(n, splits)](
            g, partials, m, _sample_stride(g), splits, per_split, BLOCK=block, num_warps=warps,
        )
        _grad_penalty_combine_kernel[(1,)](
            partials, pen, coef, n, splits, 1.0 / n, float(center),
            KIND=KIND_IDS[kind], BLOCK_N=block_n, BLOCK_S=block_s, num_warps=4,
        )
    return pen, coef


def _dgrads_like(g: torch.Tensor) -> torch.Tensor:
    """Output buffer with the memory layout the kernels index (g's own strides when dense)."""
    if samples_are_dense(g):
        return torch.empty_strided(g.shape, g.stride(), dtype=g.dtype, device=g.device)
    return torch.empty(g.shape, dtype=g.dtype, device=g.device)


def grad_penalty_bwd(grads: torch.Tensor, coef: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """Launch the VJP: dgrads[i] = grad_out · coef[i] · grads[i]."""
    g = _prepared(grads)
    n, m = g.shape[0], math.prod(g.shape[1:])
    block, per_split, splits, warps = _split_settings(n, m)
    dg = _dgrads_like(grads)
    gout = grad_out.reshape(1).to(torch.float32)
    with _device_guard(g):
        _grad_penalty_bwd_kernel[(n, splits)](
            g, dg, coef, gout, m, _sample_stride(g), per_split, BLOCK=block, num_warps=warps,
        )
    return dg


# -- torch.library registration -------------------------------------------------------------

@torch.library.custom_op("fastgan::grad_penalty", mutates_args=())
def _grad_penalty_op(grads: torch.Tensor, kind: str, center: float) -> tuple[torch.Tensor, torch.Tensor]:
    return grad_penalty_fwd(grads, kind, center)


@_grad_penalty_op.register_fake
def _(grads, kind, center):
    return grads.new_empty((), dtype=torch.float32), grads.new_empty((grads.shape[0],), dtype=torch.float32)


@torch.library.custom_op("fastgan::grad_penalty_bwd", mutates_args=())
def _grad_penalty_bwd_op(grads: torch.Tensor, coef: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    return grad_penalty_bwd(grads, coef, grad_out)


@_grad_penalty_bwd_op.register_fake
def _(grads, coef, grad_out):
    return _dgrads_like(grads)


def _grad_penalty_setup(ctx, inputs, output):
    grads, kind, center = inputs
    ctx.kind, ctx.center = kind, center
    ctx.save_for_backward(grads, output[1])


def _grad_penalty_backward(ctx, grad, _grad_coef):
    grads, coef = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True on the penalty: keep the VJP differentiable
        with torch.enable_grad():
            pen = _grad_penalty_ref(grads, ctx.kind, ctx.center)
            (dg,) = torch.autograd.grad(pen, grads, grad, create_graph=True)
        return dg, None, None
    return _grad_penalty_bwd_call(grads, coef, grad), None, None


_grad_penalty_op.register_autograd(_grad_penalty_backward, setup_context=_grad_penalty_setup)

# Eager calls skip torch.library's dispatch (see fastgan.ops._impl.eager_twin); traced ones use the ops.
_grad_penalty_call = eager_twin(torch.ops.fastgan.grad_penalty, grad_penalty_fwd, backward=_grad_penalty_backward,
                                setup_context=_grad_penalty_setup, name="GradPenaltyFunction")
_grad_penalty_bwd_call = eager_twin(torch.ops.fastgan.grad_penalty_bwd, grad_penalty_bwd)


def grad_penalty_triton(grads: torch.Tensor, kind: str, center: float) -> torch.Tensor:
    """The penalty through ``fastgan::grad_penalty`` (empty batches go to the reference)."""
    if grads.ndim < 2:
        raise FastganError(f"grad_penalty expects gradients of shape (N, ...); got shape {tuple(grads.shape)}")
    if grads.numel() == 0:
        return _grad_penalty_ref(grads, kind, center)
    return _grad_penalty_call(grads, kind, float(center))[0]
