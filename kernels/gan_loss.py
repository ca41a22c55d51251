"""Fused GAN objectives over logits: the loss *and* its gradient in one pass.

Logits are tiny (one value per sample, or per patch for PatchGAN), so the forward kernel
computes the gradient eagerly and writes it next to the loss; the backward of the op is a
scalar multiply ``grad_out * dlogits`` done by the host (no backward kernel).

Per-element terms ``l(x)`` and derivatives ``l'(x)`` (``t = 1 - smooth`` is the real target,
``sp`` = softplus, ``σ`` = sigmoid), selected by the ``KIND`` and ``ROLE`` constexprs:

    KIND           ROLE 0: D on reals               ROLE 1: D on fakes       ROLE 2: G on fakes
    0 nonsat       sp(-x) + (1-t)·x ; σ(x) - t      sp(x) ; σ(x)             sp(-x) ; -σ(-x)
    1 minimax      (same as nonsat)                 (same as nonsat)         -sp(x) ; -σ(x)
    2 hinge        relu(1-x) ; -[1-x > 0]           relu(1+x) ; [1+x > 0]    -x ; -1
    3 wasserstein  -x ; -1                          x ; 1                    -x ; -1
    4 lsgan        ½(x-t)² ; x - t                  ½x² ; x                  ½(x-1)² ; x - 1

(``t·sp(-x) + (1-t)·sp(x) = sp(-x) + (1-t)·x`` because ``sp(x) = sp(-x) + x``.)
The objective is ``mean(l_real) + mean(l_fake)`` for D and ``mean(l_fake)`` for G, so the
gradient written for element i of a tensor with n elements is ``l'(x_i) / n``.

Stability: with ``e = exp(-|x|) ∈ (0, 1]`` every transcendental is finite for any |x|
(±1e4 included): ``sp(x) = max(x, 0) + log1p(e)``, ``σ(x) = 1/(1+e)`` for x ≥ 0 and
``e/(1+e)`` otherwise. ``log1p(e)`` uses a short Taylor polynomial for small ``e``, so
``sp(-30) ≈ 9.4e-14`` keeps its digits instead of rounding to 0.

Reduction: program p handles logit blocks ``[p·BPP, (p+1)·BPP)`` of *both* tensors and writes
one fp32 partial sum (already divided by the element counts). With one program the partial
*is* the loss (one launch in all); with more, ``_loss_combine_kernel`` adds the partials in a
fixed order (a second, tiny launch). No atomics: the result is bitwise deterministic.
"""
import triton
import triton.language as tl

NONSAT, MINIMAX, HINGE, WASSERSTEIN, LSGAN = 0, 1, 2, 3, 4  # KIND ids (host: _loss_triton.KIND_IDS)


@triton.jit
def _log1p_small(e):
    """log(1 + e) for fp32 e in [0, 1], accurate to fp32 rounding even for tiny e.

    Below 0.1 a degree-7 Taylor polynomial (truncation ≤ e⁸/8, i.e. relative 1.3e-8); above,
    ``log(1 + e)`` is well conditioned. This does not rely on ``tl.log`` being exact near 1
    (GPU ``log`` may be an approximation with an absolute, not relative, error bound).
    """
    poly = e * (1.0 + e * (-0.5 + e * (1.0 / 3.0 + e * (-0.25 + e * (0.2 + e * (-1.0 / 6.0 + e * (1.0 / 7.0)))))))
    return tl.where(e < 0.1, poly, tl.log(1.0 + e))


@triton.jit
def _gan_loss_term(x, t, KIND: tl.constexpr, ROLE: tl.constexpr):
    """(l(x), l'(x)) for fp32 logits ``x`` and real target ``t`` (see the module table)."""
    if KIND <= 1:  # nonsat / minimax: softplus forms
        e = tl.exp(-tl.abs(x))
        lg = _log1p_small(e)
        inv = 1.0 / (1.0 + e)
        sig_pos = tl.where(x >= 0, inv, e * inv)  # σ(x)
        sig_neg = tl.where(x >= 0, e * inv, inv)  # σ(-x) = 1 - σ(x), without cancellation
        sp_pos = tl.maximum(x, 0.0) + lg          # sp(x)
        sp_neg = tl.maximum(-x, 0.0) + lg         # sp(-x)
        if ROLE == 0:
            loss = sp_neg + (1.0 - t) * x
            grad = (1.0 - t) - sig_neg            # = σ(x) - t
        elif ROLE == 1:
            loss = sp_pos
            grad = sig_pos
        elif KIND == 0:
            loss = sp_neg
            grad = -sig_neg
        else:
            loss = -sp_pos
            grad = -sig_pos
    elif KIND == 2:  # hinge (relu'(0) = 0, as in PyTorch)
        if ROLE == 0:
            m = 1.0 - x
            loss = tl.maximum(m, 0.0)
            grad = tl.where(m > 0, -1.0, 0.0)
        elif ROLE == 1:
            m = 1.0 + x
            loss = tl.maximum(m, 0.0)
            grad = tl.where(m > 0, 1.0, 0.0)
        else:
            loss = -x
            grad = tl.full(x.shape, -1.0, tl.float32)
    elif KIND == 3:  # wasserstein
        if ROLE == 1:
            loss = x
            grad = tl.full(x.shape, 1.0, tl.float32)
        else:
            loss = -x
            grad = tl.full(x.shape, -1.0, tl.float32)
    else:  # lsgan
        if ROLE == 0:
            grad = x - t
        elif ROLE == 1:
            grad = x
        else:
            grad = x - 1.0
        loss = 0.5 * grad * grad
    return loss, grad


