"""DCGAN (Radford et al. 2016) generator and discriminator for any power-of-two resolution.

Generator: z (N, z_dim) → 4×4 by a 4×4 transposed conv, then stride-2 transposed convs that
double the resolution and halve the width, each followed by BatchNorm + ReLU; the last one maps
to image channels with tanh. Discriminator: the mirror image, strided convs with LeakyReLU(0.2),
BatchNorm on every block but the first, and a 4×4 conv to one logit per image.
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from fastgan.errors import ConfigError
from fastgan.nn import BiasAct, ConvNormAct
from fastgan.nn.blocks import NORMS

RESOLUTIONS = (16, 32, 64, 128, 256)


@dataclasses.dataclass
class Config:
    resolution: int = 32
    channels: int = 1       # image channels
    z_dim: int = 100
    width: int = 64         # feature maps at the highest resolution (ngf = ndf in the paper)
    max_width: int = 512    # cap on feature maps at low resolution
    num_classes: int = 0    # > 0: class-conditional G (label embedding concatenated to z)
    d_norm: str = "batch"   # D's norm: "batch" (DCGAN) | "instance" | "none" (penalized critics)

    def __post_init__(self):
        if self.resolution not in RESOLUTIONS:
            raise ConfigError(
                f"DCGAN cannot be built at resolution {self.resolution}; use one of {', '.join(map(str, RESOLUTIONS))}"
            )
        if self.channels < 1:
            raise ConfigError(f"channels must be >= 1 (got {self.channels})")
        if self.width < 1 or self.z_dim < 1:
            raise ConfigError(f"width and z_dim must be >= 1 (got width={self.width}, z_dim={self.z_dim})")
        if self.d_norm not in NORMS:
            raise ConfigError(f"unknown d_norm {self.d_norm!r}; choose one of {', '.join(NORMS)}")

    @property
    def num_up(self) -> int:
        return int(math.log2(self.resolution // 4))

    def widths(self) -> list[int]:
        """Feature maps at 4×4, 8×8, ..., resolution/2 (generator order)."""
        return [min(self.width * 2 ** (self.num_up - 1 - i), self.max_width) for i in range(self.num_up)]


class OnDCGANStacks:
    """For a family Config built on DCGAN's up/down stacks (fields resolution, channels, z_dim, width,
    max_width, d_norm): the DCGAN config of those stacks and their widths."""

    def dcgan_config(self, **changes) -> Config:
        """The unconditional DCGAN config of the up/down stacks, with ``changes`` applied."""
        kw = dict(resolution=self.resolution, channels=self.channels, z_dim=self.z_dim, width=self.width,
                  max_width=self.max_width, d_norm=self.d_norm)
        return Config(**{**kw, **changes})

    def widths(self) -> list[int]:
        """Feature maps at 4×4, 8×8, ..., resolution/2 (generator order), as in DCGAN."""
        return self.dcgan_config().widths()


class Generator(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.z_dim, self.num_classes = cfg.z_dim, cfg.num_classes
        w = cfg.widths()
        in_dim = cfg.z_dim + (cfg.num_classes if cfg.num_classes else 0)
        self.embed = nn.Embedding(cfg.num_classes, cfg.num_classes) if cfg.num_classes else None
        blocks = [ConvNormAct(in_dim, w[0], 4, 1, 0, transposed=True, norm="batch", act="relu")]   # 1 → 4
        for a, b in zip(w[:-1], w[1:]):
            blocks.append(ConvNormAct(a, b, 4, 2, 1, transposed=True, norm="batch", act="relu"))  # ×2
        blocks.append(ConvNormAct(w[-1], cfg.channels, 4, 2, 1, transposed=True, norm="none", act="tanh"))
        self.blocks = nn.Sequential(*blocks)
        _dcgan_init(self)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            if labels is None:
                raise ConfigError("this generator is class-conditional; pass labels")
            z = torch.cat([z, self.embed(labels)], dim=1)
        return self.blocks(z[:, :, None, None])  # (N, z) → (N, z, 1, 1) → (N, C, R, R)


class Discriminator(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        w = cfg.widths()[::-1]  # resolution/2, ..., 4×4
        blocks = [ConvNormAct(cfg.channels, w[0], 4, 2, 1, norm="none", act="lrelu", alpha=0.2)]  # R → R/2
        for a, b in zip(w[:-1], w[1:]):
            blocks.append(ConvNormAct(a, b, 4, 2, 1, norm=cfg.d_norm, act="lrelu", alpha=0.2))  # ÷2
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Conv2d(w[-1], 1, 4, 1, 0)  # 4×4 → 1×1 logit
        _dcgan_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x)).flatten()  # (N,)


def _dcgan_init(module: nn.Module) -> None:
    """Weights from N(0, 0.02), norm scales from N(1, 0.02), biases zero (the DCGAN recipe)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, BiasAct) and m.bias is not None:
            nn.init.zeros_(m.bias)
