"""pytest-benchmark suite for the GAN losses and gradient penalties (forward + backward).

Runs anywhere: the eager reference and ``torch.compile`` of the reference always; the Triton
path only with CUDA (under the CPU interpreter its timings would mean nothing). The
GB/s-vs-copy-bandwidth report lives in ``benches/gpu_losses.py``.

    pytest benches/test_bench_losses.py --benchmark-only
"""
from __future__ import annotations

import pytest
import torch

from fastgan import ops
from fastgan.ops.losses import _d_loss_ref
from fastgan.ops.penalties import _grad_penalty_ref

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
IMPLS = ["eager", "compile"] + (["triton"] if CUDA else [])
# GPU: training sizes; CPU: small enough to keep a run short.
LOGITS = [(256,), (256, 1, 30, 30)] if CUDA else [(256,), (16, 1, 30, 30)]
GRADS = (256, 3, 64, 64) if CUDA else (16, 3, 64, 64)


def _sync():
    if CUDA:
        torch.cuda.synchronize()


def _fn(impl: str, ref, triton_fn):
    if impl == "triton":
        return triton_fn
    if impl == "compile":
        torch._dynamo.reset()  # one fresh static-shape compile per benchmark (no dynamic-shape recompiles)
        return torch.compile(ref, fullgraph=True, dynamic=False)
    return ref


@pytest.mark.parametrize("shape", LOGITS, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("impl", IMPLS)
def test_bench_d_loss_fwd_bwd(benchmark, impl, shape):
    real = torch.randn(shape, device=DEVICE).add_(1).requires_grad_(True)
    fake = torch.randn(shape, device=DEVICE).sub_(1).requires_grad_(True)
    fn = _fn(impl, lambda r, f: _d_loss_ref(r, f, "nonsat", 0.1),
             lambda r, f: ops.d_loss(r, f, "nonsat", smooth=0.1, impl="triton"))

    def step():
        out = torch.autograd.grad(fn(real, fake), (real, fake))
        _sync()
        return out

    step()  # compile / warm up outside the measurement
    benchmark.extra_info.update(impl=impl, shape=list(shape), device=DEVICE)
    benchmark(step)


@pytest.mark.parametrize("kind", ops.PENALTIES)
@pytest.mark.parametrize("impl", IMPLS)
def test_bench_grad_penalty_fwd_bwd(benchmark, impl, kind):
    grads = (torch.randn(GRADS, device=DEVICE) / (3 * 64 * 64) ** 0.5).requires_grad_(True)
    fn = _fn(impl, lambda g: _grad_penalty_ref(g, kind, 1.0), lambda g: ops.grad_penalty(g, kind, impl="triton"))

    def step():
        out = torch.autograd.grad(fn(grads), grads)
        _sync()
        return out

    step()
    benchmark.extra_info.update(impl=impl, shape=list(GRADS), device=DEVICE)
    benchmark(step)
