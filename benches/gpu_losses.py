"""GPU micro-benchmark of the fused GAN losses and gradient penalties.

Compares ``impl="triton"`` with the eager reference and ``torch.compile`` of the reference, for
forward, backward and both. Timings by default are ``_gpu_common.bench_loop_us`` medians (20th/80th percentiles as spread) of
50 back-to-back calls between CUDA events: host launch work and GPU time per call, as an eager loop
pays them (no L2 flush); ``--cudagraph`` times CUDA-graph replays (GPU time only).
Speed-ups against eager and compile are printed and saved with the rows. Losses are launch-bound (N logits), so microseconds are the number to
read; the GB/s column is reported against the device's copy bandwidth measured in the same run
(``torch.empty_like(x).copy_(x)`` on a large tensor) for every case.

Bytes counted are what each phase must move at minimum (``op_bytes``):

* losses, n = real + fake logits of itemsize s: forward reads n·s (+4 B loss); backward reads
  n·s and writes n·s; forward+backward reads the logits once and writes their gradient once,
  2·n·s + 4.
* penalties, grads of N·M values: forward reads N·M·s; backward reads and writes N·M·s (2·N·M·s);
  forward+backward 3·N·M·s (the backward cannot start before every norm is known, so g is read
  twice). The per-sample partials (N·S·4 B) are negligible and not counted.

Usage: ``python benches/gpu_losses.py [--out benches/results/losses_<gpu>.json] [--quick]``.
"""
from __future__ import annotations

import torch

from fastgan import ops
from fastgan.ops.losses import _d_loss_ref, _g_loss_ref
from fastgan.ops.penalties import _grad_penalty_ref

if __package__:  # imported as benches.gpu_losses
    from . import _gpu_common as common
else:  # run as a script, or imported with benches/ on sys.path (benches/test_bench_*.py)
    import _gpu_common as common

PHASES, IMPLS = common.PHASES, common.IMPLS


# -- byte counting (CPU-safe) ------------------------------------------------------------------

def loss_bytes(n_logits: int, itemsize: int, phase: str) -> int:
    """Minimum bytes a GAN loss over ``n_logits`` logits (real + fake) moves in ``phase``."""
    if phase == "fwd":
        return n_logits * itemsize + 4
    if phase == "bwd":
        return 2 * n_logits * itemsize
    if phase == "fwd+bwd":
        return 2 * n_logits * itemsize + 4
    raise ValueError(f"unknown phase {phase!r}")


def penalty_bytes(numel: int, itemsize: int, phase: str) -> int:
    """Minimum bytes a gradient penalty over ``numel`` gradient values moves in ``phase``."""
    per = {"fwd": 1, "bwd": 2, "fwd+bwd": 3}
    if phase not in per:
        raise ValueError(f"unknown phase {phase!r}")
    return per[phase] * numel * itemsize + 4


# -- timing ----------------------------------------------------------------------------------

# The case fields of a row with their table widths; Row adds median_us .. frac_of_copy.
COLUMNS = {"op": 13, "kind": 12, "shape": 14, "dtype": 9, "phase": 8, "impl": 8}
Row = common.row_type(COLUMNS)


def _row(timer: common.Timer, call, op, kind, shape, dtype, phase, impl, nbytes, copy_gbps) -> list[Row]:
    """Time one case; a case that fails (e.g. a compile error) is reported and skipped."""
    keys = (op, kind, common.shape_str(shape), common.dtype_str(dtype), phase, impl)
    return common.timed_row(timer, call, Row, keys, nbytes, copy_gbps, f"{op}/{kind}/{impl}/{phase}")


def _impl_fns(triton_fn, ref_fn):
    # fresh static-shape compiles: the lambdas of every case share one code object, and a shared Dynamo cache
    # would trace the later shapes with symbolic sizes (a handicapped baseline)
    return common.impl_fns(triton_fn, ref_fn)


def bench_losses(dtypes, kinds, shapes, copy_gbps: float, device: str = "cuda",
                 timer: common.Timer = common.bench_loop_us) -> list[Row]:
    """D and G losses over real/fake logits of each shape (real and fake the same shape)."""
    rows = []
    for dtype in dtypes:
        for shape in shapes:
            real = torch.randn(shape, device=device, dtype=dtype).add_(1.0).requires_grad_(True)
            fake = torch.randn(shape, device=device, dtype=dtype).sub_(1.0).requires_grad_(True)
            n = real.numel() + fake.numel()
            for kind in kinds:
                cases = {
                    "d_loss": (_impl_fns(lambda r, f, k=kind: ops.d_loss(r, f, k, impl="triton"),
                                         lambda r, f, k=kind: _d_loss_ref(r, f, k, 0.0)), [real, fake], n),
                    "g_loss": (_impl_fns(lambda f, k=kind: ops.g_loss(f, k, impl="triton"),
                                         lambda f, k=kind: _g_loss_ref(f, k)), [fake], fake.numel()),
                }
                for op, (impls, inputs, count) in cases.items():
                    for impl, fn in impls.items():
                        for phase, call in common.phase_fns(fn, inputs).items():
                            nb = loss_bytes(count, real.element_size(), phase)
                            rows += _row(timer, call, op, kind, shape, dtype, phase, impl, nb, copy_gbps)
    return rows


def bench_penalties(dtypes, kinds, shapes, copy_gbps: float, device: str = "cuda",
                    timer: common.Timer = common.bench_loop_us) -> list[Row]:
    """Gradient penalties over (N, C, H, W) gradients with per-sample norms near 1."""
    rows = []
    for dtype in dtypes:
        for shape in shapes:
            shape = torch.Size(shape)
            grads = (torch.randn(shape, device=device, dtype=dtype) / shape[1:].numel() ** 0.5).requires_grad_(True)
            for kind in kinds:
                impls = _impl_fns(lambda g, k=kind: ops.grad_penalty(g, k, impl="triton"),
                                  lambda g, k=kind: _grad_penalty_ref(g, k, 1.0))
                for impl, fn in impls.items():
                    for phase, call in common.phase_fns(fn, [grads]).items():
                        nb = penalty_bytes(grads.numel(), grads.element_size(), phase)
                        rows += _row(timer, call, "grad_penalty", kind, shape, dtype, phase, impl, nb, copy_gbps)
    return rows


# -- report ----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = common.arg_parser(__doc__, "losses_h100.json", "bf16 only, nonsat (losses) and wgan-gp (penalties) only")
    common.add_cudagraph_flag(p)
    args = p.parse_args(argv)
    if common.no_cuda("gpu_losses"):
        return 2

    copy = common.copy_bandwidth_gbps()
    timer = common.pick_timer(args.cudagraph)
    dtypes = [torch.bfloat16] if args.quick else [torch.float32, torch.bfloat16]
    kinds = ["nonsat"] if args.quick else ["nonsat", "hinge"]
    rows = bench_losses(dtypes, kinds, [(256,), (256, 1, 30, 30)], copy, timer=timer)
    rows += bench_penalties(dtypes, ["wgan-gp"] if args.quick else list(ops.PENALTIES), [(256, 3, 64, 64)], copy,
                            timer=timer)
    common.report_with_speedups(rows, COLUMNS, copy, args.out, act=None, cudagraph=args.cudagraph)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
