"""``fastgan.Trainer``: train any generator/discriminator pair with fastgan's step.

>>> trainer = fastgan.Trainer(G, D, loss="nonsat", batch_size=64)
>>> trainer.fit(fastgan.data.load_dataset("mnist5k"), steps=1000)
>>> images = trainer.sample(16)

``G`` must map latents ``(N, z_dim)`` to images and expose ``z_dim`` (or pass ``z_dim=``); a tuple
``z_dim=(100, 1, 1)`` draws latents of shape ``(N, 100, 1, 1)``, as the DCGAN tutorial's generator wants;
``D`` must map images to logits ``(N,)`` (or ``(N, 1)``).
"""
from __future__ import annotations

import contextlib
import inspect
import numbers
import operator
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from fastgan.errors import CheckpointError, ConfigError
from fastgan.latent import latent_shape
from fastgan.train.step import (COMPILE_MODES, CUDAGRAPH_COMPILE_MODES, GanStep, StatsAccumulator, make_optimizer,
                                penalty_compile_supported)
from fastgan.variants.objective import Objective


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {str(device)!r} requested but no CUDA device is available; pass --device cpu")
    return dev


MODES = ("auto", "eager", "compile", "graphs")


def resolve_mode(mode: str, device: torch.device) -> tuple[str, str]:
    """Return (mode, reason): ``auto`` is ``graphs`` on CUDA and ``eager`` on CPU."""
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "auto":
        if device.type == "cuda":
            return "graphs", "auto: CUDA graphs of compiled steps on cuda"
        return "eager", f"auto: eager on {device.type} (compile is available with --mode compile)"
    if mode == "graphs" and device.type != "cuda":
        raise ConfigError(f"mode 'graphs' needs a CUDA device (this run is on {device.type}); use --mode compile or eager")
    return mode, "requested"


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"unknown precision {precision!r}; choose one of auto, fp32, bf16, fp16")
    if precision == "fp16" and device.type == "cpu":
        # measured (fastgan train --variant wgan-gp, 2-core x86, torch 2.13): 35 img/s in fp16, 294 in fp32
        warnings.warn("fp16 on CPU has no fast kernels for most ops and runs several times slower than fp32; "
                      "fp16 is for GPUs without bf16", stacklevel=3)
    return precision


class _WrappedD(nn.Module):
    """Flattens a user's D output (N, 1) → (N,)."""

    def __init__(self, D: nn.Module):
        super().__init__()
        self.D = D

    def forward(self, x):
        return self.D(x).reshape(x.shape[0])


TRAINER_STATE_FORMAT = "fastgan-trainer-state-1"


