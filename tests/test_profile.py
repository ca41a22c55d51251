"""fastgan profile: report + trace on CPU, NVML degrading cleanly, the session() context manager.

GPU-marked tests run the NVML path for real (skipped without CUDA).
"""
import json

import pytest
import torch
from torch import nn
from torch.profiler import record_function

import fastgan
from fastgan.cli import main
from fastgan.profile import NvmlSampler, profile_training, session
from fastgan.profile.analyze import (PHASES, analyze_events, attribute_kernel_phases, idle_gaps, kernel_phase_map,
                                     merge_intervals, phase_list)
from fastgan.profile.nvml import summarize_samples
from fastgan.tasks.base import Forward, Noise, OptimizerSpec, Task, Term, Update

HAS_CUDA = torch.cuda.is_available()


pytestmark = pytest.mark.usefixtures("one_thread")


def _toy_loop(s, steps: int, batch: int = 4):
    """A user's own loop: a linear 'G' and 'D' with their own phases."""
    torch.manual_seed(0)
    G, D = nn.Linear(8, 16), nn.Linear(16, 1)
    opt = torch.optim.SGD(list(G.parameters()) + list(D.parameters()), lr=0.01)
    for _ in range(steps):
        with s.phase("data"):
            x = torch.randn(batch, 16)
        with record_function("D_forward"):
            loss_d = (D(x) - D(G(torch.randn(batch, 8)).detach())).mean()
        with record_function("D_backward"):
            loss_d.backward()
        with record_function("G_loss"):
            loss_g = -D(G(torch.randn(batch, 8))).mean()
        with record_function("G_backward"):
            loss_g.backward()
        opt.step()
        opt.zero_grad()
        s.step(images=batch)


# ----------------------------------------------------------------------------- arithmetic


def test_idle_gap_arithmetic():
    assert merge_intervals([(5, 20), (0, 10), (30, 40)]) == [(0, 20), (30, 40)]
    g = idle_gaps([(0.0, 10.0), (5.0, 20.0), (30.0, 40.0)])
    assert g["available"] and g["window_ms"] == 0.040 and g["busy_ms"] == 0.030
    assert g["idle_ms"] == pytest.approx(0.010) and g["idle_frac"] == pytest.approx(0.25)
    assert g["n_gaps"] == 1 and g["largest_gap_ms"] == pytest.approx(0.010)
    g = idle_gaps([(10.0, 20.0)], window=(0.0, 40.0))
    assert g["idle_frac"] == pytest.approx(0.75) and g["lead_ms"] == pytest.approx(0.010)
    assert idle_gaps([])["available"] is False


class _Ev:
    """The FunctionEvent fields the analysis reads."""

    def __init__(self, name, start, end, *, device=False, parent=None, kernels=(), annotation=False, id=0, corr=0):
        from types import SimpleNamespace

        from torch.autograd import DeviceType

        self.name, self.cpu_parent, self.is_user_annotation = name, parent, annotation
        self.id, self.linked_correlation_id = id, corr      # a device event's corr: its launch event's id
        self.time_range = SimpleNamespace(start=start, end=end)
        self.device_type = DeviceType.CUDA if device else DeviceType.CPU
        self.kernels = [SimpleNamespace(name=k, duration=0.0) if isinstance(k, str) else
                        SimpleNamespace(name=k[0], duration=float(k[1])) for k in kernels]
        self.device_time_total = 0.0
        self.self_cpu_time_total = float(end - start)
        self.thread = 0


def test_graphs_mode_phases_are_attributed_from_the_warm_up_kernels():
    # The eager warm-up iteration: launches inside D_forward (a cuDNN benchmark trial included),
    # one outside any phase, G_loss, G_step.
    d = _Ev("D_forward", 0, 10)
    g = _Ev("G_loss", 20, 30)
    o = _Ev("G_step", 30, 40)
    warm = [d, g, o,
            _Ev("cudaLaunchKernel", 1, 2, parent=_Ev("aten::conv", 1, 3, parent=d), kernels=["conv", "trial"]),
            _Ev("cuLaunchKernelEx", 4, 5, parent=d, kernels=["bn"]),
            _Ev("cudaLaunchKernel", 12, 13, kernels=["gen"]),
            _Ev("cudaLaunchKernel", 21, 22, parent=g, kernels=["conv"]),
            _Ev("cudaLaunchKernel", 31, 32, parent=o, kernels=["adam"])]
    pmap = kernel_phase_map(warm)
    assert pmap == [("conv", "D_forward"), ("trial", "D_forward"), ("bn", "D_forward"), ("gen", None),
                    ("conv", "G_loss"), ("adam", "G_step")]
    # Two replays (no trial kernel; one kernel the warm-up never launched), durations in us.
    t, replay = 100.0, []
    for name, us in [("conv", 10), ("bn", 2), ("gen", 3), ("conv", 5), ("adam", 1),
                     ("conv", 10), ("bn", 2), ("memset", 4), ("gen", 3), ("conv", 5), ("adam", 1)]:
        replay.append(_Ev(name, t, t + us, device=True))
        t += us + 1
    got = attribute_kernel_phases(replay, pmap)
    assert got["device_ms"] == pytest.approx({"D_forward": 0.024, "other": 0.006, "G_loss": 0.010, "G_step": 0.002})
    assert got["unattributed_ms"] == pytest.approx(0.004)
    assert got["matched_frac"] == pytest.approx(42 / 46)
    # In a window: ProfilerStep ranges and the host-side 'data' phase, no step-phase ranges.
    events = [_Ev("ProfilerStep#1", 99, 130), _Ev("ProfilerStep#2", 130, 160), _Ev("data", 99, 100)] + replay
    a = analyze_events(events, cuda=True, max_steps=2, kernel_phases=pmap)
    ph = {p["name"]: p for p in a["phases"]}
    assert [p["name"] for p in a["phases"]] == ["data", "D_forward", "G_loss", "G_step"]
    assert ph["D_forward"]["attributed"] and ph["D_forward"]["device_ms"] == pytest.approx(0.024)
    assert not ph["data"].get("attributed")
    assert a["phase_attribution"]["map_kernels"] == 6
    # The warm-up's noise: a backward kernel launched from autograd's device thread (no parent link
    # to the main thread's range, but inside it in time), Inductor autotuning (a kernel benchmarked
    # 150 times with cache-flush fills), and a lazy penalty (D_penalty) that the replays do not run.
    r = _Ev("D_penalty", 10, 20)
    bench = [_Ev("cudaLaunchKernel", 1 + i / 1000, 1 + i / 1000, kernels=["tuned", "flush"]) for i in range(150)]
    noisy = [d, r, g, o, *bench,
             _Ev("aten::convolution_backward", 3, 4, kernels=["conv_bwd"]),      # other thread, no parent
             _Ev("aten::mul", 11, 12, parent=r, kernels=["pen"] * 80),
             _Ev("cudaLaunchKernel", 21, 22, parent=g, kernels=["conv"]),
             _Ev("cudaLaunchKernel", 31, 32, parent=o, kernels=["adam"])]
    pmap = kernel_phase_map(noisy)
    assert ("conv_bwd", "D_forward") in pmap and pmap.count(("tuned", "D_forward")) == 150
    t, replay = 0.0, []
    for _ in range(3):
        for name, us in [("tuned", 4), ("conv_bwd", 6), ("conv", 5), ("adam", 1)]:
            replay.append(_Ev(name, t, t + us, device=True))
            t += us + 1
    got = attribute_kernel_phases(replay, pmap)
    assert got["device_ms"] == pytest.approx({"D_forward": 0.030, "G_loss": 0.015, "G_step": 0.003})
    assert got["matched_frac"] == 1.0

    # Without a map (or with host ranges present) nothing is attributed.
    assert analyze_events(events, cuda=True, max_steps=2)["phase_attribution"] is None
    from fastgan.profile.report import build_report

    rep = build_report(schema="s", title="t", created="c", device={"type": "cuda", "name": "x"}, versions={}, git={},
                       config={}, analysis=a, n_steps=2, warmup=0, requested_steps=2, window_steps=2,
                       window_images=8, wall_s=0.06, window_wall=(None, None), nvml_status=None, nvml_samples=[])
    assert rep["window"]["phases_note"].startswith("graphs mode") and "91.3% of kernel time matched" in rep["notes"][0]
    dm = {p["name"]: p["device_ms_per_step"] for p in rep["phases"]}
    assert dm["D_forward"] == pytest.approx(0.012) and dm["other (outside phases)"] == pytest.approx((46 - 42 + 6) / 2e3)


