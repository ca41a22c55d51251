"""instance_norm_act: the Triton path against the float64 reference.

Every launch path is exercised on tiny shapes by shrinking the tile (module constants):
``one_tile`` (plane in registers, one launch), ``loop`` (one program loops over its plane) and
``split`` (a plane split over several programs: statistics partials + a combine that loops over them). Outputs and
the gradients of x, weight and bias are compared; second order as under WGAN-GP / R1.

The reference runs on contiguous float64 copies: PyTorch's own CPU ``F.instance_norm`` returns
wrong input gradients for a channels_last input with N = 1 when the incoming gradient is
channels_last (its output comes back contiguous; checked on torch 2.13).
"""
import pytest
import torch
from torch import nn

import fastgan.ops._instance_norm_triton as IN
from fastgan import ops
from fastgan.errors import FastganError
from fastgan.nn import InstanceNormAct2d
from fastgan.ops.norm_act import _instance_norm_act_ref
from _aot import run_sm90_compile
from tolerances import GRAD_TOL, TOL, assert_close_rel, assert_compiled_matches_eager

ACTS = ["linear", "relu", "lrelu", "tanh", "sigmoid", "silu", "gelu"]
PATHS = {
    "one_tile": {},
    "loop": {"TILE": 32, "CPU_PROGRAMS": 0, "PROGRAMS_PER_SM": 0},
    "split": {"TILE": 32, "CPU_PROGRAMS": 10 ** 6, "PROGRAMS_PER_SM": 10 ** 6, "PARTIALS_TILE": 1},
}


@pytest.fixture(params=list(PATHS))
def path(request, monkeypatch):
    for name, value in PATHS[request.param].items():
        monkeypatch.setattr(IN, name, value)
    return request.param


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    return x.to(memory_format=torch.channels_last) if layout == "cl" else x


def _check(x, w, b, act, dtype, alpha=None, eps=1e-5):
    """Forward and every gradient of impl='triton' vs the float64 reference."""
    x = x.detach().requires_grad_()
    params = [t.detach().requires_grad_() if t is not None else None for t in (w, b)]
    y = ops.instance_norm_act(x, *params, eps=eps, act=act, alpha=alpha, impl="triton")
    assert y.dtype == x.dtype and y.shape == x.shape
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        assert y.stride() == x.stride(), "output must keep the input's layout"
    dy = torch.randn_like(y)
    ins = [x] + [t for t in params if t is not None]
    grads = torch.autograd.grad(y, ins, dy)

    xd = x.detach().double().contiguous().requires_grad_()
    pd = [t.detach().double().requires_grad_() if t is not None else None for t in params]
    yd = _instance_norm_act_ref(xd, *pd, eps, act, alpha)
    refs = torch.autograd.grad(yd, [xd] + [t for t in pd if t is not None], dy.double().contiguous())
    assert_close_rel(y, yd, TOL[dtype], "y")
    for g, r, name in zip(grads, refs, ("dx", "dweight", "dbias")):
        assert_close_rel(g, r, GRAD_TOL[dtype], name)


def _affine(C, device, affine=True):
    if not affine:
        return None, None
    return torch.rand(C, device=device) + 0.5, torch.randn(C, device=device)


@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("act", ACTS)
def test_matches_reference(act, layout, device):
    torch.manual_seed(0)
    x = _layout(torch.randn(2, 3, 5, 7, device=device), layout)
    _check(x, *_affine(3, device), act, torch.float32)


@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("act", ["relu", "tanh", "silu"])  # saves-y and saves-x activations
def test_matches_reference_every_path(act, layout, path, device):
    torch.manual_seed(0)
    x = _layout(torch.randn(2, 3, 5, 7, device=device), layout)
    _check(x, *_affine(3, device), act, torch.float32)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(1, 1, 5, 7), (1, 3, 2, 2), (3, 2, 9, 1), (2, 5, 6), (1, 2, 3, 2, 2)])
