"""GAN objectives: the gradient logic of a D phase, a regularization phase and a G phase.

The objective owns *what* is differentiated (losses, penalties, detaching the fake batch);
the training step owns *when* (scheduling, optimizers, compilation). Every method returns a
scalar loss plus a dict of detached device tensors for logging: nothing here syncs the host.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from fastgan import ops
from fastgan.errors import ConfigError


@dataclasses.dataclass
class Objective:
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

    # -- D phase --------------------------------------------------------------------------
    def d_main(self, D: nn.Module, real: torch.Tensor, fake: torch.Tensor):
        """D loss on reals and (already detached) fakes.

        Two D forwards, not one over the concatenation: with BatchNorm in D, statistics stay
        per-population (all-real, all-fake) as in the DCGAN recipe, and the G phase's D(fake)
        sees the same kind of batch the D phase trained on."""
        real_logits = D(real)   # (N,)
        fake_logits = D(fake)   # (N,)
        loss = ops.d_loss(real_logits, fake_logits, self.loss, smooth=self.label_smoothing)
        stats = {"loss_D": loss.detach(), "D_real": real_logits.detach().float().mean(),
                 "D_fake": fake_logits.detach().float().mean()}
        return loss, stats

    def d_reg(self, D: nn.Module, real: torch.Tensor, fake: torch.Tensor):
        """Gradient penalty (times its weight and the lazy interval), differentiable w.r.t. D."""
        return self.d_reg_core(D, self.d_reg_input(real, fake))

    def d_reg_input(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """The points the penalty's gradient is taken at, as a leaf that requires grad: random
        interpolates of real and fake for WGAN-GP, the reals for R1. Kept apart from
        :meth:`d_reg_core` because torch.compile cannot return (or differentiate past) a tensor
        whose ``requires_grad_`` was set inside the compiled region."""
        if self.penalty == "wgan-gp":
            eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
            # lerp does not promote: under bf16 autocast the fake batch is bf16, the reals fp32.
            return torch.lerp(fake.detach().to(real.dtype), real.detach(), eps).requires_grad_(True)
        return real.detach().requires_grad_(True)   # r1 on reals

    def d_reg_core(self, D: nn.Module, x: torch.Tensor):
        """The penalty at ``x`` (from :meth:`d_reg_input`): D's input gradient with ``create_graph``,
        then the fused norm reduction; compilable with ``torch._dynamo.config.trace_autograd_ops``."""
        out = D(x)
        (grad,) = torch.autograd.grad(out.float().sum(), x, create_graph=True)
        pen = ops.grad_penalty(grad, self.penalty)
        scale = self.penalty_weight * (0.5 if self.penalty == "r1" else 1.0) * self.penalty_every
        return pen * scale, {"penalty": pen.detach()}

    # -- G phase --------------------------------------------------------------------------
    def g_main(self, D: nn.Module, fake: torch.Tensor):
        logits = D(fake)
        loss = ops.g_loss(logits, self.loss)
        return loss, {"loss_G": loss.detach()}