def test_eager_cuda_phase_device_time_counts_autograd_thread_kernels():
    """Eager/compiled steps on CUDA: a backward range's GPU time is the kernels launched while it was
    open, from any thread. Autograd's device thread launches them with no parent link to the main
    thread's range (so FunctionEvent.device_time_total would give the backward range ~0)."""
    d_fwd, d_bwd, g_step = _Ev("D_forward", 0, 10), _Ev("D_backward", 10, 30), _Ev("G_step", 30, 40)
    for r in (d_fwd, d_bwd, g_step):
        r.device_time_total = 999.0                    # what the parent links say: must not be used
    launch = [_Ev("cudaLaunchKernel", 1, 2, parent=_Ev("aten::conv", 1, 3, parent=d_fwd), kernels=[("conv", 5)], id=1),
              _Ev("cudaLaunchKernel", 12, 13, kernels=[("conv_bwd", 7)], id=2),          # autograd's thread
              _Ev("cudaLaunchKernel", 20, 21, kernels=[("wgrad", 3)], id=3),             # autograd's thread
              _Ev("cudaLaunchKernel", 31, 32, parent=g_step, kernels=[("adam", 1)], id=4),
              _Ev("cudaLaunchKernel", 45, 46, kernels=[("memset", 2)], id=5)]            # outside every phase
    # torch: a kernel's FunctionEvent id is CUPTI's correlation id, the same as its runtime launch call's
    kern = [_Ev("conv", 3, 8, device=True, id=1), _Ev("conv_bwd", 14, 21, device=True, id=2),
            _Ev("wgrad", 25, 28, device=True, id=3), _Ev("adam", 33, 34, device=True, id=4),
            _Ev("memset", 47, 49, device=True, id=5)]
    a = analyze_events([_Ev("ProfilerStep#1", 0, 50), d_fwd, d_bwd, g_step, *launch, *kern], cuda=True, max_steps=1)
    ph = {p["name"]: p for p in a["phases"]}
    assert list(ph) == ["D_forward", "D_backward", "G_step"] and a["phase_attribution"] is None
    assert ph["D_backward"]["device_ms"] == pytest.approx(0.010) and ph["D_forward"]["device_ms"] == pytest.approx(0.005)
    assert ph["D_backward"]["device_span_ms"] == pytest.approx(0.014)          # 14 .. 28 us
    assert ph["G_step"]["device_ms"] == pytest.approx(0.001)
    from fastgan.profile.report import build_report

    rep = build_report(schema="s", title="t", created="c", device={"type": "cuda", "name": "x"}, versions={}, git={},
                       config={}, analysis=a, n_steps=1, warmup=0, requested_steps=1, window_steps=1,
                       window_images=4, wall_s=0.05, window_wall=(None, None), nvml_status=None, nvml_samples=[])
    other = {p["name"]: p for p in rep["phases"]}["other (outside phases)"]
    assert other["device_ms"] == pytest.approx(0.002) and "phases_note" not in rep["window"]


def test_a_ranges_own_gpu_annotation_is_not_counted_as_a_kernel():
    """torch attaches kineto's gpu_user_annotation for a record_function range to the range's own event as a
    'kernel' of the same name (pytorch#130730); it must not add the range's span to the phase's kernel time
    nor enter the graphs-mode phase map."""
    from fastgan.profile.analyze import kernel_phase_map

    d_fwd = _Ev("D_forward", 0, 10, kernels=[("D_forward", 9)])
    launch = _Ev("cudaLaunchKernel", 1, 2, parent=d_fwd, kernels=[("conv", 5)], id=1)
    kern = _Ev("conv", 3, 8, device=True, id=1)
    a = analyze_events([_Ev("ProfilerStep#1", 0, 20), d_fwd, launch, kern], cuda=True, max_steps=1)
    assert {p["name"]: p for p in a["phases"]}["D_forward"]["device_ms"] == pytest.approx(0.005)
    assert kernel_phase_map([d_fwd, launch, kern]) == [("conv", "D_forward")]


def test_a_phase_open_on_another_thread_does_not_capture_this_threads_launches():
    """A user's loader thread times `data` while the main thread runs D_forward: the main thread's launch
    belongs to its own D_forward, and so does autograd's (a thread with no phase ranges of its own takes the
    range of the thread running the step's phases)."""
    from fastgan.profile.analyze import kernel_phase_map

    d_fwd = _Ev("D_forward", 0, 10)
    data = _Ev("data", 2, 9)
    data.thread = 7                                   # the loader thread
    launch = _Ev("cudaLaunchKernel", 4, 5, parent=d_fwd, kernels=["conv"])
    bwd = _Ev("cudaLaunchKernel", 6, 6.5, kernels=["conv_bwd"])
    bwd.thread = 3                                    # autograd's device thread: no ranges of its own
    assert kernel_phase_map([d_fwd, data, launch, bwd]) == [("conv", "D_forward"), ("conv_bwd", "D_forward")]


