"""Host-side cost of one fused-op call, with the Triton kernels stubbed out (no GPU needed).

On a GPU an op's wall time in a loop that is not CUDA-graphed is max(GPU time, host time): the
host time is the Python between the call and the kernel launches (argument checks, tiling,
allocations, torch.library dispatch) plus Triton's launch itself. This measures the first part
on any machine by replacing every @triton.jit kernel of the op's module with a no-op launcher,
for the eager route (autograd.Function over the launchers) and the torch.library op route
(what torch.compile traces), so the two can be compared:

    python benches/host_overhead.py
"""
from __future__ import annotations

import os
import statistics
import time

os.environ.setdefault("TRITON_INTERPRET", "1")   # import triton without a GPU

import torch  # noqa: E402

from fastgan import ops  # noqa: E402
from fastgan.ops import _impl  # noqa: E402


class _NoLaunch:
    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def _stub_kernels() -> None:
    import triton

    from fastgan.ops import (_batch_norm_triton, _bias_act_triton, _instance_norm_triton, _loss_triton,
                             _penalty_triton, _pixel_norm_triton)
    for mod in (_batch_norm_triton, _bias_act_triton, _instance_norm_triton, _pixel_norm_triton, _loss_triton,
                _penalty_triton):
        for k, v in list(vars(mod).items()):
            if isinstance(v, triton.runtime.jit.JITFunction) or type(v).__name__ in ("JITFunction", "InterpretedFunction"):
                setattr(mod, k, _NoLaunch())


def _time(fn, n=300, repeats=9) -> tuple[float, float]:
    """(min, median) µs per call over ``repeats`` runs of ``n`` calls. The min is the figure to compare
    (as timeit reports it): other work on a small machine only ever adds time, and on a busy 2-core box
    medians of whole-op timings moved ±50% between runs."""
    for _ in range(20):
        fn()
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - t) / n * 1e6)
    return min(runs), statistics.median(runs)


def main() -> None:
    _stub_kernels()
    # requires_grad as in training: the autograd wrapper is part of the cost
    x = torch.randn(256, 512, 4, 4).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    w, b = torch.ones(512, requires_grad=True), torch.zeros(512, requires_grad=True)
    rm, rv = torch.zeros(512), torch.ones(512)
    logits = torch.randn(256, requires_grad=True)
    calls = {
        "batch_norm_act (train, fwd)": lambda: ops.batch_norm_act(x, w, b, rm, rv, act="relu", impl="triton"),
        "instance_norm_act (fwd)": lambda: ops.instance_norm_act(x, w, b, act="lrelu", impl="triton"),
        "bias_act (fwd)": lambda: ops.bias_act(x, b, act="lrelu", impl="triton"),
        "pixel_norm (fwd)": lambda: ops.pixel_norm(x, impl="triton"),
        "d_loss (fwd)": lambda: ops.d_loss(logits, logits, "nonsat", impl="triton"),
    }
    print(f"host µs per call, kernels stubbed (torch {torch.__version__}, {os.cpu_count()} CPUs)")
    print(f"{'op':30s} {'eager route min/median':>24s} {'op route min/median':>22s}")
    real_tracing = _impl.tracing
    for name, fn in calls.items():
        _impl.tracing = real_tracing
        direct = _time(fn)
        _impl.tracing = lambda *a: True
        via_op = _time(fn)
        print(f"{name:30s} {direct[0]:12.1f} / {direct[1]:9.1f} {via_op[0]:10.1f} / {via_op[1]:9.1f}")
    _impl.tracing = real_tracing


if __name__ == "__main__":
    main()
