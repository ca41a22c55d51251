"""FID, KID and precision/recall on feature sets, and the per-dataset ``DomainEvaluator``.

All functions take ``(N, D)`` feature tensors (any float dtype, any device). FID and KID are
torchmetrics' ``FrechetInceptionDistance`` and ``KernelInceptionDistance`` fed with features
(float64 on CPU); precision/recall, which torchmetrics lacks, is computed here with float32
k-NN distances.
"""
from __future__ import annotations

import os
import warnings
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from fastgan.errors import FastganError
from fastgan.latent import latent_shape
from fastgan.metrics.features import DatasetLike, extract_features, get_feature_net, seeded_rng
from fastgan.metrics.inception import InceptionFeatures, load_inception

__all__ = ["fid_from_features", "kid_from_features", "precision_recall", "DomainEvaluator"]

_CHUNK_ELEMS = 1 << 23  # distance-matrix entries per chunk of precision/recall (32-64 MiB)
_CPU = torch.device("cpu")


def _check_pair(a: Tensor, b: Tensor, what: str, min_rows: int) -> None:
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise FastganError(
            f"{what} needs two (N, D) feature sets of the same D, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.shape[0] < min_rows or b.shape[0] < min_rows:
        raise FastganError(
            f"{what} needs at least {min_rows} samples per set, got {a.shape[0]} and {b.shape[0]}"
        )


class _Precomputed(nn.Module):
    """torchmetrics ``feature=`` extractor for features already extracted: ``(N, D)`` -> float64 on CPU."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: Tensor) -> Tensor:
        return x.to(_CPU, torch.float64)


# ---------------------------------------------------------------------------------------- FID


class _Fid:
    """torchmetrics FID of fake feature sets against real features given once (kept across calls)."""

    def __init__(self, real: Tensor) -> None:
        self.num_features = real.shape[1]
        self.metric = FrechetInceptionDistance(feature=_Precomputed(self.num_features), reset_real_features=False)
        self.metric.update(real, real=True)

    def __call__(self, fake: Tensor) -> float:
        self.metric.reset()  # drops the fake statistics only
        self.metric.update(fake, real=False)
        return max(float(self.metric.compute()), 0.0)


def fid_from_features(a: Tensor, b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` and ``b`` (float64).

    ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2))`` with unbiased covariances.
    """
    _check_pair(a, b, "FID", 2)
    return _Fid(a)(b)


# ---------------------------------------------------------------------------------------- KID


class _Kid:
    """torchmetrics KID of fake feature sets against real features given once (kept across calls).

    ``num_subsets`` subsets of ``min(subset_size, n_real, n_fake)`` rows, drawn without
    replacement from each set by ``torch.randperm`` under a forked global RNG seeded with
    ``seed``: the same sets give the same subsets, and the caller's RNG state is untouched.
    """

    def __init__(self, real: Tensor, num_subsets: int = 50, subset_size: int = 1000, seed: int = 0) -> None:
        if num_subsets < 1:
            raise FastganError(f"KID needs num_subsets >= 1, got {num_subsets}")
        if subset_size < 2:
            raise FastganError(f"KID needs subset_size >= 2, got {subset_size}")
        self.num_subsets, self.subset_size, self.seed = num_subsets, subset_size, seed
        with warnings.catch_warnings():  # "KID keeps all features in memory": that is the intent
            warnings.simplefilter("ignore", UserWarning)
            self.metric = KernelInceptionDistance(
                feature=_Precomputed(real.shape[1]), subsets=num_subsets, subset_size=subset_size,
                reset_real_features=False,
            )
        self.metric.update(real, real=True)
        self.num_real = real.shape[0]

    def __call__(self, fake: Tensor) -> tuple[float, float]:
        """Mean and (population) standard deviation of the unbiased MMD² over the subsets."""
        self.metric.reset()  # drops the fake features only
        self.metric.update(fake, real=False)
        self.metric.subset_size = max(2, min(self.subset_size, self.num_real, fake.shape[0]))
        with seeded_rng(self.seed, _CPU):
            mean, std = self.metric.compute()
        return float(mean), float(std)


def kid_from_features(
    a: Tensor, b: Tensor, num_subsets: int = 50, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased MMD² with ``k(x, y) = (x·y/d + 1)^3``, in float64.

    Mean and population standard deviation over ``num_subsets`` random subsets of
    ``subset_size`` rows drawn without replacement from each set (clipped to the smaller set),
    seeded by ``seed``.
    """
    _check_pair(a, b, "KID", 2)
    return _Kid(a, num_subsets, subset_size, seed)(b)


# -------------------------------------------------------------------------- precision/recall


def _sqdist(a: Tensor, b: Tensor, a2: Tensor, b2: Tensor) -> Tensor:
    """Squared Euclidean distances ``(len(a), len(b))`` from precomputed squared norms."""
    return (a2[:, None] + b2[None, :] - 2 * (a @ b.T)).clamp_min_(0)


def _knn_radii(x: Tensor, k: int) -> Tensor:
    """Squared distance from each row of ``x`` to its k-th nearest other row (chunked)."""
    n = x.shape[0]
    if n <= k:
        raise FastganError(f"precision/recall with k={k} needs more than {k} samples per set, got {n}")
    x2 = x.square().sum(1)
    chunk = max(1, _CHUNK_ELEMS // n)
    out = torch.empty(n, dtype=x.dtype, device=x.device)
    for i in range(0, n, chunk):
        d = _sqdist(x[i : i + chunk], x, x2[i : i + chunk], x2)
        out[i : i + chunk] = d.kthvalue(k + 1, dim=1).values  # +1: the point itself is at 0
    return out


def _pr_from_radii(real: Tensor, fake: Tensor, r_real: Tensor, r_fake: Tensor) -> tuple[float, float]:
    """One chunked pass over fake×real distances gives both precision and recall."""
    real2, fake2 = real.square().sum(1), fake.square().sum(1)
    chunk = max(1, _CHUNK_ELEMS // real.shape[0])
    fake_in = torch.zeros(fake.shape[0], dtype=torch.bool, device=fake.device)
    real_in = torch.zeros(real.shape[0], dtype=torch.bool, device=real.device)
    for i in range(0, fake.shape[0], chunk):
        d = _sqdist(fake[i : i + chunk], real, fake2[i : i + chunk], real2)  # (c, n_real)
        fake_in[i : i + chunk] = (d <= r_real[None, :]).any(1)
        real_in |= (d <= r_fake[i : i + chunk, None]).any(0)
    return float(fake_in.float().mean()), float(real_in.float().mean())


def _centered32(x: Tensor, center: Tensor) -> Tensor:
    """float32 copy of ``x - center``; centring on the real mean keeps |a|²+|b|²-2ab accurate."""
    return (x.to(center.device, torch.float64) - center).float()


def precision_recall(real: Tensor, fake: Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN manifold estimates.

    Precision: share of fakes inside some real sample's k-NN ball; recall: share of reals
    inside some fake sample's k-NN ball. Distances are computed in chunks to bound memory.
    """
    _check_pair(real, fake, "precision/recall", k + 1)
    center = real.to(torch.float64).mean(0)
    r, f = _centered32(real, center), _centered32(fake, center)
    return _pr_from_radii(r, f, _knn_radii(r, k), _knn_radii(f, k))


# ----------------------------------------------------------------------------------- evaluator


class DomainEvaluator:
    """FID/KID/precision/recall of generated images against one dataset, in its domain features.

    Builds (or loads from the cache) the dataset's feature network and extracts the real
    features once: all images, or a fixed seeded choice of ``num_real`` of them. ``feature_net``
    replaces the domain network with any module that has ``features(x) -> (N, D)``.
    ``inception`` (an ``InceptionFeatures`` or the path of the FID Inception weights, see
    ``fastgan.metrics.inception``) adds ``fid_inception``, an Inception FID comparable with
    published ones, to every report.
    """

    PR_K = 3
    INCEPTION_BATCH = 100  # images per Inception forward (299x299 activations are large)

    def __init__(
        self,
        dataset: DatasetLike,
        *,
        device: str | torch.device = "cpu",
        num_real: int | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        feature_net: nn.Module | None = None,
        inception: InceptionFeatures | str | os.PathLike[str] | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.dataset_name = str(dataset.name)
        if feature_net is None:
            self.net: nn.Module = get_feature_net(dataset, device=self.device, cache_dir=cache_dir)
            self.feature_space = (
                f"domain classifier trained on {self.dataset_name} "
                "(not Inception; comparable across fastgan runs on this dataset only)"
            )
        else:
            self.net = feature_net.to(self.device).eval().requires_grad_(False)
            self.feature_space = f"user-supplied {type(feature_net).__name__} features"
        if inception is not None and not isinstance(inception, nn.Module):
            inception = load_inception(inception, device=self.device)
        self.inception: InceptionFeatures | None = inception
        images: Tensor = dataset.images
        n = images.shape[0]
        if num_real is not None and num_real < n:
            if num_real <= self.PR_K:
                raise FastganError(f"num_real must be > {self.PR_K}, got {num_real}")
            gen = torch.Generator().manual_seed(0)
            idx = torch.randperm(n, generator=gen)[:num_real].sort().values
            images = images[idx]
        self.image_shape = tuple(images.shape[1:])
        self.real_features = extract_features(self.net, images, device=self.device, desc="real features")
        self.num_real = self.real_features.shape[0]
        self._fid = _Fid(self.real_features)
        self._kid = _Kid(self.real_features)
        self._pr_center = self.real_features.mean(0)
        self._pr_real = _centered32(self.real_features, self._pr_center)
        self._pr_radii = _knn_radii(self._pr_real, self.PR_K)
        self._fid_inception: _Fid | None = None
        if self.inception is not None:
            self._fid_inception = _Fid(self._inception_features(images, "real Inception features"))

    def _inception_features(self, images: Tensor, desc: str) -> Tensor:
        return extract_features(self.inception, images, self.INCEPTION_BATCH, self.device, desc=desc)  # type: ignore[arg-type]

    def evaluate_features(self, fake: Tensor, fake_inception: Tensor | None = None) -> dict[str, Any]:
        """All metrics for precomputed fake features ``(M, D)``; ``fid_inception`` too when
        ``fake_inception`` (the same images' Inception features) is given to an evaluator that has one."""
        _check_pair(self.real_features, fake, "DomainEvaluator", self.PR_K + 1)
        kid, kid_std = self._kid(fake)
        f = _centered32(fake, self._pr_center)
        precision, recall = _pr_from_radii(self._pr_real, f, self._pr_radii, _knn_radii(f, self.PR_K))
        report: dict[str, Any] = {
            "fid": self._fid(fake),
            "kid": kid,
            "kid_std": kid_std,
            "precision": precision,
            "recall": recall,
            "num_real": self.num_real,
            "num_fake": int(fake.shape[0]),
            "feature_space": self.feature_space,
        }
        if fake_inception is not None:
            if self._fid_inception is None:
                raise FastganError("this DomainEvaluator has no Inception network; build it with inception=WEIGHTS")
            d = self._fid_inception.num_features
            if fake_inception.shape != (fake.shape[0], d):
                raise FastganError(
                    f"fake_inception must be ({fake.shape[0]}, {d}) features of the same images, "
                    f"got {tuple(fake_inception.shape)}"
                )
            report["fid_inception"] = self._fid_inception(fake_inception)
        return report

    def evaluate_images(self, fake_images: Tensor) -> dict[str, Any]:
        """All metrics for fake images shaped like the dataset's ``(M, C, R, R)`` in [-1, 1]."""
        if tuple(fake_images.shape[1:]) != self.image_shape:
            raise FastganError(
                f"fake images have shape {tuple(fake_images.shape[1:])} per image but dataset "
                f"{self.dataset_name!r} has {self.image_shape}; generate at the dataset's resolution"
            )
        fake = extract_features(self.net, fake_images, device=self.device, desc="fake features")
        fake_inception = None
        if self.inception is not None:
            fake_inception = self._inception_features(fake_images, "fake Inception features")
        return self.evaluate_features(fake, fake_inception)

    def evaluate_generator(
        self,
        G: nn.Module,
        num_images: int = 2000,
        batch_size: int = 250,
        z_dim: int | tuple[int, ...] | None = None,
        device: str | torch.device | None = None,
        seed: int = 0,
        labels: Tensor | None = None,
    ) -> dict[str, Any]:
        """Sample ``num_images`` from ``G`` and evaluate them.

        ``z ~ N(0, 1)`` of shape ``(B, z_dim or G.z_dim)`` (a tuple ``z_dim`` gives ``(B, *z_dim)``) from a
        private ``torch.Generator(seed)``;
        a conditional ``G`` (``G.num_classes > 0``) gets ``labels`` or uniformly random ones as
        ``G(z, labels)``. Runs under ``no_grad`` with ``G`` in eval mode (its mode restored
        afterwards) and inside a forked RNG, so the global RNG state is left untouched.
        Outputs are clamped to [-1, 1], the range images are saved in.
        """
        if z_dim is None:
            if not hasattr(G, "z_dim"):
                raise FastganError("the generator has no z_dim attribute; pass z_dim= to evaluate_generator")
            z_dim = G.z_dim
        z_shape = latent_shape(z_dim)
        if device is None:
            p = next(G.parameters(), None)
            device = p.device if p is not None else self.device
        device = torch.device(device)
        num_classes = int(getattr(G, "num_classes", 0) or 0)
        if labels is not None:
            if labels.shape != (num_images,):
                raise FastganError(f"labels must have shape ({num_images},), got {tuple(labels.shape)}")
        gen = torch.Generator().manual_seed(seed)
        was_training = G.training
        G.eval()
        chunks: list[Tensor] = []
        try:
            with seeded_rng(seed, device), torch.no_grad():  # seeded: for any noise G draws itself
                for i in range(0, num_images, batch_size):
                    b = min(batch_size, num_images - i)
                    z = torch.randn(b, *z_shape, generator=gen).to(device)
                    if labels is not None:
                        y: Tensor | None = labels[i : i + b].to(device=device, dtype=torch.long)
                    elif num_classes > 0:
                        y = torch.randint(0, num_classes, (b,), generator=gen).to(device)
                    else:
                        y = None
                    x = G(z) if y is None else G(z, y)
                    chunks.append(x.float().clamp(-1, 1))
        finally:
            G.train(was_training)
        return self.evaluate_images(torch.cat(chunks))
