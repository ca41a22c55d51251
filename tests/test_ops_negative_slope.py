"""LeakyReLU slopes of either sign through the fused ops (bias_act, batch_norm_act, instance_norm_act).

lrelu's derivative is 1 where the *input* is positive, else alpha. For alpha < 0 a negative input
gives a positive output, so the derivative cannot be read from the output's sign: the norm kernels
take it from the recomputed pre-activation, bias_act saves its input instead of its output for
alpha < 0 (fastgan.ops.activations.Activation.saves_for). Checked against the float64 reference,
first order (fp32 and fp64 kernels) and second order (the R1 / WGAN-GP pattern), at slopes on
both sides of 0, 0 itself and a slope above 1.
"""
import pytest
import torch

from fastgan import ops
from fastgan.ops.activations import get_activation
from fastgan.ops.bias_act import _bias_act_ref
from fastgan.ops.norm_act import _batch_norm_act_ref, _instance_norm_act_ref
from tolerances import GRAD_TOL, TOL, assert_close_rel

ALPHAS = [-0.5, 0.0, 0.2, 1.5]
pytestmark = pytest.mark.usefixtures("one_thread")


def test_table_says_what_backward_saves():
    lrelu = get_activation("lrelu")
    assert lrelu.saves_for(0.2) == "y" and lrelu.saves_for(0.0) == "y" and lrelu.saves_for(1.5) == "y"
    assert lrelu.saves_for(-0.5) == "x"
    assert get_activation("silu").saves_for(-0.5) == "x" and get_activation("tanh").saves_for(-0.5) == "y"


# -- one function per op: (inputs, run(impl, tensors) -> output) ----------------------------------

def _bias_act_case(alpha, device, dtype, layout="nchw", gain=1.0, clamp=None):
    g = torch.Generator().manual_seed(0)
    b = torch.randn(3, generator=g, dtype=torch.float64)
    x = torch.randn(2, 3, 3, 4, generator=g, dtype=torch.float64)
    x[:, :, 0, 0] = -b[None, :]                      # exactly on the kink: x + b == 0
    x = x.to(device=device, dtype=dtype)
    if layout == "cl":
        x = x.to(memory_format=torch.channels_last)
    b = b.to(device=device, dtype=dtype)

    def run(impl, x, b):
        if impl == "ref64":
            return _bias_act_ref(x, b, 1, "lrelu", alpha, gain, clamp)
        return ops.bias_act(x, b, act="lrelu", alpha=alpha, gain=gain, clamp=clamp, impl=impl)
    return [x, b], run


def _norm_inputs(device, dtype, layout):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 3, 3, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    if layout == "cl":
        x = x.to(memory_format=torch.channels_last)
    w = (1 + 0.3 * torch.randn(4, generator=g, dtype=torch.float64)).to(device=device, dtype=dtype)
    b = (0.3 * torch.randn(4, generator=g, dtype=torch.float64)).to(device=device, dtype=dtype)
    return x, w, b


def _batch_norm_case(alpha, device, dtype, layout="nchw", training=True):
    x, w, b = _norm_inputs(device, dtype, layout)
    g = torch.Generator().manual_seed(2)
    rm = (0.2 * torch.randn(4, generator=g, dtype=torch.float64)).to(device=device, dtype=dtype)
    rv = (1 + torch.rand(4, generator=g, dtype=torch.float64)).to(device=device, dtype=dtype)

    def run(impl, x, w, b):
        # fresh running buffers per call: training updates them in place
        rm_, rv_ = rm.clone().to(x.dtype), rv.clone().to(x.dtype)
        if impl == "ref64":
            return _batch_norm_act_ref(x, w, b, rm_, rv_, training, 0.1, 1e-5, "lrelu", alpha)
        return ops.batch_norm_act(x, w, b, rm_, rv_, training=training, act="lrelu", alpha=alpha, impl=impl)
    return [x, w, b], run


