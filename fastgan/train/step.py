"""The training step: one D update (plus lazy regularization) and one G update.

This module is the only place where torch.compile and CUDA graphs may live. Mode ``eager``
runs the objective's phases as plain PyTorch. Every phase is wrapped in ``record_function``
so the profiler attributes time to D_main / D_reg / G_main / EMA.

No host synchronization happens inside a step: losses and a non-finite flag are accumulated
into device tensors (:class:`StatsAccumulator`) and read only at log ticks.
"""
from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn
from torch.profiler import record_function

from fastgan.variants.objective import Objective


class StatsAccumulator:
    """Sums named scalar device tensors between ticks; one host sync per :meth:`read`."""

    def __init__(self):
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}
        self._bad: torch.Tensor | None = None

    def add(self, stats: dict[str, torch.Tensor]) -> None:
        for k, v in stats.items():
            v = v.detach().float()
            if k in self._sums:
                self._sums[k] += v
                self._counts[k] += 1
            else:
                self._sums[k] = v.clone()
                self._counts[k] = 1
            bad = ~torch.isfinite(v)
            self._bad = bad if self._bad is None else (self._bad | bad)

    def read(self) -> dict[str, float]:
        """Means since the last read, plus ``nonfinite`` (1.0 if any value was NaN/inf)."""
        if not self._sums:
            return {}
        keys = list(self._sums)
        vals = torch.stack([self._sums[k] for k in keys] + [self._bad.float()]).tolist()
        out = {k: v / self._counts[k] for k, v in zip(keys, vals[:-1])}
        out["nonfinite"] = vals[-1]
        self._sums, self._counts, self._bad = {}, {}, None
        return out


def make_optimizer(name: str, params, lr: float, betas: tuple[float, float], device: torch.device):
    """Adam (fused on CUDA, foreach elsewhere) or RMSprop."""
    params = list(params)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, foreach=True)
    if device.type == "cuda":
        return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)
    return torch.optim.Adam(params, lr=lr, betas=betas, foreach=True)


class GanStep:
    """Executes the phases of one training iteration for a G/D pair.

    Parameters are plain modules and optimizers; the :class:`Objective` supplies the losses.
    """

    def __init__(self, G: nn.Module, D: nn.Module, objective: Objective, opt_G, opt_D, *,
                 z_dim: int, batch: int, device: torch.device, n_critic: int = 1, clip: float | None = None,
                 precision: str = "fp32", ema_kimg: float = 10.0, ema_rampup: float | None = 0.05,
                 mode: str = "eager"):
        self.G, self.D, self.objective = G, D, objective
        self.opt_G, self.opt_D = opt_G, opt_D
        self.z_dim, self.batch, self.device = z_dim, batch, device
        self.n_critic, self.clip = n_critic, clip
        self.precision = precision
        self.ema_kimg, self.ema_rampup = ema_kimg, ema_rampup
        self.mode = mode
        self.G_ema = copy.deepcopy(G).eval().requires_grad_(False)
        self.d_steps = 0       # D updates so far (drives lazy regularization)
        self.nimg = 0          # real images shown to D so far
        self._g_params = list(G.parameters())
        self._d_params = list(D.parameters())
        self._ema_params = [p for p in self.G_ema.parameters()]

    # -- helpers --------------------------------------------------------------------------
    def _autocast(self):
        if self.precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            return torch.autocast(self.device.type, dtype=dtype)
        return contextlib.nullcontext()

    def latents(self, n: int | None = None) -> torch.Tensor:
        return torch.randn(n or self.batch, self.z_dim, device=self.device)

    # -- phases ---------------------------------------------------------------------------
    def d_step(self, real: torch.Tensor, fake: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One D update on ``real`` and a detached fake batch (drawn here if not given)."""
        obj = self.objective
        with self._autocast():
            if fake is None:
                with torch.no_grad():
                    fake = self.G(self.latents(real.shape[0]))
            fake = fake.detach()
            self.opt_D.zero_grad(set_to_none=True)
            with record_function("D_main"):
                loss, stats = obj.d_main(self.D, real, fake)
                loss.backward()
            if obj.has_penalty and self.d_steps % obj.penalty_every == 0:
                with record_function("D_reg"):
                    pen, pstats = obj.d_reg(self.D, real, fake)
                    pen.backward()
                    stats.update(pstats)
        with record_function("D_opt"):
            self.opt_D.step()
            if self.clip is not None:
                with torch.no_grad():
                    torch._foreach_clamp_min_(self._d_params, -self.clip)
                    torch._foreach_clamp_max_(self._d_params, self.clip)
        self.d_steps += 1
        self.nimg += real.shape[0]
        return stats

    def g_step(self, fake: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One G update. ``fake`` may be a batch G produced with grad this iteration (shared
        with the D step, as in the DCGAN tutorial), else a fresh batch is drawn."""
        with self._autocast():
            if fake is None:
                fake = self.G(self.latents())
            self.opt_G.zero_grad(set_to_none=True)
            with record_function("G_main"):
                loss, stats = self.objective.g_main(self.D, fake)
                # Only G's parameters receive gradients: D's weight grads are not computed and
                # requires_grad is never toggled.
                loss.backward(inputs=self._g_params)
        with record_function("G_opt"):
            self.opt_G.step()
        return stats

    @torch.no_grad()
    def ema_step(self) -> None:
        """G_ema ← lerp(G_ema, G, 1 - β) with β from a half-life of ``ema_kimg`` thousand images."""
        with record_function("G_ema"):
            ema_nimg = self.ema_kimg * 1000
            if self.ema_rampup is not None:
                ema_nimg = min(ema_nimg, self.nimg * self.ema_rampup)
            beta = 0.5 ** (self.batch / max(ema_nimg, 1e-8))
            torch._foreach_lerp_(self._ema_params, self._g_params, 1.0 - beta)
            for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
                b_ema.copy_(b)

    def iteration(self, next_batch) -> dict[str, torch.Tensor]:
        """n_critic D steps on batches from ``next_batch()``, then one G step and the EMA update."""
        stats: dict[str, torch.Tensor] = {}
        if self.n_critic == 1:
            real = next_batch()
            with self._autocast():
                fake = self.G(self.latents(real.shape[0]))   # shared by the D and G steps
            stats.update(self.d_step(real, fake))
            stats.update(self.g_step(fake))
        else:
            for _ in range(self.n_critic):
                stats.update(self.d_step(next_batch()))
            stats.update(self.g_step())
        self.ema_step()
        return stats
