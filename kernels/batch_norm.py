"""Batch norm + affine + activation kernels (training and eval), forward and backward.

Notation: ``x`` is viewed as (N, C, S) with S the flattened spatial size (1 for (N, C) inputs),
any strides (NCHW and channels_last are both plain strided views); per channel c the reduction
runs over the n = N·S "rows" (n, s). ``w``/``b`` are the affine weight/bias (1/0 when absent).

Forward (training uses batch statistics, eval the running ones)::

    mean_c = Σ x / n            var_c = Σ (x - mean_c)² / n          rstd_c = 1 / sqrt(var_c + eps)
    x̂      = (x - mean_c) · rstd_c
    y      = act(x̂ · w_c + b_c)
    running_mean ← (1-m)·running_mean + m·mean_c,  running_var ← (1-m)·running_var + m·var_c·n/(n-1)

VJP (g = dy · act'(x̂·w + b), act' from the one activation table's ``act_grad_pre``)::

    dbias_c   = Σ g                 dweight_c = Σ g · x̂
    training: dx = rstd · w · (g - dbias/n - x̂ · dweight/n)
    eval:     dx = rstd · w · g      (statistics are constants)

Work layout. Every kernel walks the same 2-D tiles: BLOCK_C channels × BLOCK_R = BLOCK_N·BLOCK_S
rows, where a row tile is (a block of BLOCK_N batch indices) × (a block of BLOCK_S spatial
positions). Row tiles are numbered ``g = n_tile · num_s_blocks + s_block`` and each program
handles ``tiles_per_prog`` consecutive ones, so the grid is (row chunks, channel blocks) and
per-channel reductions are *split* reductions: the statistics and the backward reductions write
one partial per (row chunk, channel) and a small combine kernel sums the partials. The tile's
fastest dimension follows memory (rows along S for NCHW, channels for channels_last): Triton
specialises unit strides, so loads vectorise in either layout without a copy.

Numerics of the statistics: partial sums are *shifted* by one value per channel,
``K_c = x[0, c, 0]``, i.e. the kernels sum ``d = x - K_c`` and ``d²``. The variance is then
``Σd²/n - (Σd/n)²`` whose cancellation error is ~eps32 · (1 + (mean - K)²/var) instead of
~eps32 · mean²/var for plain E[x²] - E[x]² (mean 100, std 1: 10⁴ × better). All arithmetic is in
``ACC`` (fp32, or fp64 for fp64 inputs) and stores cast to the destination's element type.
"""
import triton
import triton.language as tl

from fastgan.kernels.activations import act_fwd, act_grad_pre


@triton.jit
def _scalar(hi, lo, ACC: tl.constexpr):
    """A host float passed as two fp32 halves (hi + lo), exact to ~2⁻⁴⁸ in an fp64 ``ACC``."""
    return tl.cast(hi, ACC) + tl.cast(lo, ACC)  # tl.cast also takes the interpreter's Python floats


@triton.jit
def _row_tile(tile, N, S, stride_n, stride_s, num_s_blocks,
              BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, INT64: tl.constexpr):
    """Row offsets (BLOCK_N·BLOCK_S,) and mask of row tile ``tile`` (out-of-range tiles are all masked)."""
    s_block = tile % num_s_blocks
    n_tile = tile // num_s_blocks
    j = tl.arange(0, BLOCK_N * BLOCK_S)
    n = n_tile * BLOCK_N + j // BLOCK_S          # batch index of each row
    s = s_block * BLOCK_S + j % BLOCK_S          # spatial index of each row
    mask = (n < N) & (s < S)
    if INT64:
        n = n.to(tl.int64)
        s = s.to(tl.int64)
    return n * stride_n + s * stride_s, mask


@triton.jit
def _channel_block(pid_c, C, stride_c, BLOCK_C: tl.constexpr, INT64: tl.constexpr):
    """Channel indices (BLOCK_C,), their mask, and their offsets ``c · stride_c``."""
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    cw = c
    if INT64:
        cw = c.to(tl.int64)
    return c, cmask, cw * stride_c


