"""Reading a torch.profiler event list: per-phase time, top kernels/ops, idle gaps, step times.

Works on the ``FunctionEvent`` list of ``prof.events()`` (times in microseconds from the trace
start). On CUDA a phase's *device* time is the summed duration of the kernels launched while its
``record_function`` range was open on the host, by time, from any thread: backward kernels are
launched from autograd's device thread, which neither ``cpu_parent`` links
(``FunctionEvent.device_time_total``) nor kineto's ``gpu_user_annotation`` ranges connect to the
main thread's ranges. Its *device span* is, per range instance, first such kernel start to last
kernel end (kineto's ``gpu_user_annotation`` range where the events carry no correlation ids).

The phases are the ``record_function`` ranges a training iteration opens, in the order it runs them:
``data`` (the real batch onto the device) first, then the ranges the task's schedule names
(``fastgan.train.step.Engine.phase_names``: for the DCGAN family :data:`PHASES`; a CycleGAN-like task
opens others: ``G_step``, ``D_step``, ``G_AB_ema``...). The functions here take that list as
``phases``; ``None`` means :data:`PHASES`, the names a user's own loop uses
(:func:`fastgan.profile.session`). fastgan's ranges do not nest; a user's loop may nest them (``data``
inside ``G_forward``): a kernel then belongs to the innermost one, and a range's host time excludes the
phase ranges nested in it, so every kernel and every host microsecond is counted in at most one phase.
"""
from __future__ import annotations

import bisect
import re
from collections import defaultdict

from torch.autograd import DeviceType

# The default phases: the ranges of the DCGAN family's schedule, in order, and the names a user's own loop
# (fastgan.profile.session) opens; report.json, the charts and such loops rely on them.
PHASES = (
    "data",        # fetching the real batch onto the device (the runner's loader call)
    "G_forward",   # the generator forward that makes the fake batch (shared by the D and G updates when
                   # n_critic == 1; otherwise each D update makes its own under no_grad, and so does the G update)
    "D_forward",   # D on the real and the detached fake batch, and the D loss
    "D_backward",  # the D loss backward (host range around .backward(); kernels by time containment)
    "D_penalty",   # the gradient penalty (R1, WGAN-GP...): its forward and double backward, when it is due
    "D_step",      # D's optimizer step, weight clipping, zero_grad
    "G_loss",      # D on the fake batch and the G loss, forward
    "G_backward",  # the G loss backward through D into G (and G's own forward graph)
    "G_step",      # G's optimizer step, zero_grad
    "G_ema",       # the EMA update of G_ema
)
# Of PHASES, the ranges around the loss terms' forwards and backwards, which only a step that is not replayed
# as a CUDA graph opens on the host: none of them in a window means its iterations were replayed graphs
# (a task's own: ``Engine.step_phase_names``).
STEP_PHASES = ("D_forward", "D_backward", "G_loss", "G_backward")


def phase_list(phases=None) -> tuple[str, ...]:
    """The phases to read, in report order: ``data`` first, then ``phases`` (a task's ranges, e.g.
    ``Engine.phase_names()``; ``None``: :data:`PHASES`) without repeats."""
    names = PHASES if phases is None else tuple(phases)
    return ("data", *dict.fromkeys(n for n in names if n != "data"))


def step_phase_list(phases=None, step_phases=None) -> tuple[str, ...]:
    """The phases whose host ranges only a step that is not replayed as a CUDA graph opens: ``step_phases``
    if given (``Engine.step_phase_names()``), else :data:`STEP_PHASES` for the default phases and every
    phase but ``data`` for a given ``phases``."""
    if step_phases is not None:
        return tuple(step_phases)
    if phases is None:
        return STEP_PHASES
    return phase_list(phases)[1:]


def _is_annotation(e) -> bool:
    return bool(getattr(e, "is_user_annotation", False)) or e.name.startswith("ProfilerStep")


def _is_device(e) -> bool:
    return e.device_type != DeviceType.CPU


def _us(e) -> float:
    return float(e.time_range.end - e.time_range.start)


class _Intervals:
    """The innermost of a set of properly nested host ranges containing a time (or a whole interval): the
    latest-starting range that still contains it (O(log n) for flat ranges)."""

    def __init__(self, ranges):
        # equal starts: the outer (longer) range first, so the walk back meets the inner one first
        self.ranges = sorted(ranges, key=lambda r: (r[0], -r[1], r[2]))
        self.starts = [r[0] for r in self.ranges]
        self.max_end, m = [], float("-inf")
        for r in self.ranges:
            m = max(m, r[1])
            self.max_end.append(m)                  # no range at or before j ends after this: stop looking

    def __call__(self, t: float, t_end: float | None = None):
        t_end = t if t_end is None else t_end
        j = bisect.bisect_right(self.starts, t) - 1
        while j >= 0 and self.max_end[j] >= t_end:
            a, b, _, e = self.ranges[j]
            if a <= t and t_end <= b:
                return e
            j -= 1
        return None


