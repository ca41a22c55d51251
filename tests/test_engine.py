"""Compiled and graphed steps against eager, over several seeded steps."""
import math

import pytest
import torch

import fastgan
from fastgan import Trainer
from fastgan.errors import ConfigError
from fastgan.variants import get_variant


def _make(variant: str, mode: str, device="cpu", precision="fp32", batch=8, adam_eps=1e-5, compile_mode="default",
          compile_penalty=None):
    tr = fastgan.create(variant, flavor="debug", seed=0, batch_size=batch, device=device, mode=mode,
                        precision=precision, compile_mode=compile_mode, compile_penalty=compile_penalty)
    # Adam's update m/(sqrt(v)+eps) is ±lr for any gradient much larger than eps, so with the
    # default eps=1e-8 fp32 rounding noise in near-zero gradients flips whole-lr updates and the
    # two runs drift apart for reasons that have nothing to do with the engine. A larger eps
    # keeps the comparison about the engine (measured: loss drift 6e-4 -> 2e-5 over 5 steps).
    for opt in tr.optimizers.values():
        for group in opt.param_groups:
            if "eps" in group:
                group["eps"] = adam_eps
    return tr


def _run(tr, steps: int, device="cpu", batch=8):
    g = torch.Generator().manual_seed(123)
    reals = [torch.rand(batch, 1, 32, 32, generator=g).mul(2).sub(1) for _ in range(steps * tr.engine.data_repeats)]
    it = iter(reals)
    torch.manual_seed(1)
    losses = []
    for _ in range(steps):
        tr.step(lambda: tr._prep(next(it).to(device)))
        s = tr.stats.read()
        losses.append((s["loss_D"], s["loss_G"]))
    return losses


def _assert_same_training(a, b, la, lb, rtol, atol):
    for (da, ga), (db, gb) in zip(la, lb):
        assert da == pytest.approx(db, rel=rtol, abs=atol) and ga == pytest.approx(gb, rel=rtol, abs=atol)
    for name, m_a, m_b in (("G", a.G, b.G), ("D", a.D, b.D), ("G_ema", a.G_ema, b.G_ema)):
        for (k, pa), pb in zip(m_a.state_dict().items(), m_b.state_dict().values()):
            torch.testing.assert_close(pa.float(), pb.float(), rtol=rtol, atol=atol, msg=f"{name}.{k}")


# dcgan: non-saturating loss, shared fake batch; wgan-gp: n_critic 5 + penalty every D step; dcgan-r1: lazy R1
# (penalty on D step 0 only, so the regularized and plain D updates both run); wgan: weight clipping + RMSprop.
@pytest.mark.parametrize("variant", ["dcgan", "wgan-gp", "dcgan-r1", "wgan"])
def test_compile_matches_eager_on_cpu(variant):
    from torch._dynamo.utils import counters

    eager = _make(variant, "eager")
    comp = _make(variant, "compile")
    le = _run(eager, 2) + _run(eager, 3)
    lc = _run(comp, 2)
    graphs_after_warmup = counters["stats"].get("unique_graphs", 0)
    lc += _run(comp, 3)
    assert counters["stats"].get("unique_graphs", 0) == graphs_after_warmup  # no recompiles
    assert comp.mode == "compile" and comp.engine.fallback_reason is None
    # the penalty phase is compiled too (Dynamo's trace_autograd_ops), not run eagerly
    assert comp.engine.penalty_mode == ("compiled" if comp.objective.has_penalty else "none")
    _assert_same_training(eager, comp, le, lc, rtol=2e-4, atol=4e-4)