def test_odd_shapes(shape, affine, device):
    torch.manual_seed(1)
    _check(torch.randn(shape, device=device), *_affine(shape[1], device, affine), "lrelu", torch.float32)


@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_weight_only_and_bias_only(layout, device):
    torch.manual_seed(2)
    x = _layout(torch.randn(2, 4, 3, 5, device=device), layout)
    w, b = _affine(4, device)
    _check(x, w, None, "silu", torch.float32)
    _check(x, None, b, "relu", torch.float32)


@pytest.mark.parametrize("act", ["relu", "lrelu"])
@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_activation_kinks(act, layout, path, device):
    """Integer-valued planes with zero sum: mean is exactly 0, so zeros normalize to z = 0 exactly."""
    torch.manual_seed(3)
    x = torch.randint(-3, 4, (2, 3, 4, 5), device=device).float()
    x[..., -1, -1] -= x.sum(dim=(2, 3))  # every plane sums to 0
    assert (x == 0).float().mean() > 0.05
    w = torch.rand(3, device=device) + 0.5
    _check(_layout(x, layout), w, torch.zeros(3, device=device), act, torch.float32)
    _check(_layout(x, layout), None, None, act, torch.float32)


@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_large_mean_is_stable(layout, path, device):
    """Statistics of mean 100, std 1 data in fp32 keep fp32 accuracy (shifted, Chan-merged)."""
    torch.manual_seed(4)
    x = _layout(torch.randn(2, 3, 6, 7, device=device) + 100.0, layout)
    _check(x, *_affine(3, device), "lrelu", torch.float32)


