"""Instance norm + affine + activation: forward, statistics and backward Triton kernels.

Layout. ``x`` is (N, C, *spatial) with the spatial dims collapsible to one: each sample is an
``[HW, C]`` matrix read through strides ``(s_hw, s_c)`` — NCHW has ``(1, HW)``, channels_last
``(C, 1)`` — so both layouts are read in place. A program owns one sample ``n``, ``BLOCK_C``
channels and one chunk of ``CHUNK`` rows of the plane (program grid ``(N · C-blocks, S)``);
``S > 1`` splits large planes over several programs (a split reduction: per-chunk partials,
combined by the next kernel). Tiles are ``[BLOCK_HW, BLOCK_C]``.

Forward, per (n, c) over the HW positions::

    mean = Σ x / HW,  var = Σ (x − mean)² / HW              (biased, like nn.InstanceNorm2d)
    rstd = 1 / sqrt(var + eps),  x̂ = (x − mean) · rstd
    z = x̂ · w[c] + b[c],  y = act(z)

Statistics are fp32 (fp64 for fp64 inputs) and numerically stable: they are taken of
``x − pivot`` (pivot = the plane's first value, so the values summed are centred near zero and
``x − mean`` is formed without cancellation), each tile contributes its exact two-pass
(mean, M2), and tiles and chunks are merged with Chan's parallel formula — a large mean
(e.g. 100 with std 1) costs no precision. The mean saved for backward is ``pivot + mean(x − pivot)``
rounded to fp32 (an error of half an ulp of the mean, far inside the gradient tolerances).

VJP, with dz = dy · act'(z) (act' from the pre-activation z, right for every lrelu slope; z is
recomputed from x, mean, rstd, so backward saves x and the [N, C] statistics only)::

    A = Σ_hw dz,  B = Σ_hw dz · x̂                            (per (n, c))
    dx = rstd · w · (dz − A / HW − x̂ · B / HW)
    dbeta[c] = Σ_n A,  dgamma[c] = Σ_n B                      (partials [N, S, C], summed by the host)
"""
import triton
import triton.language as tl

from fastgan.kernels.activations import act_fwd, act_grad_pre


@triton.jit
def _program(C, HW, CHUNK, n_cblk, BLOCK_C: tl.constexpr):
    """(n, chunk index, chunk start, chunk end, channel offsets, channel mask) of this program."""
    pid = tl.program_id(0)
    s = tl.program_id(1)
    n = pid // n_cblk
    offs_c = (pid % n_cblk) * BLOCK_C + tl.arange(0, BLOCK_C)
    start = s * CHUNK
    end = tl.minimum(start + CHUNK, HW)
    return n, s, start, end, offs_c, offs_c < C


