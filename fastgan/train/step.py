"""The training step engine: eager | compile | graphs. The only place torch.compile and CUDA graphs live.

Design note
-----------
An *iteration* is ``n_critic`` D updates (each: D_main, optionally the lazy D_reg penalty, the
optimizer step, optional weight clipping), one G update (G_main + step) and the EMA update of
``G_ema``. The objective (``fastgan.variants.Objective``) owns the maths of each phase; this
module owns how the phases are executed:

``eager``
    Plain PyTorch (the fused ops still run their Triton kernels on CUDA).

``compile``
    The generator forward and the two loss phases (``D_main(real, fake)`` and
    ``G_main(fake)``) are separate ``torch.compile(fullgraph=True)`` functions with fixed
    signatures, so AOTAutograd compiles each forward *and* its backward. Backward calls and
    optimizer steps stay outside compiled code; ``requires_grad`` is never toggled: the G
    update calls ``backward(inputs=G_params)`` so D's weight gradients are never accumulated,
    and the compiled G phase calls D with its parameters *detached* (``functional_call``,
    :class:`_DetachedWeights`), because AOTAutograd's backward computes a gradient for every
    traced input that requires one and would otherwise compute D's weight gradients just to
    discard them (measured: every D conv's backward drops its weight-gradient output). The fake
    batch enters the D phase detached. The gradient penalty is a third compiled function: double
    backward does not go through AOTAutograd (pytorch#91469), but with Dynamo's
    ``trace_autograd_ops`` (torch >= 2.9; checked on 2.11 and 2.13) the penalty's
    ``autograd.grad(create_graph=True)`` is traced into the forward graph, so AOTAutograd sees an
    ordinary differentiable function (D's forward, its input-gradient, the norm reduction) and
    compiles its backward too. Its input — interpolates (WGAN-GP) or reals (R1) made a leaf that
    requires grad — is built outside (Dynamo cannot differentiate past a ``requires_grad_`` set
    inside). Without that flag, or if compiling it fails, the penalty runs eagerly
    (``penalty_mode`` says which); the fused ops' backwards are themselves differentiable, so the
    eager penalty keeps the fast kernels.

    ``compile_mode`` picks the ``torch.compile`` mode of these phases: ``default``,
    ``max-autotune(-no-cudagraphs)``, or ``reduce-overhead`` — Inductor's CUDA-graph trees
    around each phase, with backward calls, penalty and optimizer steps still eager between
    them (``cudagraph_mark_step_begin`` once per iteration). It is the stock alternative to
    ``graphs`` below, kept so the two can be measured side by side (``fastgan:compile-ro``).

``graphs`` (CUDA)
    A whole iteration — latents drawn on device, the G forward, every D update including the
    penalty's double backward and the fused Adam steps (``capturable=True``), the G update and
    the EMA lerp — is captured as ONE CUDA graph and replayed. What is static: the real-batch
    buffers (each iteration's batches are copied into them), every parameter, gradient and
    optimizer state, the stats tensors the graph writes (read, and summed, right after each
    replay; host reads only at log ticks), and the EMA weight (a device scalar refreshed with
    ``fill_`` before each replay, so the ramp-up needs no re-capture). Random numbers come from
    the graph-safe Philox generator (offsets advance per replay). The compiled functions of
    ``compile`` mode run inside the capture, so Inductor's fusions and the CUDA graph's launch
    elimination add up; ``compile_mode="none"`` captures the eager phases instead (no Inductor:
    cuDNN convolutions, the fused Triton ops and the CUDA graph — the variant that can keep
    channels_last on torch 2.11, whose Inductor trips on channels_last convolutions; and a capture
    that fails falls back to eager, not compile). Lazy regularization makes the set of D updates that carry the penalty
    vary from iteration to iteration; each distinct pattern (at most ``penalty_every``) is
    captured once, on first use, after one eager warm-up iteration on a side stream (which is
    a real training iteration). Shapes never change — the loader drops the last partial batch
    — so there is one recording per pattern and no re-capture; ``captures`` counts them.

Precision: ``bf16`` (the CUDA default) and ``fp32`` need no loss scaling. ``fp16`` gets one
``torch.amp.GradScaler`` per optimizer (``scaler_D``, ``scaler_G``): each backward of a network's
update (the D loss and its penalty, the G loss) is scaled by that network's scaler, and its step
unscales, skips the update when a gradient is inf/NaN, and adjusts the scale. With fused Adam (CUDA)
the scaler passes the scale and the inf flag to the fused kernel — no host sync, so the whole thing
is captured in graphs mode; with a non-fused optimizer (RMSprop, CPU Adam) ``GradScaler.step`` reads
the inf flag on the host — a sync per optimizer step, the one exception to the rule below — and the
Trainer does not pick graphs mode for it. The gradient penalty runs in fp32 (autocast off): fp16
double backward through a norm layer gives NaN (measured: wgan-gp's instance-norm critic on CPU,
every D step skipped and the scale driven to 0); its result still goes through D's scaler.

No host synchronization happens inside a step in any mode: losses and a non-finite flag are
accumulated into device tensors (:class:`StatsAccumulator`) and read only at log ticks.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import math

import torch
from torch import nn
from torch.profiler import record_function

from fastgan.errors import ConfigError
from fastgan.latent import latent_shape
from fastgan.variants.objective import Objective


class StatsAccumulator:
    """Sums named scalar device tensors between ticks; one host sync per :meth:`read`.

    Each :meth:`add` is two kernel launches (stack + add) whatever the number of stats: this
    runs every iteration, outside the captured graph in graphs mode. No per-step finiteness
    check is needed — NaN and inf propagate through the sums, so ``read`` finds them there.
    """

    def __init__(self):
        self._sums: dict[tuple[str, ...], list] = {}   # key set -> [summed vector, count]

    def add(self, stats: dict[str, torch.Tensor], *also: "StatsAccumulator | None") -> None:
        """Add one step's stats here and into each accumulator of ``also`` (None skipped): stacked once."""
        if not stats:
            return
        keys = tuple(stats)
        vec = torch.stack([v.detach().float().reshape(()) for v in stats.values()])
        for i, acc in enumerate(a for a in (self, *also) if a is not None):
            entry = acc._sums.get(keys)
            if entry is None:
                acc._sums[keys] = [vec if i == 0 else vec.clone(), 1]   # one owner of the stacked vector
            else:
                entry[0].add_(vec)
                entry[1] += 1

    def read(self) -> dict[str, float]:
        """Means since the last read, plus ``nonfinite`` (1.0 if any value was NaN/inf)."""
        if not self._sums:
            return {}
        groups = list(self._sums.items())
        values = torch.cat([vec for _, (vec, _) in groups]).tolist()   # the one host sync
        totals: dict[str, float] = {}
        counts: dict[str, int] = {}
        i = 0
        for keys, (_, n) in groups:
            for k in keys:
                totals[k] = totals.get(k, 0.0) + values[i]
                counts[k] = counts.get(k, 0) + n
                i += 1
        out = {k: totals[k] / counts[k] for k in totals}
        out["nonfinite"] = float(any(not math.isfinite(v) for v in values))
        self._sums = {}
        return out


