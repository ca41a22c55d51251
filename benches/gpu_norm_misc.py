"""GPU micro-benchmark of ``bias_act``, ``instance_norm_act`` and ``pixel_norm``.

Each op's ``impl="triton"`` path is compared with its eager reference (the torch ops users write:
``x + b`` then the activation; ``F.instance_norm`` then the activation; ``x * rsqrt(mean(x²))``)
and with ``torch.compile`` of that reference (Inductor fuses the pointwise ops and writes its own
reductions), for forward, backward and both, NCHW and channels_last, fp32 and bf16. Timings by default are ``_gpu_common.bench_loop_us`` medians (20th/80th percentiles as spread) of
50 back-to-back calls between CUDA events: host launch work and GPU time per call, as an eager loop
pays them (no L2 flush); ``--cudagraph`` times CUDA-graph replays (GPU time only). GB/s is computed from the
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

from dataclasses import dataclass
from typing import Callable

import torch

from fastgan.ops import bias_act, instance_norm_act, pixel_norm
from fastgan.ops.bias_act import _bias_act_ref
from fastgan.ops.norm_act import _instance_norm_act_ref, _pixel_norm_ref

if __package__:  # imported as benches.gpu_norm_misc
    from . import _gpu_common as common
else:  # run as a script, or imported with benches/ on sys.path (benches/test_bench_*.py)
    import _gpu_common as common

PHASES, IMPLS = common.PHASES, common.IMPLS
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

# The case fields of a row with their table widths; Row adds median_us .. frac_of_copy.
COLUMNS = {"op": 19, "shape": 18, "layout": 14, "dtype": 10, "phase": 10, "impl": 8}
Row = common.row_type(COLUMNS)


def _row(timer: common.Timer, call, op, shape, layout, dtype, phase, impl, nbytes, copy_gbps) -> list[Row]:
    """Time one case; a case that fails (e.g. a compile error) is reported and skipped."""
    keys = (op, common.shape_str(shape), layout, common.dtype_str(dtype), phase, impl)
    return common.timed_row(timer, call, Row, keys, nbytes, copy_gbps, f"{op}/{shape}/{layout}/{dtype}/{impl}/{phase}")


def bench(case: OpCase, shapes, dtypes, layouts, copy_gbps: float, timer: common.Timer = common.bench_loop_us,
          second_order: bool = True) -> list[Row]:
    rows: list[Row] = []
    for shape in shapes:
        for dtype in dtypes:
            for layout in layouts:
                if layout == "channels_last" and len(shape) != 4:
                    continue
                inputs, dy = case.make(shape, dtype, layout)
                fns = common.impl_fns(case.triton, case.ref)  # a fresh static-shape compile per case
                for impl in IMPLS:
                    for phase, call in common.phase_fns(fns[impl], inputs, dy).items():
                        nb = op_bytes(inputs[0].numel(), inputs[0].element_size(), phase)
                        rows += _row(timer, call, case.name, shape, layout, dtype, phase, impl, nb, copy_gbps)
                if second_order and shape == shapes[0]:
                    for impl in ("triton", "eager"):
                        rows += _row(timer, common.second_order(fns[impl], inputs), case.name, shape, layout, dtype,
                                     "2nd-order", impl, 0, copy_gbps)
                del inputs, dy
    return rows


# -- report ------------------------------------------------------------------------------------

def speedups(rows: list[Row]) -> list[dict]:
    """Per case and phase: eager/triton and compile/triton time ratios (> 1: Triton is faster)."""
    return common.speedups(rows, COLUMNS)


def format_table(rows: list[Row]) -> str:
    return common.format_table(rows, COLUMNS)


def format_speedups(sp: list[dict]) -> str:
    return common.format_speedups(sp, COLUMNS)


def main(argv: list[str] | None = None) -> int:
    p = common.arg_parser(__doc__, "norm_misc_h100.json", "bf16, channels_last where 4-d, first and last shape per op")
    p.add_argument("--act", default="lrelu", help="activation fused into bias_act / instance_norm_act (default lrelu)")
    p.add_argument("--ops", default=",".join(SHAPES), help="comma-separated subset of " + ", ".join(SHAPES))
    common.add_cudagraph_flag(p)
    args = p.parse_args(argv)
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    unknown = [o for o in ops if o not in SHAPES]
    if unknown:
        p.error(f"unknown op(s) {', '.join(unknown)}; choose from {', '.join(SHAPES)}")
    if common.no_cuda("gpu_norm_misc"):
        return 2

    copy = common.copy_bandwidth_gbps()
    timer = common.pick_timer(args.cudagraph)
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
    common.report_with_speedups(rows, COLUMNS, copy, args.out, act=args.act, cudagraph=args.cudagraph)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
