"""GPU micro-benchmark of ``bias_act``, ``instance_norm_act`` and ``pixel_norm``.

Each op's ``impl="triton"`` path is compared with its eager reference (the torch ops users write:
``x + b`` then the activation; ``F.instance_norm`` then the activation; ``x * rsqrt(mean(x²))``)
and with ``torch.compile`` of that reference (Inductor fuses the pointwise ops and writes its own
reductions), for forward, backward and both, NCHW and channels_last, fp32 and bf16. Timings are
``triton.testing.do_bench`` medians (20th/80th percentiles as spread). GB/s is computed from the
bytes the op *must* move and reported as a fraction of the device's copy bandwidth measured in
the same run (``torch.empty_like(x).copy_(x)`` on 1 GiB, read + write counted).

Targets (design goals; measured here, never asserted in a test):

* large tensors (``LARGE``, 256 MiB in fp32, far beyond L2): ≥ 80 % of copy bandwidth, forward
  and backward, for all three ops;
* DCGAN / pix2pix shapes: faster than ``torch.compile`` of the reference (and than eager).

Bytes counted (``op_bytes``; E = element size, numel = elements of x; per-channel vectors and
split-reduction partials are < 0.5 % here and not counted) — the minimum any implementation moves:

* forward 2·E·numel: read x, write y (bias_act, instance norm, pixel norm alike);
* backward 3·E·numel: read dy, read the one saved activation-sized tensor (y for bias_act with
  linear..sigmoid, x otherwise), write dx;
* forward+backward: 5·E·numel.

Instance norm reaches that minimum on its one-tile path (a plane of ``BLOCK_C`` channels fits one
tile: DCGAN sizes); larger planes read x (and dy) a second time, from L2 when the chunk is small,
so the fraction of copy bandwidth shows what that second read costs.

The ``2nd-order`` rows time an R1-style penalty through the op alone
(``grad(y², x, create_graph=True)`` then backward of ‖g‖²): bias_act's double backward reuses its
Triton grad kernel, instance norm's and pixel norm's go through differentiable torch ops — these
rows say whether a Triton double backward would be worth writing.

At GAN sizes a few µs of GPU work sit behind tens of µs of host launch overhead; fastgan's
training step replays CUDA graphs, so ``--cudagraph`` (``do_bench_cudagraph``) gives the number the
targets refer to at small shapes.

Usage: ``python benches/gpu_norm_misc.py [--out benches/results/norm_misc_<gpu>.json] [--quick]
[--cudagraph] [--ops bias_act,instance_norm_act,pixel_norm]``.
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

from fastgan.ops import bias_act, instance_norm_act, pixel_norm
from fastgan.ops.bias_act import _bias_act_ref
from fastgan.ops.norm_act import _instance_norm_act_ref, _pixel_norm_ref

PHASES = ("fwd", "bwd", "fwd+bwd")
IMPLS = ("triton", "eager", "compile")
LARGE = (256, 64, 64, 64)  # 2^28 bytes in fp32
SHAPES = {
    # DCGAN discriminator activations (bias + lrelu), the mapping network, one large tensor.
    "bias_act": [(256, 64, 32, 32), (256, 128, 16, 16), (256, 256, 8, 8), (256, 512, 4, 4), (256, 512), LARGE],
    # pix2pix / CycleGAN generators at batch 1-4 (large planes: the split path), DCGAN-sized critics.
    "instance_norm_act": [(1, 64, 256, 256), (1, 256, 64, 64), (4, 128, 128, 128), (256, 64, 32, 32),
                          (256, 512, 4, 4), LARGE],
    # StyleGAN mapping (N, C), ProGAN feature maps.
    "pixel_norm": [(256, 512), (64, 512, 4, 4), (64, 256, 32, 32), (16, 64, 128, 128), LARGE],
}


# -- byte counting (CPU-safe) ------------------------------------------------------------------

_PASSES = {"fwd": 2, "bwd": 3, "fwd+bwd": 5}


def op_bytes(numel: int, itemsize: int, phase: str) -> int:
    """Bytes the op must move over activation-sized tensors in ``phase`` (see the docstring)."""
    if phase not in _PASSES:
        raise ValueError(f"unknown phase {phase!r}; use one of {', '.join(PHASES)}")
    return _PASSES[phase] * numel * itemsize


def gbps(nbytes: int, us: float) -> float:
    return nbytes / (us * 1e-6) / 1e9


# -- the ops under test ------------------------------------------------------------------------

@dataclass(frozen=True)
class OpCase:
    """``make(shape, dtype, layout) -> (inputs, dy)``; ``triton``/``ref`` take the inputs."""

    name: str
    make: Callable[[tuple, torch.dtype, str], tuple[tuple[torch.Tensor, ...], torch.Tensor]]
    triton: Callable[..., torch.Tensor]
    ref: Callable[..., torch.Tensor]


def _x(shape, dtype, layout) -> torch.Tensor:
    x = torch.randn(shape, device="cuda", dtype=dtype)
    if layout == "channels_last" and x.ndim == 4:
        x = x.to(memory_format=torch.channels_last)
    return x.requires_grad_(True)


def _make_bias_act(shape, dtype, layout):
    x = _x(shape, dtype, layout)
    b = torch.randn(shape[1], device="cuda", dtype=dtype, requires_grad=True)
    return (x, b), torch.randn_like(x)


def _make_instance_norm(shape, dtype, layout):
    x = _x(shape, dtype, layout)
    w = torch.rand(shape[1], device="cuda").add_(0.5).requires_grad_(True)
    b = torch.randn(shape[1], device="cuda", requires_grad=True)
    return (x, w, b), torch.randn_like(x)


def _make_pixel_norm(shape, dtype, layout):
    x = _x(shape, dtype, layout)
    return (x,), torch.randn_like(x)


def op_cases(act: str) -> dict[str, OpCase]:
    return {
        "bias_act": OpCase(
            "bias_act", _make_bias_act,
            lambda x, b: bias_act(x, b, act=act, gain=2 ** 0.5, impl="triton"),
            lambda x, b: _bias_act_ref(x, b, 1, act, None, 2 ** 0.5, None)),
        "instance_norm_act": OpCase(
            "instance_norm_act", _make_instance_norm,
            lambda x, w, b: instance_norm_act(x, w, b, act=act, impl="triton"),
            lambda x, w, b: _instance_norm_act_ref(x, w, b, 1e-5, act, None)),
        "pixel_norm": OpCase(
            "pixel_norm", _make_pixel_norm,
            lambda x: pixel_norm(x, impl="triton"),
            lambda x: _pixel_norm_ref(x, 1e-8)),
    }


# -- timing ------------------------------------------------------------------------------------

@dataclass
class Row:
    op: str
    shape: str
    layout: str
    dtype: str
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
    """Like _bench_us with ``fn`` replayed from a CUDA graph (GPU time without launch overhead)."""
    from triton.testing import do_bench_cudagraph

    fn()  # warm up (compile caches) outside the capture
    med, p20, p80 = do_bench_cudagraph(fn, rep=100, quantiles=[0.5, 0.2, 0.8])
    return med * 1e3, p20 * 1e3, p80 * 1e3


def copy_bandwidth_gbps(nbytes: int = 1 << 30) -> float:
    """Device copy bandwidth: read + write of a ``nbytes`` tensor, median of do_bench."""
    x = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda").normal_()
    y = torch.empty_like(x)
    us, _, _ = _bench_us(lambda: y.copy_(x))
    return gbps(2 * x.numel() * 4, us)


def _phase_fns(fn: Callable, inputs: tuple[torch.Tensor, ...], dy: torch.Tensor) -> dict[str, Callable]:
    """Callables for fwd, bwd (on a retained graph) and fwd+bwd of ``fn(*inputs)``."""
    retained: list[torch.Tensor] = []  # built on the first (warm-up) call

    def fwd():
        return fn(*inputs)

    def bwd():
        if not retained:
            retained.append(fn(*inputs))
        return torch.autograd.grad(retained[0], inputs, dy, retain_graph=True)

    def both():
        return torch.autograd.grad(fn(*inputs), inputs, dy)

    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": both}


def _second_order(fn: Callable, inputs: tuple[torch.Tensor, ...]) -> Callable:
    def step():
        (g,) = torch.autograd.grad(fn(*inputs).square().sum(), inputs[0], create_graph=True)
        return torch.autograd.grad(g.square().sum(), inputs)
    return step


def _row(timer: Timer, call, op, shape, layout, dtype, phase, impl, nbytes, copy_gbps) -> list[Row]:
    """Time one case; a case that fails (e.g. a compile error) is reported and skipped."""
    try:
        med, p20, p80 = timer(call)
    except Exception as e:  # noqa: BLE001 - a benchmark reports and goes on
        print(f"skipped {op}/{shape}/{layout}/{dtype}/{impl}/{phase}: {type(e).__name__}: "
              f"{str(e).splitlines()[0][:120] if str(e) else ''}", file=sys.stderr)
        return []
    rate = gbps(nbytes, med) if nbytes else float("nan")
    return [Row(op, "x".join(map(str, shape)), layout, str(dtype).removeprefix("torch."), phase, impl,
                med, p20, p80, nbytes, rate, rate / copy_gbps)]


def bench(case: OpCase, shapes, dtypes, layouts, copy_gbps: float, timer: Timer = _bench_us,
          second_order: bool = True) -> list[Row]:
    rows: list[Row] = []
    for shape in shapes:
        for dtype in dtypes:
            for layout in layouts:
                if layout == "channels_last" and len(shape) != 4:
                    continue
                inputs, dy = case.make(shape, dtype, layout)
                torch._dynamo.reset()  # a fresh static-shape compile per case
                fns = {"triton": case.triton, "eager": case.ref,
                       "compile": torch.compile(case.ref, fullgraph=True, dynamic=False)}
                for impl in IMPLS:
                    for phase, call in _phase_fns(fns[impl], inputs, dy).items():
                        nb = op_bytes(inputs[0].numel(), inputs[0].element_size(), phase)
                        rows += _row(timer, call, case.name, shape, layout, dtype, phase, impl, nb, copy_gbps)
                if second_order and shape == shapes[0]:
                    for impl in ("triton", "eager"):
                        rows += _row(timer, _second_order(fns[impl], inputs), case.name, shape, layout, dtype,
                                     "2nd-order", impl, 0, copy_gbps)
                del inputs, dy
    return rows


# -- report ------------------------------------------------------------------------------------

def speedups(rows: list[Row]) -> list[dict]:
    """Per case and phase: eager/triton and compile/triton time ratios (> 1: Triton is faster)."""
    by_key: dict[tuple, dict[str, float]] = {}
    for r in rows:
        by_key.setdefault((r.op, r.shape, r.layout, r.dtype, r.phase), {})[r.impl] = r.median_us
    out = []
    for (op, shape, layout, dtype, phase), t in by_key.items():
        if "triton" not in t:
            continue
        out.append({"op": op, "shape": shape, "layout": layout, "dtype": dtype, "phase": phase,
                    "vs_eager": t["eager"] / t["triton"] if "eager" in t else None,
                    "vs_compile": t["compile"] / t["triton"] if "compile" in t else None})
    return out


def format_table(rows: list[Row]) -> str:
    head = (f"{'op':<19}{'shape':<18}{'layout':<14}{'dtype':<10}{'phase':<10}{'impl':<8}"
            f"{'median µs':>10}{'p20':>9}{'p80':>9}{'GB/s':>9}{'% copy':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.op:<19}{r.shape:<18}{r.layout:<14}{r.dtype:<10}{r.phase:<10}{r.impl:<8}"
                     f"{r.median_us:>10.1f}{r.p20_us:>9.1f}{r.p80_us:>9.1f}{r.gbps:>9.1f}"
                     f"{100 * r.frac_of_copy:>7.1f}%")
    return "\n".join(lines)


def format_speedups(sp: list[dict]) -> str:
    head = f"{'op':<19}{'shape':<18}{'layout':<14}{'dtype':<10}{'phase':<10}{'vs eager':>10}{'vs compile':>12}"
    lines = [head, "-" * len(head)]
    for s in sp:
        fmt = lambda v: f"{v:.2f}x" if v is not None else "-"  # noqa: E731
        lines.append(f"{s['op']:<19}{s['shape']:<18}{s['layout']:<14}{s['dtype']:<10}{s['phase']:<10}"
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
    p.add_argument("--out", type=Path, help="write the results as JSON here (e.g. benches/results/norm_misc_h100.json)")
    p.add_argument("--quick", action="store_true", help="bf16, channels_last where 4-d, first and last shape per op")
    p.add_argument("--act", default="lrelu", help="activation fused into bias_act / instance_norm_act (default lrelu)")
    p.add_argument("--ops", default=",".join(SHAPES), help="comma-separated subset of " + ", ".join(SHAPES))
    p.add_argument("--cudagraph", action="store_true",
                   help="time CUDA-graph replays (GPU time only, as in fastgan's graphed step) instead of launches")
    args = p.parse_args(argv)
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    unknown = [o for o in ops if o not in SHAPES]
    if unknown:
        p.error(f"unknown op(s) {', '.join(unknown)}; choose from {', '.join(SHAPES)}")
    if not torch.cuda.is_available():
        print("gpu_norm_misc: needs a CUDA device", file=sys.stderr)
        return 2
    import triton

    copy = copy_bandwidth_gbps()
    timer = _bench_graph_us if args.cudagraph else _bench_us
    cases = op_cases(args.act)
    rows: list[Row] = []
    for op in ops:
        shapes = SHAPES[op]
        if args.quick:
            rows += bench(cases[op], [shapes[0], shapes[-1]], [torch.bfloat16], ["channels_last"], copy, timer,
                          second_order=not args.cudagraph)
        else:
            rows += bench(cases[op], shapes, [torch.float32, torch.bfloat16], ["nchw", "channels_last"], copy,
                          timer, second_order=not args.cudagraph)
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
