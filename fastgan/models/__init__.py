"""Architectures, one module per family, each with a nested ``Config`` dataclass."""
from fastgan.models import dcgan

FAMILIES = {"dcgan": dcgan}

__all__ = ["dcgan", "FAMILIES"]
