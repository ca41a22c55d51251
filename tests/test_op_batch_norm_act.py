"""batch_norm_act: the Triton path against the float64 reference (outputs, every gradient, running
statistics), nn.BatchNorm parity through fastgan.nn, second order, and torch.compile.

On CPU the kernels run under TRITON_INTERPRET=1 (set by conftest), so shapes are tiny; the
``gpu`` tests repeat the comparison at DCGAN shapes.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastgan.nn.blocks import BatchNormAct1d, BatchNormAct2d
from fastgan.ops import batch_norm_act, use_impl
from fastgan.ops.norm_act import _batch_norm_act_ref
from _aot import run_sm90_compile
from tolerances import GRAD_TOL, TOL, assert_close_rel

HAS_CUDA = torch.cuda.is_available()
DEV = torch.device("cuda" if HAS_CUDA else "cpu")


def _make(shape, dtype, channels_last=False, affine=True, kinks=False, seed=0, loc=0.0, scale=1.0):
    """x (N, C, ...), weight, bias, running stats, dy; ``kinks`` puts pre-activations exactly at 0."""
    g = torch.Generator().manual_seed(seed)
    C = shape[1]
    x = torch.randn(shape, generator=g, dtype=torch.float64) * scale + loc
    w = torch.randn(C, generator=g, dtype=torch.float64) if affine else None
    b = torch.randn(C, generator=g, dtype=torch.float64) * 0.5 if affine else None
    if kinks:
        # channel 0 constant (x̂ = 0 exactly) with bias 0; channel 1 with weight 0 and bias 0:
        # both give pre-activations that are exact zeros, so relu'/lrelu' conventions at 0 matter.
        x[:, 0] = 2.0
        b[0] = 0.0
        if C > 1:
            w[1], b[1] = 0.0, 0.0
    rm = torch.randn(C, generator=g, dtype=torch.float64) * 0.1
    rv = torch.rand(C, generator=g, dtype=torch.float64) + 0.5
    dy = torch.randn(shape, generator=g, dtype=torch.float64)
    x = x.to(dtype)  # round first: the reference sees exactly the values the kernel sees
    if channels_last:
        x = x.to(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    return x, w, b, rm, rv, dy.to(dtype)


def _run(fn, x, w, b, rm, rv, dy, dtype, training, act, alpha, momentum=0.1, eps=1e-5):
    """Forward + backward of ``fn`` on copies in ``dtype`` (params fp32 unless fp64)."""
    pdt = torch.float64 if dtype == torch.float64 else torch.float32
    xs = x.detach().clone().to(DEV).requires_grad_()
    ws = w.to(DEV, pdt).requires_grad_() if w is not None else None
    bs = b.to(DEV, pdt).requires_grad_() if b is not None else None
    rms, rvs = rm.to(DEV, pdt), rv.to(DEV, pdt)
    y = fn(xs, ws, bs, rms, rvs, training, momentum, eps, act, alpha)
    y.backward(dy.to(DEV))
    return y, xs.grad, (ws.grad if ws is not None else None), (bs.grad if bs is not None else None), rms, rvs


def _triton(x, w, b, rm, rv, training, momentum, eps, act, alpha):
    return batch_norm_act(x, w, b, rm, rv, training=training, momentum=momentum, eps=eps, act=act,
                          alpha=alpha, impl="triton")


def _check_against_ref(x, w, b, rm, rv, dy, *, training, act, alpha=None, momentum=0.1):
    dtype = x.dtype
    got = _run(_triton, x, w, b, rm, rv, dy, dtype, training, act, alpha, momentum)
    ref = _run(_batch_norm_act_ref, x.double().contiguous(), w, b, rm, rv, dy.double(), torch.float64,
               training, act, alpha, momentum)
    y, dx, dw, db, rms, rvs = got
    assert y.dtype == dtype and y.stride() == x.stride(), "output keeps dtype and memory format"
    assert dx.stride() == x.stride(), "dx keeps the memory format"
    assert_close_rel(y, ref[0], TOL[dtype], "y")
    assert_close_rel(dx, ref[1], GRAD_TOL[dtype], "dx")
    if w is not None:
        assert_close_rel(dw, ref[2], GRAD_TOL[dtype], "dweight")
        assert_close_rel(db, ref[3], GRAD_TOL[dtype], "dbias")
    # Running buffers: statistics in fp32 (fp64 for fp64 inputs) whatever the input dtype.
    stat_tol = 1e-12 if dtype == torch.float64 else 1e-6
    assert_close_rel(rms, ref[4], stat_tol, "running_mean")
    assert_close_rel(rvs, ref[5], stat_tol, "running_var")


CASES = [
    # shape, dtype, channels_last, act, affine, training, kinks
    ((2, 3, 5, 7), torch.float32, False, "relu", True, True, True),
    ((2, 3, 5, 7), torch.float32, True, "lrelu", True, True, True),
    ((1, 1, 4, 4), torch.float32, False, "linear", True, True, False),     # batch 1, one channel
    ((5, 6), torch.float32, False, "silu", False, True, False),            # BatchNorm1d (N, C)
    ((3, 4, 10), torch.float32, False, "gelu", True, True, False),         # BatchNorm1d (N, C, L)
    ((3, 2, 4, 4), torch.bfloat16, True, "lrelu", True, True, True),
    ((3, 2, 4, 4), torch.float16, False, "tanh", True, True, False),
    ((2, 3, 4, 4), torch.float32, False, "sigmoid", True, False, False),   # eval
    ((2, 3, 3, 5), torch.bfloat16, True, "relu", True, False, True),       # eval, bf16, kinks
    ((2, 3, 3, 5), torch.float32, True, "gelu", False, False, False),      # eval, no affine
]


@pytest.mark.parametrize("shape,dtype,cl,act,affine,training,kinks", CASES,
                         ids=[f"{'x'.join(map(str, c[0]))}-{str(c[1])[6:]}-{'cl' if c[2] else 'nchw'}-{c[3]}"
                              f"-{'affine' if c[4] else 'plain'}-{'train' if c[5] else 'eval'}" for c in CASES])
def test_matches_float64_reference(shape, dtype, cl, act, affine, training, kinks):
    x, w, b, rm, rv, dy = _make(shape, dtype, cl, affine, kinks)
    _check_against_ref(x, w, b, rm, rv, dy, training=training, act=act, alpha=0.1 if act == "lrelu" else None)


def test_large_mean_small_std_statistics():
    """mean 100, std 1: plain E[x²] - E[x]² in fp32 would lose ~4 digits of the variance."""
    x, w, b, rm, rv, dy = _make((8, 4, 16, 16), torch.float32, loc=100.0, scale=1.0, seed=3)
    _check_against_ref(x, w, b, rm, rv, dy, training=True, act="linear")


def test_non_mergeable_strides_and_expanded_grad():
    """A sliced input (H not mergeable with W) and dy = ones expanded with stride 0 (from .sum())."""
    base = torch.randn(2, 3, 8, 5, dtype=torch.float64)
    x = base[:, :, ::2].float().requires_grad_()
    w = torch.randn(3, requires_grad=True)
    y = batch_norm_act(x, w, None, None, None, training=True, act="lrelu", impl="triton")
    y.sum().backward()
    xr = base[:, :, ::2].clone().requires_grad_()
    wr = w.detach().double().requires_grad_()
    yr = _batch_norm_act_ref(xr, wr, None, None, None, True, 0.1, 1e-5, "lrelu", None)
    yr.sum().backward()
    assert_close_rel(y, yr, TOL[torch.float32], "y")
    assert_close_rel(x.grad, xr.grad, GRAD_TOL[torch.float32], "dx")
    assert_close_rel(w.grad, wr.grad, GRAD_TOL[torch.float32], "dweight")


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_param_grads_when_input_needs_none(training):
    """x without requires_grad (the backward skips dx): dweight and dbias still match."""
    x, w, b, rm, rv, dy = _make((3, 2, 3, 3), torch.float32, seed=7)
    grads = []
    for fn, dt in ((_triton, torch.float32), (_batch_norm_act_ref, torch.float64)):
        ws, bs = w.to(dt).requires_grad_(), b.to(dt).requires_grad_()
        y = fn(x.to(dt), ws, bs, rm.to(dt), rv.to(dt), training, 0.1, 1e-5, "relu", None)
        y.backward(dy.to(dt))
        grads.append((ws.grad, bs.grad))
    assert_close_rel(grads[0][0], grads[1][0], GRAD_TOL[torch.float32], "dweight")
    assert_close_rel(grads[0][1], grads[1][1], GRAD_TOL[torch.float32], "dbias")


@pytest.mark.parametrize("momentum", [0.1, None])
def test_module_matches_nn_batchnorm_over_steps(momentum):
    """fastgan.nn.BatchNormAct2d (triton) == nn.BatchNorm2d + leaky_relu: outputs, grads, buffers."""
    torch.manual_seed(0)
    ours = BatchNormAct2d(3, act="lrelu", alpha=0.2, momentum=momentum)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ours.bias.uniform_(-0.5, 0.5)
    theirs = nn.BatchNorm2d(3, momentum=momentum)
    theirs.load_state_dict(ours.state_dict())
    for step in range(3):
        x = torch.randn(2, 3, 3, 4) * (1 + step) + step
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        with use_impl("triton"):
            ya = ours(xa)
        yb = F.leaky_relu(theirs(xb), 0.2)
        ya.square().sum().backward()
        yb.square().sum().backward()
        assert_close_rel(ya, yb, TOL[torch.float32], "y")
        assert_close_rel(xa.grad, xb.grad, GRAD_TOL[torch.float32], "dx")
    assert_close_rel(ours.weight.grad, theirs.weight.grad, GRAD_TOL[torch.float32], "dweight")
    assert_close_rel(ours.bias.grad, theirs.bias.grad, GRAD_TOL[torch.float32], "dbias")
    assert_close_rel(ours.running_mean, theirs.running_mean, 1e-6, "running_mean")
    assert_close_rel(ours.running_var, theirs.running_var, 1e-6, "running_var")
    assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == 3
    ours.eval()
    theirs.eval()
    x = torch.randn(2, 3, 3, 4)
    with use_impl("triton"):
        ya = ours(x)
    assert_close_rel(ya, F.leaky_relu(theirs(x), 0.2), TOL[torch.float32], "eval y")


def test_batchnorm1d_module():
    torch.manual_seed(1)
    ours, theirs = BatchNormAct1d(5, act="relu"), nn.BatchNorm1d(5)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(7, 5)
    with use_impl("triton"):
        ya = ours(x)
    assert_close_rel(ya, F.relu(theirs(x)), TOL[torch.float32], "y")
    assert_close_rel(ours.running_var, theirs.running_var, 1e-6, "running_var")


def test_batch_of_one():
    x = torch.randn(1, 3, 2, 2)
    y = batch_norm_act(x, None, None, None, None, training=True, impl="triton")  # N·H·W = 4: fine
    assert_close_rel(y, F.batch_norm(x.double(), None, None, training=True), TOL[torch.float32])
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        batch_norm_act(torch.randn(1, 3, 1, 1), None, None, None, None, training=True, impl="triton")
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        batch_norm_act(torch.randn(1, 3), None, None, None, None, training=True, impl="triton")
    with pytest.raises(RuntimeError, match="running_mean must be defined"):
        batch_norm_act(x, None, None, None, None, training=False, impl="triton")


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_second_order_gradgradcheck(training):
    torch.manual_seed(0)
    x = torch.randn(2, 2, 2, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    rm, rv = torch.randn(2, dtype=torch.float64), torch.rand(2, dtype=torch.float64) + 0.5

    def f(x, w, b):
        return batch_norm_act(x, w, b, None if training else rm, None if training else rv,
                              training=training, act="tanh", impl="triton")

    assert torch.autograd.gradcheck(f, (x, w, b), fast_mode=True)
    assert torch.autograd.gradgradcheck(f, (x, w, b), fast_mode=True)


def _penalty_grads(impl: str):
    """R1-style penalty through a tiny discriminator: grads of every parameter and of x."""
    torch.manual_seed(0)
    D = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False), BatchNormAct2d(3, act="lrelu"),
                      nn.Flatten(), nn.Linear(3 * 4 * 4, 1)).double()
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    with use_impl(impl):
        out = D(x)
    (g,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    (g.square().sum() + out.square().mean()).backward()
    return [p.grad for p in D.parameters()] + [x.grad]


def test_double_backward_matches_reference():
    for a, r in zip(_penalty_grads("triton"), _penalty_grads("ref")):
        assert_close_rel(a, r, GRAD_TOL[torch.float64], "penalty grad")


def test_torch_compile_fullgraph_matches_eager():
    """Training block with the running-stat update inside the graph: forward, backward, buffers."""
    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False), BatchNormAct2d(3, act="lrelu"))
    ref_block = copy.deepcopy(block)
    compiled = torch.compile(block, fullgraph=True, backend="inductor")
    for step in range(2):
        x = torch.randn(2, 2, 4, 4) + step
        with use_impl("triton"):
            y_c = compiled(x)
            y_e = ref_block(x)
        y_c.square().sum().backward()
        y_e.square().sum().backward()
        torch.testing.assert_close(y_c, y_e, rtol=1e-5, atol=1e-5)
    for p_c, p_e in zip(block.parameters(), ref_block.parameters()):
        torch.testing.assert_close(p_c.grad, p_e.grad, rtol=1e-5, atol=1e-5)
    bn_c, bn_e = block[1], ref_block[1]
    torch.testing.assert_close(bn_c.running_mean, bn_e.running_mean)
    torch.testing.assert_close(bn_c.running_var, bn_e.running_var)
    assert int(bn_c.num_batches_tracked) == 2


def test_launch_config_fills_the_gpu():
    """At DCGAN's smallest maps (64 channels, 4×4) the reductions still get ≥ 132 programs."""
    from fastgan.ops._batch_norm_triton import launch_config

    for C, S, cl in [(64, 16, False), (64, 16, True), (512, 16, True), (64, 1024, False), (512, 1024, True)]:
        cfg = launch_config(256, C, S, cl, True, 132)
        assert cfg.red_progs * cfg.num_c_blocks >= 132, (C, S, cl, cfg)
        assert cfg.red_progs * cfg.red_tiles_per_prog >= cfg.num_tiles
        assert cfg.BLOCK_C * cfg.BLOCK_N * cfg.BLOCK_S <= 4096


