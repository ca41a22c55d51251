"""bias_act: the Triton path against the float64 reference (outputs, dx, db, second order).

On CPU the kernels run under TRITON_INTERPRET=1 with tiny shapes; the ``gpu`` tests repeat the
comparison at realistic discriminator sizes on CUDA.
"""
import pytest
import torch
from torch import nn

from fastgan import ops
from fastgan.errors import FastganError
from fastgan.nn import BiasAct
from fastgan.ops.bias_act import _bias_act_ref
from _aot import run_sm90_compile
from tolerances import GRAD_TOL, TOL, assert_close_rel, assert_compiled_matches_eager

ACTS = ["linear", "relu", "lrelu", "tanh", "sigmoid", "silu", "gelu"]


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    return x.to(memory_format=torch.channels_last) if layout == "cl" else x


def _with_kinks(x: torch.Tensor, b: torch.Tensor | None, dim: int) -> torch.Tensor:
    """Put every third element exactly on the activation's kink: x + b == 0."""
    shape = [1] * x.ndim
    shape[dim] = -1
    neg_b = (-b).reshape(shape).expand_as(x) if b is not None else torch.zeros_like(x)
    on_kink = (torch.arange(x.numel(), device=x.device).reshape(x.shape) % 3) == 0
    return torch.where(on_kink, neg_b.to(x.dtype), x)


def _check(x, b, dim, act, gain, clamp, dtype):
    """Forward and every gradient of impl='triton' vs the float64 reference (on contiguous copies)."""
    x = x.detach().requires_grad_()
    b = b.detach().requires_grad_() if b is not None else None
    y = ops.bias_act(x, b, dim=dim, act=act, gain=gain, clamp=clamp, impl="triton")
    assert y.dtype == x.dtype and y.shape == x.shape
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        assert y.stride() == x.stride(), "output must keep the input's layout"
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, [t for t in (x, b) if t is not None], dy)

    xd = x.detach().double().contiguous().requires_grad_()
    bd = b.detach().double().requires_grad_() if b is not None else None
    yd = _bias_act_ref(xd, bd, dim, act, None, gain, clamp)
    refs = torch.autograd.grad(yd, [t for t in (xd, bd) if t is not None], dy.double().contiguous())
    assert_close_rel(y, yd, TOL[dtype], "y")
    for g, r, name in zip(grads, refs, ("dx", "db")):
        assert g.dtype == (x.dtype if name == "dx" else b.dtype)
        assert_close_rel(g, r, GRAD_TOL[dtype], name)


@pytest.mark.parametrize("layout", ["nchw", "cl", "2d"])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("gain,clamp", [(1.0, None), (1.7, 0.8)])
def test_matches_reference_fp32(act, layout, gain, clamp, device):
    torch.manual_seed(0)
    x = torch.randn(6, 5, device=device) if layout == "2d" else _layout(torch.randn(2, 5, 3, 7, device=device), layout)
    b = torch.randn(5, device=device)
    _check(_with_kinks(x, b, 1), b, 1, act, gain, clamp, torch.float32)


@pytest.mark.parametrize("shape,dim", [((3, 4, 5), 0), ((3, 4, 5), 2), ((2, 3, 4, 5), -1), ((2, 3, 4, 5), 2),
                                       ((7,), 0), ((1, 1, 5, 7), 1), ((2, 1, 3, 3), 1)])
def test_any_bias_dim_and_odd_shapes(shape, dim, device):
    torch.manual_seed(1)
    x = torch.randn(shape, device=device)
    b = torch.randn(shape[dim], device=device)
    _check(_with_kinks(x, b, dim), b, dim, "lrelu", 1.4, None, torch.float32)


@pytest.mark.parametrize("act", ["lrelu", "tanh", "silu"])
def test_no_bias(act, device):
    torch.manual_seed(2)
    x = torch.randn(2, 3, 4, 5, device=device)
    x[0, 0] = 0.0  # kinks
    _check(x, None, 1, act, 1.0, None, torch.float32)
    _check(_layout(x, "cl"), None, 1, act, 2.0, 0.5, torch.float32)


