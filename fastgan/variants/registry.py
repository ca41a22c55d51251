"""The variant registry: a ``GanSpec`` bundles architecture, objective, optimizers and step recipe.

Register with the ``@register`` decorator on a function returning a ``GanSpec`` (timm's
``@register_model``); look up with :func:`get_variant`, list with :func:`list_variants`
(glob patterns such as ``"wgan*"``).
"""
from __future__ import annotations

import dataclasses
import fnmatch
from typing import Callable

from fastgan.errors import ConfigError
from fastgan.variants.objective import Objective


@dataclasses.dataclass(frozen=True)
class OptimSpec:
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

    def model_config(self, debug: bool = False, **overrides):
        from fastgan.models import FAMILIES

        kw = {**self.model, **(self.debug if debug else {}), **{k: v for k, v in overrides.items() if v is not None}}
        return FAMILIES[self.family].Config(**kw)

    def build(self, debug: bool = False, **overrides):
        """Return (G, D, model_config) for this variant."""
        from fastgan.models import FAMILIES

        cfg = self.model_config(debug, **overrides)
        fam = FAMILIES[self.family]
        return fam.Generator(cfg), fam.Discriminator(cfg), cfg


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
