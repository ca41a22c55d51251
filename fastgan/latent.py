"""Latent shapes: ``z_dim`` is an int (latents ``(N, z_dim)``) or a tuple (``(100, 1, 1)`` gives ``(N, 100, 1, 1)``,
the shape the PyTorch DCGAN tutorial's generator takes)."""
from __future__ import annotations

import operator

from fastgan.errors import ConfigError


def latent_shape(z_dim) -> tuple[int, ...]:
    """The per-sample latent shape for ``z_dim``; a clear error for anything that is not one."""
    items = tuple(z_dim) if isinstance(z_dim, (tuple, list)) else (z_dim,)
    try:
        if any(isinstance(v, bool) for v in items):
            raise TypeError
        shape = tuple(operator.index(v) for v in items)   # ints, numpy ints, 0-d integer tensors
    except TypeError:
        shape = ()
    if not shape or min(shape) < 1:
        raise ConfigError(f"z_dim must be a positive int or a tuple of them, such as 100 or (100, 1, 1); got {z_dim!r}")
    return shape
