"""fastgan bench: timing arithmetic on stub clocks, FLOP counts, the baselines, a tiny matrix end to end.

No test asserts anything about real timings.
"""
import json
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastgan.bench import BenchConfig, format_table, markdown_table, run_bench, write_outputs
from fastgan.bench import stats as S
from fastgan.bench.baselines import TutorialStep, tutorial_discriminator, tutorial_generator
from fastgan.bench.harness import (ROW_FIELDS, TOP_FIELDS, Case, _RegistryFlopCounter, add_ratios, count_flops,
                                   run_row, _Data)
from fastgan.bench.peaks import lookup_peak, peak_for
from fastgan.cli import main
from fastgan.variants import get_variant


pytestmark = pytest.mark.usefixtures("one_thread")


class StubClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class StubTimer:
    """Runs the calls for real, reports ``per_call`` seconds each."""

    kind = "stub"

    def __init__(self, per_call):
        self.per_call = per_call

    def time(self, fn, n):
        for _ in range(n):
            fn()
        return n * self.per_call


# ----------------------------------------------------------------------------- arithmetic


def test_percentiles_on_known_samples():
    xs = [5.0, 1.0, 4.0, 2.0, 3.0]
    s = S.summarize(xs)
    assert s["median"] == 3.0 and s["min"] == 1.0 and s["max"] == 5.0
    assert s["p20"] == pytest.approx(1.8) and s["p80"] == pytest.approx(4.2)
    for q in (0, 20, 50, 80, 100):
        assert S.percentile(xs, q) == pytest.approx(np.percentile(xs, q))
    assert S.percentile([7.0], 80) == 7.0


def test_throughput_units():
    t = S.throughput(64, 0.5)
    assert t["img_per_s"] == 128.0
    assert t["s_per_kimg"] == 1000 * 0.5 / 64
    assert t["s_per_kimg"] == pytest.approx(1000 / t["img_per_s"])


def test_wall_timer_and_measure_with_stub_clock():
    clock = StubClock()

    def step():
        clock.now += 0.125

    syncs = []
    timer = S.WallTimer(sync=lambda: syncs.append(1), clock=clock)
    assert timer.time(step, 4) == 0.5
    assert len(syncs) == 2                       # before and after the window
    assert S.measure(step, timer, steps=8, repeats=3) == [0.125, 0.125, 0.125]


def test_warmup_stops_when_three_timings_agree():
    clock = StubClock()
    costs = iter([5.0, 1.0, 0.5, 0.52, 0.5, 0.5])   # compile, settle, then within 10%

    def step():
        clock.now += next(costs)

    wu = S.warmup(step, S.WallTimer(clock=clock), chunk=1, max_steps=50)
    assert wu["converged"] and wu["steps"] == 5
    assert wu["timings_s"] == pytest.approx([5.0, 1.0, 0.5, 0.52, 0.5])

    # Two slow steps that agree are not the steady state (seen on a busy 2-core box: 4.57 s, 4.58 s, then 0.07 s).
    clock3 = StubClock()
    plateau = iter([4.57, 4.58, 0.07, 0.07, 0.07, 0.07])

    def settling():
        clock3.now += next(plateau)

    wu = S.warmup(settling, S.WallTimer(clock=clock3), chunk=1, max_steps=50)
    assert wu["converged"] and wu["steps"] == 5 and wu["timings_s"][-1] == pytest.approx(0.07)

    clock2 = StubClock()
    seq = iter([1.0, 2.0] * 20)

    def noisy():
        clock2.now += next(seq)

    wu = S.warmup(noisy, S.WallTimer(clock=clock2), chunk=1, max_steps=6)
    assert not wu["converged"] and wu["steps"] == 6


def test_row_throughput_from_stub_timer():
    """A real tiny step, timed by a stub: img/s and s/kimg follow exactly from batch x n_critic and 0.25 s."""
    spec = get_variant("dcgan")
    cfg = spec.model_config(False, resolution=16, channels=1, width=4)
    bc = BenchConfig(cases=[Case("dcgan", 16, 4)], steps=1, repeats=3, warmup=2, device="cpu")
    data = _Data("synthetic", 16, 1, 4, torch.device("cpu"), 0)
    row = run_row("eager-tutorial", spec, cfg, Case("dcgan", 16, 4), "fp32", data, torch.device("cpu"), bc,
                  timer=StubTimer(0.25))
    assert row["status"] == "ok", row["reason"]
    assert row["samples_s"] == [0.25, 0.25, 0.25]
    assert row["median_s"] == row["p20_s"] == row["p80_s"] == 0.25
    assert row["img_per_step"] == 4
    assert row["img_per_s"] == 16.0 and row["s_per_kimg"] == 62.5
    assert row["warmup_converged"] and row["warmup_steps"] == 3       # at least three chunks to agree
    assert row["recompiles_timed"] == 0


