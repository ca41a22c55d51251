"""Triton fast path of :func:`fastgan.ops.instance_norm_act`: launchers and op registration.

Custom ops:

* ``fastgan::instance_norm_act(x, weight, bias, eps, act, alpha) -> (y, mean, rstd)`` — small
  planes (the whole H×W of ``BLOCK_C`` channels fits one tile, e.g. DCGAN's 4×4..32×32) take
  one launch that reads ``x`` once; larger planes loop over the plane (still one launch) or, when
  ``N · C-blocks`` programs would not fill the device (pix2pix at batch 1 with 256×256 planes),
  split each plane over ``S`` programs: a statistics launch writes per-chunk (mean, M2) partials
  and the normalize launch combines them (Chan) before writing its chunk. Backward saves ``x``
  and the fp32 ``[N, C]`` mean / rstd (the activation input is recomputed from them, so every
  activation works, relu included, and nothing activation-sized beyond ``x`` is kept).
* ``fastgan::instance_norm_act_bwd(dy, x, weight, bias, mean, rstd, ...) -> (dx, dweight, dbias)``
  — the VJP, with the same launch layout: per-(n, c) sums ``A = Σ dz``, ``B = Σ dz·x̂`` (split
  over ``S`` programs when the forward split), then ``dx``; ``dbeta = Σ_n A`` and
  ``dgamma = Σ_n B`` are one column sum of the ``[2, N·S, C]`` fp32 partials.

Second order (WGAN-GP / R1 through an instance-norm critic): the VJP op has its own backward,
which re-runs the torch reference under autograd on the saved (graph-attached) tensors and
differentiates its VJP — torch ops, exact, and differentiable again. A Triton double backward
was not written: penalties run every few steps (R1 lazily every 16), and the second-order
terms of instance norm are three more reductions that would need the same machinery again.

Layouts: NCHW and channels_last (any tensor whose spatial dims collapse to one stride) are read
and written in place through strides; only other layouts are first made contiguous.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton

from fastgan.errors import FastganError
from fastgan.kernels.instance_norm import (
    _instance_norm_bwd_kernel,
    _instance_norm_bwd_stats_kernel,
    _instance_norm_fwd_kernel,
    _instance_norm_stats_kernel,
)
from fastgan.ops.activations import get_activation
from fastgan.ops.norm_act import _instance_norm_act_ref
from fastgan.ops._impl import cdiv, channel_vector, eager_twin, next_pow2, device_guard as _device_guard

TILE = 4096            # elements per [BLOCK_HW, BLOCK_C] tile
MAX_BLOCK_C_CL = 64    # channels per tile when channels are innermost (channels_last)
MAX_SPLIT = 256        # most chunks a plane is split into
PARTIALS_TILE = 2048   # partials (chunks × channels) the second stage combines per step
PROGRAMS_PER_SM = 4    # split a plane only while N · C-blocks programs are fewer than this × SMs
CPU_PROGRAMS = 4       # the same target under TRITON_INTERPRET=1
NUM_WARPS = 8


# -- layout and launch settings ---------------------------------------------------------------

def _plane_strides(t: torch.Tensor) -> tuple[int, int, int] | None:
    """(s_n, s_hw, s_c) when the spatial dims of ``t`` collapse to one stride, else None."""
    sp = [(t.stride(i), t.shape[i]) for i in range(2, t.ndim) if t.shape[i] != 1]
    for (s0, _), (s1, n1) in zip(sp, sp[1:]):
        if s0 != s1 * n1:
            return None
    return t.stride(0), (sp[-1][0] if sp else 1), t.stride(1)


def _plane(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when readable as [N, HW, C] through strides, else a contiguous copy."""
    return t if _plane_strides(t) is not None else t.contiguous()


@functools.lru_cache(maxsize=16)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


class _Launch(NamedTuple):
    block_hw: int
    block_c: int
    n_cblk: int     # channel blocks per sample
    splits: int     # S: chunks per plane (programs along grid axis 1)
    chunk: int      # plane rows per chunk (a multiple of block_hw)
    one_tile: bool  # the whole plane of block_c channels fits one tile
    block_s: int    # partials combined per step by the second stage



