"""The baselines fastgan is measured against, written the way users write them.

The models are built from stock ``torch.nn`` modules only (``ConvTranspose2d``, ``Conv2d``,
``BatchNorm2d``/``InstanceNorm2d``, ``ReLU``, ``LeakyReLU``, ``Tanh``) with exactly the widths,
kernels, strides and biases of :mod:`fastgan.models.dcgan` for the same ``Config``, and the
DCGAN initialisation; nothing from :mod:`fastgan.ops` or :mod:`fastgan.nn` is used.

The loop is the PyTorch DCGAN tutorial's (``beginner/dcgan_faces_tutorial``)::

    netD.zero_grad()
    errD_real = criterion(netD(real).view(-1), ones);  errD_real.backward()
    fake = netG(noise)
    errD_fake = criterion(netD(fake.detach()).view(-1), zeros);  errD_fake.backward()
    optimizerD.step()
    netG.zero_grad()
    errG = criterion(netD(fake).view(-1), ones);  errG.backward()
    optimizerG.step()

with separate real and fake D forwards, ``nn.BCEWithLogitsLoss`` and plain ``optim.Adam``.
Other objectives are written the obvious way (hinge with ``F.relu``, Wasserstein as means of
the critic, least squares with ``F.mse_loss``); WGAN-GP is the usual ``gradient_penalty`` with
``autograd.grad(create_graph=True)`` on random interpolates; R1 is the same on reals, every
``penalty_every`` D steps (lazy, scaled by the interval). With ``n_critic > 1`` the loop is the
WGAN one: ``n_critic`` D updates, each on a new real batch and a fake drawn under
``torch.no_grad()``, then weight clipping if the variant clips, then one G update on fresh noise.

Two liberties, both in the baseline's favour: the tutorial's per-iteration ``.item()`` logging
(three host syncs) is left out, and the fake batch of a WGAN critic step is drawn under
``no_grad``. Like the tutorial, the G step does not freeze D (``requires_grad`` is never
toggled), so D's weight gradients are computed there and discarded.

Modes (see :data:`BASELINE_MODES`): ``eager-tutorial`` is the above at fp32 NCHW;
``eager-best`` adds the best stock flags (CUDA: bf16 autocast, channels_last, fused Adam,
``cudnn.benchmark``; CPU: the row's precision, NCHW, foreach Adam); ``compile``,
``compile-max`` and ``compile-ro`` are ``eager-best`` with both models wrapped in
``torch.compile`` (default, ``max-autotune``, ``reduce-overhead``; the last CUDA only), except
that they take NCHW input and leave conv layouts to Inductor (channels_last DCGAN models crash
torch 2.11's Inductor on a conv-backward stride assert) and run a gradient penalty through the
eager D (AOTAutograd has no double backward).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from fastgan.errors import ConfigError

BASELINE_MODES = ("eager-tutorial", "eager-best", "compile", "compile-max", "compile-ro")
COMPILE_MODES = {"compile": "default", "compile-max": "max-autotune", "compile-ro": "reduce-overhead"}
CUDA_ONLY_MODES = ("compile-ro",)   # max-autotune runs on CPU too (C++ GEMM templates)


# ----------------------------------------------------------------------------- models


def weights_init(m: nn.Module) -> None:
    """The DCGAN tutorial's initialisation: conv weights N(0, 0.02), norm scales N(1, 0.02)."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.weight is not None:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class Generator(nn.Module):
    """The tutorial's ``Generator``: ``self.main`` is an ``nn.Sequential``; input (N, z, 1, 1).

    Generator and Discriminator are separate classes (as in the tutorial) so that
    ``torch.compile`` sees two code objects; two bare ``nn.Sequential`` would share
    ``Sequential.forward``'s cache and make Dynamo recompile with dynamic shapes.
    """

    def __init__(self, main: nn.Sequential):
        super().__init__()
        self.main = main

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.main(input)


class Discriminator(nn.Module):
    """The tutorial's ``Discriminator`` (without the final Sigmoid: the loss takes logits)."""

    def __init__(self, main: nn.Sequential):
        super().__init__()
        self.main = main

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.main(input)


