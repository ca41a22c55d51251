"""Triton fast path of :func:`fastgan.ops.bias_act`: launchers and ``torch.library`` registration.

Two custom ops, mirroring StyleGAN2-ADA's ``BiasActCuda`` / ``BiasActCudaGrad`` pair:

* ``fastgan::bias_act(x, b, dim, act, alpha, gain, clamp) -> y`` — one elementwise launch.
  Backward saves only ``y`` (linear, relu, lrelu, tanh, sigmoid) or ``x`` (silu, gelu, and lrelu
  with a negative slope, whose output does not tell the sign of its input; plus the bias), as the
  activation table's ``saves_for(alpha)`` says.
* ``fastgan::bias_act_grad(dy, v, b, ...) -> (dx, db)`` — the VJP: one launch writes
  ``dx = dy · gain · act'(·) · [|y| < clamp]`` and, while it has ``dx`` in registers, one fp32
  partial ``Σ dx`` per channel and program; ``db`` is the (small) column sum of those partials.
  Fusing the bias gradient this way saves re-reading ``dx`` (a separate ``dx.sum()`` would add a
  full read, 4 instead of 3 tensor passes per backward).

The grad op has its own backward, so gradient penalties (R1, WGAN-GP) can differentiate a
discriminator built from ``bias_act`` twice: w.r.t. ``dy`` the VJP is linear, so its backward is
the same Triton grad op applied to the incoming gradient; the remaining term is the activation's
second derivative, non-zero only for the smooth activations, written with torch ops (and thus
differentiable again): for y-saving activations it is returned as a gradient w.r.t. the saved
``y`` and flows through the forward op's backward (chain rule through ``y = f(x)``); for
x-saving activations it is the gradient w.r.t. ``x`` (and ``b``) directly.

Layouts: any dense layout (NCHW, channels_last, (N, C), permutations) is processed in place in
memory order (see :mod:`fastgan.kernels.bias_act`); only a non-dense input (a strided slice) is
first copied into a dense tensor, and an incoming gradient whose strides differ from the saved
tensor's is copied into that layout.
"""
from __future__ import annotations

import functools
import math

import torch
import triton

from fastgan.errors import FastganError
from fastgan.kernels.bias_act import _bias_act_bwd_kernel, _bias_act_fwd_kernel
from fastgan.ops.activations import get_activation
from fastgan.ops._impl import cdiv, channel_vector, eager_twin, next_pow2, device_guard as _device_guard

TILE = 4096           # elements per [BLOCK_R, BLOCK_C, BLOCK_I] tile
MAX_BLOCK_C = 256     # channels per tile (size of the per-program bias-gradient accumulator)
NUM_WARPS = 8
PROGRAMS_PER_SM = 8   # programs launched per SM; each walks ROWS_PER_PROG rows
CPU_PROGRAMS = 4      # under TRITON_INTERPRET=1 fewer, larger programs run faster


# -- layout helpers ---------------------------------------------------------------------------

