"""Helpers shared by the ``benches/gpu_*.py`` micro-benchmarks.

Timing (``triton.testing.do_bench`` medians with 20th/80th percentiles, optionally replayed from a
CUDA graph), the device copy bandwidth that GB/s figures are compared with, the forward / backward
phases of a case, the result rows and their tables, and the JSON report with its environment
metadata. What each script measures (shapes, byte counts, the ops) stays in the script.

The scripts import this module as ``_gpu_common`` (``benches/`` is on ``sys.path`` both when a
script runs as ``python benches/gpu_X.py`` and when the ``benches/test_bench_*.py`` files import
it) or relatively when imported as ``benches.gpu_X``.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from dataclasses import asdict, make_dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

PHASES = ("fwd", "bwd", "fwd+bwd")
IMPLS = ("triton", "eager", "compile")

Timer = Callable[[Callable[[], object]], "tuple[float, float, float]"]


# -- timing ------------------------------------------------------------------------------------

def gbps(nbytes: int, us: float) -> float:
    return nbytes / (us * 1e-6) / 1e9


def bench_us(fn: Callable[[], object]) -> tuple[float, float, float]:
    """(median, p20, p80) in µs of ``fn`` on the current CUDA device (``triton.testing.do_bench``: L2
    flushed before each call, and the host's launch work overlaps that flush, so this is GPU time on a
    cold cache, not what an eager loop pays per call; used for the copy bandwidth)."""
    from triton.testing import do_bench

    med, p20, p80 = do_bench(fn, warmup=25, rep=200, quantiles=[0.5, 0.2, 0.8])
    return med * 1e3, p20 * 1e3, p80 * 1e3


def bench_loop_us(fn: Callable[[], object], calls: int = 50, repeats: int = 21) -> tuple[float, float, float]:
    """(median, p20, p80) over ``repeats`` windows of µs per call of ``fn`` called ``calls`` times back to
    back between two CUDA events, no cache flush: max(host time, GPU time) per call, as an eager training
    loop that is not CUDA-graphed pays it (L2 warm where the tensors fit)."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    per_call = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        per_call.append(start.elapsed_time(end) * 1e3 / calls)
    q = torch.tensor(per_call).quantile(torch.tensor([0.5, 0.2, 0.8])).tolist()
    return q[0], q[1], q[2]


def bench_graph_us(fn: Callable[[], object]) -> tuple[float, float, float]:
    """Like bench_us, but ``fn`` replayed from a CUDA graph: GPU time without host launch overhead
    (how fastgan's graphed training step runs it)."""
    from triton.testing import do_bench_cudagraph

    fn()  # warm up (compile, autotune caches) outside the capture
    med, p20, p80 = do_bench_cudagraph(fn, rep=100, quantiles=[0.5, 0.2, 0.8])
    return med * 1e3, p20 * 1e3, p80 * 1e3


def pick_timer(cudagraph: bool) -> Timer:
    return bench_graph_us if cudagraph else bench_loop_us


def timer_label(cudagraph: bool) -> str:
    """How the timer is named in the printed header."""
    return ("CUDA graph replay (GPU time, L2 warm)" if cudagraph
            else "back-to-back launches (host + GPU per call, L2 warm)")


def copy_bandwidth_gbps(nbytes: int = 1 << 30) -> float:
    """Device copy bandwidth: read + write of a ``nbytes`` tensor, median of do_bench."""
    x = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda").normal_()
    y = torch.empty_like(x)
    us, _, _ = bench_us(lambda: y.copy_(x))
    return gbps(2 * x.numel() * 4, us)


# -- cases ---------------------------------------------------------------------------------------

