"""The domain feature network: a small CNN trained on the dataset itself, cached per dataset.

FID/KID/precision/recall are computed in the penultimate embedding of this network instead of
Inception-v3, so the metrics work offline and in seconds on a CPU. The network is trained
once per dataset (supervised on the labels when the dataset has them, otherwise on rotation
prediction: 0/90/180/270 degrees) with a fixed seed, and its weights are cached as
``features-<fingerprint>.safetensors`` in ``cache_dir``, ``$FASTGAN_CACHE`` or
``~/.cache/fastgan``. Numbers measured in this space are comparable across fastgan runs on
the same dataset only, never with published Inception FIDs.
"""
from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from fastgan.errors import DataError, FastganError
from fastgan.progress import progress_bar

__all__ = [
    "FeatureNet",
    "DatasetLike",
    "get_feature_net",
    "extract_features",
    "feature_cache_dir",
    "feature_cache_path",
]

#: Bumped whenever the architecture or the training recipe changes; older cache files are
#: then retrained instead of loaded.
FORMAT_VERSION = 1
_SEED = 20240917
_TARGET_STEPS = 180  # optimisation steps the default epoch count aims for
_MAX_EPOCHS = 40
_BATCH = 128
_LR = 6e-3
_MAX_HELD_OUT = 2000


class DatasetLike(Protocol):
    """What the metrics need from a dataset (``fastgan.data.ImageDataset`` satisfies it)."""

    name: str
    images: Tensor  # (N, C, R, R) float32 in [-1, 1]
    labels: Tensor | None  # (N,) int64
    num_classes: int

    @property
    def fingerprint(self) -> str: ...


class FeatureNet(nn.Module):
    """Small CNN on ``(N, C, R, R)`` images in [-1, 1], any ``R >= 8`` and ``C`` in {1, 3}.

    Three stride-2 3x3 conv+BN+ReLU blocks, an adaptive 2x2 average pool (so any resolution
    maps to the same head), a linear embedding of ``feature_dim`` and a linear classifier.
    ``features(x)`` is the embedding (pre-activation); ``forward(x)`` the logits.
    """

    def __init__(
        self, in_channels: int = 1, num_classes: int = 10, feature_dim: int = 128, width: int = 16
    ) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise FastganError(f"FeatureNet takes 1 or 3 channels, got {in_channels}")
        if num_classes < 2:
            raise FastganError(f"FeatureNet needs at least 2 classes, got {num_classes}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.width = width
        w = width
        layers: list[nn.Module] = []
        for cin, cout in ((in_channels, w), (w, 2 * w), (2 * w, 4 * w)):
            layers += [nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(2), nn.Flatten())  # (N, 16w)
        self.embed = nn.Linear(16 * w, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)
        # Set by get_feature_net: what the network was trained on and how well it does.
        self.info: dict[str, str] = {}

    def features(self, x: Tensor) -> Tensor:
        """Penultimate embedding, ``(N, feature_dim)``."""
        if x.dim() != 4 or x.shape[1] != self.in_channels or min(x.shape[-2:]) < 8:
            raise FastganError(
                f"FeatureNet expects (N, {self.in_channels}, R, R) images with R >= 8, "
                f"got shape {tuple(x.shape)}"
            )
        return self.embed(self.body(x))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits, ``(N, num_classes)``."""
        return self.head(F.relu(self.features(x)))


# ------------------------------------------------------------------------------------ cache


def feature_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``cache_dir``, else ``$FASTGAN_CACHE``, else ``~/.cache/fastgan``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("FASTGAN_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "fastgan"


def feature_cache_path(dataset: DatasetLike, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the feature network of ``dataset`` is (or will be) cached."""
    return feature_cache_dir(cache_dir) / f"features-{dataset.fingerprint}.safetensors"


def _save(net: FeatureNet, path: Path, meta: dict[str, str]) -> None:
    """Write the weights atomically: a temporary file in the same folder, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _load(path: Path) -> FeatureNet | None:
    """The cached network, or None when the file is unreadable or of another format."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if int(meta.get("format_version", -1)) != FORMAT_VERSION:
            return None
        net = FeatureNet(
            in_channels=int(meta["in_channels"]),
            num_classes=int(meta["num_outputs"]),
            feature_dim=int(meta["feature_dim"]),
            width=int(meta["width"]),
        )
        net.load_state_dict(tensors)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError, FastganError):
        return None
    net.info = meta
    return net


