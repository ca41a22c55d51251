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
from tests.tolerances import GRAD_TOL, TOL, assert_close_rel

pytestmark = pytest.mark.usefixtures("one_thread")

OPS = {
    "batch_norm_act": (lambda x, w, b, impl: ops.batch_norm_act(x, w, b, None, None, act="lrelu", impl=impl), True),
    "instance_norm_act": (lambda x, w, b, impl: ops.instance_norm_act(x, w, b, act="tanh", impl=impl), True),
    "pixel_norm": (lambda x, w, b, impl: ops.pixel_norm(x, impl=impl), False),
    "bias_act": (lambda x, w, b, impl: ops.bias_act(x, b, act="lrelu", impl=impl), True),
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
