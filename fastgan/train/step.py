"""The engine: runs any task's schedule eager | compile | graphs. The only place torch.compile and CUDA graphs live.

Design note
-----------
A task (:mod:`fastgan.tasks`) says *what* an iteration computes: its networks by name, the noise it draws,
its forward stages and updates, each update's loss terms (see :mod:`fastgan.tasks.base`). This module owns
*how* they run, and knows no GAN maths:

- Real batches are dicts of named fields (``images``, ``labels``, ``A``, ``B``...). An iteration takes as
  many as its longest data-reading update repeats (n_critic); repeat ``i`` of every update sees batch ``i``.
- Noise (latents, random labels, codes) is drawn on the device right before the forward stage that names it.
- A top-level forward's outputs carry gradients only if a later update trains a network it used; an
  update that trains none of them sees them detached. A forward inside an update (fresh fakes per critic
  step) runs under ``no_grad`` when the update trains none of its networks.
- Each term's backward goes only into the update's networks (``backward(inputs=...)``), so the other
  networks' weight gradients are never computed, ``requires_grad`` is never toggled, and nothing but the
  update's optimizers steps. Lazy terms (``every > 1``) run when the update's count is a multiple of
  ``every``; the Trainer rescales that update's learning rates and betas by ``every / (every + 1)``.

``eager``
    Plain PyTorch (the fused ops still run their Triton kernels on CUDA).

``compile``
    Every forward stage and every term is a ``torch.compile(fullgraph=True)`` function of the batch dict
    with fixed shapes, so AOTAutograd compiles each forward *and* its backward. Backward calls and optimizer
    steps stay outside compiled code. Inside a compiled term the networks the update does not train are
    called with their parameters *detached* (``functional_call``, :class:`_DetachedWeights`): AOTAutograd's
    backward computes a gradient for every traced input that requires one and would otherwise compute their
    weight gradients just to discard them. Terms with a ``prepare`` (gradient penalties) build their input
    leaf eagerly, then run compiled with Dynamo's ``trace_autograd_ops`` (torch >= 2.9), which traces the
    penalty's ``autograd.grad(create_graph=True)`` into the forward graph so AOTAutograd compiles its
    backward too (double backward does not otherwise go through AOTAutograd, pytorch#91469). Without that
    flag, or if compiling it fails, those terms run eagerly (``penalty_mode`` says which); the fused ops'
    backwards are themselves differentiable, so the eager penalty keeps the fast kernels.

    ``compile_mode`` picks the ``torch.compile`` mode: ``default``, ``max-autotune(-no-cudagraphs)``, or
    ``reduce-overhead`` — Inductor's CUDA-graph trees around each compiled function, with backward calls,
    penalties and optimizer steps eager between them (``cudagraph_mark_step_begin`` once per iteration),
    the stock alternative to ``graphs`` below, kept so the two can be measured side by side.

``graphs`` (CUDA)
    A whole iteration — noise drawn on the device, every forward, every update with its penalties' double
    backward and fused Adam steps (``capturable=True``), the EMA lerps — is captured as ONE CUDA graph and
    replayed. Static: one buffer per real-batch field per repeat (each iteration's batches are copied in),
    every parameter, gradient and optimizer state, the stats tensors the graph writes (read right after each
    replay; host reads only at log ticks) and the EMA weight (a device scalar refreshed with ``fill_``
    before each replay). Random numbers come from the graph-safe Philox generator. The compiled functions
    of ``compile`` mode run inside the capture; ``compile_mode="none"`` captures the eager phases instead
    (no Inductor: cuDNN convolutions, the fused Triton ops, channels_last kept; a failed capture then falls
    back to eager, not compile). Lazy terms make the set of terms that run vary between iterations; each
    distinct pattern is captured once, on first use, after one eager warm-up iteration on a side stream
    (a real training iteration). Shapes never change (the loader drops the last partial batch), so there is
    one recording per pattern; ``captures`` counts them.

Precision: ``bf16`` (the CUDA default) and ``fp32`` need no loss scaling. ``fp16`` gets one
``torch.amp.GradScaler`` per update (``scaler_D``, ``scaler_G``: shared by the optimizers of an update
that trains several networks): each backward of the update is scaled by it, and each optimizer step
unscales, skips on inf/NaN and the scale adjusts once per update. With fused Adam (CUDA) the scaler hands
the scale and the inf flag to the fused kernel — no host sync, captured in graphs mode; with a non-fused
optimizer (RMSprop, CPU Adam) ``GradScaler.step`` reads the inf flag on the host, a sync per optimizer
step and the one exception to the rule below, and the Trainer does not pick graphs mode for it. Penalty
terms run in fp32 (autocast off, float batch fields upcast): fp16 double backward through a norm layer
gives NaN; their result still goes through the update's scaler.

Data-parallel runs (``torchrun``; :mod:`fastgan.train.distributed`): noise is each rank's slice of a draw for
the global batch, and every update averages its networks' gradients over the ranks with one all-reduce before
its optimizer steps, in every mode (captured in graphs mode).

No host synchronization happens inside a step in any mode: losses and a non-finite flag are accumulated
into device tensors (:class:`StatsAccumulator`) and read only at log ticks.
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
from fastgan.tasks.base import Batch, Forward, Nets, Task, Term, Update
from fastgan.train.distributed import SINGLE, DistContext


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

    def read(self, reduce=None) -> dict[str, float]:
        """Means since the last read, plus ``nonfinite`` (1.0 if any value was NaN/inf). ``reduce`` maps the
        summed device vector first (a data-parallel run's mean over ranks, which all hold the same keys)."""
        if not self._sums:
            return {}
        groups = list(self._sums.items())
        values = torch.cat([vec for _, (vec, _) in groups])
        values = (values if reduce is None else reduce(values)).tolist()   # the one host sync
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


def _opt_step(opt, scaler) -> None:
    """``opt.step()``, or through the fp16 loss scaler: unscale and skip on inf/NaN (the caller updates the
    scale once per update)."""
    if scaler is None:
        opt.step()
    else:
        scaler.step(opt)


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


class _CompiledDoubleBackward:
    """A term with ``prepare`` (a gradient penalty: ``autograd.grad(create_graph=True)`` inside) as one
    ``torch.compile(fullgraph=True)`` function, traced with ``trace_autograd_ops`` on. The first call compiles
    the forward and (lazily, in the backward) its backward graph; if either fails (a Dynamo/Inductor
    limitation on some model), the term runs eagerly from then on and the engine's ``penalty_mode`` says
    why. Nothing is applied twice: the term's autograd graph is the compiled node alone (its input is a
    detached leaf), so a compile failure leaves no gradient behind. Later failures propagate."""

    def __init__(self, compiled, eager, engine: "Engine"):
        self.compiled, self.eager, self.engine = compiled, eager, engine
        self.fn = None   # settled after the first call

    def __call__(self, batch: Batch, backward) -> dict[str, torch.Tensor]:
        import torch._dynamo.config as cfg

        if self.fn is self.eager:
            loss, stats = self.eager(batch)
            backward(loss)
            return stats
        if self.fn is not None:
            with cfg.patch(trace_autograd_ops=True):
                loss, stats = self.fn(batch)
            backward(loss)
            return stats
        try:
            with cfg.patch(trace_autograd_ops=True):
                loss, stats = self.compiled(batch)
                backward(loss)
        except Exception as e:  # noqa: BLE001 - any compile failure falls back, with the reason kept
            self.fn = self.eager
            self.engine.penalty_mode = f"eager (compiling the penalty failed: {type(e).__name__}: {_first_line(e)})"
            loss, stats = self.eager(batch)
            backward(loss)
            return stats
        self.fn = self.compiled
        return stats


class _DetachedWeights(nn.Module):
    """A network for a compiled term of an update that does not train it: same forward, parameters passed
    in detached. Gradients still flow to its *inputs*; none are computed for its weights. Buffers stay the
    module's own, so BatchNorm running statistics update as in eager."""

    def __init__(self, net: nn.Module, keep: frozenset[int] = frozenset()):
        super().__init__()
        self.net = net
        self._keep = keep   # ids of parameters shared with a trained network: they keep their gradient path

    def forward(self, *args, **kwargs):
        params = {name: p if id(p) in self._keep else p.detach() for name, p in self.net.named_parameters()}
        return torch.func.functional_call(self.net, params, args, kwargs, strict=False)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:160]


