"""Architectures, one module per family, each with a nested ``Config`` dataclass."""
from fastgan.models import conditional, dcgan, infogan

FAMILIES = {"dcgan": dcgan, "conditional": conditional, "infogan": infogan}

__all__ = ["conditional", "dcgan", "infogan", "FAMILIES"]