def test_penalty_falls_back_to_eager_when_compiling_it_fails():
    eager = _make("dcgan-r1", "eager")
    comp = _make("dcgan-r1", "compile")
    pen = comp.engine._term_fns[("D", "D_penalty")]
    compiled = pen.compiled

    def boom(batch):   # the forward runs, then the (lazily compiled) backward graph fails
        out, stats = compiled(batch)
        return out + _FailingBackward.apply(out), stats

    class _FailingBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            return torch.zeros_like(t)

        @staticmethod
        def backward(ctx, g):
            raise RuntimeError("simulated Inductor backward compile failure")

    pen.compiled = boom
    le, lc = _run(eager, 2), _run(comp, 2)
    assert comp.engine.penalty_mode.startswith("eager (compiling the penalty failed: RuntimeError: simulated Inductor")
    _assert_same_training(eager, comp, le, lc, rtol=2e-4, atol=4e-4)
    off = _make("wgan-gp", "compile")
    assert off.engine.penalty_mode == "compiled"
    torch.manual_seed(0)
    spec = get_variant("wgan-gp")
    G, D, _ = spec.build(debug=True)
    tr = Trainer(G, D, loss=spec.objective, batch_size=8, device="cpu", mode="compile", compile_penalty=False)
    assert tr.engine.penalty_mode == "eager"