def make_optimizer(name: str, params, lr: float, betas: tuple[float, float], device: torch.device,
                   capturable: bool = False):
    """Adam (fused on CUDA — capturable for graph capture — foreach elsewhere) or RMSprop."""
    params = list(params)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, foreach=True, capturable=capturable)
    if device.type == "cuda":
        return torch.optim.Adam(params, lr=lr, betas=betas, fused=True, capturable=capturable)
    return torch.optim.Adam(params, lr=lr, betas=betas, foreach=True)


# torch.compile modes for the compiled phases (``compile_mode``); graphs mode captures the whole
# iteration itself, so it takes only the ones without Inductor's own CUDA graphs, or ``none``: the
# eager phases captured without torch.compile (graphs mode only).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs", "none")
CUDAGRAPH_COMPILE_MODES = ("reduce-overhead", "max-autotune")


def cudagraph_tree_state(device: torch.device) -> tuple[int, int] | None:
    """(recorded graphs, re-recordings) of Inductor's CUDA-graph trees on ``device``, or None when there
    are none. The skip counter misses graphs that are silently not used (partitioning, re-recording on
    older torch); this is what tells that reduce-overhead really replays graphs."""
    if device.type != "cuda":
        return None
    try:
        from torch._inductor import cudagraph_trees

        m = cudagraph_trees.get_manager(device.index if device.index is not None else torch.cuda.current_device(),
                                        create_if_none_exists=False)
        if m is None:
            return None
        return sum(1 + r.num_descendants() for r in m.get_roots()), int(m.debug_fail_counter)
    except Exception:  # pragma: no cover - private API, version dependent
        return None


