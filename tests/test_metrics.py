"""Offline domain metrics: FID/KID/precision-recall maths, the cached feature net, the evaluator, the Inception FID."""
from __future__ import annotations

import math
import os
import warnings
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


def test_kid_clips_subsets_to_the_sets_and_leaves_the_global_rng_alone():
    g = torch.Generator().manual_seed(8)
    a, b = torch.randn(120, 16, generator=g, dtype=F64), torch.randn(120, 16, generator=g, dtype=F64) * 1.2
    state = torch.random.get_rng_state()
    mean, std = kid_from_features(a, b, num_subsets=3, subset_size=5000)  # every subset is a whole set
    assert torch.equal(torch.random.get_rng_state(), state)
    assert mean == pytest.approx(naive_mmd2(a, b), rel=1e-10) and std == pytest.approx(0.0, abs=1e-12)
    sub = kid_from_features(a, b[:60], num_subsets=20, subset_size=1000)  # clipped to 60 rows of each
    assert sub != kid_from_features(a, b[:60], num_subsets=20, subset_size=1000, seed=1)
    with pytest.raises(FastganError):
        kid_from_features(a, b, num_subsets=0)


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


def test_evaluator_kid_matches_kid_from_features(evaluator):
    fake = torch.rand(300, 1, 16, 16) * 2 - 1
    rep = evaluator.evaluate_images(fake)
    kid = kid_from_features(evaluator.real_features, extract_features(evaluator.net, fake))
    assert rep["kid"] == pytest.approx(kid[0], rel=1e-9) and rep["kid_std"] == pytest.approx(kid[1], rel=1e-6)
    assert evaluator.evaluate_images(fake)["kid"] == rep["kid"]  # the kept real features, the same subsets


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



# ----------------------------------------------------------------------------- progress display


def test_feature_extraction_draws_a_bar_only_when_asked(monkeypatch, capsys):
    pytest.importorskip("tqdm")
    net = FeatureNet(in_channels=1, num_classes=3).eval()
    x = torch.rand(30, 1, 16, 16) * 2 - 1
    monkeypatch.setenv("FASTGAN_PROGRESS", "1")
    with_bar = extract_features(net, x, batch_size=10, desc="probe features")
    err = capsys.readouterr().err
    assert "probe features" in err and "/30" in err and "img" in err
    monkeypatch.setenv("FASTGAN_PROGRESS", "0")
    torch.testing.assert_close(extract_features(net, x, batch_size=10, desc="probe features"), with_bar)
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------------------ Inception FID


INCEPTION_ANCHORS = {  # the entries check_inception_weights reads; the FID Inception's shapes
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
    "fc.weight": (1008, 2048),
}


def test_fid_weights_missing_file_is_a_config_error(tmp_path):
    from fastgan.errors import ConfigError
    from fastgan.metrics import load_inception
    from fastgan.train.config import TrainConfig

    missing = tmp_path / "nope.pth"
    with pytest.raises(ConfigError, match="is not a file; pass --fid-weights"):
        TrainConfig(fid_weights=str(missing))
    (tmp_path / "w.pth").write_bytes(b"x")
    with pytest.raises(ConfigError, match="drop --no-eval or --fid-weights"):
        TrainConfig(fid_weights=str(tmp_path / "w.pth"), eval=False)
    with pytest.raises(FastganError, match="do not exist; pass --fid-weights"):
        load_inception(missing)


def test_fid_weights_wrong_file_names_the_problem(tmp_path):
    from fastgan.metrics import check_inception_weights

    def msg(path) -> str:
        with pytest.raises(FastganError) as e:
            check_inception_weights(path)
        text = str(e.value)
        assert "\n" not in text and "--fid-weights" in text
        return text

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a weights file at all")
    assert "cannot be read as a PyTorch state dict" in msg(garbage)
    tensor = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor)
    assert "not a state dict of tensors" in msg(tensor)
    imagenet = tmp_path / "imagenet.pth"  # torchvision's Inception: 1000 classes, not the FID graph's 1008
    torch.save({k: torch.zeros(1000, 2048) if k == "fc.weight" else torch.zeros(s) for k, s in INCEPTION_ANCHORS.items()},
               imagenet)
    assert "(1000, 2048) for 'fc.weight'" in msg(imagenet) and "(1008, 2048)" in msg(imagenet)
    partial = tmp_path / "partial.pth"
    torch.save({"fc.weight": torch.zeros(1008, 2048)}, partial)
    assert "lack 'Conv2d_1a_3x3.conv.weight'" in msg(partial)
    anchors = tmp_path / "anchors.pth"
    torch.save({k: torch.zeros(s) for k, s in INCEPTION_ANCHORS.items()}, anchors)
    assert check_inception_weights(anchors) == anchors


