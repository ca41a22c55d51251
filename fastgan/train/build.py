"""``fastgan.create``: a Trainer for a registered variant — the one builder the CLI, bench and profile use."""
from __future__ import annotations

import torch

from fastgan.errors import ConfigError
from fastgan.train.trainer import Trainer

FLAVORS = ("full", "debug")


def create(variant: str, *, flavor: str = "full", resolution: int | None = None, channels: int | None = None,
           width: int | None = None, z_dim: int | None = None, num_classes: int | None = None,
           lr_g: float | None = None, lr_d: float | None = None, seed: int | None = None, nets: dict | None = None,
           **trainer_kwargs) -> Trainer:
    """A :class:`Trainer` for ``variant`` (see ``fastgan variants``), its networks built at ``resolution`` for
    ``channels``-channel images (and ``num_classes`` classes for a conditional variant; default 10).
    ``flavor="debug"`` is the CPU-sized flavour, which fixes its own width. ``seed`` seeds the global RNG
    before the networks are initialized. Other keyword arguments go to the Trainer (``batch_size``,
    ``device``, ``mode``, ``precision``, ...). The variant's model config is ``trainer.model_config``."""
    from fastgan.variants import get_variant

    spec = get_variant(variant)
    if flavor not in FLAVORS:
        raise ConfigError(f"unknown flavor {flavor!r}; choose one of {', '.join(FLAVORS)}")
    debug = flavor == "debug"
    overrides = {"resolution": resolution, "channels": channels, "width": None if debug else width, "z_dim": z_dim}
    if num_classes is not None:
        if not spec.conditional:
            raise ConfigError(f"variant {variant!r} is unconditional; num_classes applies to conditional variants "
                              "(see `fastgan variants`)")
        overrides["num_classes"] = num_classes
    if seed is not None:
        torch.manual_seed(seed)
    task, cfg = spec.make_task(debug=debug, nets=nets, lr_g=lr_g, lr_d=lr_d, **overrides)
    trainer = Trainer(task=task, **trainer_kwargs)
    trainer.model_config, trainer.variant = cfg, spec
    return trainer
