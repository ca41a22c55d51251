"""Reading a torch.profiler event list: per-phase time, top kernels/ops, idle gaps, step times.

Works on the ``FunctionEvent`` list of ``prof.events()`` (times in microseconds from the trace
start). On CUDA a phase's *device* time is the summed duration of the kernels launched inside
its ``record_function`` range (``FunctionEvent.device_time_total``), and its *device span*
the duration of the matching ``gpu_user_annotation`` range where kineto records one.
"""
from __future__ import annotations

import bisect
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


# -- graphs mode: per-phase GPU time by kernel attribution ------------------------------------
#
# A replayed CUDA graph does not re-enter the host's record_function ranges, so in graphs mode the
# profiled window has kernels but no phases. The graph replays the kernels that its capture
# iteration launched, in the same order; the eager warm-up iteration that precedes the capture runs
# the same compiled phases inside their ranges. So: profile that iteration, list its kernels in
# launch order with their phase (kernel_phase_map), then walk the replayed kernels and match each
# to the next kernel of the same name in that list (attribute_kernel_phases). Kernels launched
# outside the graph (the real batch's copy, the EMA weight fill) match 'data'/None entries or none;
# 'data' keeps its own host-range measurement, so nothing is counted twice.

def kernel_phase_map(events) -> list[tuple[str, str | None]]:
    """(kernel name, phase or None) for every GPU kernel an eagerly run iteration launched, in
    launch order. torch attaches a kernel to the innermost op or range open when it was launched
    (``FunctionEvent.kernels``); its phase is the innermost phase range whose host interval
    contains that event's start — by time, not by ``cpu_parent``: backward ops run on autograd's
    device thread, which has no parent links to the main thread's ranges."""
    host = [e for e in events if not _is_device(e)]
    ranges = sorted(((float(e.time_range.start), float(e.time_range.end), e.name) for e in host if e.name in PHASES),
                    key=lambda r: r[1] - r[0])                      # innermost (shortest) first
    launchers = sorted((e for e in host if getattr(e, "kernels", None)), key=lambda e: e.time_range.start)
    out = []
    for e in launchers:
        t = float(e.time_range.start)
        phase = next((name for a, b, name in ranges if a <= t <= b), None)
        out.extend((k.name, phase) for k in e.kernels)
    return out


def attribute_kernel_phases(kernels, phase_map: list[tuple[str, str | None]]) -> dict:
    """Sum the durations of replayed ``kernels`` (device events) per phase of ``phase_map``.

    Kernels are taken in start order; a cursor walks the map cyclically (one lap per iteration)
    and each kernel is matched to the next map entry of the same name at or after the cursor,
    skipping entries the replay lacks (autotuning and cuDNN benchmark launches, optimizer-state
    initialisation and a lazy penalty that only the warm-up iteration ran). A name the map does
    not have counts as unattributed and leaves the cursor where it is.
    Returns ``{"device_ms": {phase: ms}, "unattributed_ms", "matched_frac"}`` (fraction of kernel time).
    """
    positions: dict[str, list[int]] = defaultdict(list)
    for i, (name, _) in enumerate(phase_map):
        positions[name].append(i)
    totals: dict[str | None, float] = defaultdict(float)
    unattributed = 0.0
    cursor = 0
    for e in sorted(kernels, key=lambda e: e.time_range.start):
        us = _us(e)
        where = positions.get(e.name)
        if not where:
            unattributed += us
            continue
        j = bisect.bisect_left(where, cursor)
        hit = where[j] if j < len(where) else where[0]              # past the last one: next lap
        totals[phase_map[hit][1]] += us
        cursor = hit + 1
    matched = sum(totals.values())
    all_us = matched + unattributed
    return {"device_ms": {(p or "other"): v / 1e3 for p, v in totals.items()}, "unattributed_ms": unattributed / 1e3,
            "matched_frac": (matched / all_us) if all_us else None}


def analyze_events(events, *, cuda: bool, top_n: int = 15, max_steps: int | None = None,
                   kernel_phases: list[tuple[str, str | None]] | None = None) -> dict:
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

    attribution = None
    if cuda and kernel_phases and dev_kernels and not any(p["name"] in ("D_main", "G_main") for p in phases):
        attribution = attribute_kernel_phases(dev_kernels, kernel_phases)
        have = {p["name"] for p in phases}
        for name in PHASES:
            ms = attribution["device_ms"].get(name)
            if ms is not None and name not in have:
                phases.append({"name": name, "count": None, "cpu_ms": 0.0, "device_ms": ms, "device_span_ms": None,
                               "attributed": True})
        phases.sort(key=lambda p: PHASES.index(p["name"]))
        attribution["map_kernels"] = len(kernel_phases)

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

    return {"step_ms": step_ms, "phases": phases, "phase_attribution": attribution, "top": {"kind": kind, "total_ms": total / 1e3, "rows": top_rows},
            "idle_gaps": gaps, "ranges": ranges, "kernel_intervals_ms": kernel_busy}
