"""Paper-comparable Inception features from a weights file on disk (optional: ``fastgan[inception]``).

The network is torch-fidelity's TensorFlow-compatible FID Inception-v3 (through torchmetrics'
``NoTrainInceptionV3``), loaded from the file the user names and never downloaded. Images are
resized to 299x299 with TensorFlow-1 bilinear interpolation, the resize published FIDs use.
The file must hold that network's state dict: torch-fidelity's
``weights-inception-2015-12-05-6726825d.pth`` (the TensorFlow FID graph converted to PyTorch).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from fastgan.errors import FastganError

__all__ = ["InceptionFeatures", "load_inception", "check_inception_weights"]

FEATURES = (64, 192, 768, 2048)  # the taps torch-fidelity offers; 2048 (the pool) is the standard FID
WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"
# State-dict entries that tell the FID Inception apart from other files (torchvision's ImageNet
# Inception has 1000 classes, the FID graph 1008); a strict load checks every other entry.
_ANCHORS = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
    "fc.weight": (1008, 2048),
}


def _fix() -> str:
    return f"pass --fid-weights the FID Inception weights file ({WEIGHTS_NAME})"


def _brief(e: BaseException, limit: int = 160) -> str:
    """An exception's message on one short line."""
    text = " ".join(line.strip() for line in str(e).strip().splitlines()[:2]) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_inception_weights(path: str | os.PathLike[str]) -> Path:
    """The expanded path of a readable FID Inception state dict, else a one-line ``FastganError``.

    Needs only torch: the file is read with ``weights_only=True`` and a few entries' shapes are
    checked; ``load_inception`` then loads every entry strictly.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FastganError(f"Inception weights {str(p)!r} do not exist; {_fix()}")
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling, zip and I/O errors all mean "not a weights file"
        raise FastganError(
            f"Inception weights {str(p)!r} cannot be read as a PyTorch state dict ({_brief(e)}); {_fix()}"
        ) from None
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise FastganError(f"Inception weights {str(p)!r} hold a {type(sd).__name__}, not a state dict of tensors; {_fix()}")
    for key, shape in _ANCHORS.items():
        got = tuple(sd[key].shape) if key in sd else None
        if got != shape:
            what = "lack" if got is None else f"have {got} for"
            raise FastganError(
                f"Inception weights {str(p)!r} {what} {key!r} (the FID Inception has {shape}); {_fix()}"
            )
    return p


def _no_train_inception():
    """torchmetrics' ``NoTrainInceptionV3``, or a one-line error naming the install when torch-fidelity is absent."""
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        raise FastganError(
            "the Inception FID needs torch-fidelity; pip install 'fastgan[inception]' (it brings torchvision)"
        ) from None
    except Exception as e:  # e.g. a torchvision built for another torch
        raise FastganError(
            f"torch-fidelity is installed but does not import ({_brief(e)}); "
            "install the torchvision that matches your torch"
        ) from None
    from torchmetrics.image.fid import NoTrainInceptionV3

    return NoTrainInceptionV3


class InceptionFeatures(nn.Module):
    """FID Inception-v3 features of images in [-1, 1]: ``features(x)`` is ``(N, num_features)`` float32.

    Input ``(N, C, H, W)`` with C in {1, 3}, any size: mapped to uint8 as StyleGAN does
    (``x * 127.5 + 128``, clamped, truncated), grey repeated to RGB, then torch-fidelity's
    TF1-bilinear resize to 299x299. ``forward`` is ``features``, and ``num_features`` is set, so
    the module is also a torchmetrics ``feature=`` extractor. Build it with ``load_inception``.
    """

    def __init__(self, net: nn.Module, num_features: int) -> None:
        super().__init__()
        self.net = net
        self.num_features = num_features
        self.feature_dim = num_features

    def features(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise FastganError(f"Inception features need (N, 1|3, H, W) images in [-1, 1], got shape {tuple(x.shape)}")
        device = next(self.net.parameters()).device
        u8 = (x.to(device, torch.float32) * 127.5 + 128).clamp(0, 255).to(torch.uint8)
        return self.net(u8.expand(-1, 3, -1, -1))

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


def load_inception(
    path: str | os.PathLike[str], device: str | torch.device = "cpu", feature: int = 2048
) -> InceptionFeatures:
    """The FID Inception from ``path`` (checked, offline), in eval mode on ``device``.

    ``feature`` picks the tap (64, 192, 768 or 2048; published FIDs use 2048). Needs
    torch-fidelity (``pip install 'fastgan[inception]'``); every failure is a one-line ``FastganError``.
    """
    if feature not in FEATURES:
        raise FastganError(f"Inception feature must be one of {FEATURES}, got {feature}")
    p = check_inception_weights(path)
    cls = _no_train_inception()
    try:
        net = cls(name="inception-v3-compat", features_list=[str(feature)],
                  feature_extractor_weights_path=str(p), antialias=False)
    except RuntimeError as e:  # load_state_dict(strict=True): missing, unexpected or mis-shaped entries
        raise FastganError(f"Inception weights {str(p)!r} do not fit the FID Inception ({_brief(e)}); {_fix()}") from None
    return InceptionFeatures(net, feature).to(device).eval().requires_grad_(False)
