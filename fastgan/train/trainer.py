"""``fastgan.Trainer``: train any task — a user's own G/D pair or a registered variant — with fastgan's engine.

>>> trainer = fastgan.Trainer(G, D, loss="nonsat", batch_size=64)            # G(z), D(x)
>>> trainer = fastgan.Trainer(G, D, num_classes=10, batch_size=64)           # G(z, labels), D(x, labels)
>>> trainer = fastgan.create("acgan", resolution=32, channels=1)             # a registered variant
>>> trainer.fit(fastgan.data.load_dataset("mnist5k"), steps=1000)
>>> images = trainer.sample(16)                                              # labels=... for conditional runs

``G`` must map latents ``(N, z_dim)`` (and labels ``(N,)`` for a conditional pair) to images and expose
``z_dim`` (or pass ``z_dim=``); a tuple ``z_dim=(100, 1, 1)`` draws latents of shape ``(N, 100, 1, 1)``, as the
DCGAN tutorial's generator wants; ``D`` must map images (and labels) to logits ``(N,)`` or ``(N, 1)``.
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
from fastgan.tasks.base import OptimizerSpec, Task
from fastgan.tasks.terms import Objective
from fastgan.train.distributed import SINGLE, DistContext, sync_batch_norms
from fastgan.train.step import (COMPILE_MODES, CUDAGRAPH_COMPILE_MODES, Engine, StatsAccumulator, make_optimizer,
                                penalty_compile_supported)


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device {str(device)!r}; pass auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {str(device)!r} requested but no CUDA device is available; pass --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                          f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
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


def _positive_int(v, name: str) -> int:
    out = None
    if not isinstance(v, bool) and not (isinstance(v, torch.Tensor) and v.dtype == torch.bool):
        try:
            out = operator.index(v)           # ints, numpy ints, 0-d integer tensors
        except TypeError:
            pass
    if out is None or out < 1:
        raise ConfigError(f"{name} must be a positive integer (got {v!r})")
    return out


def _positive_float(v, name: str) -> float:
    ok = not isinstance(v, bool) and (isinstance(v, numbers.Real) or (isinstance(v, torch.Tensor) and v.numel() == 1))
    if not ok or not float(v) > 0:
        raise ConfigError(f"{name} must be a positive number (got {v!r})")
    return float(v)      # plain floats in the optimizers (and in save()'s state)


def task_for_pair(G: nn.Module, D: nn.Module, *, num_classes: int = 0, loss: str | Objective = "nonsat",
                  penalty: str | None = None, penalty_weight: float = 0.0, penalty_every: int = 1, n_critic: int = 1,
                  clip: float | None = None, optimizer: str = "adam", lr_g: float = 2e-4, lr_d: float = 2e-4,
                  betas: tuple[float, float] = (0.5, 0.999), z_dim=None) -> Task:
    """The task for a user's own pair: unconditional G(z)/D(x), or with ``num_classes`` G(z, labels)/D(x, labels)."""
    for name, net in (("G", G), ("D", D)):
        if not isinstance(net, nn.Module):
            got = f"the class {net.__name__}" if isinstance(net, type) else type(net).__name__
            raise ConfigError(f"{name} must be a torch.nn.Module instance (got {got}); pass e.g. {name}=MyNet()")
    lr_g, lr_d = _positive_float(lr_g, "lr_g"), _positive_float(lr_d, "lr_d")
    if not isinstance(loss, Objective) and penalty is not None and not penalty_weight > 0:
        raise ConfigError(f"penalty {penalty!r} needs penalty_weight > 0 (got {penalty_weight}); e.g. 10 for "
                          "WGAN-GP's lambda, or leave penalty unset")
    objective = loss if isinstance(loss, Objective) else Objective(loss, penalty, penalty_weight, penalty_every)
    if optimizer not in ("adam", "rmsprop"):
        raise ConfigError(f"unknown optimizer {optimizer!r}; choose adam or rmsprop")
    opt_g, opt_d = OptimizerSpec(optimizer, lr_g, tuple(betas)), OptimizerSpec(optimizer, lr_d, tuple(betas))
    if num_classes:
        from fastgan.tasks.conditional import ConditionalTask

        return ConditionalTask(G, D, objective, num_classes=_positive_int(num_classes, "num_classes"), kind="joint",
                               z_dim=z_dim, n_critic=n_critic, clip=clip, optim_G=opt_g, optim_D=opt_d)
    from fastgan.tasks.unconditional import GanTask

    return GanTask(G, D, objective, z_dim=z_dim, n_critic=n_critic, clip=clip, optim_G=opt_g, optim_D=opt_d)


