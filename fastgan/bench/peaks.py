"""Known dense peak throughputs by device name, and a measured matmul ceiling.

The table holds datasheet numbers for dense (no sparsity) math: ``bf16`` and ``tf32`` on tensor
cores and plain ``fp32`` (CUDA cores). An fp32 row on CUDA runs its convolutions in TF32 when
``torch.backends.cudnn.allow_tf32`` is on (PyTorch's default), so it is compared with the ``tf32``
peak then (:func:`peak_for`). Lookup is by device name as ``torch.cuda.get_device_name`` spells
it; an unknown device gives ``None`` and the reason.

The measured ceiling times one large matmul in the same run (in the row's precision; fp32 on CUDA
with TF32 on or off as cuDNN's convolutions run) so a row can also be reported as a fraction of
what this box really reaches.
"""
from __future__ import annotations

import re
import time
import warnings

import torch

# (pattern on the device name, label, {precision: TFLOP/s}); first match wins, so the more
# specific names come first ("H100 PCIe" before "H100").
PEAKS: list[tuple[str, str, dict[str, float]]] = [
    (r"H100.*PCIe", "H100 PCIe", {"bf16": 756.0, "tf32": 378.0, "fp32": 51.0}),
    (r"H100.*NVL", "H100 NVL", {"bf16": 835.0, "tf32": 417.5, "fp32": 60.0}),
    (r"H100", "H100 SXM", {"bf16": 989.0, "tf32": 494.5, "fp32": 67.0}),
    (r"H200.*NVL", "H200 NVL", {"bf16": 835.0, "tf32": 417.5, "fp32": 60.0}),
    (r"H200", "H200 SXM", {"bf16": 989.0, "tf32": 494.5, "fp32": 67.0}),
    (r"A100", "A100", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    (r"\bL4\b", "L4", {"bf16": 121.0, "tf32": 60.0, "fp32": 30.0}),
    (r"RTX 4090", "RTX 4090", {"bf16": 165.0, "tf32": 82.6, "fp32": 82.6}),
]


def lookup_peak(device_name: str | None) -> tuple[dict[str, float] | None, str]:
    """``({"bf16": TF, "tf32": TF, "fp32": TF}, source)`` for a known device, else ``(None, reason)``."""
    if not device_name:
        return None, "device name unknown"
    for pattern, label, peaks in PEAKS:
        if re.search(pattern, device_name):
            return dict(peaks), f"datasheet dense peak for {label} (fastgan.bench.peaks.PEAKS)"
    return None, f"no datasheet peak known for {device_name!r} (fastgan.bench.peaks.PEAKS); see frac_matmul"


def math_mode(precision: str, tf32: bool) -> str:
    """The tensor-core math an (fp32 | bf16 | fp16) row's convolutions run in: ``tf32`` for fp32 with TF32 on."""
    if precision in ("bf16", "fp16"):
        return "bf16"
    return "tf32" if tf32 else "fp32"


def peak_for(peaks: dict[str, float] | None, precision: str, tf32: bool = False) -> float | None:
    """The datasheet peak a row of ``precision`` is compared with (``tf32``: cuDNN runs fp32 convs in TF32)."""
    if peaks is None:
        return None
    return peaks.get(math_mode(precision, tf32))


def matmul_flops(n: int) -> int:
    """FLOPs of one n×n @ n×n matmul (a multiply and an add per term)."""
    return 2 * n ** 3


def measure_matmul_ceiling(device: torch.device, precision: str, *, n: int | None = None,
                           iters: int | None = None, repeats: int = 3, tf32: bool = False) -> dict:
    """Best-of-``repeats`` TFLOP/s of a square matmul in ``precision`` on ``device``.

    CUDA: n=8192, timed with CUDA events; CPU: n=1024, synchronized wall clock. ``tf32``: an fp32
    matmul on CUDA runs in TF32 (as cuDNN's fp32 convolutions do by default), so the ceiling is the
    one the row's math really has.
    """
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    cuda = device.type == "cuda"
    tf32 = bool(tf32 and cuda and dtype == torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # newer torch deprecates allow_tf32 in favour of fp32_precision
        prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        out = _time_matmul(device, dtype, cuda, n, iters, repeats)
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.backends.cuda.matmul.allow_tf32 = prev
    return {"precision": precision, "math": math_mode(precision, tf32), **out}


def _time_matmul(device, dtype, cuda, n, iters, repeats) -> dict:
    n = n or (8192 if cuda else 1024)
    iters = iters or (20 if cuda else 3)
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    torch.matmul(a, b, out=out)  # warm-up (cuBLAS handle, heuristics)
    best = float("inf")
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize(device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                torch.matmul(a, b, out=out)
            end.record()
            end.synchronize()
            dt = start.elapsed_time(end) / 1e3
        else:
            t0 = time.perf_counter()
            for _ in range(iters):
                torch.matmul(a, b, out=out)
            dt = time.perf_counter() - t0
        best = min(best, dt / iters)
    del a, b, out
    return {"dtype": str(dtype).replace("torch.", ""), "n": n, "iters": iters,
            "seconds": best, "tflops": matmul_flops(n) / best / 1e12}