def test_ratios():
    def r(mode, ips, prec="bf16", status="ok"):
        return {"variant": "dcgan", "resolution": 32, "batch": 64, "mode": mode, "precision": prec,
                "status": status, "img_per_s": ips}

    rows = [r("eager-tutorial", 100.0, "fp32"), r("eager-best", 150.0), r("compile", 200.0),
            r("compile-ro", None, status="failed"), r("fastgan", 500.0), r("eager-best", 120.0, "fp32")]
    add_ratios(rows)
    fg = rows[4]
    assert fg["vs_tutorial"] == 5.0 and fg["vs_best_baseline"] == 2.5 and fg["best_baseline_mode"] == "compile"
    assert rows[0]["vs_tutorial"] == 1.0
    assert rows[3]["vs_tutorial"] is None
    assert rows[5]["vs_best_baseline"] == pytest.approx(120 / 120) and rows[5]["best_baseline_mode"] == "eager-best"


# ----------------------------------------------------------------------------- FLOPs and peaks


def test_conv_flops_match_the_formula():
    n, cin, cout, k, h = 2, 3, 5, 4, 16
    x, w = torch.randn(n, cin, h, h), torch.randn(cout, cin, k, k)
    ho = (h + 2 * 1 - k) // 2 + 1
    expected = 2 * n * cout * ho * ho * cin * k * k
    assert count_flops(lambda: F.conv2d(x, w, stride=2, padding=1)) == expected
    with _RegistryFlopCounter() as c:
        F.conv2d(x, w, stride=2, padding=1)
    assert c.total == expected
    a, b = torch.randn(8, 16), torch.randn(16, 32)
    assert count_flops(lambda: a @ b) == 2 * 8 * 16 * 32


def test_peak_table():
    assert lookup_peak("NVIDIA H100 80GB HBM3")[0] == {"bf16": 989.0, "tf32": 494.5, "fp32": 67.0}
    assert lookup_peak("NVIDIA H100 PCIe")[0]["bf16"] == 756.0
    assert lookup_peak("NVIDIA H200")[0]["fp32"] == 67.0
    assert lookup_peak("NVIDIA H200 NVL")[0]["bf16"] == 835.0          # not the SXM part's figures
    assert lookup_peak("NVIDIA A100-SXM4-80GB")[0]["bf16"] == 312.0
    assert lookup_peak("NVIDIA L4")[0]["bf16"] == 121.0
    assert lookup_peak("NVIDIA GeForce RTX 4090")[0]["fp32"] == 82.6
    peaks, why = lookup_peak("NVIDIA L40S")
    assert peaks is None and "L40S" in why
    assert peak_for({"bf16": 989.0, "fp32": 67.0}, "bf16") == 989.0 and peak_for(None, "fp32") is None
    # fp32 rows whose convolutions cuDNN runs in TF32 are compared with the TF32 peak, not plain FP32's
    h100 = lookup_peak("NVIDIA H100 80GB HBM3")[0]
    assert peak_for(h100, "fp32", tf32=True) == 494.5 and peak_for(h100, "fp32") == 67.0


def test_fp32_rows_with_tf32_use_tf32_peak_and_ceiling():
    from fastgan.bench.harness import _derive

    row = {"status": "ok", "median_s": 0.01, "precision": "fp32"}
    ceilings = {"fp32": {"tflops": 400.0, "math": "tf32"}}
    _derive(row, 10 ** 12, {"bf16": 989.0, "tf32": 494.5, "fp32": 67.0}, ceilings, tf32=True)
    assert row["math"] == "tf32" and row["tflops"] == pytest.approx(100.0)
    assert row["frac_peak"] == pytest.approx(100.0 / 494.5) and row["frac_matmul"] == pytest.approx(0.25)
    _derive(row, 10 ** 12, {"bf16": 989.0, "tf32": 494.5, "fp32": 67.0}, ceilings, tf32=False)
    assert row["math"] == "fp32" and row["frac_peak"] == pytest.approx(100.0 / 67.0)


