"""fastgan: a fast GAN training engine for PyTorch.

Public API: :func:`create` (a Trainer for a registered variant), :func:`fuse` (a user's own G/D with fused blocks; ``fuse.explain`` says what it did, ``unfuse`` undoes it), :class:`Trainer`, :func:`fastgan.profile.session`, :mod:`fastgan.ops` (fused functional ops), :mod:`fastgan.nn`
(blocks), :mod:`fastgan.variants` (the registry), :mod:`fastgan.data`, :mod:`fastgan.metrics`.
"""
__version__ = "0.1.0"

from fastgan import ops, profile  # noqa: E402
from fastgan.fusion import fuse, unfuse  # noqa: E402
from fastgan.train.build import create  # noqa: E402
from fastgan.train.trainer import Trainer  # noqa: E402
from fastgan.variants import get_variant, list_variants  # noqa: E402

__all__ = ["Trainer", "create", "fuse", "unfuse", "get_variant", "list_variants", "ops", "profile", "__version__"]