def impl_fns(triton_fn: Callable, ref_fn: Callable) -> dict[str, Callable]:
    """The three implementations of a case, in ``IMPLS`` order. Dynamo is reset first and the reference
    compiled for static shapes: cases whose callables share a code object would otherwise share one cache,
    and automatic dynamic shapes (or the recompile limit) would hand later cases a weaker compile."""
    torch._dynamo.reset()
    return {"triton": triton_fn, "eager": ref_fn, "compile": torch.compile(ref_fn, fullgraph=True, dynamic=False)}


def phase_fns(fn: Callable, inputs: Sequence[torch.Tensor], dy: torch.Tensor | None = None) -> dict[str, Callable]:
    """Callables for fwd, bwd (on a retained graph) and fwd+bwd of ``fn(*inputs)``; ``dy`` is the
    output gradient (None for a scalar output)."""
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


def second_order(fn: Callable, inputs: Sequence[torch.Tensor]) -> Callable:
    """An R1-style penalty through ``fn`` alone: grad(y², inputs[0], create_graph) then backward of ‖g‖²."""
    def step():
        (g,) = torch.autograd.grad(fn(*inputs).square().sum(), inputs[0], create_graph=True)
        return torch.autograd.grad(g.square().sum(), inputs)
    return step


# -- rows ----------------------------------------------------------------------------------------

MEASURED = [("median_us", float), ("p20_us", float), ("p80_us", float), ("bytes", int), ("gbps", float),
            ("frac_of_copy", float)]


def row_type(columns: dict[str, int]) -> type:
    """A ``Row`` dataclass: the script's case fields (the keys of ``columns``, all str, in order),
    then the measured fields of ``MEASURED``."""
    return make_dataclass("Row", [(name, str) for name in columns] + MEASURED)


def shape_str(shape) -> str:
    return "x".join(map(str, shape))