_profiler_on = torch.autograd._profiler_enabled


def _phase(name: str):
    """``record_function(name)`` while a profiler runs (fastgan.profile reads these ranges), else a no-op:
    a range costs ~11 µs of host time per call even with no profiler (~0.7 µs this way), and eager
    and compiled steps enter ten of them per iteration."""
    return record_function(name) if _profiler_on() else contextlib.nullcontext()


def _scaled(loss: torch.Tensor, scaler) -> torch.Tensor:
    return loss if scaler is None else scaler.scale(loss)


def _opt_step(opt, scaler, stats: dict, scale_key: str) -> None:
    """``opt.step()``, or through the fp16 loss scaler: unscale, skip on inf/NaN, update the scale
    (the scale in use, a device tensor, is reported as ``scale_key``)."""
    if scaler is None:
        opt.step()
        return
    scaler.step(opt)
    scaler.update()
    scale = scaler._get_scale_async() if hasattr(scaler, "_get_scale_async") else None  # device tensor, no sync
    if scale is not None:
        stats[scale_key] = scale


def _end_generator_capture(device: torch.device) -> None:
    """After a capture whose ``cudaStreamEndCapture`` failed (an ``.item()``, a host copy in the body):
    torch 2.11's CUDA generator keeps its "capturing" flag (``capture_epilogue`` never ran), and the next
    eager ``torch.randn`` raises "Offset increment outside graph capture encountered unexpectedly".
    One trivial capture that ends cleanly runs the prologue/epilogue pair and clears it (torch 2.13
    keeps that state per capture and needs nothing; this is harmless there)."""
    with contextlib.suppress(Exception):
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            torch.zeros((), device=device).add_(1)
        del g


def penalty_compile_supported() -> bool:
    """Whether this torch can compile the penalty phase: Dynamo must trace ``torch.autograd.grad``
    (``trace_autograd_ops``, torch >= 2.9) so that AOTAutograd sees the penalty's double backward as a
    differentiable forward graph (pytorch#91469 is why it cannot otherwise)."""
    import torch._dynamo.config as cfg

    return hasattr(cfg, "trace_autograd_ops")


class _CompiledPenalty:
    """The penalty phase ``D(x) -> autograd.grad(create_graph=True) -> ‖g‖ reduction`` as one
    ``torch.compile(fullgraph=True)`` function, traced with ``trace_autograd_ops`` on (checked against eager
    on torch 2.11 and 2.13, reference and Triton ops alike: tests/test_engine.py). Called with the
    backward to run on its result. The first call compiles the forward and (lazily, in the backward)
    its backward graph; if either fails (a Dynamo/Inductor limitation on some model), the penalty runs
    eagerly from then on and ``step.penalty_mode`` says why. Nothing is applied twice: the penalty's
    autograd graph is the compiled node alone (its input is a detached leaf), so a compile failure
    there leaves no gradient behind (only a BatchNorm in D would see that one penalty forward twice in
    its running statistics). Later failures are real errors and propagate."""

    def __init__(self, compiled, eager, step: "GanStep"):
        self.compiled, self.eager, self.step = compiled, eager, step
        self.fn = None   # settled after the first call

    def __call__(self, x: torch.Tensor, backward) -> dict[str, torch.Tensor]:
        import torch._dynamo.config as cfg

        if self.fn is self.eager:
            pen, stats = self.eager(x)
            backward(pen)
            return stats
        if self.fn is not None:
            with cfg.patch(trace_autograd_ops=True):
                pen, stats = self.fn(x)
            backward(pen)
            return stats
        try:
            with cfg.patch(trace_autograd_ops=True):
                pen, stats = self.compiled(x)
                backward(pen)
        except Exception as e:  # noqa: BLE001 - any compile failure falls back, with the reason kept
            first = (str(e).strip().splitlines() or [""])[0][:160]
            self.fn = self.eager
            self.step.penalty_mode = f"eager (compiling the penalty failed: {type(e).__name__}: {first})"
            pen, stats = self.eager(x)
            backward(pen)
            return stats
        self.fn = self.compiled
        return stats