def test_fid_weights_without_torch_fidelity_names_the_install(tmp_path, monkeypatch):
    from fastgan.metrics import load_inception

    anchors = tmp_path / "anchors.pth"
    torch.save({k: torch.zeros(s) for k, s in INCEPTION_ANCHORS.items()}, anchors)
    monkeypatch.setitem(__import__("sys").modules, "torch_fidelity", None)  # import fails as if absent
    with pytest.raises(FastganError, match=r"pip install 'fastgan\[inception\]'"):
        load_inception(anchors)


def random_inception_weights(path, monkeypatch):
    """Save a seeded random FID Inception (torch-fidelity's architecture) as a weights file; return the module."""
    fe = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3", reason="Inception FID needs torch-fidelity")
    monkeypatch.setattr(fe, "load_state_dict_from_url", lambda *a, **k: {})  # nothing is ever downloaded

    class Unloaded(fe.FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):  # keep the random initialisation
            return None

    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = Unloaded("inception-v3-compat", ["2048"])
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)  # activations of order 1 through the depth
    torch.save(net.state_dict(), path)
    return fe


def reference_fid(a: Tensor, b: Tensor) -> float:
    """pytorch-fid's formula: scipy.linalg.sqrtm of the covariance product."""
    linalg = pytest.importorskip("scipy.linalg")
    a, b = a.double(), b.double()
    s1, s2 = a.T.cov().numpy(), b.T.cov().numpy()
    with warnings.catch_warnings():  # fewer samples than dimensions: the product is singular, as here on purpose
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(s1 @ s2).real
    return float((a.mean(0) - b.mean(0)).square().sum()) + float(s1.trace() + s2.trace() - 2 * covmean.trace())


def to_uint8_rgb(x: Tensor) -> Tensor:
    """[-1, 1] images as the uint8 RGB the FID Inception takes (StyleGAN's mapping)."""
    return (x * 127.5 + 128).clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1)


def test_inception_fid_matches_torch_fidelity_and_scipy(tmp_path, monkeypatch):
    from fastgan.metrics import load_inception

    weights = tmp_path / "inception.pth"
    fe = random_inception_weights(weights, monkeypatch)
    real, _ = blobs(n=8, res=16, seed=0)
    fake, _ = blobs(n=8, res=16, seed=1)
    fake = shift(fake, 3)

    # the standard tap: the 2048-d pool features equal torch-fidelity's own extractor's
    ours = load_inception(weights)
    ref2048 = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights))
    with torch.no_grad():
        expected = ref2048(to_uint8_rgb(real[:2]))[0]
        got = ours.features(real[:2])
    assert got.shape == (2, 2048) and float(expected.std()) > 1e-3
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)

    # the FID through the evaluator, on the cheap 64-d tap (the same maths as 2048-d, a 64x64 eigenproblem)
    ds = StandIn("blobs8", real, None, 0, "blobs8")
    ev = DomainEvaluator(ds, feature_net=FeatureNet(in_channels=1, num_classes=4), inception=load_inception(weights, feature=64))
    rep = ev.evaluate_images(fake)
    ref64 = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["64"], feature_extractor_weights_path=str(weights))
    with torch.no_grad():
        fr, ff = ref64(to_uint8_rgb(real))[0], ref64(to_uint8_rgb(fake))[0]
    expected_fid = reference_fid(fr, ff)
    assert expected_fid > 1e-3
    assert rep["fid_inception"] == pytest.approx(expected_fid, rel=1e-6)
    assert set(rep) >= {"fid", "kid", "precision", "recall", "fid_inception"}
    assert ev.evaluate_images(real)["fid_inception"] < 1e-3 * expected_fid


def test_inception_weights_that_do_not_fit_are_one_line_errors(tmp_path):
    pytest.importorskip("torch_fidelity", reason="the strict load is torch-fidelity's")
    from fastgan.metrics import load_inception

    anchors = tmp_path / "anchors.pth"
    torch.save({k: torch.zeros(s) for k, s in INCEPTION_ANCHORS.items()}, anchors)
    with pytest.raises(FastganError, match="do not fit the FID Inception") as e:
        load_inception(anchors)
    assert "\n" not in str(e.value)
