"""FID, KID and precision/recall on feature sets, and the per-dataset ``DomainEvaluator``.

All functions take ``(N, D)`` feature tensors (any float dtype, any device; the maths runs in
float64 on CPU for FID/KID and in float32 for the k-NN distances of precision/recall).
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn

from fastgan.errors import FastganError
from fastgan.latent import latent_shape
from fastgan.metrics.features import DatasetLike, extract_features, get_feature_net, seeded_rng

__all__ = ["fid_from_features", "kid_from_features", "precision_recall", "DomainEvaluator"]

_CHUNK_ELEMS = 1 << 23  # distance/kernel-matrix entries per chunk (32-64 MiB)


def _check_pair(a: Tensor, b: Tensor, what: str, min_rows: int) -> None:
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise FastganError(
            f"{what} needs two (N, D) feature sets of the same D, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.shape[0] < min_rows or b.shape[0] < min_rows:
        raise FastganError(
            f"{what} needs at least {min_rows} samples per set, got {a.shape[0]} and {b.shape[0]}"
        )


# ---------------------------------------------------------------------------------------- FID


def _psd_sqrt(s: Tensor) -> Tensor:
    """Symmetric square root of a symmetric PSD matrix (tiny negative eigenvalues clamped)."""
    w, v = torch.linalg.eigh(s)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def _gaussian(feats: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and unbiased covariance, float64."""
    x = feats.to("cpu", torch.float64)
    mu = x.mean(0)
    xc = x - mu
    return mu, xc.T @ xc / (x.shape[0] - 1)