def _is_dense(t: torch.Tensor) -> bool:
    """True when ``t`` covers its memory without gaps or overlaps (any dimension order)."""
    expected = 1
    for stride, size in sorted((s, n) for s, n in zip(t.stride(), t.shape) if n != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _dense(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when dense, else a dense copy in ``t``'s suggested memory format."""
    return t if _is_dense(t) else torch.empty_like(t).copy_(t)


def _same_strides(a: torch.Tensor, b: torch.Tensor) -> bool:
    return all(sa == sb for sa, sb, n in zip(a.stride(), b.stride(), a.shape) if n != 1)


def _like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``t`` laid out with ``ref``'s strides (a copy only when they differ)."""
    return t if _same_strides(t, ref) else torch.empty_like(ref, dtype=t.dtype).copy_(t)


def _view3(x: torch.Tensor, dim: int, has_bias: bool) -> tuple[int, int, int]:
    """Sizes (R, C, I) of the memory-order view of a dense ``x`` with the bias on ``dim``."""
    c = x.shape[dim]
    if not has_bias or c == 1:
        return x.numel(), 1, 1
    inner = x.stride(dim)
    return x.numel() // (c * inner), c, inner


@functools.lru_cache(maxsize=16)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _launch(R: int, C: int, I: int, device: torch.device) -> tuple[int, int, int, int, int, int]:
    """(BLOCK_R, BLOCK_C, BLOCK_I, ROWS_PER_PROG, programs, partial rows) for an [R, C, I] view."""
    block_i = min(next_pow2(I), TILE)
    block_c = min(next_pow2(C), MAX_BLOCK_C, max(1, TILE // block_i))
    block_r = min(next_pow2(R), max(1, TILE // (block_i * block_c)))
    n_ci = cdiv(C, block_c) * cdiv(I, block_i)
    target = CPU_PROGRAMS if device.type != "cuda" else PROGRAMS_PER_SM * _sm_count(device)
    row_blocks = cdiv(R, block_r)
    row_progs = max(1, min(row_blocks, cdiv(target, n_ci)))
    rows_per_prog = cdiv(row_blocks, row_progs) * block_r
    row_progs = cdiv(R, rows_per_prog)
    return block_r, block_c, block_i, rows_per_prog, row_progs * n_ci, row_progs * cdiv(I, block_i)


def _acc_dtype(t: torch.Tensor):
    return triton.language.float64 if t.dtype == torch.float64 else triton.language.float32


# -- launchers ----------------------------------------------------------------------------------

def bias_act_fwd(x: torch.Tensor, b: torch.Tensor | None, dim: int, act: str, alpha: float,
                 gain: float, clamp: float) -> torch.Tensor:
    """Launch the forward: ``y = clamp(gain · act(x + b), −clamp, clamp)``; ``clamp < 0`` = none."""
    x = _dense(x)
    y = torch.empty_like(x)
    if x.numel() == 0:
        return y
    R, C, I = _view3(x, dim, b is not None)
    block_r, block_c, block_i, rows, programs, _ = _launch(R, C, I, x.device)
    with _device_guard(x):
        _bias_act_fwd_kernel[(programs,)](
            x, b if b is not None else x, y, R, C, I, rows, alpha, gain, clamp,
            ACT=get_activation(act).kernel_id, HAS_BIAS=b is not None, HAS_CLAMP=clamp >= 0,
            ACC=_acc_dtype(x), BLOCK_R=block_r, BLOCK_C=block_c, BLOCK_I=block_i, num_warps=NUM_WARPS,
        )
    return y


def bias_act_bwd(dy: torch.Tensor, v: torch.Tensor, b: torch.Tensor | None, dim: int, act: str,
                 alpha: float, gain: float, clamp: float, need_db: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the VJP. ``v`` is the saved ``y`` or ``x`` (``saves_for(alpha)``). Returns ``(dx, db)``;
    ``db`` is empty unless ``need_db``."""
    v = _dense(v)
    dy = _like(dy, v)
    dx = torch.empty_like(v)
    need_db = need_db and b is not None
    db = torch.empty(b.shape[0] if need_db else 0, dtype=b.dtype if b is not None else v.dtype, device=v.device)
    if v.numel() == 0:
        return dx, db.zero_()
    R, C, I = _view3(v, dim, b is not None)
    block_r, block_c, block_i, rows, programs, part_rows = _launch(R, C, I, v.device)
    acc = _acc_dtype(v)
    part_dtype = torch.float64 if v.dtype == torch.float64 else torch.float32
    part = torch.empty((part_rows, C), dtype=part_dtype, device=v.device) if need_db else dx  # dx: unread
    spec = get_activation(act)
    saves_x = spec.saves_for(alpha) == "x"
    with _device_guard(v):
        _bias_act_bwd_kernel[(programs,)](
            dy, v, b if b is not None else v, dx, part, R, C, I, rows,
            alpha, gain, 1.0 / gain if gain != 0 else 0.0, clamp,
            ACT=spec.kernel_id, HAS_BIAS=b is not None, HAS_CLAMP=clamp >= 0,
            V_IS_X=saves_x, NEED_DB=need_db, ACC=acc,
            BLOCK_R=block_r, BLOCK_C=block_c, BLOCK_I=block_i, num_warps=NUM_WARPS,
        )
    if need_db:
        db.copy_(part.sum(0))  # second stage of the split reduction: [rows, C] -> [C]
    return dx, db


# -- torch.library registration -------------------------------------------------------------

@torch.library.custom_op("fastgan::bias_act", mutates_args=())
def _bias_act_op(x: torch.Tensor, b: torch.Tensor | None, dim: int, act: str, alpha: float,
                 gain: float, clamp: float) -> torch.Tensor:
    return bias_act_fwd(x, b, dim, act, alpha, gain, clamp)


@_bias_act_op.register_fake
def _(x, b, dim, act, alpha, gain, clamp):
    return torch.empty_like(_dense(x))


def _bias_act_setup(ctx, inputs, output):
    x, b, dim, act, alpha, gain, clamp = inputs
    ctx.args = (dim, act, alpha, gain, clamp)
    ctx.save_for_backward(x if get_activation(act).saves_for(alpha) == "x" else output, b)


def _bias_act_backward(ctx, dy):
    v, b = ctx.saved_tensors
    need_db = b is not None and ctx.needs_input_grad[1]
    dx, db = _bias_act_grad_call(dy, v, b, *ctx.args, need_db)
    return (dx if ctx.needs_input_grad[0] else None), (db if need_db else None), None, None, None, None, None


_bias_act_op.register_autograd(_bias_act_backward, setup_context=_bias_act_setup)


@torch.library.custom_op("fastgan::bias_act_grad", mutates_args=())
def _bias_act_grad_op(dy: torch.Tensor, v: torch.Tensor, b: torch.Tensor | None, dim: int, act: str,
                      alpha: float, gain: float, clamp: float, need_db: bool
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    return bias_act_bwd(dy, v, b, dim, act, alpha, gain, clamp, need_db)


@_bias_act_grad_op.register_fake
def _(dy, v, b, dim, act, alpha, gain, clamp, need_db):
    n = b.shape[0] if (need_db and b is not None) else 0
    return torch.empty_like(_dense(v)), v.new_empty(n, dtype=b.dtype if b is not None else v.dtype)


def _bias_act_grad_setup(ctx, inputs, output):
    dy, v, b, dim, act, alpha, gain, clamp, need_db = inputs
    ctx.args = (dim, act, alpha, gain, clamp)
    ctx.need_db = need_db
    ctx.save_for_backward(dy, v, b)


def _bcast(b: torch.Tensor, ndim: int, dim: int) -> torch.Tensor:
    shape = [1] * ndim
    shape[dim] = -1
    return b.reshape(shape)


def _second_derivative(act: str, z: torch.Tensor) -> torch.Tensor:
    """d/dv of the derivative the grad op evaluates, with torch ops (smooth activations only).

    For y-saving activations ``v`` is the activation's output u and the derivative is written
    as h(u) (tanh: 1 − u², sigmoid: u(1 − u)), so this returns h'(u); for silu/gelu it is act''(z).
    """
    if act == "tanh":
        return -2.0 * z
    if act == "sigmoid":
        return 1.0 - 2.0 * z
    if act == "silu":
        s = torch.sigmoid(z)
        return s * (1 - s) * (2 + z * (1 - 2 * s))
    if act == "gelu":
        return torch.exp(-0.5 * z * z) * (2 - z * z) / math.sqrt(2 * math.pi)
    raise FastganError(f"no second derivative for activation {act!r}")


def _bias_act_grad_backward(ctx, g_dx, g_db):
    dy, v, b = ctx.saved_tensors
    dim, act, alpha, gain, clamp = ctx.args
    # dx and db = Σ dx are both linear in dy: fold db's gradient into dx's.
    t = g_dx if g_dx is not None else torch.zeros_like(dy)
    if ctx.need_db and g_db is not None:
        t = t + _bcast(g_db, t.ndim, dim).to(t.dtype)
    d_dy = d_v = d_b = None
    if ctx.needs_input_grad[0]:
        d_dy = _bias_act_grad_call(t, v, b, dim, act, alpha, gain, clamp, False)[0]
    spec = get_activation(act)
    if spec.smooth and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
        if spec.saves_for(alpha) == "x":
            z = v if b is None else v + _bcast(b, v.ndim, dim)
            term = t * dy * gain * _second_derivative(act, z)
            if clamp >= 0:
                term = term * (spec.ref(z, alpha).mul(gain).abs() < clamp)
            d_v = term
            if b is not None and ctx.needs_input_grad[2]:
                d_b = term.sum([i for i in range(term.ndim) if i != dim])
        else:
            # v = y = gain · act(z): dx = dy · gain · h(y / gain) -> ∂dx/∂y = dy · h'(u) (gain cancels).
            u = v * (1.0 / gain if gain != 0 else 0.0)
            term = t * dy * (1.0 if gain != 0 else 0.0) * _second_derivative(act, u)
            if clamp >= 0:
                term = term * (v.abs() < clamp)
            d_v = term
    return d_dy, d_v, d_b, None, None, None, None, None, None


_bias_act_grad_op.register_autograd(_bias_act_grad_backward, setup_context=_bias_act_grad_setup)

# Eager calls skip torch.library's dispatch (see fastgan.ops._impl.eager_twin); traced ones use the ops.
_bias_act_call = eager_twin(_bias_act_op, bias_act_fwd, backward=_bias_act_backward, setup_context=_bias_act_setup,
                            name="BiasActFunction")
_bias_act_grad_call = eager_twin(_bias_act_grad_op, bias_act_bwd, backward=_bias_act_grad_backward,
                                 setup_context=_bias_act_grad_setup, name="BiasActGradFunction")


# -- entry point used by fastgan.ops.bias_act ---------------------------------------------------

def bias_act_triton(x: torch.Tensor, b: torch.Tensor | None, dim: int, act: str, alpha: float | None,
                    gain: float, clamp: float | None) -> torch.Tensor:
    """Validate and normalize the arguments, then call the ``fastgan::bias_act`` op."""
    spec = get_activation(act)
    if not x.is_floating_point():
        raise FastganError(f"bias_act needs a floating-point tensor, got {x.dtype}")
    if b is not None:
        if not -x.ndim <= dim < x.ndim:
            raise FastganError(f"bias_act dim={dim} is out of range for a {x.ndim}-d tensor")
        dim = dim % x.ndim
        b = channel_vector(b, x.shape[dim], x, f"bias_act bias (along dim {dim})")  # indexed as B + c
    else:
        dim = 0  # unused without a bias
    alpha = spec.default_alpha if alpha is None else float(alpha)
    clamp = -1.0 if clamp is None or clamp < 0 else float(clamp)
    return _bias_act_call(x, b, dim, spec.name, alpha, float(gain), clamp)
