"""The one activation table.

It drives the reference path (``ref``), the Triton kernels (``kernel_id`` is passed to the
kernels as a ``tl.constexpr``) and what a backward needs to save (``saves``): for every
activation here the derivative can be computed from the activation's *output* alone, except
gelu/silu, whose derivative needs the input, and lrelu with a negative slope (see
``Activation.saves_for``). Kernels that fuse an activation save exactly one
tensor for backward, and this table says which.

Scalars: ``alpha`` is the leaky-relu slope; ``gain`` multiplies the activation output (StyleGAN's
``def_gain`` convention, ``sqrt(2)`` for lrelu in StyleGAN2 — fastgan's defaults are 1 so that a
fused block equals the stock PyTorch modules it replaces).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch
import torch.nn.functional as F

from fastgan.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Activation:
    name: str
    kernel_id: int          # constexpr value the Triton kernels switch on
    ref: Callable           # ref(x, alpha) -> y, torch ops only (differentiable to any order)
    default_alpha: float
    saves: str              # "y": derivative from the output; "x": needs the input
    smooth: bool            # has a nonzero second derivative (matters for double backward)

    def saves_for(self, alpha: float) -> str:
        """What a backward must save for this activation at slope ``alpha``: ``saves``, except
        lrelu with ``alpha < 0``, whose output has the same sign for x > 0 and x < 0 (so the
        derivative cannot be read from y) and which therefore saves the input."""
        return "x" if self.kernel_id == 2 and alpha < 0 else self.saves


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in [
        Activation("linear", 0, lambda x, alpha: x, 0.0, "y", False),
        Activation("relu", 1, lambda x, alpha: F.relu(x), 0.0, "y", False),
        Activation("lrelu", 2, lambda x, alpha: F.leaky_relu(x, alpha), 0.2, "y", False),
        Activation("tanh", 3, lambda x, alpha: torch.tanh(x), 0.0, "y", True),
        Activation("sigmoid", 4, lambda x, alpha: torch.sigmoid(x), 0.0, "y", True),
        Activation("silu", 5, lambda x, alpha: F.silu(x), 0.0, "x", True),
        Activation("gelu", 6, lambda x, alpha: F.gelu(x), 0.0, "x", True),
    ]
}
ALIASES = {"identity": "linear", "none": "linear", "leaky_relu": "lrelu", "swish": "silu"}


def get_activation(name: str) -> Activation:
    key = ALIASES.get(name, name)
    if key not in ACTIVATIONS:
        raise ConfigError(
            f"unknown activation {name!r}; choose one of {', '.join(list(ACTIVATIONS) + list(ALIASES))}"
        )
    return ACTIVATIONS[key]


def apply_activation_ref(x: torch.Tensor, act: str, alpha: float | None = None, gain: float = 1.0) -> torch.Tensor:
    """Reference: ``gain * act(x)``."""
    a = get_activation(act)
    y = a.ref(x, a.default_alpha if alpha is None else float(alpha))
    return y if gain == 1.0 else y * gain


def default_gain(act: str) -> float:
    """He-style gain StyleGAN uses for an activation (for users who want it; not a default here)."""
    return math.sqrt(2.0) if get_activation(act).name in ("relu", "lrelu") else 1.0