def test_compiled_phases_match_eager_tightly():
    """Same inputs, same weights: the compiled G forward and the D/G loss phases (forward and
    backward) agree with eager to fp32 rounding."""
    tr = _make("dcgan", "compile")
    eng, task = tr.engine, tr.task
    torch.manual_seed(5)
    z, real = torch.randn(8, tr.z_dim), torch.rand(8, 1, 32, 32) * 2 - 1
    fake_c, fake_e = eng._fwd_fns[("", "G_forward")]({"z": z})["fake"], tr.G(z)
    torch.testing.assert_close(fake_c, fake_e, rtol=1e-5, atol=1e-6)
    grads = {}
    for name, fn in (("compiled", eng._term_fns[("D", "D_forward")]),
                     ("eager", lambda b: task._d_main(eng.nets, b))):
        tr.D.zero_grad(set_to_none=True)
        loss, _ = fn({"images": real, "fake": fake_e.detach()})
        loss.backward()
        grads[name] = [p.grad.clone() for p in tr.D.parameters()] + [loss.detach()]
    for a, b in zip(grads["compiled"], grads["eager"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    for name, fn in (("compiled", eng._term_fns[("G", "G_loss")]), ("eager", lambda b: task._g_main(eng.nets, b))):
        tr.G.zero_grad(set_to_none=True)
        loss, _ = fn({"fake": tr.G(z)})
        loss.backward(inputs=list(tr.G.parameters()))
        grads[name] = [p.grad.clone() for p in tr.G.parameters()] + [loss.detach()]
    for a, b in zip(grads["compiled"], grads["eager"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_compiled_g_phase_does_not_compute_d_weight_grads():
    """AOTAutograd's backward computes a gradient for every traced input that requires one; the G
    phase passes D's weights detached, so its backward graph returns only the fake batch's gradient
    and every D convolution's backward skips the weight gradient."""
    import functools

    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    from fastgan.train.step import _DetachedWeights

    from fastgan.tasks import Nets

    tr = _make("dcgan", "compile")
    eng = tr.engine
    # The engine's own compiled G phase: even a plain backward() leaves D's weights without gradients.
    tr.D.zero_grad(set_to_none=True)
    loss, _ = eng._term_fns[("G", "G_loss")]({"fake": tr.G(torch.randn(4, tr.z_dim))})
    loss.backward()
    assert all(p.grad is None for p in tr.D.parameters()) and all(p.grad is not None for p in tr.G.parameters())
    graphs = {}

    def record(gm, example_inputs):
        graphs["bw"] = gm
        return make_boxed_func(gm.forward)

    backend = aot_autograd(fw_compiler=lambda gm, ex: make_boxed_func(gm.forward), bw_compiler=record)
    for wrap in (lambda D: D, _DetachedWeights):
        torch._dynamo.reset()
        g_main = functools.partial(tr.task._g_main, Nets({"D": wrap(tr.D)}))
        fn = torch.compile(lambda fake: g_main({"fake": fake}), fullgraph=True, backend=backend)
        loss, _ = fn(tr.G(torch.randn(4, tr.z_dim)))
        loss.backward(inputs=list(tr.G.parameters()))
        bw = graphs.pop("bw")
        outputs = [o for o in next(n for n in bw.graph.nodes if n.op == "output").args[0] if o is not None]
        masks = [n.args[-1] for n in bw.graph.nodes if "convolution_backward" in str(n.target)]
        if wrap is _DetachedWeights:
            assert len(outputs) == 1 and masks and all(m[1:] == [False, False] for m in masks), (outputs, masks)
        else:   # the plain D, to show what the wrapper saves
            assert len(outputs) > 1 and any(m[1] for m in masks)
    torch._dynamo.reset()


def test_compiled_g_phase_keeps_gradients_of_parameters_g_shares_with_d():
    """A parameter in both G and D gets its gradient through D too, as eager's backward(inputs=G) does."""

    from torch import nn

    from fastgan.tasks import GanTask, Nets
    from fastgan.train.step import _DetachedWeights

    torch.manual_seed(0)
    shared = nn.Linear(6, 6)
    G = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), shared)
    D = nn.Sequential(shared, nn.LeakyReLU(0.2), nn.Linear(6, 1), nn.Flatten(0))
    task = GanTask(G, D, z_dim=3)
    keep = frozenset(id(p) for p in G.parameters())
    z = torch.randn(5, 3)
    grads = []
    for fn in (lambda f: task._g_main(Nets({"D": D}), {"fake": f}),
               torch.compile(lambda f: task._g_main(Nets({"D": _DetachedWeights(D, keep)}), {"fake": f}),
                             fullgraph=True)):
        G.zero_grad(set_to_none=True)
        D.zero_grad(set_to_none=True)
        loss, _ = fn(G(z))
        loss.backward(inputs=list(G.parameters()))
        grads.append([p.grad.clone() for p in G.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
    torch._dynamo.reset()


def test_compile_mode_option_is_checked():
    from fastgan.train.step import Engine

    with pytest.raises(ConfigError, match="unknown compile_mode 'fast'; choose one of default, reduce-overhead"):
        _make("dcgan", "compile", compile_mode="fast")
    with pytest.raises(ValueError, match="graphs mode captures the whole iteration itself"):
        Engine(None, None, batch=2, device=torch.device("cuda"), mode="graphs", compile_mode="reduce-overhead")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="adds CUDA graphs, which need a CUDA device"):
            _make("dcgan", "compile", compile_mode="reduce-overhead")
        with pytest.raises(ConfigError, match="applies to compiled steps, but this run is eager"):
            _make("dcgan", "auto", compile_mode="max-autotune-no-cudagraphs")
    tr = _make("dcgan", "compile", compile_mode="max-autotune-no-cudagraphs")
    assert tr.engine.compile_mode == "max-autotune-no-cudagraphs" and not tr.engine._mark_step
    # 'none' (eager phases captured as a CUDA graph) belongs to graphs mode only
    with pytest.raises(ConfigError, match="compile_mode 'none' captures eager phases as a CUDA graph, so it needs mode='graphs'"):
        _make("dcgan", "compile", compile_mode="none")
    with pytest.raises(ValueError, match="compile_mode 'none'"):
        Engine(None, None, batch=2, device=torch.device("cpu"), mode="compile", compile_mode="none")


def test_graphs_mode_needs_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ConfigError, match="CUDA"):
        _make("dcgan", "graphs")


def test_auto_mode_is_eager_on_cpu_and_says_why():
    tr = _make("dcgan", "auto")
    assert tr.mode == "eager" and "auto" in tr.mode_reason


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["dcgan", "wgan-gp", "dcgan-r1"])
def test_graphs_match_eager_on_gpu(variant):
    eager = _make(variant, "eager", "cuda", "bf16", batch=32)
    graphs = _make(variant, "graphs", "cuda", "bf16", batch=32)
    le = _run(eager, 6, "cuda", 32)
    lg = _run(graphs, 6, "cuda", 32)
    assert graphs.mode == "graphs", graphs.mode_reason
    assert graphs.engine.captures >= 1
    assert graphs.engine.penalty_mode == ("compiled" if graphs.objective.has_penalty else "none")
    _assert_same_training(eager, graphs, le, lg, rtol=5e-2, atol=5e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["dcgan", "wgan-gp"])
def test_graphs_of_eager_phases_match_eager_on_gpu(variant):
    """compile_mode='none': the eager phases (cuDNN, the fused Triton ops) captured as one CUDA graph, no
    torch.compile, channels_last kept."""
    from torch._dynamo.utils import counters

    eager = _make(variant, "eager", "cuda", "bf16", batch=32)
    graphs0 = counters["stats"].get("unique_graphs", 0)
    ge = _make(variant, "graphs", "cuda", "bf16", batch=32, compile_mode="none")
    le = _run(eager, 6, "cuda", 32)
    lg = _run(ge, 6, "cuda", 32)
    assert ge.mode == "graphs", ge.mode_reason
    assert ge.channels_last and ge.engine.captures >= 1
    assert counters["stats"].get("unique_graphs", 0) == graphs0   # nothing went through Dynamo
    _assert_same_training(eager, ge, le, lg, rtol=5e-2, atol=5e-2)


@pytest.mark.gpu
def test_graphs_with_the_penalty_eager_inside_the_capture_match_eager_on_gpu():
    """compile_penalty=False (bench: fastgan:graphs-eagerpen): the penalty's double backward runs eagerly,
    captured with the compiled phases."""
    eager = _make("wgan-gp", "eager", "cuda", "bf16", batch=32)
    ep = _make("wgan-gp", "graphs", "cuda", "bf16", batch=32, compile_penalty=False)
    le, lp = _run(eager, 4, "cuda", 32), _run(ep, 4, "cuda", 32)
    assert ep.mode == "graphs" and ep.engine.penalty_mode == "eager"
    _assert_same_training(eager, ep, le, lp, rtol=5e-2, atol=5e-2)


@pytest.mark.gpu
def test_a_capture_invalidated_by_a_host_sync_falls_back_and_keeps_training(monkeypatch):
    """A host sync inside the body invalidates the capture (cudaStreamEndCapture fails); torch 2.11's CUDA
    generator then stayed in its capturing state and the next eager randn raised. The fallback must leave
    a working process: two more steps train, in compile mode, with the reason recorded."""
    from fastgan.train.step import Engine

    orig = Engine._ema_update

    def syncing_ema(self, weight):
        float(self._ema_params[0].sum())     # .item(): fine eagerly, not allowed while capturing
        return orig(self, weight)

    monkeypatch.setattr(Engine, "_ema_update", syncing_ema)
    tr = _make("dcgan", "graphs", "cuda", "bf16", batch=32)
    _run(tr, 1, "cuda", 32)
    assert tr.mode == "compile" and "capture failed" in tr.mode_reason
    g0 = [p.detach().clone() for p in tr.G.parameters()]
    losses = _run(tr, 2, "cuda", 32)
    assert all(math.isfinite(d) and math.isfinite(g) for d, g in losses)
    assert any(not torch.equal(a, b) for a, b in zip(g0, tr.G.parameters()))


@pytest.mark.gpu
def test_graphs_do_not_recapture_or_recompile_over_100_steps():
    from torch._dynamo.utils import counters

    tr = _make("dcgan", "graphs", "cuda", "bf16", batch=32)
    _run(tr, 3, "cuda", 32)
    caps, graphs = tr.engine.captures, counters["stats"].get("unique_graphs", 0)
    _run(tr, 100, "cuda", 32)
    assert tr.engine.captures == caps == 1
    assert counters["stats"].get("unique_graphs", 0) == graphs


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["dcgan", "wgan-gp"])
def test_compile_reduce_overhead_matches_eager_on_gpu(variant):
    """The stock alternative to graphs mode (Inductor's CUDA-graph trees per phase) trains the same."""
    from torch._dynamo.utils import counters

    from fastgan.train.step import cudagraph_tree_state

    torch._dynamo.reset()
    eager = _make(variant, "eager", "cuda", "bf16", batch=32)
    ro = _make(variant, "compile", "cuda", "bf16", batch=32, compile_mode="reduce-overhead")
    le = _run(eager, 3, "cuda", 32) + _run(eager, 3, "cuda", 32)   # the same two windows as below
    skips0 = counters["inductor"]["cudagraph_skips"]
    lr = _run(ro, 3, "cuda", 32)
    graphs, tree = counters["stats"].get("unique_graphs", 0), cudagraph_tree_state(torch.device("cuda"))
    lr += _run(ro, 3, "cuda", 32)
    assert counters["stats"].get("unique_graphs", 0) == graphs
    # Really replaying CUDA graphs: recorded, none skipped, no re-recording once warm.
    assert tree is not None and tree[0] > 0, tree
    assert cudagraph_tree_state(torch.device("cuda")) == tree
    assert counters["inductor"]["cudagraph_skips"] == skips0
    _assert_same_training(eager, ro, le, lr, rtol=5e-2, atol=5e-2)


