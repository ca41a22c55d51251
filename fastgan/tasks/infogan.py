"""InfoGAN (Chen et al. 2016): G(z, c) with latent codes c that a Q head, sharing D's trunk, must recover.

Networks: ``G`` (z and the codes), ``D`` (image → (score, trunk features)) and ``Q`` (trunk features → the
codes' categorical logits and a Gaussian mean / log-variance for the continuous ones). The mutual-information
term, the negative variational bound :func:`~fastgan.tasks.terms.mutual_information_loss` weighted by λ, is in
both updates, as in the paper's reference code: the D update trains D's trunk and Q to recover the codes of
the (detached) fakes, beside D's adversarial loss; the G update trains G to make codes recoverable, beside
its adversarial loss (D and Q frozen there). Codes are drawn on the device: ``num_categorical`` uniform
categoricals and ``num_continuous`` uniform(-1, 1) values. The defaults are the paper's MNIST setting as its
reference code (openai/InfoGAN ``run_mnist_exp.py``) runs it: one 10-way code, two continuous codes, 62
uniform(-1, 1) noise dimensions (``z_prior``), λ = 1 for both code kinds with Q's Gaussian at unit variance
(``fix_std=True``; ``learned_std=True`` uses Q's log-variance output instead), Adam with lr 2e-4 for D and Q
and 1e-3 for G. On mnist5k the uniform noise and the fixed variance matter: with normal noise and a learned
variance weighted 0.1 the categorical code aligned with the digit classes less well (README, "Variants").
"""
from __future__ import annotations

import torch
from torch import nn

from fastgan.errors import ConfigError
from fastgan.tasks import checks
from fastgan.tasks.base import Batch, Forward, Nets, Noise, OptimizerSpec, Task, Term, Update
from fastgan.tasks.terms import Objective, mutual_information_loss, scores