TRAINER_STATE_FORMAT = "fastgan-trainer-state-2"


class Trainer:
    """Owns the task's networks, their optimizers and EMA copies, and the engine. :meth:`save` / :meth:`load`
    checkpoint and resume a run exactly.

    Give either ``G, D`` (with the pair's options: ``loss``, ``penalty``, ``num_classes``...) or ``task=``.
    ``distributed`` (a :class:`~fastgan.train.distributed.DistContext`, ``from_env()`` under torchrun) makes it one
    rank of a data-parallel run: ``batch_size`` is then the global batch, split over the ranks."""

    def __init__(self, G: nn.Module | None = None, D: nn.Module | None = None, *, task: Task | None = None,
                 num_classes: int = 0, loss: str | Objective = "nonsat", penalty: str | None = None,
                 penalty_weight: float = 0.0, penalty_every: int = 1, n_critic: int = 1, clip: float | None = None,
                 optimizer: str = "adam", lr_g: float = 2e-4, lr_d: float = 2e-4,
                 betas: tuple[float, float] = (0.5, 0.999), batch_size: int = 64,
                 z_dim: int | tuple[int, ...] | None = None, device: str | torch.device | None = None,
                 mode: str = "auto", precision: str = "auto", ema_kimg: float = 10.0,
                 ema_rampup: float | None = 0.05, seed: int | None = None, channels_last: bool | None = None,
                 compile_mode: str = "default", compile_penalty: bool | None = None,
                 distributed: DistContext | None = None):
        batch_size = _positive_int(batch_size, "batch_size")
        self.dist = distributed or SINGLE
        self.local_batch = self.dist.local_batch(batch_size)     # batch_size is the global batch
        if task is None:
            if G is None or D is None:
                raise ConfigError("give the networks, fastgan.Trainer(G, D, ...), or a task, fastgan.Trainer(task=...); "
                                  "fastgan.create('dcgan') builds a registered variant")
            task = task_for_pair(G, D, num_classes=num_classes, loss=loss, penalty=penalty,
                                 penalty_weight=penalty_weight, penalty_every=penalty_every, n_critic=n_critic,
                                 clip=clip, optimizer=optimizer, lr_g=lr_g, lr_d=lr_d, betas=betas, z_dim=z_dim)
        elif G is not None or D is not None:
            raise ConfigError("give either the networks G, D or task=, not both")
        if seed is not None:
            torch.manual_seed(seed)
        task.validate()                   # a schedule naming unknown networks is the task author's one-line error
        self.task = task
        if self.dist.enabled and torch.cuda.is_available() and device in (None, "auto", "cuda"):
            device = f"cuda:{self.dist.local_rank}"                 # one GPU per rank
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.mode, self.mode_reason = resolve_mode(mode, self.device)
        self.compile_mode = self._check_compile_mode(compile_mode, compile_penalty)
        self.precision = resolve_precision(precision, self.device)
        specs = task.optimizers()
        trained = task.trained()
        if self.precision == "fp16" and self.mode == "graphs" and any(specs[n].name != "adam" for n in trained):
            # GradScaler.step reads the inf flag on the host for a non-fused optimizer: not capturable.
            other = next(specs[n].name for n in trained if specs[n].name != "adam")
            if mode != "auto":
                raise ConfigError(f"fp16 with optimizer {other!r} cannot run in graphs mode (its loss scaler reads "
                                  "the inf flag on the host every step); use mode='compile' or precision='bf16'")
            self.mode = "eager" if self.compile_mode == "none" else "compile"   # 'none' asked for no torch.compile
            if self.compile_mode == "none":
                self.compile_mode = "default"
            self.mode_reason = (f"auto: {self.mode} on cuda, not graphs: fp16 with {other} syncs the host in its "
                                "loss scaler")
        bad = _cumulative_batch_norm(task.nets) if self.mode != "eager" else None
        if bad is not None:
            why = (f"{bad} is a BatchNorm with momentum=None (a cumulative average, whose per-step factor is read "
                   f"on the host)")
            if mode != "auto" or compile_mode != "default":
                raise ConfigError(f"{why}, which {self.mode} steps cannot trace; give it a momentum (e.g. 0.1) or use "
                                  "mode='eager'")
            self.mode, self.mode_reason = "eager", f"auto: eager, not {self.mode}: {why}"
        # channels_last by default for eager steps on CUDA (cuDNN's fast layout for bf16 convs; every fused
        # kernel is stride-aware). Compiled and graphed steps get NCHW and leave the layout to Inductor: on
        # torch 2.11 FakeTensor predicts the wrong strides for cuDNN's convolution_backward where a
        # channels_last tensor meets an ambiguous one, shaped (N, C, 1, 1), and the compiled step dies on
        # Inductor's stride assert (benches/diag/conv_layout.py). Graphs of eager phases (compile_mode='none')
        # involve no Inductor and keep channels_last. Either way every network is put in that layout.
        default_cl = self.device.type == "cuda" and (self.mode == "eager" or self.compile_mode == "none")
        self.channels_last = default_cl if channels_last is None else bool(channels_last)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        if self.dist.enabled and self.device.type == "cuda":       # BatchNorm statistics over the global batch
            for n in list(task.nets):
                task.nets[n] = sync_batch_norms(task.nets[n])
        for net in task.nets.values():
            net.to(self.device).train()
            net.to(memory_format=fmt)
        if self.dist.enabled:                                       # every rank starts from rank 0's weights
            self.dist.broadcast_modules(task.nets.values())
        self.image_shape = _probe_task(task, self.device, self.local_batch, self.precision)
        self.optimizers = self._make_optimizers(specs)
        self.engine = Engine(task, self.optimizers, batch=self.local_batch, device=self.device,
                             precision=self.precision, ema_kimg=ema_kimg, ema_rampup=ema_rampup, mode=self.mode,
                             compile_mode=self.compile_mode, compile_penalty=compile_penalty, dist=self.dist)
        self.stats = StatsAccumulator()
        self._fit_stats: StatsAccumulator | None = None    # fit()'s own, so a callback's stats.read() cannot empty it
        self._data = None                 # (data object, seed, batch iterator): fit() continues the same stream
        self.batches_drawn = 0            # real batches fit() has taken from its stream (saved by save())
        self._resume_batches = 0          # load(): where fit()'s next stream starts
        self._stepped = False
        self._checked_real = False
        self._pixels_checked = False
        self._labels_checked = False      # a dataset's labels were checked whole: batches need no check
        # real batches in the first network's parameter dtype (fp32 normally; autocast takes it from there)
        self._real_dtype = next((p.dtype for net in task.nets.values() for p in net.parameters()
                                 if p.is_floating_point()), torch.float32)
        self.steps_done = 0

    def _check_compile_mode(self, compile_mode: str, compile_penalty: bool | None) -> str:
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
        if compile_penalty and not penalty_compile_supported():
            raise ConfigError(f"compile_penalty=True needs torch._dynamo.config.trace_autograd_ops, which torch "
                              f"{torch.__version__} lacks; leave compile_penalty unset (the penalty then runs eagerly)")
        return compile_mode

    def _make_optimizers(self, specs: dict[str, OptimizerSpec]) -> dict[str, torch.optim.Optimizer]:
        """One optimizer per trained network. A network trained by an update with a lazy term (every k) gets
        its lr and betas rescaled by c = k / (k + 1) to keep the effective schedule (StyleGAN2)."""
        lazy: dict[str, int] = {}
        for u in self.task.updates():
            for n in u.nets:
                lazy[n] = max(lazy.get(n, 1), u.lazy_every)
        out = {}
        for n in self.task.trained():
            spec = specs[n]
            c = lazy[n] / (lazy[n] + 1) if lazy[n] > 1 else 1.0
            lr, betas = (spec.lr * c, (spec.betas[0] ** c, spec.betas[1] ** c)) if c != 1.0 else (spec.lr, spec.betas)
            out[n] = make_optimizer(spec.name, self.task.nets[n].parameters(), lr, betas, self.device,
                                    capturable=self.mode == "graphs")
        return out

    # -- the task's networks, by their usual names ---------------------------------------------
    @property
    def nets(self) -> dict[str, nn.Module]:
        return self.task.nets

    @property
    def ema(self) -> dict[str, nn.Module]:
        return self.engine.ema

    @property
    def G(self) -> nn.Module:
        return self.task.nets[self.task.generator]

    @property
    def D(self) -> nn.Module:
        return self.task.nets["D"]

    @property
    def G_ema(self) -> nn.Module:
        return self.engine.ema[self.task.generator]

    @property
    def opt_G(self) -> torch.optim.Optimizer:
        return self.optimizers["G"]

    @property
    def opt_D(self) -> torch.optim.Optimizer:
        return self.optimizers["D"]

    @property
    def objective(self) -> Objective | None:
        return getattr(self.task, "objective", None)

    @property
    def z_shape(self) -> tuple[int, ...]:
        return self.task.z_shape

    @property
    def z_dim(self) -> int:
        return self.task.z_shape[0]

    @property
    def num_classes(self) -> int:
        return self.task.num_classes

    @property
    def nimg(self) -> int:
        return self.engine.nimg

    def _sync_mode(self) -> None:
        """Reflect an engine fallback (e.g. a failed graph capture) in mode / mode_reason."""
        if self.engine.mode != self.mode:
            self.mode = self.engine.mode
            self.mode_reason = f"fallback: {self.engine.fallback_reason}"

    def step(self, next_batch: Callable[[], dict | torch.Tensor]) -> None:
        """One iteration of the task's schedule; ``next_batch()`` returns a real batch on the device (a dict of
        named fields from :meth:`prepare`, or an image tensor)."""
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
        """Train for ``steps`` iterations on an ImageDataset, a tensor of images, or an iterable of batches
        (image tensors, ``(images, labels)`` pairs or dicts of named fields).

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
            self.check_dataset(data)
            loader = InfiniteLoader(data, self.batch_size, self.device, seed=seed, skip=skip,
                                    shard=(self.dist.rank, self.dist.world))
            return (self.prepare(b) for b in loader)
        # Batches of another size (a last partial batch) are dropped: shapes never change, so a
        # compiled step does not recompile and a captured graph is never re-recorded.
        full = _full_batches(data, self.local_batch, self.image_shape)   # a rank's own batches in data-parallel runs
        for _ in range(skip):            # an iterable cannot seek: resuming reads past the batches already used
            next(full)
        return (self.prepare(b) for b in full)

    def check_dataset(self, dataset) -> None:
        """A dataset the task can train on: labels present (and in range) where the task reads them."""
        if "labels" not in self.task.batch_fields:
            return
        if dataset.labels is None:
            raise ConfigError(f"this run is conditional ({self.task.num_classes} classes) but dataset "
                              f"{dataset.name!r} has no labels; use a labelled dataset (mnist5k, digits, folder:PATH "
                              "with one subfolder per class, npz:PATH with a `labels` array)")
        self.task.check_batch({"labels": dataset.labels})
        self._labels_checked = True

    def prepare(self, raw) -> dict[str, torch.Tensor]:
        """A real batch as the step takes it: named fields (a tensor is ``images``; an ``(images, labels)``
        tuple is named in that order; a dict keeps its names), only those the task reads, on the device, images
        in fp32 and the models' layout (a batch in the other layout would recompile a compiled step, and
        channels_last data into NCHW models trips torch 2.11's conv-backward stride bug). The first batch is
        checked against G's images (shape, dtype, value range) and the task's fields (labels in range)."""
        b = _named(raw)
        missing = [k for k in self.task.batch_fields if b.get(k) is None]
        if missing:
            if missing == ["labels"]:
                raise ConfigError(f"this run is conditional ({self.task.num_classes} classes) but its batches carry "
                                  "no labels; give (images, labels) batches or a labelled dataset")
            raise ConfigError(f"the batches lack the fields {missing} this task reads (it reads "
                              f"{list(self.task.batch_fields)}); give dict batches with those keys")
        if not self._checked_real:
            self._check_real(b)
        elif "labels" in self.task.batch_fields and not self._labels_checked and b["labels"].device.type == "cpu":
            self.task.check_batch(b)          # host labels are checked on every batch (no device sync)
        out = {}
        for k in self.task.batch_fields:
            v = b[k]
            if v.is_floating_point():
                v = v.to(self.device, dtype=self._real_dtype, non_blocking=True)
                if v.dim() == 4:
                    v = v.contiguous(memory_format=torch.channels_last if self.channels_last else
                                     torch.contiguous_format)
            else:
                v = v.to(self.device, non_blocking=True)
            out[k] = v
        return out

    def _prep(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """An image batch as the step takes it (see :meth:`prepare`)."""
        return self.prepare(x)

    def _check_real(self, b: dict) -> None:
        x = b.get("images", next(iter(b.values())))
        if not isinstance(x, torch.Tensor):
            raise ConfigError(f"a real batch must be an image tensor (N, C, H, W) or an (images, labels) pair; got "
                              f"{type(x).__name__}")
        if x.shape[1:].numel() != self.image_shape.numel():   # (N, 1, 4, 4) reals for an MLP G making (N, 16) is fine
            raise ConfigError(f"real batches have images of shape {tuple(x.shape[1:])} but G makes "
                              f"{tuple(self.image_shape)}; resize the data or build G for that shape")
        if not self._pixels_checked:
            _check_pixels(x, "the real batch")
        if "labels" in self.task.batch_fields:
            self.task.check_batch(b)
        self._checked_real = True

    # -- training state --------------------------------------------------------------------
    def training_state(self) -> dict:
        """Everything that continues this run exactly, as one dict of tensors and plain values: every network and
        EMA copy (``nets``, ``ema``), the optimizers (``optimizers``), the engine's counters and loss scalers
        (``engine``), ``steps_done``, fit()'s position in its data stream (``batches_drawn``), ``batch_size``
        and the torch RNG states. :meth:`save` writes it to one file; a run folder's checkpoints split it."""
        return {"format": TRAINER_STATE_FORMAT,
                "nets": {n: m.state_dict() for n, m in self.task.nets.items()},
                "ema": {n: m.state_dict() for n, m in self.engine.ema.items()},
                "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
                "engine": self.engine.state_dict(), "steps_done": self.steps_done,
                "batches_drawn": self.batches_drawn, "batch_size": self.batch_size,
                "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None}

    def restore(self, state: dict, source: str = "the state") -> "Trainer":
        """Load a :meth:`training_state` dict into this Trainer (built with the same models and arguments) before
        its first step: compiled and captured steps are built on the parameter and optimizer-state tensors they
        first see. A state that does not fit is a one-line CheckpointError naming ``source``."""
        if self._stepped:
            raise ConfigError("load() must come before the first step (this Trainer has already trained); build a "
                              "new Trainer with the same arguments and load into it")
        if isinstance(state, dict) and state.get("format") == "fastgan-trainer-state-1":
            state = _from_format_1(state)
        if not isinstance(state, dict) or state.get("format") != TRAINER_STATE_FORMAT:
            raise CheckpointError(f"{source} is not a Trainer.save() file (no '{TRAINER_STATE_FORMAT}' format); "
                                  "a `fastgan train` checkpoint loads with fastgan.train.checkpoint.load_checkpoint")
        if state.get("batch_size") != self.batch_size:
            raise ConfigError(f"the saved run used batch_size {state.get('batch_size')}, this Trainer "
                              f"{self.batch_size}; build it with the same arguments")
        try:
            for group, mods in (("nets", self.task.nets), ("ema", self.engine.ema)):
                if set(state[group]) != set(mods):
                    raise KeyError(f"saved {group} {sorted(state[group])}, these {sorted(mods)}")
                for n, m in mods.items():
                    m.load_state_dict(state[group][n])
            if set(state["optimizers"]) != set(self.optimizers):
                raise KeyError(f"saved optimizers {sorted(state['optimizers'])}, these {sorted(self.optimizers)}")
            for n, opt in self.optimizers.items():
                _load_optimizer_state(opt, state["optimizers"][n])
            self.engine.load_state_dict(state["engine"])
            self.steps_done = int(state["steps_done"])
            self._resume_batches = self.batches_drawn = int(state["batches_drawn"])
            torch.set_rng_state(state["rng_cpu"].cpu())
            if self.device.type == "cuda" and state.get("rng_cuda") is not None:
                torch.cuda.set_rng_state(state["rng_cuda"].cpu(), self.device)
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
            raise CheckpointError(f"{source} does not fit these models or optimizers ({_first_line(e)}); build the "
                                  "Trainer as the saved run was built") from None
        self._data = None
        return self

    def save(self, path) -> None:
        """Write :meth:`training_state` to ``path`` atomically (a crash leaves the previous file whole). Resume with
        a Trainer built with the same arguments, then :meth:`load` before its first step."""
        from fastgan.train.checkpoint import atomic_write

        state = self.training_state()
        atomic_write(Path(path), lambda tmp: torch.save(state, tmp))

    def load(self, path) -> "Trainer":
        """Restore a :meth:`save`d state into this Trainer (built with the same models and arguments), before its
        first step; fit() then continues the saved data stream when given the same data and seed."""
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
        return self.restore(state, source=f"trainer state {str(path)!r}")

    def sample(self, n: int = 64, *, seed: int = 0, ema: bool = True, **conditions) -> torch.Tensor:
        """``n`` images in [-1, 1] from fixed noise (does not disturb the global RNG); conditional runs take
        ``labels=`` (an int for all, or one per image)."""
        from fastgan.train.sampling import sample_images

        return sample_images(self.task, self.G_ema if ema else self.G, _positive_int(n, "n"), seed=seed,
                             device=self.device, **conditions)

    def generate(self, n: int, *, seed: int = 0, batch_size: int = 250, ema: bool = True) -> torch.Tensor:
        """``n`` images (CPU, in [-1, 1]) for evaluation from seeded noise; a conditional run's labels are
        uniform over its classes."""
        from fastgan.train.sampling import generate_images

        return generate_images(self.task, self.G_ema if ema else self.G, n, seed=seed, batch_size=batch_size,
                               device=self.device)

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        """Every network's and EMA copy's weights (``G``, ``D``, ..., ``G_ema``)."""
        out = {n: m.state_dict() for n, m in self.task.nets.items()}
        out.update({f"{n}_ema": m.state_dict() for n, m in self.engine.ema.items()})
        return out


def _named(raw) -> dict:
    """A batch as named fields: a tensor is ``images``; a tuple or list ``(images, labels, ...)``."""
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, (tuple, list)):
        return dict(zip(("images", "labels"), raw))
    return {"images": raw}