@pytest.mark.gpu
def test_graphs_with_max_autotune_kernels_match_eager_on_gpu():
    eager = _make("dcgan", "eager", "cuda", "bf16", batch=32)
    gm = _make("dcgan", "graphs", "cuda", "bf16", batch=32, compile_mode="max-autotune-no-cudagraphs")
    le, lg = _run(eager, 4, "cuda", 32), _run(gm, 4, "cuda", 32)
    assert gm.mode == "graphs", gm.mode_reason
    _assert_same_training(eager, gm, le, lg, rtol=5e-2, atol=5e-2)


def test_channels_last_stride_assert_in_a_compiled_step_is_a_clear_error(monkeypatch):
    """torch 2.11's conv-backward stride bug (channels_last + compile) becomes a one-line ConfigError."""
    from fastgan.errors import ConfigError

    spec = get_variant("dcgan")
    G, D, _ = spec.build(debug=True)
    msg = ("expected size 512==512, stride 16==1 at dim=1\nError in op: torch.ops.aten.convolution_backward.default")

    def boom(next_batch):
        raise AssertionError(msg)

    cl = Trainer(G, D, batch_size=4, mode="compile", channels_last=True)
    monkeypatch.setattr(cl.engine, "iteration", boom)
    with pytest.raises(ConfigError, match="channels_last"):
        cl.step(lambda: torch.zeros(4, 1, 32, 32))
    nchw = Trainer(*spec.build(debug=True)[:2], batch_size=4, mode="compile")
    assert not nchw.channels_last
    monkeypatch.setattr(nchw.engine, "iteration", boom)
    with pytest.raises(AssertionError):   # not ours to reinterpret: the model was not channels_last
        nchw.step(lambda: torch.zeros(4, 1, 32, 32))


