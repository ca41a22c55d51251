"""Fused gradient penalties (``impl="triton"``) against the reference and a float64 formula.

``_grad_penalty_ref`` upcasts with ``.float()``, which *down*casts float64 input, so the tests
also compare against ``_pen64`` — the same formula evaluated entirely in float64 — and use
the float32 tolerances (the kernels accumulate in fp32 by design).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastgan import ops
from fastgan.errors import FastganError
from fastgan.ops import _penalty_triton
from fastgan.ops.penalties import _grad_penalty_ref
from _aot import run_sm90_compile
from tolerances import GRAD_TOL, TOL, assert_close_rel

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
F32_TOL, F32_GRAD_TOL = TOL[torch.float32], GRAD_TOL[torch.float32]


def _pen64(grads: torch.Tensor, kind: str, center: float = 1.0) -> torch.Tensor:
    """The reference formula in float64 throughout (the oracle)."""
    sq = grads.double().flatten(1).square().sum(dim=1)
    if kind == "r1":
        return sq.mean()
    return ((sq + 1e-12).sqrt() - center).square().mean()


def _grads(shape, dtype, device, seed: int, channels_last: bool = False, scale: float = 0.05):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    x = x.to(device=device, dtype=dtype)
    return x.to(memory_format=torch.channels_last) if channels_last else x


def _check(grads, kind, center, dtype, weight: float = 1.0):
    g = grads.detach().requires_grad_(True)  # a leaf with grads' own strides
    pen = ops.grad_penalty(g, kind, center=center, impl="triton")
    (weight * pen).backward()
    g64 = grads.detach().double().requires_grad_(True)
    ref = _pen64(g64, kind, center)
    (weight * ref).backward()
    assert pen.dtype == torch.float32 and pen.shape == ()
    assert g.grad.dtype == dtype
    if _penalty_triton.samples_are_dense(g):  # dgrads keeps NCHW / channels_last strides
        assert g.grad.stride() == g.stride()
    # (‖g‖ − c)² with ‖g‖ ≈ c amplifies the relative error of the norms: dP/P ≤ κ·ε with
    # κ = 2·mean(|‖g‖ − c|·‖g‖) / mean((‖g‖ − c)²) (κ = 2 for R1). One 64×64 sample near ‖g‖ = 1
    # in fp32 lands at ~1e-5 from a correct fp32 norm, so the tolerance scales with κ.
    n64 = g64.detach().flatten(1).norm(dim=1)
    dev = (n64 - center).abs() if kind == "wgan-gp" else n64
    kappa = float(2 * (dev * n64).mean() / dev.square().mean().clamp_min(1e-300))
    assert_close_rel(pen, ref, TOL[dtype] * max(1.0, kappa / 2), "penalty")
    assert_close_rel(g.grad, g64.grad, GRAD_TOL[dtype], "dgrads")
    # and the public reference agrees with the fast path at fp32 level
    ref32 = _grad_penalty_ref(grads.detach(), kind, center)
    assert_close_rel(pen, ref32, max(TOL[dtype], F32_TOL) * max(1.0, kappa / 2), "penalty vs _grad_penalty_ref")


# -- correctness --------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", [
    ((1, 1, 5, 7), False),     # N=1, one channel, odd H×W
    ((3, 2, 5, 7), False),
    ((2, 3, 4, 6), True),      # channels_last
    ((1, 3, 64, 64), False),   # N=1, 12288 values: 12 splits of 1024
    ((5, 17), False),          # flat features
], ids=["N1C1", "N3", "channels_last", "N1-3x64x64", "flat"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind,center", [("wgan-gp", 1.0), ("wgan-gp", 0.0), ("r1", 1.0)])
def test_penalty_matches_reference(kind, center, dtype, layout, device):
    shape, cl = layout
    # WGAN-GP around center 1 needs norms near 1; scale per-sample values accordingly.
    scale = 1.3 / (torch.tensor(shape[1:]).prod().item() ** 0.5)
    _check(_grads(shape, dtype, device, seed=1, channels_last=cl, scale=scale), kind, center, dtype, weight=2.5)


def test_many_splits_and_combine_tiles(device, monkeypatch):
    """Loop both combine-kernel dims (S > BLOCK_S, N > BLOCK_N) and the split loop (2 blocks per split)."""
    monkeypatch.setattr(_penalty_triton, "BLOCK_MAX", 16)
    monkeypatch.setattr(_penalty_triton, "TARGET_PROGRAMS", 21)   # 7 splits per sample
    monkeypatch.setattr(_penalty_triton, "COMBINE_BLOCK_S", 4)
    monkeypatch.setattr(_penalty_triton, "COMBINE_TILE", 8)       # BLOCK_N = 2
    grads = _grads((3, 2, 10, 10), torch.float32, device, seed=2, scale=0.07)
    assert _penalty_triton._split_settings(3, 200)[1:3] == (2, 7)  # 13 blocks → 7 splits of 2
    for kind in ops.PENALTIES:
        _check(grads, kind, 1.0, torch.float32)


def test_zero_gradient_sample(device):
    """A sample whose gradient is exactly 0: the 1e-12 eps keeps WGAN-GP finite, as in the reference."""
    grads = _grads((3, 2, 3, 3), torch.float32, device, seed=3, scale=0.3)
    grads[1] = 0.0
    _check(grads, "wgan-gp", 1.0, torch.float32)


def test_non_dense_grads_are_copied_deliberately(device):
    base = _grads((4, 3, 6, 10), torch.float32, device, seed=4, scale=0.1)
    assert _penalty_triton.samples_are_dense(base.to(memory_format=torch.channels_last))
    # a strided slice, and a layout whose batch dim is not outermost: copied to contiguous once
    for grads in (base[:, :, :, ::2], base.transpose(0, 1)):
        assert not _penalty_triton.samples_are_dense(grads)
        _check(grads, "r1", 1.0, torch.float32)
        _check(grads, "wgan-gp", 1.0, torch.float32)


def test_deterministic(device):
    grads = _grads((2, 3, 64, 64), torch.float32, device, seed=5, scale=0.01)
    runs = [ops.grad_penalty(grads, "wgan-gp", impl="triton") for _ in range(3)]
    assert all(torch.equal(runs[0], r) for r in runs[1:])


def test_one_dim_grads_raise_one_line(device):
    with pytest.raises(FastganError) as e:
        ops.grad_penalty(torch.ones(3, device=device), "r1", impl="triton")
    assert "\n" not in str(e.value)


# -- the real use: backprop the penalty into D's weights ----------------------------------------

class _TinyD(nn.Module):
    """conv → lrelu → linear, as a discriminator under a gradient penalty."""

    def __init__(self, h: int, w: int):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * h * w, 1)

    def forward(self, x):
        return self.fc(F.leaky_relu(self.conv(x), 0.2).flatten(1))


def _weight_grads(D, x, pen_fn):
    for p in D.parameters():
        p.grad = None
    x = x.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
    (grads,) = torch.autograd.grad(D(x).sum(), x, create_graph=True)
    pen = pen_fn(grads)
    pen.backward()
    # biases get no gradient from the penalty (lrelu' is piecewise constant): compare as zeros
    return pen.detach(), grads.detach(), [torch.zeros_like(p) if p.grad is None else p.grad.clone()
                                          for p in D.parameters()]


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("kind", ops.PENALTIES)
def test_penalty_backprops_into_discriminator(kind, n, channels_last, device):
    torch.manual_seed(0)
    D = _TinyD(5, 7).to(device=device, dtype=torch.float64)
    if channels_last:
        D = D.to(memory_format=torch.channels_last)
    x = _grads((n, 3, 5, 7), torch.float64, device, seed=6, channels_last=channels_last, scale=1.0)
    pen_t, grads, w_t = _weight_grads(D, x, lambda g: ops.grad_penalty(g, kind, impl="triton"))
    pen_r, _, w_r = _weight_grads(D, x, lambda g: ops.grad_penalty(g, kind, impl="ref"))
    pen_64, _, w_64 = _weight_grads(D, x, lambda g: _pen64(g, kind))
    if channels_last:
        assert grads.is_contiguous(memory_format=torch.channels_last)
    assert_close_rel(pen_t, pen_64, F32_TOL, "penalty")
    assert_close_rel(pen_t, pen_r, F32_TOL, "penalty vs ref")
    for (name, _), gt, gr, g64 in zip(D.named_parameters(), w_t, w_r, w_64):
        assert_close_rel(gt, g64, F32_GRAD_TOL, f"d pen / d {name}")
        assert_close_rel(gt, gr, F32_GRAD_TOL, f"d pen / d {name} vs ref")


def test_penalty_double_backward_matches_float64(device):
    """create_graph=True on the penalty itself (a third derivative of D): exact via the reference VJP."""
    grads = _grads((3, 2, 4, 5), torch.float32, device, seed=7, scale=0.3)
    w = torch.randn(grads.shape, generator=torch.Generator().manual_seed(8)).to(device)
    out = []
    for fn, dtype in ((lambda g: ops.grad_penalty(g, "wgan-gp", impl="triton"), torch.float32),
                      (lambda g: _pen64(g, "wgan-gp"), torch.float64)):
        g = grads.detach().to(dtype, copy=True).requires_grad_(True)
        (dg,) = torch.autograd.grad(fn(g), g, create_graph=True)
        (dg * w.to(dtype)).sum().backward()
        out.append(g.grad)
    assert_close_rel(out[0], out[1], F32_GRAD_TOL, "second derivative of the penalty")


def test_compile_fullgraph_matches_eager(device):
    """torch.compile (Inductor) over penalty · weight: forward and backward match eager."""
    torch._dynamo.reset()

    def weighted(grads):
        return 10.0 * ops.grad_penalty(grads, "wgan-gp", impl="triton") + ops.grad_penalty(grads, "r1", impl="triton")

    compiled = torch.compile(weighted, fullgraph=True, backend="inductor")
    grads = _grads((2, 3, 5, 7), torch.float32, device, seed=9, channels_last=True, scale=0.2)
    out = {}
    for name, fn in (("eager", weighted), ("compiled", compiled)):
        g = grads.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
        pen = fn(g)
        pen.backward()
        out[name] = (pen.detach(), g.grad)
    assert out["compiled"][1].stride() == out["eager"][1].stride()
    for got, want in zip(out["compiled"], out["eager"]):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


# -- GPU: training sizes ------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("n", [1, 256])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ops.PENALTIES)
def test_penalty_matches_reference_gpu(kind, dtype, n, channels_last):
    scale = 1.0 / (3 * 64 * 64) ** 0.5
    _check(_grads((n, 3, 64, 64), dtype, "cuda", seed=1, channels_last=channels_last, scale=scale), kind, 1.0, dtype)


@pytest.mark.gpu
def test_penalty_backprops_into_discriminator_gpu():
    torch.manual_seed(0)
    D = _TinyD(32, 32).to(device="cuda", dtype=torch.float64)
    x = _grads((64, 3, 32, 32), torch.float64, "cuda", seed=2, scale=1.0)
    _, _, w_t = _weight_grads(D, x, lambda g: ops.grad_penalty(g, "wgan-gp", impl="triton"))
    _, _, w_64 = _weight_grads(D, x, lambda g: _pen64(g, "wgan-gp"))
    for gt, g64 in zip(w_t, w_64):
        assert_close_rel(gt, g64, F32_GRAD_TOL, "weight grad")


# ---------------------------------------------------------------------------------------------
# CPU-only: compile the kernels for sm_90 with Triton's bundled ptxas (no GPU needed), so that
# code-generation errors the interpreter cannot see fail here too (see tests/_aot.py).
# ---------------------------------------------------------------------------------------------

_AOT_SCRIPT = r"""
from fastgan.kernels import grad_penalty as K