def test_strided_input_is_handled(device):
    torch.manual_seed(3)
    big = torch.randn(2, 8, 5, 6, device=device)
    x = big[:, ::2]  # not dense: copied once, result still correct
    b = torch.randn(4, device=device)
    _check(x, b, 1, "lrelu", 1.0, None, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("act", ["lrelu", "tanh", "silu", "gelu"])
@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_half_precision(dtype, act, layout, device):
    torch.manual_seed(4)
    x = _layout(torch.randn(2, 6, 4, 5, device=device), layout).to(dtype)
    b = torch.randn(6, device=device).to(dtype)
    _check(_with_kinks(x, b, 1), b, 1, act, 1.0, None, dtype)


def test_fp32_bias_with_bf16_input_keeps_input_dtype(device):
    torch.manual_seed(5)
    x = torch.randn(2, 6, 4, 5, device=device).to(torch.bfloat16)
    b = torch.randn(6, device=device)
    _check(x, b, 1, "lrelu", 1.0, None, torch.bfloat16)


def test_clamp_zeroes_gradient_where_clamped(device):
    x = torch.tensor([[-3.0, -0.5, 0.25, 2.0]], device=device, requires_grad=True)
    y = ops.bias_act(x, None, act="linear", gain=2.0, clamp=1.0, impl="triton")
    torch.testing.assert_close(y.detach().cpu(), torch.tensor([[-1.0, -1.0, 0.5, 1.0]]))
    (g,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(g.cpu(), torch.tensor([[0.0, 0.0, 2.0, 0.0]]))


@pytest.mark.parametrize("act", ACTS)
def test_double_backward_matches_reference(act, device):
    """The R1 / WGAN-GP pattern: grad with create_graph, a penalty on it, backward again.

    alpha, gain and 1/gain are exact in fp32: Triton passes float scalars as fp32 on GPUs.
    """
    torch.manual_seed(6)
    f64 = dict(dtype=torch.float64, device=device)
    b0 = torch.randn(3, **f64)
    x0 = _with_kinks(torch.randn(2, 3, 3, 4, **f64), b0, 1)
    dy0 = torch.randn(2, 3, 3, 4, **f64)

    def run(impl):
        x, b, dy = (t.clone().requires_grad_() for t in (x0, b0, dy0))
        y = ops.bias_act(x, b, act=act, alpha=0.25, gain=2.0, clamp=1.8, impl=impl)
        gx, gb = torch.autograd.grad(y, (x, b), dy, create_graph=True)
        penalty = (gx.square().sum() + (gx * x).sum() + gb.square().sum() + (y * y).sum())
        return torch.autograd.grad(penalty, (x, b, dy), allow_unused=True)

    for got, want, name in zip(run("triton"), run("ref"), ("x", "b", "dy")):
        if want is None:
            assert got is None or got.abs().max() == 0
        else:
            assert_close_rel(got, want, GRAD_TOL[torch.float64], f"d(penalty)/d{name}")


@pytest.mark.parametrize("act,clamp", [("lrelu", None), ("tanh", 0.9), ("silu", None), ("silu", 0.9)])
def test_gradgradcheck(act, clamp, device):
    torch.manual_seed(7)
    x = torch.randn(2, 3, 1, 2, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, device=device, requires_grad=True)
    fn = lambda x, b: ops.bias_act(x, b, act=act, gain=1.3, clamp=clamp, impl="triton")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, b), fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (x, b), fast_mode=True)


def test_gradgradcheck_full_lrelu_channels_last(device):
    torch.manual_seed(8)
    x = torch.randn(1, 2, 2, 2, dtype=torch.float64, device=device).to(memory_format=torch.channels_last)
    x.requires_grad_()
    b = torch.randn(2, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x, b: ops.bias_act(x, b, act="lrelu", impl="triton"), (x, b))


def test_errors_and_empty(device):
    with pytest.raises(FastganError, match="bias"):
        ops.bias_act(torch.randn(2, 3, device=device), torch.randn(4, device=device), impl="triton")
    with pytest.raises(FastganError, match="dim"):
        ops.bias_act(torch.randn(2, 3, device=device), torch.randn(3, device=device), dim=2, impl="triton")
    empty = ops.bias_act(torch.randn(0, 3, device=device), torch.randn(3, device=device), act="lrelu", impl="triton")
    assert empty.shape == (0, 3)


def test_bias_act_module_under_use_impl(device):
    torch.manual_seed(9)
    m = BiasAct(5, act="lrelu", gain=2 ** 0.5, clamp=3.0).to(device)
    with torch.no_grad():
        m.bias.normal_()
    x = torch.randn(2, 5, 3, 3, device=device)
    with ops.use_impl("triton"):
        y = m(x)
    torch.testing.assert_close(y, _bias_act_ref(x, m.bias, 1, "lrelu", None, 2 ** 0.5, 3.0))