def test_trainer_puts_user_models_in_its_layout():
    """A channels_last model handed to an NCHW trainer is converted (mixed layouts trip torch 2.11's
    conv-backward stride bug in compiled steps), and batches follow the same layout."""
    spec = get_variant("dcgan")
    G, D, _ = spec.build(debug=True)
    G.to(memory_format=torch.channels_last)
    D.to(memory_format=torch.channels_last)
    tr = Trainer(G, D, batch_size=4, mode="compile")
    assert not tr.channels_last
    convs = [m.weight for m in list(tr.G.modules()) + list(tr.D.modules()) if isinstance(m, torch.nn.modules.conv._ConvNd)]
    assert convs and all(w.is_contiguous() for w in convs)
    x = torch.randn(4, 1, 32, 32).contiguous(memory_format=torch.channels_last)
    assert tr._prep(x)["images"].is_contiguous()
    tr_cl = Trainer(*spec.build(debug=True)[:2], batch_size=4, mode="eager", channels_last=True)
    assert tr_cl._prep(torch.randn(4, 1, 32, 32))["images"].is_contiguous(memory_format=torch.channels_last)


# ----------------------------------------------------------------------------- fp16: a loss scaler per optimizer

def test_fp16_uses_one_loss_scaler_per_optimizer_on_cpu():
    with pytest.warns(UserWarning, match="fp16 on CPU .* slower than fp32"):
        tr = _make("dcgan", "eager", precision="fp16")
    assert tr.precision == "fp16"
    eng = tr.engine
    assert eng.scalers["D"] is not None and eng.scalers["G"] is not None and eng.scalers["D"] is not eng.scalers["G"]
    # The first steps overflow at the initial scale 2**16 and are skipped while each scaler backs off
    # (measured on this model: 2**16 -> 2**13); then updates go through.
    _run(tr, 4)
    scales = eng.scalers["D"].get_scale(), eng.scalers["G"].get_scale()
    assert all(s < 2.0 ** 16 and s == 2.0 ** round(math.log2(s)) for s in scales), scales
    g0 = [p.detach().clone() for p in tr.G.parameters()]
    d0 = [p.detach().clone() for p in tr.D.parameters()]
    losses = _run(tr, 3)
    assert all(math.isfinite(d) and math.isfinite(g) for d, g in losses)
    assert any(not torch.equal(a, b) for a, b in zip(g0, tr.G.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(d0, tr.D.parameters()))


def test_fp16_overflow_skips_only_that_networks_step_and_backs_off_its_scale():
    tr = _make("dcgan", "eager", precision="fp16")
    eng = tr.engine
    # An absurd scale overflows D's fp16 backward: the scaler must skip D's update and halve the scale,
    # while G (its own scaler, a small scale) still steps.
    eng.scalers["D"] = torch.amp.GradScaler("cpu", init_scale=2.0 ** 100)
    eng.scalers["G"] = torch.amp.GradScaler("cpu", init_scale=2.0 ** 4)
    d0 = [p.detach().clone() for p in tr.D.parameters()]
    g0 = [p.detach().clone() for p in tr.G.parameters()]
    _run(tr, 1)
    assert all(torch.equal(a, b) for a, b in zip(d0, tr.D.parameters()))
    assert eng.scalers["D"].get_scale() == 2.0 ** 99
    assert any(not torch.equal(a, b) for a, b in zip(g0, tr.G.parameters()))
    assert eng.scalers["G"].get_scale() == 2.0 ** 4


def test_fp16_stats_report_each_loss_scale():
    tr = _make("wgan-gp", "eager", precision="fp16")
    g = torch.Generator().manual_seed(0)
    reals = iter([torch.rand(8, 1, 32, 32, generator=g) * 2 - 1 for _ in range(tr.engine.data_repeats)])
    tr.step(lambda: next(reals))
    s = tr.stats.read()
    # the scale after each update (the last D update's, G's)
    assert 0 < s["loss_scale_D"] <= 2.0 ** 16 and s["loss_scale_G"] == tr.engine.scalers["G"].get_scale()
    assert "penalty" in s


def test_fp16_wgan_gp_critic_trains_the_penalty_runs_in_fp32():
    """fp16 double backward through the critic's instance norm gives NaN, which made every D step be
    skipped and drove D's scale to 0; the penalty runs in fp32 now."""
    tr = _make("wgan-gp", "eager", precision="fp16")
    _run(tr, 2)                                   # let the scaler back off from its initial 2**16
    d0 = [p.detach().clone() for p in tr.D.parameters()]
    losses = _run(tr, 2)
    assert all(math.isfinite(d) and math.isfinite(g) for d, g in losses)
    assert any(not torch.equal(a, b) for a, b in zip(d0, tr.D.parameters()))
    assert tr.engine.scalers["D"].get_scale() >= 2.0 ** 8, tr.engine.scalers["D"].get_scale()


def test_fp16_scalers_are_reset_after_a_failed_capture():
    """A capture that fails inside GradScaler.step leaves the optimizer marked unscaled (and fused Adam's
    grad_scale/found_inf attributes set); the next step would skip the unscale. _reset_scalers starts fresh
    scalers at the same scale."""
    tr = _make("dcgan", "eager", precision="fp16")
    eng = tr.engine
    _run(tr, 4)                                   # past the initial back-off (2**16 -> 2**13 on this model)
    scale = eng.scalers["D"].get_scale()
    loss, _ = eng._term_fns[("D", "D_forward")]({"images": torch.rand(8, 1, 32, 32),
                                                  "fake": tr.G(torch.randn(8, tr.z_dim)).detach()})
    eng.scalers["D"].scale(loss).backward()
    eng.scalers["D"].unscale_(tr.opt_D)               # the state a capture failing inside step() leaves behind
    tr.opt_D.grad_scale, tr.opt_D.found_inf = torch.ones(()), torch.zeros(())
    old = eng.scalers["D"]
    eng._zero_grads()
    eng._reset_scalers()
    assert eng.scalers["D"] is not old and eng.scalers["D"].get_scale() == scale
    assert not hasattr(tr.opt_D, "grad_scale") and not hasattr(tr.opt_D, "found_inf")
    d0 = [p.detach().clone() for p in tr.D.parameters()]
    _run(tr, 2)
    assert any(not torch.equal(a, b) for a, b in zip(d0, tr.D.parameters()))


@pytest.mark.gpu
def test_fp16_with_a_non_fused_optimizer_is_not_graphed():
    auto = _make("wgan", "auto", "cuda", "fp16", batch=32)
    assert auto.mode == "compile" and "fp16 with rmsprop" in auto.mode_reason
    with pytest.raises(ConfigError, match="cannot run in graphs mode"):
        _make("wgan", "graphs", "cuda", "fp16", batch=32)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["dcgan", "wgan-gp"])