# ---------------------------------------------------------------------------------------------
# GPU: realistic shapes (auto-skipped without CUDA)
# ---------------------------------------------------------------------------------------------

GPU_CASES = [
    ((256, 64, 32, 32), torch.bfloat16, True, "relu"),
    ((256, 128, 16, 16), torch.float32, False, "lrelu"),
    ((256, 256, 8, 8), torch.float16, True, "lrelu"),
    ((256, 512, 4, 4), torch.float32, True, "relu"),
    ((256, 512, 4, 4), torch.bfloat16, False, "tanh"),
    ((256, 100), torch.float32, False, "relu"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("shape,dtype,cl,act", GPU_CASES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gpu_dcgan_shapes(shape, dtype, cl, act, training):
    x, w, b, rm, rv, dy = _make(shape, dtype, cl and len(shape) == 4, True, kinks=act in ("relu", "lrelu"))
    _check_against_ref(x, w, b, rm, rv, dy, training=training, act=act)


@pytest.mark.gpu
def test_gpu_large_mean_and_compile():
    x, w, b, rm, rv, dy = _make((256, 64, 32, 32), torch.float32, True, loc=100.0, seed=5)
    # tanh, not a kinked activation: at mean 100 an fp32 pre-activation is only known to ~6e-6, so
    # lrelu' flips for the ~100 of 16.7M values within that of 0 (PyTorch's own fp32 BN is 1e-2
    # off the float64 dx there; this kernel 5e-4). A smooth activation tests the statistics.
    _check_against_ref(x, w, b, rm, rv, dy, training=True, act="tanh")
    block = BatchNormAct2d(64, act="relu").cuda()
    eager = copy.deepcopy(block)
    compiled = torch.compile(block, fullgraph=True)
    xin = torch.randn(256, 64, 16, 16, device="cuda")
    with use_impl("triton"):
        torch.testing.assert_close(compiled(xin), eager(xin))
    torch.testing.assert_close(block.running_var, eager.running_var)


# ---------------------------------------------------------------------------------------------
# CPU-only: compile the kernels for sm_90 with Triton's bundled ptxas (no GPU needed), so that
# code-generation errors the interpreter cannot see (e.g. type-unstable returns) fail here too.
# It runs in a subprocess: under TRITON_INTERPRET=1 @triton.jit yields interpreted functions.
# ---------------------------------------------------------------------------------------------

_AOT_SCRIPT = r"""
from fastgan.kernels import batch_norm as K

f32 = dict(W="fp32", B="fp32", MEAN="fp32", STAT="fp32", PSUM="fp32", PSQ="fp32", PG="fp32", PGX="fp32",
           SUM_G="fp32", SUM_GX="fp32", PA="fp32", PB="fp32", OUTA="fp32", OUTB="fp32", RSTD="fp32",
           RMEAN="fp32", RVAR="bf16")
cl = ("stride_xc", "stride_yc", "stride_dyc", "stride_dxc")
nchw = ("stride_xs", "stride_ys", "stride_dys", "stride_dxs")
tiles = dict(BLOCK_C=64, BLOCK_N=1, BLOCK_S=16, ACC=tl.float32, INT64=False)
bf16 = dict(f32, X="bf16", Y="bf16", DY="bf16", DX="bf16")
f64 = {**{k: "fp64" for k in f32}, **dict(X="fp64", Y="fp64", DY="fp64", DX="fp64")}
compile_sm90(K._bn_stats_kernel, bf16, tiles, cl)
compile_sm90(K._bn_stats_combine_kernel, bf16, dict(BLOCK_P=256, BLOCK_C=16, ACC=tl.float32, HAS_RMEAN=True,
                                                    HAS_RVAR=True))
compile_sm90(K._bn_act_fwd_kernel, dict(f32, X="fp32", Y="fp32"),
             dict(tiles, HAS_W=False, HAS_B=False, STAT_IS_VAR=True, ACT=6), nchw)
compile_sm90(K._bn_act_bwd_dx_kernel, bf16, dict(tiles, HAS_W=True, HAS_B=True, STAT_IS_VAR=False, ACT=2), cl)
compile_sm90(K._bn_act_bwd_reduce_kernel, f64, dict(tiles, ACC=tl.float64, INT64=True, HAS_W=True, HAS_B=False,
                                                    STAT_IS_VAR=True, ACT=5, STORE_DX=True), nchw)
compile_sm90(K._bn_sum_partials_kernel, f64, dict(BLOCK_P=256, BLOCK_C=16, ACC=tl.float64))
print("OK")
"""


@pytest.mark.skipif(HAS_CUDA, reason="the GPU tests compile and run the kernels for real")
def test_kernels_compile_for_sm90():
    run_sm90_compile(_AOT_SCRIPT)