# ----------------------------------------------------------------------------- baselines


@pytest.mark.parametrize("variant", ["dcgan", "wgan-gp"])
def test_tutorial_models_mirror_fastgan(variant):
    spec = get_variant(variant)
    G, D, cfg = spec.build(False, resolution=32, channels=3, width=8)
    tg, td = tutorial_generator(cfg), tutorial_discriminator(cfg)
    count = lambda m: sum(p.numel() for p in m.parameters())   # noqa: E731
    assert count(tg) == count(G) and count(td) == count(D)
    assert not any(m.__module__.startswith("fastgan") for m in list(tg.main) + list(td.main))
    z = torch.randn(2, cfg.z_dim)
    assert tg(z[:, :, None, None]).shape == G(z).shape == (2, 3, 32, 32)
    assert td(G(z)).view(-1).shape == D(G(z)).shape == (2,)


@pytest.mark.parametrize("variant", ["dcgan", "dcgan-minimax", "hinge", "lsgan", "wgan", "wgan-gp", "dcgan-r1"])
def test_tutorial_step_runs_every_objective(variant):
    spec = get_variant(variant)
    cfg = spec.model_config(False, resolution=16, channels=1, width=4)
    step = TutorialStep(spec, cfg, mode="eager-tutorial", device="cpu")
    real = torch.rand(3, 1, 16, 16) * 2 - 1
    g0 = [p.detach().clone() for p in step.modelG.parameters()]
    step.step(lambda: real)
    assert step.nimg == 3 * spec.n_critic and step.d_steps == spec.n_critic
    assert any(not torch.equal(a, b) for a, b in zip(g0, step.modelG.parameters()))
    if spec.clip is not None:
        assert max(p.abs().max().item() for p in step.modelD.parameters()) <= spec.clip + 1e-7


def test_cuda_only_modes_are_skipped_on_cpu():
    spec = get_variant("dcgan")
    cfg = spec.model_config(False, resolution=16, channels=1, width=4)
    bc = BenchConfig(cases=[Case("dcgan", 16, 4)], steps=1, repeats=1, warmup=1, device="cpu")
    data = _Data("synthetic", 16, 1, 4, torch.device("cpu"), 0)
    row = run_row("compile-ro", spec, cfg, Case("dcgan", 16, 4), "fp32", data, torch.device("cpu"), bc)
    assert row["status"] == "skipped" and row["reason"] == "CUDA only"


# ----------------------------------------------------------------------------- end to end