def test_graphs_mode_attribution_with_every_step_phase():
    """A warm-up iteration as fastgan's step runs it: the G forward that makes the fake batch, D's loss
    forward, its backward (kernels launched by autograd's device thread: no parent link, inside the
    D_backward host range by time), the penalty, D's step, G's loss forward, its backward, G's step
    and the EMA update; replays of the graph are attributed to all of them."""
    rng = {n: _Ev(n, a, b) for n, a, b in [("G_forward", 10, 20), ("D_forward", 20, 30), ("D_backward", 30, 45),
                                           ("D_penalty", 45, 60), ("D_step", 60, 65), ("G_loss", 65, 72),
                                           ("G_backward", 72, 90), ("G_step", 90, 95), ("G_ema", 95, 100)]}
    assert list(rng) == [p for p in PHASES if p != "data"]

    def launch(t, phase, *kernels):      # a launch on the main thread, under an op inside the phase range
        return _Ev("cudaLaunchKernel", t, t + 0.5, parent=_Ev("aten::op", t, t + 1, parent=rng[phase]), kernels=kernels)

    def autograd_thread(t, *kernels):    # a backward op on autograd's device thread: no parent at all
        return _Ev("aten::convolution_backward", t, t + 0.5, kernels=kernels)

    warm = [*rng.values(),
            launch(11, "G_forward", "gemm"), launch(12, "G_forward", "bn_act"),
            launch(21, "D_forward", "conv"), launch(22, "D_forward", "loss_fwd"),
            autograd_thread(32, "loss_bwd"), autograd_thread(40, "conv_bwd"),
            launch(46, "D_penalty", "conv"), autograd_thread(50, "grad_conv_bwd"), autograd_thread(55, "conv_bwd"),
            launch(61, "D_step", "adam"),
            launch(66, "G_loss", "conv"), launch(67, "G_loss", "loss_fwd"),
            autograd_thread(73, "loss_bwd"), autograd_thread(80, "conv_bwd"), autograd_thread(85, "gemm_bwd"),
            launch(91, "G_step", "adam"), launch(96, "G_ema", "lerp")]
    pmap = kernel_phase_map(warm)
    assert pmap == [("gemm", "G_forward"), ("bn_act", "G_forward"), ("conv", "D_forward"), ("loss_fwd", "D_forward"),
                    ("loss_bwd", "D_backward"), ("conv_bwd", "D_backward"), ("conv", "D_penalty"),
                    ("grad_conv_bwd", "D_penalty"), ("conv_bwd", "D_penalty"), ("adam", "D_step"),
                    ("conv", "G_loss"), ("loss_fwd", "G_loss"), ("loss_bwd", "G_backward"), ("conv_bwd", "G_backward"),
                    ("gemm_bwd", "G_backward"), ("adam", "G_step"), ("lerp", "G_ema")]
    # Two replays; kernel k of the map lasts k + 1 us, so each phase's share is known.
    t, replay = 1000.0, []
    for _ in range(2):
        for k, (name, _) in enumerate(pmap):
            replay.append(_Ev(name, t, t + k + 1, device=True))
            t += k + 2
    want = {}
    for k, (_, phase) in enumerate(pmap):
        want[phase] = want.get(phase, 0.0) + 2 * (k + 1) / 1e3
    got = attribute_kernel_phases(replay, pmap)
    assert got["device_ms"] == pytest.approx(want) and got["matched_frac"] == 1.0 and got["unattributed_ms"] == 0
    events = [_Ev("ProfilerStep#1", 990, 1200), _Ev("ProfilerStep#2", 1200, 1400), _Ev("data", 991, 993),
              _Ev("data", 1201, 1203)] + replay
    a = analyze_events(events, cuda=True, max_steps=2, kernel_phases=pmap)
    assert [p["name"] for p in a["phases"]] == list(PHASES)
    for p in a["phases"]:
        if p["name"] == "data":
            assert p["count"] == 2 and not p.get("attributed")
        else:
            assert p["attributed"] and p["device_ms"] == pytest.approx(want[p["name"]]), p
    # A window that has step-phase host ranges (eager or compiled steps, or a capture that fell back)
    # keeps its measured phases: nothing is attributed.
    for name in ("D_forward", "G_backward"):
        b = analyze_events(events + [_Ev(name, 1010, 1020)], cuda=True, max_steps=2, kernel_phases=pmap)
        assert b["phase_attribution"] is None and [p["name"] for p in b["phases"]] == ["data", name]


# A CycleGAN-like task's ranges, none of them a default phase (PHASES).
_OTHER = ("G_AB_forward", "D_A_forward", "D_A_backward", "D_A_step", "G_AB_loss", "G_AB_backward", "G_AB_step",
          "G_AB_ema")


def _other_task_events():
    """One iteration of the _OTHER ranges, 10 us each, each launching one kernel (k<i>, i + 1 us) from inside."""
    rng = {n: _Ev(n, 10 * i + 10, 10 * i + 20) for i, n in enumerate(_OTHER)}
    launches, kernels = [], []
    for i, n in enumerate(_OTHER):
        t = 10 * i + 11
        launches.append(_Ev("cudaLaunchKernel", t, t + 1, parent=rng[n], kernels=[(f"k{i}", i + 1)], id=i + 1))
        kernels.append(_Ev(f"k{i}", t + 2, t + 3 + i, device=True, id=i + 1))
    return [_Ev("ProfilerStep#1", 0, 100), _Ev("data", 1, 9), *rng.values(), *launches, *kernels]


def test_a_task_with_other_phase_names_is_analyzed_with_them():
    """Events of a task whose schedule names other ranges: with ``phases=`` those are the phases (``data``
    first, then the given order) with their host and device time; with the default phases they are none."""
    events = _other_task_events()
    order = _OTHER[::-1]                                      # not the run order: the given order is kept
    a = analyze_events(events, cuda=True, max_steps=1, phases=order)
    assert a["phases_order"] == ["data", *order] and a["step_phases"] == list(order)
    assert [p["name"] for p in a["phases"]] == ["data", *order]
    ph = {p["name"]: p for p in a["phases"]}
    for i, n in enumerate(_OTHER):
        assert ph[n]["count"] == 1 and ph[n]["cpu_ms"] == pytest.approx(0.010), n
        assert ph[n]["device_ms"] == pytest.approx((i + 1) / 1e3), n
    assert ph["data"]["count"] == 1 and ph["data"]["device_ms"] == 0.0
    assert {r["name"] for r in a["ranges"]} == {"data", *_OTHER}
    assert kernel_phase_map(events, _OTHER) == [(f"k{i}", n) for i, n in enumerate(_OTHER)]
    # The default phases know none of these ranges: their time is nobody's phase.
    d = analyze_events(events, cuda=True, max_steps=1)
    assert [p["name"] for p in d["phases"]] == ["data"] and d["phases_order"] == list(PHASES)
    assert kernel_phase_map(events) == [(f"k{i}", None) for i in range(len(_OTHER))]

    from fastgan.profile.report import build_report

    rep = build_report(schema="s", title="t", created="c", device={"type": "cuda", "name": "x"}, versions={}, git={},
                       config={}, analysis=a, n_steps=1, warmup=0, requested_steps=1, window_steps=1,
                       window_images=4, wall_s=0.1, window_wall=(None, None), nvml_status=None, nvml_samples=[])
    assert rep["phases_order"] == ["data", *order]
    assert [p["name"] for p in rep["phases"]] == ["data", *order, "other (outside phases)"]
    assert "phases_note" not in rep["window"] and ", ".join(["data", *order]) in " ".join(rep["notes"])


