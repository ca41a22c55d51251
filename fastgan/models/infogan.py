"""InfoGAN (Chen et al. 2016, "InfoGAN: Interpretable Representation Learning by Information
Maximizing Generative Adversarial Nets") networks on the DCGAN stacks.

G(z, c) sees the noise z concatenated with the latent codes c: ``num_categorical`` one-hot
categorical codes of ``categorical_dim`` values each, then ``num_continuous`` continuous codes.
D returns its realness logit together with its trunk features, on which the separate ``QHead``
predicts the codes (categorical logits, and a factored Gaussian's mean and log-variance for the
continuous ones), so Q shares all of D's convolutions as in the paper.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from fastgan.errors import ConfigError
from fastgan.models import dcgan
from fastgan.nn import BatchNormAct1d


@dataclasses.dataclass
class Config(dcgan.OnDCGANStacks):
    resolution: int = 32
    channels: int = 1               # image channels
    z_dim: int = 62                 # incompressible noise
    num_categorical: int = 1        # categorical codes
    categorical_dim: int = 10       # values per categorical code
    num_continuous: int = 2         # continuous codes
    width: int = 64                 # feature maps at the highest resolution
    max_width: int = 512            # cap on feature maps at low resolution
    d_norm: str = "batch"           # D's norm: "batch" | "instance" | "none"
    q_hidden: int = 128             # width of Q's hidden layer

    def __post_init__(self):
        self.dcgan_config()  # resolution, channels, width, z_dim, d_norm: validated as for DCGAN
        if self.num_categorical < 0 or self.num_continuous < 0:
            raise ConfigError(f"num_categorical and num_continuous must be >= 0 "
                              f"(got {self.num_categorical}, {self.num_continuous})")
        if self.num_categorical and self.categorical_dim < 2:
            raise ConfigError(f"categorical_dim must be >= 2 (got {self.categorical_dim}); "
                              "a categorical code needs two values or more")
        if self.code_dim == 0:
            raise ConfigError("InfoGAN needs a latent code; set num_categorical >= 1 or num_continuous >= 1")
        if self.q_hidden < 1:
            raise ConfigError(f"q_hidden must be >= 1 (got {self.q_hidden})")

    @property
    def code_dim(self) -> int:
        """Width of G's code input: the one-hot categorical codes, then the continuous codes."""
        return self.num_categorical * self.categorical_dim + self.num_continuous

    @property
    def feat_dim(self) -> int:
        """Width of D's features: its final 4×4 trunk output, flattened."""
        return self.widths()[0] * 4 * 4


def make_codes(cfg: Config, categorical: torch.Tensor, continuous: torch.Tensor) -> torch.Tensor:
    """G's code input from categorical (N, num_categorical) int indices and continuous (N, num_continuous) values.

    Returns (N, code_dim): the one-hot codes flattened in order, then the continuous values.
    """
    onehot = F.one_hot(categorical, cfg.categorical_dim).to(continuous.dtype)  # (N, k, d)
    return torch.cat([onehot.flatten(1), continuous], dim=1)  # (N, k*d + c)


def sample_codes(cfg: Config, n: int, device: torch.device | str | None = None,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw n codes from the paper's prior: categorical uniform, continuous uniform on [-1, 1].

    Returns (codes (n, code_dim), categorical (n, num_categorical) int64, continuous (n, num_continuous)).
    """
    categorical = torch.randint(cfg.categorical_dim, (n, cfg.num_categorical), device=device, generator=generator)
    continuous = torch.rand(n, cfg.num_continuous, device=device, generator=generator) * 2 - 1
    return make_codes(cfg, categorical, continuous), categorical, continuous


class Generator(nn.Module):
    """G(z (N, z_dim), codes (N, code_dim)) → images (N, C, R, R) in [-1, 1]."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.z_dim, self.code_dim = cfg.z_dim, cfg.code_dim
        self.blocks = dcgan.Generator(cfg.dcgan_config(z_dim=cfg.z_dim + cfg.code_dim)).blocks

    def forward(self, z: torch.Tensor, codes: torch.Tensor | None = None) -> torch.Tensor:
        if codes is None:
            raise ConfigError("this InfoGAN generator needs latent codes; "
                              "pass codes from fastgan.models.infogan.sample_codes")
        if codes.dim() != 2 or codes.shape[0] != z.shape[0] or codes.shape[1] != self.code_dim:
            raise ConfigError(f"codes must have shape ({z.shape[0]}, {self.code_dim}), one-hot categorical codes then "
                              f"continuous ones (got {tuple(codes.shape)}); build them with infogan.make_codes")
        h = torch.cat([z, codes.to(z.dtype)], dim=1)  # (N, z_dim + code_dim)
        return self.blocks(h[:, :, None, None])  # (N, z+c, 1, 1) → (N, C, R, R)


class Discriminator(nn.Module):
    """D(x (N, C, R, R)) → (logits (N,), features (N, feat_dim)); Q reads the features."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.feat_dim = cfg.feat_dim
        d = dcgan.Discriminator(cfg.dcgan_config())
        self.blocks, self.head = d.blocks, d.head  # (N, C, R, R) → (N, F, 4, 4) → (N, 1, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.blocks(x)  # (N, F, 4, 4)
        return self.head(h).flatten(), h.flatten(1)  # (N,), (N, F*4*4)


class QHead(nn.Module):
    """Q(features (N, feat_dim)) → (cat_logits (N, num_categorical, categorical_dim),
    cont_mean (N, num_continuous), cont_logvar (N, num_continuous)).

    Linear → BatchNorm1d + LeakyReLU(0.2) → Linear, the paper's Q layers on top of D's trunk.
    """

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.num_categorical, self.categorical_dim = cfg.num_categorical, cfg.categorical_dim
        self.num_continuous = cfg.num_continuous
        self.hidden = nn.Linear(cfg.feat_dim, cfg.q_hidden, bias=False)  # the norm's shift replaces the bias
        self.norm = BatchNormAct1d(cfg.q_hidden, act="lrelu", alpha=0.2)
        self.out = nn.Linear(cfg.q_hidden, cfg.num_categorical * cfg.categorical_dim + 2 * cfg.num_continuous)
        dcgan._dcgan_init(self)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.out(self.norm(self.hidden(features)))  # (N, k*d + 2c)
        k, d, c = self.num_categorical, self.categorical_dim, self.num_continuous
        cat_logits = out[:, : k * d].view(out.shape[0], k, d)  # (N, k*d) → (N, k, d)
        cont_mean, cont_logvar = out[:, k * d: k * d + c], out[:, k * d + c:]  # (N, c), (N, c)
        return cat_logits, cont_mean, cont_logvar
