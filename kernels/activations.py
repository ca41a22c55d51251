"""Activation functions inside kernels, switched on the ``ACT`` constexpr.

The ids match ``fastgan.ops.activations.ACTIVATIONS[name].kernel_id`` (the one activation
table); the reference path and what backward saves ("y" or "x") come from the same table.

    0 linear   y = x                     dy/dx = 1
    1 relu     y = max(x, 0)             dy/dx = [y > 0]
    2 lrelu    y = x if x > 0 else a·x   dy/dx = 1 if x > 0 else a    (= [y > 0] form only for a ≥ 0)
    3 tanh     y = tanh(x)               dy/dx = 1 - y²
    4 sigmoid  y = σ(x)                  dy/dx = y (1 - y)
    5 silu     y = x σ(x)                dy/dx = σ(x) (1 + x (1 - σ(x)))        (needs x)
    6 gelu     y = x Φ(x)  (erf form)    dy/dx = Φ(x) + x φ(x)                  (needs x)

Two ways to take the derivative: ``act_grad(v)`` from what a backward saved (the output y for
ids 0-4, the input x for silu/gelu) and ``act_grad_pre(z)`` from the pre-activation z, valid for
every id and every slope. lrelu's output form reads the sign of y, which is the sign of x only
for a ≥ 0 (a < 0 makes y > 0 for x < 0), so callers that saved y must not use it for a < 0 — the
activation table makes backward save x then (``Activation.saves_for(alpha)``).

All arithmetic is fp32; ``alpha`` arrives as a scalar and is cast to fp32 by the caller.
At the kinks the derivatives follow PyTorch: relu'(0) = 0, lrelu'(0) = a.
"""
import triton
import triton.language as tl

LINEAR, RELU, LRELU, TANH, SIGMOID, SILU, GELU = 0, 1, 2, 3, 4, 5, 6
SAVES_X = (SILU, GELU)  # activations whose derivative needs the input


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def act_fwd(x, alpha, ACT: tl.constexpr):
    """y = act(x) for fp32 x."""
    if ACT == 1:
        x = tl.maximum(x, 0.0)
    elif ACT == 2:
        x = tl.where(x > 0, x, x * alpha)
    elif ACT == 3:
        x = 2.0 / (1.0 + tl.exp(-2.0 * x)) - 1.0
    elif ACT == 4:
        x = _sigmoid(x)
    elif ACT == 5:
        x = x * _sigmoid(x)
    elif ACT == 6:
        x = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
    return x


@triton.jit
def act_grad(v, alpha, ACT: tl.constexpr):
    """dy/dx evaluated from ``v``: the output y for ACT in 0..4 (lrelu: slope a ≥ 0 only), the
    input x for silu/gelu."""
    if ACT == 0:
        d = tl.full(v.shape, 1.0, tl.float32)
    elif ACT == 1:
        d = tl.where(v > 0, 1.0, 0.0)
    elif ACT == 2:
        d = tl.where(v > 0, 1.0, alpha)
    elif ACT == 3:
        d = 1.0 - v * v
    elif ACT == 4:
        d = v * (1.0 - v)
    elif ACT == 5:
        s = _sigmoid(v)
        d = s * (1.0 + v * (1.0 - s))
    else:
        cdf = 0.5 * (1.0 + tl.math.erf(v * 0.7071067811865476))
        d = cdf + v * 0.3989422804014327 * tl.exp(-0.5 * v * v)
    return d


@triton.jit
def act_grad_pre(z, alpha, ACT: tl.constexpr):
    """dy/dx evaluated from the pre-activation ``z``, for every activation and any lrelu slope
    (relu/lrelu read the sign of z directly; tanh/sigmoid go through y = act(z))."""
    if ACT == 0:
        d = tl.full(z.shape, 1.0, tl.float32)
    elif ACT == 1:
        d = tl.where(z > 0, 1.0, 0.0)
    elif ACT == 2:
        d = tl.where(z > 0, 1.0, alpha)
    elif ACT < 5:
        d = act_grad(act_fwd(z, alpha, ACT), alpha, ACT)
    else:
        d = act_grad(z, alpha, ACT)
    return d