@triton.jit
def _d_loss_fwd_kernel(
    real_ptr,     # *T   [n_real]  real logits, flattened
    fake_ptr,     # *T   [n_fake]  fake logits, flattened
    dreal_ptr,    # *T   [n_real]  out: d loss / d real logits
    dfake_ptr,    # *T   [n_fake]  out: d loss / d fake logits
    partial_ptr,  # *f32 [n_programs] out: this program's share of the loss (the loss if 1 program)
    n_real,       # i32 element counts
    n_fake,
    inv_real,     # f32 1 / n_real
    inv_fake,     # f32 1 / n_fake
    target,       # f32 real target t = 1 - smooth
    blocks_per_prog,  # i32 BLOCK-sized chunks of each tensor per program
    KIND: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """D objective ``mean l_real(r) + mean l_fake(f)`` and its gradient w.r.t. r and f.

    VJP: ``d loss/d r_i = l_real'(r_i) / n_real``, ``d loss/d f_i = l_fake'(f_i) / n_fake``
    (written here; the op's backward multiplies them by the incoming scalar gradient).
    """
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    acc_r = tl.zeros([BLOCK], dtype=tl.float32)
    acc_f = tl.zeros([BLOCK], dtype=tl.float32)
    for b in range(0, blocks_per_prog):
        offs = (pid * blocks_per_prog + b) * BLOCK + cols
        # reals
        mask = offs < n_real
        x = tl.load(real_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        loss, grad = _gan_loss_term(x, target, KIND, 0)  # ROLE 0: D on reals
        acc_r += tl.where(mask, loss, 0.0)
        tl.store(dreal_ptr + offs, (grad * inv_real).to(dreal_ptr.dtype.element_ty), mask=mask)
        # fakes
        mask = offs < n_fake
        x = tl.load(fake_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        loss, grad = _gan_loss_term(x, target, KIND, 1)  # ROLE 1: D on fakes
        acc_f += tl.where(mask, loss, 0.0)
        tl.store(dfake_ptr + offs, (grad * inv_fake).to(dfake_ptr.dtype.element_ty), mask=mask)
    tl.store(partial_ptr + pid, tl.sum(acc_r, axis=0) * inv_real + tl.sum(acc_f, axis=0) * inv_fake)


@triton.jit
def _g_loss_fwd_kernel(
    fake_ptr,     # *T   [n_fake]  fake logits, flattened
    dfake_ptr,    # *T   [n_fake]  out: d loss / d fake logits
    partial_ptr,  # *f32 [n_programs] out: this program's share of the loss (the loss if 1 program)
    n_fake,       # i32 element count
    inv_fake,     # f32 1 / n_fake
    blocks_per_prog,  # i32 BLOCK-sized chunks per program
    KIND: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """G objective ``mean l_G(f)`` and its gradient ``d loss/d f_i = l_G'(f_i) / n_fake``."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for b in range(0, blocks_per_prog):
        offs = (pid * blocks_per_prog + b) * BLOCK + cols
        mask = offs < n_fake
        x = tl.load(fake_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        loss, grad = _gan_loss_term(x, 1.0, KIND, 2)  # ROLE 2: G on fakes
        acc += tl.where(mask, loss, 0.0)
        tl.store(dfake_ptr + offs, (grad * inv_fake).to(dfake_ptr.dtype.element_ty), mask=mask)
    tl.store(partial_ptr + pid, tl.sum(acc, axis=0) * inv_fake)


@triton.jit
def _loss_combine_kernel(
    partial_ptr,  # *f32 [n_partials] per-program partial losses
    loss_ptr,     # *f32 []           out: their sum
    n_partials,   # i32
    BLOCK: tl.constexpr,
):
    """loss = Σ_p partial[p], summed in a fixed order by one program (deterministic)."""
    cols = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, n_partials, BLOCK):
        offs = start + cols
        acc += tl.load(partial_ptr + offs, mask=offs < n_partials, other=0.0)
    tl.store(loss_ptr, tl.sum(acc, axis=0))
