"""GPU micro-benchmark of the fused batch norm + affine + activation (``fastgan.ops.batch_norm_act``).

Compares ``impl="triton"`` with the eager reference (``F.batch_norm`` + activation, the way users
write it) and ``torch.compile`` of that reference (Inductor's own Welford split reduction + fused
pointwise), for forward, backward and both, training and eval, NCHW and channels_last, fp32 and
bf16, at DCGAN shapes (batch 256, 64-512 channels, 32×32 down to 4×4) plus one large tensor.
Timings are ``triton.testing.do_bench`` medians (20th/80th percentiles as spread); GB/s is
reported against the device's copy bandwidth measured in the same run
(``torch.empty_like(x).copy_(x)`` on 1 GiB, read + write counted).

Targets (the kernels' design goals; measured here, not asserted anywhere): at DCGAN shapes the
Triton path is ≥ 1.0× ``torch.compile`` of the reference and ≥ 2× eager, forward and backward; on
large tensors it reaches ≥ 80 % of copy bandwidth.

Bytes counted (``bn_bytes``), E = element size, numel = N·C·H·W; per-channel vectors (weight, bias,
mean, rstd, running stats, the split-reduction partials) are < 0.5 % at these shapes and not
counted. They are the passes the fused design makes over the big tensors:

* training forward 3·E·numel: the statistics kernel reads x, the normalize kernel reads x and
  writes y (a batch-wide statistic must be known before any y can be written, so x is read twice
  unless it stays in L2 — small tensors can then show > 100 % of copy bandwidth);
* eval forward 2·E·numel: read x, write y;
* training backward 5·E·numel: the reduction reads x and dy, the dx kernel reads x and dy again
  and writes dx (backward saves x, not y: relu/lrelu outputs do not determine the pre-activation);
* eval backward 3·E·numel: one pass reads x and dy and writes dx;
* forward+backward: the sum.

The ``2nd-order`` rows time an R1-style penalty through the layer alone
(``grad(y², x, create_graph=True)`` then backward of ‖g‖²), where the Triton op's backward falls
back to differentiable torch ops: they say whether a Triton double backward would be worth it.

At the small DCGAN shapes a few µs of GPU work sit behind tens of µs of Python launch overhead
(custom-op dispatch, three Triton launches); fastgan's training step replays CUDA graphs, so
``--cudagraph`` (``triton.testing.do_bench_cudagraph``) is the number the targets refer to there,
and plain launches are reported by default.

Usage: ``python benches/gpu_batch_norm_act.py [--out benches/results/batch_norm_act_<gpu>.json] [--quick]
[--cudagraph]``.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from fastgan.ops import batch_norm_act
from fastgan.ops.norm_act import _batch_norm_act_ref

PHASES = ("fwd", "bwd", "fwd+bwd")
IMPLS = ("triton", "eager", "compile")
DCGAN_SHAPES = [(256, 64, 32, 32), (256, 128, 16, 16), (256, 256, 8, 8), (256, 512, 4, 4)]
LARGE_SHAPE = (256, 64, 64, 64)  # 1 GiB in fp32: far beyond L2


# -- byte counting (CPU-safe) ------------------------------------------------------------------

_PASSES = {
    (True, "fwd"): 3, (True, "bwd"): 5, (True, "fwd+bwd"): 8,
    (False, "fwd"): 2, (False, "bwd"): 3, (False, "fwd+bwd"): 5,
}


def bn_bytes(numel: int, itemsize: int, training: bool, phase: str) -> int:
    """Bytes the fused op moves over the big tensors in ``phase`` (see the module docstring)."""
    key = (bool(training), phase)
    if key not in _PASSES:
        raise ValueError(f"unknown phase {phase!r}; use one of {', '.join(PHASES)}")
    return _PASSES[key] * numel * itemsize


def gbps(nbytes: int, us: float) -> float:
    return nbytes / (us * 1e-6) / 1e9


# -- timing ----------------------------------------------------------------------------------

@dataclass
class Row:
    shape: str
    layout: str
    dtype: str
    mode: str
    phase: str
    impl: str
    median_us: float
    p20_us: float
    p80_us: float
    bytes: int
    gbps: float
    frac_of_copy: float


Timer = Callable[[Callable[[], object]], "tuple[float, float, float]"]


def _bench_us(fn: Callable[[], object]) -> tuple[float, float, float]:
    """(median, p20, p80) in µs of ``fn`` on the current CUDA device."""
    from triton.testing import do_bench

    med, p20, p80 = do_bench(fn, warmup=25, rep=200, quantiles=[0.5, 0.2, 0.8])
    return med * 1e3, p20 * 1e3, p80 * 1e3


def _bench_graph_us(fn: Callable[[], object]) -> tuple[float, float, float]:
    """Like _bench_us, but ``fn`` replayed from a CUDA graph: GPU time without host launch overhead
    (how fastgan's graphed training step runs it)."""
    from triton.testing import do_bench_cudagraph

    fn()  # warm up (compile, autotune caches) outside the capture
    med, p20, p80 = do_bench_cudagraph(fn, rep=100, quantiles=[0.5, 0.2, 0.8])
    return med * 1e3, p20 * 1e3, p80 * 1e3


def copy_bandwidth_gbps(nbytes: int = 1 << 30) -> float:
    """Device copy bandwidth: read + write of a ``nbytes`` tensor, median of do_bench."""
    x = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda").normal_()
    y = torch.empty_like(x)
    us, _, _ = _bench_us(lambda: y.copy_(x))
    return gbps(2 * x.numel() * 4, us)


def _impl_fns(training: bool, act: str, rm: torch.Tensor, rv: torch.Tensor) -> dict[str, Callable]:
    def triton_fn(x, w, b):
        return batch_norm_act(x, w, b, rm, rv, training=training, momentum=0.1, eps=1e-5, act=act, impl="triton")

    def ref_fn(x, w, b):
        return _batch_norm_act_ref(x, w, b, rm, rv, training, 0.1, 1e-5, act, None)

    torch._dynamo.reset()  # a fresh, static-shape compile per case (no recompile limit, no dynamic shapes)
    return {"triton": triton_fn, "eager": ref_fn, "compile": torch.compile(ref_fn, fullgraph=True, dynamic=False)}


def _phase_fns(fn: Callable, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, dy: torch.Tensor):
    """Callables for fwd, bwd (on a retained graph) and fwd+bwd of ``fn(x, w, b)``."""
    inputs = (x, w, b)
    retained: list[torch.Tensor] = []  # built on the first (warm-up) call

    def fwd():
        return fn(x, w, b)

    def bwd():
        if not retained:
            retained.append(fn(x, w, b))
        return torch.autograd.grad(retained[0], inputs, dy, retain_graph=True)

    def both():
        return torch.autograd.grad(fn(x, w, b), inputs, dy)

    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": both}


def _second_order(fn: Callable, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> Callable:
    def step():
        (g,) = torch.autograd.grad(fn(x, w, b).square().sum(), x, create_graph=True)
        return torch.autograd.grad(g.square().sum(), (x, w, b))
    return step


def bench(shapes, dtypes, layouts, modes, act: str, copy_gbps: float, timer: Timer = _bench_us,
          second_order: bool = True) -> list[Row]:
    rows: list[Row] = []
    for shape in shapes:
        for dtype in dtypes:
            for layout in layouts:
                fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
                x = torch.randn(shape, device="cuda", dtype=dtype).to(memory_format=fmt).requires_grad_(True)
                dy = torch.randn_like(x)
                C = shape[1]
                w = torch.rand(C, device="cuda").add_(0.5).requires_grad_(True)
                b = torch.randn(C, device="cuda").requires_grad_(True)
                rm, rv = torch.zeros(C, device="cuda"), torch.ones(C, device="cuda")
                for mode in modes:
                    training = mode == "train"
                    impls = _impl_fns(training, act, rm, rv)
                    for impl in IMPLS:
                        for phase, call in _phase_fns(impls[impl], x, w, b, dy).items():
                            nb = bn_bytes(x.numel(), x.element_size(), training, phase)
                            rows += _row(timer, call, shape, layout, dtype, mode, phase, impl, nb, copy_gbps)
                    if second_order and training and shape == shapes[0]:
                        for impl in ("triton", "eager"):
                            rows += _row(timer, _second_order(impls[impl], x, w, b), shape, layout, dtype, mode,
                                         "2nd-order", impl, 0, copy_gbps)
                del x, dy
    return rows


def _row(timer: Timer, call, shape, layout, dtype, mode, phase, impl, nbytes, copy_gbps) -> list[Row]:
    """Time one case; a case that fails (e.g. a compile error) is reported and skipped."""
    try:
        med, p20, p80 = timer(call)
    except Exception as e:  # noqa: BLE001 - a benchmark reports and goes on
        print(f"skipped {shape}/{layout}/{dtype}/{mode}/{impl}/{phase}: {type(e).__name__}: "
              f"{str(e).splitlines()[0][:120]}", file=sys.stderr)
        return []
    rate = gbps(nbytes, med) if nbytes else float("nan")
    return [Row("x".join(map(str, shape)), layout, str(dtype).removeprefix("torch."), mode, phase, impl,
                med, p20, p80, nbytes, rate, rate / copy_gbps)]


# -- report ----------------------------------------------------------------------------------

def speedups(rows: list[Row]) -> list[dict]:
    """Per case and phase: eager/triton and compile/triton time ratios (> 1 means Triton is faster)."""
    by_key: dict[tuple, dict[str, float]] = {}
    for r in rows:
        by_key.setdefault((r.shape, r.layout, r.dtype, r.mode, r.phase), {})[r.impl] = r.median_us
    out = []
    for (shape, layout, dtype, mode, phase), t in by_key.items():
        if "triton" not in t:
            continue
        out.append({"shape": shape, "layout": layout, "dtype": dtype, "mode": mode, "phase": phase,
                    "vs_eager": t["eager"] / t["triton"] if "eager" in t else None,
                    "vs_compile": t["compile"] / t["triton"] if "compile" in t else None})
    return out


def format_table(rows: list[Row]) -> str:
    head = (f"{'shape':<16}{'layout':<14}{'dtype':<10}{'mode':<6}{'phase':<10}{'impl':<8}"
            f"{'median µs':>10}{'p20':>9}{'p80':>9}{'GB/s':>9}{'% copy':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.shape:<16}{r.layout:<14}{r.dtype:<10}{r.mode:<6}{r.phase:<10}{r.impl:<8}"
                     f"{r.median_us:>10.1f}{r.p20_us:>9.1f}{r.p80_us:>9.1f}{r.gbps:>9.1f}{100 * r.frac_of_copy:>7.1f}%")
    return "\n".join(lines)


def format_speedups(sp: list[dict]) -> str:
    head = f"{'shape':<16}{'layout':<14}{'dtype':<10}{'mode':<6}{'phase':<10}{'vs eager':>10}{'vs compile':>12}"
    lines = [head, "-" * len(head)]
    for s in sp:
        fmt = lambda v: f"{v:.2f}x" if v is not None else "-"  # noqa: E731
        lines.append(f"{s['shape']:<16}{s['layout']:<14}{s['dtype']:<10}{s['mode']:<6}{s['phase']:<10}"
                     f"{fmt(s['vs_eager']):>10}{fmt(s['vs_compile']):>12}")
    return "\n".join(lines)


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="write the results as JSON here (e.g. benches/results/batch_norm_act_h100.json)")
    p.add_argument("--quick", action="store_true", help="bf16, channels_last, training, two shapes")
    p.add_argument("--act", default="lrelu", help="activation fused after the norm (default lrelu)")
    p.add_argument("--cudagraph", action="store_true",
                   help="time CUDA-graph replays (GPU time only, as in fastgan's graphed step) instead of launches")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_batch_norm_act: needs a CUDA device", file=sys.stderr)
        return 2
    import triton

    copy = copy_bandwidth_gbps()
    timer = _bench_graph_us if args.cudagraph else _bench_us
    if args.quick:
        rows = bench([DCGAN_SHAPES[0], DCGAN_SHAPES[-1]], [torch.bfloat16], ["channels_last"], ["train"], args.act,
                     copy, timer, second_order=not args.cudagraph)
    else:
        rows = bench(DCGAN_SHAPES + [LARGE_SHAPE], [torch.float32, torch.bfloat16], ["nchw", "channels_last"],
                     ["train", "eval"], args.act, copy, timer, second_order=not args.cudagraph)
    sp = speedups(rows)
    print(f"device: {torch.cuda.get_device_name()}   copy bandwidth: {copy:.0f} GB/s   act: {args.act}   "
          f"timer: {'CUDA graph replay' if args.cudagraph else 'launches'}")
    print(format_table(rows))
    print()
    print(format_speedups(sp))
    if args.out:
        meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
                "python": platform.python_version(), "commit": _commit(), "copy_gbps": copy, "act": args.act,
                "timer": ("triton.testing.do_bench_cudagraph" if args.cudagraph else "triton.testing.do_bench")
                + " median (p20/p80 spread), µs"}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows], "speedups": sp}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
