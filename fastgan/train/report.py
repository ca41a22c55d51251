"""Images and plots written into a run folder: sample grids (numpy/Pillow) and the loss/FID plot."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fastgan.train.checkpoint import atomic_write


def image_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] → (rows·(H+pad)+pad, cols·(W+pad)+pad, C) uint8 grid."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    n, c, h, w = x.shape
    nrow = nrow or int(math.ceil(math.sqrt(n)))
    ncol = int(math.ceil(n / nrow))
    grid = np.zeros((ncol * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, nrow)
        y0, x0 = pad + r * (h + pad), pad + q * (w + pad)
        grid[y0:y0 + h, x0:x0 + w] = x[i].transpose(1, 2, 0)
    return grid


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int = 1) -> None:
    g = image_grid(images, nrow)
    img = Image.fromarray(g[..., 0] if g.shape[-1] == 1 else g)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    atomic_write(Path(path), lambda tmp: img.save(tmp, format="PNG"))


def plot_progress(records: list[dict], path: str | Path) -> None:
    """Losses (every tick) and domain-FID (every evaluation) against steps, one PNG."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    ticks = [r for r in records if "loss_D" in r]
    evals = [r for r in records if "fid" in r]
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key in ("loss_D", "loss_G", "penalty"):
        pts = [(r["step"], r[key]) for r in ticks if key in r]
        if pts:
            a0.plot(*zip(*pts), label=key)
    a0.set_xlabel("step")
    a0.set_title("losses")
    if a0.lines:
        a0.legend()
    a0.grid(alpha=0.3)
    if evals:
        a1.plot([r["step"] for r in evals], [r["fid"] for r in evals], "o-", color="C3")
        a1.set_yscale("log")
    a1.set_xlabel("step")
    a1.set_title("domain-FID (lower is better; not Inception FID)")
    a1.grid(alpha=0.3, which="both")
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
