"""Triton fast path of :func:`fastgan.ops.batch_norm_act`: launchers, torch.library ops, autograd.

Three custom ops (namespace ``fastgan``), so the op traces into ``torch.compile(fullgraph=True)``
graphs without breaks:

* ``batch_norm_act_stats(x, running_mean?, running_var?, momentum, eps) -> (mean, rstd)`` —
  training statistics (split reduction + combine) and the in-place running-stat update, declared
  with ``mutates_args``. PyTorch allows no autograd formula on a mutating op, so it is called on
  ``x.detach()``: the dependence of mean/rstd on x is part of the next op's VJP.
* ``batch_norm_act(x, weight?, bias?, mean, stat, training, eps, act, alpha) -> y`` — normalize +
  affine + activation (``stat`` = rstd in training, the running var in eval). Functional, with
  ``register_autograd``: the backward saves ``x, weight, bias, mean, stat`` — the *input*, not the
  output: relu/lrelu are not invertible, so the pre-activation cannot be recovered from y, and
  silu/gelu need it anyway. The backward kernels recompute x̂ and the pre-activation from x.
* ``batch_norm_act_bwd(dy, x, weight?, bias?, mean, stat, ...) -> (dx, dweight, dbias)``.

In eager mode the three ops are called without the dispatcher (``fastgan.ops._impl.eager_twin``:
an ``autograd.Function`` over the same launchers and the same backward), which cuts the op's Python
host cost per call ~3× (``benches/host_overhead.py``); traced calls (torch.compile, make_fx) go
through the ops.

Bytes moved per element (E = element size): forward 3E in training (stats read x, normalize reads
x and writes y), 2E in eval; backward 5E in training (the reduction reads x and dy, the dx pass
reads x and dy and writes dx), 3E in eval (one pass). Unfused eager BN + activation moves
3E + 2E forward and 5E + 3E backward, and keeps a second activation-sized tensor alive for backward.

Double backward (R1 / WGAN-GP through a discriminator): when the backward runs with grad mode on
(``create_graph=True``) it computes the gradients by differentiating the torch reference instead
of launching the kernels, so the result is itself differentiable to any order. That path costs
about as much as eager PyTorch for this layer; see ``benches/gpu_batch_norm_act.py``.
"""
from __future__ import annotations

import dataclasses
import functools
import struct
from typing import Optional

import torch
import triton.language as tl
from torch import Tensor

from fastgan.errors import FastganError
from fastgan.kernels.batch_norm import (
    _bn_act_bwd_dx_kernel,
    _bn_act_bwd_reduce_kernel,
    _bn_act_fwd_kernel,
    _bn_stats_combine_kernel,
    _bn_stats_kernel,
    _bn_sum_partials_kernel,
)
from fastgan.ops._impl import bump_version, cdiv, channel_vector, device_guard, eager_twin, next_pow2
from fastgan.ops.activations import ACTIVATIONS, get_activation
from fastgan.ops.norm_act import _batch_norm_act_ref

_BY_ID = {a.kernel_id: a for a in ACTIVATIONS.values()}


# --------------------------------------------------------------------------------------------
# Launch settings
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    """Tiling of an (N, C, S) problem shared by all kernels of one call (see kernels/batch_norm.py)."""

    BLOCK_C: int
    BLOCK_N: int
    BLOCK_S: int
    num_warps: int
    num_c_blocks: int
    num_s_blocks: int
    num_tiles: int          # row tiles: cdiv(N, BLOCK_N) · num_s_blocks
    red_tiles_per_prog: int  # reductions: row tiles per program ...
    red_progs: int          # ... and row chunks P (grid = (P, num_c_blocks))
    pw_tiles_per_prog: int  # pointwise kernels: row tiles per program ...
    pw_progs: int           # ... and programs along rows


@functools.lru_cache(maxsize=None)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _pow2_at_most(v: int, cap: int) -> int:
    return max(1, min(next_pow2(v), cap))