def _launch(N: int, C: int, HW: int, channels_inner: bool, device: torch.device) -> _Launch:
    """Tile shape (coalesced along HW for NCHW, along C for channels_last) and the plane split."""
    if channels_inner:
        block_c = min(next_pow2(C), MAX_BLOCK_C_CL)
        block_hw = min(next_pow2(HW), max(1, TILE // block_c))
    else:
        block_hw = min(next_pow2(HW), TILE)
        block_c = min(next_pow2(C), max(1, TILE // block_hw))
    n_cblk = cdiv(C, block_c)
    hw_tiles = cdiv(HW, block_hw)
    target = PROGRAMS_PER_SM * _sm_count(device) if device.type == "cuda" else CPU_PROGRAMS
    splits = 1
    if hw_tiles > 1 and N * n_cblk < target:
        splits = min(hw_tiles, cdiv(target, N * n_cblk), MAX_SPLIT)
    chunk = cdiv(hw_tiles, splits) * block_hw
    splits = cdiv(HW, chunk)
    block_s = min(next_pow2(splits), max(1, PARTIALS_TILE // block_c))
    return _Launch(block_hw, block_c, n_cblk, splits, chunk, hw_tiles == 1, block_s)


def _acc(t: torch.Tensor) -> tuple[torch.dtype, object]:
    """(torch, triton) accumulation dtype: fp64 for fp64 tensors, fp32 otherwise."""
    if t.dtype == torch.float64:
        return torch.float64, triton.language.float64
    return torch.float32, triton.language.float32


def _sizes(x: torch.Tensor) -> tuple[int, int, int]:
    N, C = x.shape[0], x.shape[1]
    return N, C, x.numel() // max(N * C, 1)


# -- launchers ----------------------------------------------------------------------------------

def instance_norm_fwd(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                      eps: float, act: str, alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the forward; returns ``(y, mean, rstd)`` with fp32 (fp64) ``[N, C]`` statistics."""
    x = _plane(x)
    y = torch.empty_like(x)
    N, C, HW = _sizes(x)
    acc_t, acc = _acc(x)
    mean = torch.empty((N, C), dtype=acc_t, device=x.device)
    rstd = torch.empty((N, C), dtype=acc_t, device=x.device)
    if x.numel() == 0:
        return y, mean, rstd
    sx, sy = _plane_strides(x), _plane_strides(y)
    cfg = _launch(N, C, HW, sx[2] == 1 and C > 1, x.device)
    split = cfg.splits > 1
    # Stage-1 partials (mean, M2) only when the planes are split; else mean/rstd stand in (unread).
    part = torch.empty((2, N, cfg.splits, C), dtype=acc_t, device=x.device) if split else (mean, rstd)
    grid = (N * cfg.n_cblk, cfg.splits)
    with _device_guard(x):
        if split:
            _instance_norm_stats_kernel[grid](
                x, part[0], part[1], C, HW, cfg.chunk, cfg.splits, cfg.n_cblk, *sx,
                ACC=acc, BLOCK_HW=cfg.block_hw, BLOCK_C=cfg.block_c, num_warps=NUM_WARPS,
            )
        _instance_norm_fwd_kernel[grid](
            x, y, weight if weight is not None else x, bias if bias is not None else x,
            part[0], part[1], mean, rstd, C, HW, cfg.chunk, cfg.splits, cfg.n_cblk, *sx, *sy,
            eps, alpha, ACT=get_activation(act).kernel_id, HAS_W=weight is not None, HAS_B=bias is not None,
            SPLIT=split, ONE_TILE=cfg.one_tile, ACC=acc, BLOCK_HW=cfg.block_hw, BLOCK_C=cfg.block_c,
            BLOCK_S=cfg.block_s, num_warps=NUM_WARPS,
        )
    return y, mean, rstd


def instance_norm_bwd(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                      mean: torch.Tensor, rstd: torch.Tensor, act: str, alpha: float,
                      need_w: bool, need_b: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the VJP; returns ``(dx, dweight, dbias)`` (the last two empty unless needed)."""
    x, dy = _plane(x), _plane(dy)
    dx = torch.empty_like(x)
    N, C, HW = _sizes(x)
    need_w, need_b = need_w and weight is not None, need_b and bias is not None
    dw = torch.zeros(C if need_w else 0, dtype=weight.dtype if weight is not None else x.dtype, device=x.device)
    db = torch.zeros(C if need_b else 0, dtype=bias.dtype if bias is not None else x.dtype, device=x.device)
    if x.numel() == 0:
        return dx, dw, db
    acc_t, acc = _acc(x)
    sx, sd, sg = _plane_strides(x), _plane_strides(dy), _plane_strides(dx)
    cfg = _launch(N, C, HW, sx[2] == 1 and C > 1, x.device)
    split = cfg.splits > 1
    part = torch.empty((2, N, cfg.splits, C), dtype=acc_t, device=x.device)  # [Σ dz, Σ dz·x̂]
    grid = (N * cfg.n_cblk, cfg.splits)
    common = dict(ACT=get_activation(act).kernel_id, HAS_W=weight is not None, HAS_B=bias is not None,
                  ACC=acc, BLOCK_HW=cfg.block_hw,
                  BLOCK_C=cfg.block_c, num_warps=NUM_WARPS)
    w_arg = weight if weight is not None else x
    b_arg = bias if bias is not None else x
    with _device_guard(x):
        if split:
            _instance_norm_bwd_stats_kernel[grid](
                dy, x, w_arg, b_arg, mean, rstd, part[0], part[1], C, HW, cfg.chunk, cfg.splits, cfg.n_cblk,
                *sx, *sd, alpha, **common,
            )
        _instance_norm_bwd_kernel[grid](
            dy, x, dx, w_arg, b_arg, mean, rstd, part[0], part[1], C, HW, cfg.chunk, cfg.splits, cfg.n_cblk,
            *sx, *sd, *sg, alpha, SPLIT=split, ONE_TILE=cfg.one_tile,
            BLOCK_S=cfg.block_s, **common,
        )
    if need_w or need_b:
        sums = part.sum(dim=(1, 2))  # second stage of the split reduction: [2, N, S, C] -> [2, C]
        if need_w:
            dw.copy_(sums[1])
        if need_b:
            db.copy_(sums[0])
    return dx, dw, db


# -- torch.library registration -------------------------------------------------------------

@torch.library.custom_op("fastgan::instance_norm_act", mutates_args=())
def _instance_norm_act_op(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                          eps: float, act: str, alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return instance_norm_fwd(x, weight, bias, eps, act, alpha)


@_instance_norm_act_op.register_fake
def _(x, weight, bias, eps, act, alpha):
    stats = x.new_empty(x.shape[:2], dtype=_acc(x)[0])
    return torch.empty_like(_plane(x)), stats, torch.empty_like(stats)


def _fwd_setup(ctx, inputs, output):
    x, weight, bias, eps, act, alpha = inputs
    _, mean, rstd = output
    ctx.args = (eps, act, alpha)
    ctx.save_for_backward(x, weight, bias, mean, rstd)


def _fwd_backward(ctx, dy, _d_mean, _d_rstd):
    x, weight, bias, mean, rstd = ctx.saved_tensors
    _, need_w, need_b = ctx.needs_input_grad[:3]
    dx, dw, db = _bwd_call(dy, x, weight, bias, mean, rstd, *ctx.args, need_w, need_b)
    return (dx if ctx.needs_input_grad[0] else None, dw if need_w else None, db if need_b else None,
            None, None, None)


_instance_norm_act_op.register_autograd(_fwd_backward, setup_context=_fwd_setup)


@torch.library.custom_op("fastgan::instance_norm_act_bwd", mutates_args=())
def _instance_norm_act_bwd_op(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None,
                              bias: torch.Tensor | None, mean: torch.Tensor, rstd: torch.Tensor, eps: float,
                              act: str, alpha: float, need_w: bool, need_b: bool
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return instance_norm_bwd(dy, x, weight, bias, mean, rstd, act, alpha, need_w, need_b)


@_instance_norm_act_bwd_op.register_fake
def _(dy, x, weight, bias, mean, rstd, eps, act, alpha, need_w, need_b):
    C = x.shape[1]
    dw = x.new_empty(C if (need_w and weight is not None) else 0, dtype=weight.dtype if weight is not None else x.dtype)
    db = x.new_empty(C if (need_b and bias is not None) else 0, dtype=bias.dtype if bias is not None else x.dtype)
    return torch.empty_like(_plane(x)), dw, db


def _bwd_setup(ctx, inputs, output):
    dy, x, weight, bias, mean, rstd, eps, act, alpha, need_w, need_b = inputs
    ctx.args = (eps, act, alpha)
    ctx.save_for_backward(dy, x, weight, bias)


def _second_order(ref, primals: list[torch.Tensor | None], dy: torch.Tensor,
                  grads: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
    """Backward of the VJP ``(dy, primals) -> vjp(ref)(dy)`` with torch ops.

    ``grads[i]`` is the incoming gradient of the VJP's i-th output (the gradient w.r.t.
    ``primals[i]``). Returns gradients w.r.t. ``[dy, *primals]``; tensors that do not require
    grad are constants here. Runs on the graph-attached tensors, so the result is itself
    differentiable when the caller records a graph.
    """
    create_graph = torch.is_grad_enabled()
    live = [i for i, p in enumerate(primals) if p is not None and p.requires_grad]
    if not live:
        return [None] * (1 + len(primals))
    with torch.enable_grad():
        # Partial derivatives, not total ones: in a penalty ``dy`` is itself a function of ``x``
        # (e.g. the gradient of D's output flowing back through this layer), so differentiating
        # w.r.t. the graph tensors themselves would also walk dy's history back to x: gradients
        # counted twice, and that history's buffers freed under the outer backward. Views are
        # fresh graph nodes downstream of each tensor, so a gradient taken w.r.t. them stops there,
        # while the result stays connected to the graph for higher orders.
        dy = dy.view_as(dy) if dy.requires_grad else dy
        primals = [p.view_as(p) if p is not None and p.requires_grad else p for p in primals]
        out = ref(*primals)
        first = torch.autograd.grad(out, [primals[i] for i in live], dy, create_graph=True)
        pairs = [(f, grads[i]) for f, i in zip(first, live)
                 if grads[i] is not None and grads[i].numel() == f.numel() and f.requires_grad]
        wrt = [t for t in [dy] + [primals[i] for i in live] if t.requires_grad]
        if not pairs or not wrt:
            return [None] * (1 + len(primals))
        res = torch.autograd.grad([f for f, _ in pairs], wrt, [g.reshape(f.shape) for f, g in pairs],
                                  allow_unused=True, create_graph=create_graph)
    got = dict(zip([id(t) for t in wrt], res))
    return [got.get(id(t)) if t is not None else None for t in [dy] + list(primals)]


def _bwd_backward(ctx, g_dx, g_dw, g_db):
    dy, x, weight, bias = ctx.saved_tensors
    eps, act, alpha = ctx.args
    d_dy, d_x, d_w, d_b = _second_order(
        lambda x_, w_, b_: _instance_norm_act_ref(x_, w_, b_, eps, act, alpha),
        [x, weight, bias], dy, [g_dx, g_dw, g_db],
    )
    return d_dy, d_x, d_w, d_b, None, None, None, None, None, None, None


_instance_norm_act_bwd_op.register_autograd(_bwd_backward, setup_context=_bwd_setup)


def _bwd_direct(dy, x, weight, bias, mean, rstd, eps, act, alpha, need_w, need_b):
    return instance_norm_bwd(dy, x, weight, bias, mean, rstd, act, alpha, need_w, need_b)


# Eager calls skip torch.library's dispatch (see fastgan.ops._impl.eager_twin); traced ones use the ops.
_fwd_call = eager_twin(_instance_norm_act_op, instance_norm_fwd, backward=_fwd_backward, setup_context=_fwd_setup,
                       name="InstanceNormActFunction")
_bwd_call = eager_twin(_instance_norm_act_bwd_op, _bwd_direct, backward=_bwd_backward, setup_context=_bwd_setup,
                       name="InstanceNormActBackwardFunction")


# -- entry point used by fastgan.ops.instance_norm_act -----------------------------------------

def instance_norm_act_triton(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                             eps: float, act: str, alpha: float | None) -> torch.Tensor:
    """Validate the arguments, then call the ``fastgan::instance_norm_act`` op; returns ``y``."""
    spec = get_activation(act)
    if x.ndim < 3:
        raise FastganError(f"instance_norm_act needs an (N, C, *spatial) tensor, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise FastganError(f"instance_norm_act needs a floating-point tensor, got {x.dtype}")
    N, C, HW = _sizes(x)
    if HW <= 1:
        raise FastganError(f"instance_norm_act needs more than 1 spatial element per channel, got shape {tuple(x.shape)}")
    # Kernels index the per-channel vectors as W + c: check them and make them contiguous.
    weight = channel_vector(weight, C, x, "instance_norm_act weight")
    bias = channel_vector(bias, C, x, "instance_norm_act bias")
    alpha = spec.default_alpha if alpha is None else float(alpha)
    return _fwd_call(x, weight, bias, float(eps), spec.name, alpha)[0]