def _from_format_1(state: dict) -> dict:
    """A state written by the G/D Trainer (format 1) in this format's layout."""
    return {"format": TRAINER_STATE_FORMAT, "nets": {"G": state["G"], "D": state["D"]}, "ema": {"G": state["G_ema"]},
            "optimizers": {"G": state["opt_G"], "D": state["opt_D"]},
            "engine": {"nimg": state["nimg"], "counts": {"D": state["d_steps"], "G": state["steps_done"]},
                       "scalers": {k[-1]: state[k] for k in ("scaler_D", "scaler_G") if state.get(k) is not None}},
            **{k: state[k] for k in ("steps_done", "batches_drawn", "batch_size", "rng_cpu", "rng_cuda")}}


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


def _cumulative_batch_norm(nets: dict[str, nn.Module]) -> str | None:
    """The first BatchNorm with ``momentum=None`` (as ``"G.path"``), or None. It updates its running
    statistics with the cumulative factor ``1 / num_batches_tracked``, a host float read from a device
    counter every step: torch.compile fails on it with a multi-line data-dependent-guard error and a CUDA
    graph would freeze it, so compiled and graphed steps cannot run it."""
    for net_name, net in nets.items():
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
def _probe_task(task: Task, device: torch.device, batch: int, precision: str = "fp32") -> torch.Size:
    """The task's probe (its networks once on a batch, returning G's image shape) at the training batch size,
    layout and autocast (layers such as a minibatch-stddev group may need the real batch), so a mismatch is
    a clear error now, not a trace later. Eval mode leaves BatchNorm running statistics alone and the forked
    RNG leaves the global one alone, so a seeded run is the same with or without this check. Out-of-memory
    errors propagate as they are."""
    was = {n: m.training for n, m in task.nets.items()}
    for m in task.nets.values():
        m.eval()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    rng = (torch.random.fork_rng(devices=[]) if device.type == "cpu" else
           torch.random.fork_rng(devices=[device.index or 0], device_type=device.type))
    try:
        with rng, autocast, _one_value_batch_norms(task.nets, batch) as lonely:
            try:
                shape = task.probe(batch, device)
            except ConfigError:
                if not lonely:               # (a BatchNorm without running stats raises in the probe itself)
                    raise
        if lonely:
            raise ConfigError(f"batch_size {batch} gives {lonely[0]}, a BatchNorm, one value per channel, which it "
                              "cannot train on; use a larger batch")
        return shape
    finally:
        for n, m in task.nets.items():
            m.train(was[n])