class Trainer:
    """Owns the models, optimizers, EMA generator and the step engine. :meth:`save` / :meth:`load` checkpoint
    and resume a run exactly."""

    def __init__(self, G: nn.Module, D: nn.Module, *, loss: str | Objective = "nonsat",
                 penalty: str | None = None, penalty_weight: float = 0.0, penalty_every: int = 1,
                 n_critic: int = 1, clip: float | None = None, optimizer: str = "adam",
                 lr_g: float = 2e-4, lr_d: float = 2e-4, betas: tuple[float, float] = (0.5, 0.999),
                 batch_size: int = 64, z_dim: int | tuple[int, ...] | None = None, device: str | torch.device | None = None,
                 mode: str = "auto", precision: str = "auto", ema_kimg: float = 10.0,
                 ema_rampup: float | None = 0.05, seed: int | None = None, channels_last: bool | None = None,
                 compile_mode: str = "default", compile_penalty: bool | None = None):
        for name, net in (("G", G), ("D", D)):
            if not isinstance(net, nn.Module):
                got = f"the class {net.__name__}" if isinstance(net, type) else type(net).__name__
                raise ConfigError(f"{name} must be a torch.nn.Module instance (got {got}); pass e.g. {name}=MyNet()")
        bs = None
        if not isinstance(batch_size, bool) and not (isinstance(batch_size, torch.Tensor) and
                                                     batch_size.dtype == torch.bool):
            try:
                bs = operator.index(batch_size)           # ints, numpy ints, 0-d integer tensors
            except TypeError:
                pass
        if bs is None or bs < 1:
            raise ConfigError(f"batch_size must be a positive integer (got {batch_size!r})")
        batch_size = bs
        for name, v in (("lr_g", lr_g), ("lr_d", lr_d)):
            ok = not isinstance(v, bool) and (isinstance(v, numbers.Real) or
                                              (isinstance(v, torch.Tensor) and v.numel() == 1))
            if not ok or not float(v) > 0:
                raise ConfigError(f"{name} must be a positive number (got {v!r})")
        lr_g, lr_d = float(lr_g), float(lr_d)      # plain floats in the optimizers (and in save()'s state)
        if not isinstance(loss, Objective) and penalty is not None and not penalty_weight > 0:
            raise ConfigError(f"penalty {penalty!r} needs penalty_weight > 0 (got {penalty_weight}); e.g. 10 for "
                              "WGAN-GP's lambda, or leave penalty unset")
        if seed is not None:
            torch.manual_seed(seed)
        self.device = resolve_device(device)
        self.objective = loss if isinstance(loss, Objective) else Objective(loss, penalty, penalty_weight, penalty_every)
        z_dim = z_dim if z_dim is not None else getattr(G, "z_dim", None)
        if z_dim is None:
            raise ConfigError("cannot tell the generator's latent size; give G a `z_dim` attribute or pass z_dim=")
        if n_critic < 1:
            raise ConfigError(f"n_critic must be >= 1 (got {n_critic})")
        if optimizer not in ("adam", "rmsprop"):
            raise ConfigError(f"unknown optimizer {optimizer!r}; choose adam or rmsprop")
        self.z_shape = latent_shape(z_dim)
        self.z_dim = self.z_shape[0]
        self.batch_size = int(batch_size)
        self.mode, self.mode_reason = resolve_mode(mode, self.device)
        if compile_mode not in COMPILE_MODES:
            raise ConfigError(f"unknown compile_mode {compile_mode!r}; choose one of {', '.join(COMPILE_MODES)}")
        if compile_mode == "none" and self.mode != "graphs":
            raise ConfigError(f"compile_mode 'none' captures eager phases as a CUDA graph, so it needs mode='graphs' "
                              f"(this run is {self.mode}: {self.mode_reason}); use compile_mode='default' otherwise")
        if compile_mode != "default" and self.mode == "eager":
            raise ConfigError(f"compile_mode {compile_mode!r} applies to compiled steps, but this run is eager "
                              f"({self.mode_reason}); pass mode='compile' (CLI: --mode compile)")
        if compile_mode in CUDAGRAPH_COMPILE_MODES and self.device.type != "cuda":
            raise ConfigError(f"compile_mode {compile_mode!r} adds CUDA graphs, which need a CUDA device (this run is on "
                              f"{self.device.type}); use 'default' or 'max-autotune-no-cudagraphs'")
        if self.mode == "graphs" and compile_mode in CUDAGRAPH_COMPILE_MODES:
            raise ConfigError(f"compile_mode {compile_mode!r} adds Inductor's own CUDA graphs, but mode 'graphs' captures "
                              "the whole iteration itself; use mode='compile' with it, or compile_mode='default' or "
                              "'max-autotune-no-cudagraphs' with graphs")
        self.compile_mode = compile_mode
        if compile_penalty and not penalty_compile_supported():
            raise ConfigError(f"compile_penalty=True needs torch._dynamo.config.trace_autograd_ops, which torch "
                              f"{torch.__version__} lacks; leave compile_penalty unset (the penalty then runs eagerly)")
        self.precision = resolve_precision(precision, self.device)
        if self.precision == "fp16" and self.mode == "graphs" and optimizer != "adam":
            # GradScaler.step reads the inf flag on the host for a non-fused optimizer: not capturable.
            if mode != "auto":
                raise ConfigError(f"fp16 with optimizer {optimizer!r} cannot run in graphs mode (its loss scaler reads "
                                  "the inf flag on the host every step); use mode='compile' or precision='bf16'")
            self.mode = "eager" if compile_mode == "none" else "compile"   # 'none' asked for no torch.compile
            if compile_mode == "none":
                self.compile_mode = compile_mode = "default"
            self.mode_reason = (f"auto: {self.mode} on cuda, not graphs: fp16 with {optimizer} syncs the host in its "
                                "loss scaler")
        bad = _cumulative_batch_norm(G, D) if self.mode != "eager" else None
        if bad is not None:
            why = (f"{bad} is a BatchNorm with momentum=None (a cumulative average, whose per-step factor is read "
                   f"on the host)")
            if mode != "auto" or compile_mode != "default":
                raise ConfigError(f"{why}, which {self.mode} steps cannot trace; give it a momentum (e.g. 0.1) or use "
                                  "mode='eager'")
            self.mode, self.mode_reason = "eager", f"auto: eager, not {self.mode}: {why}"
        self.G = G.to(self.device).train()
        self.D = D.to(self.device).train()
        # channels_last by default for eager steps on CUDA (cuDNN's fast layout for bf16 convs; every
        # fused kernel is stride-aware). Compiled and graphed steps get NCHW and leave the layout to
        # Inductor's layout optimization: on torch 2.11 FakeTensor predicts the wrong strides for
        # cuDNN's convolution_backward where a channels_last tensor meets an ambiguous one, shaped
        # (N, C, 1, 1) (G's latent input, the grad of D's last conv), and the compiled step dies on
        # Inductor's stride assert (benches/diag/conv_layout.py shows which cases).
        # Graphs of eager phases (compile_mode='none') involve no Inductor and keep channels_last.
        default_cl = self.device.type == "cuda" and (self.mode == "eager" or compile_mode == "none")
        self.channels_last = default_cl if channels_last is None else bool(channels_last)
        # Either way the models are put in that layout: a user's channels_last model in an NCHW
        # compiled step would mix layouts, the very case of the stride bug above.
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.G.to(memory_format=fmt)
        self.D.to(memory_format=fmt)
        self.image_shape = _check_models(self.G, self.D, self.z_shape, self.device, self.batch_size, self.precision)
        capturable = self.mode == "graphs"
        self.opt_G = make_optimizer(optimizer, self.G.parameters(), lr_g, betas, self.device, capturable)
        if self.objective.has_penalty and self.objective.penalty_every > 1:
            # Lazy regularization (StyleGAN2): D is also updated by the penalty every k steps,
            # so its lr and betas are rescaled by c = k / (k + 1) to keep the effective schedule.
            c = self.objective.penalty_every / (self.objective.penalty_every + 1)
            lr_d, betas_d = lr_d * c, (betas[0] ** c, betas[1] ** c)
        else:
            betas_d = betas
        self.opt_D = make_optimizer(optimizer, self.D.parameters(), lr_d, betas_d, self.device, capturable)
        self.engine = GanStep(self.G, _WrappedD(self.D), self.objective, self.opt_G, self.opt_D,
                              z_dim=self.z_shape, batch=self.batch_size, device=self.device, n_critic=n_critic,
                              clip=clip, precision=self.precision, ema_kimg=ema_kimg, ema_rampup=ema_rampup,
                              mode=self.mode, compile_mode=compile_mode, compile_penalty=compile_penalty)
        self.stats = StatsAccumulator()
        self._fit_stats: StatsAccumulator | None = None    # fit()'s own, so a callback's stats.read() cannot empty it
        self._data = None                 # (data object, seed, batch iterator): fit() continues the same stream
        self.batches_drawn = 0            # real batches fit() has taken from its stream (saved by save())
        self._resume_batches = 0          # load(): where fit()'s next stream starts
        self._stepped = False
        self._checked_real = False
        self._pixels_checked = False
        # real batches in D's parameter dtype (fp32 normally; autocast takes bf16/fp16 from there)
        self._real_dtype = next((p.dtype for p in self.D.parameters() if p.is_floating_point()), torch.float32)
        self.steps_done = 0

    @property
    def G_ema(self) -> nn.Module:
        return self.engine.G_ema

    @property
    def nimg(self) -> int:
        return self.engine.nimg

    def _sync_mode(self) -> None:
        """Reflect an engine fallback (e.g. a failed graph capture) in mode / mode_reason."""
        if self.engine.mode != self.mode:
            self.mode = self.engine.mode
            self.mode_reason = f"fallback: {self.engine.fallback_reason}"

    def step(self, next_batch: Callable[[], torch.Tensor]) -> None:
        """One iteration (n_critic D steps, one G step, EMA); ``next_batch()`` returns a real batch on device."""
        try:
            out = self.engine.iteration(next_batch)
        except AssertionError as e:
            if self.channels_last and self.mode != "eager" and _is_conv_stride_assert(e):
                raise ConfigError(
                    "torch.compile failed on Inductor's stride check for a convolution backward, a known PyTorch "
                    "bug with channels_last models (pytorch#171622); leave channels_last unset (compiled steps then "
                    "run NCHW and Inductor picks conv layouts) or use mode='eager'") from e
            raise
        self._stepped = True
        self.stats.add(out, self._fit_stats)
        self.steps_done += 1
        if self.engine.fallback_reason is not None:
            self._sync_mode()

    def fit(self, data, steps: int, *, callback: Callable[["Trainer"], None] | None = None,
            callback_every: int = 100, seed: int = 0) -> dict[str, float]:
        """Train for ``steps`` G steps on an ImageDataset, a tensor of images, or an iterable of batches.

        Calling ``fit`` again with the same ``data`` object (and seed) continues its stream where the last
        call stopped, so ``fit(data, 3); fit(data, 3)`` trains as ``fit(data, 6)`` does (for a tensor or an
        ImageDataset exactly; an iterable is read again past the batches used, and a shuffling DataLoader
        draws its order from the global RNG). Returns the means of the step stats over this call,
        ``img_per_s`` (callback time excluded) and ``seconds``."""
        if self._data is None or self._data[0] is not data or self._data[1] != seed:
            # A new stream; a load()ed position applies to the first one after it.
            skip, self._resume_batches = self._resume_batches, 0
            if self._data is not None:
                self._checked_real = self._pixels_checked = False     # new data: check it too
            self._data = (data, seed, self._batches(data, seed, skip=skip))
            self.batches_drawn = skip
        elif self._data[2] is None:      # closed by an exception inside the data source: rebuilt where it was
            self._data = (data, seed, self._batches(data, seed, skip=self.batches_drawn))
        stream = self._data[2]

        def batches_next():
            x = next(stream)
            self.batches_drawn += 1
            return x
        t0 = time.perf_counter()
        nimg0 = self.nimg
        in_callbacks = 0.0
        self._fit_stats = StatsAccumulator()      # this call's own sums (self.stats is the user's to read)
        try:
            for i in range(steps):
                self.step(batches_next)
                if callback is not None and (i + 1) % callback_every == 0:
                    t_cb = time.perf_counter()
                    callback(self)
                    in_callbacks += time.perf_counter() - t_cb
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            dt = time.perf_counter() - t0 - in_callbacks
            out = self._fit_stats.read()
        except BaseException:
            # An exception raised inside the data source closes its generator for good: the next fit() with the
            # same data rebuilds the stream at the batches drawn so far (Ctrl-C, then run the cell again). One
            # raised by a step or a callback leaves the stream as it is.
            if inspect.getgeneratorstate(stream) == inspect.GEN_CLOSED:
                self._data = (data, seed, None)
            raise
        finally:
            self._fit_stats = None
        out["img_per_s"] = (self.nimg - nimg0) / max(dt, 1e-9)
        out["seconds"] = dt
        return out

    def _batches(self, data, seed: int, skip: int = 0):
        from fastgan.data import ImageDataset, InfiniteLoader

        if isinstance(data, torch.Tensor):
            _check_pixels(data, "the image tensor")
            self._pixels_checked = True
            data = ImageDataset(name="tensor", images=data.float(), labels=None, num_classes=0, class_names=[])
        if isinstance(data, ImageDataset):
            loader = InfiniteLoader(data, self.batch_size, self.device, seed=seed, skip=skip)
            return (self._prep(x) for x, _ in loader)
        # Batches of another size (a last partial batch) are dropped: shapes never change, so a
        # compiled step does not recompile and a captured graph is never re-recorded.
        full = _full_batches(data, self.batch_size, self.image_shape)
        for _ in range(skip):            # an iterable cannot seek: resuming reads past the batches already used
            next(full)
        return (self._prep(x) for x in full)

    # -- training state --------------------------------------------------------------------
    def save(self, path) -> None:
        """Write everything that continues this run exactly: G, D, G_ema, both optimizers (and loss
        scalers), the image and D-step counters, the RNG states and fit()'s position in its data
        stream. Written atomically (a crash leaves the previous file whole). Resume with a Trainer built
        with the same arguments, then :meth:`load` before its first step."""
        from fastgan.train.checkpoint import atomic_write

        eng = self.engine
        state = {"format": TRAINER_STATE_FORMAT, **self.state_dict(),
                 "opt_G": self.opt_G.state_dict(), "opt_D": self.opt_D.state_dict(),
                 "scaler_G": eng.scaler_G.state_dict() if eng.scaler_G is not None else None,
                 "scaler_D": eng.scaler_D.state_dict() if eng.scaler_D is not None else None,
                 "nimg": eng.nimg, "d_steps": eng.d_steps, "steps_done": self.steps_done,
                 "batches_drawn": self.batches_drawn, "batch_size": self.batch_size,
                 "rng_cpu": torch.get_rng_state(),
                 "rng_cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None}
        atomic_write(Path(path), lambda tmp: torch.save(state, tmp))

    def load(self, path) -> "Trainer":
        """Restore a :meth:`save`d state into this Trainer (built with the same models and arguments), before
        its first step: compiled and captured steps are built on the parameter and optimizer-state tensors
        they first see. fit() then continues the saved data stream when given the same data and seed."""
        if self._stepped:
            raise ConfigError("load() must come before the first step (this Trainer has already trained); build a "
                              "new Trainer with the same arguments and load into it")
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"trainer state {str(path)!r} does not exist; pass a file written by Trainer.save()")
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as e:
            raise CheckpointError(f"trainer state {str(path)!r} is corrupted or not a Trainer.save() file "
                                  f"({_first_line(e)})") from None
        if not isinstance(state, dict) or state.get("format") != TRAINER_STATE_FORMAT:
            raise CheckpointError(f"{str(path)!r} is not a Trainer.save() file (no '{TRAINER_STATE_FORMAT}' format); "
                                  "a `fastgan train` checkpoint loads with fastgan.train.checkpoint.load_checkpoint")
        if state["batch_size"] != self.batch_size:
            raise ConfigError(f"the saved run used batch_size {state['batch_size']}, this Trainer {self.batch_size}; "
                              "build it with the same arguments")
        eng = self.engine
        try:
            for name, module in (("G", self.G), ("D", self.D), ("G_ema", self.G_ema)):
                module.load_state_dict(state[name])
            for opt, name in ((self.opt_G, "opt_G"), (self.opt_D, "opt_D")):
                _load_optimizer_state(opt, state[name])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"trainer state {str(path)!r} does not fit these models or optimizers "
                                  f"({_first_line(e)}); build the Trainer as the saved run was built") from None
        for name, scaler in (("scaler_G", eng.scaler_G), ("scaler_D", eng.scaler_D)):
            if scaler is not None and state.get(name) is not None:
                scaler.load_state_dict(state[name])
        eng.nimg, eng.d_steps = int(state["nimg"]), int(state["d_steps"])
        self.steps_done = int(state["steps_done"])
        self._resume_batches = self.batches_drawn = int(state["batches_drawn"])
        self._data = None
        torch.set_rng_state(state["rng_cpu"].cpu())
        if self.device.type == "cuda" and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(state["rng_cuda"].cpu(), self.device)
        return self

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        """Put a real batch on the device in the models' layout (a batch in the other layout would
        recompile a compiled step, and channels_last data into NCHW models trips torch 2.11's
        conv-backward stride bug; see ``__init__``), in fp32 (autocast takes it from there). The first
        batch is checked against G's images: shape, dtype and value range."""
        if not self._checked_real:
            self._check_real(x)
        x = x.to(self.device, dtype=self._real_dtype, non_blocking=True)
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        return x

    def _check_real(self, x) -> None:
        if not isinstance(x, torch.Tensor):
            raise ConfigError(f"a real batch must be an image tensor (N, C, H, W) or an (images, labels) pair; got "
                              f"{type(x).__name__}")
        if x.shape[1:].numel() != self.image_shape.numel():   # (N, 1, 4, 4) reals for an MLP G making (N, 16) is fine
            raise ConfigError(f"real batches have images of shape {tuple(x.shape[1:])} but G makes "
                              f"{tuple(self.image_shape)}; resize the data or build G for that shape")
        if not self._pixels_checked:
            _check_pixels(x, "the real batch")
        self._checked_real = True

    @torch.no_grad()
    def sample(self, n: int = 64, *, seed: int = 0, ema: bool = True) -> torch.Tensor:
        """``n`` images in [-1, 1] from fixed latents (does not disturb the global RNG)."""
        g = torch.Generator(device="cpu").manual_seed(seed)
        z = torch.randn(n, *self.z_shape, generator=g).to(self.device)
        net = self.G_ema if ema else self.G
        was = net.training
        net.eval()
        try:
            return net(z).float().clamp(-1, 1).cpu()
        finally:
            net.train(was)

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"G": self.G.state_dict(), "D": self.D.state_dict(), "G_ema": self.G_ema.state_dict()}


