"""The eager route of every fused op (autograd.Function over the launchers, no torch.library
dispatch) computes exactly what the torch.library op route computes — outputs, running
statistics, first- and second-order gradients — and traced calls take the op route.

``fastgan.ops._impl.eager_twin`` picks the route per call with ``tracing(...)``; forcing it to
True here sends eager calls through the custom ops, as torch.compile's traces do.
"""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from fastgan import ops
from fastgan.ops import _impl

pytestmark = pytest.mark.usefixtures("one_thread")


def _bn(x, w, b, state):
    return ops.batch_norm_act(x, w, b, state["rm"], state["rv"], training=True, act="lrelu", impl="triton")


def _bn_eval(x, w, b, state):
    return ops.batch_norm_act(x, w, b, state["rm"], state["rv"], training=False, act="silu", impl="triton")


OPS = {
    "batch_norm_act": _bn,
    "batch_norm_act-eval": _bn_eval,
    "instance_norm_act": lambda x, w, b, s: ops.instance_norm_act(x, w, b, act="tanh", impl="triton"),
    "pixel_norm": lambda x, w, b, s: ops.pixel_norm(x, impl="triton") * w.view(1, -1, 1, 1),
    "bias_act-tanh-gain-clamp": lambda x, w, b, s: ops.bias_act(x, b, act="tanh", gain=1.5, clamp=1.2, impl="triton"),
    "d_loss": lambda x, w, b, s: ops.d_loss(x.flatten(1) @ w, x.flatten(1) @ b, "nonsat", impl="triton"),
    "g_loss": lambda x, w, b, s: ops.g_loss(x.flatten(1) @ w, "hinge", impl="triton"),
    "grad_penalty": lambda x, w, b, s: ops.grad_penalty(x * w.view(1, -1, 1, 1), "wgan-gp", impl="triton"),
}


def _run(name, device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 3, 5, generator=g).to(device).requires_grad_(True)
    w = (1 + 0.3 * torch.randn(4, generator=g)).to(device).requires_grad_(True)
    b = (0.3 * torch.randn(4, generator=g)).to(device).requires_grad_(True)
    if name in ("d_loss", "g_loss"):
        w, b = (torch.randn(60, generator=g).to(device).requires_grad_(True) for _ in range(2))
    state = {"rm": torch.linspace(-0.5, 0.5, 4, device=device), "rv": torch.linspace(0.5, 2.0, 4, device=device)}
    h = OPS[name](x, w, b, state)
    out = h.sum() if h.ndim == 0 else (h.square() * torch.linspace(0.5, 1.5, h.shape[-1], device=device)).sum()
    (gx,) = torch.autograd.grad(out, x, create_graph=True)
    loss = gx.square().sum() + h.float().mean()
    grads = torch.autograd.grad(loss, [x, w, b], allow_unused=True)
    return [h.detach(), out.detach(), gx.detach(), state["rm"], state["rv"]] + [
        t if t is None else t.detach() for t in grads]


@pytest.mark.parametrize("name", list(OPS))
def test_eager_route_equals_op_route(name, device, monkeypatch):
    direct = _run(name, device)
    monkeypatch.setattr(_impl, "tracing", lambda *args: True)
    via_op = _run(name, device)
    for k, (a, b) in enumerate(zip(direct, via_op)):
        assert (a is None) == (b is None), f"{name}: result {k}"
        if a is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"{name}: result {k}")


def test_tracing_detects_traces():
    x = torch.randn(2, 3)
    assert not _impl.tracing(x, None, 1.0)
    assert not _impl.tracing(torch.nn.Parameter(x))
    with FakeTensorMode() as mode:
        fx = mode.from_tensor(x)
        assert _impl.tracing(fx)
    seen = []

    @torch.compile(backend="eager", fullgraph=True)
    def f(t):
        seen.append(_impl.tracing(t))
        return t + 1

    f(x)
    assert seen == [True]


def test_eager_calls_skip_the_dispatcher(monkeypatch):
    """The profiler sees fastgan:: ops only on the op route (the eager route calls the launchers)."""
    def op_names():
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            _run("batch_norm_act", "cpu")
        return {e.name for e in prof.events() if e.name.startswith("fastgan::")}

    assert op_names() == set()
    monkeypatch.setattr(_impl, "tracing", lambda *args: True)
    assert {"fastgan::batch_norm_act", "fastgan::batch_norm_act_stats", "fastgan::batch_norm_act_bwd"} <= op_names()


def test_running_stats_written_in_place_bump_their_version():
    """As a mutating custom op would: autograd must see that the kernel wrote the buffers."""
    rm, rv = torch.zeros(3), torch.ones(3)
    v_mean, v_var = rm._version, rv._version
    ops.batch_norm_act(torch.randn(4, 3, 2, 2), None, None, rm, rv, training=True, impl="triton")
    assert rm._version > v_mean and rv._version > v_var
    with torch.inference_mode():  # inference tensors have no version counter: no error
        rm_i, rv_i = torch.zeros(3), torch.ones(3)
        ops.batch_norm_act(torch.randn(4, 3, 2, 2), None, None, rm_i, rv_i, training=True, impl="triton")
    assert rm_i.abs().sum() > 0


def test_functorch_and_jit_trace_take_the_op_route():
    """Batched tensors (vmap, is_grads_batched) look like plain tensors but have no storage for a
    kernel: they must reach the op, whose vmap fallback handles them; jit.trace records the op."""
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    y = ops.pixel_norm(x, impl="triton")
    v = torch.randn(3, *y.shape)
    (batched,) = torch.autograd.grad(y, x, v, is_grads_batched=True)
    for k in range(3):
        (one,) = torch.autograd.grad(ops.pixel_norm(x, impl="triton"), x, v[k])
        torch.testing.assert_close(batched[k], one)
    xs = torch.randn(5, 2, 3, 4, 4)
    out = torch.vmap(lambda t: ops.bias_act(t, None, act="lrelu", impl="triton"))(xs)
    torch.testing.assert_close(out, ops.bias_act(xs, None, act="lrelu", impl="triton"))
    traced = torch.jit.trace(lambda t: ops.pixel_norm(t, impl="triton"), (torch.randn(2, 3, 4, 4),))
    assert "fastgan::pixel_norm" in str(traced.graph)
    t = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(traced(t), ops.pixel_norm(t, impl="triton"))