class _TinyD(nn.Module):
    """A discriminator-like block: conv -> bias_act(lrelu) -> conv -> bias_act(linear)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.b1 = nn.Parameter(torch.randn(4))
        self.c2 = nn.Conv2d(4, 1, 4, bias=False)
        self.b2 = nn.Parameter(torch.randn(1))

    def forward(self, x):
        h = ops.bias_act(self.c1(x), self.b1, act="lrelu", gain=2 ** 0.5, impl="triton")
        return ops.bias_act(self.c2(h), self.b2, impl="triton").flatten(1)


def test_torch_compile_fullgraph_matches_eager(device):
    torch.manual_seed(10)
    m = _TinyD().to(device)
    x = torch.randn(2, 3, 4, 4, device=device)
    assert_compiled_matches_eager(m, x)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(256, 512, 4, 4), (256, 128, 16, 16), (64, 64, 64, 64), (256, 512)])
@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_realistic_shapes(shape, layout, dtype):
    torch.manual_seed(11)
    x = torch.randn(shape, device="cuda")
    x = _layout(x, layout) if x.ndim == 4 else x
    b = torch.randn(shape[1], device="cuda")
    for act, clamp in (("lrelu", None), ("silu", 256.0), ("tanh", None)):
        _check(_with_kinks(x.to(dtype), b.to(dtype), 1), b.to(dtype), 1, act, 2 ** 0.5, clamp, dtype)


# ---------------------------------------------------------------------------------------------
# CPU-only: compile the kernels for sm_90 with Triton's bundled ptxas (no GPU needed), so that
# code-generation errors the interpreter cannot see fail here too (see tests/_aot.py).
# ---------------------------------------------------------------------------------------------

_AOT_SCRIPT = r"""
from fastgan.kernels import bias_act as K
from fastgan.kernels.activations import SAVES_X

# [R, C, I] views, launch settings as in _bias_act_triton._launch (num_warps=8); alpha, gain,
# inv_gain and clamp are floats. Every activation id 0..6 goes through both kernels.
nchw = dict(BLOCK_R=1, BLOCK_C=16, BLOCK_I=256)  # (N, C, 16, 16): I = 256
lin = dict(BLOCK_R=16, BLOCK_C=256, BLOCK_I=1)   # (N, C) linear layer / channels_last: I == 1
dts = (("bf16", tl.float32), ("fp32", tl.float32), ("fp64", tl.float64))
fl = ("alpha", "gain", "inv_gain", "clamp")
for act in range(7):
    dt, acc = dts[act % 3]
    cfg, unit = (nchw, ()) if act % 2 else (lin, ("I",))
    bias, clamp = act != 3, act in (1, 2, 5, 6)
    compile_sm90(K._bias_act_fwd_kernel, dict(X=dt, B=dt, Y=dt),
                 dict(cfg, ACT=act, HAS_BIAS=bias, HAS_CLAMP=clamp, ACC=acc), unit, 8, fl[:2] + fl[3:])
    dt, acc = dts[(act + 1) % 3]
    part = "fp64" if dt == "fp64" else "fp32"
    compile_sm90(K._bias_act_bwd_kernel, dict(DY=dt, V=dt, B=dt, DX=dt, DB_PART=part),
                 dict(cfg, ACT=act, HAS_BIAS=bias, HAS_CLAMP=clamp, V_IS_X=act in SAVES_X, NEED_DB=bias, ACC=acc),
                 unit, 8, fl)
# the other V_IS_X branch without clamp / without bias, and a bias-less backward's unread DB_PART
compile_sm90(K._bias_act_bwd_kernel, dict(DY="bf16", V="bf16", B="bf16", DX="bf16", DB_PART="bf16"),
             dict(nchw, ACT=6, HAS_BIAS=False, HAS_CLAMP=False, V_IS_X=True, NEED_DB=False, ACC=tl.float32), (), 8, fl)
compile_sm90(K._bias_act_bwd_kernel, dict(DY="fp32", V="fp32", B="fp32", DX="fp32", DB_PART="fp32"),
             dict(nchw, ACT=5, HAS_BIAS=True, HAS_CLAMP=False, V_IS_X=True, NEED_DB=True, ACC=tl.float32), (), 8, fl)
# lrelu with a negative slope saves x (derivative from the pre-activation), with and without clamp
compile_sm90(K._bias_act_bwd_kernel, dict(DY="bf16", V="bf16", B="fp32", DX="bf16", DB_PART="fp32"),
             dict(lin, ACT=2, HAS_BIAS=True, HAS_CLAMP=True, V_IS_X=True, NEED_DB=True, ACC=tl.float32), ("I",), 8, fl)
compile_sm90(K._bias_act_bwd_kernel, dict(DY="fp64", V="fp64", B="fp64", DX="fp64", DB_PART="fp64"),
             dict(nchw, ACT=2, HAS_BIAS=True, HAS_CLAMP=False, V_IS_X=True, NEED_DB=True, ACC=tl.float64), (), 8, fl)
print("OK")
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests compile and run the kernels for real")
def test_kernels_compile_for_sm90():
    run_sm90_compile(_AOT_SCRIPT)