# Launch settings as in _penalty_triton: BLOCK = min(1024, max(16, next_pow2(M))), num_warps =
# min(8, max(1, BLOCK // 256)); a sample stride past 2**31 makes stride_n an i64; a split of one
# block (blocks_per_split == 1) is specialised to a constexpr by the JIT.
for dt, block, warps, unit, i64 in (("bf16", 1024, 4, ("blocks_per_split",), ()), ("fp32", 1024, 4, (), ("stride_n",)),
                                    ("fp64", 16, 1, ("blocks_per_split",), ())):
    compile_sm90(K._grad_penalty_fwd_kernel, dict(g_ptr=dt, partial_ptr="fp32"), dict(BLOCK=block), unit, warps,
                 (), i64)
    compile_sm90(K._grad_penalty_bwd_kernel, dict(g_ptr=dt, dg_ptr=dt, coef_ptr="fp32", gout_ptr="fp32"),
                 dict(BLOCK=block), unit, warps, (), i64)
for kind, bn, bs in ((0, 64, 64), (1, 2, 2)):
    compile_sm90(K._grad_penalty_combine_kernel, dict(partial_ptr="fp32", pen_ptr="fp32", coef_ptr="fp32"),
                 dict(KIND=kind, BLOCK_N=bn, BLOCK_S=bs), (), 4, ("inv_n", "center"))
print("OK")
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests compile and run the kernels for real")
def test_kernels_compile_for_sm90():
    run_sm90_compile(_AOT_SCRIPT)
