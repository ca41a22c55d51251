"""pytest-benchmark suite for ``fastgan.ops.batch_norm_act`` (training, forward + backward).

Runs anywhere: the eager reference and ``torch.compile`` of the reference always; the Triton
path only with CUDA (under the CPU interpreter its timings would mean nothing). The GB/s-vs-copy
bandwidth report with the ≥1× compile / ≥2× eager / ≥80 % copy targets lives in
``benches/gpu_batch_norm_act.py``.

    pytest benches/test_bench_batch_norm_act.py --benchmark-only
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from fastgan.ops import batch_norm_act
from fastgan.ops.norm_act import _batch_norm_act_ref

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_batch_norm_act import bn_bytes  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
IMPLS = ["eager", "compile"] + (["triton"] if CUDA else [])
# GPU: DCGAN sizes; CPU: small enough to keep a run short.
SHAPES = [(256, 64, 32, 32), (256, 512, 4, 4)] if CUDA else [(16, 64, 16, 16), (16, 256, 4, 4)]


def _sync():
    if CUDA:
        torch.cuda.synchronize()


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("impl", IMPLS)
def test_bench_batch_norm_act_fwd_bwd(benchmark, impl, shape, layout):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(shape, device=DEVICE).to(memory_format=fmt).requires_grad_(True)
    C = shape[1]
    w = torch.ones(C, device=DEVICE, requires_grad=True)
    b = torch.zeros(C, device=DEVICE, requires_grad=True)
    rm, rv = torch.zeros(C, device=DEVICE), torch.ones(C, device=DEVICE)
    dy = torch.randn_like(x)

    def ref(x, w, b):
        return _batch_norm_act_ref(x, w, b, rm, rv, True, 0.1, 1e-5, "lrelu", None)

    if impl == "triton":
        fn = lambda x, w, b: batch_norm_act(x, w, b, rm, rv, training=True, act="lrelu", impl="triton")  # noqa: E731
    elif impl == "compile":
        torch._dynamo.reset()  # a fresh static-shape compile per benchmark: `ref` is one code object for every case
        fn = torch.compile(ref, fullgraph=True, dynamic=False)
    else:
        fn = ref

    def step():
        out = torch.autograd.grad(fn(x, w, b), (x, w, b), dy)
        _sync()
        return out

    step()  # compile / warm up outside the measurement
    benchmark.extra_info.update(impl=impl, shape=list(shape), layout=layout, device=DEVICE,
                                bytes=bn_bytes(x.numel(), x.element_size(), True, "fwd+bwd"))
    benchmark(step)


def test_byte_model():
    """The GPU report's byte counts (CPU-safe): 3/5 passes in training, 2/3 in eval."""
    n = 256 * 64 * 32 * 32
    assert bn_bytes(n, 4, True, "fwd") == 3 * n * 4
    assert bn_bytes(n, 2, True, "bwd") == 5 * n * 2
    assert bn_bytes(n, 2, True, "fwd+bwd") == 8 * n * 2
    assert bn_bytes(n, 4, False, "fwd") == 2 * n * 4
    assert bn_bytes(n, 4, False, "bwd") == 3 * n * 4
    assert bn_bytes(n, 4, False, "fwd+bwd") == 5 * n * 4
    with pytest.raises(ValueError):
        bn_bytes(n, 4, True, "sideways")


def test_report_logic():
    """Speed-up ratios and the table come out of rows without a GPU."""
    from gpu_batch_norm_act import Row, format_speedups, format_table, speedups

    rows = [Row("256x64x4x4", "nchw", "bfloat16", "train", "fwd", impl, us, us, us, 100, 1.0, 0.5)
            for impl, us in (("triton", 5.0), ("eager", 20.0), ("compile", 6.0))]
    (sp,) = speedups(rows)
    assert sp["vs_eager"] == 4.0 and sp["vs_compile"] == 1.2
    assert "triton" in format_table(rows) and "4.00x" in format_speedups([sp])
