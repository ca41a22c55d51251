"""Class-conditional DCGAN-shaped networks: cGAN, AC-GAN and projection discriminators.

Generator (Mirza & Osindero 2014, "Conditional Generative Adversarial Nets"): a learned label
embedding concatenated to z, then the DCGAN up-stack. The discriminator is the DCGAN down-stack
with the label brought in one of three ways (``Config.d_kind``):

- ``"concat"`` (Mirza & Osindero 2014): the label embedded to one R×R map, joined to the image
  as an extra input channel; ``D(x, labels) → logits (N,)``.
- ``"acgan"`` (Odena et al. 2017, "Conditional Image Synthesis with Auxiliary Classifier GANs"):
  the label is not an input; a realness logit and an auxiliary classifier share the trunk;
  ``D(x) → (logits (N,), class_logits (N, num_classes))``.
- ``"projection"`` (Miyato & Koyama 2018, "cGANs with Projection Discriminator"):
  ``D(x, y) = psi(phi(x)) + <embed(y), phi(x)>`` with phi(x) the trunk's sum-pooled features;
  ``D(x, labels) → logits (N,)``.

Label values are range-checked by ``check_labels``: a trainer calls it on each batch before
the step; forward reads label values only for CPU tensors outside torch.compile, so compiled
and CUDA-graph-captured steps never synchronize with the host.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from fastgan.errors import ConfigError
from fastgan.models import dcgan

D_KINDS = ("concat", "acgan", "projection")
LABEL_DTYPES = (torch.int64, torch.int32)  # the index dtypes nn.Embedding accepts


@dataclasses.dataclass
class Config(dcgan.OnDCGANStacks):
    resolution: int = 32
    channels: int = 1               # image channels
    z_dim: int = 100
    width: int = 64                 # feature maps at the highest resolution
    max_width: int = 512            # cap on feature maps at low resolution
    num_classes: int = 10
    d_norm: str = "batch"           # D's norm: "batch" | "instance" | "none"
    d_kind: str = "concat"          # how D sees the label: "concat" | "acgan" | "projection"
    embed_dim: int | None = None    # G's label embedding width; None → num_classes

    def __post_init__(self):
        self.dcgan_config()  # resolution, channels, width, z_dim, d_norm: validated as for DCGAN
        if self.num_classes < 2:
            raise ConfigError(f"a conditional GAN needs num_classes >= 2 (got {self.num_classes}); "
                              "use the dcgan family for unlabelled data")
        if self.d_kind not in D_KINDS:
            raise ConfigError(f"unknown d_kind {self.d_kind!r}; choose one of {', '.join(D_KINDS)}")
        if self.embed_dim is not None and self.embed_dim < 1:
            raise ConfigError(f"embed_dim must be >= 1, or None for num_classes (got {self.embed_dim})")

    @property
    def label_dim(self) -> int:
        """Width of G's label embedding."""
        return self.num_classes if self.embed_dim is None else self.embed_dim

    @property
    def feat_dim(self) -> int:
        """Channels of D's final 4×4 trunk output."""
        return self.widths()[0]


def check_labels(labels: torch.Tensor | None, num_classes: int, batch: int | None = None, *,
                 check_range: bool = True) -> None:
    """Raise a one-line ConfigError unless ``labels`` is a (batch,) integer tensor of values in [0, num_classes).

    ``check_range`` reads the values, a host synchronization for CUDA tensors: call it outside
    the training step (once per batch, before it), never inside a compiled or captured one.
    """
    if labels is None:
        raise ConfigError("this network is class-conditional; pass labels, a (N,) int64 tensor of class indices")
    if labels.dtype not in LABEL_DTYPES:
        raise ConfigError(f"labels must be integer class indices (got dtype {labels.dtype}); pass labels.long()")
    if labels.dim() != 1 or (batch is not None and labels.shape[0] != batch):
        want = f"({batch},)" if batch is not None else "(N,)"
        raise ConfigError(f"labels must have shape {want}, one class index per image (got {tuple(labels.shape)})")
    if check_range and labels.numel():
        lo, hi = (int(v) for v in torch.aminmax(labels))
        if lo < 0 or hi >= num_classes:
            fix = "fix the labels" + (f" or set num_classes={hi + 1}" if lo >= 0 else "")
            raise ConfigError(f"labels must lie in [0, {num_classes}) (got min {lo}, max {hi}); {fix}")


