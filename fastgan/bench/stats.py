"""Timing primitives of the benchmark: timers, warm-up, repeats, percentiles, throughput.

Everything here is plain arithmetic on seconds so that it can be checked with a stub clock.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import torch


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks (numpy's default)."""
    if not samples:
        raise ValueError("percentile of no samples")
    xs = sorted(float(x) for x in samples)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(samples: Sequence[float]) -> dict[str, float]:
    """``{"median", "p20", "p80", "min", "max"}`` of seconds-per-step samples."""
    return {"median": percentile(samples, 50), "p20": percentile(samples, 20), "p80": percentile(samples, 80),
            "min": min(samples), "max": max(samples)}


def throughput(img_per_step: float, sec_per_step: float) -> dict[str, float]:
    """Images per second and seconds per thousand images (StyleGAN's s/kimg) of one step time."""
    return {"img_per_s": img_per_step / sec_per_step, "s_per_kimg": sec_per_step * 1000.0 / img_per_step}


class WallTimer:
    """Synchronized wall clock: ``sync(); t0; n × fn(); sync(); t1`` (CPU, or any device with a sync)."""

    kind = "wall"

    def __init__(self, sync: Callable[[], None] | None = None, clock: Callable[[], float] = time.perf_counter):
        self.sync = sync or (lambda: None)
        self.clock = clock

    def time(self, fn: Callable[[], None], n: int) -> float:
        """Seconds taken by ``n`` calls of ``fn``."""
        self.sync()
        t0 = self.clock()
        for _ in range(n):
            fn()
        self.sync()
        return self.clock() - t0


class CudaEventTimer:
    """CUDA events recorded on the current stream around ``n`` calls; waits for the end event only."""

    kind = "cuda-events"

    def __init__(self, device: torch.device):
        self.device = device

    def time(self, fn: Callable[[], None], n: int) -> float:
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3


def make_timer(device: torch.device):
    if device.type == "cuda":
        return CudaEventTimer(device)
    return WallTimer()


def warmup(fn: Callable[[], None], timer, *, chunk: int = 1, max_steps: int = 50, min_chunks: int = 3,
           tol: float = 0.10) -> dict:
    """Run ``fn`` in chunks of ``chunk`` calls until the last ``min_chunks`` chunk timings agree within
    ``tol`` (max over min of them, relative to the min), or ``max_steps`` calls were made.

    The first chunks absorb compilation, autotuning and graph recording. Three in a row, not two: on a
    CPU a chunk is one step, and two slow steps that happen to agree (a compile still settling, another
    process on the box) were taken for the steady state, which the timed steps then ran far below.
    Returns ``{"steps", "converged", "timings_s"}`` (per-step seconds of each chunk).
    """
    chunk = max(1, int(chunk))
    min_chunks = max(2, int(min_chunks))
    timings: list[float] = []
    steps, converged = 0, False
    while steps < max(max_steps, chunk * min_chunks):
        timings.append(timer.time(fn, chunk) / chunk)
        steps += chunk
        if len(timings) >= min_chunks:
            last = timings[-min_chunks:]
            if max(last) - min(last) <= tol * min(last):
                converged = True
                break
    return {"steps": steps, "converged": converged, "timings_s": timings}


def measure(fn: Callable[[], None], timer, *, steps: int, repeats: int) -> list[float]:
    """Per-step seconds of ``repeats`` timed windows of ``steps`` calls each."""
    return [timer.time(fn, steps) / steps for _ in range(repeats)]