@contextlib.contextmanager
def _one_value_batch_norms(nets: dict[str, nn.Module], batch: int):
    """Yields a list that the probe fills with the BatchNorms that see one value per channel (N·H·W == 1: a
    training BatchNorm raises on it). Only at batch 1, the one size where that can happen."""
    found: list[str] = []
    hooks = []
    if batch == 1:
        for net_name, net in nets.items():
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


_OPTIMIZER_STATE = {torch.optim.Adam: ("step", "exp_avg", "exp_avg_sq"), torch.optim.RMSprop: ("step", "square_avg")}


def _check_optimizer_state(opt: torch.optim.Optimizer) -> None:
    """A KeyError or ValueError unless every parameter's loaded state holds what the optimizer's next step reads,
    each tensor shaped like its parameter (load_state_dict itself checks only the parameter groups)."""
    need = next((keys for kind, keys in _OPTIMIZER_STATE.items() if isinstance(opt, kind)), ())
    for g in opt.param_groups:
        for p in g["params"]:
            st = opt.state.get(p)
            if not st:
                continue
            missing = [k for k in need if k not in st]
            if missing:
                raise KeyError(f"optimizer state without {', '.join(missing)}")
            for k, v in st.items():
                if k != "step" and torch.is_tensor(v) and v.shape != p.shape:
                    raise ValueError(f"optimizer state {k} of shape {tuple(v.shape)} for a parameter of shape "
                                     f"{tuple(p.shape)}")