def dtype_str(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def timed_row(timer: Timer, call: Callable, row: type, keys: Sequence[str], nbytes: int, copy_gbps: float,
              label: str) -> list:
    """Time one case into ``[row(*keys, ...)]``; a case that fails (e.g. a compile error) is
    reported on stderr as ``skipped <label>: ...`` and gives ``[]``."""
    try:
        med, p20, p80 = timer(call)
    except Exception as e:  # noqa: BLE001 - a benchmark reports and goes on
        print(f"skipped {label}: {type(e).__name__}: "
              f"{str(e).splitlines()[0][:120] if str(e) else ''}", file=sys.stderr)
        return []
    rate = gbps(nbytes, med) if nbytes else float("nan")
    return [row(*keys, med, p20, p80, nbytes, rate, rate / copy_gbps)]


# -- report --------------------------------------------------------------------------------------

def _case_columns(columns: dict[str, int]) -> dict[str, int]:
    return {name: width for name, width in columns.items() if name != "impl"}


def speedups(rows: list, columns: dict[str, int]) -> list[dict]:
    """Per case and phase (the ``columns`` but impl): eager/triton and compile/triton time ratios
    (> 1 means Triton is faster)."""
    keys = list(_case_columns(columns))
    by_key: dict[tuple, dict[str, float]] = {}
    for r in rows:
        by_key.setdefault(tuple(getattr(r, k) for k in keys), {})[r.impl] = r.median_us
    out = []
    for key, t in by_key.items():
        if "triton" not in t:
            continue
        out.append({**dict(zip(keys, key)),
                    "vs_eager": t["eager"] / t["triton"] if "eager" in t else None,
                    "vs_compile": t["compile"] / t["triton"] if "compile" in t else None})
    return out


def format_table(rows: list, columns: dict[str, int], spread_width: int = 9) -> str:
    """One line per row: the case ``columns`` (name: width), then median, p20/p80 (``spread_width``
    wide), GB/s and % of copy bandwidth."""
    sw = spread_width
    head = ("".join(f"{name:<{w}}" for name, w in columns.items())
            + f"{'median µs':>10}{'p20':>{sw}}{'p80':>{sw}}{'GB/s':>9}{'% copy':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append("".join(f"{getattr(r, name):<{w}}" for name, w in columns.items())
                     + f"{r.median_us:>10.1f}{r.p20_us:>{sw}.1f}{r.p80_us:>{sw}.1f}{r.gbps:>9.1f}"
                     f"{100 * r.frac_of_copy:>7.1f}%")
    return "\n".join(lines)


def format_speedups(sp: list[dict], columns: dict[str, int]) -> str:
    cols = _case_columns(columns)
    head = "".join(f"{name:<{w}}" for name, w in cols.items()) + f"{'vs eager':>10}{'vs compile':>12}"
    lines = [head, "-" * len(head)]
    for s in sp:
        fmt = lambda v: f"{v:.2f}x" if v is not None else "-"  # noqa: E731
        lines.append("".join(f"{s[name]:<{w}}" for name, w in cols.items())
                     + f"{fmt(s['vs_eager']):>10}{fmt(s['vs_compile']):>12}")
    return "\n".join(lines)


def print_header(copy_gbps: float, **extra: str) -> None:
    """``device: ...   copy bandwidth: ... GB/s`` then ``   key: value`` for each of ``extra``."""
    print(f"device: {torch.cuda.get_device_name()}   copy bandwidth: {copy_gbps:.0f} GB/s"
          + "".join(f"   {k}: {v}" for k, v in extra.items()))


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def env_info() -> dict:
    """Device, versions and git commit, the head of a report's ``meta``."""
    import triton

    return {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "python": platform.python_version(), "commit": _commit()}


def write_json(path: Path, copy_gbps: float, rows: list, *, cudagraph: bool = False, meta: dict | None = None,
               **sections) -> None:
    """``{"meta": env_info + copy_gbps + meta + timer, "rows": [...], **sections}`` to ``path``."""
    timer = ("triton.testing.do_bench_cudagraph median (p20/p80 spread), µs: GPU time of CUDA-graph replays, "
             "no host launch cost" if cudagraph else
             "_gpu_common.bench_loop_us median (p20/p80 over 21 windows of 50 back-to-back calls), µs per call: "
             "host launch work and GPU time as an eager loop pays them")
    meta = {**env_info(), "copy_gbps": copy_gbps, **(meta or {}), "timer": timer,
            "cache": "L2 not flushed between calls: shapes that fit in L2 can exceed the DRAM copy bandwidth",
            "copy_gbps_timer": "triton.testing.do_bench of a 1 GiB copy (read + write)"}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows], **sections}, indent=1))


def report_with_speedups(rows: list, columns: dict[str, int], copy_gbps: float, out: Path | None, *,
                         act: str | None, cudagraph: bool) -> None:
    """Print the header, the rows and the speed-ups; write them (with ``act``, if any, in the meta) to ``out``."""
    sp = speedups(rows, columns)
    extra = {"act": act} if act is not None else {}
    print_header(copy_gbps, **extra, timer=timer_label(cudagraph))
    print(format_table(rows, columns))
    print()
    print(format_speedups(sp, columns))
    if out:
        write_json(out, copy_gbps, rows, cudagraph=cudagraph, meta=extra, speedups=sp)


# -- command line --------------------------------------------------------------------------------

def arg_parser(doc: str, out_example: str, quick_help: str) -> argparse.ArgumentParser:
    """The parser every script starts from: ``--out`` and ``--quick``; described by ``doc``'s first line."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--out", type=Path, help=f"write the results as JSON here (e.g. benches/results/{out_example})")
    p.add_argument("--quick", action="store_true", help=quick_help)
    return p


def add_cudagraph_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cudagraph", action="store_true",
                   help="time CUDA-graph replays (GPU time only, as in fastgan's graphed step) instead of launches")


def no_cuda(script: str) -> bool:
    """True (after saying so on stderr) when there is no CUDA device to benchmark on."""
    if torch.cuda.is_available():
        return False
    print(f"{script}: needs a CUDA device", file=sys.stderr)
    return True
