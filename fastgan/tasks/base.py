"""What a training family declares, as data the engine executes: networks, noise, optimizers, the schedule.

A :class:`Task` holds its networks by name (``G``, ``D`` and any others) and says

- which keep an EMA copy (``ema``), which optimizer each trained network gets (``optimizers``),
- which fields of a real batch it reads (``batch_fields``: ``images``, ``labels``, ``A``, ``B``, ...),
- which random inputs an iteration draws on the device (``noise``: latents, random labels, codes),
- and its iteration as a ``schedule()``: a list of :class:`Forward` stages and :class:`Update` s.

An :class:`Update` trains some networks: each repeat runs its optional ``forward`` stage, then each of its
:class:`Term` s (forward, then backward into the update's networks only; lazy terms run every ``every``-th
repeat), then one optimizer step per trained network and the ``post`` hook. A top-level :class:`Forward`
runs once per iteration and its outputs (fake images shared by the D and G updates, say) join the batch
of every later update — detached for an update that trains none of the networks the forward used.

Why updates of terms, not a flat list of phases (StyleGAN2-ADA's ``accumulate_gradients(phase)``): a
phase there is one backward *and* one optimizer step, so its lazy R1 is a separate D step with its own
Adam update. Grouping terms under the update that steps the optimizer lets a lazy penalty add its
gradient to the D step it rides on (one Adam step, not two; the lr/beta correction still applies) and
states n_critic once, as the update's ``repeats``. Shared forwards are explicit stages so that a fake batch
made once (DCGAN's n_critic = 1) feeds both updates, detached where it must be, without the task
deciding about ``detach`` or ``no_grad``: those follow from which networks each update trains.

Every function here receives ``nets`` (attribute access: ``nets.G``) and ``batch``, a dict of tensors
(real fields of this repeat's batch, the noise drawn so far, the outputs of the forwards so far), and
returns device tensors only: nothing in a task may synchronize the host.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import torch
from torch import nn

from fastgan.errors import ConfigError

Batch = dict[str, torch.Tensor]
TermFn = Callable[["Nets", Batch], "tuple[torch.Tensor, dict[str, torch.Tensor]]"]


class Nets:
    """Networks by name with attribute access (``nets.G``); what every task function receives."""

    def __init__(self, nets: Mapping[str, nn.Module]):
        self.__dict__.update(nets)

    def __getitem__(self, name: str) -> nn.Module:
        return self.__dict__[name]

    def items(self):
        return self.__dict__.items()


@dataclasses.dataclass(frozen=True)
class Noise:
    """A random input drawn on the device for each use: ``normal``, ``categorical`` (integers in
    [0, classes)) or ``uniform`` in [low, high), each of ``shape`` per sample."""
    kind: str
    shape: tuple[int, ...] = ()
    classes: int = 0
    low: float = -1.0
    high: float = 1.0

    def __post_init__(self):
        if self.kind not in ("normal", "categorical", "uniform"):
            raise ConfigError(f"unknown noise kind {self.kind!r}; choose normal, categorical or uniform")
        if self.kind == "categorical" and self.classes < 1:
            raise ConfigError("categorical noise needs classes >= 1")

    def draw(self, n: int, device: torch.device | str, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.kind == "normal":
            return torch.randn(n, *self.shape, device=device, generator=generator)
        if self.kind == "categorical":
            return torch.randint(0, self.classes, (n, *self.shape), device=device, generator=generator)
        return torch.rand(n, *self.shape, device=device, generator=generator) * (self.high - self.low) + self.low


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """One network's optimizer: ``adam`` (fused on CUDA) or ``rmsprop``, with the paper's defaults."""
    name: str = "adam"
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)

    def __post_init__(self):
        if self.name not in ("adam", "rmsprop"):
            raise ConfigError(f"unknown optimizer {self.name!r}; choose adam or rmsprop")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ConfigError(f"learning rates must be positive numbers (got {self.lr!r})")


@dataclasses.dataclass(frozen=True)
class Forward:
    """A forward stage: ``fn(nets, batch) -> {field: tensor}`` adds fields to the batch. ``nets`` names the
    networks it runs (its outputs carry their gradients); ``noise`` the noise fields drawn just before it."""
    name: str
    fn: Callable[[Nets, Batch], Batch]
    nets: tuple[str, ...]
    noise: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Term:
    """A loss term of an update: ``fn(nets, batch) -> (loss, stats)``, backward into the update's networks.

    ``every > 1`` makes it lazy: it runs on the repeats whose count (over the run) is a multiple of
    ``every``, and the update's learning rates and betas are rescaled by ``every / (every + 1)``
    (StyleGAN2's lazy regularization); the term scales its own loss by ``every``.
    ``prepare(batch) -> {field: leaf}`` (gradient penalties) builds the points a penalty differentiates at,
    eagerly, outside any compiled code; ``fn`` then takes ``autograd.grad(create_graph=True)`` and runs in
    fp32 under fp16 training, compiled where Dynamo can trace the double backward; its forward and backward
    share one profiler range, ``name``. ``name`` is also the range of a plain term's forward."""
    name: str
    fn: TermFn
    every: int = 1
    prepare: Callable[[Batch], Batch] | None = None
    backward: str = ""          # the profiler range of its backward (default ``<name>_backward``)
    noise: dict[str, "Noise"] = dataclasses.field(default_factory=dict)   # drawn by the engine before ``prepare``

    def __post_init__(self):
        if self.every < 1:
            raise ConfigError(f"term {self.name!r}: every must be >= 1 (got {self.every})")

    @property
    def backward_name(self) -> str:
        return self.backward or f"{self.name}_backward"


@dataclasses.dataclass(frozen=True)
class Update:
    """Trains ``nets``: ``repeats`` times per iteration (n_critic), each repeat with the next real batch when
    ``data`` is true, running ``forward`` (if any), every due term, one step of each network's optimizer and
    ``post(nets)`` (no grad; weight clipping, say)."""
    name: str
    nets: tuple[str, ...]
    terms: tuple[Term, ...]
    repeats: int = 1
    forward: Forward | None = None
    data: bool = True
    post: Callable[[Nets], None] | None = None

    def __post_init__(self):
        if self.repeats < 1:
            raise ConfigError(f"update {self.name!r}: repeats must be >= 1 (got {self.repeats})")
        if not self.nets:
            raise ConfigError(f"update {self.name!r} trains no network")

    @property
    def lazy_every(self) -> int:
        """The largest lazy interval among its terms (1: none)."""
        return max((t.every for t in self.terms), default=1)


class Task:
    """A training family. Subclasses set ``nets`` (name -> module) in ``__init__`` and implement
    :meth:`schedule`, :meth:`sample_inputs` and, where they read labels, :attr:`batch_fields`."""

    #: networks that keep an exponential moving average copy (sampled from, evaluated)
    ema: tuple[str, ...] = ("G",)
    #: fields of a real batch this task reads, in the order a ``(images, labels)`` tuple gives them
    batch_fields: tuple[str, ...] = ("images",)
    #: the network whose EMA copy ``sample`` uses and whose output shape is the image shape
    generator: str = "G"
    #: whether the family trains on labels (``batch_fields`` has ``labels``; ``sample`` takes ``labels=``)
    conditional: bool = False
    #: class count of a conditional task
    num_classes: int = 0
    paper: str = ""

    nets: dict[str, nn.Module]

    @classmethod
    def from_spec(cls, spec, cfg, *, nets=None, lr_g=None, lr_d=None, z_dim=None) -> "Task":
        """The task of a registered variant (:class:`fastgan.variants.GanSpec`) with model config ``cfg``."""
        raise NotImplementedError

    def optimizers(self) -> dict[str, OptimizerSpec]:
        """Optimizer per trained network (every network some update trains must have one)."""
        raise NotImplementedError

    def noise(self) -> dict[str, Noise]:
        """Random inputs the engine draws on the device, by field name."""
        return {}

    def schedule(self) -> list[Forward | Update]:
        """One training iteration, in order."""
        raise NotImplementedError

    def sample_inputs(self, n: int, generator: torch.Generator, **conditions) -> tuple:
        """The positional inputs of the generator for ``n`` samples (drawn on the CPU from ``generator``);
        ``conditions`` are what ``sample`` was given (``labels=``). A bad condition is a ConfigError."""
        raise NotImplementedError

    def probe(self, batch: int, device: torch.device) -> torch.Size:
        """Run the networks once on a probe batch (eval mode, no grad; the caller forks the RNG) and return
        the image shape (C, H, W) the generator makes; a mismatch is a one-line ConfigError naming the fix."""
        raise NotImplementedError

    def check_batch(self, batch: Batch) -> None:
        """Check one real batch's non-image fields (label range, ...): called on the host, outside steps."""

    # -- derived ------------------------------------------------------------------------------
    def updates(self) -> list[Update]:
        return [s for s in self.schedule() if isinstance(s, Update)]

    def trained(self) -> list[str]:
        """Networks some update trains, in schedule order."""
        out: list[str] = []
        for u in self.updates():
            out += [n for n in u.nets if n not in out]
        return out

    def validate(self) -> None:
        """The schedule refers only to known networks, noise fields and optimizers (a task author's error)."""
        opts, noise = self.optimizers(), self.noise()
        names: set[str] = set()
        for step in self.schedule():
            fwds = [step] if isinstance(step, Forward) else ([step.forward] if step.forward else [])
            for f in fwds:
                bad = [n for n in f.nets if n not in self.nets] + [z for z in f.noise if z not in noise]
                if bad:
                    raise ConfigError(f"forward {f.name!r} names unknown networks or noise {bad}")
            if isinstance(step, Update):
                bad = [n for n in step.nets if n not in self.nets or n not in opts]
                if bad:
                    raise ConfigError(f"update {step.name!r} trains {bad}, which have no network or optimizer")
                if step.name in names:
                    raise ConfigError(f"two updates are named {step.name!r}")
                names.add(step.name)
        bad = [n for n in self.ema if n not in self.nets]
        if bad:
            raise ConfigError(f"EMA networks {bad} are not networks of this task")