def _load_optimizer_state(opt: torch.optim.Optimizer, saved: dict) -> None:
    """``opt.load_state_dict(saved)`` keeping this optimizer's own implementation flags: torch copies the saved
    param groups' ``fused`` / ``foreach`` / ``capturable`` over the live ones, so a state saved on a CPU run
    would turn a graphs-mode Adam non-capturable. A fused or capturable Adam wants its ``step`` as a float32
    tensor on the parameter's device."""
    keys = ("fused", "foreach", "capturable", "differentiable")
    flags = [{k: g[k] for k in keys if k in g} for g in opt.param_groups]
    opt.load_state_dict(saved)
    _check_optimizer_state(opt)
    for g, f in zip(opt.param_groups, flags):
        g.update(f)
        if g.get("fused") or g.get("capturable"):
            for p in g["params"]:
                st = opt.state.get(p)
                if st and torch.is_tensor(st.get("step")):
                    st["step"] = st["step"].to(device=p.device, dtype=torch.float32)


def _full_batches(it: Iterable, batch_size: int, image_shape: tuple[int, ...] | None = None):
    """Cycle over an iterable of batches (image tensors, (images, labels) pairs or dicts of named fields)
    forever, yielding only batches of exactly ``batch_size`` images."""
    bs = getattr(it, "batch_size", None)
    if isinstance(it, torch.utils.data.DataLoader) and isinstance(bs, int) and bs != batch_size:
        # told before an epoch is read to find that no batch fits
        raise ConfigError(f"the DataLoader makes batches of {bs}, the Trainer's batch_size is {batch_size}; "
                          "make them the same")
    passes = 0
    while True:
        seen = full = 0
        for b in it:
            x = (b[0] if isinstance(b, (tuple, list)) and b else
                 next(iter(b.values()), None) if isinstance(b, dict) else b)
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
                yield b
        passes += 1
        if seen == 0:
            raise ConfigError("the data iterable is empty; pass a dataset with at least one batch" if passes == 1 else
                              "the data iterable ran out (a one-shot generator or iterator?); pass something that can "
                              "be iterated again, such as a list or a DataLoader")
        if full == 0:
            raise ConfigError(f"no batch of {batch_size} images in the data iterable; make its batches "
                              f"match batch_size={batch_size}")
