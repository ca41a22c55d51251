"""GAN objectives as functional ops over logits.

``d_loss(real_logits, fake_logits, kind)`` and ``g_loss(fake_logits, kind)`` return scalar
means. All softplus forms are numerically stable for large |logits|.

=============  ==========================================  ===============================
kind           D loss                                      G loss
=============  ==========================================  ===============================
nonsat         softplus(-r) + softplus(f)                  softplus(-f)
minimax        softplus(-r) + softplus(f)                  -softplus(f)   (= log(1 - D(G(z))))
hinge          relu(1 - r) + relu(1 + f)                   -f
wasserstein    f - r                                       -f
lsgan          ½(r - 1)² + ½f²                             ½(f - 1)²
=============  ==========================================  ===============================

One-sided label smoothing (Salimans et al. 2016) replaces the real target 1 by ``1 - smooth``
for the cross-entropy and least-squares forms.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fastgan.errors import ConfigError
from fastgan.ops._impl import resolve_impl, upcast

LOSSES = ("nonsat", "minimax", "hinge", "wasserstein", "lsgan")


def check_loss(kind: str) -> str:
    if kind not in LOSSES:
        raise ConfigError(f"unknown GAN loss {kind!r}; choose one of {', '.join(LOSSES)}")
    return kind


def _d_loss_ref(real: torch.Tensor, fake: torch.Tensor, kind: str, smooth: float) -> torch.Tensor:
    real = upcast(real)
    fake = upcast(fake)
    t = 1.0 - smooth
    if kind in ("nonsat", "minimax"):
        # BCE with logits against target t: t*softplus(-r) + (1-t)*softplus(r).
        lr = t * F.softplus(-real) + (1.0 - t) * F.softplus(real) if smooth else F.softplus(-real)
        lf = F.softplus(fake)
    elif kind == "hinge":
        lr, lf = F.relu(1.0 - real), F.relu(1.0 + fake)
    elif kind == "wasserstein":
        lr, lf = -real, fake
    else:  # lsgan
        lr, lf = 0.5 * (real - t).square(), 0.5 * fake.square()
    return lr.mean() + lf.mean()


def _g_loss_ref(fake: torch.Tensor, kind: str) -> torch.Tensor:
    fake = upcast(fake)
    if kind == "nonsat":
        return F.softplus(-fake).mean()
    if kind == "minimax":
        return -F.softplus(fake).mean()
    if kind in ("hinge", "wasserstein"):
        return -fake.mean()
    return 0.5 * (fake - 1.0).square().mean()


def d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str = "nonsat", *,
           smooth: float = 0.0, impl: str | None = None) -> torch.Tensor:
    """Discriminator objective over real and fake logits together (a scalar, fp32)."""
    check_loss(kind)
    if resolve_impl(impl, real_logits) == "triton":
        from fastgan.ops._loss_triton import d_loss_triton

        return d_loss_triton(real_logits, fake_logits, kind, smooth)
    return _d_loss_ref(real_logits, fake_logits, kind, smooth)


def g_loss(fake_logits: torch.Tensor, kind: str = "nonsat", *, impl: str | None = None) -> torch.Tensor:
    """Generator objective over the discriminator's logits on fakes (a scalar, fp32)."""
    check_loss(kind)
    if resolve_impl(impl, fake_logits) == "triton":
        from fastgan.ops._loss_triton import g_loss_triton

        return g_loss_triton(fake_logits, kind)
    return _g_loss_ref(fake_logits, kind)