class Engine:
    """Executes training iterations of a :class:`~fastgan.tasks.base.Task` in one of three modes (module doc).

    ``optimizers`` maps each trained network to its optimizer; ``ema`` maps each EMA network's name to its
    copy. ``batch`` is the fixed batch size (noise for updates that read no data is drawn at this size)."""

    def __init__(self, task: Task, optimizers: dict[str, torch.optim.Optimizer], *, batch: int, device: torch.device,
                 precision: str = "fp32", ema_kimg: float = 10.0, ema_rampup: float | None = 0.05,
                 mode: str = "eager", compile_mode: str = "default", compile_penalty: bool | None = None,
                 dist: DistContext = SINGLE):
        if mode not in ("eager", "compile", "graphs"):
            raise ValueError(f"unknown mode {mode!r}")
        if compile_mode not in COMPILE_MODES:
            raise ValueError(f"unknown compile_mode {compile_mode!r}")
        if mode == "graphs" and compile_mode in CUDAGRAPH_COMPILE_MODES:
            raise ValueError("graphs mode captures the whole iteration itself; its compile_mode cannot add CUDA graphs")
        if compile_mode == "none" and mode != "graphs":
            raise ValueError("compile_mode 'none' (eager phases in a CUDA graph) is for graphs mode")
        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"unknown precision {precision!r}")
        if mode == "graphs" and device.type != "cuda":
            raise ValueError("graphs mode needs a CUDA device")
        task.validate()
        self.task, self.optimizers = task, optimizers
        self.nets = Nets(task.nets)
        self.schedule = task.schedule()
        self.updates = [s for s in self.schedule if isinstance(s, Update)]
        self.noise = task.noise()
        self.batch, self.device, self.precision = batch, device, precision
        self.dist = dist
        self.ema_kimg, self.ema_rampup = ema_kimg, ema_rampup
        self.mode, self.compile_mode = mode, compile_mode
        # reduce-overhead: Inductor's CUDA-graph trees around each compiled function; each iteration is one
        # "step" for them (outputs of the previous iteration may be overwritten from then on).
        self._mark_step = mode == "compile" and compile_mode in CUDAGRAPH_COMPILE_MODES and device.type == "cuda"
        self.ema = {n: copy.deepcopy(task.nets[n]).eval().requires_grad_(False) for n in task.ema}
        # fp16: one loss scaler per update (bf16 and fp32 have fp32's exponent range and need none).
        self.scalers = {u.name: torch.amp.GradScaler(device.type) if precision == "fp16" else None
                        for u in self.updates}
        self.counts = {u.name: 0 for u in self.updates}   # repeats run per update (drives lazy terms)
        self.nimg = 0              # real images drawn so far (by all ranks of a data-parallel run)
        self.captures = 0          # CUDA graphs recorded (graphs mode)
        self.fallback_reason: str | None = None
        # Graphs mode: a zero-argument callable returning a context manager entered around the eager warm-up
        # iteration before each capture (fastgan.profile records which kernels each phase launches there).
        self.warmup_context = None
        self._params = {n: list(m.parameters()) for n, m in task.nets.items()}
        self._update_params = {u.name: [p for n in u.nets for p in self._params[n]] for u in self.updates}
        # networks trained by the updates from the k-th on (whether a top-level forward's outputs need grad)
        self._trained_from = [set(n for u in self.updates[k:] for n in u.nets) for k in range(len(self.updates) + 1)]
        self._ema_pairs = {n: (list(e.parameters()), list(task.nets[n].parameters()),
                               list(zip(e.buffers(), task.nets[n].buffers()))) for n, e in self.ema.items()}
        self.data_repeats = max([u.repeats for u in self.updates if u.data] or [1])
        has_pen = any(t.prepare is not None for u in self.updates for t in u.terms)
        # How penalty terms run: "compiled", or "eager (<why>)".
        self.penalty_mode = "eager" if has_pen else "none"
        compiled = mode == "compile" or (mode == "graphs" and compile_mode != "none")
        if compiled and has_pen:
            if compile_penalty is None:
                compile_penalty = penalty_compile_supported()
            elif compile_penalty and not penalty_compile_supported():
                raise ValueError("compile_penalty=True needs torch._dynamo.config.trace_autograd_ops (torch >= 2.9)")
        self._fwd_fns: dict[tuple[str, str], object] = {}    # (scope, forward name) -> callable(batch)
        self._term_fns: dict[tuple[str, str], object] = {}   # (update, term) -> callable(batch) or penalty wrapper
        self._build_callables(compiled, compile_penalty)
        if mode == "graphs":
            self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor]]] = {}
            self._static: list[Batch | None] = [None] * self.data_repeats
            self._ema_weight = torch.zeros((), device=device)

    # -- building -------------------------------------------------------------------------
    def _view(self, trained: tuple[str, ...], detach_others: bool) -> Nets:
        """The networks as a term of an update training ``trained`` sees them (others detached if asked)."""
        if not detach_others:
            return self.nets
        keep = frozenset(id(p) for n in trained for p in self._params[n])
        return Nets({n: m if n in trained else _DetachedWeights(m, keep) for n, m in self.task.nets.items()})

    def _build_callables(self, compiled: bool, compile_penalty: bool | None) -> None:
        kw = {"fullgraph": True, "mode": None if self.compile_mode == "default" else self.compile_mode}
        if compiled:
            # Dynamo caches per code object, shared by every Trainer in the process (a bench matrix builds
            # many); with fullgraph=True hitting the default limit of 8 is a hard error.
            import torch._dynamo as dynamo   # (a bare `import torch._dynamo` would make `torch` local here)

            cfg = dynamo.config
            name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"  # older torch
            setattr(cfg, name, max(getattr(cfg, name), 64))
        wrap = (lambda f: torch.compile(f, **kw)) if compiled else (lambda f: f)
        for scope, fwd in self._forwards():
            self._fwd_fns[(scope, fwd.name)] = wrap(functools.partial(fwd.fn, self.nets))
        for u in self.updates:
            view = self._view(u.nets, detach_others=compiled)
            for t in u.terms:
                if t.prepare is None:
                    self._term_fns[(u.name, t.name)] = wrap(functools.partial(t.fn, view))
                    continue
                eager = functools.partial(t.fn, self.nets)
                if compiled and compile_penalty:
                    # Inductor's CUDA-graph trees stay on the main phases; penalties compile without them.
                    pkw = dict(kw, mode=None if self.compile_mode in CUDAGRAPH_COMPILE_MODES else kw["mode"])
                    fn = _CompiledDoubleBackward(torch.compile(functools.partial(t.fn, view), **pkw), eager, self)
                    self.penalty_mode = "compiled"
                else:
                    fn = eager
                self._term_fns[(u.name, t.name)] = fn

    def _forwards(self):
        for s in self.schedule:
            if isinstance(s, Forward):
                yield "", s
            elif s.forward is not None:
                yield s.name, s.forward

    def phase_names(self) -> list[str]:
        """The profiler ranges an iteration opens, in order (from the task's schedule)."""
        out: list[str] = []
        add = lambda n: out.append(n) if n not in out else None  # noqa: E731
        for s in self.schedule:
            if isinstance(s, Forward):
                add(s.name)
                continue
            if s.forward is not None:
                add(s.forward.name)
            for t in s.terms:
                add(t.name)
                if t.prepare is None:
                    add(t.backward_name)
            add(f"{s.name}_step")
        for n in self.ema:
            add(f"{n}_ema")
        return out

    def step_phase_names(self) -> list[str]:
        """The ranges of :meth:`phase_names` that wrap the terms' forwards and backwards (a term with
        ``prepare`` has one range), in order: the host enters them on every iteration it runs, and on none
        it replays as a CUDA graph (fastgan.profile tells a graphed window by their absence)."""
        out: list[str] = []
        for u in self.updates:
            for t in u.terms:
                for n in (t.name,) if t.prepare is not None else (t.name, t.backward_name):
                    if n not in out:
                        out.append(n)
        return out

    # -- helpers --------------------------------------------------------------------------
    def _autocast(self):
        if self.precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            # The autocast weight cache must be off under graph capture.
            return torch.autocast(self.device.type, dtype=dtype, cache_enabled=self.mode != "graphs")
        return contextlib.nullcontext()

    def ema_weight(self) -> float:
        """1 - β, with β from a half-life of ``ema_kimg`` thousand images (ramped up early on)."""
        ema_nimg = self.ema_kimg * 1000
        if self.ema_rampup is not None:
            ema_nimg = min(ema_nimg, self.nimg * self.ema_rampup)
        return 1.0 - 0.5 ** (self.batch * self.dist.world / max(ema_nimg, 1e-8))

    def _sample(self, spec, n: int) -> torch.Tensor:
        """``n`` draws of a noise spec; in a data-parallel run this rank's slice of a draw for all ranks."""
        if self.dist.enabled:
            return self.dist.slice(spec.draw(n * self.dist.world, self.device))
        return spec.draw(n, self.device)

    def _draw(self, names, batch: Batch, n: int) -> None:
        for z in names:
            batch[z] = self._sample(self.noise[z], n)

    def _run_forward(self, scope: str, fwd: Forward, batch: Batch, n: int, grad: bool) -> None:
        self._draw(fwd.noise, batch, n)
        with _phase(fwd.name), (contextlib.nullcontext() if grad else torch.no_grad()):
            out = self._fwd_fns[(scope, fwd.name)](batch)
        batch.update(out)
        self._produced.update({k: fwd.nets for k in out})

    # -- one update -----------------------------------------------------------------------
    def _update(self, u: Update, batch: Batch, n: int, due: tuple[bool, ...], stats: dict) -> None:
        """One repeat of ``u`` on ``batch`` (its real fields and the top-level forwards' outputs); ``n`` is the
        batch size its forward draws noise for; ``due`` flags which terms run."""
        scaler = self.scalers[u.name]
        params = self._update_params[u.name]
        # Fields made from networks this update does not train enter it detached.
        view = {k: (v.detach() if k in self._produced and not set(self._produced[k]) & set(u.nets) else v)
                for k, v in batch.items()}
        with self._autocast():
            if u.forward is not None:
                self._run_forward(u.name, u.forward, view, n, grad=bool(set(u.forward.nets) & set(u.nets)))
            for t, on in zip(u.terms, due):
                if not on:
                    continue
                if t.prepare is not None:
                    with _phase(t.name), self._penalty_precision():
                        stats.update(self._penalty(u, t, view, n, params, scaler))
                    continue
                with _phase(t.name):
                    loss, s = self._term_fns[(u.name, t.name)](view)
                stats.update(s)
                # The backward range wraps the host call, which returns once autograd has launched every
                # backward kernel: fastgan.profile attributes those kernels by time containment.
                with _phase(t.backward_name):
                    _scaled(loss, scaler).backward(inputs=params)
        with _phase(f"{u.name}_step"):
            if self.dist.enabled:          # one flat all-reduce of the update's gradients (module doc of distributed)
                self.dist.average_gradients(params)
            for n in u.nets:
                _opt_step(self.optimizers[n], scaler)
            if scaler is not None:
                scaler.update()
                scale = scaler._get_scale_async() if hasattr(scaler, "_get_scale_async") else None  # no sync
                if scale is not None:
                    stats[f"loss_scale_{u.name}"] = scale
            if u.post is not None:
                with torch.no_grad():
                    u.post(self.nets)
            # set_to_none outside graphs mode: under reduce-overhead .grad is CUDA-graph pool memory that the
            # next backward must not add into (graphs mode keeps its static .grad buffers).
            for n in u.nets:
                self.optimizers[n].zero_grad(set_to_none=self.mode != "graphs")

    def _penalty_precision(self):
        """fp16: penalty terms' forward and double backward in fp32 (see the module doc)."""
        if self.precision == "fp16":
            return torch.autocast(self.device.type, enabled=False)
        return contextlib.nullcontext()

    def _penalty(self, u: Update, t: Term, view: Batch, n: int, params, scaler) -> dict[str, torch.Tensor]:
        b = dict(view)
        if self.precision == "fp16":   # autocast is off here: the networks' fp32 weights need fp32 inputs
            b = {k: v.float() if v.is_floating_point() else v for k, v in b.items()}
        for name, spec in t.noise.items():
            b[name] = self._sample(spec, n)
        b.update(t.prepare(b))
        # inputs=: only the update's parameters; the penalty's input leaf gets no (image-sized) gradient.
        backward = lambda loss: _scaled(loss, scaler).backward(inputs=params)   # noqa: E731
        fn = self._term_fns[(u.name, t.name)]
        if isinstance(fn, _CompiledDoubleBackward):
            return fn(b, backward)
        loss, stats = fn(b)
        backward(loss)
        return stats

    @torch.no_grad()
    def _ema_update(self, weight) -> None:
        """ema ← ema + w·(net − ema) per EMA network; ``weight`` is a float or a device scalar (graphs)."""
        for name, (ema_p, net_p, buffers) in self._ema_pairs.items():
            with _phase(f"{name}_ema"):
                if isinstance(weight, torch.Tensor):
                    diff = torch._foreach_sub(net_p, ema_p)
                    torch._foreach_mul_(diff, weight)
                    torch._foreach_add_(ema_p, diff)
                else:
                    torch._foreach_lerp_(ema_p, net_p, weight)
                for b_ema, b in buffers:
                    b_ema.copy_(b)

    def _due(self) -> tuple[tuple[bool, ...], ...]:
        """Which terms run in this iteration: per update and repeat, a flag per term (lazy terms by count)."""
        out = []
        for u in self.updates:
            c = self.counts[u.name]
            out.append(tuple(tuple((c + i) % t.every == 0 for t in u.terms) for i in range(u.repeats)))
        return tuple(out)

    def _body(self, reals: list[Batch], due, ema_weight) -> dict[str, torch.Tensor]:
        """One iteration on already-fetched real batches; no host sync, no host-side counters."""
        if self._mark_step:
            # Exactly one mark per iteration, here: every output of this iteration's compiled calls stays alive
            # until the next mark; a second mark inside the iteration would free them.
            torch.compiler.cudagraph_mark_step_begin()
        stats: dict[str, torch.Tensor] = {}
        self._produced: dict[str, tuple[str, ...]] = {}
        shared: Batch = {}              # top-level forwards' outputs and their noise
        k = 0                           # updates seen so far
        for s in self.schedule:
            if isinstance(s, Forward):
                grad = bool(set(s.nets) & self._trained_from[k])
                b = {**reals[0], **shared}     # a top-level forward reads the first real batch (pix2pix, CycleGAN)
                with self._autocast():
                    self._run_forward("", s, b, _size(reals[0], self.batch), grad)
                shared.update((f, v) for f, v in b.items() if f not in reals[0])
                continue
            for i in range(s.repeats):
                real = reals[i] if s.data else {}
                self._update(s, {**real, **shared}, _size(real, self.batch), due[k][i], stats)
            k += 1
        self._ema_update(ema_weight)
        return stats

    # -- public ---------------------------------------------------------------------------
    def iteration(self, next_batch) -> dict[str, torch.Tensor]:
        """One iteration on batches from ``next_batch()`` (a dict of named device tensors; ``data_repeats`` of
        them are drawn). The returned stats are device tensors valid until the next call (under
        reduce-overhead they are CUDA-graph outputs the next iteration overwrites): consume or copy them."""
        reals = [_as_batch(next_batch()) for _ in range(self.data_repeats)]
        if self.mode != "eager":
            for r in reals:
                got = next(iter(r.values())).shape[0] if r else self.batch
                if got != self.batch:
                    raise ConfigError(f"a batch of {got} images reached a {self.mode} step built for batch_size="
                                      f"{self.batch}: compiled and graphed steps need a fixed batch (drop or pad the "
                                      "last partial batch; Trainer.fit drops it)")
        due = self._due()
        if self.mode == "graphs":
            stats = self._replay(reals, due)
        else:
            stats = self._body(reals, due, self.ema_weight())
        for u in self.updates:
            self.counts[u.name] += u.repeats
        self.nimg += sum(_size(r, 0) for r in reals) * self.dist.world     # images of all ranks
        return stats

    def state_dict(self) -> dict:
        """Counters and loss scalers (networks and optimizers are saved by their owners)."""
        return {"counts": dict(self.counts), "nimg": self.nimg,
                "scalers": {k: s.state_dict() for k, s in self.scalers.items() if s is not None}}

    def load_state_dict(self, state: dict) -> None:
        self.nimg = int(state["nimg"])
        for k, v in state["counts"].items():
            if k in self.counts:
                self.counts[k] = int(v)
        for k, s in state.get("scalers", {}).items():
            if self.scalers.get(k) is not None:
                self.scalers[k].load_state_dict(s)

    # -- graphs mode ----------------------------------------------------------------------
    def _replay(self, reals: list[Batch], due) -> dict[str, torch.Tensor]:
        for i, r in enumerate(reals):
            if self._static[i] is None:
                self._static[i] = {k: torch.empty_like(v) for k, v in r.items()}
            for k, v in r.items():
                self._static[i][k].copy_(v, non_blocking=True)
        self._ema_weight.fill_(self.ema_weight())
        if due not in self._graphs:
            return self._warm_and_capture(due)
        graph, stats = self._graphs[due]
        graph.replay()
        return stats

    def _warm_and_capture(self, due) -> dict[str, torch.Tensor]:
        """Run this iteration eagerly on a side stream (warm-up: compiles, autotunes, allocates optimizer
        state), then record the same iteration body as a CUDA graph for later."""
        static = [s for s in self._static]
        with torch.cuda.device(self.device):
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with (self.warmup_context() if self.warmup_context is not None else contextlib.nullcontext()):
                with torch.cuda.stream(side):
                    stats = {k: v.clone() for k, v in self._body(static, due, self._ema_weight).items()}
                torch.cuda.current_stream(self.device).wait_stream(side)
                torch.cuda.synchronize(self.device)
            self._zero_grads()
            graph = torch.cuda.CUDAGraph()
            pool = torch.cuda.graph_pool_handle()
            prev_stream = torch.cuda.current_stream(self.device)
            inner: list[BaseException] = []
            try:
                # Capture records kernels without running them: parameters are untouched until replay.
                # thread_local: allocations by other threads (the loader's pinned-memory prefetch) must not
                # invalidate the capture.
                with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                    try:
                        static_stats = self._body(static, due, self._ema_weight)
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
                compiled = self.compile_mode != "none"
                self.mode = "compile" if compiled else "eager"
                self.fallback_reason = (f"CUDA graph capture failed ({type(cause).__name__}: {_first_line(cause)}); "
                                        "running " + ("compiled steps without graphs" if compiled else "eager steps"))
                # Not replayed again: free them, and drop the failed capture (the exception's traceback holds
                # this frame and the partial autograd graph).
                self._graphs.clear()
                inner.clear()
                del cause, e
                for fn in self._term_fns.values():
                    if isinstance(fn, _CompiledDoubleBackward) and fn.fn is not fn.eager:
                        fn.fn = None   # autocast's cache flag changes: it recompiles under the guard again
                return stats
            # The capture allocated .grad buffers it never wrote; the graph keeps its own addresses, so
            # dropping the references is safe and keeps later eager warm-ups from adding onto them.
            self._zero_grads()
            self._graphs[due] = (graph, static_stats)
            self.captures += 1
            return stats

    def _reset_scalers(self) -> None:
        """After a failed capture: GradScaler may have marked an optimizer unscaled and left its
        ``grad_scale``/``found_inf`` (capture-pool tensors) on it; the next step would then skip the unscale
        and read garbage. Fresh scalers at the current scale (a host read, once)."""
        for opt in self.optimizers.values():
            for attr in ("grad_scale", "found_inf"):
                if hasattr(opt, attr):
                    delattr(opt, attr)
        for name, old in self.scalers.items():
            if old is not None:
                self.scalers[name] = torch.amp.GradScaler(self.device.type, init_scale=old.get_scale())

    def _zero_grads(self) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)


def _as_batch(b) -> Batch:
    """A real batch as a dict of named fields (a bare tensor is the ``images`` field)."""
    return b if isinstance(b, dict) else {"images": b}


def _size(batch: Batch, default: int) -> int:
    """The batch size of a real batch (its first field's leading dimension), ``default`` for an empty one."""
    return next(iter(batch.values())).shape[0] if batch else default