@functools.lru_cache(maxsize=512)
def launch_config(N: int, C: int, S: int, channels_contiguous: bool, on_gpu: bool, num_sms: int = 132) -> LaunchConfig:
    """Pick tile sizes and chunking.

    A tile holds up to ``TILE`` elements: 4096 on GPU (16 per thread at 8 warps, enough bytes in
    flight per SM), shrunk down to 512 while the problem has fewer than 2 tiles per SM, so that the
    smallest DCGAN maps (64 channels × 4×4 × batch 256 = 1 MiB in fp32) still spread over all
    SMs; 256 in the interpreter, so that small test shapes exercise several chunks. The tile's
    fastest dimension follows memory: channels for channels_last / (N, C) inputs (BLOCK_C up to
    128, i.e. 512 contiguous bytes in fp32), spatial positions for NCHW (BLOCK_S up to 1024;
    with small H·W, consecutive channels are adjacent in memory, so a BLOCK_C × BLOCK_S slab of
    one sample is one contiguous run). Reductions aim at ~2 programs per SM, splitting the rows
    into chunks of ``red_tiles_per_prog`` tiles: more would fill the GPU no better and add partials
    (P × C × 8 bytes: at 64 channels × 4×4 × batch 256 they are already 6-12 % of x's bytes).
    Pointwise kernels get one tile per program on GPU.
    """
    tiles = (4096, 2048, 1024, 512) if on_gpu else (256,)
    for tile in tiles:
        if channels_contiguous:
            bc = _pow2_at_most(C, min(128 if on_gpu else 16, tile))
            bs = _pow2_at_most(S, max(1, tile // bc))
        else:
            bs = _pow2_at_most(S, min(1024, tile))
            bc = _pow2_at_most(C, max(1, tile // bs))
        bn = _pow2_at_most(N, max(1, tile // (bc * bs)))
        num_c_blocks = cdiv(C, bc)
        num_s_blocks = cdiv(S, bs)
        num_tiles = cdiv(N, bn) * num_s_blocks
        if num_tiles * num_c_blocks >= 2 * num_sms:
            break
    target = 2 * num_sms if on_gpu else 4
    want = max(1, target // num_c_blocks)
    red_tpp = cdiv(num_tiles, min(num_tiles, want))
    # The interpreter pays per program: there, pointwise kernels also take several tiles each.
    pw_tpp = 1 if on_gpu else red_tpp
    num_warps = 8 if bc * bn * bs >= 4096 else 4
    return LaunchConfig(bc, bn, bs, num_warps, num_c_blocks, num_s_blocks, num_tiles,
                        red_tpp, cdiv(num_tiles, red_tpp), pw_tpp, cdiv(num_tiles, pw_tpp))


def _as_ncs(t: Tensor) -> Tensor:
    """View (N, C, *spatial) as (N, C, S) without copying (NCHW, channels_last, (N, C), (N, C, L)).

    Only a tensor whose spatial dims cannot be merged into one stride (e.g. a strided slice of H)
    is copied; the kernels take arbitrary (N, C, S) strides otherwise.
    """
    N, C = t.shape[0], t.shape[1]
    S = 1
    for d in t.shape[2:]:
        S *= d
    try:
        return t.view(N, C, S)
    except RuntimeError:
        return t.reshape(N, C, S)


def _acc_dtype(x: Tensor) -> tuple[torch.dtype, tl.dtype]:
    return (torch.float64, tl.float64) if x.dtype == torch.float64 else (torch.float32, tl.float32)


def _config_for(x3: Tensor) -> LaunchConfig:
    N, C, S = x3.shape
    channels_contiguous = x3.stride(1) == 1 and C > 1 and not (S > 1 and x3.stride(2) == 1)
    on_gpu = x3.is_cuda
    return launch_config(N, C, S, channels_contiguous, on_gpu, _num_sms(x3.device.index or 0) if on_gpu else 132)


def _needs_int64(*ts: Tensor) -> bool:
    return any(sum((d - 1) * abs(s) for d, s in zip(t.shape, t.stride())) >= 2**31 - 1 for t in ts)


def _split(v: float) -> tuple[float, float]:
    """``v`` as two fp32-representable floats hi + lo (Triton passes Python floats as fp32)."""
    hi = struct.unpack("f", struct.pack("f", v))[0]
    return hi, struct.unpack("f", struct.pack("f", v - hi))[0]


def _combine_blocks(C: int, P: int) -> tuple[int, int]:
    # Narrow channel blocks: several programs share the (P, C) partials even at 64 channels.
    block_c = _pow2_at_most(C, 16 if C <= 256 else 32)
    block_p = _pow2_at_most(P, max(1, 4096 // block_c))
    return block_c, block_p


# --------------------------------------------------------------------------------------------
# Host launchers: reshape, allocate, pick launch settings, launch
# --------------------------------------------------------------------------------------------

def _on_device(launcher):
    """Run ``launcher`` with its first tensor's GPU current (Triton launches on the current device)."""
    @functools.wraps(launcher)
    def run(t: Tensor, *args):
        with device_guard(t):
            return launcher(t, *args)
    return run


@_on_device
def bn_stats(x: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
             momentum: float, eps: float) -> tuple[Tensor, Tensor]:
    """Batch mean and rstd (ACC dtype, shape (C,)); updates the running buffers in place."""
    x3 = _as_ncs(x)                                            # (N, C, S)
    N, C, S = x3.shape
    acc, tl_acc = _acc_dtype(x)
    cfg = _config_for(x3)
    P = cfg.red_progs
    psum = torch.empty((P, C), device=x.device, dtype=acc)    # (P, C) shifted partial Σ
    psq = torch.empty((P, C), device=x.device, dtype=acc)     # (P, C) shifted partial Σ²
    int64 = _needs_int64(x3)
    _bn_stats_kernel[(P, cfg.num_c_blocks)](
        x3, psum, psq, N, C, S, *x3.stride(), cfg.num_s_blocks, cfg.red_tiles_per_prog,
        BLOCK_C=cfg.BLOCK_C, BLOCK_N=cfg.BLOCK_N, BLOCK_S=cfg.BLOCK_S, ACC=tl_acc, INT64=int64,
        num_warps=cfg.num_warps,
    )
    mean = torch.empty(C, device=x.device, dtype=acc)
    rstd = torch.empty(C, device=x.device, dtype=acc)
    block_c, block_p = _combine_blocks(C, P)
    _bn_stats_combine_kernel[(cdiv(C, block_c),)](
        x3, psum, psq, mean, rstd,
        running_mean if running_mean is not None else mean,
        running_var if running_var is not None else rstd,
        P, C, N * S, x3.stride(1), *_split(eps), *_split(momentum),
        HAS_RMEAN=running_mean is not None, HAS_RVAR=running_var is not None,
        BLOCK_P=block_p, BLOCK_C=block_c, ACC=tl_acc, num_warps=4,
    )
    return mean, rstd


@_on_device
def bn_act_fwd(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], mean: Tensor, stat: Tensor,
               training: bool, eps: float, act: int, alpha: float) -> Tensor:
    """y = act((x - mean)·rstd·w + b), same shape, dtype and memory format as x."""
    y = torch.empty_like(x)                                    # keeps channels_last
    x3, y3 = _as_ncs(x), _as_ncs(y)                            # (N, C, S)
    N, C, S = x3.shape
    _, tl_acc = _acc_dtype(x)
    cfg = _config_for(x3)
    _bn_act_fwd_kernel[(cfg.pw_progs, cfg.num_c_blocks)](
        x3, y3, weight if weight is not None else x3, bias if bias is not None else x3, mean, stat,
        N, C, S, *x3.stride(), *y3.stride(), cfg.num_s_blocks, cfg.pw_tiles_per_prog, *_split(eps), *_split(alpha),
        HAS_W=weight is not None, HAS_B=bias is not None, STAT_IS_VAR=not training, ACT=act,
        BLOCK_C=cfg.BLOCK_C, BLOCK_N=cfg.BLOCK_N, BLOCK_S=cfg.BLOCK_S, ACC=tl_acc,
        INT64=_needs_int64(x3, y3), num_warps=cfg.num_warps,
    )
    return y


@_on_device
def bn_act_bwd(dy: Tensor, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], mean: Tensor,
               stat: Tensor, training: bool, eps: float, act: int, alpha: float,
               need_dx: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dweight, dbias); dweight/dbias are (C,) in the ACC dtype, dx is empty when not needed."""
    x3, dy3 = _as_ncs(x), _as_ncs(dy)                          # (N, C, S)
    N, C, S = x3.shape
    acc, tl_acc = _acc_dtype(x)
    cfg = _config_for(x3)
    P = cfg.red_progs
    dx = torch.empty_like(x) if need_dx else x.new_empty(0)
    dx3 = _as_ncs(dx) if need_dx else x3
    pg = torch.empty((P, C), device=x.device, dtype=acc)      # (P, C) partial Σg
    pgx = torch.empty((P, C), device=x.device, dtype=acc)     # (P, C) partial Σg·x̂
    int64 = _needs_int64(x3, dy3, dx3)
    common = dict(HAS_W=weight is not None, HAS_B=bias is not None, STAT_IS_VAR=not training, ACT=act,
                  BLOCK_C=cfg.BLOCK_C, BLOCK_N=cfg.BLOCK_N, BLOCK_S=cfg.BLOCK_S, ACC=tl_acc, INT64=int64,
                  num_warps=cfg.num_warps)
    w_arg = weight if weight is not None else x3
    b_arg = bias if bias is not None else x3
    _bn_act_bwd_reduce_kernel[(P, cfg.num_c_blocks)](
        dy3, x3, w_arg, b_arg, mean, stat, pg, pgx, dx3,
        N, C, S, *dy3.stride(), *x3.stride(), *dx3.stride(), cfg.num_s_blocks, cfg.red_tiles_per_prog,
        *_split(eps), *_split(alpha), STORE_DX=need_dx and not training, **common,
    )
    dbias = torch.empty(C, device=x.device, dtype=acc)
    dweight = torch.empty(C, device=x.device, dtype=acc)
    block_c, block_p = _combine_blocks(C, P)
    _bn_sum_partials_kernel[(cdiv(C, block_c),)](
        pg, pgx, dbias, dweight, P, C, BLOCK_P=block_p, BLOCK_C=block_c, ACC=tl_acc, num_warps=4,
    )
    if need_dx and training:
        _bn_act_bwd_dx_kernel[(cfg.pw_progs, cfg.num_c_blocks)](
            dy3, x3, w_arg, b_arg, mean, stat, dbias, dweight, dx3,
            N, C, S, N * S, *dy3.stride(), *x3.stride(), *dx3.stride(), cfg.num_s_blocks,
            cfg.pw_tiles_per_prog, *_split(eps), *_split(alpha), **common,
        )
    return dx, dweight, dbias


# --------------------------------------------------------------------------------------------
# torch.library registration
# --------------------------------------------------------------------------------------------

@torch.library.custom_op("fastgan::batch_norm_act_stats", mutates_args=("running_mean", "running_var"))
def _stats_op(x: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
              momentum: float, eps: float) -> tuple[Tensor, Tensor]:
    return bn_stats(x, running_mean, running_var, momentum, eps)


@_stats_op.register_fake
def _(x, running_mean, running_var, momentum, eps):
    acc, _ = _acc_dtype(x)
    return x.new_empty(x.shape[1], dtype=acc), x.new_empty(x.shape[1], dtype=acc)


@torch.library.custom_op("fastgan::batch_norm_act", mutates_args=())
def _fwd_op(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], mean: Tensor, stat: Tensor,
            training: bool, eps: float, act: int, alpha: float) -> Tensor:
    return bn_act_fwd(x, weight, bias, mean, stat, training, eps, act, alpha)


@_fwd_op.register_fake
def _(x, weight, bias, mean, stat, training, eps, act, alpha):
    return torch.empty_like(x)


@torch.library.custom_op("fastgan::batch_norm_act_bwd", mutates_args=())
def _bwd_op(dy: Tensor, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], mean: Tensor,
            stat: Tensor, training: bool, eps: float, act: int, alpha: float,
            need_dx: bool) -> tuple[Tensor, Tensor, Tensor]:
    return bn_act_bwd(dy, x, weight, bias, mean, stat, training, eps, act, alpha, need_dx)


@_bwd_op.register_fake
def _(dy, x, weight, bias, mean, stat, training, eps, act, alpha, need_dx):
    acc, _ = _acc_dtype(x)
    dx = torch.empty_like(x) if need_dx else x.new_empty(0)
    return dx, x.new_empty(x.shape[1], dtype=acc), x.new_empty(x.shape[1], dtype=acc)


def _setup_context(ctx, inputs, output) -> None:
    x, weight, bias, mean, stat, training, eps, act, alpha = inputs
    ctx.save_for_backward(x, weight, bias, mean, stat)
    ctx.training, ctx.eps, ctx.act, ctx.alpha = training, eps, act, alpha


def _backward(ctx, dy: Tensor):
    x, weight, bias, mean, stat = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    if torch.is_grad_enabled():  # create_graph=True: a differentiable backward (double backward)
        dx, dw, db = _backward_differentiable(ctx, dy, x, weight, bias, mean, stat, need_x, need_w, need_b)
    else:
        dx, dw, db = _bwd_call(dy, x, weight, bias, mean, stat, ctx.training, ctx.eps, ctx.act, ctx.alpha, need_x)
        dx = dx if need_x else None
        dw = dw.to(weight.dtype) if need_w else None
        db = db.to(bias.dtype) if need_b else None
    return dx, dw, db, None, None, None, None, None, None


def _backward_differentiable(ctx, dy, x, weight, bias, mean, stat, need_x, need_w, need_b):
    """First-order gradients as torch ops on the reference forward, so autograd can differentiate them."""
    # Eval: mean/stat are the running mean/var, constants (F.batch_norm's eval mode).
    y = _batch_norm_act_ref(x, weight, bias, None if ctx.training else mean.detach(),
                            None if ctx.training else stat.detach(), ctx.training, 0.0, ctx.eps,
                            _BY_ID[ctx.act].name, ctx.alpha)
    wanted = [(t, k) for k, (t, need) in enumerate(((x, need_x), (weight, need_w), (bias, need_b))) if need]
    grads = torch.autograd.grad(y, [t for t, _ in wanted], dy, create_graph=True, allow_unused=True)
    out: list[Optional[Tensor]] = [None, None, None]
    for (t, k), g in zip(wanted, grads):
        out[k] = torch.zeros_like(t) if g is None else g
    return out[0], out[1], out[2]


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def _stats_direct(x, running_mean, running_var, momentum, eps):
    out = bn_stats(x, running_mean, running_var, momentum, eps)
    bump_version(running_mean, running_var)   # written in place by the combine kernel
    return out


# Eager calls skip torch.library's dispatch (see fastgan.ops._impl.eager_twin); traced ones use the ops.
_stats_call = eager_twin(_stats_op, _stats_direct)
_fwd_call = eager_twin(_fwd_op, bn_act_fwd, backward=_backward, setup_context=_setup_context,
                       name="BatchNormActFunction")
_bwd_call = eager_twin(_bwd_op, bn_act_bwd)


# --------------------------------------------------------------------------------------------
# Entry point used by fastgan.ops.batch_norm_act
# --------------------------------------------------------------------------------------------

def batch_norm_act_triton(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                          running_mean: Optional[Tensor], running_var: Optional[Tensor], training: bool,
                          momentum: float, eps: float, act: str, alpha: Optional[float]) -> Tensor:
    """Same contract as ``F.batch_norm(...)`` followed by the activation (see norm_act.batch_norm_act)."""
    a = get_activation(act)
    alpha = a.default_alpha if alpha is None else float(alpha)
    if x.dim() < 2:
        raise FastganError(f"batch_norm_act expects (N, C) or (N, C, *spatial) input, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise FastganError(f"batch_norm_act needs a floating-point input, got {x.dtype}")
    C = x.shape[1]
    # Kernels index the per-channel vectors as W + c: check them and make them contiguous.
    weight = channel_vector(weight, C, x, "batch_norm_act weight")
    bias = channel_vector(bias, C, x, "batch_norm_act bias")
    if training:
        size = x.shape
        values = size[0]
        for d in size[2:]:
            values *= d
        if values == 1:  # same check and message as torch.nn.functional.batch_norm
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {size}")
        # The running buffers are updated in place: a strided one is updated through a contiguous
        # copy that is written back, as F.batch_norm updates a strided buffer.
        rm = channel_vector(running_mean, C, x, "batch_norm_act running_mean")
        rv = channel_vector(running_var, C, x, "batch_norm_act running_var")
        mean, stat = _stats_call(x.detach(), rm, rv, float(momentum), float(eps))
        if rm is not running_mean:
            running_mean.copy_(rm)
        if rv is not running_var:
            running_var.copy_(rv)
    else:
        if running_mean is None or running_var is None:
            raise RuntimeError("running_mean must be defined in evaluation mode")
        mean = channel_vector(running_mean, C, x, "batch_norm_act running_mean")
        stat = channel_vector(running_var, C, x, "batch_norm_act running_var")
    return _fwd_call(x, weight, bias, mean, stat, bool(training), float(eps), a.kernel_id, alpha)