class _PhaseAt:
    """The phase range a launch at host time ``t`` on thread ``thread`` belongs to: the innermost one of that
    thread's own phase ranges; a thread that opens none (autograd's device thread, launching the backward
    kernels) gets the innermost range of the threads that run the step's phases (all but ``data``; any
    thread's if none do). So a range another thread has open (a user's loader thread timing ``data``)
    captures neither the main thread's launches nor autograd's. ``phases``: the phase names (:func:`phase_list`)."""

    def __init__(self, host_events, phases: tuple[str, ...]):
        self.phases = frozenset(phases)
        rows = [(float(e.time_range.start), float(e.time_range.end), i, e)
                for i, e in enumerate(host_events) if e.name in self.phases]
        by_thread: dict = defaultdict(list)
        for r in rows:
            by_thread[getattr(r[3], "thread", 0)].append(r)
        steppers = {th for th, rs in by_thread.items() if any(r[3].name != "data" for r in rs)}
        self.any = _Intervals([r for th, rs in by_thread.items() if th in steppers or not steppers for r in rs])
        self.own = {th: _Intervals(rs) for th, rs in by_thread.items()}

    def __call__(self, t: float, thread=0, t_end: float | None = None):
        """The range event containing ``t`` (or all of ``[t, t_end]``), or None."""
        return self.own.get(thread, self.any)(t, t_end)

    def of(self, e):
        """The phase of launches made by host event ``e`` (None: no event): a phase range launching directly is
        its own phase; another range (a user's annotation, a profiler step) belongs to the innermost phase around
        all of it, since a phase nested inside it would have taken the launch; an op or a CUDA API call belongs
        to the phase open when it started, on its thread."""
        if e is None:
            return None
        if e.name in self.phases:
            return e
        thread = getattr(e, "thread", 0)
        t0 = float(e.time_range.start)
        if _is_annotation(e):
            return self(t0, thread, float(e.time_range.end))
        return self(t0, thread)


def _kernels_of(e, phases) -> list:
    """The device kernels attached to host event ``e``, without kineto's ``gpu_user_annotation`` mirror of a
    ``record_function`` range, which torch attaches to the range's own event as if it were a kernel (same
    name; pytorch#130730): counting it would add the phase's whole span on top of its kernels."""
    ks = getattr(e, "kernels", None) or ()
    return [k for k in ks if k.name != e.name and k.name not in phases]


_RUNTIME_CALL = re.compile(r"^(cuda[A-Z]|cu[A-Z]|hip[A-Z])")   # cudaLaunchKernel, cuLaunchKernelEx, hipLaunchKernel...


def _is_runtime_call(e) -> bool:
    """A host-side CUDA/HIP API call. torch gives these (and kernels) CUPTI's correlation id as ``id`` and links
    them to their op (``linked_correlation_id`` > 0); ops and ranges carry torch's own op ids, another
    numbering: the two must not be looked up in one table."""
    return getattr(e, "linked_correlation_id", 0) > 0 or bool(_RUNTIME_CALL.match(e.name))