def test_a_task_with_other_phase_names_in_graphs_mode():
    """A replayed window of such a task: its kernels are attributed to its phases, in its order; its
    ``step_phases`` say which host ranges mean the step was not replayed."""
    warm = _other_task_events()
    pmap = kernel_phase_map(warm, _OTHER)
    t, replay = 1000.0, []
    for _ in range(2):
        for k, (name, _) in enumerate(pmap):
            replay.append(_Ev(name, t, t + k + 1, device=True))
            t += k + 2
    window = [_Ev("ProfilerStep#1", 990, 1100), _Ev("ProfilerStep#2", 1100, 1200), _Ev("data", 991, 992),
              _Ev("data", 1101, 1102)] + replay
    a = analyze_events(window, cuda=True, max_steps=2, kernel_phases=pmap, phases=_OTHER)
    assert [p["name"] for p in a["phases"]] == ["data", *_OTHER]
    for k, p in enumerate(a["phases"][1:]):
        assert p["attributed"] and p["device_ms"] == pytest.approx(2 * (k + 1) / 1e3), p
    # A loop that runs its EMA on the host outside the graph: not a step phase when the task says so ...
    ema = _Ev("G_AB_ema", 1050, 1060)
    step = ("D_A_forward", "D_A_backward", "G_AB_loss", "G_AB_backward")
    b = analyze_events(window + [ema], cuda=True, max_steps=2, kernel_phases=pmap, phases=_OTHER, step_phases=step)
    assert b["phase_attribution"] is not None and b["step_phases"] == list(step)
    # ... while without step_phases every phase but data is one, and a measured phase stops the attribution.
    c = analyze_events(window + [ema], cuda=True, max_steps=2, kernel_phases=pmap, phases=_OTHER)
    assert c["phase_attribution"] is None and [p["name"] for p in c["phases"]] == ["data", "G_AB_ema"]
    # Without a map, the report names the task's step ranges it found missing.
    from fastgan.profile.report import build_report

    d = analyze_events(window, cuda=True, max_steps=2, phases=_OTHER, step_phases=step)
    rep = build_report(schema="s", title="t", created="c", device={"type": "cuda", "name": "x"}, versions={}, git={},
                       config={}, analysis=d, n_steps=2, warmup=0, requested_steps=2, window_steps=2,
                       window_images=8, wall_s=0.2, window_wall=(None, None), nvml_status=None, nvml_samples=[])
    assert rep["window"]["phases_note"].startswith("no D_A_forward/D_A_backward/G_AB_loss/G_AB_backward ranges")


def test_timeline_orders_by_the_reports_own_phases(monkeypatch):
    """The timeline's rows follow the report's phases_order; a report without one (written before it) gets
    the default PHASES."""
    from matplotlib.axes import Axes

    from fastgan.profile.report import plot_timeline

    rows = []
    monkeypatch.setattr(Axes, "set_yticklabels", lambda self, labels, **kw: rows.append(list(labels)))
    a = analyze_events(_other_task_events(), cuda=True, max_steps=1, phases=_OTHER)
    report = {"nvml": {"available": False, "reason": "test"}, "window": {}, "phases_order": a["phases_order"]}
    assert plot_timeline(report, a)[:4] == b"\x89PNG"
    del report["phases_order"]
    plot_timeline(report, a)
    assert rows == [["data", *_OTHER], list(PHASES)]


class _TwoWayTask(Task):
    """A task with none of the DCGAN family's names: G_AB makes fakes from noise; D_B (with a gradient
    penalty) tells them from real B; the G_AB update trains through D_B."""
    ema = ("G_AB",)
    generator = "G_AB"
    batch_fields = ("B",)

    def __init__(self):
        self.nets = {"G_AB": nn.Linear(6, 6), "D_B": nn.Linear(6, 1)}

    def optimizers(self):
        return {n: OptimizerSpec() for n in self.nets}

    def noise(self):
        return {"z": Noise("normal", (6,))}

    def schedule(self):
        def penalty(nets, b):
            x = b["x"]
            (g,) = torch.autograd.grad(nets.D_B(x).sum(), x, create_graph=True)
            return g.square().sum(1).mean(), {}

        fwd = Forward("G_AB_forward", lambda nets, b: {"fake_B": nets.G_AB(b["z"])}, nets=("G_AB",), noise=("z",))
        d = (Term("D_B_forward", lambda nets, b: ((nets.D_B(b["fake_B"]) - nets.D_B(b["B"])).mean(), {})),
             Term("D_B_penalty", penalty, prepare=lambda b: {"x": b["B"].detach().requires_grad_(True)}))
        g = Term("G_AB_loss", lambda nets, b: (-nets.D_B(b["fake_B"]).mean(), {}), backward="G_AB_backward")
        return [fwd, Update("D_B", ("D_B",), d), Update("G_AB", ("G_AB",), (g,), data=False)]


def _two_way_engine():
    from fastgan.train.step import Engine

    torch.manual_seed(0)
    task = _TwoWayTask()
    opts = {n: torch.optim.SGD(m.parameters(), lr=0.01) for n, m in task.nets.items()}
    return Engine(task, opts, batch=4, device=torch.device("cpu"))


def test_session_reports_a_tasks_own_phase_names(tmp_path):
    """The engine's phase names, passed to session(), are the report's phases: each range the iteration opened,
    in the schedule's order; the same loop read with the default phases has only data."""
    from fastgan.profile.runner import engine_phases

    engine = _two_way_engine()
    phases, step = engine_phases(engine)
    assert phases == ("data", "G_AB_forward", "D_B_forward", "D_B_forward_backward", "D_B_penalty", "D_B_step",
                      "G_AB_loss", "G_AB_backward", "G_AB_step", "G_AB_ema")
    assert step == ("D_B_forward", "D_B_forward_backward", "D_B_penalty", "G_AB_loss", "G_AB_backward")

    def next_batch():
        with record_function("data"):
            return {"B": torch.randn(4, 6)}

    with session(tmp_path / "s", device="cpu", phases=engine.phase_names(), step_phases=step) as s:
        for _ in range(3):
            engine.iteration(next_batch)
            s.step(images=4)
    doc = json.loads((tmp_path / "s" / "report.json").read_text())
    assert doc["phases_order"] == list(phases)
    assert [p["name"] for p in doc["phases"]] == [*phases, "other (outside phases)"]
    for p in doc["phases"][:-1]:
        assert p["count"] == 3 and p["cpu_ms"] > 0, p
    html = (tmp_path / "s" / "report.html").read_text()
    assert all(f"<td>{n}</td>" in html for n in phases)

    with session(tmp_path / "d", device="cpu") as s:
        for _ in range(2):
            engine.iteration(next_batch)
            s.step(images=4)
    assert [p["name"] for p in s.report["phases"]] == ["data", "other (outside phases)"]


def test_phase_lookup_takes_the_innermost_range():
    """A user's loop may nest ranges; a launch belongs to the innermost one open (equal starts too), and
    a launch after every range closed to none."""
    outer, inner, late = _Ev("G_forward", 0, 50), _Ev("data", 0, 10), _Ev("G_ema", 60, 70)
    evs = [outer, inner, late] + [_Ev("cudaLaunchKernel", t, t, kernels=[k])
                                  for t, k in ((0, "a"), (5, "b"), (20, "c"), (55, "d"), (65, "e"), (80, "f"))]
    assert kernel_phase_map(evs) == [("a", "data"), ("b", "data"), ("c", "G_forward"), ("d", None), ("e", "G_ema"),
                                     ("f", None)]


def test_first_graphs_iteration_is_profiled_around_the_warm_up_only():
    """The runner hands the engine a context for its eager warm-up (the capture stays outside it)."""
    from types import SimpleNamespace

    from fastgan.profile.runner import _first_iteration_phase_map

    seen = []

    class Engine:
        warmup_context = None

        def phase_names(self):
            return ["D_forward"]

        def step_phase_names(self):
            return ["D_forward"]

        def iteration(self):
            with self.warmup_context():
                with record_function("D_forward"):
                    seen.append(torch.ones(2) + 1)
            seen.append("captured outside the profiler")

    eng = Engine()
    trainer = SimpleNamespace(engine=eng, step=lambda next_batch: eng.iteration())
    assert _first_iteration_phase_map(trainer, None) == []      # CPU: no device kernels to map
    assert eng.warmup_context is None and len(seen) == 2


