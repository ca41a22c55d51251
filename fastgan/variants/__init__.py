"""Registered GAN variants: ``list_variants("wgan*")``, ``get_variant("dcgan")``."""
from fastgan.variants import zoo  # noqa: F401  (registers the variants)
from fastgan.variants.objective import Objective
from fastgan.variants.registry import GanSpec, OptimSpec, get_variant, list_variants, markdown_table, register

__all__ = ["GanSpec", "Objective", "OptimSpec", "get_variant", "list_variants", "markdown_table", "register"]