def tutorial_generator(cfg) -> Generator:
    """DCGAN generator from stock modules for a :class:`fastgan.models.dcgan.Config`; input (N, z, 1, 1)."""
    if getattr(cfg, "num_classes", 0):
        raise ConfigError("the tutorial baseline is unconditional; bench a variant without classes")
    w = cfg.widths()
    layers: list[nn.Module] = [nn.ConvTranspose2d(cfg.z_dim, w[0], 4, 1, 0, bias=False),
                               nn.BatchNorm2d(w[0]), nn.ReLU(True)]                       # 1 → 4
    for a, b in zip(w[:-1], w[1:]):
        layers += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(True)]  # ×2
    layers += [nn.ConvTranspose2d(w[-1], cfg.channels, 4, 2, 1, bias=True), nn.Tanh()]    # → image
    net = Generator(nn.Sequential(*layers))
    net.apply(weights_init)
    return net


def tutorial_discriminator(cfg) -> Discriminator:
    """DCGAN discriminator from stock modules for the same config; output (N, 1, 1, 1) logits."""
    w = cfg.widths()[::-1]
    layers: list[nn.Module] = [nn.Conv2d(cfg.channels, w[0], 4, 2, 1, bias=True), nn.LeakyReLU(0.2, inplace=True)]
    for a, b in zip(w[:-1], w[1:]):
        if cfg.d_norm == "batch":
            layers += [nn.Conv2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b)]
        elif cfg.d_norm == "instance":
            layers += [nn.Conv2d(a, b, 4, 2, 1, bias=False), nn.InstanceNorm2d(b, affine=True)]
        else:
            layers += [nn.Conv2d(a, b, 4, 2, 1, bias=True)]
        layers.append(nn.LeakyReLU(0.2, inplace=True))
    layers.append(nn.Conv2d(w[-1], 1, 4, 1, 0, bias=True))                                # 4×4 → logit
    net = Discriminator(nn.Sequential(*layers))
    net.apply(weights_init)
    return net


# ----------------------------------------------------------------------------- losses


def _d_real(kind: str, out: torch.Tensor) -> torch.Tensor:
    if kind in ("nonsat", "minimax"):
        return nn.BCEWithLogitsLoss()(out, torch.full_like(out, 1.0))
    if kind == "hinge":
        return F.relu(1.0 - out).mean()
    if kind == "wasserstein":
        return -out.mean()
    return 0.5 * F.mse_loss(out, torch.full_like(out, 1.0))       # lsgan


def _d_fake(kind: str, out: torch.Tensor) -> torch.Tensor:
    if kind in ("nonsat", "minimax"):
        return nn.BCEWithLogitsLoss()(out, torch.full_like(out, 0.0))
    if kind == "hinge":
        return F.relu(1.0 + out).mean()
    if kind == "wasserstein":
        return out.mean()
    return 0.5 * F.mse_loss(out, torch.full_like(out, 0.0))


def _g_loss(kind: str, out: torch.Tensor) -> torch.Tensor:
    if kind == "nonsat":
        return nn.BCEWithLogitsLoss()(out, torch.full_like(out, 1.0))
    if kind == "minimax":
        return -nn.BCEWithLogitsLoss()(out, torch.full_like(out, 0.0))
    if kind in ("hinge", "wasserstein"):
        return -out.mean()
    return 0.5 * F.mse_loss(out, torch.full_like(out, 1.0))