# --------------------------------------------------------------------------------- training


@contextlib.contextmanager
def seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Fork the global RNG (CPU, plus ``device`` when it is CUDA), seed it, restore it on exit."""
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else []):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


def _rotate(x: Tensor, k: Tensor) -> Tensor:
    """Rotate each image ``x[i]`` by ``k[i] * 90`` degrees."""
    out = x.clone()
    for r in (1, 2, 3):
        m = k == r
        if bool(m.any()):
            out[m] = torch.rot90(x[m], r, dims=(2, 3))
    return out


def _batch(
    images: Tensor, labels: Tensor | None, idx: Tensor, device: torch.device, gen: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Inputs and targets for one batch; rotation targets when ``labels`` is None.

    ``gen`` draws the rotations (training); without it every image appears in all four
    rotations (held-out evaluation).
    """
    x = images[idx].to(device=device, dtype=torch.float32)
    if labels is not None:
        return x, labels[idx].to(device=device, dtype=torch.long)
    if gen is None:
        k = torch.arange(4).repeat_interleave(len(idx))
        x = x.repeat(4, 1, 1, 1)
    else:
        k = torch.randint(0, 4, (len(idx),), generator=gen)
    return _rotate(x, k.to(device)), k.to(device)


def _default_epochs(num_train: int) -> int:
    """Epochs that give about ``_TARGET_STEPS`` optimisation steps (1 to ``_MAX_EPOCHS``)."""
    steps_per_epoch = max(1, math.ceil(num_train / _BATCH))
    return max(1, min(_MAX_EPOCHS, math.ceil(_TARGET_STEPS / steps_per_epoch)))


def _train_feature_net(
    images: Tensor,
    labels: Tensor | None,
    num_outputs: int,
    *,
    epochs: int | None,
    device: torch.device,
) -> tuple[FeatureNet, dict[str, str]]:
    """Build and train a FeatureNet on a fixed 90/10 split; return it and its metadata.

    Deterministic: initialisation runs under a forked, seeded global RNG (restored afterwards),
    and the split, shuffling and rotations come from a private generator. Adam with a
    one-cycle schedule, batch 128.
    """
    n = images.shape[0]
    num_val = min(_MAX_HELD_OUT, max(1, round(0.1 * n)))
    gen = torch.Generator().manual_seed(_SEED)
    perm = torch.randperm(n, generator=gen)
    val_idx, train_idx = perm[:num_val], perm[num_val:]
    epochs = _default_epochs(len(train_idx)) if epochs is None else int(epochs)
    if epochs < 1:
        raise FastganError(f"feature net epochs must be >= 1, got {epochs}")
    steps = epochs * math.ceil(len(train_idx) / _BATCH)
    start = time.perf_counter()
    # Grad is forced on so that building an evaluator inside no_grad/inference_mode works.
    with seeded_rng(_SEED, device), torch.inference_mode(False), torch.enable_grad():
        net = FeatureNet(in_channels=images.shape[1], num_classes=num_outputs).to(device).train()
        opt = torch.optim.Adam(net.parameters(), lr=_LR)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=_LR, total_steps=steps)
        for _ in range(epochs):
            order = train_idx[torch.randperm(len(train_idx), generator=gen)]
            for i in range(0, len(order), _BATCH):
                x, t = _batch(images, labels, order[i : i + _BATCH], device, gen)
                loss = F.cross_entropy(net(x), t)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        net.eval()
        correct = total = 0
        with torch.no_grad():
            for i in range(0, num_val, 500):
                x, t = _batch(images, labels, val_idx[i : i + 500], device, None)
                correct += int((net(x).argmax(1) == t).sum())
                total += t.numel()
    return net, {
        "accuracy": f"{correct / total:.6f}",
        "epochs": str(epochs),
        "num_train": str(len(train_idx)),
        "num_held_out": str(num_val),
        "train_seconds": f"{time.perf_counter() - start:.3f}",
    }


