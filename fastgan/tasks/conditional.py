"""Class-conditional GANs: G(z, y) and a discriminator that sees the class.

- ``concat`` — cGAN (Mirza & Osindero 2014): the label joins G's latent and D's input; D(x, y) → score.
- ``projection`` — projection discriminator (Miyato & Koyama 2018): D(x, y) = ψ(φ(x)) + ⟨embed(y), φ(x)⟩,
  realness and class match scored separately and summed; hinge loss.
- ``acgan`` — AC-GAN (Odena et al. 2017): D(x) → (score, class logits); D minimizes the adversarial loss
  plus the class cross entropy on reals and fakes, G the adversarial loss plus the cross entropy of its
  fakes' requested classes.
- ``joint`` — a user's own pair G(z, labels) / D(x, labels) → scores (``fastgan.Trainer(G, D, num_classes=K)``).

Fakes are drawn for random labels (uniform over the classes, on the device); reals bring their own. The
iteration is the unconditional one (shared fake batch for n_critic = 1, fresh fakes per critic step else);
the gradient penalty scores its points with the real batch's labels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastgan.errors import ConfigError
from fastgan.latent import latent_shape
from fastgan.tasks import checks
from fastgan.tasks.base import Batch, Forward, Nets, Noise, OptimizerSpec, Task, Term
from fastgan.tasks.terms import Objective, scores
from fastgan.tasks.unconditional import adversarial_schedule

KINDS = ("concat", "projection", "acgan", "joint")


class ConditionalTask(Task):
    """G(z, labels) with a class-aware D (``kind``: see the module doc)."""

    conditional = True
    batch_fields = ("images", "labels")

    def __init__(self, G: nn.Module, D: nn.Module, objective: Objective | None = None, *, num_classes: int,
                 kind: str = "joint", aux_weight: float = 1.0, z_dim=None, n_critic: int = 1,
                 clip: float | None = None, optim_G: OptimizerSpec = OptimizerSpec(),
                 optim_D: OptimizerSpec = OptimizerSpec()):
        if kind not in KINDS:
            raise ConfigError(f"unknown conditional kind {kind!r}; choose one of {', '.join(KINDS)}")
        z_dim = z_dim if z_dim is not None else getattr(G, "z_dim", None)
        if z_dim is None:
            raise ConfigError("cannot tell the generator's latent size; give G a `z_dim` attribute or pass z_dim=")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ConfigError(f"a conditional GAN needs num_classes >= 2 (got {num_classes!r})")
        if isinstance(n_critic, bool) or not isinstance(n_critic, int) or n_critic < 1:
            raise ConfigError(f"n_critic must be an integer >= 1 (got {n_critic!r})")
        self.nets = {"G": G, "D": D}
        self.objective = objective or Objective()
        self.kind, self.aux_weight = kind, float(aux_weight)
        self.num_classes = num_classes
        self.z_shape = latent_shape(z_dim)
        self.n_critic, self.clip = n_critic, clip
        self._optim = {"G": optim_G, "D": optim_D}

    @classmethod
    def from_spec(cls, spec, cfg, *, nets=None, lr_g=None, lr_d=None, z_dim=None) -> "ConditionalTask":
        from fastgan.models import FAMILIES

        if nets is None:
            fam = FAMILIES[spec.family]
            nets = {"G": fam.Generator(cfg), "D": fam.Discriminator(cfg)}
        o = spec.optim
        kind = "acgan" if cfg.d_kind == "acgan" else "projection" if cfg.d_kind == "projection" else "concat"
        return cls(nets["G"], nets["D"], spec.objective, num_classes=cfg.num_classes, kind=kind,
                   z_dim=z_dim, n_critic=spec.n_critic, clip=spec.clip, **spec.options,
                   optim_G=OptimizerSpec(o.name, o.lr_g if lr_g is None else lr_g, o.betas),
                   optim_D=OptimizerSpec(o.name, o.lr_d if lr_d is None else lr_d, o.betas))

    def optimizers(self) -> dict[str, OptimizerSpec]:
        return dict(self._optim)

    def noise(self) -> dict[str, Noise]:
        return {"z": Noise("normal", self.z_shape), "fake_labels": Noise("categorical", classes=self.num_classes)}

    def schedule(self) -> list:
        obj = self.objective
        fwd = Forward("G_forward", self._generate, nets=("G",), noise=("z", "fake_labels"))
        d_terms = [Term("D_forward", self._d_main, backward="D_backward")]
        if obj.has_penalty:
            d_terms.append(obj.penalty_term(lambda nets, x, b: self._score(nets, x, b["labels"]), name="D_penalty"))
        return adversarial_schedule(fwd, d_terms, Term("G_loss", self._g_main, backward="G_backward"),
                                    self.n_critic, self.clip)

    # -- the maths ------------------------------------------------------------------------
    @staticmethod
    def _generate(nets: Nets, b: Batch) -> Batch:
        return {"fake": nets.G(b["z"], b["fake_labels"])}

    def _d_out(self, nets: Nets, x: torch.Tensor, labels: torch.Tensor):
        """(scores (N,), class logits (N, K) or None)."""
        if self.kind == "acgan":
            logits, cls = nets.D(x)
            return scores(logits, x.shape[0]), cls
        return scores(nets.D(x, labels), x.shape[0]), None

    def _score(self, nets: Nets, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self._d_out(nets, x, labels)[0]

    def _d_main(self, nets: Nets, b: Batch):
        real_s, real_c = self._d_out(nets, b["images"], b["labels"])
        fake_s, fake_c = self._d_out(nets, b["fake"], b["fake_labels"])
        loss, stats = self.objective.d_loss(real_s, fake_s)
        if real_c is not None:
            ce_real = F.cross_entropy(real_c.float(), b["labels"])
            ce_fake = F.cross_entropy(fake_c.float(), b["fake_labels"])
            loss = loss + self.aux_weight * (ce_real + ce_fake)
            stats.update(cls_real=ce_real.detach(), cls_fake=ce_fake.detach(),
                         acc_real=(real_c.detach().argmax(1) == b["labels"]).float().mean())
        return loss, stats

    def _g_main(self, nets: Nets, b: Batch):
        fake_s, fake_c = self._d_out(nets, b["fake"], b["fake_labels"])
        loss = self.objective.g_loss(fake_s)
        stats = {}
        if fake_c is not None:
            ce = F.cross_entropy(fake_c.float(), b["fake_labels"])
            loss = loss + self.aux_weight * ce
            stats["cls_G"] = ce.detach()
        stats = {"loss_G": loss.detach(), **stats}
        return loss, stats

    # -- sampling and checks --------------------------------------------------------------
    def labels_for(self, n: int, labels) -> torch.Tensor:
        """``labels`` (an int for every image, or n of them) as an (n,) int64 CPU tensor; one-line errors."""
        if labels is None:
            raise ConfigError(f"this run is conditional: pass labels= (a class in 0..{self.num_classes - 1}, or one "
                              f"per image), e.g. sample({n}, labels=3); the CLI takes --labels 3")
        t = torch.as_tensor(labels)
        if t.is_floating_point() or t.dtype == torch.bool:
            raise ConfigError(f"labels must be integer classes in 0..{self.num_classes - 1} (got {t.dtype} values)")
        t = t.long().reshape(-1).cpu()
        if t.numel() == 1:
            t = t.expand(n).clone()
        if t.numel() != n:
            raise ConfigError(f"got {t.numel()} labels for {n} images; pass one label, or one per image")
        self.check_batch({"labels": t})
        return t

    def sample_inputs(self, n: int, generator: torch.Generator, labels=None, **conditions) -> tuple:
        if conditions:
            raise ConfigError(f"sample() takes labels= for this run, not {', '.join(sorted(conditions))}")
        y = self.labels_for(n, labels)
        return torch.randn(n, *self.z_shape, generator=generator), y

    def check_batch(self, batch: Batch) -> None:
        y = batch["labels"]
        if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.dtype == torch.bool or y.dim() != 1:
            got = f"{y.dtype} of shape {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
            raise ConfigError(f"labels must be a 1-D integer tensor of class indices (got {got})")
        if y.numel():
            lo, hi = (int(v) for v in torch.aminmax(y))
            if lo < 0 or hi >= self.num_classes:
                raise ConfigError(f"labels must lie in 0..{self.num_classes - 1} for num_classes={self.num_classes} "
                                  f"(got min {lo}, max {hi}); fix the labels or build the run with "
                                  f"num_classes={max(hi + 1, self.num_classes)}")

    def probe(self, batch: int, device: torch.device) -> torch.Size:
        G, D = self.nets["G"], self.nets["D"]
        checks.refuse_sigmoid(D)
        z = torch.randn(batch, *self.z_shape, device=device)
        y = torch.arange(batch, device=device) % self.num_classes
        fake = checks.call(G, (z, y), "G", f"latents {tuple(z.shape)} and labels {tuple(y.shape)}; a conditional G "
                           "must take (z, labels) with labels (N,) int64 class indices")
        shape = checks.check_images(fake, batch)
        if self.kind == "acgan":
            out = checks.call(D, (fake,), "D", f"G's output of shape {tuple(fake.shape)}")
            if not (isinstance(out, tuple) and len(out) == 2 and out[1].shape == (batch, self.num_classes)):
                raise ConfigError(f"an AC-GAN D must return (scores (N,), class logits (N, {self.num_classes})); "
                                  f"got {type(out).__name__}")
            checks.check_scores(out[0], batch)
        else:
            out = checks.call(D, (fake, y), "D", f"images {tuple(fake.shape)} and labels {tuple(y.shape)}; a "
                              "conditional D must take (x, labels)")
            checks.check_scores(out, batch)
        return shape