def _check_pixels(x: torch.Tensor, what: str) -> None:
    """Real images must be floats near [-1, 1] (what a tanh G makes): integer pixels are an error, a float
    range far outside it a warning (checked on one batch, or a sample of a whole tensor)."""
    if not x.is_floating_point():
        raise ConfigError(f"{what} holds {x.dtype} pixels; convert them to floats in [-1, 1] (e.g. x / 127.5 - 1 "
                          "for 0..255)")
    v = x.detach().reshape(-1)[:1 << 20].float()
    lo, hi = float(v.min()), float(v.max())
    if lo < -1.5 or hi > 1.5:
        warnings.warn(f"{what} spans [{lo:.3g}, {hi:.3g}]; fastgan's generators end in tanh, so real images are "
                      "expected in [-1, 1] (scale 0..255 pixels by x / 127.5 - 1)", stacklevel=4)


def _ends_in_sigmoid(m: nn.Module) -> bool:
    """True when ``m``'s output is certainly an ``nn.Sigmoid``'s: the last slot of a Sequential, followed
    down through last slots and through custom modules whose only child is a Sequential (the usual
    ``self.main = nn.Sequential(...)``). A custom module's registration order is not its call order,
    so nothing else is judged (a squeeze-excitation gate registered last is not D's output). A
    ``fastgan.fuse``d layer with ``act='sigmoid'`` counts as a Sigmoid (its slot became an Identity)."""
    while True:
        if isinstance(m, nn.Sequential):
            slots = [c for c in m._modules.values() if c is not None]
            while slots and type(slots[-1]) is nn.Identity:      # fuse leaves the activation's slot as Identity
                slots.pop()
            if not slots:
                return False
            m = slots[-1]
            if isinstance(m, nn.Sigmoid) or getattr(m, "act", None) == "sigmoid":
                return True
            continue
        children = list(m.children())
        if len(children) != 1 or not isinstance(children[0], nn.Sequential):
            return False
        m = children[0]


