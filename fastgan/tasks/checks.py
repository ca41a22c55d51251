"""Checks a task runs on its networks before training: one-line errors naming the fix, not a trace mid-run."""
from __future__ import annotations

import torch
from torch import nn

from fastgan.errors import ConfigError


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def ends_in_sigmoid(m: nn.Module) -> bool:
    """True when ``m``'s output is certainly an ``nn.Sigmoid``'s: the last slot of a Sequential, followed
    down through last slots and through custom modules whose only child is a Sequential (the usual
    ``self.main = nn.Sequential(...)``). A custom module's registration order is not its call order,
    so nothing else is judged (a squeeze-excitation gate registered last is not D's output). A
    ``fastgan.fuse``d layer with ``act='sigmoid'`` counts as a Sigmoid (its slot became an Identity)."""
    while True:
        if isinstance(m, nn.Sequential):
            slots = [c for c in m._modules.values() if c is not None]
            while slots and type(slots[-1]) is nn.Identity:      # fuse leaves the activation's slot as Identity
                slots.pop()
            if not slots:
                return False
            m = slots[-1]
            if isinstance(m, nn.Sigmoid) or getattr(m, "act", None) == "sigmoid":
                return True
            continue
        children = list(m.children())
        if len(children) != 1 or not isinstance(children[0], nn.Sequential):
            return False
        m = children[0]


def refuse_sigmoid(D: nn.Module, name: str = "D") -> None:
    if ends_in_sigmoid(D):
        raise ConfigError(f"{name} ends in nn.Sigmoid, but fastgan's losses take raw scores (logits); remove the final "
                          "Sigmoid (loss='nonsat' is BCEWithLogits, the stable form of Sigmoid + BCELoss)")


def check_images(fake, n: int, what: str = "G") -> torch.Size:
    """``fake`` must be a batch of ``n`` images; returns its per-image shape."""
    if not isinstance(fake, torch.Tensor) or fake.dim() < 2 or fake.shape[0] != n:
        raise ConfigError(f"{what} must return a batch of images (N, C, H, W); for {n} inputs it returned "
                          f"{tuple(fake.shape) if isinstance(fake, torch.Tensor) else type(fake).__name__}")
    return fake.shape[1:]


def check_scores(out, n: int, what: str = "D") -> None:
    if not isinstance(out, torch.Tensor) or out.numel() != n:
        raise ConfigError(f"{what} must return one score per image, (N,) or (N, 1); for {n} images it returned "
                          f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")


def call(net: nn.Module, args: tuple, what: str, on: str):
    """``net(*args)``; any failure but out-of-memory becomes ``ConfigError("<what> failed on <on>: ...")``."""
    try:
        return net(*args)
    except torch.cuda.OutOfMemoryError:
        raise
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"{what} failed on {on}: {first_line(e)}") from e