def gradient_penalty(netD: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP: E[(‖∇D(x̂)‖₂ − 1)²] on random interpolates x̂, as the reference implementations write it."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    interp = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    out = netD(interp).view(-1)
    grads = torch.autograd.grad(outputs=out, inputs=interp, grad_outputs=torch.ones_like(out),
                                create_graph=True, retain_graph=True)[0]
    return ((grads.reshape(grads.shape[0], -1).norm(2, dim=1) - 1) ** 2).mean()


def r1_penalty(netD: nn.Module, real: torch.Tensor) -> torch.Tensor:
    """R1: E[‖∇D(x)‖²] on reals."""
    x = real.detach().requires_grad_(True)
    out = netD(x).view(-1)
    (grads,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    return grads.square().sum(dim=[1, 2, 3]).mean()


# ----------------------------------------------------------------------------- the step


def baseline_settings(mode: str, device: torch.device, precision: str) -> dict:
    """The stock flags a baseline mode uses on ``device`` (recorded with every row)."""
    if mode not in BASELINE_MODES:
        raise ConfigError(f"unknown baseline mode {mode!r}; choose one of {', '.join(BASELINE_MODES)}")
    cuda = device.type == "cuda"
    if mode == "eager-tutorial":
        return {"precision": "fp32", "autocast": None, "channels_last": False, "optimizer": "stock (torch defaults)",
                "cudnn_benchmark": False if cuda else None, "compile": None,
                "note": "fp32 NCHW, the DCGAN tutorial loop, plain optimizer"}
    if mode in CUDA_ONLY_MODES and not cuda:
        raise ConfigError("CUDA only")
    s = {"precision": precision, "autocast": precision if precision in ("bf16", "fp16") else None,
         "channels_last": cuda and mode not in COMPILE_MODES, "optimizer": "fused" if cuda else "foreach",
         "cudnn_benchmark": True if cuda else None, "compile": COMPILE_MODES.get(mode)}
    if cuda:
        layout = "channels_last" if s["channels_last"] else "NCHW in (Inductor picks conv layouts)"
        s["note"] = f"bf16 autocast, {layout}, fused Adam, cudnn.benchmark" if s["autocast"] else \
            f"{layout}, fused Adam, cudnn.benchmark"
    else:
        s["note"] = f"CPU: {precision}{' autocast' if s['autocast'] else ''}, NCHW, foreach optimizer (no cuDNN, no fused Adam)"
    if s["compile"]:
        s["note"] += f"; both models in torch.compile(mode={s['compile']!r}); a gradient penalty through the eager D"
    return s


def _optimizer(name: str, params, lr: float, betas, flavour: str):
    params = list(params)
    kw = {"fused": True} if flavour == "fused" else ({"foreach": True} if flavour == "foreach" else {})
    if name == "rmsprop":
        kw.pop("fused", None)  # torch has no fused RMSprop; foreach is its fastest stock form
        if flavour == "fused":
            kw["foreach"] = True
        return torch.optim.RMSprop(params, lr=lr, **kw)
    return torch.optim.Adam(params, lr=lr, betas=betas, **kw)


class TutorialStep:
    """One training iteration of a baseline mode: ``step(next_batch)``; ``nimg`` counts reals shown to D.

    ``spec`` is a :class:`fastgan.variants.GanSpec` (objective, n_critic, clip, optimizer) and
    ``cfg`` the model config it builds (widths, channels, D norm).
    """

    def __init__(self, spec, cfg, *, mode: str = "eager-tutorial", device: torch.device | str = "cpu",
                 precision: str = "fp32", seed: int = 0, fuse: bool = False):
        self.device = torch.device(device)
        self.settings = baseline_settings(mode, self.device, precision)
        if fuse:  # the drop-in route: the user's own loop and models, plus one fastgan.fuse call each
            self.settings["fuse"] = True
            self.settings["note"] += "; both models through fastgan.fuse (same loop)"
        self.mode = mode
        if spec.family != "dcgan":
            raise ConfigError(f"the tutorial baseline mirrors the dcgan family only (variant {spec.name!r} is {spec.family!r})")
        obj = spec.objective
        self.loss, self.penalty = obj.loss, (obj.penalty if obj.has_penalty else None)
        self.penalty_weight, self.penalty_every = obj.penalty_weight, obj.penalty_every
        self.n_critic, self.clip = spec.n_critic, spec.clip
        self.z_dim = cfg.z_dim
        torch.manual_seed(seed)
        netG, netD = tutorial_generator(cfg).to(self.device), tutorial_discriminator(cfg).to(self.device)
        if fuse:
            from fastgan.fusion import fuse as fuse_model

            netG, netD = fuse_model(netG, inplace=True), fuse_model(netD, inplace=True)
        self.channels_last = bool(self.settings["channels_last"])
        if self.channels_last:
            netG.to(memory_format=torch.channels_last)
            netD.to(memory_format=torch.channels_last)
        self.modelG, self.modelD = netG, netD           # the modules (parameters live here)
        flavour = self.settings["optimizer"] if self.settings["optimizer"] in ("fused", "foreach") else None
        o = spec.optim
        self.optimizerG = _optimizer(o.name, netG.parameters(), o.lr_g, o.betas, flavour)
        self.optimizerD = _optimizer(o.name, netD.parameters(), o.lr_d, o.betas, flavour)
        if self.settings["compile"]:
            netG = torch.compile(netG, mode=self.settings["compile"])
            netD = torch.compile(netD, mode=self.settings["compile"])
        self.netG, self.netD = netG, netD               # what the loop calls
        # mode="max-autotune" turns on Inductor's CUDA-graph trees as reduce-overhead does: both need
        # one cudagraph_mark_step_begin per iteration (outputs of a replay live until the next one).
        self.cudagraph_steps = self.device.type == "cuda" and self.settings["compile"] in ("reduce-overhead", "max-autotune")
        # AOTAutograd has no double backward, so a penalty (create_graph=True) goes through the
        # uncompiled D, as a torch.compile user must write it.
        self.penaltyD = self.modelD if self.settings["compile"] else netD
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.settings["autocast"] or "")
        self.nimg = 0
        self.d_steps = 0

    def prepare(self, real) -> torch.Tensor:
        """Put a real batch (images, or a loader's (images, labels)) in this mode's memory format (done once,
        outside the timed loop)."""
        if isinstance(real, (tuple, list)):
            real = real[0]
        return real.contiguous(memory_format=torch.channels_last) if self.channels_last else real.contiguous()

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _noise(self, b: int) -> torch.Tensor:
        return torch.randn(b, self.z_dim, 1, 1, device=self.device)

    def _d_update(self, real: torch.Tensor, fake: torch.Tensor) -> None:
        """zero_grad, real backward, fake backward, optional penalty, step, clip."""
        netD, kind = self.netD, self.loss
        netD.zero_grad()
        with self._autocast():
            errD_real = _d_real(kind, netD(real).view(-1).float())
        errD_real.backward()
        with self._autocast():
            errD_fake = _d_fake(kind, netD(fake.detach()).view(-1).float())
        errD_fake.backward()
        if self.penalty == "wgan-gp":
            with self._autocast():
                gp = self.penalty_weight * gradient_penalty(self.penaltyD, real, fake.detach())
            gp.backward()
        elif self.penalty == "r1" and self.d_steps % self.penalty_every == 0:
            with self._autocast():
                r1 = (0.5 * self.penalty_weight * self.penalty_every) * r1_penalty(self.penaltyD, real)
            r1.backward()
        self.optimizerD.step()
        if self.clip is not None:
            for p in self.modelD.parameters():
                p.data.clamp_(-self.clip, self.clip)
        self.d_steps += 1
        self.nimg += real.shape[0]

    def _g_update(self, fake: torch.Tensor) -> None:
        self.netG.zero_grad()
        with self._autocast():
            errG = _g_loss(self.loss, self.netD(fake).view(-1).float())
        errG.backward()
        self.optimizerG.step()

    def step(self, next_batch) -> None:
        if self.cudagraph_steps:
            torch.compiler.cudagraph_mark_step_begin()
        if self.n_critic == 1:
            real = next_batch()
            with self._autocast():
                fake = self.netG(self._noise(real.shape[0]))
            self._d_update(real, fake)
            self._g_update(fake)
            return
        for _ in range(self.n_critic):
            real = next_batch()
            with torch.no_grad(), self._autocast():
                fake = self.netG(self._noise(real.shape[0]))
            self._d_update(real, fake)
        with self._autocast():
            fake = self.netG(self._noise(real.shape[0]))
        self._g_update(fake)
