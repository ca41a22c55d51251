"""Training families as tasks: each file holds one family's GAN maths; the engine (fastgan.train) runs them.

``TASKS`` maps the names variants use (``GanSpec.task``) to task classes.
"""
from fastgan.tasks.base import Batch, Forward, Nets, Noise, OptimizerSpec, Task, Term, Update
from fastgan.tasks.terms import Objective
from fastgan.tasks.conditional import ConditionalTask
from fastgan.tasks.infogan import InfoGanTask
from fastgan.tasks.unconditional import GanTask

TASKS: dict[str, type[Task]] = {"gan": GanTask, "conditional": ConditionalTask, "infogan": InfoGanTask}

__all__ = ["Batch", "ConditionalTask", "Forward", "GanTask", "InfoGanTask", "Nets", "Noise", "Objective", "OptimizerSpec", "TASKS", "Task", "Term",
           "Update"]
