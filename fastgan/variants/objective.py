"""``Objective`` lives with the other loss terms in :mod:`fastgan.tasks.terms`; re-exported here."""
from fastgan.tasks.terms import Objective

__all__ = ["Objective"]
