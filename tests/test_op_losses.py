"""Fused GAN losses (``impl="triton"``) against the reference on float64 copies.

On CPU the kernels run in the Triton interpreter (tiny shapes); ``-m gpu`` runs the same checks
at training sizes (N=256 logits, PatchGAN 256×30×30) plus a CUDA-kernel count.
"""
from __future__ import annotations

import pytest
import torch

from fastgan import ops
from fastgan.ops import _loss_triton
from fastgan.ops.losses import _d_loss_ref, _g_loss_ref
from _aot import run_sm90_compile
from tolerances import GRAD_TOL, TOL, assert_close_rel

KIND_SMOOTH = [("nonsat", 0.0), ("nonsat", 0.1), ("minimax", 0.0), ("minimax", 0.1), ("hinge", 0.0),
               ("wasserstein", 0.0), ("lsgan", 0.0), ("lsgan", 0.1)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (real shape, fake shape): N=1, (N,1), N=1000, PatchGAN-like (N, K) with different counts.
SHAPES = [((1,), (1,)), ((3, 1), (3, 1)), ((1000,), (1000,)), ((3, 7), (2, 7))]


def _logits(shape, dtype, device, seed: int, mean: float) -> torch.Tensor:
    """Random logits with exact zeros and the hinge kinks ±1 planted on purpose."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 2.0 + mean
    flat = x.view(-1)
    flat[::5] = 0.0
    flat[1::7] = 1.0
    flat[2::7] = -1.0
    return x.to(device=device, dtype=dtype)


def _d_check(real, fake, kind, smooth, dtype):
    """Loss and both logit gradients of the Triton path vs the reference on float64 copies."""
    r = real.detach().clone().requires_grad_(True)
    f = fake.detach().clone().requires_grad_(True)
    loss = ops.d_loss(r, f, kind, smooth=smooth, impl="triton")
    loss.backward()
    r64 = real.detach().double().requires_grad_(True)
    f64 = fake.detach().double().requires_grad_(True)
    ref = _d_loss_ref(r64, f64, kind, smooth)
    ref.backward()
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert r.grad.dtype == dtype and f.grad.dtype == dtype
    assert_close_rel(loss, ref, TOL[dtype], "d_loss")
    assert_close_rel(r.grad, r64.grad, GRAD_TOL[dtype], "d_loss dreal")
    assert_close_rel(f.grad, f64.grad, GRAD_TOL[dtype], "d_loss dfake")


def _g_check(fake, kind, dtype):
    f = fake.detach().clone().requires_grad_(True)
    loss = ops.g_loss(f, kind, impl="triton")
    loss.backward()
    f64 = fake.detach().double().requires_grad_(True)
    ref = _g_loss_ref(f64, kind)
    ref.backward()
    assert loss.dtype == torch.float32 and f.grad.dtype == dtype
    assert_close_rel(loss, ref, TOL[dtype], "g_loss")
    assert_close_rel(f.grad, f64.grad, GRAD_TOL[dtype], "g_loss dfake")


class _CountingKernel:
    """Stands in for a @triton.jit kernel in the launcher module and counts ``kernel[grid](...)``."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, 0

    def __getitem__(self, grid):
        self.launches += 1
        return self.kernel[grid]


def _count_launches(monkeypatch) -> dict[str, _CountingKernel]:
    names = ("_d_loss_fwd_kernel", "_g_loss_fwd_kernel", "_loss_combine_kernel")
    counters = {n: _CountingKernel(getattr(_loss_triton, n)) for n in names}
    for n, c in counters.items():
        monkeypatch.setattr(_loss_triton, n, c)
    return counters


@pytest.fixture
def tiny_blocks(monkeypatch):
    """Force the split reduction at interpreter-friendly sizes: 32-logit blocks, ≤ 8 programs."""
    monkeypatch.setattr(_loss_triton, "SINGLE_PROGRAM_MAX", 64)
    monkeypatch.setattr(_loss_triton, "MULTI_BLOCK", 32)
    monkeypatch.setattr(_loss_triton, "MAX_PROGRAMS", 8)


# -- correctness --------------------------------------------------------------------------------

@pytest.mark.parametrize("shapes", SHAPES, ids=lambda s: f"{s[0]}-{s[1]}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind,smooth", KIND_SMOOTH)
def test_losses_match_reference(kind, smooth, dtype, shapes, device):
    real = _logits(shapes[0], dtype, device, seed=1, mean=1.0)
    fake = _logits(shapes[1], dtype, device, seed=2, mean=-1.0)
    _d_check(real, fake, kind, smooth, dtype)
    if smooth == 0.0:  # the G objective has no smoothing
        _g_check(fake, kind, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind,smooth", KIND_SMOOTH)
def test_split_reduction_matches_reference(kind, smooth, dtype, device, tiny_blocks, monkeypatch):
    counters = _count_launches(monkeypatch)
    # 1000 real logits = 32 blocks over 8 programs (4 blocks each); 37×11 = 407 fake logits.
    real = _logits((1000,), dtype, device, seed=3, mean=1.0)
    fake = _logits((37, 11), dtype, device, seed=4, mean=-1.0)
    _d_check(real, fake, kind, smooth, dtype)
    assert counters["_d_loss_fwd_kernel"].launches == 1
    assert counters["_loss_combine_kernel"].launches == 1  # the tiny second pass
    if smooth == 0.0:
        _g_check(fake, kind, dtype)


def test_split_reduction_is_deterministic(device, tiny_blocks):
    real = _logits((1000,), torch.float32, device, seed=5, mean=1.0)
    fake = _logits((999,), torch.float32, device, seed=6, mean=-1.0)
    runs = [ops.d_loss(real, fake, "nonsat", smooth=0.1, impl="triton") for _ in range(3)]
    assert all(torch.equal(runs[0], r) for r in runs[1:])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ops.LOSSES)
def test_large_logits_stay_finite(kind, dtype, device):
    big = torch.tensor([1e4, -1e4, 30.0, -30.0, 0.0], dtype=dtype, device=device)
    _d_check(big, big.flip(0), kind, 0.1 if kind != "hinge" else 0.0, dtype)
    _g_check(big, kind, dtype)


def test_tiny_softplus_values_are_accurate(device):
    # Confident D: softplus(-30) ≈ 9.4e-14 per term. A naive log(1 + exp(-x)) rounds it to 0.
    real = torch.full((4,), 30.0, device=device)
    fake = torch.full((3,), -30.0, device=device)
    _d_check(real, fake, "nonsat", 0.0, torch.float32)
    _g_check(real, "nonsat", torch.float32)


# -- launches, autograd structure, compile -------------------------------------------------------

def test_d_loss_forward_and_backward_is_one_launch(device, monkeypatch):
    counters = _count_launches(monkeypatch)
    real = _logits((256,), torch.bfloat16, device, seed=7, mean=1.0).requires_grad_(True)
    fake = _logits((256,), torch.bfloat16, device, seed=8, mean=-1.0).requires_grad_(True)
    loss = ops.d_loss(real, fake, "hinge", impl="triton")
    assert type(loss.grad_fn).__name__ == "DLossFunctionBackward"  # one autograd node (eager route)
    loss.backward()
    assert counters["_d_loss_fwd_kernel"].launches == 1
    # One Triton kernel in fwd+bwd: it writes the loss and both dlogits; the backward only scales
    # them by the upstream gradient (an aten mul each in eager; fused into the next op when compiled).
    assert sum(c.launches for c in counters.values()) == 1
    assert real.grad is not None and fake.grad is not None


def test_g_loss_forward_and_backward_is_one_launch(device, monkeypatch):
    counters = _count_launches(monkeypatch)
    fake = _logits((256, 1), torch.float32, device, seed=9, mean=-1.0).requires_grad_(True)
    ops.g_loss(fake, "nonsat", impl="triton").backward()
    assert counters["_g_loss_fwd_kernel"].launches == 1
    assert sum(c.launches for c in counters.values()) == 1


def test_logits_views_and_gradient_scaling(device):
    # The D step's layout: one D call on cat([real, fake]) chunked into two views; a loss weight.
    logits = _logits((10,), torch.float32, device, seed=10, mean=0.0).requires_grad_(True)
    r, f = logits.chunk(2)
    (3.0 * ops.d_loss(r, f, "nonsat", smooth=0.1, impl="triton")).backward()
    l64 = logits.detach().double().requires_grad_(True)
    r64, f64 = l64.chunk(2)
    (3.0 * _d_loss_ref(r64, f64, "nonsat", 0.1)).backward()
    assert_close_rel(logits.grad, l64.grad, GRAD_TOL[torch.float32], "dlogits")
    # A non-contiguous (strided) view is accepted too (copied: logits are tiny).
    x = _logits((4, 6), torch.float32, device, seed=11, mean=0.0)
    _d_check(x[:, ::2], x[:, 1::2], "lsgan", 0.0, torch.float32)
    # 1-D strided columns (AC-GAN's realness logit out[:, 0] beside its class logits): reshape(-1) keeps them
    # strided, so the launcher must copy them.
    _d_check(x[:, 0], x[:, 3], "nonsat", 0.0, torch.float32)
    col = x[:, 2]
    torch.testing.assert_close(ops.g_loss(col, "nonsat", impl="triton"), ops.g_loss(col.contiguous(), "nonsat", impl="ref"))


@pytest.mark.parametrize("kind", ["nonsat", "minimax", "lsgan"])
def test_double_backward_matches_reference(kind, device):
    """Not a fast path, but exact: under create_graph the VJP is the reference's, differentiated."""
    real = _logits((5,), torch.float32, device, seed=12, mean=1.0)
    fake = _logits((4,), torch.float32, device, seed=13, mean=-1.0)
    w_r = torch.linspace(-1, 1, 5, device=device)
    w_f = torch.linspace(1, 2, 4, device=device)

    def second_order(fn, dtype):
        r = real.detach().to(dtype, copy=True).requires_grad_(True)
        f = fake.detach().to(dtype, copy=True).requires_grad_(True)
        dr, df = torch.autograd.grad(fn(r, f), (r, f), create_graph=True)
        ((dr * w_r.to(dtype)).sum() + (df * w_f.to(dtype)).sum()).backward()
        return r.grad, f.grad

    fast = second_order(lambda r, f: ops.d_loss(r, f, kind, smooth=0.1, impl="triton")
                        + ops.g_loss(f, kind, impl="triton"), torch.float32)
    ref = second_order(lambda r, f: _d_loss_ref(r, f, kind, 0.1) + _g_loss_ref(f, kind), torch.float64)
    for got, want in zip(fast, ref):
        assert_close_rel(got, want, GRAD_TOL[torch.float32], "second derivative")


def test_compile_fullgraph_matches_eager(device):
    """torch.compile (Inductor) of a D+G loss function: forward and backward match eager."""
    torch._dynamo.reset()

    def losses(real, fake):
        return ops.d_loss(real, fake, "nonsat", smooth=0.1, impl="triton") + ops.g_loss(fake, "lsgan", impl="triton")

    compiled = torch.compile(losses, fullgraph=True, backend="inductor")
    real = _logits((6,), torch.float32, device, seed=14, mean=1.0)
    fake = _logits((6, 3), torch.float32, device, seed=15, mean=-1.0)
    out = {}
    for name, fn in (("eager", losses), ("compiled", compiled)):
        r, f = real.clone().requires_grad_(True), fake.clone().requires_grad_(True)
        loss = fn(r, f)
        loss.backward()
        out[name] = (loss.detach(), r.grad, f.grad)
    for got, want in zip(out["compiled"], out["eager"]):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


# -- GPU: training sizes ------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("shapes", [((256,), (256,)), ((256, 1, 30, 30), (256, 1, 30, 30))], ids=["N256", "patch"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind,smooth", KIND_SMOOTH)
def test_losses_match_reference_gpu(kind, smooth, dtype, shapes):
    real = _logits(shapes[0], dtype, "cuda", seed=1, mean=1.0)
    fake = _logits(shapes[1], dtype, "cuda", seed=2, mean=-1.0)
    _d_check(real, fake, kind, smooth, dtype)
    if smooth == 0.0:
        _g_check(fake, kind, dtype)


@pytest.mark.gpu
def test_d_loss_forward_is_one_cuda_kernel():
    real = _logits((256,), torch.bfloat16, "cuda", seed=1, mean=1.0).requires_grad_(True)
    fake = _logits((256,), torch.bfloat16, "cuda", seed=2, mean=-1.0).requires_grad_(True)
    ops.d_loss(real, fake, "nonsat", impl="triton")  # compile outside the profiled region
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        ops.d_loss(real, fake, "nonsat", impl="triton")
        torch.cuda.synchronize()
    kernels = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert len(kernels) == 1 and "_d_loss_fwd_kernel" in kernels[0], kernels


# ---------------------------------------------------------------------------------------------
# CPU-only: compile the kernels for sm_90 with Triton's bundled ptxas (no GPU needed), so that
# code-generation errors the interpreter cannot see fail here too (see tests/_aot.py).
# ---------------------------------------------------------------------------------------------

_AOT_SCRIPT = r"""
from fastgan.kernels import gan_loss as K

# Launch settings as in _loss_triton: one program (blocks_per_prog == 1, so the JIT makes it a
# constexpr; num_warps = min(16, max(1, BLOCK // 256))) or BLOCK = 1024 split over programs.
# Every KIND 0..4 (all ROLEs) with bf16, fp32 and fp64 logits.
fl = ("inv_real", "inv_fake", "target")
dts = ("bf16", "fp32", "fp64")
for kind in range(5):
    dt = dts[kind % 3]
    one = kind % 2 == 0
    block, warps, unit = (64, 1, ("blocks_per_prog",)) if one else (1024, 4, ())
    compile_sm90(K._d_loss_fwd_kernel, dict(real_ptr=dt, fake_ptr=dt, dreal_ptr=dt, dfake_ptr=dt, partial_ptr="fp32"),
                 dict(KIND=kind, BLOCK=block), unit, warps, fl)
    dt = dts[(kind + 1) % 3]
    block, warps, unit = (4096, 16, ("blocks_per_prog",)) if one else (1024, 4, ())
    compile_sm90(K._g_loss_fwd_kernel, dict(fake_ptr=dt, dfake_ptr=dt, partial_ptr="fp32"),
                 dict(KIND=kind, BLOCK=block), unit, warps, ("inv_fake",))
compile_sm90(K._loss_combine_kernel, dict(partial_ptr="fp32", loss_ptr="fp32"), dict(BLOCK=1024), (), 4)
compile_sm90(K._loss_combine_kernel, dict(partial_ptr="fp32", loss_ptr="fp32"), dict(BLOCK=16), (), 4)
print("OK")
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests compile and run the kernels for real")
def test_kernels_compile_for_sm90():
    run_sm90_compile(_AOT_SCRIPT)
