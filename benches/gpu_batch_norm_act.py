"""GPU micro-benchmark of the fused batch norm + affine + activation (``fastgan.ops.batch_norm_act``).

Compares ``impl="triton"`` with the eager reference (``F.batch_norm`` + activation, the way users
write it) and ``torch.compile`` of that reference (Inductor's own Welford split reduction + fused
pointwise), for forward, backward and both, training and eval, NCHW and channels_last, fp32 and
bf16, at DCGAN shapes (batch 256, 64-512 channels, 32×32 down to 4×4) plus one large tensor.
Timings by default are ``_gpu_common.bench_loop_us`` medians (20th/80th percentiles as spread) of
50 back-to-back calls between CUDA events: host launch work and GPU time per call, as an eager loop
pays them (no L2 flush); ``--cudagraph`` times CUDA-graph replays (GPU time only). GB/s is reported against the device's copy bandwidth measured in the same run
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
and back-to-back launches (what an un-graphed eager loop sees) are reported by default.

Usage: ``python benches/gpu_batch_norm_act.py [--out benches/results/batch_norm_act_<gpu>.json] [--quick]
[--cudagraph]``.
"""
from __future__ import annotations

from typing import Callable

import torch

from fastgan.ops import batch_norm_act
from fastgan.ops.norm_act import _batch_norm_act_ref

if __package__:  # imported as benches.gpu_batch_norm_act
    from . import _gpu_common as common
else:  # run as a script, or imported with benches/ on sys.path (benches/test_bench_*.py)
    import _gpu_common as common

PHASES, IMPLS = common.PHASES, common.IMPLS
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


# -- timing ----------------------------------------------------------------------------------

# The case fields of a row with their table widths; Row adds median_us .. frac_of_copy.
COLUMNS = {"shape": 16, "layout": 14, "dtype": 10, "mode": 6, "phase": 10, "impl": 8}
Row = common.row_type(COLUMNS)


def _impl_fns(training: bool, act: str, rm: torch.Tensor, rv: torch.Tensor) -> dict[str, Callable]:
    def triton_fn(x, w, b):
        return batch_norm_act(x, w, b, rm, rv, training=training, momentum=0.1, eps=1e-5, act=act, impl="triton")

    def ref_fn(x, w, b):
        return _batch_norm_act_ref(x, w, b, rm, rv, training, 0.1, 1e-5, act, None)

    return common.impl_fns(triton_fn, ref_fn)


def bench(shapes, dtypes, layouts, modes, act: str, copy_gbps: float, timer: common.Timer = common.bench_loop_us,
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
                        for phase, call in common.phase_fns(impls[impl], (x, w, b), dy).items():
                            nb = bn_bytes(x.numel(), x.element_size(), training, phase)
                            rows += _row(timer, call, shape, layout, dtype, mode, phase, impl, nb, copy_gbps)
                    if second_order and training and shape == shapes[0]:
                        for impl in ("triton", "eager"):
                            rows += _row(timer, common.second_order(impls[impl], (x, w, b)), shape, layout, dtype,
                                         mode, "2nd-order", impl, 0, copy_gbps)
                del x, dy
    return rows


def _row(timer: common.Timer, call, shape, layout, dtype, mode, phase, impl, nbytes, copy_gbps) -> list[Row]:
    """Time one case; a case that fails (e.g. a compile error) is reported and skipped."""
    keys = (common.shape_str(shape), layout, common.dtype_str(dtype), mode, phase, impl)
    return common.timed_row(timer, call, Row, keys, nbytes, copy_gbps,
                            f"{shape}/{layout}/{dtype}/{mode}/{impl}/{phase}")


# -- report ----------------------------------------------------------------------------------

def speedups(rows: list[Row]) -> list[dict]:
    """Per case and phase: eager/triton and compile/triton time ratios (> 1 means Triton is faster)."""
    return common.speedups(rows, COLUMNS)


def format_table(rows: list[Row]) -> str:
    return common.format_table(rows, COLUMNS)


def format_speedups(sp: list[dict]) -> str:
    return common.format_speedups(sp, COLUMNS)


def main(argv: list[str] | None = None) -> int:
    p = common.arg_parser(__doc__, "batch_norm_act_h100.json", "bf16, channels_last, training, two shapes")
    p.add_argument("--act", default="lrelu", help="activation fused after the norm (default lrelu)")
    common.add_cudagraph_flag(p)
    args = p.parse_args(argv)
    if common.no_cuda("gpu_batch_norm_act"):
        return 2

    copy = common.copy_bandwidth_gbps()
    timer = common.pick_timer(args.cudagraph)
    if args.quick:
        rows = bench([DCGAN_SHAPES[0], DCGAN_SHAPES[-1]], [torch.bfloat16], ["channels_last"], ["train"], args.act,
                     copy, timer, second_order=not args.cudagraph)
    else:
        rows = bench(DCGAN_SHAPES + [LARGE_SHAPE], [torch.float32, torch.bfloat16], ["nchw", "channels_last"],
                     ["train", "eval"], args.act, copy, timer, second_order=not args.cudagraph)
    common.report_with_speedups(rows, COLUMNS, copy, args.out, act=args.act, cudagraph=args.cudagraph)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
