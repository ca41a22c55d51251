"""Utilization profiler: where a training step's time goes, and how busy the GPU was.

>>> with fastgan.profile.session("prof-out", steps=20, warmup=5) as s:
...     for x in batches:
...         train_step(x)
...         s.step(images=x.shape[0])

:func:`session` wraps any loop; :func:`profile_training` (``fastgan profile``) profiles a
fastgan configuration. Both write ``report.html`` (self-contained), ``report.json`` and a
Perfetto/Chrome ``trace.json``. :class:`NvmlSampler` samples NVML (and Hopper GPM metrics) in a
background thread and reports ``available: False`` with a reason where there is no NVIDIA GPU.
"""
from fastgan.profile.nvml import NvmlSampler
from fastgan.profile.runner import format_summary, profile_training
from fastgan.profile.session import ProfileSession, session

__all__ = ["NvmlSampler", "ProfileSession", "format_summary", "profile_training", "session"]