def get_feature_net(
    dataset: DatasetLike,
    *,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike[str] | None = None,
    epochs: int | None = None,
) -> FeatureNet:
    """The domain feature network of ``dataset``: loaded from the cache, else trained and cached.

    Supervised on ``dataset.labels`` when present (and ``num_classes >= 2``), otherwise
    self-supervised rotation prediction. A cached file is reused when its format matches and,
    if ``epochs`` is given, when it was trained for that many epochs. The network comes back
    in eval mode with ``requires_grad`` off; ``net.info`` holds the metadata (task, accuracy).
    """
    device = torch.device(device)
    images: Tensor = dataset.images
    if images.dim() != 4 or images.shape[1] not in (1, 3) or min(images.shape[-2:]) < 8:
        raise DataError(
            f"dataset {dataset.name!r}: feature net needs (N, 1|3, R, R) images with R >= 8, "
            f"got shape {tuple(images.shape)}"
        )
    if images.shape[0] < 10:
        raise DataError(f"dataset {dataset.name!r} has {images.shape[0]} images; metrics need >= 10")
    labels: Tensor | None = dataset.labels
    num_classes = int(getattr(dataset, "num_classes", 0) or 0)
    if labels is not None and num_classes < 2:
        num_classes = int(labels.max()) + 1 if labels.numel() else 0
    if labels is None or num_classes < 2:
        labels, task, num_outputs = None, "rotation", 4
    else:
        task, num_outputs = "labels", num_classes

    path = feature_cache_path(dataset, cache_dir)
    net = _load(path) if path.exists() else None
    if net is not None and (
        net.info.get("task") != task
        or net.num_classes != num_outputs
        or net.in_channels != images.shape[1]
        or (epochs is not None and net.info.get("epochs") != str(int(epochs)))
    ):
        net = None
    if net is None:
        net, meta = _train_feature_net(images, labels, num_outputs, epochs=epochs, device=device)
        meta.update(
            format_version=str(FORMAT_VERSION),
            dataset=str(dataset.name),
            fingerprint=str(dataset.fingerprint),
            task=task,
            num_outputs=str(num_outputs),
            in_channels=str(images.shape[1]),
            resolution=str(images.shape[-1]),
            feature_dim=str(net.feature_dim),
            width=str(net.width),
            torch_version=torch.__version__,
        )
        _save(net, path, meta)
        net.info = meta
    net.to(device).eval()
    net.requires_grad_(False)
    return net


def extract_features(
    net: nn.Module,
    images: Tensor,
    batch_size: int = 500,
    device: str | torch.device | None = None,
    desc: str = "features",
) -> Tensor:
    """``net.features`` of ``images`` in batches: ``(N, D)`` float64 on CPU, without grad.

    ``device`` defaults to the network's device; the network is run in eval mode and its
    previous mode restored. On a terminal a progress bar labelled ``desc`` counts the images.
    """
    if device is None:
        p = next(net.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    if images.dim() != 4:
        raise FastganError(f"extract_features expects (N, C, R, R) images, got {tuple(images.shape)}")
    was_training = net.training
    net.eval()
    out: list[Tensor] = []
    try:
        with torch.no_grad(), progress_bar(total=images.shape[0], desc=desc, unit="img") as bar:
            for i in range(0, images.shape[0], batch_size):
                x = images[i : i + batch_size].to(device=device, dtype=torch.float32)
                out.append(net.features(x).to("cpu", torch.float64))  # type: ignore[operator]
                bar.update(x.shape[0])
    finally:
        net.train(was_training)
    if not out:
        return torch.empty(0, int(getattr(net, "feature_dim", 0)), dtype=torch.float64)
    return torch.cat(out)
