"""pytest-benchmark suite for ``bias_act``, ``instance_norm_act`` and ``pixel_norm`` (forward + backward).

Runs anywhere: the eager reference and ``torch.compile`` of the reference always; the Triton
path only with CUDA (under the CPU interpreter its timings would mean nothing). The
GB/s-vs-copy-bandwidth report and its targets live in ``benches/gpu_norm_misc.py``.

    pytest benches/test_bench_norm_misc.py --benchmark-only
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from fastgan.ops import bias_act, instance_norm_act, pixel_norm
from fastgan.ops.bias_act import _bias_act_ref
from fastgan.ops.norm_act import _instance_norm_act_ref, _pixel_norm_ref

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_norm_misc import LARGE, SHAPES, op_bytes  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
IMPLS = ["eager", "compile"] + (["triton"] if CUDA else [])
# GPU: a DCGAN-sized and a pix2pix-sized case per op; CPU: small enough to keep a run short.
CASES = {
    "bias_act": [(256, 512, 4, 4), (256, 64, 32, 32)] if CUDA else [(16, 64, 8, 8), (64, 512)],
    "instance_norm_act": [(256, 512, 4, 4), (1, 64, 256, 256)] if CUDA else [(16, 64, 8, 8), (1, 16, 64, 64)],
    "pixel_norm": [(256, 512), (64, 256, 32, 32)] if CUDA else [(64, 512), (8, 64, 16, 16)],
}


def _sync():
    if CUDA:
        torch.cuda.synchronize()


def _setup(op: str, shape, layout: str):
    """(triton fn, reference fn, inputs) for one case."""
    x = torch.randn(shape, device=DEVICE)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    C = shape[1]
    if op == "bias_act":
        b = torch.randn(C, device=DEVICE, requires_grad=True)
        return (lambda x, b: bias_act(x, b, act="lrelu", impl="triton"),
                lambda x, b: _bias_act_ref(x, b, 1, "lrelu", None, 1.0, None), (x, b))
    if op == "instance_norm_act":
        w = torch.ones(C, device=DEVICE, requires_grad=True)
        b = torch.zeros(C, device=DEVICE, requires_grad=True)
        return (lambda x, w, b: instance_norm_act(x, w, b, act="lrelu", impl="triton"),
                lambda x, w, b: _instance_norm_act_ref(x, w, b, 1e-5, "lrelu", None), (x, w, b))
    return (lambda x: pixel_norm(x, impl="triton"), lambda x: _pixel_norm_ref(x, 1e-8), (x,))


def _params():
    for op, shapes in CASES.items():
        for shape in shapes:
            for layout in (["nchw", "channels_last"] if len(shape) == 4 else ["nchw"]):
                for impl in IMPLS:
                    yield pytest.param(op, shape, layout, impl, id=f"{op}-{'x'.join(map(str, shape))}-{layout}-{impl}")


@pytest.mark.parametrize("op,shape,layout,impl", list(_params()))
def test_bench_fwd_bwd(benchmark, op, shape, layout, impl):
    triton_fn, ref, inputs = _setup(op, shape, layout)
    if impl == "compile":
        torch._dynamo.reset()  # a fresh static-shape compile per benchmark (cases share the refs' code objects)
        fn = torch.compile(ref, fullgraph=True, dynamic=False)
    else:
        fn = {"triton": triton_fn, "eager": ref}[impl]
    dy = torch.randn_like(inputs[0])

    def step():
        out = torch.autograd.grad(fn(*inputs), inputs, dy)
        _sync()
        return out

    step()  # compile / warm up outside the measurement
    benchmark.extra_info.update(op=op, impl=impl, shape=list(shape), layout=layout, device=DEVICE,
                                bytes=op_bytes(inputs[0].numel(), inputs[0].element_size(), "fwd+bwd"))
    benchmark(step)


def test_byte_model():
    """The GPU report's byte counts (CPU-safe): 2 passes forward, 3 backward, 5 both."""
    n = 256 * 64 * 32 * 32
    assert op_bytes(n, 4, "fwd") == 2 * n * 4
    assert op_bytes(n, 2, "bwd") == 3 * n * 2
    assert op_bytes(n, 2, "fwd+bwd") == 5 * n * 2
    assert LARGE in SHAPES["bias_act"] and 4 * torch.Size(LARGE).numel() == 1 << 28
    with pytest.raises(ValueError):
        op_bytes(n, 4, "sideways")