def _launches(events, phases) -> list[tuple[float, str, float, object, object]]:
    """Every device kernel/copy with the host event that places it, as ``(order, kernel name, us, host event,
    device event or None)`` in launch order.

    With device events (a real trace), each kernel is placed by the CUDA API call that launched it: the host
    runtime event with the kernel's own correlation id (``id``), whose start and thread say which phase range
    was open then, whatever op (or no op: a Triton kernel launched straight from Python) surrounded it;
    failing that, by the op or range its ``linked_correlation_id`` names. Kernels are ordered by their device
    start, the order a replayed graph follows. Without device events (``FunctionEvent.kernels`` only), each
    host event's attached kernels, ordered by the host event's start; a range's own annotation mirror is
    not a kernel (:func:`_kernels_of`); ``phases``: the phase names, which no kernel carries."""
    phases = frozenset(phases)
    dev = [e for e in events if _is_device(e) and not getattr(e, "is_user_annotation", False)
           and e.name not in phases]
    host = [e for e in events if not _is_device(e)]
    out = []
    if dev:
        runtime = {e.id: e for e in host if getattr(e, "id", 0) and _is_runtime_call(e)}
        linked = {e.id: e for e in host if getattr(e, "id", 0) and not _is_runtime_call(e)}
        for k in dev:
            h = runtime.get(getattr(k, "id", 0) or -1)
            if h is None:
                h = linked.get(getattr(k, "linked_correlation_id", 0) or -1)
            out.append((float(k.time_range.start), k.name, _us(k), h, k))
    else:
        for e in host:
            for k in _kernels_of(e, phases):
                out.append((float(e.time_range.start), k.name, float(getattr(k, "duration", 0.0)), e, None))
    out.sort(key=lambda r: r[0])     # stable: kernels of one launch keep their order
    return out


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
    if w1 <= w0:
        return {"available": False, "reason": "the profiled window has no length on the device (its kernels "
                "took no measurable time)"}
    busy = [(max(a, w0), min(b, w1)) for a, b in busy if b > w0 and a < w1]
    busy_us = sum(b - a for a, b in busy)
    gaps = [b0 - a1 for (_, a1), (b0, _) in zip(busy, busy[1:])]
    lead = (busy[0][0] - w0) if busy else 0.0
    tail = (w1 - busy[-1][1]) if busy else 0.0
    window_us = w1 - w0
    gaps_sorted = sorted(gaps)
    return {"available": True, "reason": None, "window_ms": window_us / 1e3, "busy_ms": busy_us / 1e3,
            "idle_ms": (window_us - busy_us) / 1e3, "idle_frac": (window_us - busy_us) / window_us,
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

def kernel_phase_map(events, phases=None) -> list[tuple[str, str | None]]:
    """(kernel name, phase or None) for every GPU kernel an eagerly run iteration launched, in
    launch order (:func:`_launches`). A kernel's phase is that of the event it is attached to
    (:meth:`_PhaseAt.of`): by time, not by ``cpu_parent``: backward ops run on autograd's device
    thread, which has no parent links to the main thread's ranges. ``phases``: the iteration's range
    names (:func:`phase_list`; ``None``: :data:`PHASES`)."""
    names = phase_list(phases)
    at = _PhaseAt([e for e in events if not _is_device(e)], names)
    out = []
    for _, name, _, e, _ in _launches(events, names):
        r = at.of(e)
        out.append((name, r.name if r is not None else None))
    return out


def phase_device_time(events, phases=None) -> tuple[dict[str, float], dict[str, float], list[tuple[float, float, str]]]:
    """Per phase: (summed kernel us, summed device span us) of the kernels launched while one of its
    range instances was open on the host (by time; see the module doc), and the device spans themselves
    ``(start, end, phase)`` per range instance. Spans need the device events' ``linked_correlation_id``
    (kineto's link to the launch); phases without any are left out. ``phases``: as :func:`kernel_phase_map`."""
    names = phase_list(phases)
    at = _PhaseAt([e for e in events if not _is_device(e)], names)
    busy: dict[str, float] = defaultdict(float)
    span: dict[int, list] = {}                      # range instance -> [first start, last end, name]
    for _, _, us, e, k in _launches(events, names):
        r = at.of(e)
        if r is None:
            continue
        busy[r.name] += us
        if k is not None:
            s = span.setdefault(id(r), [float("inf"), float("-inf"), r.name])
            s[0], s[1] = min(s[0], float(k.time_range.start)), max(s[1], float(k.time_range.end))
    spans: dict[str, float] = defaultdict(float)
    for a, b, name in span.values():
        spans[name] += b - a
    return dict(busy), dict(spans), sorted((a, b, name) for a, b, name in span.values())


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


def _exclusive_ms(ranges) -> dict[int, float]:
    """Host ms of each phase range less the phase ranges nested in it on the same thread (a user's loop
    may open ``data`` inside ``G_forward``): per-phase host times then add up to no more than the step."""
    own: dict[int, float] = {}
    by_thread: dict = defaultdict(list)
    for e in ranges:
        by_thread[getattr(e, "thread", 0)].append(e)
        own[id(e)] = _us(e)
    for evs in by_thread.values():
        stack: list = []
        for e in sorted(evs, key=lambda e: (e.time_range.start, -e.time_range.end)):
            while stack and stack[-1].time_range.end <= e.time_range.start:
                stack.pop()
            if stack and e.time_range.end <= stack[-1].time_range.end:
                own[id(stack[-1])] -= _us(e)         # its direct parent loses it
            stack.append(e)
    return {k: v / 1e3 for k, v in own.items()}


def analyze_events(events, *, cuda: bool, top_n: int = 15, max_steps: int | None = None,
                   kernel_phases: list[tuple[str, str | None]] | None = None, phases=None,
                   step_phases=None) -> dict:
    """Summaries of one profiled window. ``events``: ``prof.events()``; ``max_steps``: how many
    ProfilerStep ranges are real iterations (a trailing range open until the profiler stopped is not).
    ``phases``: the iteration's range names (:func:`phase_list`: ``data`` first; ``None``: :data:`PHASES`),
    the order of the result's ``phases``; ``step_phases``: those whose absence marks a window of replayed
    CUDA graphs (:func:`step_phase_list`). ``kernel_phases``: a :func:`kernel_phase_map` of an eager
    iteration, to attribute such a window's kernels to phases. The result records both lists
    (``phases_order``, ``step_phases``)."""
    order = phase_list(phases)
    step_order = step_phase_list(phases, step_phases)
    names = frozenset(order)
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
    # A CUDA run whose trace holds no device activity at all (CUPTI unavailable or not permitted) has no
    # GPU times to report: null, not zero.
    no_kernels = cuda and not dev_kernels
    dev_us, span_us, dev_spans = phase_device_time(events, order) if (cuda and not no_kernels) else ({}, {}, [])
    own_ms = _exclusive_ms([e for e in cpu if e.name in names])
    for name in order:
        evs = [e for e in cpu if e.name == name]
        if not evs:
            continue
        spans = [e for e in dev_annot if e.name == name]
        span = span_us.get(name, sum(_us(e) for e in spans) if spans else None)
        phases.append({
            "name": name, "count": len(evs),
            "cpu_ms": sum(own_ms[id(e)] for e in evs),
            "device_ms": dev_us.get(name, 0.0) / 1e3 if (cuda and not no_kernels) else None,
            "device_span_ms": span / 1e3 if (cuda and not no_kernels and span is not None) else None,
        })

    attribution = None
    if cuda and kernel_phases and dev_kernels and not any(p["name"] in step_order for p in phases):
        attribution = attribute_kernel_phases(dev_kernels, kernel_phases)
        have = {p["name"] for p in phases}
        for name in order:
            ms = attribution["device_ms"].get(name)
            if ms is not None and name not in have:
                phases.append({"name": name, "count": None, "cpu_ms": None, "device_ms": ms, "device_span_ms": None,
                               "attributed": True})           # host time: not measured (the host only replays)
        phases.sort(key=lambda p: order.index(p["name"]))
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
            if _is_annotation(e) or e.name in names:
                continue
            a = agg[e.name]
            a[0] += float(e.self_cpu_time_total)
            a[1] += 1
        kind = "cpu ops (self CPU time)"
    total = sum(v[0] for v in agg.values()) or 1.0
    top = sorted(agg.items(), key=lambda kv: -kv[1][0])[:top_n]
    top_rows = [{"name": k, "calls": int(v[1]), "time_ms": v[0] / 1e3, "share": v[0] / total} for k, v in top]

    if no_kernels:
        gaps = {"available": False, "reason": "the profiler recorded no GPU kernels in this CUDA run (CUPTI "
                "unavailable or not permitted?): nothing to measure, not an idle GPU"}
    elif cuda:
        intervals = [(float(e.time_range.start), float(e.time_range.end)) for e in dev_kernels]
        window = (steps[0].time_range.start, max(float(e.time_range.end) for e in dev_kernels)) \
            if (steps and dev_kernels) else None
        gaps = idle_gaps(intervals, window)
        if gaps["available"]:
            gaps["how"] = ("union of all device kernels/copies over streams; gaps summed between consecutive busy "
                           "intervals; window from the first profiled step's start to the last kernel's end")
    else:
        gaps = {"available": False, "reason": "n/a on CPU: idle gaps between GPU kernels need a CUDA run"}

    # Ranges for the timeline plot (ms from the first step / first event). Device spans per range instance
    # from the kernels' correlation (as the table's); kineto's gpu_user_annotation ranges only where the
    # events carry no correlation (they are wrong for backward ranges: kineto#1022).
    t0 = steps[0].time_range.start if steps else (min((e.time_range.start for e in cpu), default=0.0))
    ranges = [{"name": e.name, "start_ms": (e.time_range.start - t0) / 1e3, "dur_ms": _us(e) / 1e3, "where": "cpu"}
              for e in cpu if e.name in names]
    if dev_spans:
        ranges += [{"name": n, "start_ms": (a - t0) / 1e3, "dur_ms": (b - a) / 1e3, "where": "device"}
                   for a, b, n in dev_spans]
    else:
        ranges += [{"name": e.name, "start_ms": (e.time_range.start - t0) / 1e3, "dur_ms": _us(e) / 1e3,
                    "where": "device"} for e in dev_annot if e.name in names]
    kernel_busy = [((e.time_range.start - t0) / 1e3, _us(e) / 1e3) for e in dev_kernels] if cuda else []

    return {"step_ms": step_ms, "phases": phases, "phases_order": list(order), "step_phases": list(step_order),
            "phase_attribution": attribution, "no_device_events": no_kernels,
            "top": {"kind": kind, "total_ms": total / 1e3, "rows": top_rows},
            "idle_gaps": gaps, "ranges": ranges, "kernel_intervals_ms": kernel_busy}
