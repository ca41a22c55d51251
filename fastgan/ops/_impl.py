"""Process-wide choice of implementation for fused ops: ``auto`` | ``triton`` | ``ref``.

* ``ref``    — the pure-PyTorch reference (always works, any device).
* ``triton`` — the Triton kernels; on CPU tensors this needs ``TRITON_INTERPRET=1`` set before
  triton is imported (see :func:`triton_interpreted`). If Triton cannot run, it raises
  :class:`~fastgan.errors.FastganError` instead of falling back.
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


def _env_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _probe_interpreted() -> bool:
    try:
        from fastgan import kernels
    except Exception:  # pragma: no cover - depends on the install
        return False
    return bool(kernels.INTERPRETED)


_INTERPRETED: bool | None = None


def triton_interpreted() -> bool:
    """Whether fastgan's Triton kernels run in Triton's interpreter (which is what lets CPU tensors
    through them).

    Triton fixes this per function when ``@triton.jit`` runs, from ``TRITON_INTERPRET`` at that
    moment, not when a kernel is called: for its own library functions (``tl.sum``'s combine
    function, ...) when triton is imported, for fastgan's kernels when ``fastgan.kernels`` is first
    imported. This imports the kernels (once) and asks them and triton's library
    (``fastgan.kernels.INTERPRETED``), so the answer is what Triton will actually do even when the
    variable was set or cleared after those imports. Probed once, a plain global (as
    :func:`triton_available`)."""
    global _INTERPRETED
    if _INTERPRETED is None:
        _INTERPRETED = _probe_interpreted()
    return _INTERPRETED


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
    if impl == "auto":
        return "triton" if (on_cuda and triton_available()) else "ref"
    if not triton_available():
        raise FastganError("impl='triton' requested but triton is not importable; install triton or use impl='ref'")
    if on_cuda or (x.device.type == "cpu" and triton_interpreted()):
        return "triton"
    if x.device.type == "cpu" and _env_interpret():
        raise FastganError(
            "impl='triton' on a cpu tensor: TRITON_INTERPRET=1 was set after triton was imported, so the kernels "
            "were built for a GPU; set it before importing triton (in the shell or at the top of the script) "
            "or use impl='auto' or 'ref'"
        )
    raise FastganError(
        f"impl='triton' on a {x.device.type} tensor needs a CUDA device or TRITON_INTERPRET=1 set before "
        "importing triton; use impl='auto' or 'ref' here"
    )


def channel_vector(t: torch.Tensor | None, C: int, x: torch.Tensor, what: str) -> torch.Tensor | None:
    """``t`` checked as a per-channel vector of ``x`` and made contiguous (a copy only when it is
    not): kernels index these as ``W + c``, so a strided weight would be read at the wrong
    elements and a wrong length read (or written) out of bounds. ``what`` names it in errors,
    e.g. ``"batch_norm_act weight"``. Differentiable: the copy of a strided parameter passes its
    gradient back."""
    if t is None:
        return None
    if t.ndim != 1 or t.shape[0] != C:
        raise FastganError(f"{what} has shape {tuple(t.shape)}, expected ({C},): one value per channel of the "
                           f"input of shape {tuple(x.shape)}")
    if not t.is_floating_point():
        raise FastganError(f"{what} has dtype {t.dtype}; it must be a floating-point tensor")
    if t.device != x.device:
        raise FastganError(f"{what} is on {t.device} but the input is on {x.device}; move it to {x.device}")
    return t.contiguous()


def upcast(x: torch.Tensor) -> torch.Tensor:
    """fp32 for half/bf16/fp32 inputs, float64 kept (references compute at least in fp32)."""
    return x if x.dtype == torch.float64 else x.float()


# --------------------------------------------------------------------------------------------
# Eager calls without torch.library's dispatch
# --------------------------------------------------------------------------------------------

_PLAIN = (torch.Tensor, torch.nn.Parameter)
# Bound once: tracing() runs on every eager op call (the attribute lookups were a third of its cost).
# Dynamo recognizes torch.compiler.is_compiling by identity, so the bound name still folds to True there.
_is_compiling = torch.compiler.is_compiling
_dispatch_modes = torch._C._len_torch_dispatch_stack
_functorch_active = torch._C._are_functorch_transforms_active
_jit_tracing_state = torch._C._get_tracing_state
_legacy_batched = torch._C._functorch.is_legacy_batchedtensor


def tracing(*args) -> bool:
    """True when a call must go through the registered op: torch.compile / make_fx / export traces
    (Dynamo, a dispatch mode, fake or functional tensors), torch.jit.trace, and functorch transforms
    (vmap, is_grads_batched, functionalize), whose batched tensors are plain ``torch.Tensor`` to
    Python but have no storage for a kernel to read; the op route has torch's fallbacks for them."""
    if _is_compiling() or _dispatch_modes() > 0 or _functorch_active() or _jit_tracing_state() is not None:
        return True
    for a in args:
        if isinstance(a, torch.Tensor) and (type(a) not in _PLAIN or _legacy_batched(a)):
            return True
    return False


def eager_twin(op, fn, *, backward=None, setup_context=None, name: str | None = None):
    """``op`` (a ``torch.library`` custom op over the launcher ``fn``) as a callable that skips the
    dispatcher in eager mode.

    A custom op costs ~100-200 µs of Python per call in eager mode (schema defaults, redispatch,
    the autograd wrapper); measured on the host with the kernels stubbed, that is most of an op's
    host time, which a GPU sees as latency in a loop that is not CUDA-graphed. So eager calls run
    ``fn`` directly — through an ``autograd.Function`` with the op's own ``setup_context`` and
    ``backward`` when it has a gradient formula — and only traced calls (:func:`tracing`) go
    through ``op``, which is what ``torch.compile`` needs to see. Both routes run the same
    launchers and the same backward code, so they compute the same values (tested).
    """
    if backward is None:
        direct = fn
    else:
        # Classic forward(ctx, ...): with a separate setup_context, Function.apply binds the
        # arguments through inspect.signature on every call.
        def forward(ctx, *args):
            out = fn(*args)
            setup_context(ctx, args, out)
            return out

        direct = type(name or f"{getattr(op, '__name__', 'op')}_eager", (torch.autograd.Function,), {
            "forward": staticmethod(forward), "backward": staticmethod(backward)}).apply

    def call(*args):
        if tracing(*args):
            return op(*args)
        return direct(*args)

    call.op, call.direct = op, direct
    return call


def bump_version(*ts) -> None:
    """Tell autograd that a kernel wrote these tensors in place (as a mutating custom op would)."""
    live = [t for t in ts if t is not None and not t.is_inference()]   # inference tensors have no version
    if live:
        torch.autograd.graph.increment_version(live if len(live) > 1 else live[0])


def cdiv(a: int, b: int) -> int:
    """Ceiling division for launch arithmetic on the host (``triton.cdiv`` is a @jit function,
    ~2 µs a call from Python: ten of them were half of bias_act's host time)."""
    return -(-a // b)


def next_pow2(v: int) -> int:
    """Smallest power of 2 ≥ v (≥ 1), as ``triton.next_power_of_2`` without its call overhead."""
    return 1 << (max(v, 1) - 1).bit_length()


def device_guard(x: torch.Tensor):
    """Make ``x``'s GPU current for a launch (Triton launches on the current device)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()
