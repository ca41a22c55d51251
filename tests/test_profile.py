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
from fastgan.profile.analyze import analyze_events, attribute_kernel_phases, idle_gaps, kernel_phase_map, merge_intervals
from fastgan.profile.nvml import summarize_samples

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
        with record_function("D_main"):
            loss_d = (D(x) - D(G(torch.randn(batch, 8)).detach())).mean()
            loss_d.backward()
        with record_function("G_main"):
            loss_g = -D(G(torch.randn(batch, 8))).mean()
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

    def __init__(self, name, start, end, *, device=False, parent=None, kernels=(), annotation=False):
        from types import SimpleNamespace

        from torch.autograd import DeviceType

        self.name, self.cpu_parent, self.is_user_annotation = name, parent, annotation
        self.time_range = SimpleNamespace(start=start, end=end)
        self.device_type = DeviceType.CUDA if device else DeviceType.CPU
        self.kernels = [SimpleNamespace(name=k) for k in kernels]
        self.device_time_total = 0.0
        self.self_cpu_time_total = float(end - start)


def test_graphs_mode_phases_are_attributed_from_the_warm_up_kernels():
    # The eager warm-up iteration: launches inside D_main (a cuDNN benchmark trial included),
    # one outside any phase, G_main, G_opt.
    d = _Ev("D_main", 0, 10)
    g = _Ev("G_main", 20, 30)
    o = _Ev("G_opt", 30, 40)
    warm = [d, g, o,
            _Ev("cudaLaunchKernel", 1, 2, parent=_Ev("aten::conv", 1, 3, parent=d), kernels=["conv", "trial"]),
            _Ev("cuLaunchKernelEx", 4, 5, parent=d, kernels=["bn"]),
            _Ev("cudaLaunchKernel", 12, 13, kernels=["gen"]),
            _Ev("cudaLaunchKernel", 21, 22, parent=g, kernels=["conv"]),
            _Ev("cudaLaunchKernel", 31, 32, parent=o, kernels=["adam"])]
    pmap = kernel_phase_map(warm)
    assert pmap == [("conv", "D_main"), ("trial", "D_main"), ("bn", "D_main"), ("gen", None), ("conv", "G_main"),
                    ("adam", "G_opt")]
    # Two replays (no trial kernel; one kernel the warm-up never launched), durations in us.
    t, replay = 100.0, []
    for name, us in [("conv", 10), ("bn", 2), ("gen", 3), ("conv", 5), ("adam", 1),
                     ("conv", 10), ("bn", 2), ("memset", 4), ("gen", 3), ("conv", 5), ("adam", 1)]:
        replay.append(_Ev(name, t, t + us, device=True))
        t += us + 1
    got = attribute_kernel_phases(replay, pmap)
    assert got["device_ms"] == pytest.approx({"D_main": 0.024, "other": 0.006, "G_main": 0.010, "G_opt": 0.002})
    assert got["unattributed_ms"] == pytest.approx(0.004)
    assert got["matched_frac"] == pytest.approx(42 / 46)
    # In a window: ProfilerStep ranges and the host-side 'data' phase, no D_main/G_main ranges.
    events = [_Ev("ProfilerStep#1", 99, 130), _Ev("ProfilerStep#2", 130, 160), _Ev("data", 99, 100)] + replay
    a = analyze_events(events, cuda=True, max_steps=2, kernel_phases=pmap)
    ph = {p["name"]: p for p in a["phases"]}
    assert [p["name"] for p in a["phases"]] == ["data", "D_main", "G_main", "G_opt"]
    assert ph["D_main"]["attributed"] and ph["D_main"]["device_ms"] == pytest.approx(0.024)
    assert not ph["data"].get("attributed")
    assert a["phase_attribution"]["map_kernels"] == 6
    # The warm-up's noise: a backward kernel launched from autograd's device thread (no parent link
    # to the main thread's range, but inside it in time), Inductor autotuning (a kernel benchmarked
    # 150 times with cache-flush fills), and a lazy penalty (D_reg) that the replays do not run.
    r = _Ev("D_reg", 10, 20)
    bench = [_Ev("cudaLaunchKernel", 1 + i / 1000, 1 + i / 1000, kernels=["tuned", "flush"]) for i in range(150)]
    noisy = [d, r, g, o, *bench,
             _Ev("aten::convolution_backward", 3, 4, kernels=["conv_bwd"]),      # other thread, no parent
             _Ev("aten::mul", 11, 12, parent=r, kernels=["pen"] * 80),
             _Ev("cudaLaunchKernel", 21, 22, parent=g, kernels=["conv"]),
             _Ev("cudaLaunchKernel", 31, 32, parent=o, kernels=["adam"])]
    pmap = kernel_phase_map(noisy)
    assert ("conv_bwd", "D_main") in pmap and pmap.count(("tuned", "D_main")) == 150
    t, replay = 0.0, []
    for _ in range(3):
        for name, us in [("tuned", 4), ("conv_bwd", 6), ("conv", 5), ("adam", 1)]:
            replay.append(_Ev(name, t, t + us, device=True))
            t += us + 1
    got = attribute_kernel_phases(replay, pmap)
    assert got["device_ms"] == pytest.approx({"D_main": 0.030, "G_main": 0.015, "G_opt": 0.003})
    assert got["matched_frac"] == 1.0

    # Without a map (or with host ranges present) nothing is attributed.
    assert analyze_events(events, cuda=True, max_steps=2)["phase_attribution"] is None
    from fastgan.profile.report import build_report

    rep = build_report(schema="s", title="t", created="c", device={"type": "cuda", "name": "x"}, versions={}, git={},
                       config={}, analysis=a, n_steps=2, warmup=0, requested_steps=2, window_steps=2,
                       window_images=8, wall_s=0.06, window_wall=(None, None), nvml_status=None, nvml_samples=[])
    assert rep["window"]["phases_note"].startswith("graphs mode") and "91.3% of kernel time matched" in rep["notes"][0]
    dm = {p["name"]: p["device_ms_per_step"] for p in rep["phases"]}
    assert dm["D_main"] == pytest.approx(0.012) and dm["other (outside phases)"] == pytest.approx((46 - 42 + 6) / 2e3)


