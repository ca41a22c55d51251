"""Reading a torch.profiler event list: per-phase time, top kernels/ops, idle gaps, step times.

Works on the ``FunctionEvent`` list of ``prof.events()`` (times in microseconds from the trace
start). On CUDA a phase's *device* time is the summed duration of the kernels launched inside
its ``record_function`` range (``FunctionEvent.device_time_total``), and its *device span*
the duration of the matching ``gpu_user_annotation`` range where kineto records one.
"""
from __future__ import annotations

from collections import defaultdict

from torch.autograd import DeviceType

PHASES = ("data", "D_main", "D_reg", "D_opt", "G_main", "G_opt", "G_ema")


def _is_annotation(e) -> bool:
    return bool(getattr(e, "is_user_annotation", False)) or e.name.startswith("ProfilerStep")


def _is_device(e) -> bool:
    return e.device_type != DeviceType.CPU


def _us(e) -> float:
    return float(e.time_range.end - e.time_range.start)


def merge_intervals(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Union of [start, end) intervals, sorted."""
    out: list[list[float]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def idle_gaps(intervals: list[tuple[float, float]], window: tuple[float, float] | None = None) -> dict:
    """Busy/idle accounting of device activity intervals (us): gaps between consecutive kernels
    (union over streams) within ``window`` (default: first kernel start to last kernel end)."""
    busy = merge_intervals(intervals)
    if not busy:
        return {"available": False, "reason": "no device activity in the profiled window"}
    w0, w1 = window if window is not None else (busy[0][0], busy[-1][1])
    busy = [(max(a, w0), min(b, w1)) for a, b in busy if b > w0 and a < w1]
    busy_us = sum(b - a for a, b in busy)
    gaps = [b0 - a1 for (_, a1), (b0, _) in zip(busy, busy[1:])]
    lead = (busy[0][0] - w0) if busy else 0.0
    tail = (w1 - busy[-1][1]) if busy else 0.0
    window_us = w1 - w0
    gaps_sorted = sorted(gaps)
    return {"available": True, "reason": None, "window_ms": window_us / 1e3, "busy_ms": busy_us / 1e3,
            "idle_ms": (window_us - busy_us) / 1e3, "idle_frac": (window_us - busy_us) / window_us if window_us else None,
            "gaps_between_kernels_ms": sum(gaps) / 1e3, "n_gaps": len(gaps),
            "largest_gap_ms": (gaps_sorted[-1] / 1e3) if gaps else 0.0,
            "median_gap_us": gaps_sorted[len(gaps) // 2] if gaps else 0.0,
            "lead_ms": lead / 1e3, "tail_ms": tail / 1e3}


def analyze_events(events, *, cuda: bool, top_n: int = 15, max_steps: int | None = None) -> dict:
    """Summaries of one profiled window. ``events``: ``prof.events()``; ``max_steps``: how many
    ProfilerStep ranges are real iterations (a trailing range open until the profiler stopped is not)."""
    events = list(events)
    cpu = [e for e in events if not _is_device(e)]
    dev = [e for e in events if _is_device(e)]
    dev_kernels = [e for e in dev if not getattr(e, "is_user_annotation", False)]
    dev_annot = [e for e in dev if getattr(e, "is_user_annotation", False)]

    steps = sorted((e for e in cpu if e.name.startswith("ProfilerStep")), key=lambda e: e.time_range.start)
    if max_steps:
        steps = steps[:max_steps]
    step_ms = [_us(e) / 1e3 for e in steps]

    phases = []
    for name in PHASES:
        evs = [e for e in cpu if e.name == name]
        if not evs:
            continue
        spans = [e for e in dev_annot if e.name == name]
        phases.append({
            "name": name, "count": len(evs),
            "cpu_ms": sum(_us(e) for e in evs) / 1e3,
            "device_ms": (sum(e.device_time_total for e in evs) / 1e3) if cuda else None,
            "device_span_ms": (sum(_us(e) for e in spans) / 1e3) if (cuda and spans) else None,
        })

    # Top kernels (CUDA) or top CPU ops by self time.
    agg: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    if cuda and dev_kernels:
        for e in dev_kernels:
            a = agg[e.name]
            a[0] += _us(e)
            a[1] += 1
        kind = "cuda kernels and copies (device time)"
    else:
        for e in cpu:
            if _is_annotation(e) or e.name in PHASES:
                continue
            a = agg[e.name]
            a[0] += float(e.self_cpu_time_total)
            a[1] += 1
        kind = "cpu ops (self CPU time)"
    total = sum(v[0] for v in agg.values()) or 1.0
    top = sorted(agg.items(), key=lambda kv: -kv[1][0])[:top_n]
    top_rows = [{"name": k, "calls": int(v[1]), "time_ms": v[0] / 1e3, "share": v[0] / total} for k, v in top]

    if cuda:
        intervals = [(float(e.time_range.start), float(e.time_range.end)) for e in dev_kernels]
        window = (steps[0].time_range.start, max(float(e.time_range.end) for e in dev_kernels)) \
            if (steps and dev_kernels) else None
        gaps = idle_gaps(intervals, window)
        if gaps["available"]:
            gaps["how"] = ("union of all device kernels/copies over streams; gaps summed between consecutive busy "
                           "intervals; window from the first profiled step's start to the last kernel's end")
    else:
        gaps = {"available": False, "reason": "n/a on CPU: idle gaps between GPU kernels need a CUDA run"}

    # Ranges for the timeline plot (ms from the first step / first event).
    t0 = steps[0].time_range.start if steps else (min((e.time_range.start for e in cpu), default=0.0))
    ranges = [{"name": e.name, "start_ms": (e.time_range.start - t0) / 1e3, "dur_ms": _us(e) / 1e3, "where": "cpu"}
              for e in cpu if e.name in PHASES]
    ranges += [{"name": e.name, "start_ms": (e.time_range.start - t0) / 1e3, "dur_ms": _us(e) / 1e3, "where": "device"}
               for e in dev_annot if e.name in PHASES]
    kernel_busy = [((e.time_range.start - t0) / 1e3, _us(e) / 1e3) for e in dev_kernels] if cuda else []

    return {"step_ms": step_ms, "phases": phases, "top": {"kind": kind, "total_ms": total / 1e3, "rows": top_rows},
            "idle_gaps": gaps, "ranges": ranges, "kernel_intervals_ms": kernel_busy}