def _cumulative_batch_norm(G: nn.Module, D: nn.Module) -> str | None:
    """The first BatchNorm with ``momentum=None`` (as ``"G.path"``), or None. It updates its running
    statistics with the cumulative factor ``1 / num_batches_tracked``, a host float read from a device
    counter every step: torch.compile fails on it with a multi-line data-dependent-guard error and a CUDA
    graph would freeze it, so compiled and graphed steps cannot run it."""
    for net_name, net in (("G", G), ("D", D)):
        for name, m in net.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.momentum is None and m.track_running_stats:
                return f"{net_name}.{name}" if name else net_name
    return None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _is_conv_stride_assert(e: BaseException) -> bool:
    """Inductor's runtime check that a fallback kernel returned the strides FakeTensor predicted."""
    msg = str(e)
    return "stride" in msg and "expected size" in msg and "convolution_backward" in msg


@torch.no_grad()
def _check_models(G: nn.Module, D: nn.Module, z_shape: tuple[int, ...], device: torch.device, batch: int,
                  precision: str = "fp32") -> torch.Size:
    """One eval-mode forward of G and D at the training batch size, layout and autocast (layers such as
    a minibatch-stddev group may need the real batch), so a mismatch is a clear error now, not a trace
    later. Eval mode leaves BatchNorm running statistics alone and the forked RNG leaves the global one
    alone, so a seeded run is the same with or without this check. Out-of-memory errors propagate as
    they are."""
    if _ends_in_sigmoid(D):
        raise ConfigError("D ends in nn.Sigmoid, but fastgan's losses take raw scores (logits); remove the final "
                          "Sigmoid (loss='nonsat' is BCEWithLogits, the stable form of Sigmoid + BCELoss)")
    was = G.training, D.training
    G.eval()
    D.eval()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    rng = (torch.random.fork_rng(devices=[]) if device.type == "cpu" else
           torch.random.fork_rng(devices=[device.index or 0], device_type=device.type))
    try:
        with rng, autocast, _one_value_batch_norms(G, D, batch) as lonely:
            try:
                shape = _probe(G, D, z_shape, device, batch)
            except ConfigError:
                if not lonely:               # (a BatchNorm without running stats raises in the probe itself)
                    raise
        if lonely:
            raise ConfigError(f"batch_size {batch} gives {lonely[0]}, a BatchNorm, one value per channel, which it "
                              "cannot train on; use a larger batch")
        return shape
    finally:
        G.train(was[0])
        D.train(was[1])