class InfoGanTask(Task):
    """G(z, codes), D(x) → (score, features), Q(features) → code estimates (module doc)."""

    def __init__(self, G: nn.Module, D: nn.Module, Q: nn.Module, objective: Objective | None = None, *, cfg,
                 info_weight: float = 1.0, cont_weight: float = 1.0, learned_std: bool = False,
                 z_prior: str = "uniform", optim_G: OptimizerSpec = OptimizerSpec(lr=1e-3),
                 optim_D: OptimizerSpec = OptimizerSpec(), optim_Q: OptimizerSpec = OptimizerSpec()):
        self.nets = {"G": G, "D": D, "Q": Q}
        self.objective = objective or Objective()
        self.cfg = cfg
        self.z_shape = (cfg.z_dim,)
        self.info_weight, self.cont_weight = float(info_weight), float(cont_weight)
        self.learned_std = bool(learned_std)
        if z_prior not in ("normal", "uniform"):
            raise ConfigError(f"InfoGAN's z_prior must be 'normal' or 'uniform' (got {z_prior!r})")
        self.z_prior = z_prior
        self.num_classes = cfg.categorical_dim if cfg.num_categorical else 0   # the first code's values
        self._optim = {"G": optim_G, "D": optim_D, "Q": optim_Q}

    @classmethod
    def from_spec(cls, spec, cfg, *, nets=None, lr_g=None, lr_d=None, z_dim=None) -> "InfoGanTask":
        from fastgan.models import infogan

        if z_dim is not None and z_dim != cfg.z_dim:
            raise ConfigError("InfoGAN takes its noise size from its model config (z_dim)")
        nets = nets or {"G": infogan.Generator(cfg), "D": infogan.Discriminator(cfg), "Q": infogan.QHead(cfg)}
        o = spec.optim
        return cls(nets["G"], nets["D"], nets["Q"], spec.objective, cfg=cfg, **spec.options,
                   optim_G=OptimizerSpec(o.name, o.lr_g if lr_g is None else lr_g, o.betas),
                   optim_D=OptimizerSpec(o.name, o.lr_d if lr_d is None else lr_d, o.betas),
                   optim_Q=OptimizerSpec(o.name, o.lr_d if lr_d is None else lr_d, o.betas))

    def optimizers(self) -> dict[str, OptimizerSpec]:
        return dict(self._optim)

    def noise(self) -> dict[str, Noise]:
        c = self.cfg
        z = (Noise("normal", self.z_shape) if self.z_prior == "normal"
             else Noise("uniform", self.z_shape, low=-1.0, high=1.0))
        return {"z": z,
                "cat": Noise("categorical", (c.num_categorical,), classes=max(c.categorical_dim, 1)),
                "cont": Noise("uniform", (c.num_continuous,), low=-1.0, high=1.0)}

    def schedule(self) -> list:
        fwd = Forward("G_forward", self._generate, nets=("G",), noise=("z", "cat", "cont"))
        return [fwd,
                Update("D", ("D", "Q"), (Term("D_forward", self._d_main, backward="D_backward"),)),
                Update("G", ("G",), (Term("G_loss", self._g_main, backward="G_backward"),), data=False)]

    # -- the maths ------------------------------------------------------------------------
    def _codes(self, cat: torch.Tensor, cont: torch.Tensor) -> torch.Tensor:
        from fastgan.models.infogan import make_codes

        return make_codes(self.cfg, cat, cont)

    def _generate(self, nets: Nets, b: Batch) -> Batch:
        return {"fake": nets.G(b["z"], self._codes(b["cat"], b["cont"]))}

    def _mi(self, nets: Nets, feats: torch.Tensor, b: Batch):
        """λ-weighted MI term of Q on D's trunk features of the fakes, and its stats."""
        cat_logits, mean, logvar = nets.Q(feats)
        c = self.cfg
        mi, stats = mutual_information_loss(cat_logits if c.num_categorical else None, b["cat"],
                                            mean if c.num_continuous else None, logvar if self.learned_std else None, b["cont"],
                                            cont_weight=self.cont_weight)
        return self.info_weight * mi, stats

    def _d_main(self, nets: Nets, b: Batch):
        real, fake = b["images"], b["fake"]
        fake_logits, feats = nets.D(fake)
        loss, stats = self.objective.d_loss(scores(nets.D(real)[0], real.shape[0]), scores(fake_logits, fake.shape[0]))
        mi, mi_stats = self._mi(nets, feats, b)
        return loss + mi, {**stats, **{f"{k}_D": v for k, v in mi_stats.items()}}

    def _g_main(self, nets: Nets, b: Batch):
        fake = b["fake"]
        logits, feats = nets.D(fake)
        adv = self.objective.g_loss(scores(logits, fake.shape[0]))
        mi, stats = self._mi(nets, feats, b)
        return adv + mi, {"loss_G": adv.detach(), **stats}

    # -- sampling and checks --------------------------------------------------------------
    def sample_inputs(self, n: int, generator: torch.Generator, labels=None, continuous=None, **conditions) -> tuple:
        """Noise and codes for ``n`` samples; ``labels=`` fixes the first categorical code (an int, or one per
        image), ``continuous=`` the continuous codes ((num_continuous,) or (n, num_continuous))."""
        if conditions:
            raise ConfigError(f"sample() takes labels= and continuous= for InfoGAN, not {', '.join(sorted(conditions))}")
        c = self.cfg
        noise = self.noise()                   # the priors training draws from, here on the CPU's generator
        z, cat, cont = (noise[k].draw(n, "cpu", generator) for k in ("z", "cat", "cont"))
        if labels is not None:
            if not c.num_categorical:
                raise ConfigError("this InfoGAN has no categorical code; sample() takes no labels=")
            y = torch.as_tensor(labels).long().reshape(-1)
            y = y.expand(n).clone() if y.numel() == 1 else y
            if y.numel() != n or int(y.min()) < 0 or int(y.max()) >= c.categorical_dim:
                raise ConfigError(f"labels must be one code value in 0..{c.categorical_dim - 1} or one per image "
                                  f"({n}); got {labels!r}")
            cat[:, 0] = y
        if continuous is not None:
            v = torch.as_tensor(continuous, dtype=torch.float32)
            try:
                cont = v.expand(n, c.num_continuous).clone()
            except RuntimeError:
                raise ConfigError(f"continuous= must have shape ({c.num_continuous},) or ({n}, {c.num_continuous}); "
                                  f"got {tuple(v.shape)}") from None
        return z, self._codes(cat, cont)

    def probe(self, batch: int, device: torch.device) -> torch.Size:
        G, D, Q = self.nets["G"], self.nets["D"], self.nets["Q"]
        noise = self.noise()
        z = noise["z"].draw(batch, device)
        codes = self._codes(noise["cat"].draw(batch, device), noise["cont"].draw(batch, device))
        fake = checks.call(G, (z, codes), "G", f"latents {tuple(z.shape)} and codes {tuple(codes.shape)}")
        shape = checks.check_images(fake, batch)
        out = checks.call(D, (fake,), "D", f"G's output of shape {tuple(fake.shape)}")
        if not (isinstance(out, tuple) and len(out) == 2):
            raise ConfigError("an InfoGAN D must return (scores (N,), trunk features (N, F))")
        checks.check_scores(out[0], batch)
        checks.call(Q, (out[1],), "Q", f"D's features of shape {tuple(out[1].shape)}")
        return shape
