"""Images from a task's generator: fixed-noise samples (grids, ``sample``) and seeded batches for evaluation.

Used by the Trainer and by ``fastgan sample`` / ``fastgan eval`` on a run's checkpoint alike.
"""
from __future__ import annotations

import torch
from torch import nn

from fastgan.tasks.base import Task


@torch.no_grad()
def sample_images(task: Task, net: nn.Module, n: int, *, seed: int = 0, device: torch.device | None = None,
                  **conditions) -> torch.Tensor:
    """``n`` images in [-1, 1] (CPU, fp32) from ``net`` (the task's generator or its EMA copy) on noise drawn
    from a private generator seeded with ``seed`` (the global RNG is untouched); ``conditions`` go to the
    task (``labels=`` for conditional runs). ``net`` runs in eval mode and is put back as it was."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    if device is None:
        device = next((p.device for p in net.parameters()), torch.device("cpu"))
    inputs = tuple(t.to(device) for t in task.sample_inputs(n, g, **conditions))
    was = net.training
    net.eval()
    try:
        return net(*inputs).float().clamp(-1, 1).cpu()
    finally:
        net.train(was)


@torch.no_grad()
def generate_images(task: Task, net: nn.Module, n: int, *, seed: int = 0, batch_size: int = 250,
                    device: torch.device | None = None) -> torch.Tensor:
    """``n`` images for evaluation, in chunks of ``batch_size`` from seeded noise; a conditional task's labels
    (InfoGAN's first code) are uniform over its classes."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    k = task.num_classes
    out = []
    for i in range(0, n, batch_size):
        b = min(batch_size, n - i)
        cond = {"labels": torch.randint(0, k, (b,), generator=g)} if k else {}
        out.append(sample_images(task, net, b, seed=int(torch.randint(0, 2**31 - 1, (), generator=g)),
                                 device=device, **cond))
    return torch.cat(out)


def grid_images(task: Task, net: nn.Module, *, seed: int = 0, per_row: int = 8, labels=None,
                device: torch.device | None = None) -> tuple[torch.Tensor, int]:
    """(images, nrow) of a sample grid: 8×8 for an unconditional task; for a conditional one (or InfoGAN's first
    code) a row of ``per_row`` samples per class, or per class of ``labels`` when given."""
    k = task.num_classes
    if not k:
        return sample_images(task, net, 64, seed=seed, device=device), 8
    rows = torch.arange(k) if labels is None else torch.as_tensor(labels).reshape(-1)
    return sample_images(task, net, len(rows) * per_row, seed=seed, device=device,
                         labels=rows.repeat_interleave(per_row)), per_row
