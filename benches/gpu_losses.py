"""GPU micro-benchmark of the fused GAN losses and gradient penalties.

Compares ``impl="triton"`` with the eager reference and ``torch.compile`` of the reference, for
forward, backward and both, using ``triton.testing.do_bench`` (median, with the 20th/80th
percentiles as spread). Losses are launch-bound (N logits), so microseconds are the number to
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

import argparse
import json
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from fastgan import ops
from fastgan.ops.losses import _d_loss_ref, _g_loss_ref
from fastgan.ops.penalties import _grad_penalty_ref

PHASES = ("fwd", "bwd", "fwd+bwd")
IMPLS = ("triton", "eager", "compile")


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


def gbps(nbytes: int, us: float) -> float:
    return nbytes / (us * 1e-6) / 1e9


# -- timing ----------------------------------------------------------------------------------

@dataclass
class Row:
    op: str
    kind: str
    shape: str
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


def _row(timer: Timer, call, op, kind, shape, dtype, phase, impl, nbytes, copy_gbps) -> list[Row]:
    """Time one case; a case that fails (e.g. a compile error) is reported and skipped."""
    try:
        med, p20, p80 = timer(call)
    except Exception as e:  # noqa: BLE001 - a benchmark reports and goes on
        print(f"skipped {op}/{kind}/{impl}/{phase}: {type(e).__name__}: {str(e).splitlines()[0][:120]}", file=sys.stderr)
        return []
    rate = gbps(nbytes, med)
    return [Row(op, kind, "x".join(map(str, shape)), str(dtype).removeprefix("torch."), phase, impl,
                med, p20, p80, nbytes, rate, rate / copy_gbps)]


def copy_bandwidth_gbps(nbytes: int = 1 << 30) -> float:
    """Device copy bandwidth: read + write of a ``nbytes`` tensor, median of do_bench."""
    x = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda").normal_()
    y = torch.empty_like(x)
    us, _, _ = _bench_us(lambda: y.copy_(x))
    return gbps(2 * x.numel() * 4, us)


def _phase_fns(loss_fn: Callable[..., torch.Tensor], inputs: list[torch.Tensor]):
    """Callables for fwd, bwd (on a retained graph) and fwd+bwd of ``loss_fn(*inputs)``."""
    def fwd():
        return loss_fn(*inputs)

    retained: list[torch.Tensor] = []  # built on the first (warm-up) call

    def bwd():
        if not retained:
            retained.append(loss_fn(*inputs))
        return torch.autograd.grad(retained[0], inputs, retain_graph=True)

    def both():
        return torch.autograd.grad(loss_fn(*inputs), inputs)

    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": both}


def _impl_fns(triton_fn, ref_fn):
    return {"triton": triton_fn, "eager": ref_fn, "compile": torch.compile(ref_fn, fullgraph=True)}


def bench_losses(dtypes, kinds, shapes, copy_gbps: float, device: str = "cuda", timer: Timer = _bench_us) -> list[Row]:
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
                        for phase, call in _phase_fns(fn, inputs).items():
                            nb = loss_bytes(count, real.element_size(), phase)
                            rows += _row(timer, call, op, kind, shape, dtype, phase, impl, nb, copy_gbps)
    return rows


def bench_penalties(dtypes, kinds, shapes, copy_gbps: float, device: str = "cuda", timer: Timer = _bench_us) -> list[Row]:
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
                    for phase, call in _phase_fns(fn, [grads]).items():
                        nb = penalty_bytes(grads.numel(), grads.element_size(), phase)
                        rows += _row(timer, call, "grad_penalty", kind, shape, dtype, phase, impl, nb, copy_gbps)
    return rows


# -- report ----------------------------------------------------------------------------------

def format_table(rows: list[Row]) -> str:
    head = f"{'op':<13}{'kind':<12}{'shape':<14}{'dtype':<9}{'phase':<8}{'impl':<8}" \
           f"{'median µs':>10}{'p20':>8}{'p80':>8}{'GB/s':>9}{'% copy':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.op:<13}{r.kind:<12}{r.shape:<14}{r.dtype:<9}{r.phase:<8}{r.impl:<8}"
                     f"{r.median_us:>10.1f}{r.p20_us:>8.1f}{r.p80_us:>8.1f}{r.gbps:>9.1f}{100 * r.frac_of_copy:>7.1f}%")
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
    p.add_argument("--out", type=Path, help="write the results as JSON here (e.g. benches/results/losses_h100.json)")
    p.add_argument("--quick", action="store_true", help="fp32/bf16 nonsat only, fewer shapes")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_losses: needs a CUDA device", file=sys.stderr)
        return 2
    import triton

    copy = copy_bandwidth_gbps()
    dtypes = [torch.bfloat16] if args.quick else [torch.float32, torch.bfloat16]
    kinds = ["nonsat"] if args.quick else ["nonsat", "hinge"]
    rows = bench_losses(dtypes, kinds, [(256,), (256, 1, 30, 30)], copy)
    rows += bench_penalties(dtypes, ["wgan-gp"] if args.quick else list(ops.PENALTIES), [(256, 3, 64, 64)], copy)
    print(f"device: {torch.cuda.get_device_name()}   copy bandwidth: {copy:.0f} GB/s")
    print(format_table(rows))
    if args.out:
        meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
                "python": platform.python_version(), "commit": _commit(), "copy_gbps": copy,
                "timer": "triton.testing.do_bench median (p20/p80 spread), µs"}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
