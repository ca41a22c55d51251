"""Pixel norm (ProGAN, StyleGAN's mapping network) as Triton kernels.

Layout: a dense tensor is walked in memory order as ``[R, C, I]`` with ``C`` the channel
dimension (dim 1) and ``I`` its stride: NCHW is ``[N, C, H·W]``, channels_last
``[N·H·W, C, 1]``, the mapping network's ``(N, C)`` is ``[N, C, 1]``. A program owns a
``[BLOCK_R, ·, BLOCK_I]`` slab of pixels and reduces over all of ``C`` — in registers when
``BLOCK_C ≥ C`` (ONE_PASS), else in a loop over ``BLOCK_C`` channels followed by a second pass.

Forward, per pixel (r, i)::

    rstd = 1 / sqrt(Σ_c x² / C + eps),   y = x · rstd

VJP (backward saves x and recomputes rstd in the same pass)::

    dx = rstd · (dy − x · rstd² · Σ_c (dy · x) / C)

Arithmetic is fp32 (fp64 for fp64 tensors); results are cast to the output dtype on store.
"""
import triton
import triton.language as tl


@triton.jit
def _slab(R, C, I, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_I: tl.constexpr):
    """(row-and-inner offsets [BLOCK_R, 1, BLOCK_I], their mask, channel arange [1, BLOCK_C, 1])."""
    pid = tl.program_id(0)
    n_i = tl.cdiv(I, BLOCK_I)
    offs_r = (pid // n_i) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_i = (pid % n_i) * BLOCK_I + tl.arange(0, BLOCK_I)
    base = offs_r.to(tl.int64)[:, None, None] * (C * I) + offs_i[None, None, :]
    mask_ri = (offs_r < R)[:, None, None] & (offs_i < I)[None, None, :]
    return base, mask_ri, tl.arange(0, BLOCK_C)[None, :, None]


@triton.jit
def _pixel_norm_fwd_kernel(
    X,          # pointer to the input, dense, walked as [R, C, I] in memory order
    Y,          # pointer to the output, same strides as X
    R, C, I,    # sizes of the [R, C, I] view
    eps,        # added to the mean square
    ONE_PASS: tl.constexpr, ACC: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_I: tl.constexpr,
):
    """y = x / sqrt(mean_c(x²) + eps) for one slab of pixels."""
    base, mask_ri, arange_c = _slab(R, C, I, BLOCK_R, BLOCK_C, BLOCK_I)
    if ONE_PASS:
        mask = mask_ri & (arange_c < C)
        offs = base + arange_c * I
        x = tl.load(X + offs, mask=mask, other=0.0).to(ACC)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / C + eps)
        tl.store(Y + offs, (x * rstd[:, None, :]).to(Y.dtype.element_ty), mask=mask)
    else:
        ss = tl.zeros([BLOCK_R, BLOCK_I], dtype=ACC)
        for c0 in range(0, C, BLOCK_C):
            mask = mask_ri & (c0 + arange_c < C)
            x = tl.load(X + base + (c0 + arange_c) * I, mask=mask, other=0.0).to(ACC)
            ss += tl.sum(x * x, axis=1)
        rstd = (1.0 / tl.sqrt(ss / C + eps))[:, None, :]
        for c0 in range(0, C, BLOCK_C):
            mask = mask_ri & (c0 + arange_c < C)
            offs = base + (c0 + arange_c) * I
            x = tl.load(X + offs, mask=mask, other=0.0).to(ACC)
            tl.store(Y + offs, (x * rstd).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _pixel_norm_bwd_kernel(
    DY,         # pointer to the incoming gradient, same strides as X
    X,          # pointer to the saved input, dense, walked as [R, C, I]
    DX,         # pointer to the input gradient, same strides as X
    R, C, I,    # sizes of the [R, C, I] view
    eps,        # forward eps
    ONE_PASS: tl.constexpr, ACC: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_I: tl.constexpr,
):
    """dx = rstd · (dy − x · rstd² · mean_c(dy · x)) for one slab of pixels."""
    base, mask_ri, arange_c = _slab(R, C, I, BLOCK_R, BLOCK_C, BLOCK_I)
    if ONE_PASS:
        mask = mask_ri & (arange_c < C)
        offs = base + arange_c * I
        x = tl.load(X + offs, mask=mask, other=0.0).to(ACC)
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(ACC)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / C + eps)
        coef = (rstd * rstd * tl.sum(dy * x, axis=1) / C)[:, None, :]
        dx = rstd[:, None, :] * (dy - x * coef)
        tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)
    else:
        ss = tl.zeros([BLOCK_R, BLOCK_I], dtype=ACC)
        sdx = tl.zeros([BLOCK_R, BLOCK_I], dtype=ACC)
        for c0 in range(0, C, BLOCK_C):
            mask = mask_ri & (c0 + arange_c < C)
            offs = base + (c0 + arange_c) * I
            x = tl.load(X + offs, mask=mask, other=0.0).to(ACC)
            dy = tl.load(DY + offs, mask=mask, other=0.0).to(ACC)
            ss += tl.sum(x * x, axis=1)
            sdx += tl.sum(dy * x, axis=1)
        rstd = 1.0 / tl.sqrt(ss / C + eps)
        coef = (rstd * rstd * sdx / C)[:, None, :]
        rstd = rstd[:, None, :]
        for c0 in range(0, C, BLOCK_C):
            mask = mask_ri & (c0 + arange_c < C)
            offs = base + (c0 + arange_c) * I
            x = tl.load(X + offs, mask=mask, other=0.0).to(ACC)
            dy = tl.load(DY + offs, mask=mask, other=0.0).to(ACC)
            tl.store(DX + offs, (rstd * (dy - x * coef)).to(DX.dtype.element_ty), mask=mask)
