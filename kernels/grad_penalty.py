"""Gradient penalties: per-sample gradient norms reduced to the WGAN-GP / R1 scalar.

For input gradients ``g`` of shape (N, ...) with ``M`` values per sample and ``sq_i = ‖g_i‖²``::

    WGAN-GP (KIND 0)   pen = mean_i (n_i - c)²    n_i = sqrt(sq_i + 1e-12)
    R1      (KIND 1)   pen = mean_i sq_i

VJP (what the backward kernel applies, ``coef_i`` written by the combine kernel)::

    d pen / d g_i = coef_i · g_i      coef_i = 2 (n_i - c) / (n_i N)   (WGAN-GP)
                                       coef_i = 2 / N                   (R1)

Layout: sample i is the dense memory span ``g_ptr + i·stride_n + [0, M)``. The sum of squares
and the elementwise backward do not care how the non-batch dims are ordered inside that span,
so NCHW and channels_last gradients are read in place (the host checks the span is dense).

Split reduction (one sample can be 3×64×64 = 12288 values and N can be 1): the forward grid is
(N, S); program (i, s) sums the squares of blocks ``[s·BPS, (s+1)·BPS)`` of sample i into
``partial[i, s]``. ``_grad_penalty_combine_kernel`` (one program) adds each sample's S
partials in a fixed order, forms ``coef_i`` and the penalty. No atomics: deterministic.
All arithmetic is fp32; values are cast on store.
"""
import triton
import triton.language as tl

WGAN_GP, R1 = 0, 1  # KIND ids (host: _penalty_triton.KIND_IDS)


@triton.jit
def _grad_penalty_fwd_kernel(
    g_ptr,        # *T   [N, M]  input gradients, sample i at g_ptr + i * stride_n (dense span of M)
    partial_ptr,  # *f32 [N, S]  out: partial sums of squares
    M,            # i32 values per sample
    stride_n,     # i64/i32 elements between consecutive samples
    n_splits,     # i32 S, splits per sample
    blocks_per_split,  # i32 BLOCK-sized chunks per split
    BLOCK: tl.constexpr,
):
    """partial[i, s] = Σ_{j in split s} g[i, j]²."""
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    base = g_ptr + pid_n.to(tl.int64) * stride_n
    cols = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for b in range(0, blocks_per_split):
        offs = (pid_s * blocks_per_split + b) * BLOCK + cols
        x = tl.load(base + offs, mask=offs < M, other=0.0).to(tl.float32)
        acc += x * x
    tl.store(partial_ptr + pid_n * n_splits + pid_s, tl.sum(acc, axis=0))


@triton.jit
def _grad_penalty_combine_kernel(
    partial_ptr,  # *f32 [N, S]  partial sums of squares
    pen_ptr,      # *f32 []      out: the penalty
    coef_ptr,     # *f32 [N]     out: coef_i = d pen / d g_i ÷ g_i (for the backward)
    N,            # i32 samples
    n_splits,     # i32 S
    inv_n,        # f32 1 / N
    center,       # f32 c (WGAN-GP target norm)
    KIND: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """sq_i = Σ_s partial[i, s]; pen = mean_i term(sq_i); coef_i as in the module docstring."""
    rows0 = tl.arange(0, BLOCK_N)
    cols0 = tl.arange(0, BLOCK_S)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        rows = n0 + rows0
        rmask = rows < N
        sq = tl.zeros([BLOCK_N], dtype=tl.float32)
        for s0 in range(0, n_splits, BLOCK_S):
            cols = s0 + cols0
            mask = rmask[:, None] & (cols < n_splits)[None, :]
            tile = tl.load(partial_ptr + rows[:, None] * n_splits + cols[None, :], mask=mask, other=0.0)
            sq += tl.sum(tile, axis=1)
        if KIND == 0:
            norm = tl.sqrt(sq + 1e-12)
            dev = norm - center
            term = dev * dev
            coef = 2.0 * dev / norm * inv_n
        else:
            term = sq
            coef = tl.zeros([BLOCK_N], dtype=tl.float32) + 2.0 * inv_n
        tl.store(coef_ptr + rows, coef, mask=rmask)
        acc += tl.where(rmask, term, 0.0)
    tl.store(pen_ptr, tl.sum(acc, axis=0) * inv_n)


@triton.jit
def _grad_penalty_bwd_kernel(
    g_ptr,        # *T   [N, M]  input gradients (same strides as dg)
    dg_ptr,       # *T   [N, M]  out: d pen / d g, scaled by grad_out
    coef_ptr,     # *f32 [N]     per-sample coefficients from the combine kernel
    gout_ptr,     # *f32 []      incoming gradient of the penalty (read on device: no host sync)
    M,            # i32 values per sample
    stride_n,     # elements between consecutive samples
    blocks_per_split,  # i32 BLOCK-sized chunks per program
    BLOCK: tl.constexpr,
):
    """dg[i, j] = grad_out · coef_i · g[i, j]."""
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    base = pid_n.to(tl.int64) * stride_n
    scale = tl.load(coef_ptr + pid_n) * tl.load(gout_ptr).to(tl.float32)
    cols = tl.arange(0, BLOCK)
    for b in range(0, blocks_per_split):
        offs = (pid_s * blocks_per_split + b) * BLOCK + cols
        mask = offs < M
        x = tl.load(g_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(dg_ptr + base + offs, (scale * x).to(dg_ptr.dtype.element_ty), mask=mask)