def test_tiny_matrix_end_to_end(tmp_path):
    bc = BenchConfig.matrix(["dcgan"], [16], [4], modes=["eager-tutorial", "eager-best", "fastgan", "compile-max",
                                                         "fastgan:graphs", "fastgan:fuse", "fastgan:compile-ro"],
                            width=4, steps=1, repeats=2, warmup=1, device="cpu")
    lines, partial_docs = [], []
    result = run_bench(bc, log=lines.append, on_row=partial_docs.append)
    assert set(TOP_FIELDS) <= set(result)
    assert [len(d["rows"]) for d in partial_docs] == list(range(1, 8)) and all(d["partial"] for d in partial_docs)
    assert result["partial"] is False
    assert result["schema"] == "fastgan.bench/1"
    assert result["device"]["type"] == "cpu" and result["device"]["name"]
    assert result["device"]["peak_tflops"] is None and "CPU" in result["device"]["peak_source"]
    assert set(result["versions"]) >= {"python", "torch", "triton"}
    host = socket.gethostname()
    assert "commit" in result["git"] and (len(host) < 6 or host not in json.dumps(result))
    assert result["matmul_ceiling"]["fp32"]["tflops"] > 0
    rows = {r["mode"]: r for r in result["rows"]}
    assert list(rows) == ["eager-tutorial", "eager-best", "fastgan", "compile-max", "fastgan:graphs", "fastgan:fuse",
                          "fastgan:compile-ro"]
    for r in result["rows"]:
        assert set(ROW_FIELDS) <= set(r), set(ROW_FIELDS) - set(r)
    for mode in ("eager-tutorial", "eager-best", "fastgan", "compile-max", "fastgan:fuse"):
        r = rows[mode]
        assert r["status"] == "ok", r["reason"]
        assert r["img_per_step"] == 4 and len(r["samples_s"]) == 2
        assert r["p20_s"] <= r["median_s"] <= r["p80_s"]
        assert r["img_per_s"] == pytest.approx(4 / r["median_s"])
        assert r["s_per_kimg"] == pytest.approx(1000 / r["img_per_s"])
        assert r["flops_per_step"] > 0 and r["tflops"] == pytest.approx(r["flops_per_step"] / r["median_s"] / 1e12)
        assert r["frac_peak"] is None and r["frac_matmul"] > 0
        assert r["peak_mem_kind"] == "cpu_peak_rss_growth" and r["peak_mem_bytes"] >= 0
        assert r["recompiles_timed"] == 0
        assert r["vs_tutorial"] == pytest.approx(r["img_per_s"] / rows["eager-tutorial"]["img_per_s"])
    assert rows["eager-tutorial"]["precision"] == "fp32" and rows["eager-tutorial"]["settings"]["channels_last"] is False
    assert rows["fastgan"]["settings"]["requested_mode"] == "auto"
    assert rows["fastgan:fuse"]["settings"]["fuse"] is True and "fastgan.fuse" in rows["fastgan:fuse"]["settings"]["note"]
    assert rows["compile-max"]["settings"]["compile"] == "max-autotune"   # Inductor's max-autotune runs on CPU too
    assert rows["fastgan:graphs"]["status"] == "skipped" and rows["fastgan:graphs"]["reason"]
    assert rows["fastgan:compile-ro"]["status"] == "skipped" and rows["fastgan:compile-ro"]["reason"] == "CUDA only"
    assert any("CPU run" in n for n in result["notes"])

    table = format_table(result)
    assert "CPU run" in table and "eager-tutorial" in table and "skipped: CUDA only" in table
    jp, pp = write_outputs(result, tmp_path)
    assert jp.name.startswith("bench-cpu-") and jp.suffix == ".json" and pp.suffix == ".png"
    assert json.loads(jp.read_text())["rows"][0]["mode"] == "eager-tutorial"
    assert pp.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = markdown_table(jp)
    assert md.count("\n| dcgan |") == 7 and "skipped: CUDA only" in md


