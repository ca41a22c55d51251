"""Tests for fastgan.data: every dataset kind, every error message, and the InfiniteLoader."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastgan.data import (
    DEFAULT_DATASET,
    ImageDataset,
    InfiniteLoader,
    available_datasets,
    load_dataset,
)
from fastgan.data.loader import _HostPrefetcher, _index_batches
from fastgan.errors import DataError, FastganError


def _check_images(ds: ImageDataset, n: int, c: int, r: int) -> None:
    assert ds.images.shape == (n, c, r, r)
    assert ds.images.dtype == torch.float32
    assert ds.images.is_contiguous()
    assert ds.images.device.type == "cpu"
    assert float(ds.images.min()) >= -1.0 and float(ds.images.max()) <= 1.0
    assert len(ds) == n and ds.channels == c and ds.resolution == r


def _raises(match: str, fn, *args, **kwargs) -> str:
    """Call ``fn``; assert a one-line DataError whose message contains ``match``."""
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert match in msg, msg
    assert isinstance(info.value, FastganError)
    return msg


@pytest.fixture(scope="module")
def mnist() -> ImageDataset:
    return load_dataset("mnist5k")


# ----------------------------------------------------------------------------- mnist5k


def test_mnist5k_default(mnist: ImageDataset) -> None:
    assert DEFAULT_DATASET == "mnist5k"
    _check_images(mnist, 5000, 1, 32)
    assert mnist.name == "mnist5k"
    assert float(mnist.images.min()) == -1.0 and float(mnist.images.max()) == 1.0
    assert mnist.labels is not None and mnist.labels.dtype == torch.int64
    assert torch.equal(torch.bincount(mnist.labels), torch.full((10,), 500))
    assert mnist.num_classes == 10 and mnist.class_names == [str(i) for i in range(10)]
    # The 2-pixel pad is background (-1) on every side.
    x = mnist.images
    for border in (x[..., :2, :], x[..., -2:, :], x[..., :, :2], x[..., :, -2:]):
        assert bool((border == -1.0).all())
    # Digits are bright strokes on a dark background: the center is not all background.
    assert float(x[..., 8:24, 8:24].max()) == 1.0


@pytest.mark.parametrize("res", [16, 64])
def test_mnist5k_resolution(res: int) -> None:
    ds = load_dataset("mnist5k", resolution=res)
    _check_images(ds, 5000, 1, res)
    assert torch.equal(torch.bincount(ds.labels), torch.full((10,), 500))


def test_mnist5k_channels(mnist: ImageDataset) -> None:
    rgb = load_dataset("mnist5k", channels=3)
    _check_images(rgb, 5000, 3, 32)
    assert torch.equal(rgb.images[:, 0], rgb.images[:, 2])
    assert torch.equal(rgb.images[:, :1], mnist.images)
    back = load_dataset("MNIST5K", channels=1)  # kind is case-insensitive
    assert torch.equal(back.images, mnist.images)


# ----------------------------------------------------------------------------- digits


def test_digits() -> None:
    ds = load_dataset("digits", resolution=16)
    _check_images(ds, 1797, 1, 16)
    assert ds.name == "digits" and ds.num_classes == 10
    assert set(ds.labels.tolist()) == set(range(10))
    assert float(ds.images.min()) == -1.0
    # At the native 8x8 the values are exact: sklearn's first image and label order.
    ds8 = load_dataset("digits", resolution=8)
    first_row = torch.tensor([0, 0, 5, 13, 9, 1, 0, 0], dtype=torch.float32) / 8 - 1
    assert torch.equal(ds8.images[0, 0, 0], first_row)
    assert ds8.labels[:10].tolist() == list(range(10))


# ----------------------------------------------------------------------------- folder


def _png(path: Path, size: tuple[int, int], mode: str = "RGB", color=(255, 0, 0)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "L" and isinstance(color, tuple):
        color = color[0]
    Image.new(mode, size, color).save(path)


def test_folder_with_classes(tmp_path: Path) -> None:
    _png(tmp_path / "cats" / "a.png", (20, 20), "RGB", (255, 0, 0))
    _png(tmp_path / "cats" / "b.jpg", (30, 30), "RGB", (255, 0, 0))
    _png(tmp_path / "dogs" / "c.png", (12, 12), "L", 0)
    _png(tmp_path / "dogs" / "nested" / "d.bmp", (8, 8), "L", 255)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    (tmp_path / ".hidden").mkdir()
    _png(tmp_path / ".hidden" / "x.png", (8, 8))

    ds = load_dataset(f"folder:{tmp_path}", resolution=16)
    _check_images(ds, 4, 3, 16)
    assert ds.name == f"folder:{tmp_path.resolve()}"
    assert ds.class_names == ["cats", "dogs"] and ds.num_classes == 2
    assert ds.labels.tolist() == [0, 0, 1, 1]
    red = torch.tensor([1.0, -1.0, -1.0]).view(3, 1, 1)
    assert torch.allclose(ds.images[0], red.expand(3, 16, 16), atol=0.02)
    assert torch.allclose(ds.images[2], torch.full((3, 16, 16), -1.0))
    assert torch.allclose(ds.images[3], torch.full((3, 16, 16), 1.0))

    gray = load_dataset(f"folder:{tmp_path}", resolution=16, channels=1)
    _check_images(gray, 4, 1, 16)
    assert abs(float(gray.images[0].mean()) - (0.299 * 2 - 1)) < 0.02  # BT.601 luma of red


def test_folder_unlabeled_and_crop(tmp_path: Path) -> None:
    # Wide image: left third black, middle white, right third black -> center crop is white.
    wide = np.zeros((10, 30), np.uint8)
    wide[:, 10:20] = 255
    Image.fromarray(wide, "L").save(tmp_path / "wide.png")
    # Tall image: top and bottom red, middle green.
    tall = np.zeros((60, 20, 3), np.uint8)
    tall[:, :, 0] = 255
    tall[20:40] = (0, 255, 0)
    Image.fromarray(tall, "RGB").save(tmp_path / "tall.webp", lossless=True)
    gif = Image.new("P", (16, 16), 0)
    gif.save(tmp_path / "z.gif")

    ds = load_dataset(f"folder:{tmp_path}", resolution=10)
    _check_images(ds, 3, 3, 10)
    assert ds.labels is None and ds.num_classes == 0 and ds.class_names == []
    # Sorted order: tall.webp, wide.png, z.gif.
    green = torch.tensor([-1.0, 1.0, -1.0]).view(3, 1, 1).expand(3, 10, 10)
    assert torch.allclose(ds.images[0][:, 3:7, 3:7], green[:, 3:7, 3:7], atol=0.05)
    assert bool((ds.images[1] == 1.0).all())


def test_folder_16bit_and_tiff(tmp_path: Path) -> None:
    arr = np.full((8, 8), 65535, np.uint16)
    Image.fromarray(arr).save(tmp_path / "deep.png")
    Image.new("RGB", (8, 8), (0, 0, 0)).save(tmp_path / "x.tif")
    ds = load_dataset(f"folder:{tmp_path}", resolution=8, channels=1)
    _check_images(ds, 2, 1, 8)
    assert torch.allclose(ds.images[0], torch.ones(1, 8, 8))
    assert torch.allclose(ds.images[1], -torch.ones(1, 8, 8))


def test_folder_errors(tmp_path: Path) -> None:
    _raises("does not exist", load_dataset, f"folder:{tmp_path / 'nope'}")
    f = tmp_path / "file.npz"
    f.write_bytes(b"x")
    _raises("npz:", load_dataset, f"folder:{f}")
    _raises("needs a path", load_dataset, "folder:")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("hi")
    msg = _raises("holds no images", load_dataset, f"folder:{empty}")
    assert ".png" in msg and ".jpg" in msg

    bad = tmp_path / "bad"
    _png(bad / "ok.png", (8, 8))
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    msg = _raises("broken.png", load_dataset, f"folder:{bad}")
    assert "remove or replace" in msg

    mixed = tmp_path / "mixed"
    _png(mixed / "loose.png", (8, 8))
    _png(mixed / "cls" / "a.png", (8, 8))
    _raises("move the loose images", load_dataset, f"folder:{mixed}")


def test_folder_many_files_threaded(tmp_path: Path) -> None:
    for i in range(70):  # >= 64 files takes the thread-pool path
        _png(tmp_path / f"{i:03d}.png", (6, 6), "L", i)
    ds = load_dataset(f"folder:{tmp_path}", resolution=6, channels=1)
    expected = torch.arange(70, dtype=torch.float32) / 127.5 - 1
    assert torch.allclose(ds.images.mean(dim=(1, 2, 3)), expected, atol=1e-6)


# ----------------------------------------------------------------------------- npz


@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW"])
def test_npz_layouts_uint8(tmp_path: Path, layout: str) -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (5, 3, 12, 12), dtype=np.uint8)
    if layout == "NHW":
        arr, c = base[:, 0], 1
    elif layout == "NHWC":
        arr, c = base.transpose(0, 2, 3, 1), 3
    else:
        arr, c = base, 3
    path = tmp_path / "d.npz"
    np.savez(path, images=arr, labels=np.array([0, 1, 2, 1, 0]))
    ds = load_dataset(f"npz:{path}", resolution=12)
    _check_images(ds, 5, c, 12)
    expected = torch.from_numpy(base[:, :c].astype(np.float32)) / 127.5 - 1
    assert torch.allclose(ds.images, expected, atol=1e-6)
    assert ds.labels.tolist() == [0, 1, 2, 1, 0] and ds.num_classes == 3
    assert ds.name == f"npz:{path.resolve()}"
    assert load_dataset(f"npz:{path}", resolution=6).images.shape == (5, c, 6, 6)


def test_npz_float_ranges_and_keys(tmp_path: Path) -> None:
    unit = np.linspace(0, 1, 4 * 8 * 8, dtype=np.float32).reshape(4, 8, 8)
    np.savez(tmp_path / "a.npz", x=unit, y=np.arange(4))
    ds = load_dataset(f"npz:{tmp_path / 'a.npz'}", resolution=8)
    assert torch.allclose(ds.images[:, 0], torch.from_numpy(unit) * 2 - 1, atol=1e-6)
    assert ds.labels.tolist() == [0, 1, 2, 3]

    signed = unit * 2 - 1
    np.savez(tmp_path / "b.npz", whatever=signed)  # first array, no labels
    ds = load_dataset(f"npz:{tmp_path / 'b.npz'}", resolution=8, channels=3)
    _check_images(ds, 4, 3, 8)
    assert ds.labels is None and ds.num_classes == 0
    assert torch.allclose(ds.images[:, 1], torch.from_numpy(signed))


def test_npz_errors(tmp_path: Path) -> None:
    _raises("does not exist", load_dataset, f"npz:{tmp_path / 'missing.npz'}")
    _raises("folder:", load_dataset, f"npz:{tmp_path}")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file")
    _raises("cannot read npz", load_dataset, f"npz:{junk}")
    np.save(tmp_path / "single.npy", np.zeros((2, 8, 8), np.uint8))
    _raises("not a .npz", load_dataset, f"npz:{tmp_path / 'single.npy'}")

    def save(**arrays) -> str:
        path = tmp_path / "t.npz"
        np.savez(path, **arrays)
        return f"npz:{path}"

    _raises("no image array", load_dataset, save(labels=np.arange(3)))
    _raises("(N,H,W)", load_dataset, save(images=np.zeros((3, 8), np.uint8)))
    _raises("1- or 3-channel", load_dataset, save(images=np.zeros((3, 4, 8, 8), np.uint8)))
    _raises("labels array", load_dataset,
            save(images=np.zeros((3, 8, 8), np.uint8), labels=np.arange(4)))
    _raises("negative", load_dataset,
            save(images=np.zeros((3, 8, 8), np.uint8), labels=np.array([0, -1, 2])))
    _raises("[0, 1] or [-1, 1]", load_dataset, save(images=np.full((3, 8, 8), 255.0)))
    _raises("NaN", load_dataset, save(images=np.full((3, 8, 8), np.nan)))
    _raises("0..255", load_dataset, save(images=np.full((3, 8, 8), 1000, np.int32)))
    _raises("empty", load_dataset, save(images=np.zeros((0, 8, 8), np.uint8)))


# ----------------------------------------------------------------------------- synthetic


def test_synthetic() -> None:
    a = load_dataset("synthetic:100", resolution=8, seed=1)
    _check_images(a, 100, 3, 8)
    assert a.labels.shape == (100,) and a.num_classes == 10
    b = load_dataset("synthetic:100", resolution=8, seed=1)
    c = load_dataset("synthetic:100", resolution=8, seed=2)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    d = load_dataset("synthetic", resolution=4, channels=1, synthetic_size=7)
    _check_images(d, 7, 1, 4)


@pytest.mark.parametrize("spec", ["synthetic:abc", "synthetic:0", "synthetic:-3", "synthetic:"])
def test_synthetic_errors(spec: str) -> None:
    _raises("synthetic:N", load_dataset, spec)


# ----------------------------------------------------------------------------- general errors


def test_unknown_and_bad_arguments(tmp_path: Path) -> None:
    msg = _raises("unknown dataset 'mnsit'", load_dataset, "mnsit")
    assert "mnist5k, digits, folder:PATH, npz:PATH, synthetic[:N]" in msg
    assert "did you mean mnist5k" in msg
    _raises(f"folder:{tmp_path}", load_dataset, str(tmp_path))
    _raises("npz:", load_dataset, "data.npz")
    _raises("empty dataset name", load_dataset, "")
    _raises("unknown dataset", load_dataset, "digits:3")
    _raises("folder needs a path: folder:PATH", load_dataset, "folder")
    for res in (2, 3.5, "32", True):
        _raises("resolution=32", load_dataset, "synthetic:4", resolution=res)
    for ch in (2, 4, 0):
        _raises("pass 1 (grayscale), 3 (RGB)", load_dataset, "synthetic:4", channels=ch)


def test_available_datasets() -> None:
    names = [name for name, _ in available_datasets()]
    assert names == ["mnist5k", "digits", "folder:PATH", "npz:PATH", "synthetic[:N]"]
    assert all(desc and "\n" not in desc for _, desc in available_datasets())


def test_fingerprint(mnist: ImageDataset) -> None:
    again = load_dataset("mnist5k")
    assert mnist.fingerprint == again.fingerprint
    assert len(mnist.fingerprint) == 16 and int(mnist.fingerprint, 16) >= 0
    others = {
        load_dataset("mnist5k", resolution=16).fingerprint,
        load_dataset("mnist5k", channels=3).fingerprint,
        load_dataset("digits").fingerprint,
        load_dataset("synthetic:64", seed=0).fingerprint,
        load_dataset("synthetic:64", seed=1).fingerprint,
    }
    assert len(others) == 5 and mnist.fingerprint not in others
    relabeled = ImageDataset("mnist5k", mnist.images, mnist.labels.flip(0), 10, mnist.class_names)
    assert relabeled.fingerprint != mnist.fingerprint


def test_dataset_validation() -> None:
    _raises("(N, C, R, R)", ImageDataset, "x", torch.zeros(2, 1, 4, 5), None, 0, [])
    _raises("one label per image", ImageDataset, "x", torch.zeros(2, 1, 4, 4),
            torch.zeros(3, dtype=torch.int64), 1, ["a"])


# ----------------------------------------------------------------------------- loader


@pytest.fixture(scope="module")
def small() -> ImageDataset:
    return load_dataset("synthetic:50", resolution=4, seed=3)


def _take(loader: InfiniteLoader, k: int) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    return [next(loader) for _ in range(k)]


def _rows(ds: ImageDataset, x: torch.Tensor) -> list[int]:
    """Index in ``ds`` of every image in the batch ``x`` (images are distinct random noise)."""
    flat = ds.images.reshape(len(ds), -1)
    return [int((flat == row).all(dim=1).nonzero()[0]) for row in x.reshape(len(x), -1)]


def test_loader_batches(small: ImageDataset) -> None:
    loader = InfiniteLoader(small, 16, "cpu", seed=0)
    assert len(loader) == 3 and iter(loader) is loader
    x, y = next(loader)
    assert x.shape == (16, 3, 4, 4) and x.dtype == torch.float32
    assert y.shape == (16,) and y.dtype == torch.int64
    assert torch.equal(y, small.labels[torch.tensor(_rows(small, x))])
    assert len(InfiniteLoader(small, 16, "cpu", drop_last=False)) == 4

    unlabeled = ImageDataset("u", small.images, None, 0, [])
    x, y = next(InfiniteLoader(unlabeled, 8, torch.device("cpu")))
    assert x.shape == (8, 3, 4, 4) and y is None


def test_loader_epochs_cover_each_sample_once(small: ImageDataset) -> None:
    loader = InfiniteLoader(small, 10, "cpu", seed=5)
    for epoch in range(3):
        seen: list[int] = []
        for _ in range(len(loader)):
            x, _ = next(loader)
            assert loader.epoch == epoch
            seen += _rows(small, x)
        assert sorted(seen) == list(range(50))

    loader = InfiniteLoader(small, 16, "cpu", seed=5)  # drop_last: 2 samples skipped per epoch
    seen = [i for x, _ in _take(loader, 3) for i in _rows(small, x)]
    assert len(set(seen)) == 48

    loader = InfiniteLoader(small, 16, "cpu", seed=5, drop_last=False)
    batches = _take(loader, 4)
    assert [len(x) for x, _ in batches] == [16, 16, 16, 2]
    assert sorted(i for x, _ in batches for i in _rows(small, x)) == list(range(50))
    assert next(loader)[0].shape[0] == 16 and loader.epoch == 1


def test_loader_determinism(small: ImageDataset) -> None:
    a = _take(InfiniteLoader(small, 8, "cpu", seed=1), 10)
    b = _take(InfiniteLoader(small, 8, "cpu", seed=1), 10)
    c = _take(InfiniteLoader(small, 8, "cpu", seed=2), 10)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not all(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))
    # Epochs differ from each other within one run.
    assert not torch.equal(a[0][0], a[6][0])


def test_loader_errors(small: ImageDataset) -> None:
    _raises("lower --batch to at most 50", InfiniteLoader, small, 51, "cpu")
    _raises("positive integer", InfiniteLoader, small, 0, "cpu")
    _raises("prefetch", InfiniteLoader, small, 4, "cpu", prefetch=0)
    if not torch.cuda.is_available():
        _raises("CUDA is not available", InfiniteLoader, small, 4, "cuda")


def test_loader_on_device_and_close(small: ImageDataset) -> None:
    a = _take(InfiniteLoader(small, 8, "cpu", seed=4), 5)
    b = InfiniteLoader(small, 8, "cpu", seed=4, on_device=True)
    for xa, ya in a:
        xb, yb = next(b)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    b.close()
    with pytest.raises(StopIteration):
        next(b)


def test_host_prefetcher_matches_plain_order(small: ImageDataset) -> None:
    # The CUDA path's producer thread, run on the CPU without pinning.
    pre = _HostPrefetcher(small.images, small.labels, _index_batches(50, 8, 9, True), 2, pin=False)
    ref = InfiniteLoader(small, 8, "cpu", seed=9)
    try:
        for _ in range(14):
            host = pre.get()
            x, y = next(ref)
            assert host.epoch == ref.epoch
            assert torch.equal(host.images, x) and torch.equal(host.labels, y)
    finally:
        pre.close()
    assert not pre._thread.is_alive()


def test_host_prefetcher_reraises() -> None:
    def broken():
        yield 0, torch.tensor([0])
        raise RuntimeError("boom")

    pre = _HostPrefetcher(torch.zeros(2, 1, 4, 4), None, broken(), 2, pin=False)
    assert pre.get().images.shape == (1, 1, 4, 4)
    with pytest.raises(RuntimeError, match="boom"):
        pre.get()
    pre.close()


@pytest.mark.gpu
def test_loader_cuda_pinned_prefetch(small: ImageDataset) -> None:
    ref = _take(InfiniteLoader(small, 8, "cpu", seed=7), 20)
    loader = InfiniteLoader(small, 8, "cuda", seed=7, prefetch=3)
    try:
        for i, (xr, yr) in enumerate(ref):
            x, y = next(loader)
            assert x.is_cuda and y.is_cuda and x.shape == (8, 3, 4, 4)
            # Work on the consumer stream sees the finished copy.
            assert torch.equal((x * 1).cpu(), xr) and torch.equal(y.cpu(), yr)
            assert loader.epoch == i // len(loader)
        assert len(loader._inflight) == 3
        assert all(b.host.images.is_pinned() for b in loader._inflight)
    finally:
        loader.close()
    assert not loader._host._thread.is_alive()