def _instance_norm_case(alpha, device, dtype, layout="nchw"):
    x, w, b = _norm_inputs(device, dtype, layout)

    def run(impl, x, w, b):
        if impl == "ref64":
            return _instance_norm_act_ref(x, w, b, 1e-5, "lrelu", alpha)
        return ops.instance_norm_act(x, w, b, act="lrelu", alpha=alpha, impl=impl)
    return [x, w, b], run


CASES = {
    "bias_act": _bias_act_case,
    "bias_act_gain_clamp": lambda a, d, t, layout="nchw": _bias_act_case(a, d, t, layout, gain=-1.7, clamp=0.8),
    "batch_norm_act_train": _batch_norm_case,
    "batch_norm_act_eval": lambda a, d, t, layout="nchw": _batch_norm_case(a, d, t, layout, training=False),
    "instance_norm_act": _instance_norm_case,
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("op", list(CASES))
def test_first_order_matches_float64_reference(op, alpha, layout, dtype, device):
    inputs, run = CASES[op](alpha, device, dtype, layout)
    ts = [t.detach().clone().requires_grad_() for t in inputs]
    y = run("triton", *ts)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(device)
    grads = torch.autograd.grad(y, ts, dy.to(dtype))
    ds = [t.detach().double().contiguous().requires_grad_() for t in inputs]
    yd = run("ref64", *ds)
    refs = torch.autograd.grad(yd, ds, dy)
    tol, gtol = TOL[dtype], GRAD_TOL[dtype]
    if dtype == torch.float64 and not op.startswith("batch_norm"):
        tol = gtol = 2e-7  # these kernels take alpha (gain, clamp) as fp32 scalars: 0.2, 1.7 are inexact
    assert_close_rel(y, yd, tol, f"{op} y")
    for g, r, name in zip(grads, refs, ("dx", "d1", "d2")):
        assert_close_rel(g, r, gtol, f"{op} alpha={alpha} {name}")
    # impl='ref' at the input dtype agrees too (the same function, not only the same float64 numbers)
    rs = [t.detach().clone().requires_grad_() for t in inputs]
    yr = run("ref", *rs)
    for g, r in zip(grads, torch.autograd.grad(yr, rs, dy.to(dtype))):
        assert_close_rel(g, r, gtol * 2, f"{op} alpha={alpha} triton vs ref")


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("op", list(CASES))
def test_second_order_matches_reference(op, alpha, device):
    """grad with create_graph, a penalty on it, backward again (R1 / WGAN-GP), in float64."""
    inputs, run = CASES[op](alpha, device, torch.float64)
    dy0 = torch.randn(run("ref", *inputs).shape, generator=torch.Generator().manual_seed(6),
                      dtype=torch.float64).to(device)

    def second(impl):
        ts = [t.detach().clone().requires_grad_() for t in inputs]
        dy = dy0.clone().requires_grad_()
        y = run(impl, *ts)
        firsts = torch.autograd.grad(y, ts, dy, create_graph=True)
        penalty = sum(f.square().sum() for f in firsts) + (firsts[0] * ts[0]).sum() + (y * y).sum()
        return torch.autograd.grad(penalty, ts + [dy], allow_unused=True)

    for got, want, name in zip(second("triton"), second("ref"), ["x", "p1", "p2", "dy"][: len(inputs)] + ["dy"]):
        if want is None:
            assert got is None or got.abs().max() == 0, f"{op} d(penalty)/d{name}"
        else:
            tol = GRAD_TOL[torch.float64] if op.startswith("batch_norm") else 2e-7  # fp32 scalars, as above
            assert_close_rel(got, want, tol, f"{op} alpha={alpha} d(penalty)/d{name}")


@pytest.mark.parametrize("alpha", [-0.5, 1.5])
def test_bias_act_gradgradcheck(alpha, device):
    torch.manual_seed(7)
    x = torch.randn(2, 3, 1, 2, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, device=device, requires_grad=True)
    fn = lambda x, b: ops.bias_act(x, b, act="lrelu", alpha=alpha, gain=1.3, impl="triton")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, b), fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (x, b), fast_mode=True)
