"""Bias + activation (+ gain, + clamp), StyleGAN2-ADA's ``bias_act``, as Triton kernels.

Layout. A dense tensor (any dimension order in memory: NCHW, channels_last, (N, C), ...) is
walked in *memory order* as a 3-D array ``[R, C, I]``: ``C`` is the size of the bias dimension,
``I`` its stride (the number of elements after it in memory order) and ``R`` the rest. NCHW
with the bias on dim 1 is ``[N, C, H·W]``, channels_last is ``[N·H·W, C, 1]``, a linear layer's
``(N, C)`` is ``[N, C, 1]``. Without a bias the tensor is ``[numel, 1, 1]``. Each program owns
a ``[BLOCK_C, BLOCK_I]`` slice of ``(C, I)`` and walks ``ROWS_PER_PROG`` rows of ``R`` in
``BLOCK_R`` steps, so one launch setting serves both the elementwise forward and the backward's
split reduction over ``R`` and ``I``.

Forward (``v`` is what backward gets: the output ``y`` for linear..sigmoid, the input ``x`` for
silu/gelu and for lrelu with a negative slope, per the activation table's ``saves_for``)::

    z = x + b[c]
    y = clamp(gain · act(z), −clamp, clamp)          (no clamp when HAS_CLAMP is False)

VJP::

    dx = dy · gain · act'(z) · [|y| < clamp]         act'(z) from y / gain, or from z = x + b
    db[c] = Σ_{r, i} dx[r, c, i]                     (split: one fp32 partial row per program)

At the clamp boundary StyleGAN2's rule is used: the gradient passes where ``|y| < clamp``.
Arithmetic is fp32 (fp64 for fp64 tensors, so gradcheck can run through the kernels); the
results are cast to the output's dtype on store.
"""
import triton
import triton.language as tl

from fastgan.kernels.activations import act_fwd, act_grad, act_grad_pre


@triton.jit
def _tile(pid, R, C, I, ROWS_PER_PROG, BLOCK_C: tl.constexpr, BLOCK_I: tl.constexpr):
    """Program id -> (first row, row-program index, i-block index, channel offsets, (C, I) offsets, mask)."""
    n_i = tl.cdiv(I, BLOCK_I)
    n_c = tl.cdiv(C, BLOCK_C)
    pid_i = pid % n_i
    pid_c = (pid // n_i) % n_c
    pid_r = pid // (n_i * n_c)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_i = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    off_ci = offs_c[:, None] * I + offs_i[None, :]                       # [BLOCK_C, BLOCK_I]
    mask_ci = (offs_c < C)[:, None] & (offs_i < I)[None, :]
    return pid_r * ROWS_PER_PROG, pid_r, pid_i, offs_c, off_ci, mask_ci


@triton.jit
def _bias_act_fwd_kernel(
    X,              # pointer to the input, dense, walked as [R, C, I] in memory order
    B,              # pointer to the bias [C] (not read when HAS_BIAS is False)
    Y,              # pointer to the output, same strides as X
    R, C, I,        # sizes of the [R, C, I] view
    ROWS_PER_PROG,  # rows of R per program (a multiple of BLOCK_R)
    alpha,          # leaky-relu slope
    gain,           # multiplies the activation's output
    clamp,          # |y| is clamped to this when HAS_CLAMP
    ACT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_CLAMP: tl.constexpr, ACC: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_I: tl.constexpr,
):
    """y = clamp(gain · act(x + b), −clamp, clamp) over one [rows, BLOCK_C, BLOCK_I] slab."""
    r0, _, _, offs_c, off_ci, mask_ci = _tile(tl.program_id(0), R, C, I, ROWS_PER_PROG, BLOCK_C, BLOCK_I)
    if HAS_BIAS:
        b = tl.load(B + offs_c, mask=offs_c < C, other=0.0).to(ACC)[None, :, None]
    row_len = C * I
    for r in range(r0, r0 + ROWS_PER_PROG, BLOCK_R):
        offs_r = r + tl.arange(0, BLOCK_R)
        offs = offs_r.to(tl.int64)[:, None, None] * row_len + off_ci[None, :, :]
        mask = (offs_r < R)[:, None, None] & mask_ci[None, :, :]
        z = tl.load(X + offs, mask=mask, other=0.0).to(ACC)
        if HAS_BIAS:
            z = z + b
        y = act_fwd(z, alpha, ACT) * gain
        if HAS_CLAMP:
            y = tl.minimum(tl.maximum(y, -clamp), clamp)
        tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _bias_act_bwd_kernel(
    DY,             # pointer to the incoming gradient, same strides as V
    V,              # pointer to the saved tensor: y (V_IS_X False) or x (V_IS_X True)
    B,              # pointer to the bias [C] (read only when V_IS_X and HAS_BIAS)
    DX,             # pointer to the output gradient, same strides as V
    DB_PART,        # pointer to fp32 partial bias gradients [row-programs · i-blocks, C] (NEED_DB)
    R, C, I,        # sizes of the [R, C, I] view
    ROWS_PER_PROG,  # rows of R per program (a multiple of BLOCK_R)
    alpha,          # leaky-relu slope
    gain,           # forward gain
    inv_gain,       # 1 / gain (0 when gain is 0): recovers act(z) from a saved y
    clamp,          # forward clamp (HAS_CLAMP)
    ACT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_CLAMP: tl.constexpr, V_IS_X: tl.constexpr,
    NEED_DB: tl.constexpr, ACC: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_I: tl.constexpr,
):
    """dx = dy · gain · act'(z) · [|y| < clamp]; per-program partial Σ dx per channel for db."""
    pid = tl.program_id(0)
    r0, pid_r, pid_i, offs_c, off_ci, mask_ci = _tile(pid, R, C, I, ROWS_PER_PROG, BLOCK_C, BLOCK_I)
    if V_IS_X and HAS_BIAS:
        b = tl.load(B + offs_c, mask=offs_c < C, other=0.0).to(ACC)[None, :, None]
    acc = tl.zeros([BLOCK_C], dtype=ACC)
    row_len = C * I
    for r in range(r0, r0 + ROWS_PER_PROG, BLOCK_R):
        offs_r = r + tl.arange(0, BLOCK_R)
        offs = offs_r.to(tl.int64)[:, None, None] * row_len + off_ci[None, :, :]
        mask = (offs_r < R)[:, None, None] & mask_ci[None, :, :]
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(ACC)
        v = tl.load(V + offs, mask=mask, other=0.0).to(ACC)
        if V_IS_X:
            if HAS_BIAS:
                v = v + b
            d = act_grad_pre(v, alpha, ACT)
            if HAS_CLAMP:
                y = act_fwd(v, alpha, ACT) * gain
                d = tl.where(tl.abs(y) < clamp, d, 0.0)
        else:
            d = act_grad(v * inv_gain, alpha, ACT)
            if HAS_CLAMP:
                d = tl.where(tl.abs(v) < clamp, d, 0.0)
        dx = dy * d * gain
        tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)
        if NEED_DB:
            acc += tl.sum(tl.sum(tl.where(mask, dx, 0.0), axis=2), axis=0)
    if NEED_DB:
        row = pid_r * tl.cdiv(I, BLOCK_I) + pid_i
        tl.store(DB_PART + row * C + offs_c, acc, mask=offs_c < C)
