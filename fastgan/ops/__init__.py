"""Public functional ops. Each takes ``impl="auto"|"triton"|"ref"``; see :mod:`fastgan.ops._impl`."""
from fastgan.ops._impl import IMPLS, get_impl, resolve_impl, use_impl
from fastgan.ops.activations import ACTIVATIONS, apply_activation_ref, get_activation
from fastgan.ops.bias_act import bias_act
from fastgan.ops.losses import LOSSES, d_loss, g_loss
from fastgan.ops.norm_act import batch_norm_act, instance_norm_act, pixel_norm
from fastgan.ops.penalties import PENALTIES, grad_penalty

__all__ = [
    "IMPLS", "get_impl", "resolve_impl", "use_impl",
    "ACTIVATIONS", "apply_activation_ref", "get_activation",
    "bias_act", "batch_norm_act", "instance_norm_act", "pixel_norm",
    "LOSSES", "d_loss", "g_loss", "PENALTIES", "grad_penalty",
]