@contextlib.contextmanager
def _one_value_batch_norms(G: nn.Module, D: nn.Module, batch: int):
    """Yields a list that the probe fills with the BatchNorms that see one value per channel (N·H·W == 1: a
    training BatchNorm raises on it). Only at batch 1, the one size where that can happen."""
    found: list[str] = []
    hooks = []
    if batch == 1:
        for net_name, net in (("G", G), ("D", D)):
            for name, m in net.named_modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    label = f"{net_name}.{name}" if name else net_name

                    def pre(mod, args, kwargs, label=label):
                        x = args[0] if args else kwargs.get("input")
                        if isinstance(x, torch.Tensor) and x.dim() >= 2 and x.numel() // max(1, x.shape[1]) <= 1:
                            found.append(label)
                    hooks.append(m.register_forward_pre_hook(pre, with_kwargs=True))
    try:
        yield found
    finally:
        for h in hooks:
            h.remove()


def _load_optimizer_state(opt: torch.optim.Optimizer, saved: dict) -> None:
    """``opt.load_state_dict(saved)`` keeping this optimizer's own implementation flags: torch copies the saved
    param groups' ``fused`` / ``foreach`` / ``capturable`` over the live ones, so a state saved on a CPU run
    would turn a graphs-mode Adam non-capturable. A fused or capturable Adam wants its ``step`` as a float32
    tensor on the parameter's device."""
    keys = ("fused", "foreach", "capturable", "differentiable")
    flags = [{k: g[k] for k in keys if k in g} for g in opt.param_groups]
    opt.load_state_dict(saved)
    for g, f in zip(opt.param_groups, flags):
        g.update(f)
        if g.get("fused") or g.get("capturable"):
            for p in g["params"]:
                st = opt.state.get(p)
                if st and torch.is_tensor(st.get("step")):
                    st["step"] = st["step"].to(device=p.device, dtype=torch.float32)