def _can_read(labels: torch.Tensor | None) -> bool:
    """Whether forward may read label values: CPU tensors outside torch.compile (no device sync, no graph break)."""
    return labels is not None and labels.device.type == "cpu" and not torch.compiler.is_compiling()


class Generator(nn.Module):
    """G(z (N, z_dim), labels (N,) int) → images (N, C, R, R) in [-1, 1]."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.z_dim, self.num_classes = cfg.z_dim, cfg.num_classes
        self.embed = nn.Embedding(cfg.num_classes, cfg.label_dim)
        self.blocks = dcgan.Generator(cfg.dcgan_config(z_dim=cfg.z_dim + cfg.label_dim)).blocks

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        check_labels(labels, self.num_classes, z.shape[0], check_range=_can_read(labels))
        h = torch.cat([z, self.embed(labels).to(z.dtype)], dim=1)  # (N, z_dim + label_dim)
        return self.blocks(h[:, :, None, None])  # (N, z+e, 1, 1) → (N, C, R, R)


class ConcatDiscriminator(nn.Module):
    """cGAN D(x (N, C, R, R), labels (N,) int) → logits (N,); the label enters as one learned R×R input channel."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.num_classes, self.resolution = cfg.num_classes, cfg.resolution
        self.label_map = nn.Embedding(cfg.num_classes, cfg.resolution * cfg.resolution)
        d = dcgan.Discriminator(cfg.dcgan_config(channels=cfg.channels + 1))
        self.blocks, self.head = d.blocks, d.head  # (N, C+1, R, R) → (N, F, 4, 4) → (N, 1, 1, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        check_labels(labels, self.num_classes, x.shape[0], check_range=_can_read(labels))
        r = self.resolution
        y = self.label_map(labels).view(-1, 1, r, r).to(x.dtype)  # (N, R*R) → (N, 1, R, R)
        h = self.blocks(torch.cat([x, y], dim=1))  # (N, F, 4, 4)
        return self.head(h).flatten()  # (N,)


class ACGANDiscriminator(nn.Module):
    """AC-GAN D(x (N, C, R, R)) → (logits (N,), class_logits (N, num_classes)); ``labels`` is accepted and ignored."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.blocks = dcgan.Discriminator(cfg.dcgan_config()).blocks  # (N, C, R, R) → (N, F, 4, 4)
        self.head = nn.Conv2d(cfg.feat_dim, 1 + cfg.num_classes, 4, 1, 0)  # 4×4 → realness and class logits
        dcgan._dcgan_init(self.head)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.head(self.blocks(x)).flatten(1)  # (N, 1 + num_classes)
        return out[:, 0], out[:, 1:]


class ProjectionDiscriminator(nn.Module):
    """Projection D(x (N, C, R, R), labels (N,) int) → logits (N,) = psi(phi(x)) + <embed(labels), phi(x)>."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.blocks = dcgan.Discriminator(cfg.dcgan_config()).blocks  # (N, C, R, R) → (N, F, 4, 4)
        self.psi = nn.Linear(cfg.feat_dim, 1)
        self.embed = nn.Embedding(cfg.num_classes, cfg.feat_dim)  # one projection vector per class
        dcgan._dcgan_init(self.psi)
        nn.init.normal_(self.embed.weight, 0.0, 0.02)  # same scale as psi's weight

    def parts(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(realness psi(phi(x)) (N,), class match <embed(labels), phi(x)> (N,)); forward returns their sum."""
        check_labels(labels, self.num_classes, x.shape[0], check_range=_can_read(labels))
        phi = self.blocks(x).sum(dim=(2, 3))  # (N, F, 4, 4) → (N, F), global sum pooling
        realness = self.psi(phi).flatten()  # (N,)
        match = (self.embed(labels).to(phi.dtype) * phi).sum(dim=1)  # (N, F) · (N, F) → (N,)
        return realness, match

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        realness, match = self.parts(x, labels)
        return realness + match  # (N,)


DISCRIMINATORS: dict[str, type[nn.Module]] = {
    "concat": ConcatDiscriminator,
    "acgan": ACGANDiscriminator,
    "projection": ProjectionDiscriminator,
}


def Discriminator(cfg: Config) -> nn.Module:  # noqa: N802  (the family's D constructor, like dcgan.Discriminator)
    """The discriminator for ``cfg.d_kind``: a ConcatDiscriminator, ACGANDiscriminator or ProjectionDiscriminator."""
    return DISCRIMINATORS[cfg.d_kind](cfg)