def _fid_from_stats(mu1: Tensor, s1: Tensor, mu2: Tensor, s2: Tensor, sqrt_s1: Tensor | None = None) -> float:
    """``|mu1-mu2|^2 + tr(S1) + tr(S2) - 2 tr((sqrt(S1) S2 sqrt(S1))^(1/2))``."""
    r = _psd_sqrt(s1) if sqrt_s1 is None else sqrt_s1
    m = r @ s2 @ r
    m = (m + m.T) / 2
    tr_covmean = torch.linalg.eigvalsh(m).clamp_min(0).sqrt().sum()
    fid = (mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * tr_covmean
    return max(float(fid), 0.0)


def fid_from_features(a: Tensor, b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` and ``b`` (float64)."""
    _check_pair(a, b, "FID", 2)
    mu1, s1 = _gaussian(a)
    mu2, s2 = _gaussian(b)
    return _fid_from_stats(mu1, s1, mu2, s2)


# ---------------------------------------------------------------------------------------- KID


def _kid_subsets(n_a: int, n_b: int, num_subsets: int, subset_size: int, seed: int) -> tuple[Tensor, Tensor]:
    """Subset indices ``(num_subsets, m)`` for each set; all of ``a``'s are drawn first, so
    they depend only on ``(n_a, m, num_subsets, seed)``."""
    if num_subsets < 1:
        raise FastganError(f"KID needs num_subsets >= 1, got {num_subsets}")
    m = max(2, min(subset_size, n_a, n_b))
    gen = torch.Generator().manual_seed(seed)
    ia = torch.stack([torch.randperm(n_a, generator=gen)[:m] for _ in range(num_subsets)])
    ib = torch.stack([torch.randperm(n_b, generator=gen)[:m] for _ in range(num_subsets)])
    return ia, ib


def _poly_kernel(x: Tensor, y: Tensor) -> Tensor:
    """``(x·y/d + 1)^3`` for all row pairs."""
    return (x @ y.T / x.shape[1] + 1).pow_(3)


def _kernel_subset_sums(x: Tensor, y: Tensor, ix: Tensor, iy: Tensor, same: bool) -> Tensor:
    """Per subset ``j``: sum of ``k(x[ix[j,p]], y[iy[j,q]])`` over all ``p, q`` (``p != q`` if same).

    Either one small kernel matrix per subset, or, when cheaper (sets not much larger than
    the subsets), the full kernel matrix in row chunks contracted with 0/1 subset indicators.
    """
    s, m = ix.shape
    n_x, n_y, d = x.shape[0], y.shape[0], x.shape[1]
    sums = torch.zeros(s, dtype=torch.float64)
    if n_x * n_y * (d + s) >= s * m * m * d:
        for j in range(s):
            k = _poly_kernel(x[ix[j]], y[iy[j]])
            sums[j] = k.sum() - (k.diagonal().sum() if same else 0)
        return sums
    ind_x = torch.zeros(n_x, s, dtype=torch.float64)
    ind_x.scatter_(0, ix.T, 1.0)
    ind_y = torch.zeros(n_y, s, dtype=torch.float64)
    ind_y.scatter_(0, iy.T, 1.0)
    chunk = max(1, _CHUNK_ELEMS // n_y)
    for i in range(0, n_x, chunk):
        k = _poly_kernel(x[i : i + chunk], y)  # (c, n_y)
        sums += (ind_x[i : i + chunk] * (k @ ind_y)).sum(0)
    if same:
        diag = (x.square().sum(1) / d + 1).pow(3)  # k(x_i, x_i)
        sums -= ind_x.T @ diag
    return sums


def _kid_values(a: Tensor, b: Tensor, ia: Tensor, ib: Tensor, aa_sums: Tensor | None = None) -> Tensor:
    """Unbiased MMD² per subset (``aa_sums``: precomputed ``a``-``a`` kernel sums)."""
    m = ia.shape[1]
    if aa_sums is None:
        aa_sums = _kernel_subset_sums(a, a, ia, ia, same=True)
    bb = _kernel_subset_sums(b, b, ib, ib, same=True)
    ab = _kernel_subset_sums(a, b, ia, ib, same=False)
    return (aa_sums + bb) / (m * (m - 1)) - 2 * ab / (m * m)


def _mean_std(v: Tensor) -> tuple[float, float]:
    return float(v.mean()), (float(v.std()) if v.numel() > 1 else 0.0)


def kid_from_features(
    a: Tensor, b: Tensor, num_subsets: int = 50, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased MMD² with ``k(x, y) = (x·y/d + 1)^3``, in float64.

    Mean and standard deviation over ``num_subsets`` random subsets of ``subset_size`` drawn
    without replacement from each set (clipped to the smaller set), from a private generator.
    """
    _check_pair(a, b, "KID", 2)
    ia, ib = _kid_subsets(a.shape[0], b.shape[0], num_subsets, subset_size, seed)
    x, y = a.to("cpu", torch.float64), b.to("cpu", torch.float64)
    return _mean_std(_kid_values(x, y, ia, ib))


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
    replaces the domain network with any module that has ``features(x) -> (N, D)`` (for
    example an Inception network the user has on disk).
    """

    PR_K = 3

    def __init__(
        self,
        dataset: DatasetLike,
        *,
        device: str | torch.device = "cpu",
        num_real: int | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        feature_net: nn.Module | None = None,
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
        images: Tensor = dataset.images
        n = images.shape[0]
        if num_real is not None and num_real < n:
            if num_real <= self.PR_K:
                raise FastganError(f"num_real must be > {self.PR_K}, got {num_real}")
            gen = torch.Generator().manual_seed(0)
            idx = torch.randperm(n, generator=gen)[:num_real].sort().values
            images = images[idx]
        self.image_shape = tuple(images.shape[1:])
        self.real_features = extract_features(self.net, images, device=self.device)
        self.num_real = self.real_features.shape[0]
        self._mu, self._cov = _gaussian(self.real_features)
        self._sqrt_cov = _psd_sqrt(self._cov)
        self._pr_center = self.real_features.mean(0)
        self._pr_real = _centered32(self.real_features, self._pr_center)
        self._pr_radii = _knn_radii(self._pr_real, self.PR_K)
        self._kid_real: dict[tuple[int, int, int], Tensor] = {}  # (subsets, size, seed) -> sums

    def _kid(self, fake: Tensor, num_subsets: int = 50, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
        """``kid_from_features(real, fake)`` with the real-real kernel sums cached."""
        real = self.real_features
        ia, ib = _kid_subsets(real.shape[0], fake.shape[0], num_subsets, subset_size, seed)
        key = (num_subsets, ia.shape[1], seed)
        if key not in self._kid_real:
            self._kid_real[key] = _kernel_subset_sums(real, real, ia, ia, same=True)
        y = fake.to("cpu", torch.float64)
        return _mean_std(_kid_values(real, y, ia, ib, self._kid_real[key]))

    def evaluate_features(self, fake: Tensor) -> dict[str, Any]:
        """All metrics for precomputed fake features ``(M, D)``."""
        _check_pair(self.real_features, fake, "DomainEvaluator", self.PR_K + 1)
        mu, cov = _gaussian(fake)
        fid = _fid_from_stats(self._mu, self._cov, mu, cov, self._sqrt_cov)
        kid, kid_std = self._kid(fake)
        f = _centered32(fake, self._pr_center)
        precision, recall = _pr_from_radii(self._pr_real, f, self._pr_radii, _knn_radii(f, self.PR_K))
        return {
            "fid": fid,
            "kid": kid,
            "kid_std": kid_std,
            "precision": precision,
            "recall": recall,
            "num_real": self.num_real,
            "num_fake": int(fake.shape[0]),
            "feature_space": self.feature_space,
        }

    def evaluate_images(self, fake_images: Tensor) -> dict[str, Any]:
        """All metrics for fake images shaped like the dataset's ``(M, C, R, R)`` in [-1, 1]."""
        if tuple(fake_images.shape[1:]) != self.image_shape:
            raise FastganError(
                f"fake images have shape {tuple(fake_images.shape[1:])} per image but dataset "
                f"{self.dataset_name!r} has {self.image_shape}; generate at the dataset's resolution"
            )
        return self.evaluate_features(extract_features(self.net, fake_images, device=self.device))

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
