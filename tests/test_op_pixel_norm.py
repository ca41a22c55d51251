"""pixel_norm: the Triton path against the float64 reference (NCHW, channels_last, (N, C))."""
import pytest
import torch
from torch import nn

import fastgan.ops._pixel_norm_triton as PN
from fastgan import ops
from fastgan.errors import FastganError
from fastgan.nn import PixelNorm
from fastgan.ops.norm_act import _pixel_norm_ref
from _aot import run_sm90_compile
from tolerances import GRAD_TOL, TOL, assert_close_rel


def _check(x, dtype, eps=1e-8):
    x = x.detach().requires_grad_()
    y = ops.pixel_norm(x, eps=eps, impl="triton")
    assert y.dtype == x.dtype and y.shape == x.shape
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        assert y.stride() == x.stride(), "output must keep the input's layout"
    dy = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, dy)
    xd = x.detach().double().requires_grad_()
    yd = _pixel_norm_ref(xd, eps)
    (dxd,) = torch.autograd.grad(yd, xd, dy.double())
    assert_close_rel(y, yd, TOL[dtype], "y")
    assert_close_rel(dx, dxd, GRAD_TOL[dtype], "dx")


@pytest.fixture(params=["one_pass", "looped"])
def passes(request, monkeypatch):
    if request.param == "looped":  # channels reduced in chunks of 2, two passes over x
        monkeypatch.setattr(PN, "MAX_BLOCK_C", 2)
    return request.param


@pytest.mark.parametrize("shape,layout", [((2, 5, 3, 7), "nchw"), ((2, 5, 3, 7), "cl"), ((6, 5), "2d"),
                                          ((1, 3, 1, 1), "nchw"), ((3, 7, 2), "nchw"), ((1, 4, 5, 5), "cl")])
def test_matches_reference(shape, layout, passes, device):
    torch.manual_seed(0)
    x = torch.randn(shape, device=device)
    if layout == "cl":
        x = x.to(memory_format=torch.channels_last)
    x[0, :, ...] *= 30.0  # pixels of very different norms
    _check(x, torch.float32)


def test_single_channel(device):
    # With C = 1 the gradient is rstd·dy·eps/(x² + eps): tiny and cancellation-bound at eps=1e-8
    # for any fp32 implementation, so check it at a well-conditioned eps.
    torch.manual_seed(1)
    _check(torch.randn(3, 1, 4, 4, device=device), torch.float32, eps=0.5)


def test_mapping_network_width(device):
    torch.manual_seed(2)
    _check(torch.randn(4, 512, device=device), torch.float32)


def test_strided_input(device):
    torch.manual_seed(3)
    x = torch.randn(2, 6, 4, 5, device=device)[:, :, ::2]
    _check(x, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["nchw", "cl", "2d"])
def test_half_precision(dtype, layout, device):
    torch.manual_seed(4)
    x = torch.randn(6, 16, device=device) if layout == "2d" else torch.randn(2, 16, 3, 5, device=device)
    if layout == "cl":
        x = x.to(memory_format=torch.channels_last)
    _check(x.to(dtype), dtype)


def test_second_order(device):
    torch.manual_seed(5)
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64, device=device, requires_grad=True)
    fn = lambda x: ops.pixel_norm(x, impl="triton")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,), fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (x,), fast_mode=True)


def test_module_and_errors(device):
    torch.manual_seed(6)
    x = torch.randn(3, 8, device=device)
    with ops.use_impl("triton"):
        y = PixelNorm()(x)
    torch.testing.assert_close(y, _pixel_norm_ref(x, 1e-8))
    with pytest.raises(FastganError, match="N, C"):
        ops.pixel_norm(torch.randn(5, device=device), impl="triton")


class _Mapping(nn.Module):
    """StyleGAN-like mapping head: pixel_norm(z) -> linear -> bias_act(lrelu) -> pixel_norm."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8, bias=False)
        self.b = nn.Parameter(torch.randn(8))

    def forward(self, z):
        h = ops.bias_act(self.fc(ops.pixel_norm(z, impl="triton")), self.b, act="lrelu", impl="triton")
        return ops.pixel_norm(h, impl="triton")


def test_torch_compile_fullgraph_matches_eager(device):
    torch.manual_seed(7)
    m = _Mapping().to(device)
    z = torch.randn(4, 8, device=device, requires_grad=True)
    compiled = torch.compile(m, fullgraph=True, backend="inductor")
    y_e = m(z)
    g_e = torch.autograd.grad(y_e.square().sum() + y_e.sum(), [z, *m.parameters()])
    y_c = compiled(z)
    g_c = torch.autograd.grad(y_c.square().sum() + y_c.sum(), [z, *m.parameters()])
    torch.testing.assert_close(y_c, y_e)
    for a, b in zip(g_c, g_e):
        torch.testing.assert_close(a, b)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(256, 512), (256, 512, 4, 4), (64, 256, 32, 32), (16, 64, 128, 128)])
@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_realistic_shapes(shape, layout, dtype):
    torch.manual_seed(8)
    x = torch.randn(shape, device="cuda")
    if layout == "cl" and x.ndim == 4:
        x = x.to(memory_format=torch.channels_last)
    _check(x.to(dtype), dtype)


# ---------------------------------------------------------------------------------------------
# CPU-only: compile the kernels for sm_90 with Triton's bundled ptxas (no GPU needed), so that
# code-generation errors the interpreter cannot see fail here too (see tests/_aot.py).
# ---------------------------------------------------------------------------------------------

_AOT_SCRIPT = r"""
from fastgan.kernels import pixel_norm as K

# [R, C, I] views, launch settings as in _pixel_norm_triton._launch (num_warps=8); eps is a float.
one_nchw = dict(ONE_PASS=True, BLOCK_R=1, BLOCK_C=512, BLOCK_I=8)    # (N, 512, H, W)
one_map = dict(ONE_PASS=True, BLOCK_R=8, BLOCK_C=512, BLOCK_I=1)     # mapping network (N, 512): I == 1
two_pass = dict(ONE_PASS=False, BLOCK_R=1, BLOCK_C=1024, BLOCK_I=8)  # C > 1024 channels
for kern, names in ((K._pixel_norm_fwd_kernel, ("X", "Y")), (K._pixel_norm_bwd_kernel, ("DY", "X", "DX"))):
    for dt, acc, cfg, unit in (("bf16", tl.float32, one_nchw, ()), ("fp32", tl.float32, one_map, ("I",)),
                               ("fp32", tl.float32, two_pass, ()), ("fp64", tl.float64, two_pass, ("I",))):
        compile_sm90(kern, {n: dt for n in names}, dict(cfg, ACC=acc), unit, 8, ("eps",))
print("OK")
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests compile and run the kernels for real")
def test_kernels_compile_for_sm90():
    run_sm90_compile(_AOT_SCRIPT)