def test_first_graphs_iteration_is_profiled_around_the_warm_up_only():
    """The runner hands the engine a context for its eager warm-up (the capture stays outside it)."""
    from types import SimpleNamespace

    from fastgan.profile.runner import _first_iteration_phase_map

    seen = []

    class Engine:
        warmup_context = None

        def iteration(self):
            with self.warmup_context():
                with record_function("D_main"):
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
    assert len(doc["phases"]) >= 3
    ph = {p["name"]: p for p in doc["phases"]}
    for name in ("D_main", "G_main", "D_opt", "G_opt", "G_ema", "data"):
        assert ph[name]["count"] == 3 and ph[name]["cpu_ms"] > 0, name
        assert ph[name]["device_ms"] is None                     # no GPU: null, not zero
    assert "other (outside phases)" in ph
    assert doc["top"]["kind"].startswith("cpu ops") and doc["top"]["rows"]
    assert abs(sum(r["share"] for r in doc["top"]["rows"]) - 1.0) < 0.5
    assert doc["idle_gaps"]["available"] is False and "n/a" in doc["idle_gaps"]["reason"]
    nv = doc["nvml"]
    assert nv["available"] is False and nv["reason"] and nv["summary"] is None and nv["samples"] == []
    assert doc["config"]["variant"] == "dcgan" and doc["config"]["mode"] == "eager"
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2
    assert "NVML unavailable" in html and "D_main" in html and "<script" not in html
    trace = json.loads((out / "trace.json").read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert "D_main" in names and "G_main" in names


def test_session_around_a_user_loop(tmp_path):
    with session(tmp_path / "s", device="cpu") as s:
        _toy_loop(s, steps=4)
    rep = s.report
    assert rep["window"]["steps"] == 4 and rep["window"]["images"] == 16 and rep["window"]["wall_s"] > 0
    assert rep["window"]["step_ms"]["median"] > 0
    names = [p["name"] for p in rep["phases"]]
    assert names[:3] == ["data", "D_main", "G_main"]
    assert rep["nvml"]["available"] is False
    for k in ("json", "html", "trace"):
        assert (tmp_path / "s" / f"{'report.' + k if k != 'trace' else 'trace.json'}").exists()


def test_session_schedule_skips_warmup(tmp_path):
    with session(tmp_path / "w", device="cpu", steps=2, warmup=3) as s:
        _toy_loop(s, steps=6)                        # 3 warm-up, 2 profiled, 1 after the window
    rep = s.report
    assert rep["window"]["steps"] == 2 and rep["window"]["images"] == 8
    assert len(rep["window"]["step_ms"]) == 5        # median/p20/p80/min/max over the 2 profiled steps
    assert {p["name"]: p["count"] for p in rep["phases"]}["D_main"] == 2


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
               "--device", "cpu", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert (out / "report.html").exists() and (out / "report.json").exists() and (out / "trace.json").exists()
    assert "D_main" in captured.out and "NVML unavailable" in captured.out


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
        assert {"D_main", "G_main"} <= names, rep["phases"]
        assert rep["window"]["phases_note"].startswith("graphs mode")