def _probe(G: nn.Module, D: nn.Module, z_shape: tuple[int, ...], device: torch.device, n: int) -> torch.Size:
    """G's image shape (C, H, W) once G and D have run on a batch of ``n``."""
    z = torch.randn(n, *z_shape, device=device)
    try:
        fake = G(z)
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as e:
        hint = ""
        # The DCGAN tutorial's G wants (N, z, 1, 1), an MLP G (N, z): say so only if that is the fix.
        other = ((z_shape[0], 1, 1) if len(z_shape) == 1 else
                 (z_shape[0],) if len(z_shape) == 3 and tuple(z_shape[1:]) == (1, 1) else None)
        if other is not None:
            try:
                G(z.view(n, *other))
                hint = f"; it runs with z_dim={other if len(other) > 1 else other[0]}" + \
                    (", the DCGAN tutorial's latent shape" if len(other) > 1 else "")
            except Exception:
                pass
        raise ConfigError(f"G failed on latents of shape {tuple(z.shape)}: {_first_line(e)}{hint}") from e
    if not isinstance(fake, torch.Tensor) or fake.dim() < 2 or fake.shape[0] != n:
        raise ConfigError(f"G must return a batch of images (N, C, H, W); for {n} latents it returned "
                          f"{tuple(fake.shape) if isinstance(fake, torch.Tensor) else type(fake).__name__}")
    try:
        out = D(fake)
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as e:
        raise ConfigError(f"D failed on G's output of shape {tuple(fake.shape)}: {_first_line(e)}") from e
    if not isinstance(out, torch.Tensor) or out.numel() != n:
        raise ConfigError(f"D must return one score per image, (N,) or (N, 1); for {n} images it returned "
                          f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
    return fake.shape[1:]


def _full_batches(it: Iterable, batch_size: int, image_shape: tuple[int, ...] | None = None):
    """Cycle over an iterable of batches (or (images, labels) pairs) forever, yielding only
    batches of exactly ``batch_size`` images."""
    bs = getattr(it, "batch_size", None)
    if isinstance(it, torch.utils.data.DataLoader) and isinstance(bs, int) and bs != batch_size:
        # told before an epoch is read to find that no batch fits
        raise ConfigError(f"the DataLoader makes batches of {bs}, the Trainer's batch_size is {batch_size}; "
                          "make them the same")
    passes = 0
    while True:
        seen = full = 0
        for b in it:
            x = b[0] if isinstance(b, (tuple, list)) else b
            seen += 1
            if not isinstance(x, torch.Tensor):
                raise ConfigError(f"batches must be image tensors (N, C, H, W) or (images, labels) pairs; got "
                                  f"{type(x).__name__}")
            if image_shape is not None and tuple(x.shape) == tuple(image_shape):
                raise ConfigError(f"the data yields single images of shape {tuple(x.shape)}, not batches; pass a "
                                  "tensor of images, an ImageDataset, or a DataLoader with "
                                  f"batch_size={batch_size}")
            if x.shape[0] == batch_size:
                full += 1
                yield x
        passes += 1
        if seen == 0:
            raise ConfigError("the data iterable is empty; pass a dataset with at least one batch" if passes == 1 else
                              "the data iterable ran out (a one-shot generator or iterator?); pass something that can "
                              "be iterated again, such as a list or a DataLoader")
        if full == 0:
            raise ConfigError(f"no batch of {batch_size} images in the data iterable; make its batches "
                              f"match batch_size={batch_size}")