def test_cli_bench_writes_json_and_png(tmp_path, capsys):
    out = tmp_path / "res"
    rc = main(["bench", "--variants", "dcgan", "--resolutions", "16", "--batches", "4", "--modes",
               "eager-tutorial,fastgan", "--width", "4", "--steps", "1", "--repeats", "2", "--warmup", "1",
               "--device", "cpu", "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    js, pngs = list(out.glob("bench-*.json")), list(out.glob("bench-*.png"))
    assert len(js) == 1 and len(pngs) == 1
    doc = json.loads(js[0].read_text())
    assert [r["mode"] for r in doc["rows"]] == ["eager-tutorial", "fastgan"]
    assert doc["settings"]["steps"] == 1 and doc["settings"]["repeats"] == 2 and doc["settings"]["width"] == 4
    assert "img/s" in captured.out and str(js[0]) in captured.out


@pytest.mark.parametrize("argv, needle", [
    (["bench", "--modes", "eager,fastgan", "--device", "cpu"], "unknown bench mode 'eager'"),
    (["bench", "--batches", "16,x", "--device", "cpu"], "--batches expects comma-separated integers"),
    (["bench", "--variants", "dcgann", "--device", "cpu"], "unknown variant 'dcgann'"),
    (["bench", "--precisions", "fp8", "--device", "cpu"], "unknown precision 'fp8'"),
])
def test_cli_bench_bad_input_is_one_line(argv, needle, capsys, tmp_path):
    rc = main(argv + ["--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and needle in err[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.gpu
def test_gpu_matrix_rows(tmp_path):
    bc = BenchConfig.matrix(["dcgan"], [32], [64], modes=["eager-tutorial", "eager-best", "compile-ro", "fastgan",
                                                          "fastgan:fuse"],
                            width=16, steps=5, repeats=2, warmup=20, device="cuda")
    result = run_bench(bc, log=None)
    assert result["device"]["type"] == "cuda" and result["matmul_ceiling"]["bf16"]["tflops"] > 0
    for r in result["rows"]:
        assert r["status"] in ("ok", "skipped"), (r["mode"], r["reason"])
        if r["status"] == "ok":
            assert r["timer"] == "cuda-events" and r["peak_mem_kind"] == "cuda_max_memory_allocated"
            assert r["peak_mem_bytes"] > 0 and r["frac_matmul"] > 0
    rows = {r["mode"]: r for r in result["rows"]}
    assert rows["eager-best"]["settings"]["channels_last"] and rows["eager-best"]["precision"] == "bf16"
    jp, pp = write_outputs(result, tmp_path)
    assert "| fastgan |" in markdown_table(jp)


def test_tables_flag_rows_that_ran_without_cuda_graphs(tmp_path):
    from fastgan.bench.report import table_rows

    row = {"variant": "dcgan", "resolution": 32, "batch": 64, "precision": "bf16", "mode": "compile-ro",
           "status": "ok", "img_per_s": 1000.0, "img_per_s_p20": 990.0, "img_per_s_p80": 1010.0, "s_per_kimg": 1.0,
           "cudagraph_skips": 3, "recompiles_timed": 0}
    result = {"device": {"type": "cuda", "name": "H100"}, "versions": {"torch": "x", "triton": "y"},
              "git": {"commit": "abc"}, "created": "2026-11-23T00:00:00", "rows": [row]}
    assert "cudagraph skips 3" in table_rows(result)[0][4]
    p = tmp_path / "r.json"
    p.write_text(json.dumps(result))
    assert "compile-ro (CUDA graphs skipped ×3)" in markdown_table(p)


def test_fuse_trainer_mode_trains_the_tutorial_models_fused():
    """fastgan:fuse-trainer: the baselines' own stock-module G/D, through fastgan.fuse, in fastgan.Trainer."""
    from fastgan.bench.harness import build_runner
    from fastgan.nn import BatchNormAct2d

    spec = get_variant("dcgan")
    cfg = spec.model_config(False, resolution=16, channels=1, width=4)
    r = build_runner("fastgan:fuse-trainer", spec, cfg, device=torch.device("cpu"), precision="fp32", batch=4, seed=0)
    assert r.settings["models"].startswith("the tutorial's") and r.settings["requested_mode"] == "fuse-trainer"
    assert type(r.trainer.G.main).__name__ == "Sequential" and type(r.trainer.G).__name__ == "Generator"
    assert any(isinstance(m, BatchNormAct2d) for m in r.trainer.G.modules())
    assert r.trainer.z_shape == (cfg.z_dim, 1, 1)
    g0 = [p.detach().clone() for p in r.trainer.G.parameters()]
    real = r.prepare(torch.rand(4, 1, 16, 16) * 2 - 1)
    r.step(lambda: real)
    assert r.nimg == 4 and any(not torch.equal(a, b) for a, b in zip(g0, r.trainer.G.parameters()))


def test_graphs_eagerpen_variant_turns_the_compiled_penalty_off():
    from fastgan.bench.harness import ENGINE_VARIANTS, FASTGAN_MODES, build_runner
    from fastgan.errors import ConfigError

    assert ENGINE_VARIANTS["graphs-eagerpen"] == ("graphs", "default") and "fastgan:graphs-eagerpen" in FASTGAN_MODES
    spec = get_variant("wgan-gp")
    cfg = spec.model_config(False, resolution=16, channels=1, width=4)
    with pytest.raises(ConfigError, match="CUDA only"):   # like every engine variant
        build_runner("fastgan:graphs-eagerpen", spec, cfg, device=torch.device("cpu"), precision="fp32", batch=4, seed=0)


def test_recompile_column_counts_everything_recorded_while_timing():
    """Dynamo recompiles, Inductor CUDA graphs (re)recorded and fastgan captures during the timed windows all
    land in the table's recompile column; Inductor's cudagraph skips are labelled on CUDA rows only."""
    from fastgan.bench.report import table_rows, timed_recompiles

    row = {"variant": "dcgan", "resolution": 32, "batch": 64, "precision": "bf16", "mode": "fastgan", "status": "ok",
           "img_per_s": 1.0, "img_per_s_p20": 1.0, "img_per_s_p80": 1.0, "s_per_kimg": 1.0, "recompiles_timed": 0,
           "cudagraph_recorded_timed": 1, "cudagraph_rerecords_timed": 0, "captures_timed": 2, "cudagraph_skips": 3}
    assert timed_recompiles(row) == 3 and timed_recompiles({"recompiles_timed": None}) is None
    for kind, label in (("cpu", "fastgan"), ("cuda", "fastgan (cudagraph skips 3)")):
        (r,) = table_rows({"device": {"type": kind}, "rows": [row]})
        assert r[4] == label and r[12] == "3"