@triton.jit
def _load_affine(W, B, c, cmask, HAS_W: tl.constexpr, HAS_B: tl.constexpr, ACC: tl.constexpr,
                 BLOCK_C: tl.constexpr):
    """Per-channel weight and bias in ``ACC`` (1 and 0 when the op has no affine parameters)."""
    if HAS_W:
        w = tl.load(W + c, mask=cmask, other=1.0).to(ACC)
    else:
        w = tl.full((BLOCK_C,), 1.0, ACC)
    if HAS_B:
        b = tl.load(B + c, mask=cmask, other=0.0).to(ACC)
    else:
        b = tl.full((BLOCK_C,), 0.0, ACC)
    return w, b


@triton.jit
def _load_stats(MEAN, STAT, c, cmask, eps, STAT_IS_VAR: tl.constexpr, ACC: tl.constexpr):
    """(mean, rstd) per channel. ``STAT`` holds rstd (training: from the stats kernels) or, in
    eval, the running variance, from which rstd = 1/sqrt(var + eps) is computed here."""
    mean = tl.load(MEAN + c, mask=cmask, other=0.0).to(ACC)
    stat = tl.load(STAT + c, mask=cmask, other=1.0).to(ACC)
    if STAT_IS_VAR:
        stat = 1.0 / tl.sqrt(stat + eps)
    return mean, stat


@triton.jit
def _act_dgrad(dy, pre, alpha, ACT: tl.constexpr):
    """g = dy · act'(pre), from the recomputed pre-activation (right for every lrelu slope)."""
    if ACT == 0:
        g = dy
    else:
        g = dy * act_grad_pre(pre, alpha, ACT)
    return g


@triton.jit
def _bn_stats_kernel(
    X,                  # input, viewed (N, C, S) with strides (stride_xn, stride_xc, stride_xs)
    PSUM,               # out (P, C) ACC: per row chunk and channel, Σ (x - K_c)
    PSQ,                # out (P, C) ACC: per row chunk and channel, Σ (x - K_c)²
    N, C, S,
    stride_xn, stride_xc, stride_xs,
    num_s_blocks,       # row tiles per batch block (cdiv(S, BLOCK_S))
    tiles_per_prog,     # consecutive row tiles reduced by one program
    BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr,
    ACC: tl.constexpr, INT64: tl.constexpr,
):
    """Split reduction, stage 1: shifted partial sums of one (row chunk, channel block).

    Shift K_c = x[0, c, 0] (same for every chunk, so the partials simply add up in stage 2).
    Accumulation is per lane over the chunk's tiles, then one cross-lane sum per program.
    """
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    c, cmask, c_off = _channel_block(pid_c, C, stride_xc, BLOCK_C, INT64)
    k = tl.load(X + c_off, mask=cmask, other=0.0).to(ACC)          # shift K_c
    acc_s = tl.zeros((BLOCK_N * BLOCK_S, BLOCK_C), ACC)
    acc_q = tl.zeros((BLOCK_N * BLOCK_S, BLOCK_C), ACC)
    for t in range(0, tiles_per_prog):
        r_off, rmask = _row_tile(pid_p * tiles_per_prog + t, N, S, stride_xn, stride_xs, num_s_blocks,
                                 BLOCK_N, BLOCK_S, INT64)
        mask = rmask[:, None] & cmask[None, :]
        x = tl.load(X + r_off[:, None] + c_off[None, :], mask=mask, other=0.0).to(ACC)
        d = tl.where(mask, x - k[None, :], 0.0)
        acc_s += d
        acc_q += d * d
    tl.store(PSUM + pid_p * C + c, tl.sum(acc_s, axis=0), mask=cmask)
    tl.store(PSQ + pid_p * C + c, tl.sum(acc_q, axis=0), mask=cmask)


