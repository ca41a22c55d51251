"""Offline domain metrics: FID/KID/precision-recall maths, the cached feature net, the evaluator."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import Tensor, nn

from fastgan.errors import FastganError
from fastgan.metrics import (
    DomainEvaluator,
    FeatureNet,
    extract_features,
    fid_from_features,
    get_feature_net,
    kid_from_features,
    precision_recall,
)
from fastgan.metrics import features as features_mod
from fastgan.metrics import fid as fid_mod

F64 = torch.float64


# ----------------------------------------------------------------------------- stand-in data


@dataclass
class StandIn:
    """Duck-typed stand-in for ``fastgan.data.ImageDataset``."""

    name: str
    images: Tensor
    labels: Tensor | None
    num_classes: int
    fingerprint: str


def blobs(n: int = 800, res: int = 16, num_classes: int = 4, channels: int = 1, seed: int = 0) -> Tensor:
    """Images of one Gaussian blob whose position (one grid cell per class) and size vary."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    side = math.ceil(math.sqrt(num_classes))
    cell = res / side
    cx = (labels % side + 0.5) * cell + (torch.rand(n, generator=g) - 0.5) * cell * 0.4
    cy = (labels // side + 0.5) * cell + (torch.rand(n, generator=g) - 0.5) * cell * 0.4
    sigma = res / 16 * (1.0 + torch.rand(n, generator=g))
    yy, xx = torch.meshgrid(torch.arange(res, dtype=torch.float32), torch.arange(res, dtype=torch.float32), indexing="ij")
    d2 = (xx[None] - cx[:, None, None]) ** 2 + (yy[None] - cy[:, None, None]) ** 2
    img = torch.exp(-d2 / (2 * sigma[:, None, None] ** 2)) * 2 - 1  # (n, res, res)
    img = img + 0.05 * torch.randn(img.shape, generator=g)
    return img.clamp(-1, 1)[:, None].repeat(1, channels, 1, 1), labels


def standin(labelled: bool = True, fingerprint: str = "standin01", **kw) -> StandIn:
    images, labels = blobs(**kw)
    nc = int(labels.max()) + 1
    return StandIn("blobs", images, labels if labelled else None, nc if labelled else 0, fingerprint)


def mnist5k():
    """The real embedded dataset, or a skip while ``fastgan.data`` does not provide it."""
    data = pytest.importorskip("fastgan.data")
    if not hasattr(data, "load_dataset"):
        pytest.skip("fastgan.data.load_dataset is not available yet")
    return data.load_dataset("mnist5k", resolution=32)


@pytest.fixture(params=["mnist5k", "standin"])
def real_dataset(request):
    if request.param == "mnist5k":
        return mnist5k()
    return standin(n=1200)


# ---------------------------------------------------------------------------------- FID maths


def exact_gaussian(n: int, mean: Tensor, var: Tensor, seed: int) -> Tensor:
    """Samples whose sample mean and unbiased sample covariance are exactly ``mean``, ``diag(var)``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, mean.numel(), generator=g, dtype=F64)
    x = x - x.mean(0)
    chol = torch.linalg.cholesky(x.T @ x / (n - 1))
    x = torch.linalg.solve_triangular(chol, x.T, upper=False).T  # whitened: covariance I
    return x * var.sqrt() + mean


def test_fid_identical_sets_is_zero():
    x = torch.randn(500, 64, dtype=F64)
    assert fid_from_features(x, x) == pytest.approx(0.0, abs=1e-8)
    few = torch.randn(40, 128, dtype=F64)  # rank-deficient covariance
    assert fid_from_features(few, few) < 1e-6 * float(few.var(0).sum())


def test_fid_matches_closed_form_for_diagonal_gaussians():
    d = 32
    g = torch.Generator().manual_seed(1)
    m1, m2 = torch.randn(d, generator=g, dtype=F64), torch.randn(d, generator=g, dtype=F64)
    v1, v2 = torch.rand(d, generator=g, dtype=F64) + 0.1, 3 * torch.rand(d, generator=g, dtype=F64) + 0.1
    a, b = exact_gaussian(800, m1, v1, 2), exact_gaussian(600, m2, v2, 3)
    expected = float((m1 - m2).square().sum() + (v1.sqrt() - v2.sqrt()).square().sum())
    assert fid_from_features(a, b) == pytest.approx(expected, rel=1e-6)
    assert fid_from_features(b, a) == pytest.approx(expected, rel=1e-6)


def test_fid_matches_scipy_sqrtm_for_full_covariances():
    linalg = pytest.importorskip("scipy.linalg")
    g = torch.Generator().manual_seed(4)
    a = torch.randn(700, 24, generator=g, dtype=F64) @ torch.randn(24, 24, generator=g, dtype=F64)
    b = torch.randn(900, 24, generator=g, dtype=F64) @ torch.randn(24, 24, generator=g, dtype=F64) + 0.3
    s1, s2 = a.T.cov(), b.T.cov()
    covmean = linalg.sqrtm(s1.numpy() @ s2.numpy()).real
    expected = float((a.mean(0) - b.mean(0)).square().sum() + s1.trace() + s2.trace() - 2 * covmean.trace())
    assert fid_from_features(a, b) == pytest.approx(expected, rel=1e-6)


def test_fid_symmetric_and_grows_with_shift():
    g = torch.Generator().manual_seed(5)
    a = torch.randn(1000, 16, generator=g, dtype=F64)
    b = torch.randn(1000, 16, generator=g, dtype=F64) * 1.3
    assert fid_from_features(a, b) == pytest.approx(fid_from_features(b, a), rel=1e-9)
    fids = [fid_from_features(a, b + s) for s in (0.0, 0.5, 1.0, 2.0)]
    assert fids == sorted(fids) and fids[-1] > fids[0] + 16 * 3


def test_fid_rejects_bad_shapes():
    with pytest.raises(FastganError):
        fid_from_features(torch.randn(10, 4), torch.randn(10, 5))
    with pytest.raises(FastganError):
        fid_from_features(torch.randn(1, 4), torch.randn(10, 4))


# ---------------------------------------------------------------------------------- KID maths


def naive_mmd2(x: Tensor, y: Tensor) -> float:
    d = x.shape[1]
    kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
    m, n = len(x), len(y)
    return float(
        (kxx.sum() - kxx.trace()) / (m * (m - 1)) + (kyy.sum() - kyy.trace()) / (n * (n - 1)) - 2 * kxy.mean()
    )


def test_kid_matches_the_unbiased_mmd_formula():
    g = torch.Generator().manual_seed(6)
    a, b = torch.randn(300, 8, generator=g, dtype=F64), torch.randn(300, 8, generator=g, dtype=F64) + 0.2
    mean, std = kid_from_features(a, b, num_subsets=1, subset_size=300)  # the whole sets
    assert mean == pytest.approx(naive_mmd2(a, b), rel=1e-10)
    assert std == 0.0


def test_kid_same_distribution_near_zero_shifted_positive():
    g = torch.Generator().manual_seed(7)
    a, b = torch.randn(2000, 32, generator=g, dtype=F64), torch.randn(2000, 32, generator=g, dtype=F64)
    same, same_std = kid_from_features(a, b)
    shifted, _ = kid_from_features(a, b + 0.5)
    assert abs(same) < 0.01 and abs(same) < 4 * same_std + 1e-3
    assert shifted > 0.3 and shifted > 50 * abs(same)
    assert kid_from_features(a, b) == (same, same_std)  # seeded: same subsets every call


def test_kid_both_strategies_agree():
    g = torch.Generator().manual_seed(8)
    a, b = torch.randn(600, 16, generator=g, dtype=F64), torch.randn(550, 16, generator=g, dtype=F64)
    ia, ib = fid_mod._kid_subsets(600, 550, 5, 500, 0)
    for x, y, i1, i2, same in ((a, a, ia, ia, True), (a, b, ia, ib, False)):
        fast = fid_mod._kernel_subset_sums(x, y, i1, i2, same)  # indicator path (cheaper here)
        ref = torch.stack(
            [fid_mod._poly_kernel(x[i1[j]], y[i2[j]]).sum() - (
                fid_mod._poly_kernel(x[i1[j]], x[i1[j]]).trace() if same else 0
            ) for j in range(5)]
        )
        torch.testing.assert_close(fast, ref, rtol=1e-12, atol=0)


# ---------------------------------------------------------------------------- precision/recall


def naive_pr(real: Tensor, fake: Tensor, k: int) -> tuple[float, float]:
    drr, dff, dfr = torch.cdist(real, real), torch.cdist(fake, fake), torch.cdist(fake, real)
    rr = drr.kthvalue(k + 1, dim=1).values
    rf = dff.kthvalue(k + 1, dim=1).values
    precision = (dfr <= rr[None]).any(1).double().mean()
    recall = (dfr <= rf[:, None]).any(0).double().mean()
    return float(precision), float(recall)


def test_precision_recall_same_set_is_one():
    x = torch.randn(500, 32, dtype=F64)
    assert precision_recall(x, x) == (1.0, 1.0)


def test_precision_recall_far_fake_is_zero():
    real = torch.randn(400, 16, dtype=F64)
    assert precision_recall(real, torch.randn(300, 16, dtype=F64) + 50) == (0.0, 0.0)


def test_precision_recall_collapsed_fake():
    real = torch.randn(400, 16, dtype=F64)
    fake = real[7].repeat(200, 1)
    precision, recall = precision_recall(real, fake)
    assert precision == 1.0 and recall <= 0.01


def test_precision_recall_matches_brute_force_and_chunking(monkeypatch):
    g = torch.Generator().manual_seed(9)
    real = torch.randn(700, 12, generator=g, dtype=F64)
    fake = torch.randn(500, 12, generator=g, dtype=F64) * 1.2 + 0.4
    ref = naive_pr(real, fake, 3)
    got = precision_recall(real, fake, k=3)
    assert abs(got[0] - ref[0]) <= 2 / 500 and abs(got[1] - ref[1]) <= 2 / 700
    assert 0.1 < got[0] < 0.99 and 0.1 < got[1] < 0.99
    monkeypatch.setattr(fid_mod, "_CHUNK_ELEMS", 1000)  # many small chunks
    assert precision_recall(real, fake, k=3) == got


# ---------------------------------------------------------------------------------- FeatureNet


@pytest.mark.parametrize("shape", [(2, 1, 8, 8), (3, 3, 16, 16), (2, 1, 32, 32), (2, 3, 64, 64)])
def test_feature_net_shapes(shape):
    net = FeatureNet(in_channels=shape[1], num_classes=7).eval()
    x = torch.rand(shape) * 2 - 1
    assert net.features(x).shape == (shape[0], 128)
    assert net(x).shape == (shape[0], 7)


def test_feature_net_rejects_bad_input():
    with pytest.raises(FastganError):
        FeatureNet(in_channels=2)
    with pytest.raises(FastganError):
        FeatureNet(in_channels=1).features(torch.zeros(2, 1, 4, 4))


def test_feature_net_cache_roundtrip(tmp_path, monkeypatch):
    ds = standin(fingerprint="cache01")
    state = torch.random.get_rng_state()
    net = get_feature_net(ds, cache_dir=tmp_path)
    assert torch.equal(torch.random.get_rng_state(), state)  # training forks the global RNG
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    path = tmp_path / "features-cache01.safetensors"
    assert path.is_file() and sorted(os.listdir(tmp_path)) == [path.name]  # no temporary left
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["dataset"] == "blobs" and meta["task"] == "labels"
    assert float(meta["accuracy"]) > 0.9 and int(meta["epochs"]) >= 1

    def boom(*args, **kwargs):
        raise AssertionError("retrained although the cache file exists")

    monkeypatch.setattr(features_mod, "_train_feature_net", boom)
    again = get_feature_net(ds, cache_dir=tmp_path)
    assert again.info["accuracy"] == meta["accuracy"]
    x = ds.images[:50]
    torch.testing.assert_close(extract_features(again, x), extract_features(net, x), rtol=0, atol=0)


def test_feature_net_default_cache_dir_is_env(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTGAN_CACHE", str(tmp_path / "env-cache"))
    get_feature_net(standin(n=200, fingerprint="envcache"), epochs=1)
    assert (tmp_path / "env-cache" / "features-envcache.safetensors").is_file()


def test_feature_net_training_is_deterministic(tmp_path):
    ds = standin(n=300, fingerprint="det01")
    a = get_feature_net(ds, cache_dir=tmp_path / "a", epochs=2)
    b = get_feature_net(ds, cache_dir=tmp_path / "b", epochs=2)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka


def test_feature_net_unlabelled_uses_rotation(tmp_path):
    ds = standin(labelled=False, n=300, res=12, fingerprint="rot01")
    net = get_feature_net(ds, cache_dir=tmp_path)
    assert net.info["task"] == "rotation" and net.head.out_features == 4
    with safe_open(str(tmp_path / "features-rot01.safetensors"), framework="pt") as f:
        assert f.metadata()["task"] == "rotation"


def test_corrupt_cache_file_is_retrained(tmp_path):
    ds = standin(n=100, fingerprint="corrupt01")
    path = tmp_path / "features-corrupt01.safetensors"
    path.write_bytes(b"not a safetensors file")
    net = get_feature_net(ds, cache_dir=tmp_path, epochs=1)
    assert net.info["task"] == "labels"
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["fingerprint"] == "corrupt01"


def test_feature_net_trains_inside_no_grad(tmp_path):
    ds = standin(n=100, fingerprint="nograd01")
    with torch.inference_mode():
        net = get_feature_net(ds, cache_dir=tmp_path, epochs=1)
    assert net.info["epochs"] == "1"


def test_feature_net_retrains_for_other_epochs(tmp_path):
    ds = standin(n=100, fingerprint="epochs01")
    assert get_feature_net(ds, cache_dir=tmp_path, epochs=1).info["epochs"] == "1"
    assert get_feature_net(ds, cache_dir=tmp_path, epochs=2).info["epochs"] == "2"
    assert get_feature_net(ds, cache_dir=tmp_path).info["epochs"] == "2"  # None: take the cache


def test_feature_net_three_channels(tmp_path):
    ds = standin(n=200, channels=3, fingerprint="rgb01")
    net = get_feature_net(ds, cache_dir=tmp_path, epochs=1)
    assert net.in_channels == 3
    assert extract_features(net, ds.images).shape == (200, 128)


def test_extract_features_dtype_and_batching():
    net = FeatureNet(in_channels=1, num_classes=3).eval()
    x = torch.rand(37, 1, 16, 16) * 2 - 1
    f = extract_features(net, x, batch_size=10)
    assert f.dtype == F64 and f.device.type == "cpu" and not f.requires_grad and f.shape == (37, 128)
    torch.testing.assert_close(f, extract_features(net, x, batch_size=500))


# ------------------------------------------------------------------------- ordering on real data


def shift(x: Tensor, pixels: int) -> Tensor:
    """Translate right and down, filling with background (-1)."""
    out = torch.full_like(x, -1.0)
    out[..., pixels:, pixels:] = x[..., :-pixels, :-pixels]
    return out


def blur(x: Tensor) -> Tensor:
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    k = (k[:, None] * k[None]) / 256
    c = x.shape[1]
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), k.expand(c, 1, 5, 5).contiguous(), groups=c)


def test_fid_orders_real_vs_degraded(real_dataset):
    ds = real_dataset
    net = get_feature_net(ds)
    perm = torch.randperm(ds.images.shape[0], generator=torch.Generator().manual_seed(0))
    half = len(perm) // 2
    a, b = ds.images[perm[:half]], ds.images[perm[half:]]
    fa = extract_features(net, a)
    fid_real = fid_from_features(fa, extract_features(net, b))
    g = torch.Generator().manual_seed(1)
    noise = torch.rand(b.shape, generator=g) * 2 - 1
    fid_noise = fid_from_features(fa, extract_features(net, noise))
    fid_blur = fid_from_features(fa, extract_features(net, blur(blur(b))))
    res = b.shape[-1]
    fid_shift = fid_from_features(fa, extract_features(net, shift(b, max(1, res // 8))))
    assert fid_real < fid_noise / 10
    assert fid_real < fid_blur / 10
    assert fid_real < fid_shift / 10
    precision, recall = precision_recall(fa, extract_features(net, b))
    assert precision > 0.6 and recall > 0.6


def test_mnist5k_feature_net_accuracy():
    ds = mnist5k()
    net = get_feature_net(ds)
    assert net.info["task"] == "labels"
    assert float(net.info["accuracy"]) > 0.95


# ------------------------------------------------------------------------------ DomainEvaluator


class ToyG(nn.Module):
    """Tiny generator; draws its own noise with the global RNG to prove it is isolated."""

    def __init__(self, res: int = 16, z_dim: int = 8, num_classes: int = 0) -> None:
        super().__init__()
        self.z_dim, self.num_classes, self.res = z_dim, num_classes, res
        self.fc = nn.Linear(z_dim, res * res)
        self.emb = nn.Embedding(max(1, num_classes), z_dim)
        self.drop = nn.Dropout(0.5)
        self.modes: list[bool] = []
        self.seen_labels: list[Tensor] = []

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        self.modes.append(self.training)
        if labels is not None:
            self.seen_labels.append(labels)
            z = z + self.emb(labels)
        x = self.drop(self.fc(z)) + 0.01 * torch.randn(z.shape[0], self.res * self.res)
        return torch.tanh(x).view(-1, 1, self.res, self.res)


@pytest.fixture
def evaluator():
    return DomainEvaluator(standin(fingerprint="evaluator01"), num_real=600)


def test_evaluator_reports_and_real_images_score_perfectly(evaluator):
    ds = standin(fingerprint="evaluator01")
    assert evaluator.num_real == 600 and evaluator.real_features.shape == (600, 128)
    rep = evaluator.evaluate_images(ds.images)
    assert set(rep) == {"fid", "kid", "kid_std", "precision", "recall", "num_real", "num_fake", "feature_space"}
    assert "not Inception" in rep["feature_space"] and "blobs" in rep["feature_space"]
    assert rep["num_fake"] == 800 and rep["precision"] > 0.95 and rep["recall"] > 0.95
    noise = evaluator.evaluate_images(torch.rand(400, 1, 16, 16) * 2 - 1)
    assert noise["fid"] > 10 * rep["fid"] and noise["kid"] > 10 * abs(rep["kid"])
    with pytest.raises(FastganError):
        evaluator.evaluate_images(torch.zeros(10, 1, 32, 32))


def test_evaluator_kid_cache_matches_kid_from_features(evaluator):
    fake = torch.rand(300, 1, 16, 16) * 2 - 1
    rep = evaluator.evaluate_images(fake)
    kid = kid_from_features(evaluator.real_features, extract_features(evaluator.net, fake))
    assert rep["kid"] == pytest.approx(kid[0], rel=1e-9) and rep["kid_std"] == pytest.approx(kid[1], rel=1e-6)
    assert evaluator.evaluate_images(fake)["kid"] == rep["kid"]  # cached real term reused


@pytest.mark.parametrize("num_classes", [0, 4])
def test_evaluate_generator_isolates_rng_and_restores_mode(evaluator, num_classes):
    torch.manual_seed(123)
    G = ToyG(num_classes=num_classes).train()
    state = torch.random.get_rng_state()
    rep = evaluator.evaluate_generator(G, num_images=300, batch_size=128)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert G.training and G.modes and not any(G.modes)  # eval inside, train restored
    assert rep["num_fake"] == 300 and len(G.modes) == 3
    if num_classes:
        seen = torch.cat(G.seen_labels)
        assert seen.shape == (300,) and seen.min() >= 0 and seen.max() < num_classes
    else:
        assert not G.seen_labels
    assert evaluator.evaluate_generator(G, num_images=300, batch_size=128) == rep  # seeded
    G.eval()
    evaluator.evaluate_generator(G, num_images=50)
    assert not G.training

