"""Unconditional GANs: G(z) → images, D(x) → one score per image (DCGAN, WGAN(-GP), LSGAN, hinge, R1...).

The iteration (the DCGAN / WGAN recipes):

- ``n_critic == 1``: one G forward makes the fake batch, shared by the D update (detached) and the G update
  (Radford et al. 2016); ``n_critic > 1``: each critic step draws its own fakes without gradients, and the
  G update draws fresh ones (Arjovsky et al. 2017).
- D update: ``D_forward`` (D on reals and fakes, two forwards so BatchNorm statistics stay per population),
  then the optional gradient penalty ``D_penalty`` (WGAN-GP interpolates or R1 on reals; lazy every k),
  the optimizer step and weight clipping (WGAN).
- G update: ``G_loss`` (D, weights frozen, on the fakes), backward into G only.
"""
from __future__ import annotations

import torch
from torch import nn

from fastgan.errors import ConfigError
from fastgan.latent import latent_shape
from fastgan.tasks import checks
from fastgan.tasks.base import Batch, Forward, Nets, Noise, OptimizerSpec, Task, Term, Update
from fastgan.tasks.terms import Objective, scores


def clip_weights(net: str, clip: float):
    """WGAN's weight clipping of ``net``'s parameters to [-clip, clip], as an update's ``post`` hook."""
    def post(nets: Nets) -> None:
        params = list(nets[net].parameters())
        torch._foreach_clamp_min_(params, -clip)
        torch._foreach_clamp_max_(params, clip)
    return post


def adversarial_schedule(fwd: Forward, d_terms: list[Term], g_term: Term, n_critic: int, clip: float | None) -> list:
    """The D/G iteration of the module doc: with ``n_critic == 1`` one shared forward ``fwd`` before the D and
    G updates; otherwise ``fwd`` inside each critic step and again in the G update. ``clip``: WGAN's weight
    clipping of D after each of its steps."""
    post = clip_weights("D", clip) if clip is not None else None
    if n_critic == 1:
        return [fwd, Update("D", ("D",), tuple(d_terms), post=post), Update("G", ("G",), (g_term,), data=False)]
    return [Update("D", ("D",), tuple(d_terms), repeats=n_critic, forward=fwd, post=post),
            Update("G", ("G",), (g_term,), forward=fwd, data=False)]


class GanTask(Task):
    """G(z) and D(x) under an :class:`~fastgan.tasks.terms.Objective`."""

    def __init__(self, G: nn.Module, D: nn.Module, objective: Objective | None = None, *, z_dim=None,
                 n_critic: int = 1, clip: float | None = None, optim_G: OptimizerSpec = OptimizerSpec(),
                 optim_D: OptimizerSpec = OptimizerSpec()):
        z_dim = z_dim if z_dim is not None else getattr(G, "z_dim", None)
        if z_dim is None:
            raise ConfigError("cannot tell the generator's latent size; give G a `z_dim` attribute or pass z_dim=")
        if isinstance(n_critic, bool) or not isinstance(n_critic, int) or n_critic < 1:
            raise ConfigError(f"n_critic must be an integer >= 1 (got {n_critic!r})")
        self.nets = {"G": G, "D": D}
        self.objective = objective or Objective()
        self.z_shape = latent_shape(z_dim)
        self.n_critic, self.clip = n_critic, clip
        self._optim = {"G": optim_G, "D": optim_D}

    @classmethod
    def from_spec(cls, spec, cfg, *, nets=None, lr_g=None, lr_d=None, z_dim=None) -> "GanTask":
        """A registered variant's task (``nets``: a G and D to use instead of the family's, such as a user's
        own models through ``fastgan.fuse``)."""
        from fastgan.models import FAMILIES

        if nets is None:
            fam = FAMILIES[spec.family]
            nets = {"G": fam.Generator(cfg), "D": fam.Discriminator(cfg)}
        o = spec.optim
        return cls(nets["G"], nets["D"], spec.objective, z_dim=z_dim, n_critic=spec.n_critic, clip=spec.clip,
                   optim_G=OptimizerSpec(o.name, o.lr_g if lr_g is None else lr_g, o.betas),
                   optim_D=OptimizerSpec(o.name, o.lr_d if lr_d is None else lr_d, o.betas))

    def optimizers(self) -> dict[str, OptimizerSpec]:
        return dict(self._optim)

    def noise(self) -> dict[str, Noise]:
        return {"z": Noise("normal", self.z_shape)}

    def schedule(self) -> list:
        obj = self.objective
        fwd = Forward("G_forward", self._generate, nets=("G",), noise=("z",))
        d_terms = [Term("D_forward", self._d_main, backward="D_backward")]
        if obj.has_penalty:
            d_terms.append(obj.penalty_term(lambda nets, x, b: scores(nets.D(x), x.shape[0]), name="D_penalty"))
        return adversarial_schedule(fwd, d_terms, Term("G_loss", self._g_main, backward="G_backward"),
                                    self.n_critic, self.clip)

    # -- the maths ------------------------------------------------------------------------
    @staticmethod
    def _generate(nets: Nets, b: Batch) -> Batch:
        return {"fake": nets.G(b["z"])}

    def _d_main(self, nets: Nets, b: Batch):
        """Two D forwards, not one over the concatenation: with BatchNorm in D, statistics stay
        per-population (all-real, all-fake) as in the DCGAN recipe."""
        real, fake = b["images"], b["fake"]
        return self.objective.d_loss(scores(nets.D(real), real.shape[0]), scores(nets.D(fake), fake.shape[0]))

    def _g_main(self, nets: Nets, b: Batch):
        fake = b["fake"]
        loss = self.objective.g_loss(scores(nets.D(fake), fake.shape[0]))
        return loss, {"loss_G": loss.detach()}

    # -- sampling and checks --------------------------------------------------------------
    def sample_inputs(self, n: int, generator: torch.Generator, **conditions) -> tuple:
        if conditions:
            raise ConfigError(f"this run is unconditional; sample() takes no {', '.join(sorted(conditions))}")
        return (torch.randn(n, *self.z_shape, generator=generator),)

    def probe(self, batch: int, device: torch.device) -> torch.Size:
        G, D = self.nets["G"], self.nets["D"]
        checks.refuse_sigmoid(D)
        z = torch.randn(batch, *self.z_shape, device=device)
        try:
            fake = G(z)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as e:
            raise ConfigError(f"G failed on latents of shape {tuple(z.shape)}: {checks.first_line(e)}"
                              f"{self._latent_hint(G, z)}") from e
        shape = checks.check_images(fake, batch)
        checks.check_scores(checks.call(D, (fake,), "D", f"G's output of shape {tuple(fake.shape)}"), batch)
        return shape

    def _latent_hint(self, G: nn.Module, z: torch.Tensor) -> str:
        """The DCGAN tutorial's G wants (N, z, 1, 1), an MLP G (N, z): say so only if that is the fix; a G
        that wants labels is a conditional one."""
        n, zs = z.shape[0], self.z_shape
        other = ((zs[0], 1, 1) if len(zs) == 1 else zs[:1] if len(zs) == 3 and tuple(zs[1:]) == (1, 1) else None)
        if other is not None:
            try:
                G(z.view(n, *other))
                return (f"; it runs with z_dim={other if len(other) > 1 else other[0]}" +
                        (", the DCGAN tutorial's latent shape" if len(other) > 1 else ""))
            except Exception:
                pass
        try:
            G(z, torch.zeros(n, dtype=torch.long, device=z.device))
            return "; it takes labels too: pass num_classes=K to fastgan.Trainer for a conditional G(z, labels)"
        except Exception:
            return ""