@triton.jit
def _chunk_stats(X, s_hw, s_c, offs_c, mask_c, start, end, pivot,
                 ACC: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
    """(mean of x − pivot, M2) of rows [start, end) of one sample's [HW, C] plane (Chan merge)."""
    mean = tl.zeros([BLOCK_C], dtype=ACC)
    m2 = tl.zeros([BLOCK_C], dtype=ACC)
    for hw0 in range(start, end, BLOCK_HW):
        offs_hw = hw0 + tl.arange(0, BLOCK_HW)
        mask = (offs_hw < end)[:, None] & mask_c[None, :]
        x = tl.load(X + offs_hw[:, None] * s_hw + offs_c[None, :] * s_c, mask=mask, other=0.0).to(ACC)
        x = tl.where(mask, x - pivot[None, :], 0.0)
        seen = (hw0 - start) * 1.0                        # rows merged so far (exact in fp32)
        cnt = tl.minimum(end - hw0, BLOCK_HW) * 1.0       # rows in this tile
        t_mean = tl.sum(x, axis=0) / cnt
        d = tl.where(mask, x - t_mean[None, :], 0.0)
        delta = t_mean - mean
        tot = seen + cnt
        mean = mean + delta * (cnt / tot)
        m2 = m2 + tl.sum(d * d, axis=0) + delta * delta * (seen * cnt / tot)
    return mean, m2


@triton.jit
def _dz_xhat(x, dy, mean, rstd, w, b, alpha, ACT: tl.constexpr, HAS_W: tl.constexpr,
             HAS_B: tl.constexpr):
    """(dz, x̂) for a tile: recompute z = x̂·w + b and apply the activation's derivative at z."""
    xhat = (x - mean[None, :]) * rstd[None, :]
    z = xhat
    if HAS_W:
        z = z * w[None, :]
    if HAS_B:
        z = z + b[None, :]
    return dy * act_grad_pre(z, alpha, ACT), xhat


@triton.jit
def _instance_norm_stats_kernel(
    X,              # pointer to the input, sample n at X + n·s_xn, element (hw, c) at + hw·s_xhw + c·s_xc
    MEAN_P, M2_P,   # pointers to per-chunk partial mean and M2, [N, S, C] contiguous
    C, HW, CHUNK, S, n_cblk,
    s_xn, s_xhw, s_xc,
    ACC: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Stage 1 of the split statistics: (mean, M2) of one chunk of one plane."""
    n, s, start, end, offs_c, mask_c = _program(C, HW, CHUNK, n_cblk, BLOCK_C)
    xb = X + n.to(tl.int64) * s_xn
    pivot = tl.load(xb + offs_c * s_xc, mask=mask_c, other=0.0).to(ACC)
    mean, m2 = _chunk_stats(xb, s_xhw, s_xc, offs_c, mask_c, start, end, pivot, ACC, BLOCK_HW, BLOCK_C)
    row = (n * S + s) * C
    tl.store(MEAN_P + row + offs_c, mean, mask=mask_c)
    tl.store(M2_P + row + offs_c, m2, mask=mask_c)


@triton.jit
def _instance_norm_fwd_kernel(
    X,              # pointer to the input (strides s_xn, s_xhw, s_xc)
    Y,              # pointer to the output (strides s_yn, s_yhw, s_yc)
    W, B,           # pointers to the affine weight and bias [C] (read when HAS_W / HAS_B)
    MEAN_P, M2_P,   # pointers to the stage-1 partials [N, S, C] (read when SPLIT)
    MEAN, RSTD,     # pointers to the per-(n, c) statistics [N, C] saved for backward
    C, HW, CHUNK, S, n_cblk,
    s_xn, s_xhw, s_xc, s_yn, s_yhw, s_yc,
    eps, alpha,
    ACT: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
    SPLIT: tl.constexpr,     # S > 1: statistics come from the stage-1 partials
    ONE_TILE: tl.constexpr,  # the whole plane fits one tile: read x once, keep it in registers
    ACC: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """y = act((x − mean) · rstd · w + b) over one chunk; statistics combined or computed here."""
    n, s, start, end, offs_c, mask_c = _program(C, HW, CHUNK, n_cblk, BLOCK_C)
    xb = X + n.to(tl.int64) * s_xn
    yb = Y + n.to(tl.int64) * s_yn
    # Statistics of x − pivot, pivot = x at hw = 0: with values centred near zero, a large mean
    # costs no precision in the sums or in x − mean below.
    pivot = tl.load(xb + offs_c * s_xc, mask=mask_c, other=0.0).to(ACC)
    if SPLIT:
        # Stage 2: combine the S chunk partials exactly (Chan), BLOCK_S chunks at a time:
        # mean = Σ n_s mean_s / HW,  M2 = Σ M2_s + Σ n_s (mean_s − mean)².
        mean = tl.zeros([BLOCK_C], dtype=ACC)
        for s0 in range(0, S, BLOCK_S):
            offs_s = s0 + tl.arange(0, BLOCK_S)
            mask_s = offs_s < S
            p = (n * S + offs_s)[:, None] * C + offs_c[None, :]
            p_mean = tl.load(MEAN_P + p, mask=mask_s[:, None] & mask_c[None, :], other=0.0)
            cnt = tl.where(mask_s, tl.minimum(HW - offs_s * CHUNK, CHUNK), 0).to(ACC)[:, None]
            mean += tl.sum(cnt * p_mean, axis=0)
        mean = mean / HW
        m2 = tl.zeros([BLOCK_C], dtype=ACC)
        for s0 in range(0, S, BLOCK_S):
            offs_s = s0 + tl.arange(0, BLOCK_S)
            mask_s = offs_s < S
            mask_p = mask_s[:, None] & mask_c[None, :]
            p = (n * S + offs_s)[:, None] * C + offs_c[None, :]
            p_mean = tl.load(MEAN_P + p, mask=mask_p, other=0.0)
            p_m2 = tl.load(M2_P + p, mask=mask_p, other=0.0)
            cnt = tl.where(mask_s, tl.minimum(HW - offs_s * CHUNK, CHUNK), 0).to(ACC)[:, None]
            d = p_mean - mean[None, :]
            m2 += tl.sum(p_m2 + cnt * d * d, axis=0)
    elif ONE_TILE:
        offs_hw = tl.arange(0, BLOCK_HW)
        mask = (offs_hw < HW)[:, None] & mask_c[None, :]
        x = tl.load(xb + offs_hw[:, None] * s_xhw + offs_c[None, :] * s_xc, mask=mask, other=0.0).to(ACC)
        x = tl.where(mask, x - pivot[None, :], 0.0)
        mean = tl.sum(x, axis=0) / HW
        d = tl.where(mask, x - mean[None, :], 0.0)
        m2 = tl.sum(d * d, axis=0)
    else:
        mean, m2 = _chunk_stats(xb, s_xhw, s_xc, offs_c, mask_c, 0, HW, pivot, ACC, BLOCK_HW, BLOCK_C)
    rstd = 1.0 / tl.sqrt(m2 / HW + eps)
    if s == 0:
        tl.store(MEAN + n * C + offs_c, pivot + mean, mask=mask_c)
        tl.store(RSTD + n * C + offs_c, rstd, mask=mask_c)
    scale = rstd
    if HAS_W:
        scale = scale * tl.load(W + offs_c, mask=mask_c, other=0.0).to(ACC)
    if HAS_B:
        shift = tl.load(B + offs_c, mask=mask_c, other=0.0).to(ACC)
    if ONE_TILE:
        z = (x - mean[None, :]) * scale[None, :]
        if HAS_B:
            z = z + shift[None, :]
        y = act_fwd(z, alpha, ACT)
        tl.store(yb + offs_hw[:, None] * s_yhw + offs_c[None, :] * s_yc, y.to(Y.dtype.element_ty), mask=mask)
    else:
        for hw0 in range(start, end, BLOCK_HW):
            offs_hw = hw0 + tl.arange(0, BLOCK_HW)
            mask = (offs_hw < end)[:, None] & mask_c[None, :]
            x = tl.load(xb + offs_hw[:, None] * s_xhw + offs_c[None, :] * s_xc, mask=mask, other=0.0).to(ACC)
            z = ((x - pivot[None, :]) - mean[None, :]) * scale[None, :]
            if HAS_B:
                z = z + shift[None, :]
            y = act_fwd(z, alpha, ACT)
            tl.store(yb + offs_hw[:, None] * s_yhw + offs_c[None, :] * s_yc, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _instance_norm_bwd_stats_kernel(
    DY,             # pointer to the incoming gradient (strides s_dn, s_dhw, s_dc)
    X,              # pointer to the saved input (strides s_xn, s_xhw, s_xc)
    W, B,           # pointers to the affine weight and bias [C] (HAS_W / HAS_B)
    MEAN, RSTD,     # pointers to the forward statistics [N, C]
    A_P, B_P,       # pointers to partial Σ dz and Σ dz·x̂, [N, S, C] contiguous
    C, HW, CHUNK, S, n_cblk,
    s_xn, s_xhw, s_xc, s_dn, s_dhw, s_dc,
    alpha,
    ACT: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
    ACC: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Stage 1 of the backward's split reduction: partial A = Σ dz, B = Σ dz·x̂ over one chunk."""
    n, s, start, end, offs_c, mask_c = _program(C, HW, CHUNK, n_cblk, BLOCK_C)
    xb = X + n.to(tl.int64) * s_xn
    db_ = DY + n.to(tl.int64) * s_dn
    mean = tl.load(MEAN + n * C + offs_c, mask=mask_c, other=0.0)
    rstd = tl.load(RSTD + n * C + offs_c, mask=mask_c, other=0.0)
    w = mean  # placeholders when there is no affine weight / bias
    b = mean
    if HAS_W:
        w = tl.load(W + offs_c, mask=mask_c, other=0.0).to(ACC)
    if HAS_B:
        b = tl.load(B + offs_c, mask=mask_c, other=0.0).to(ACC)
    sum_a = tl.zeros([BLOCK_C], dtype=ACC)
    sum_b = tl.zeros([BLOCK_C], dtype=ACC)
    for hw0 in range(start, end, BLOCK_HW):
        offs_hw = hw0 + tl.arange(0, BLOCK_HW)
        mask = (offs_hw < end)[:, None] & mask_c[None, :]
        x = tl.load(xb + offs_hw[:, None] * s_xhw + offs_c[None, :] * s_xc, mask=mask, other=0.0).to(ACC)
        dy = tl.load(db_ + offs_hw[:, None] * s_dhw + offs_c[None, :] * s_dc, mask=mask, other=0.0).to(ACC)
        dz, xhat = _dz_xhat(x, dy, mean, rstd, w, b, alpha, ACT, HAS_W, HAS_B)
        dz = tl.where(mask, dz, 0.0)
        sum_a += tl.sum(dz, axis=0)
        sum_b += tl.sum(dz * xhat, axis=0)
    row = (n * S + s) * C
    tl.store(A_P + row + offs_c, sum_a, mask=mask_c)
    tl.store(B_P + row + offs_c, sum_b, mask=mask_c)


@triton.jit
def _instance_norm_bwd_kernel(
    DY,             # pointer to the incoming gradient (strides s_dn, s_dhw, s_dc)
    X,              # pointer to the saved input (strides s_xn, s_xhw, s_xc)
    DX,             # pointer to the input gradient (strides s_gn, s_ghw, s_gc)
    W, B,           # pointers to the affine weight and bias [C] (HAS_W / HAS_B)
    MEAN, RSTD,     # pointers to the forward statistics [N, C]
    A_P, B_P,       # partial Σ dz, Σ dz·x̂ [N, S, C]: read when SPLIT, written (S = 1) otherwise
    C, HW, CHUNK, S, n_cblk,
    s_xn, s_xhw, s_xc, s_dn, s_dhw, s_dc, s_gn, s_ghw, s_gc,
    alpha,
    ACT: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
    SPLIT: tl.constexpr, ONE_TILE: tl.constexpr,
    ACC: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """dx = rstd · w · (dz − A/HW − x̂ · B/HW) over one chunk (A, B combined or computed here)."""
    n, s, start, end, offs_c, mask_c = _program(C, HW, CHUNK, n_cblk, BLOCK_C)
    xb = X + n.to(tl.int64) * s_xn
    db_ = DY + n.to(tl.int64) * s_dn
    gb = DX + n.to(tl.int64) * s_gn
    mean = tl.load(MEAN + n * C + offs_c, mask=mask_c, other=0.0)
    rstd = tl.load(RSTD + n * C + offs_c, mask=mask_c, other=0.0)
    w = mean  # placeholders when there is no affine weight / bias
    b = mean
    if HAS_W:
        w = tl.load(W + offs_c, mask=mask_c, other=0.0).to(ACC)
    if HAS_B:
        b = tl.load(B + offs_c, mask=mask_c, other=0.0).to(ACC)
    if SPLIT:  # stage 2: sum the S chunk partials, BLOCK_S at a time
        sum_a = tl.zeros([BLOCK_C], dtype=ACC)
        sum_b = tl.zeros([BLOCK_C], dtype=ACC)
        for s0 in range(0, S, BLOCK_S):
            offs_s = s0 + tl.arange(0, BLOCK_S)
            p = (n * S + offs_s)[:, None] * C + offs_c[None, :]
            mask_p = (offs_s < S)[:, None] & mask_c[None, :]
            sum_a += tl.sum(tl.load(A_P + p, mask=mask_p, other=0.0), axis=0)
            sum_b += tl.sum(tl.load(B_P + p, mask=mask_p, other=0.0), axis=0)
    elif ONE_TILE:
        offs_hw = tl.arange(0, BLOCK_HW)
        mask = (offs_hw < HW)[:, None] & mask_c[None, :]
        x = tl.load(xb + offs_hw[:, None] * s_xhw + offs_c[None, :] * s_xc, mask=mask, other=0.0).to(ACC)
        dy = tl.load(db_ + offs_hw[:, None] * s_dhw + offs_c[None, :] * s_dc, mask=mask, other=0.0).to(ACC)
        dz, xhat = _dz_xhat(x, dy, mean, rstd, w, b, alpha, ACT, HAS_W, HAS_B)
        dz = tl.where(mask, dz, 0.0)
        sum_a = tl.sum(dz, axis=0)
        sum_b = tl.sum(dz * xhat, axis=0)
    else:
        sum_a = tl.zeros([BLOCK_C], dtype=ACC)
        sum_b = tl.zeros([BLOCK_C], dtype=ACC)
        for hw0 in range(0, HW, BLOCK_HW):
            offs_hw = hw0 + tl.arange(0, BLOCK_HW)
            mask = (offs_hw < HW)[:, None] & mask_c[None, :]
            x = tl.load(xb + offs_hw[:, None] * s_xhw + offs_c[None, :] * s_xc, mask=mask, other=0.0).to(ACC)
            dy = tl.load(db_ + offs_hw[:, None] * s_dhw + offs_c[None, :] * s_dc, mask=mask, other=0.0).to(ACC)
            dz, xhat = _dz_xhat(x, dy, mean, rstd, w, b, alpha, ACT, HAS_W, HAS_B)
            dz = tl.where(mask, dz, 0.0)
            sum_a += tl.sum(dz, axis=0)
            sum_b += tl.sum(dz * xhat, axis=0)
    if not SPLIT:  # S == 1: these are the per-(n, c) sums the host reduces into dgamma / dbeta
        tl.store(A_P + n * C + offs_c, sum_a, mask=mask_c)
        tl.store(B_P + n * C + offs_c, sum_b, mask=mask_c)
    scale = rstd
    if HAS_W:
        scale = scale * w
    mean_a = sum_a / HW
    mean_b = sum_b / HW
    if ONE_TILE:
        dx = scale[None, :] * (dz - mean_a[None, :] - xhat * mean_b[None, :])
        tl.store(gb + offs_hw[:, None] * s_ghw + offs_c[None, :] * s_gc, dx.to(DX.dtype.element_ty), mask=mask)
    else:
        for hw0 in range(start, end, BLOCK_HW):
            offs_hw = hw0 + tl.arange(0, BLOCK_HW)
            mask = (offs_hw < end)[:, None] & mask_c[None, :]
            x = tl.load(xb + offs_hw[:, None] * s_xhw + offs_c[None, :] * s_xc, mask=mask, other=0.0).to(ACC)
            dy = tl.load(db_ + offs_hw[:, None] * s_dhw + offs_c[None, :] * s_dc, mask=mask, other=0.0).to(ACC)
            dz, xhat = _dz_xhat(x, dy, mean, rstd, w, b, alpha, ACT, HAS_W, HAS_B)
            dx = scale[None, :] * (dz - mean_a[None, :] - xhat * mean_b[None, :])
            tl.store(gb + offs_hw[:, None] * s_ghw + offs_c[None, :] * s_gc, dx.to(DX.dtype.element_ty), mask=mask)
