"""fastgan's Triton kernels (installed as ``fastgan.kernels``).

Every kernel module is imported here, so that the first import of any of them decorates all the
``@triton.jit`` functions at once. Triton decides at decoration time, from ``TRITON_INTERPRET``,
whether a function is compiled for a GPU or run by its interpreter, and the two kinds cannot call
each other: that holds for these kernels and for Triton's own ``@jit`` library functions
(``tl.sum``'s combine function, ``tl.cdiv``, ...), decorated when triton was imported.
``INTERPRETED`` records whether both are interpreted, i.e. whether the kernels can run on CPU
tensors (``fastgan.ops._impl.triton_interpreted`` reads it).
"""
from fastgan.kernels import activations, batch_norm, bias_act, gan_loss, grad_penalty, instance_norm, pixel_norm


def _interpreted(fn) -> bool:
    kind = type(fn)  # triton.runtime.interpreter.InterpretedFunction under TRITON_INTERPRET=1
    return "interpret" in f"{kind.__module__}.{kind.__name__}".lower()


def _library_interpreted() -> bool:
    try:
        import triton.language.standard as std
    except ImportError:  # pragma: no cover - depends on the triton version
        return True
    jitted = [v for v in vars(std).values() if type(v).__name__ in ("JITFunction", "InterpretedFunction")]
    return all(_interpreted(v) for v in jitted)


INTERPRETED: bool = _interpreted(activations.act_fwd) and _library_interpreted()

__all__ = ["activations", "batch_norm", "bias_act", "gan_loss", "grad_penalty", "instance_norm", "pixel_norm",
           "INTERPRETED"]