def test_nvml_summary_arithmetic():
    samples = [{"t": 0.0, "gpu_util": 50.0, "power_w": 100.0, "energy_mj": 1000.0, "sm_clock_mhz": 1500.0,
                "mem_used_bytes": 10},
               {"t": 1.0, "gpu_util": 100.0, "power_w": 300.0, "energy_mj": 201000.0, "sm_clock_mhz": 1700.0,
                "mem_used_bytes": 30}]
    s = summarize_samples(samples)
    assert s["gpu_util_mean"] == 75.0 and s["power_w_max"] == 300.0 and s["mem_used_max_bytes"] == 30
    assert s["energy_j"] == 200.0 and "Energy" in s["energy_source"]
    s = summarize_samples([{**x, "energy_mj": None} for x in samples])
    assert s["energy_j"] == 200.0 and "integral" in s["energy_source"]     # (100 + 300) / 2 W x 1 s
    s = summarize_samples(samples, t0=0.5)
    assert s["n_samples"] == 1 and s["energy_j"] is None


# ----------------------------------------------------------------------------- NVML without a GPU


@pytest.mark.skipif(HAS_CUDA, reason="checks the no-GPU path")
def test_nvml_sampler_degrades_without_gpu():
    s = NvmlSampler(0, interval=0.01)
    assert s.status["available"] is False
    assert isinstance(s.status["reason"], str) and s.status["reason"]
    assert s.status["gpm"]["available"] is False
    assert "kernel was running" in s.status["note"]
    assert s.start() is s and s.sample() is None
    s.stop()
    assert s.samples == []
    assert summarize_samples(s.samples)["energy_j"] is None


# ----------------------------------------------------------------------------- the profiler on CPU