class _DetachedWeights(nn.Module):
    """``D`` for the compiled G phase: same forward, parameters passed in detached.

    Gradients still flow to D's *input* (the fake batch, hence G); none are computed for D's
    weights. Buffers stay the module's own, so BatchNorm running statistics update as in eager.
    """

    def __init__(self, D: nn.Module, keep: list[torch.Tensor] = ()):
        super().__init__()
        self.D = D
        self._keep = frozenset(id(p) for p in keep)   # parameters G shares with D keep their path through D

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = {name: p if id(p) in self._keep else p.detach() for name, p in self.D.named_parameters()}
        return torch.func.functional_call(self.D, params, (x,), strict=False)


class GanStep:
    """Executes training iterations of a G/D pair in one of the three modes (see module doc)."""

    def __init__(self, G: nn.Module, D: nn.Module, objective: Objective, opt_G, opt_D, *,
                 z_dim: int | tuple[int, ...], batch: int, device: torch.device, n_critic: int = 1, clip: float | None = None,
                 precision: str = "fp32", ema_kimg: float = 10.0, ema_rampup: float | None = 0.05,
                 mode: str = "eager", compile_mode: str = "default", compile_penalty: bool | None = None):
        if mode not in ("eager", "compile", "graphs"):
            raise ValueError(f"unknown mode {mode!r}")
        if compile_mode not in COMPILE_MODES:
            raise ValueError(f"unknown compile_mode {compile_mode!r}")
        if mode == "graphs" and compile_mode in CUDAGRAPH_COMPILE_MODES:
            raise ValueError("graphs mode captures the whole iteration itself; its compile_mode cannot add CUDA graphs")
        if compile_mode == "none" and mode != "graphs":
            raise ValueError("compile_mode 'none' (eager phases in a CUDA graph) is for graphs mode")
        self.G, self.D, self.objective = G, D, objective
        self.opt_G, self.opt_D = opt_G, opt_D
        self.z_shape = latent_shape(z_dim)  # per-sample latent shape
        self.z_dim, self.batch, self.device = self.z_shape[0], batch, device
        self.n_critic, self.clip = n_critic, clip
        self.precision = precision
        self.ema_kimg, self.ema_rampup = ema_kimg, ema_rampup
        self.mode = mode
        self.compile_mode = compile_mode
        # reduce-overhead: Inductor's CUDA-graph trees around each compiled phase; each iteration is
        # one "step" for them (outputs of the previous iteration may be overwritten from then on).
        self._mark_step = (mode == "compile" and compile_mode in CUDAGRAPH_COMPILE_MODES and device.type == "cuda")
        self.G_ema = copy.deepcopy(G).eval().requires_grad_(False)
        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"unknown precision {precision!r}")
        # fp16: one loss scaler per optimizer (bf16 and fp32 have fp32's exponent range and need none).
        fp16 = precision == "fp16"
        self.scaler_D = torch.amp.GradScaler(device.type) if fp16 else None
        self.scaler_G = torch.amp.GradScaler(device.type) if fp16 else None
        self.d_steps = 0       # D updates so far (drives lazy regularization)
        self.nimg = 0          # real images shown to D so far
        self.captures = 0      # CUDA graphs recorded (graphs mode)
        self.fallback_reason: str | None = None
        # Graphs mode: a zero-argument callable returning a context manager entered around the eager
        # warm-up iteration that precedes each capture (and left before the capture). fastgan.profile
        # uses it to record which kernels each phase launches; the replayed graph has no host ranges.
        self.warmup_context = None
        self._g_params = list(G.parameters())
        self._d_params = list(D.parameters())
        self._ema_params = list(self.G_ema.parameters())
        self._ema_buffers = list(zip(self.G_ema.buffers(), G.buffers()))
        # The callables each phase runs; compile mode swaps in compiled versions.
        self._gen = G
        self._d_main = functools.partial(objective.d_main, D)
        self._g_main = functools.partial(objective.g_main, D)
        self._d_reg_core = functools.partial(objective.d_reg_core, D)
        compiled = mode == "compile" or (mode == "graphs" and compile_mode != "none")
        # How the penalty runs: "compiled", or "eager (<why>)" (set by _CompiledPenalty if its compile fails).
        self.penalty_mode = "eager" if objective.has_penalty else "none"
        if compiled and objective.has_penalty:
            if compile_penalty is None:
                compile_penalty = penalty_compile_supported()
            elif compile_penalty and not penalty_compile_supported():
                raise ValueError("compile_penalty=True needs torch._dynamo.config.trace_autograd_ops (torch >= 2.9)")
        if compiled:
            # Dynamo caches per code object, shared by every Trainer in the process (a bench matrix
            # builds many); with fullgraph=True hitting the default limit of 8 is a hard error.
            import torch._dynamo as dynamo   # (a bare `import torch._dynamo` would make `torch` local here)

            cfg = dynamo.config
            name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"  # older torch
            setattr(cfg, name, max(getattr(cfg, name), 64))
            kw = {"fullgraph": True, "mode": None if compile_mode == "default" else compile_mode}
            self._gen = torch.compile(G, **kw)
            self._d_main = torch.compile(self._d_main, **kw)
            self._g_main = torch.compile(functools.partial(objective.g_main, _DetachedWeights(D, self._g_params)), **kw)
            if objective.has_penalty and compile_penalty:
                # Inductor's CUDA-graph trees stay on the main phases; the penalty compiles without them.
                pkw = dict(kw, mode=None if compile_mode in CUDAGRAPH_COMPILE_MODES else kw["mode"])
                self._d_reg_core = _CompiledPenalty(torch.compile(self._d_reg_core, **pkw), self._d_reg_core, self)
                self.penalty_mode = "compiled"
        if mode == "graphs":
            if device.type != "cuda":
                raise ValueError("graphs mode needs a CUDA device")
            self._graphs: dict[tuple[bool, ...], tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor]]] = {}
            self._static_real = [None] * n_critic
            self._ema_weight = torch.zeros((), device=device)

    # -- helpers --------------------------------------------------------------------------
    def _autocast(self):
        if self.precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            # The autocast weight cache must be off under graph capture.
            return torch.autocast(self.device.type, dtype=dtype, cache_enabled=self.mode != "graphs")
        return contextlib.nullcontext()

    def _penalty_precision(self):
        """fp16: the penalty's forward and double backward in fp32 (see the module doc)."""
        if self.precision == "fp16":
            return torch.autocast(self.device.type, enabled=False)
        return contextlib.nullcontext()

    def latents(self, n: int | None = None) -> torch.Tensor:
        return torch.randn(n or self.batch, *self.z_shape, device=self.device)

    def _reg_now(self, d_step: int) -> bool:
        return self.objective.has_penalty and d_step % self.objective.penalty_every == 0

    def ema_weight(self) -> float:
        """1 - β, with β from a half-life of ``ema_kimg`` thousand images (ramped up early on)."""
        ema_nimg = self.ema_kimg * 1000
        if self.ema_rampup is not None:
            ema_nimg = min(ema_nimg, self.nimg * self.ema_rampup)
        return 1.0 - 0.5 ** (self.batch / max(ema_nimg, 1e-8))

    # -- phases (shared by every mode) ----------------------------------------------------
    def _penalty(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The penalty at ``x``, forward and (scaled) backward; its stats."""
        # inputs=: only D's parameters; the penalty input x is a leaf that requires grad, and its own
        # (image-sized) gradient is never used.
        backward = lambda pen: _scaled(pen, self.scaler_D).backward(inputs=self._d_params)   # noqa: E731
        if isinstance(self._d_reg_core, _CompiledPenalty):
            return self._d_reg_core(x, backward)
        pen, stats = self._d_reg_core(x)
        backward(pen)
        return stats

    def _d_update(self, real: torch.Tensor, fake: torch.Tensor | None, reg: bool) -> dict[str, torch.Tensor]:
        obj = self.objective
        with self._autocast():
            if fake is None:
                with torch.no_grad(), _phase("G_forward"):
                    fake = self._gen(self.latents(real.shape[0]))
            fake = fake.detach()
            with _phase("D_forward"):
                loss, stats = self._d_main(real, fake)
            # The backward range wraps the host call, which returns once autograd's device thread has
            # launched every backward kernel: fastgan.profile attributes those kernels by time containment.
            with _phase("D_backward"):
                _scaled(loss, self.scaler_D).backward()
            if reg:
                with _phase("D_penalty"), self._penalty_precision():     # the penalty's forward and double backward
                    if self.precision == "fp16":   # autocast is off here: D's fp32 weights need fp32 inputs
                        real, fake = real.float(), fake.float()
                    stats.update(self._penalty(obj.d_reg_input(real, fake)))
        with _phase("D_step"):
            _opt_step(self.opt_D, self.scaler_D, stats, "loss_scale_D")
            if self.clip is not None:
                with torch.no_grad():
                    torch._foreach_clamp_min_(self._d_params, -self.clip)
                    torch._foreach_clamp_max_(self._d_params, self.clip)
            # set_to_none outside graphs mode: under reduce-overhead .grad is CUDA-graph pool memory
            # that the next backward must not add into (graphs mode keeps its static .grad buffers).
            self.opt_D.zero_grad(set_to_none=self.mode != "graphs")
        return stats

    def _g_update(self, fake: torch.Tensor | None) -> dict[str, torch.Tensor]:
        with self._autocast():
            if fake is None:
                with _phase("G_forward"):
                    fake = self._gen(self.latents())
            with _phase("G_loss"):                # D(fake) and the G loss, forward
                loss, stats = self._g_main(fake)
            with _phase("G_backward"):            # through D into G
                # Only G's parameters receive gradients: D's weight grads are not computed and
                # requires_grad is never toggled.
                _scaled(loss, self.scaler_G).backward(inputs=self._g_params)
        with _phase("G_step"):
            _opt_step(self.opt_G, self.scaler_G, stats, "loss_scale_G")
            self.opt_G.zero_grad(set_to_none=self.mode != "graphs")
        return stats

    @torch.no_grad()
    def _ema_update(self, weight) -> None:
        """G_ema ← G_ema + w·(G − G_ema); ``weight`` is a float or a device scalar (graphs)."""
        with _phase("G_ema"):
            if isinstance(weight, torch.Tensor):
                diff = torch._foreach_sub(self._g_params, self._ema_params)
                torch._foreach_mul_(diff, weight)
                torch._foreach_add_(self._ema_params, diff)
            else:
                torch._foreach_lerp_(self._ema_params, self._g_params, weight)
            for b_ema, b in self._ema_buffers:
                b_ema.copy_(b)

    def _body(self, reals: list[torch.Tensor], regs: tuple[bool, ...], ema_weight) -> dict[str, torch.Tensor]:
        """One iteration on already-fetched real batches; no host sync, no host-side counters."""
        if self._mark_step:
            # Exactly one mark per iteration, here: every output of this iteration's compiled calls
            # (the fake batch, G's saved activations for the G update's backward) stays alive until
            # the next mark; a second mark inside the iteration would free them. The mark is global
            # to the process' CUDA-graph trees.
            torch.compiler.cudagraph_mark_step_begin()
        stats: dict[str, torch.Tensor] = {}
        if self.n_critic == 1:
            with self._autocast(), _phase("G_forward"):
                fake = self._gen(self.latents(reals[0].shape[0]))   # shared by the D and G updates
            stats.update(self._d_update(reals[0], fake, regs[0]))
            stats.update(self._g_update(fake))
        else:
            for real, reg in zip(reals, regs):
                stats.update(self._d_update(real, None, reg))
            stats.update(self._g_update(None))
        self._ema_update(ema_weight)
        return stats

    # -- public ---------------------------------------------------------------------------
    def iteration(self, next_batch) -> dict[str, torch.Tensor]:
        """n_critic D updates on batches from ``next_batch()``, one G update and the EMA update.

        The returned stats are device tensors valid until the next call (under reduce-overhead
        they are CUDA-graph outputs that the next iteration overwrites): consume or copy them first.
        """
        reals = [next_batch() for _ in range(self.n_critic)]
        if self.mode != "eager" and any(r.shape[0] != self.batch for r in reals):
            got = next(r.shape[0] for r in reals if r.shape[0] != self.batch)
            raise ConfigError(f"a batch of {got} images reached a {self.mode} step built for batch_size={self.batch}: "
                              "compiled and graphed steps need a fixed batch (drop or pad the last partial batch; "
                              "Trainer.fit drops it)")
        regs = tuple(self._reg_now(self.d_steps + i) for i in range(self.n_critic))
        if self.mode == "graphs":
            stats = self._replay(reals, regs)
        else:
            stats = self._body(reals, regs, self.ema_weight())
        self.d_steps += self.n_critic
        self.nimg += sum(r.shape[0] for r in reals)
        return stats

    # -- graphs mode ----------------------------------------------------------------------
    def _replay(self, reals: list[torch.Tensor], regs: tuple[bool, ...]) -> dict[str, torch.Tensor]:
        for i, r in enumerate(reals):
            if self._static_real[i] is None:
                self._static_real[i] = torch.empty_like(r)
            self._static_real[i].copy_(r, non_blocking=True)
        self._ema_weight.fill_(self.ema_weight())
        if regs not in self._graphs:
            return self._warm_and_capture(regs)
        graph, stats = self._graphs[regs]
        graph.replay()
        return stats

    def _warm_and_capture(self, regs: tuple[bool, ...]) -> dict[str, torch.Tensor]:
        """Run this iteration eagerly on a side stream (warm-up: compiles, autotunes, allocates
        optimizer state), then record the same iteration body as a CUDA graph for later."""
        with torch.cuda.device(self.device):
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with (self.warmup_context() if self.warmup_context is not None else contextlib.nullcontext()):
                with torch.cuda.stream(side):
                    stats = {k: v.clone() for k, v in self._body(self._static_real, regs, self._ema_weight).items()}
                torch.cuda.current_stream(self.device).wait_stream(side)
                torch.cuda.synchronize(self.device)
            self._zero_grads()
            graph = torch.cuda.CUDAGraph()
            pool = torch.cuda.graph_pool_handle()
            prev_stream = torch.cuda.current_stream(self.device)
            inner: list[BaseException] = []
            try:
                # Capture records kernels without running them: parameters are untouched until
                # replay. thread_local: allocations by other threads (the loader's pinned-memory
                # prefetch) must not invalidate the capture.
                with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                    try:
                        static_stats = self._body(self._static_real, regs, self._ema_weight)
                    except BaseException as e:  # keep the real cause; capture_end may mask it
                        inner.append(e)
                        raise
            except Exception as e:  # noqa: BLE001 - any capture failure falls back, with the reason kept
                cause = inner[0] if inner else e
                torch.cuda.set_stream(prev_stream)
                end_pool = getattr(torch._C, "_cuda_endAllocateToPool", None)
                if end_pool is not None:  # a failed capture_end leaves the allocator routing to the pool
                    with contextlib.suppress(Exception):
                        end_pool(torch.cuda.current_device(), pool)
                _end_generator_capture(self.device)
                self._zero_grads()
                self._reset_scalers()
                first = (str(cause).strip().splitlines() or [""])[0][:160]
                compiled = self.compile_mode != "none"
                self.mode = "compile" if compiled else "eager"
                self.fallback_reason = (f"CUDA graph capture failed ({type(cause).__name__}: {first}); running "
                                        + ("compiled steps without graphs" if compiled else "eager steps"))
                # Not replayed again: free them, and drop the failed capture (the exception's traceback
                # holds this frame and the partial autograd graph).
                self._graphs.clear()
                inner.clear()
                del cause, e
                if isinstance(self._d_reg_core, _CompiledPenalty) and self._d_reg_core.fn is not self._d_reg_core.eager:
                    self._d_reg_core.fn = None   # autocast's cache flag changes: it recompiles under the guard again
                return stats
            # The capture allocated .grad buffers it never wrote; the graph keeps its own addresses,
            # so dropping the references is safe and keeps later eager warm-ups from adding onto them.
            self._zero_grads()
            self._graphs[regs] = (graph, static_stats)
            self.captures += 1
            return stats

    def _reset_scalers(self) -> None:
        """After a failed capture: GradScaler may have marked an optimizer unscaled and left its
        ``grad_scale``/``found_inf`` (capture-pool tensors) on it; the next step would then skip the
        unscale and read garbage. Fresh scalers at the current scale (a host read, once)."""
        for name, opt in (("scaler_D", self.opt_D), ("scaler_G", self.opt_G)):
            for attr in ("grad_scale", "found_inf"):
                if hasattr(opt, attr):
                    delattr(opt, attr)
            old = getattr(self, name)
            if old is not None:
                setattr(self, name, torch.amp.GradScaler(self.device.type, init_scale=old.get_scale()))

    def _zero_grads(self) -> None:
        self.opt_D.zero_grad(set_to_none=True)
        self.opt_G.zero_grad(set_to_none=True)