def test_graphs_fp16_match_eager_fp16_on_gpu(variant):
    """fp16 + fused Adam: GradScaler hands the scale and inf flag to the fused kernel (no host sync), so the
    whole iteration, scalers included, is captured."""
    eager = _make(variant, "eager", "cuda", "fp16", batch=32)
    graphs = _make(variant, "graphs", "cuda", "fp16", batch=32)
    le = _run(eager, 6, "cuda", 32)
    lg = _run(graphs, 6, "cuda", 32)
    assert graphs.mode == "graphs", graphs.mode_reason
    assert graphs.engine.captures >= 1
    assert graphs.engine.scalers["D"].get_scale() == eager.engine.scalers["D"].get_scale()
    assert graphs.engine.scalers["G"].get_scale() == eager.engine.scalers["G"].get_scale()
    _assert_same_training(eager, graphs, le, lg, rtol=5e-2, atol=5e-2)


def test_batch_norm_with_cumulative_momentum_is_refused_by_compiled_steps_only():
    from torch import nn

    class G(nn.Module):
        z_dim = 8

        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16, momentum=None), nn.ReLU(), nn.Linear(16, 16),
                                     nn.Tanh())

        def forward(self, z):
            return self.net(z).view(-1, 1, 4, 4)

    def D():
        return nn.Sequential(nn.Flatten(), nn.Linear(16, 1))

    with pytest.raises(ConfigError, match=r"G\.net\.1 is a BatchNorm with momentum=None .* give it a momentum"):
        Trainer(G(), D(), batch_size=4, device="cpu", mode="compile")
    if torch.cuda.is_available():   # auto would pick graphs: it picks eager instead, and says why
        tr = Trainer(G(), D(), batch_size=4, mode="auto")
        assert tr.mode == "eager" and "momentum=None" in tr.mode_reason
    tr = Trainer(G(), D(), batch_size=4, device="cpu", mode="eager")      # eager computes the factor per step
    tr.step(lambda: torch.rand(4, 1, 4, 4) * 2 - 1)
    assert int(tr.G.net[1].num_batches_tracked) == 1    # one G forward: the fake batch is shared by D and G


def test_fp16_penalty_takes_half_precision_batches():
    """The penalty runs with autocast off; a batch that arrives in fp16 must still meet D's fp32 weights."""
    for variant in ("dcgan-r1", "wgan-gp"):
        tr = _make(variant, "eager", precision="fp16")
        g = torch.Generator().manual_seed(0)
        reals = iter([(torch.rand(8, 1, 32, 32, generator=g) * 2 - 1).half() for _ in range(tr.engine.data_repeats)])
        tr.step(lambda: next(reals))
        assert math.isfinite(tr.stats.read()["penalty"])


def test_unknown_optimizer_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown optimizer 'Adam'; choose adam or rmsprop"):
        G, D, _ = get_variant("dcgan").build(debug=True)
        Trainer(G, D, batch_size=4, device="cpu", optimizer="Adam")
