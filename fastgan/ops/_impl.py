"""Process-wide choice of implementation for fused ops: ``auto`` | ``triton`` | ``ref``.

* ``ref``    — the pure-PyTorch reference (always works, any device).
* ``triton`` — the Triton kernels; on CPU tensors this needs ``TRITON_INTERPRET=1``. If Triton
  cannot run, it raises :class:`~fastgan.errors.FastganError` instead of falling back.
* ``auto``   — Triton on CUDA tensors, the reference elsewhere.

The process default comes from ``FASTGAN_IMPL`` in the environment; :func:`use_impl` overrides
it for a block of code; an explicit ``impl=`` argument on an op overrides both.
"""
from __future__ import annotations

import contextlib
import os
import threading

import torch

from fastgan.errors import FastganError

IMPLS = ("auto", "triton", "ref")
_local = threading.local()


def _check(impl: str) -> str:
    if impl not in IMPLS:
        raise FastganError(f"unknown impl {impl!r}; use one of {', '.join(IMPLS)} (argument or FASTGAN_IMPL)")
    return impl


def get_impl() -> str:
    """The implementation selected for this thread: use_impl() if active, else FASTGAN_IMPL, else auto."""
    impl = getattr(_local, "impl", None)
    if impl is None:
        impl = os.environ.get("FASTGAN_IMPL", "auto") or "auto"
    return _check(impl)


@contextlib.contextmanager
def use_impl(impl: str):
    """Select the implementation of every fused op inside the block: ``with use_impl("ref"): ...``."""
    _check(impl)
    prev = getattr(_local, "impl", None)
    _local.impl = impl
    try:
        yield
    finally:
        _local.impl = prev


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _probe_triton() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # pragma: no cover - depends on the install
        return False
    return True


_TRITON_OK: bool | None = None


def triton_available() -> bool:
    """Whether triton imports (probed once; a plain global so torch.compile traces it cleanly)."""
    global _TRITON_OK
    if _TRITON_OK is None:
        _TRITON_OK = _probe_triton()
    return _TRITON_OK


def resolve_impl(impl: str | None, x: torch.Tensor) -> str:
    """Turn ``impl`` (None = process default) into ``"triton"`` or ``"ref"`` for tensor ``x``."""
    impl = _check(impl if impl is not None else get_impl())
    if impl == "ref":
        return "ref"
    on_cuda = x.is_cuda
    usable = triton_available() and (on_cuda or (x.device.type == "cpu" and triton_interpreted()))
    if impl == "auto":
        return "triton" if (usable and on_cuda) else "ref"
    if not triton_available():
        raise FastganError("impl='triton' requested but triton is not importable; install triton or use impl='ref'")
    if not usable:
        raise FastganError(
            f"impl='triton' on a {x.device.type} tensor needs a CUDA device or TRITON_INTERPRET=1 set before "
            "importing triton; use impl='auto' or 'ref' here"
        )
    return "triton"


def upcast(x: torch.Tensor) -> torch.Tensor:
    """fp32 for half/bf16/fp32 inputs, float64 kept (references compute at least in fp32)."""
    return x if x.dtype == torch.float64 else x.float()