def test_large_plane_default_settings(device):
    """A plane larger than one tile with few (n, c) pairs: the split path at default settings."""
    torch.manual_seed(5)
    x = torch.randn(1, 2, 70, 70, device=device) + 10.0
    cfg = IN._launch(1, 2, 70 * 70, False, x.device)
    assert cfg.splits > 1 and not cfg.one_tile
    _check(x, *_affine(2, device), "lrelu", torch.float32)
    _check(_layout(x, "cl"), *_affine(2, device), "silu", torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("act", ["lrelu", "relu", "tanh", "gelu"])
def test_half_precision(dtype, layout, act, device):
    torch.manual_seed(6)
    x = _layout(torch.randn(2, 3, 5, 6, device=device), layout).to(dtype)
    w, b = _affine(3, device)
    _check(x, w.to(dtype), b.to(dtype), act, dtype)


def test_half_input_with_fp32_affine(device):
    torch.manual_seed(7)
    x = torch.randn(2, 3, 5, 6, device=device).to(torch.bfloat16)
    _check(x, *_affine(3, device), "lrelu", torch.bfloat16)


@pytest.mark.parametrize("act", ["lrelu", "tanh", "silu"])
def test_double_backward_matches_reference(act, device):
    """The R1 / WGAN-GP pattern through an instance-norm critic layer."""
    torch.manual_seed(8)
    f64 = dict(dtype=torch.float64, device=device)
    x0 = torch.randn(2, 3, 3, 4, **f64).to(memory_format=torch.channels_last)
    w0, b0 = torch.rand(3, **f64) + 0.5, torch.randn(3, **f64)
    dy0 = torch.randn(2, 3, 3, 4, **f64)

    def run(impl):
        x, w, b, dy = (t.clone().requires_grad_() for t in (x0, w0, b0, dy0))
        y = ops.instance_norm_act(x, w, b, act=act, alpha=0.25, impl=impl)
        gx, gw, gb = torch.autograd.grad(y, (x, w, b), dy, create_graph=True)
        penalty = gx.square().sum() + (gx * x).sum() + gw.square().sum() + (gb * b).sum() + y.square().sum()
        return torch.autograd.grad(penalty, (x, w, b, dy))

    for got, want, name in zip(run("triton"), run("ref"), ("x", "w", "b", "dy")):
        assert_close_rel(got, want, GRAD_TOL[torch.float64], f"d(penalty)/d{name}")


@pytest.mark.parametrize("act,affine", [("lrelu", True), ("silu", False), ("tanh", True)])
def test_gradgradcheck(act, affine, device):
    torch.manual_seed(9)
    f64 = dict(dtype=torch.float64, device=device)
    x = torch.randn(2, 2, 2, 3, **f64, requires_grad=True)
    if affine:
        w = (torch.rand(2, **f64) + 0.5).requires_grad_()
        b = torch.randn(2, **f64, requires_grad=True)
        fn, inputs = (lambda x, w, b: ops.instance_norm_act(x, w, b, act=act, impl="triton")), (x, w, b)
    else:
        fn, inputs = (lambda x: ops.instance_norm_act(x, act=act, impl="triton")), (x,)
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, inputs, fast_mode=True)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_module_equals_stock_instance_norm(affine, layout, device):
    """InstanceNormAct2d under use_impl('triton') == nn.InstanceNorm2d + nn.LeakyReLU."""
    torch.manual_seed(10)
    fused = InstanceNormAct2d(4, act="lrelu", alpha=0.2, affine=affine).to(device)
    stock = nn.InstanceNorm2d(4, affine=affine).to(device)
    if affine:
        with torch.no_grad():
            fused.weight.uniform_(0.5, 1.5)
            fused.bias.normal_()
    stock.load_state_dict(fused.state_dict())
    x = _layout(torch.randn(3, 4, 5, 6, device=device), layout)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    with ops.use_impl("triton"):
        y = fused(xa)
    y_ref = nn.functional.leaky_relu(stock(xb.contiguous()), 0.2)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    dy = torch.randn_like(y_ref)
    y.backward(dy)
    y_ref.backward(dy)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-5)
    if affine:
        torch.testing.assert_close(fused.weight.grad, stock.weight.grad, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(fused.bias.grad, stock.bias.grad, rtol=1e-4, atol=1e-5)


def test_errors(device):
    with pytest.raises(FastganError, match="spatial"):
        ops.instance_norm_act(torch.randn(2, 3, 1, 1, device=device), impl="triton")
    with pytest.raises(FastganError, match="N, C"):
        ops.instance_norm_act(torch.randn(2, 3, device=device), impl="triton")
    with pytest.raises(FastganError, match="weight"):
        ops.instance_norm_act(torch.randn(2, 3, 4, 4, device=device), torch.ones(2, device=device), impl="triton")


class _TinyD(nn.Module):
    """conv -> instance_norm_act(lrelu) -> conv: a pix2pix/WGAN-GP critic block."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False)
        self.w = nn.Parameter(torch.rand(4) + 0.5)
        self.b = nn.Parameter(torch.randn(4))
        self.c2 = nn.Conv2d(4, 1, 4)

    def forward(self, x):
        h = ops.instance_norm_act(self.c1(x), self.w, self.b, act="lrelu", impl="triton")
        return self.c2(h).flatten(1)


def test_torch_compile_fullgraph_matches_eager(device):
    torch.manual_seed(11)
    m = _TinyD().to(device)
    x = torch.randn(2, 3, 8, 8, device=device)
    assert_compiled_matches_eager(m, x)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(256, 512, 4, 4), (256, 128, 16, 16), (64, 64, 64, 64), (1, 64, 256, 256),
                                   (4, 256, 64, 64)])
@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_realistic_shapes(shape, layout, dtype):
    torch.manual_seed(12)
    x = _layout(torch.randn(shape, device="cuda") * 3 + 1, layout).to(dtype)
    w, b = _affine(shape[1], "cuda")
    for act in ("lrelu", "relu", "silu"):
        _check(x, w, b, act, dtype)


# ---------------------------------------------------------------------------------------------
# CPU-only: compile the kernels for sm_90 with Triton's bundled ptxas (no GPU needed), so that
# code-generation errors the interpreter cannot see fail here too (see tests/_aot.py).
# ---------------------------------------------------------------------------------------------

_AOT_SCRIPT = r"""
from fastgan.kernels import instance_norm as K

# NCHW planes: (s_n, s_hw, s_c) = (C·HW, 1, HW); channels_last: (HW·C, C, 1). eps, alpha are floats.
cl = ("s_xc", "s_yc", "s_dc", "s_gc")
nchw = ("s_xhw", "s_yhw", "s_dhw", "s_ghw")
fl = ("eps", "alpha")  # fp32 scalars of the forward; the backward takes alpha only
bl = ("alpha",)
f32 = dict(MEAN_P="fp32", M2_P="fp32", MEAN="fp32", RSTD="fp32", A_P="fp32", B_P="fp32", W="fp32", B="fp32")
bf16 = dict(f32, X="bf16", Y="bf16", DY="bf16", DX="bf16")
fp32 = dict(f32, X="fp32", Y="fp32", DY="fp32", DX="fp32")
f64 = {**{k: "fp64" for k in f32}, **dict(X="fp64", Y="fp64", DY="fp64", DX="fp64")}
a32, a64 = dict(ACC=tl.float32), dict(ACC=tl.float64)
split_cl = dict(BLOCK_HW=64, BLOCK_C=64, BLOCK_S=32, SPLIT=True, ONE_TILE=False)     # channels_last, split
one_nchw = dict(BLOCK_HW=256, BLOCK_C=16, BLOCK_S=1, SPLIT=False, ONE_TILE=True)    # NCHW, one tile
one_cl = dict(BLOCK_HW=64, BLOCK_C=64, BLOCK_S=1, SPLIT=False, ONE_TILE=True)     # channels_last, one tile
loop_nchw = dict(BLOCK_HW=4096, BLOCK_C=1, BLOCK_S=1, SPLIT=False, ONE_TILE=False)  # NCHW, looped plane
def st(d):
    return {k: v for k, v in d.items() if k in ("BLOCK_HW", "BLOCK_C")}
compile_sm90(K._instance_norm_stats_kernel, bf16, dict(a32, **st(split_cl)), cl, num_warps=8)
compile_sm90(K._instance_norm_stats_kernel, f64, dict(a64, **st(loop_nchw)), nchw, num_warps=8)
compile_sm90(K._instance_norm_fwd_kernel, bf16, dict(a32, **split_cl, ACT=2, HAS_W=True, HAS_B=True), cl, 8, fl)
compile_sm90(K._instance_norm_fwd_kernel, fp32, dict(a32, **one_nchw, ACT=0, HAS_W=False, HAS_B=False), nchw, 8, fl)
compile_sm90(K._instance_norm_fwd_kernel, f64, dict(a64, **loop_nchw, ACT=6, HAS_W=True, HAS_B=False), nchw, 8, fl)
compile_sm90(K._instance_norm_bwd_stats_kernel, bf16, dict(a32, **st(split_cl), ACT=5, HAS_W=True, HAS_B=True),
             cl, 8, bl)
compile_sm90(K._instance_norm_bwd_kernel, bf16, dict(a32, **split_cl, ACT=5, HAS_W=True, HAS_B=True),
             cl, 8, bl)
compile_sm90(K._instance_norm_bwd_kernel, fp32, dict(a32, **one_nchw, ACT=1, HAS_W=False, HAS_B=True),
             nchw, 8, bl)
compile_sm90(K._instance_norm_bwd_kernel, f64, dict(a64, **loop_nchw, ACT=2, HAS_W=True, HAS_B=False),
             nchw, 8, bl)
compile_sm90(K._instance_norm_bwd_kernel, bf16, dict(a32, **one_cl, ACT=4, HAS_W=True, HAS_B=True),
             cl, 8, bl)
print("OK")
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests compile and run the kernels for real")
def test_kernels_compile_for_sm90():
    run_sm90_compile(_AOT_SCRIPT)