def test_profile_training_cpu_report(tmp_path):
    out = tmp_path / "prof"
    rep = profile_training(variant="dcgan", resolution=16, batch=8, debug=True, steps=3, warmup=1, device="cpu",
                           out=out, log=None)
    files = rep["files"]
    assert set(files) == {"json", "html", "trace"}
    doc = json.loads((out / "report.json").read_text())
    assert doc["schema"] == "fastgan.profile/1" and doc["device"]["type"] == "cpu"
    assert doc["window"]["status"] == "ok" and doc["window"]["steps"] == 3 and doc["window"]["warmup"] == 1
    assert doc["window"]["images"] == 24 and doc["window"]["img_per_s"] > 0
    assert doc["config"]["engine_mode"] == "eager" and doc["config"]["penalty_mode"] == "none"
    ph = {p["name"]: p for p in doc["phases"]}
    # The phases are the loader's range and the engine's: dcgan (n_critic 1, no penalty) runs each of them once
    # per iteration, in its schedule's order.
    from fastgan.train.build import create

    engine = create("dcgan", flavor="debug", resolution=16, channels=doc["config"]["channels"], batch_size=8,
                    device="cpu", mode="eager").engine
    want = ["data", *engine.phase_names()]
    assert "D_penalty" not in want and len(want) == 9
    assert doc["phases_order"] == want
    assert [p["name"] for p in doc["phases"]] == want + ["other (outside phases)"]
    for name in want:
        assert ph[name]["count"] == 3 and ph[name]["cpu_ms"] > 0 and ph[name]["cpu_ms_per_step"] > 0, name
        assert ph[name]["device_ms"] is None                     # no GPU: null, not zero
    # The G forward, D's backward and G's backward are phases now, not 'other'.
    assert sum(ph[n]["cpu_ms"] for n in want) > ph["other (outside phases)"]["cpu_ms"]
    assert doc["top"]["kind"].startswith("cpu ops") and doc["top"]["rows"]
    assert abs(sum(r["share"] for r in doc["top"]["rows"]) - 1.0) < 0.5
    assert doc["idle_gaps"]["available"] is False and "n/a" in doc["idle_gaps"]["reason"]
    nv = doc["nvml"]
    assert nv["available"] is False and nv["reason"] and nv["summary"] is None and nv["samples"] == []
    assert doc["config"]["variant"] == "dcgan" and doc["config"]["mode"] == "eager"
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2
    assert "NVML unavailable" in html and "<script" not in html
    assert all(f"<td>{n}</td>" in html for n in want)
    trace = json.loads((out / "trace.json").read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert set(want) <= names


def _phase_at(events, phases):
    """The phase range (host, by time) containing an event's start: what kernel_phase_map does on CUDA."""
    ranges = [(e.time_range.start, e.time_range.end, e.name) for e in events if e.name in phases]
    return lambda e: next((n for a, b, n in ranges if a <= e.time_range.start <= b), None)


@pytest.mark.parametrize("variant", ["dcgan-r1", "wgan-gp"])
def test_step_ranges_hold_their_ops(variant):
    """The engine's ranges on one eager CPU iteration: one flat range per phase (no nesting), every
    autograd backward node inside a backward range (or the penalty's), every forward convolution inside
    a forward range; with n_critic > 1 each D update makes its own fake batch and so does the G update."""
    from torch.profiler import ProfilerActivity, profile

    from fastgan.train.trainer import Trainer
    from fastgan.variants import get_variant

    spec = get_variant(variant)
    G, D, _ = spec.build(True, resolution=16, channels=1)
    tr = Trainer(G, D, loss=spec.objective, n_critic=spec.n_critic, clip=spec.clip, batch_size=4, device="cpu",
                 mode="eager", seed=0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        tr.step(lambda: torch.randn(4, 1, 16, 16))          # the first D update carries the (lazy) penalty
    events = [e for e in prof.events() if e.name != "data"]
    phases = phase_list(tr.engine.phase_names())
    assert phases == PHASES                                  # the DCGAN family's schedule opens the default ranges
    ranges = sorted((e for e in events if e.name in phases), key=lambda e: e.time_range.start)
    for r0, r1 in zip(ranges, ranges[1:]):
        assert r0.time_range.end <= r1.time_range.start, (r0.name, r1.name)   # flat: no phase nests in another
    n = spec.n_critic
    count = {name: sum(e.name == name for e in ranges) for name in phases}
    assert count == {"data": 0, "G_forward": n + 1 if n > 1 else 1, "D_forward": n, "D_backward": n,
                     "D_penalty": n if variant == "wgan-gp" else 1, "D_step": n, "G_loss": 1, "G_backward": 1,
                     "G_step": 1, "G_ema": 1}
    order = [e.name for e in ranges]
    assert order[-4:] == ["G_loss", "G_backward", "G_step", "G_ema"]
    phase = _phase_at(events, phases)
    bwd = [e for e in events if e.name.startswith("autograd::engine::evaluate_function")]
    assert {phase(e) for e in bwd} == {"D_backward", "D_penalty", "G_backward"}
    convs = [e for e in events if e.name == "aten::convolution"]
    assert {phase(e) for e in convs} >= {"G_forward", "D_forward", "G_loss"}
    assert {phase(e) for e in convs} <= {"G_forward", "D_forward", "D_penalty", "G_loss"}
    steps = [e for e in events if e.name.startswith("Optimizer.step")]
    assert steps and {phase(e) for e in steps} == {"D_step", "G_step"}


def test_session_around_a_user_loop(tmp_path):
    with session(tmp_path / "s", device="cpu") as s:
        _toy_loop(s, steps=4)
    rep = s.report
    assert rep["window"]["steps"] == 4 and rep["window"]["images"] == 16 and rep["window"]["wall_s"] > 0
    assert rep["window"]["step_ms"]["median"] > 0
    names = [p["name"] for p in rep["phases"]]
    assert names[:5] == ["data", "D_forward", "D_backward", "G_loss", "G_backward"]
    assert rep["nvml"]["available"] is False
    for k in ("json", "html", "trace"):
        assert (tmp_path / "s" / f"{'report.' + k if k != 'trace' else 'trace.json'}").exists()


def test_session_schedule_skips_warmup(tmp_path):
    with session(tmp_path / "w", device="cpu", steps=2, warmup=3) as s:
        _toy_loop(s, steps=6)                        # 3 warm-up, 2 profiled, 1 after the window
    rep = s.report
    assert rep["window"]["steps"] == 2 and rep["window"]["images"] == 8
    assert len(rep["window"]["step_ms"]) == 5        # median/p20/p80/min/max over the 2 profiled steps
    assert {p["name"]: p["count"] for p in rep["phases"]}["D_forward"] == 2


def test_session_with_too_few_steps_reports_why(tmp_path):
    with session(tmp_path / "few", device="cpu", steps=5, warmup=3) as s:
        _toy_loop(s, steps=2)
    w = s.report["window"]
    assert w["status"] == "empty" and "fewer than warmup" in w["reason"]
    assert (tmp_path / "few" / "report.html").exists()


def test_session_exception_propagates_and_writes_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with session(tmp_path / "x", device="cpu") as s:
            _toy_loop(s, steps=1)
            raise RuntimeError("boom")
    assert not (tmp_path / "x" / "report.json").exists()
    assert not (tmp_path / "x" / "trace.json").exists()


def test_public_api():
    assert fastgan.profile.session is session


def test_cli_profile(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["profile", "--debug", "--resolution", "16", "--batch", "8", "--steps", "2", "--warmup", "1",
               "--device", "cpu", "--compile-mode", "default", "--channels-last", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert (out / "report.html").exists() and (out / "report.json").exists() and (out / "trace.json").exists()
    assert "G_backward" in captured.out and "NVML unavailable" in captured.out
    cfg = json.loads((out / "report.json").read_text())["config"]
    assert cfg["compile_mode"] == "default" and cfg["channels_last"] is True and cfg["mode"] == "eager"


def test_cli_profile_compile_flags_match_train():
    from fastgan.cli import build_parser

    parser = build_parser()
    a = parser.parse_args(["profile", "--mode", "compile", "--compile-mode", "reduce-overhead", "--no-channels-last"])
    assert (a.mode, a.compile_mode, a.channels_last) == ("compile", "reduce-overhead", False)
    a = parser.parse_args(["profile"])
    assert (a.compile_mode, a.channels_last) == ("default", None)
    t = parser.parse_args(["train", "--compile-mode", "max-autotune", "--channels-last"])
    assert (t.compile_mode, t.channels_last) == ("max-autotune", True)
    assert parser.parse_args(["train"]).compile_mode is None        # train: unset, so a --config TOML can set it
    sub = next(x for x in parser._actions if isinstance(x, __import__("argparse")._SubParsersAction))
    helps = {cmd: {act.dest: act.help for act in sub.choices[cmd]._actions} for cmd in ("train", "profile")}
    for dest in ("compile_mode", "channels_last"):
        assert helps["train"][dest] == helps["profile"][dest]


@pytest.mark.parametrize("flags, msg", [
    (["--compile-mode", "bogus"], "unknown compile mode 'bogus'"),
    (["--compile-mode", "max-autotune"], "applies to compiled steps"),                    # eager on CPU
    (["--mode", "compile", "--compile-mode", "reduce-overhead"], "need a CUDA device"),   # CUDA graphs on CPU
])
def test_cli_profile_bad_compile_mode(tmp_path, capsys, flags, msg):
    rc = main(["profile", "--debug", "--resolution", "16", "--batch", "8", "--device", "cpu", *flags,
               "--out", str(tmp_path / "n")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and msg in err[0], err
    assert not (tmp_path / "n").exists()


def test_cli_profile_bad_variant(tmp_path, capsys):
    rc = main(["profile", "--variant", "nope", "--device", "cpu", "--out", str(tmp_path / "n")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "unknown variant 'nope'" in err[0]
    assert not (tmp_path / "n").exists()


# ----------------------------------------------------------------------------- GPU


@pytest.mark.gpu
def test_nvml_sampler_on_gpu():
    s = NvmlSampler(torch.cuda.current_device(), interval=0.05)
    assert s.status["available"], s.status["reason"]
    s.start()
    x = torch.randn(4096, 4096, device="cuda")
    for _ in range(50):
        x = x @ x.T / 4096
    torch.cuda.synchronize()
    import time

    time.sleep(0.3)
    s.stop()
    assert len(s.samples) >= 3
    summ = s.summary()
    assert summ["gpu_util_mean"] is not None and summ["sm_clock_mhz_mean"] > 0 and summ["mem_used_max_bytes"] > 0
    if s.status["gpm"]["available"]:
        assert any(x.get("sm_util") is not None for x in s.samples)


@pytest.mark.gpu
def test_profile_training_gpu(tmp_path):
    rep = profile_training(variant="dcgan", resolution=32, batch=64, steps=5, warmup=3, device="cuda",
                           out=tmp_path / "g", log=None, nvml_interval=0.05)
    assert rep["nvml"]["available"] and rep["nvml"]["summary"]["n_samples"] >= 1
    assert rep["idle_gaps"]["available"] and 0 <= rep["idle_gaps"]["idle_frac"] <= 1
    assert rep["top"]["kind"].startswith("cuda kernels") and rep["top"]["rows"]
    if rep["config"]["mode"] == "graphs":   # per-phase GPU time attributed from the capture iteration
        names = {p["name"] for p in rep["phases"] if p.get("attributed")}
        assert {"G_forward", "D_forward", "D_backward", "D_step", "G_loss", "G_backward", "G_step", "G_ema"} <= names, \
            rep["phases"]
        assert rep["window"]["phases_note"].startswith("graphs mode")


@pytest.mark.gpu
def test_profile_training_gpu_reduce_overhead(tmp_path):
    """The stock CUDA-graph alternative to graphs mode: Inductor's CUDA-graph trees around each compiled
    phase, with the host ranges still entered every iteration, so the phases are measured, not attributed."""
    rep = profile_training(variant="dcgan", resolution=32, batch=64, steps=3, warmup=3, device="cuda",
                           mode="compile", compile_mode="reduce-overhead", out=tmp_path / "ro", log=None,
                           nvml_interval=0.05)
    assert rep["config"]["mode"] == "compile" and rep["config"]["compile_mode"] == "reduce-overhead"
    ph = {p["name"]: p for p in rep["phases"]}
    for name in ("G_forward", "D_forward", "D_backward", "D_step", "G_loss", "G_backward", "G_step", "G_ema"):
        assert ph[name]["count"] == 3 and not ph[name].get("attributed"), name
    for name in ("G_forward", "D_forward", "D_backward", "G_loss", "G_backward"):   # autograd-thread kernels too
        assert ph[name]["device_ms"] > 0, ph[name]
    assert "phases_note" not in rep["window"]


# ----------------------------------------------------------------------------- accounting edge cases


def test_kernels_launched_straight_from_a_range_count_in_its_phase():
    """torch attaches a kernel to the innermost op *or range* open at its launch: a Triton kernel launched from
    Python inside D_forward with no aten op around it belongs to the D_forward event itself (next to the range's
    own annotation mirror, which is not a kernel), and one inside a user's range nested in G_forward to that range."""
    d_fwd = _Ev("D_forward", 0, 10, kernels=[("D_forward", 9), ("bn_act", 4)], id=1)
    gemm = _Ev("aten::mm", 5, 6, kernels=[("gemm", 3)], id=2)
    g_fwd = _Ev("G_forward", 20, 40, id=3)
    mine = _Ev("my_block", 22, 30, kernels=[("my_block", 7), ("mine", 5)], annotation=True, id=4)
    dev = [_Ev("bn_act", 2, 6, device=True, corr=1), _Ev("gemm", 7, 10, device=True, corr=2),
           _Ev("mine", 24, 29, device=True, corr=4)]
    events = [_Ev("ProfilerStep#1", 0, 50), d_fwd, gemm, g_fwd, mine, *dev]
    a = analyze_events(events, cuda=True, max_steps=1)
    ph = {p["name"]: p for p in a["phases"]}
    assert ph["D_forward"]["device_ms"] == pytest.approx(0.007) and ph["G_forward"]["device_ms"] == pytest.approx(0.005)
    assert ph["D_forward"]["device_span_ms"] == pytest.approx(0.008)              # 2 .. 10 us
    # Launch order from the device starts: the range's own kernel ran before the gemm launched inside it.
    assert kernel_phase_map(events) == [("bn_act", "D_forward"), ("gemm", "D_forward"), ("mine", "G_forward")]
    # A user range that encloses a phase and launches outside it: its kernel is in no phase.
    outer = _Ev("iteration", 0, 50, kernels=[("outside", 2)], annotation=True)
    assert kernel_phase_map([outer, _Ev("D_forward", 0, 10)]) == [("outside", None)]


def test_nested_phases_count_host_time_once():
    """A user's loop nesting `data` inside G_forward: G_forward's host time excludes it, shares add to <= 100%."""
    from fastgan.profile.report import build_report

    events = [_Ev("ProfilerStep#1", 0, 100), _Ev("G_forward", 10, 60), _Ev("data", 20, 40), _Ev("D_forward", 60, 90)]
    a = analyze_events(events, cuda=False, max_steps=1)
    ph = {p["name"]: p["cpu_ms"] for p in a["phases"]}
    assert ph == pytest.approx({"data": 0.020, "G_forward": 0.030, "D_forward": 0.030})
    rep = build_report(schema="s", title="t", created="c", device={"type": "cpu", "name": "x"}, versions={}, git={},
                       config={}, analysis=a, n_steps=1, warmup=0, requested_steps=None, window_steps=1,
                       window_images=4, wall_s=0.1, window_wall=(None, None), nvml_status=None, nvml_samples=[])
    shares = {p["name"]: p["share"] for p in rep["phases"]}
    assert sum(shares.values()) == pytest.approx(1.0) and shares["other (outside phases)"] == pytest.approx(0.2)


def test_cuda_run_without_device_events_reports_null_not_zero():
    """CUPTI recorded nothing (e.g. not permitted): GPU figures are n/a, and the report says why."""
    from fastgan.profile.report import build_report

    a = analyze_events([_Ev("ProfilerStep#1", 0, 100), _Ev("D_forward", 10, 60)], cuda=True, max_steps=1)
    assert a["no_device_events"] and a["phases"][0]["device_ms"] is None
    assert a["idle_gaps"]["available"] is False and "no GPU kernels" in a["idle_gaps"]["reason"]
    rep = build_report(schema="s", title="t", created="c", device={"type": "cuda", "name": "x"}, versions={}, git={},
                       config={}, analysis=a, n_steps=1, warmup=0, requested_steps=None, window_steps=1,
                       window_images=4, wall_s=0.1, window_wall=(None, None), nvml_status=None, nvml_samples=[])
    assert "no GPU kernels" in rep["window"]["device_note"] and rep["phases"][0]["device_ms_per_step"] is None


def test_zero_length_device_window_is_not_a_measurement(tmp_path):
    from fastgan.profile.report import build_report, write_report
    from fastgan.profile.runner import format_summary

    assert idle_gaps([(5.0, 5.0)])["available"] is False
    a = analyze_events([_Ev("ProfilerStep#1", 5, 5), _Ev("k", 5, 5, device=True)], cuda=True, max_steps=1)
    assert a["idle_gaps"]["available"] is False
    rep = build_report(schema="s", title="t", created="c", device={"type": "cuda", "name": "x"},
                       versions={"torch": "x"}, git={}, config={}, analysis=a, n_steps=1, warmup=0,
                       requested_steps=None, window_steps=1, window_images=4, wall_s=0.0, window_wall=(None, None),
                       nvml_status=None, nvml_samples=[])
    write_report(rep, a, tmp_path)                       # renders (HTML and charts) without raising
    assert "idle gaps: n/a" in format_summary(rep)


def test_busy_series_is_the_union_over_streams():
    from fastgan.profile.report import busy_series

    one = [(0.0, 5.0), (10.0, 10.0)]                     # busy 15 of 0..20 ms
    _, ys1 = busy_series(one, bins=20)
    _, ys2 = busy_series(one + one, bins=20)             # the same kernels on a second stream at the same times
    assert ys1 == ys2 and sum(ys1) / len(ys1) == pytest.approx(75.0) and max(ys2) == 100.0


def test_graphs_mode_attributed_phases_have_no_host_time():
    pmap = [("conv", "D_forward")]
    events = [_Ev("ProfilerStep#1", 0, 20), _Ev("conv", 1, 5, device=True)]
    a = analyze_events(events, cuda=True, max_steps=1, kernel_phases=pmap)
    (p,) = a["phases"]
    assert p["attributed"] and p["cpu_ms"] is None and p["device_ms"] == pytest.approx(0.004)


# ----------------------------------------------------------------------------- the session's window


def test_window_starts_after_the_warm_up_drains(tmp_path, monkeypatch):
    """The synchronization that opens the window happens before the first profiled step opens, so draining the
    warm-up's queued GPU work is not counted in it (on CPU: a marker range where the sync runs)."""
    from fastgan.profile.session import ProfileSession

    calls = []

    def marked_sync(self):
        calls.append(f"sync_{len(calls) + 1}")
        with record_function(calls[-1]):
            pass

    monkeypatch.setattr(ProfileSession, "_sync", marked_sync)
    with session(tmp_path / "w", device="cpu", steps=2, warmup=2) as s:
        _toy_loop(s, steps=4)
    names = {e.name for e in s._events}
    # the window's opening sync is in the (unrecorded) warm-up; its closing one waits for the window's work
    assert calls[:2] == ["sync_1", "sync_2"] and "D_forward" in names
    assert "sync_1" not in names and "sync_2" in names


def test_nvml_samples_at_the_window_edges(tmp_path):
    from fastgan.profile.session import ProfileSession

    seen = []

    class Sampler:
        def sample(self):
            seen.append(__import__("time").time())
            return {"t": seen[-1]}

    s = ProfileSession(tmp_path / "e", device="cpu")
    s.sampler = Sampler()
    s._begin()
    s._end()
    # just outside the timed window (the reads are not timed), and the NVML summary spans both
    assert len(seen) == 2 and seen[0] <= s._wall_begin and s._wall_end <= seen[1]
    assert (s._nvml_begin, s._nvml_end) == (seen[0], seen[1])


def test_session_refuses_a_folder_holding_a_report(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "report.json").write_text("mine")
    with pytest.raises(fastgan.errors.ConfigError, match="already holds a profile report"):
        with session(out, device="cpu"):
            pass
    assert (out / "report.json").read_text() == "mine"
    with pytest.raises(fastgan.errors.ConfigError, match="nvml_interval"):
        session(tmp_path / "i", device="cpu", nvml_interval=0).__enter__()


def test_exception_after_the_window_leaves_no_trace(tmp_path):
    with pytest.raises(RuntimeError, match="late"):
        with session(tmp_path / "x", device="cpu", steps=1) as s:
            _toy_loop(s, steps=2)                        # the window ended and its trace was processed
            raise RuntimeError("late")
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == []


def test_short_window_is_reported_partial(tmp_path):
    with session(tmp_path / "p", device="cpu", steps=5, warmup=1) as s:
        _toy_loop(s, steps=3)
    w = s.report["window"]
    assert w["status"] == "partial" and w["steps"] == 2 and "2 of the 5" in w["reason"]


def _fake_nvml(monkeypatch, clock):
    """A pynvml with one GPU whose GPM metrics read 80, and a monotonic clock the test moves."""
    import sys
    import types

    nv = types.ModuleType("pynvml")
    ns = types.SimpleNamespace
    nv.NVML_SUCCESS, nv.NVML_CLOCK_SM, nv.NVML_GPM_METRICS_GET_VERSION = 0, 1, 1
    for i, f in enumerate(("SM_UTIL", "SM_OCCUPANCY", "ANY_TENSOR_UTIL", "DRAM_BW_UTIL")):
        setattr(nv, f"NVML_GPM_METRIC_{f}", 10 + i)
    nv.calls = []
    nv.nvmlInit = lambda: None
    nv.nvmlShutdown = lambda: nv.calls.append("shutdown")
    nv.nvmlDeviceGetHandleByUUID = lambda u: (_ for _ in ()).throw(RuntimeError("bad uuid"))
    nv.nvmlDeviceGetHandleByIndex = lambda i: "h"
    nv.nvmlDeviceGetName = lambda h: "FakeGPU"
    nv.nvmlSystemGetDriverVersion = lambda: "1"
    nv.nvmlGpmQueryDeviceSupport = lambda h: ns(isSupportedDevice=1)
    nv.nvmlGpmSampleAlloc = lambda: ns()
    nv.nvmlGpmSampleFree = lambda s: None
    nv.nvmlGpmSampleGet = lambda h, s: s

    def metrics_get(mg):
        nv.calls.append("metrics")
        for i in range(mg.numMetrics):
            mg.metrics[i].value, mg.metrics[i].nvmlReturn = 80.0, 0

    nv.nvmlGpmMetricsGet = metrics_get
    nv.c_nvmlGpmMetricsGet_t = lambda: ns(metrics=[ns(metricId=0, value=0.0, nvmlReturn=1) for _ in range(8)])
    nv.nvmlDeviceGetUtilizationRates = lambda h: ns(gpu=100, memory=50)
    nv.nvmlDeviceGetClockInfo = lambda h, c: 1980
    nv.nvmlDeviceGetMemoryInfo = lambda h: ns(used=1 << 30)
    nv.nvmlDeviceGetPowerUsage = lambda h: 300000
    nv.nvmlDeviceGetTotalEnergyConsumption = lambda h: 1000
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    from fastgan.profile import nvml as mod

    monkeypatch.setattr(mod, "_cuda_uuid", lambda i: "GPU-1234")
    monkeypatch.setattr(mod.time, "monotonic", lambda: clock[0])
    return nv


def test_nvml_gpm_pairs_are_at_least_100ms_apart(monkeypatch):
    clock = [100.0]
    nv = _fake_nvml(monkeypatch, clock)
    s = NvmlSampler(0, interval=0.05)
    assert s.status["available"] and s.status["gpm"]["available"]
    assert "UUID lookup failed" in s.status["mapping"]           # the index fallback is said, not silent
    clock[0] += 0.05
    assert s.sample()["sm_util"] is None and "metrics" not in nv.calls    # too close to the probe's sample
    clock[0] += 0.06
    assert s.sample()["sm_util"] == 80.0
    clock[0] += 0.01
    assert s.sample()["sm_util"] is None                          # the held sample is the one just taken
    s.stop()
    assert s.sample() is None and "shutdown" in nv.calls          # stopped: no reads through a closed NVML


def test_a_kernel_is_placed_by_the_cuda_call_that_launched_it():
    """Real traces: a kernel's own correlation id names its runtime launch call (cuLaunchKernelEx for Triton),
    whose host time and thread give the phase, even with no op around it and no link to the range."""
    d_fwd, g_step = _Ev("D_forward", 0, 10, id=1), _Ev("G_step", 20, 30, id=2)
    launch = _Ev("cuLaunchKernelEx", 3, 4, id=501)                  # a Triton launch straight from Python
    op = _Ev("aten::add_", 21, 22, id=3)
    dev = [_Ev("bn_act_fwd", 5, 9, device=True), _Ev("adam", 23, 25, device=True, corr=3),
           _Ev("orphan", 40, 41, device=True)]
    dev[0].id = 501
    events = [_Ev("ProfilerStep#1", 0, 50), d_fwd, g_step, launch, op, *dev]
    ph = {p["name"]: p["device_ms"] for p in analyze_events(events, cuda=True, max_steps=1)["phases"]}
    assert ph == pytest.approx({"D_forward": 0.004, "G_step": 0.002})
    assert kernel_phase_map(events) == [("bn_act_fwd", "D_forward"), ("adam", "G_step"), ("orphan", None)]


def test_a_failing_window_sync_still_stops_everything_and_keeps_the_blocks_error(tmp_path, monkeypatch):
    from fastgan.profile.session import ProfileSession

    stopped = []

    class Sampler:
        def sample(self):
            return None

        def stop(self):
            stopped.append(True)

    def boom(self):
        if self._t_begin is not None:                    # the window's closing sync: a pending device error
            raise RuntimeError("CUDA error: device-side assert")

    monkeypatch.setattr(ProfileSession, "_sync", boom)
    with pytest.raises(ValueError, match="block failed"):
        with session(tmp_path / "f", device="cpu") as s:
            s.sampler = Sampler()
            _toy_loop(s, steps=1)
            raise ValueError("block failed")
    assert stopped and not torch.autograd._profiler_enabled()
    assert list((tmp_path / "f").iterdir()) == []
    with pytest.raises(RuntimeError, match="device-side assert"):      # no block error: the sync's is reported
        with session(tmp_path / "g", device="cpu") as s:
            _toy_loop(s, steps=1)
    assert not torch.autograd._profiler_enabled() and list((tmp_path / "g").iterdir()) == []
