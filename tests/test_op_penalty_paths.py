"""Penalty-shaped double backward through every fused op, where the upstream gradient depends on x.

gradgradcheck treats the first backward's ``dy`` as an independent input. In a real penalty
(WGAN-GP, R1) it is not: ``dy`` is the gradient of D's output flowing back through the layers after
this one, a function of this layer's output, so the second-order path must take partial derivatives
(w.r.t. ``dy`` and ``x`` separately) or it counts paths twice. Here the fused op sits inside a tiny
"critic" ``h = op(x)``, ``out = sum(c * h**2)``; the penalty is ``‖∂out/∂x‖²`` plus ``mean(h)`` and
every gradient of it is compared with the torch reference in float64.
"""
import pytest
import torch

from fastgan import ops
from tolerances import GRAD_TOL, TOL, assert_close_rel

pytestmark = pytest.mark.usefixtures("one_thread")

def _bn_eval(x, w, b, impl):
    rm = torch.linspace(-0.5, 0.5, 4, dtype=x.dtype, device=x.device)
    rv = torch.linspace(0.5, 2.0, 4, dtype=x.dtype, device=x.device)
    return ops.batch_norm_act(x, w, b, rm, rv, training=False, act="silu", impl=impl)


OPS = {
    "batch_norm_act": (lambda x, w, b, impl: ops.batch_norm_act(x, w, b, None, None, act="lrelu", impl=impl), True),
    "batch_norm_act-eval": (_bn_eval, True),
    "instance_norm_act": (lambda x, w, b, impl: ops.instance_norm_act(x, w, b, act="tanh", impl=impl), True),
    "pixel_norm": (lambda x, w, b, impl: ops.pixel_norm(x, impl=impl), False),
    "bias_act": (lambda x, w, b, impl: ops.bias_act(x, b, act="lrelu", impl=impl), True),
    "bias_act-tanh": (lambda x, w, b, impl: ops.bias_act(x, b, act="tanh", impl=impl), True),
    "bias_act-silu-gain-clamp": (
        lambda x, w, b, impl: ops.bias_act(x, b, act="silu", gain=1.5, clamp=1.2, impl=impl), True),
}


@pytest.mark.parametrize("name", list(OPS))
def test_penalty_through_op_matches_reference(name, device):
    fn, has_params = OPS[name]
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, 3, 5, generator=g)
    w0, b0 = 1 + 0.3 * torch.randn(4, generator=g), 0.3 * torch.randn(4, generator=g)
    c = torch.randn(1, 4, 3, 5, generator=g)

    def run(impl, dtype):
        x = x0.to(device, dtype).requires_grad_(True)
        w = w0.to(device, dtype).requires_grad_(True)
        b = b0.to(device, dtype).requires_grad_(True)
        h = fn(x, w, b, impl)
        out = (c.to(device, dtype) * h.square()).sum()
        (gx,) = torch.autograd.grad(out, x, create_graph=True)
        loss = gx.square().sum() + h.mean()
        leaves = [x, w, b] if has_params else [x]
        return [loss] + list(torch.autograd.grad(loss, leaves, allow_unused=True))

    fast = run("triton", torch.float32)
    ref = run("ref", torch.float64)
    assert_close_rel(fast[0], ref[0], TOL[torch.float32] * 10, f"{name} penalty")
    for k, (f, r) in enumerate(zip(fast[1:], ref[1:])):
        if r is None:
            assert f is None or not f.abs().any(), f"{name} grad {k} should be zero"
            continue
        assert_close_rel(f, r, GRAD_TOL[torch.float32] * 10, f"{name} grad {['x', 'w', 'b'][k]}")


@pytest.mark.parametrize("name", ["instance_norm_act", "pixel_norm", "bias_act-tanh", "batch_norm_act-eval"])
def test_third_order_through_op_matches_reference(name, device):
    """The second-order result stays differentiable: a gradient of the penalty's gradient norm."""
    fn, _ = OPS[name]
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 4, 3, 3, generator=g)
    w0, b0 = 1 + 0.3 * torch.randn(4, generator=g), 0.3 * torch.randn(4, generator=g)

    def run(impl, dtype):
        x = x0.to(device, dtype).requires_grad_(True)
        w, b = w0.to(device, dtype), b0.to(device, dtype)
        h = fn(x, w, b, impl)
        (gx,) = torch.autograd.grad((h.square() * h).sum(), x, create_graph=True)
        (ggx,) = torch.autograd.grad(gx.square().sum(), x, create_graph=True)
        return torch.autograd.grad(ggx.square().sum(), x)[0]

    assert_close_rel(run("triton", torch.float32), run("ref", torch.float64), GRAD_TOL[torch.float32] * 20,
                     f"{name} third order")
