"""The variant registry: a ``GanSpec`` bundles the task (the family's GAN maths), its architecture, objective,
optimizers and step recipe under a name.

Register with the ``@register`` decorator on a function returning a ``GanSpec`` (timm's ``@register_model``);
look up with :func:`get_variant`, list with :func:`list_variants` (glob patterns such as ``"wgan*"``);
``fastgan.create(name)`` builds a Trainer from one.
"""
from __future__ import annotations

import dataclasses
import fnmatch
from typing import Callable

from fastgan.errors import ConfigError
from fastgan.tasks.terms import Objective


@dataclasses.dataclass(frozen=True)
class OptimSpec:
    """The optimizers of G and D: one kind, a learning rate each, shared betas."""
    name: str = "adam"                    # "adam" | "rmsprop"
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)


@dataclasses.dataclass(frozen=True)
class GanSpec:
    name: str
    description: str
    family: str                           # key of fastgan.models.FAMILIES
    objective: Objective
    optim: OptimSpec = OptimSpec()
    n_critic: int = 1                     # D steps per G step
    clip: float | None = None             # WGAN weight clipping of D's parameters
    model: dict = dataclasses.field(default_factory=dict)   # family Config overrides
    debug: dict = dataclasses.field(default_factory=lambda: {"width": 8})  # CPU-sized flavour
    paper: str = ""
    task: str = "gan"                     # key of fastgan.tasks.TASKS: the family's GAN maths
    options: dict = dataclasses.field(default_factory=dict)  # the task's own options (loss weights, ...)

    @property
    def conditional(self) -> bool:
        """Whether it trains on labels (and samples per class)."""
        from fastgan.tasks import TASKS

        return TASKS[self.task].conditional

    def model_config(self, debug: bool = False, **overrides):
        from fastgan.models import FAMILIES

        kw = {**self.model, **(self.debug if debug else {}), **{k: v for k, v in overrides.items() if v is not None}}
        try:
            return FAMILIES[self.family].Config(**kw)
        except TypeError as e:   # an option this family's Config does not have
            raise ConfigError(f"variant {self.name!r} cannot take {e}".replace("__init__() ", "")) from None

    def build(self, debug: bool = False, **overrides):
        """Return (G, D, model_config) for this variant (the task may add networks: see :meth:`make_task`)."""
        from fastgan.models import FAMILIES

        cfg = self.model_config(debug, **overrides)
        fam = FAMILIES[self.family]
        return fam.Generator(cfg), fam.Discriminator(cfg), cfg

    def make_task(self, cfg=None, *, debug: bool = False, nets: dict | None = None, lr_g: float | None = None,
                  lr_d: float | None = None, z_shape=None, **overrides):
        """Return (task, model_config): the variant's networks (built from ``cfg``, or the model config of
        ``debug`` and ``overrides``; ``nets`` replaces them, e.g. a user's own fused G and D, whose latent
        shape ``z_shape`` may differ from the config's ``(z_dim,)``) under its task."""
        from fastgan.tasks import TASKS

        cfg = cfg if cfg is not None else self.model_config(debug, **overrides)
        return TASKS[self.task].from_spec(self, cfg, nets=nets, lr_g=lr_g, lr_d=lr_d, z_dim=z_shape), cfg


_REGISTRY: dict[str, Callable[[], GanSpec]] = {}


def register(fn: Callable[[], GanSpec]) -> Callable[[], GanSpec]:
    spec = fn()
    if spec.name in _REGISTRY:
        raise ValueError(f"variant {spec.name!r} registered twice")
    _REGISTRY[spec.name] = fn
    return fn


def get_variant(name: str) -> GanSpec:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown variant {name!r}; run `fastgan variants` to list them ({', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name]()


def list_variants(pattern: str = "*") -> list[GanSpec]:
    return [_REGISTRY[n]() for n in sorted(_REGISTRY) if fnmatch.fnmatch(n, pattern)]


_LOSS_NAMES = {"nonsat": "non-saturating", "minimax": "minimax", "hinge": "hinge", "lsgan": "least squares",
               "wasserstein": "Wasserstein"}
_TASK_TERMS = {"acgan": " + class CE", "infogan": " + MI"}   # a task's own term beside the adversarial loss


def table_rows(specs: list[GanSpec]) -> list[tuple[str, ...]]:
    """(name, family, loss, penalty, n_critic, notes) per spec, from the registry alone: the rows of
    ``fastgan variants`` and of the README's variant table (``fastgan variants --markdown``)."""
    rows = []
    for s in specs:
        o = s.objective
        loss = _LOSS_NAMES.get(o.loss, o.loss) + _TASK_TERMS.get(s.model.get("d_kind") or s.task, "")
        if o.penalty:
            pen = ("R1 γ" if o.penalty == "r1" else "WGAN-GP λ") + f"={o.penalty_weight:g}"
            pen += f", lazy every {o.penalty_every}" if o.penalty_every > 1 else ""
        else:
            pen = f"weight clipping {s.clip:g}" if s.clip else "–"
        notes = s.description + (f"; {s.paper}" if s.paper else "")
        rows.append((s.name, s.family, loss, pen, str(s.n_critic), notes))
    return rows


def markdown_table(specs: list[GanSpec] | None = None) -> str:
    """The README's variant table, generated from the registry."""
    rows = table_rows(list_variants() if specs is None else specs)
    lines = ["| name | family | loss | penalty | n_critic | notes |", "|---|---|---|---|---|---|"]
    lines += [f"| `{r[0]}` | " + " | ".join(r[1:]) + " |" for r in rows]
    return "\n".join(lines) + "\n"
