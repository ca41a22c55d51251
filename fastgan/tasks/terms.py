"""Composable GAN loss terms, in one place; the tasks combine them.

- :class:`Objective`: the adversarial loss kind (non-saturating, minimax, hinge, Wasserstein, least
  squares), one-sided label smoothing and an optional gradient penalty (WGAN-GP, R1; lazy or not).
- :func:`cycle_loss`, :func:`identity_loss`, :func:`content_loss`: the reconstruction terms of
  image-to-image and super-resolution GANs (CycleGAN, pix2pix, SRGAN).
- :func:`mutual_information_loss`: InfoGAN's variational lower bound on I(c; G(z, c)).

Every function returns device tensors (a scalar loss and detached stats); nothing syncs the host.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch
import torch.nn.functional as F

from fastgan import ops
from fastgan.errors import ConfigError
from fastgan.tasks.base import Batch, Nets, Noise, Term

Stats = dict[str, torch.Tensor]


@dataclasses.dataclass
class Objective:
    """Adversarial loss + optional gradient penalty: the D and G sides of every adversarial game."""
    loss: str = "nonsat"            # see fastgan.ops.losses.LOSSES
    penalty: str | None = None      # None | "wgan-gp" | "r1"
    penalty_weight: float = 0.0     # λ for WGAN-GP, γ for R1 (applied as γ/2)
    penalty_every: int = 1          # lazy regularization interval (StyleGAN2: 16)
    label_smoothing: float = 0.0    # one-sided: real target 1 - s

    def __post_init__(self):
        ops.losses.check_loss(self.loss)
        if self.penalty is not None and self.penalty not in ops.PENALTIES:
            raise ConfigError(f"unknown gradient penalty {self.penalty!r}; choose one of {', '.join(ops.PENALTIES)}")
        if self.penalty_every < 1:
            raise ConfigError(f"penalty_every must be >= 1 (got {self.penalty_every})")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1) (got {self.label_smoothing})")

    @property
    def has_penalty(self) -> bool:
        return self.penalty is not None and self.penalty_weight > 0

    def d_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> tuple[torch.Tensor, Stats]:
        """D's loss on the scores of reals and (detached) fakes, with ``loss_D``, ``D_real``, ``D_fake``."""
        loss = ops.d_loss(real_logits, fake_logits, self.loss, smooth=self.label_smoothing)
        return loss, {"loss_D": loss.detach(), "D_real": real_logits.detach().float().mean(),
                      "D_fake": fake_logits.detach().float().mean()}

    def g_loss(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return ops.g_loss(fake_logits, self.loss)

    def penalty_input(self, real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
        """The points the penalty's gradient is taken at, as a leaf that requires grad: interpolates of real and
        fake at ``eps`` (N, 1) uniform in [0, 1) (drawn here if not given) for WGAN-GP, the reals for R1. Built
        outside compiled code: torch.compile cannot differentiate past a ``requires_grad_`` set inside it."""
        if self.penalty == "wgan-gp":
            if eps is None:
                eps = torch.rand(real.shape[0], 1, device=real.device)
            eps = eps.to(real.dtype).view(-1, *([1] * (real.dim() - 1)))     # (N, 1, 1, 1) for images
            # lerp does not promote: under bf16 autocast the fake batch is bf16, the reals fp32.
            return torch.lerp(fake.detach().to(real.dtype), real.detach(), eps).requires_grad_(True)
        return real.detach().requires_grad_(True)   # r1 on reals

    def penalty_loss(self, scores: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, Stats]:
        """The penalty of ``scores`` (D at ``x``, from :meth:`penalty_input`): D's input gradient with
        ``create_graph``, then the fused norm reduction, times its weight and the lazy interval."""
        (grad,) = torch.autograd.grad(scores.float().sum(), x, create_graph=True)
        pen = ops.grad_penalty(grad, self.penalty)
        scale = self.penalty_weight * (0.5 if self.penalty == "r1" else 1.0) * self.penalty_every
        return pen * scale, {"penalty": pen.detach()}

    def penalty_term(self, scores: Callable[[Nets, torch.Tensor, Batch], torch.Tensor],
                     real: str = "images", fake: str = "fake", name: str = "D_reg") -> Term:
        """The penalty as a lazy :class:`Term`: ``scores(nets, x, batch)`` is D's score of the points ``x``
        (conditional tasks pass the batch's labels through)."""
        def prepare(b: Batch) -> Batch:
            return {"penalty_x": self.penalty_input(b[real], b[fake], b.get("penalty_eps"))}

        def fn(nets: Nets, b: Batch):
            x = b["penalty_x"]
            return self.penalty_loss(scores(nets, x, b), x)

        # WGAN-GP's interpolation weights are noise the engine draws (per rank, its slice of a global draw)
        noise = {"penalty_eps": Noise("uniform", (1,), low=0.0, high=1.0)} if self.penalty == "wgan-gp" else {}
        return Term(name, fn, every=self.penalty_every, prepare=prepare, noise=noise)


def scores(out: torch.Tensor, n: int) -> torch.Tensor:
    """One score per image from a discriminator output (N,) or (N, 1): (N,)."""
    return out.reshape(n)


def cycle_loss(x: torch.Tensor, reconstructed: torch.Tensor) -> torch.Tensor:
    """CycleGAN's cycle consistency: mean |x - F(G(x))| (Zhu et al. 2017)."""
    return (reconstructed.float() - x.float()).abs().mean()


def identity_loss(x: torch.Tensor, mapped: torch.Tensor) -> torch.Tensor:
    """CycleGAN's identity term: mean |x - G(x)| for x already in G's target domain."""
    return (mapped.float() - x.float()).abs().mean()


def content_loss(target: torch.Tensor, output: torch.Tensor, features: Callable | None = None,
                 kind: str = "l1") -> torch.Tensor:
    """Pixel or feature-space reconstruction (pix2pix's L1, SRGAN's content loss on ``features(x)``)."""
    if features is not None:
        target, output = features(target), features(output)
    diff = output.float() - target.float()
    if kind == "l1":
        return diff.abs().mean()
    if kind == "l2":
        return diff.square().mean()
    raise ConfigError(f"unknown content loss {kind!r}; choose l1 or l2")


def mutual_information_loss(cat_logits: torch.Tensor | None, cat_codes: torch.Tensor | None,
                            cont_mean: torch.Tensor | None = None, cont_logvar: torch.Tensor | None = None,
                            cont_codes: torch.Tensor | None = None, cont_weight: float = 1.0
                            ) -> tuple[torch.Tensor, Stats]:
    """InfoGAN's negative variational bound on I(c; G(z, c)) up to the codes' constant entropy
    (Chen et al. 2016): cross entropy of Q's categorical logits ``(N, K, classes)`` against the drawn codes
    ``(N, K)`` plus ``cont_weight`` times the Gaussian negative log-likelihood of the continuous codes
    ``(N, M)`` under Q's mean and log-variance (``cont_logvar=None``: unit variance, the reference code's
    ``fix_std=True``). Stats: ``mi_cat`` and ``mi_cont``."""
    total = torch.zeros((), device=(cat_logits if cat_logits is not None else cont_mean).device)
    stats: Stats = {}
    if cat_logits is not None:
        ce = F.cross_entropy(cat_logits.float().flatten(0, 1), cat_codes.flatten())
        total = total + ce
        stats["mi_cat"] = ce.detach()
    if cont_mean is not None:
        err = (cont_codes.float() - cont_mean.float()).square()
        if cont_logvar is None:
            nll = 0.5 * (err + math.log(2 * math.pi))
        else:
            lv = cont_logvar.float().clamp(-8, 8)
            nll = 0.5 * (err * torch.exp(-lv) + lv + math.log(2 * math.pi))
        nll = nll.sum(1).mean()
        total = total + cont_weight * nll
        stats["mi_cont"] = nll.detach()
    return total, stats