@triton.jit
def _bn_stats_combine_kernel(
    X,                  # input (only x[0, c, 0], the shift K_c, is read)
    PSUM, PSQ,          # in (P, C) ACC: stage-1 partials
    MEAN,               # out (C,) ACC: batch mean
    RSTD,               # out (C,) ACC: 1 / sqrt(biased var + eps)
    RMEAN, RVAR,        # in/out (C,) running buffers (any float dtype), updated in place
    P, C, n,            # number of row chunks, channels, values per channel (N·S)
    stride_xc,
    eps_hi, eps_lo, momentum_hi, momentum_lo,   # scalars as fp32 (hi, lo) pairs, see _scalar
    HAS_RMEAN: tl.constexpr, HAS_RVAR: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr,
):
    """Split reduction, stage 2: sum the partials; mean, rstd; running-stat update (unbiased var).

    mean = K + Σd/n,  var = Σd²/n - (Σd/n)²  (clamped at 0),  rstd = 1/sqrt(var + eps)
    running_mean ← (1-m)·running_mean + m·mean,  running_var ← (1-m)·running_var + m·var·n/(n-1)
    """
    pid_c = tl.program_id(0)
    eps = _scalar(eps_hi, eps_lo, ACC)
    momentum = _scalar(momentum_hi, momentum_lo, ACC)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    s1 = tl.zeros((BLOCK_P, BLOCK_C), ACC)
    s2 = tl.zeros((BLOCK_P, BLOCK_C), ACC)
    for p0 in range(0, P, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        mask = (p < P)[:, None] & cmask[None, :]
        offs = p[:, None] * C + c[None, :]
        s1 += tl.load(PSUM + offs, mask=mask, other=0.0)
        s2 += tl.load(PSQ + offs, mask=mask, other=0.0)
    k = tl.load(X + c * stride_xc, mask=cmask, other=0.0).to(ACC)
    mean_d = tl.sum(s1, axis=0) / n
    var = tl.maximum(tl.sum(s2, axis=0) / n - mean_d * mean_d, 0.0)
    mean = k + mean_d
    tl.store(MEAN + c, mean, mask=cmask)
    tl.store(RSTD + c, 1.0 / tl.sqrt(var + eps), mask=cmask)
    if HAS_RMEAN:
        rm = tl.load(RMEAN + c, mask=cmask, other=0.0).to(ACC)
        rm = (1.0 - momentum) * rm + momentum * mean
        tl.store(RMEAN + c, rm.to(RMEAN.dtype.element_ty), mask=cmask)
    if HAS_RVAR:
        rv = tl.load(RVAR + c, mask=cmask, other=0.0).to(ACC)
        rv = (1.0 - momentum) * rv + momentum * (var * n / (n - 1))
        tl.store(RVAR + c, rv.to(RVAR.dtype.element_ty), mask=cmask)


@triton.jit
def _bn_act_fwd_kernel(
    X,                  # input, viewed (N, C, S), strides (stride_xn, stride_xc, stride_xs)
    Y,                  # out, same shape, strides (stride_yn, stride_yc, stride_ys), x's dtype
    W, B,               # (C,) weight / bias (read only when HAS_W / HAS_B)
    MEAN,               # (C,) mean: batch mean (training) or running mean (eval)
    STAT,               # (C,) rstd (training) or running var (eval, STAT_IS_VAR)
    N, C, S,
    stride_xn, stride_xc, stride_xs,
    stride_yn, stride_yc, stride_ys,
    num_s_blocks, tiles_per_prog,
    eps_hi, eps_lo, alpha_hi, alpha_lo,   # scalars as fp32 (hi, lo) pairs, see _scalar
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, STAT_IS_VAR: tl.constexpr, ACT: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr,
    ACC: tl.constexpr, INT64: tl.constexpr,
):
    """y = act((x - mean)·rstd·w + b): one read of x, one write of y."""
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    eps = _scalar(eps_hi, eps_lo, ACC)
    alpha = _scalar(alpha_hi, alpha_lo, ACC)
    c, cmask, xc_off = _channel_block(pid_c, C, stride_xc, BLOCK_C, INT64)
    yc_off = c * stride_yc
    if INT64:
        yc_off = c.to(tl.int64) * stride_yc
    mean, rstd = _load_stats(MEAN, STAT, c, cmask, eps, STAT_IS_VAR, ACC)
    w, b = _load_affine(W, B, c, cmask, HAS_W, HAS_B, ACC, BLOCK_C)
    scale = rstd * w
    for t in range(0, tiles_per_prog):
        tile = pid_p * tiles_per_prog + t
        xr_off, rmask = _row_tile(tile, N, S, stride_xn, stride_xs, num_s_blocks, BLOCK_N, BLOCK_S, INT64)
        yr_off, _ = _row_tile(tile, N, S, stride_yn, stride_ys, num_s_blocks, BLOCK_N, BLOCK_S, INT64)
        mask = rmask[:, None] & cmask[None, :]
        x = tl.load(X + xr_off[:, None] + xc_off[None, :], mask=mask, other=0.0).to(ACC)
        y = act_fwd((x - mean[None, :]) * scale[None, :] + b[None, :], alpha, ACT)
        tl.store(Y + yr_off[:, None] + yc_off[None, :], y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _bn_act_bwd_reduce_kernel(
    DY,                 # upstream gradient, viewed (N, C, S), strides (stride_dyn, stride_dyc, stride_dys)
    X,                  # saved input, strides (stride_xn, stride_xc, stride_xs)
    W, B,               # (C,) weight / bias (read only when HAS_W / HAS_B)
    MEAN, STAT,         # (C,) as in the forward kernel
    PG,                 # out (P, C) ACC: per row chunk and channel, Σ g
    PGX,                # out (P, C) ACC: per row chunk and channel, Σ g·x̂
    DX,                 # out (eval only, STORE_DX): dx = rstd·w·g, strides (stride_dxn, ...)
    N, C, S,
    stride_dyn, stride_dyc, stride_dys,
    stride_xn, stride_xc, stride_xs,
    stride_dxn, stride_dxc, stride_dxs,
    num_s_blocks, tiles_per_prog,
    eps_hi, eps_lo, alpha_hi, alpha_lo,   # scalars as fp32 (hi, lo) pairs, see _scalar
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, STAT_IS_VAR: tl.constexpr, ACT: tl.constexpr,
    STORE_DX: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr,
    ACC: tl.constexpr, INT64: tl.constexpr,
):
    """Backward, stage 1: g = dy·act'(x̂·w + b) recomputed from x; partial Σg and Σg·x̂.

    In eval the statistics are constants, so dx = rstd·w·g is written in the same pass
    (STORE_DX) and the backward is one read of x and dy and one write of dx.
    """
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    eps = _scalar(eps_hi, eps_lo, ACC)
    alpha = _scalar(alpha_hi, alpha_lo, ACC)
    c, cmask, xc_off = _channel_block(pid_c, C, stride_xc, BLOCK_C, INT64)
    cl = c
    if INT64:
        cl = c.to(tl.int64)
    dyc_off = cl * stride_dyc
    mean, rstd = _load_stats(MEAN, STAT, c, cmask, eps, STAT_IS_VAR, ACC)
    w, b = _load_affine(W, B, c, cmask, HAS_W, HAS_B, ACC, BLOCK_C)
    acc_g = tl.zeros((BLOCK_N * BLOCK_S, BLOCK_C), ACC)
    acc_gx = tl.zeros((BLOCK_N * BLOCK_S, BLOCK_C), ACC)
    for t in range(0, tiles_per_prog):
        tile = pid_p * tiles_per_prog + t
        xr_off, rmask = _row_tile(tile, N, S, stride_xn, stride_xs, num_s_blocks, BLOCK_N, BLOCK_S, INT64)
        dyr_off, _ = _row_tile(tile, N, S, stride_dyn, stride_dys, num_s_blocks, BLOCK_N, BLOCK_S, INT64)
        mask = rmask[:, None] & cmask[None, :]
        x = tl.load(X + xr_off[:, None] + xc_off[None, :], mask=mask, other=0.0).to(ACC)
        dy = tl.load(DY + dyr_off[:, None] + dyc_off[None, :], mask=mask, other=0.0).to(ACC)
        xhat = (x - mean[None, :]) * rstd[None, :]
        g = _act_dgrad(dy, xhat * w[None, :] + b[None, :], alpha, ACT)
        g = tl.where(mask, g, 0.0)
        acc_g += g
        acc_gx += g * xhat
        if STORE_DX:
            dxr_off, _ = _row_tile(tile, N, S, stride_dxn, stride_dxs, num_s_blocks, BLOCK_N, BLOCK_S, INT64)
            dx = g * (rstd * w)[None, :]
            tl.store(DX + dxr_off[:, None] + (cl * stride_dxc)[None, :], dx.to(DX.dtype.element_ty), mask=mask)
    tl.store(PG + pid_p * C + c, tl.sum(acc_g, axis=0), mask=cmask)
    tl.store(PGX + pid_p * C + c, tl.sum(acc_gx, axis=0), mask=cmask)


@triton.jit
def _bn_sum_partials_kernel(
    PA, PB,             # in (P, C) ACC partials
    OUTA, OUTB,         # out (C,) ACC: Σ_p PA[p, c], Σ_p PB[p, c]
    P, C,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr,
):
    """Backward, stage 2: dbias = Σ partial Σg, dweight = Σ partial Σg·x̂ (one program per channel block)."""
    pid_c = tl.program_id(0)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    sa = tl.zeros((BLOCK_P, BLOCK_C), ACC)
    sb = tl.zeros((BLOCK_P, BLOCK_C), ACC)
    for p0 in range(0, P, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        mask = (p < P)[:, None] & cmask[None, :]
        offs = p[:, None] * C + c[None, :]
        sa += tl.load(PA + offs, mask=mask, other=0.0)
        sb += tl.load(PB + offs, mask=mask, other=0.0)
    tl.store(OUTA + c, tl.sum(sa, axis=0), mask=cmask)
    tl.store(OUTB + c, tl.sum(sb, axis=0), mask=cmask)


@triton.jit
def _bn_act_bwd_dx_kernel(
    DY, X,              # as in the reduce kernel
    W, B, MEAN, STAT,   # (C,) as in the forward kernel (training: STAT is rstd)
    SUM_G, SUM_GX,      # (C,) ACC: Σg (= dbias) and Σg·x̂ (= dweight) from stage 2
    DX,                 # out: dx, strides (stride_dxn, stride_dxc, stride_dxs), x's dtype
    N, C, S, n,         # n = N·S values per channel
    stride_dyn, stride_dyc, stride_dys,
    stride_xn, stride_xc, stride_xs,
    stride_dxn, stride_dxc, stride_dxs,
    num_s_blocks, tiles_per_prog,
    eps_hi, eps_lo, alpha_hi, alpha_lo,   # scalars as fp32 (hi, lo) pairs, see _scalar
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, STAT_IS_VAR: tl.constexpr, ACT: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr,
    ACC: tl.constexpr, INT64: tl.constexpr,
):
    """Backward, stage 3 (training): dx = rstd·w·(g - Σg/n - x̂·Σg·x̂/n), g recomputed from x, dy."""
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    eps = _scalar(eps_hi, eps_lo, ACC)
    alpha = _scalar(alpha_hi, alpha_lo, ACC)
    c, cmask, xc_off = _channel_block(pid_c, C, stride_xc, BLOCK_C, INT64)
    cl = c
    if INT64:
        cl = c.to(tl.int64)
    mean, rstd = _load_stats(MEAN, STAT, c, cmask, eps, STAT_IS_VAR, ACC)
    w, b = _load_affine(W, B, c, cmask, HAS_W, HAS_B, ACC, BLOCK_C)
    mean_g = tl.load(SUM_G + c, mask=cmask, other=0.0).to(ACC) / n
    mean_gx = tl.load(SUM_GX + c, mask=cmask, other=0.0).to(ACC) / n
    scale = rstd * w
    for t in range(0, tiles_per_prog):
        tile = pid_p * tiles_per_prog + t
        xr_off, rmask = _row_tile(tile, N, S, stride_xn, stride_xs, num_s_blocks, BLOCK_N, BLOCK_S, INT64)
        dyr_off, _ = _row_tile(tile, N, S, stride_dyn, stride_dys, num_s_blocks, BLOCK_N, BLOCK_S, INT64)
        dxr_off, _ = _row_tile(tile, N, S, stride_dxn, stride_dxs, num_s_blocks, BLOCK_N, BLOCK_S, INT64)
        mask = rmask[:, None] & cmask[None, :]
        x = tl.load(X + xr_off[:, None] + xc_off[None, :], mask=mask, other=0.0).to(ACC)
        dy = tl.load(DY + dyr_off[:, None] + (cl * stride_dyc)[None, :], mask=mask, other=0.0).to(ACC)
        xhat = (x - mean[None, :]) * rstd[None, :]
        g = _act_dgrad(dy, xhat * w[None, :] + b[None, :], alpha, ACT)
        dx = scale[None, :] * (g - mean_g[None, :] - xhat * mean_gx[None, :])
        tl.store(DX + dxr_off[:, None] + (cl * stride_dxc)[None, :], dx.to(DX.dtype.element_ty), mask=mask)
