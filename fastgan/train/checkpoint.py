"""safetensors checkpoints of G, D and G_ema with the resolved config as metadata.

Written atomically (temporary file in the same folder, then ``os.replace``), so an interrupted
save never leaves a half-written checkpoint behind and never clobbers the previous one.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fastgan.errors import CheckpointError

FORMAT = "fastgan-checkpoint-1"
PARTS = ("G", "D", "G_ema")


def _umask() -> int:
    """The process umask, read without changing it where Linux tells it (os.umask sets it to read it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)``, flush it to disk, then move it into place: a crash at any point leaves
    either the old file or the new one, whole. The file gets the permissions a plain ``open`` would give
    (``mkstemp`` makes it owner-only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        try:                                 # the rename itself, durable
            dfd = os.open(path.parent, os.O_RDONLY)
        except OSError:  # pragma: no cover - platforms without directory fds
            return
        try:
            os.fsync(dfd)
        except OSError:  # pragma: no cover
            pass
        finally:
            os.close(dfd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(path: str | Path, modules: dict[str, torch.nn.Module], config: dict, **meta) -> None:
    tensors = {}
    for part, m in modules.items():
        for k, v in m.state_dict().items():
            tensors[f"{part}.{k}"] = v.detach().to("cpu", copy=True).contiguous()  # own storage per entry
    metadata = {"format": FORMAT, "config": json.dumps(config, sort_keys=True),
                **{k: json.dumps(v) for k, v in meta.items()}}
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_metadata(path: str | Path) -> dict:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; point at a run folder written by `fastgan train`")
    try:
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupted or not a safetensors file ({_first_line(e)}); "
                              "re-train or restore it from a backup") from None
    if md.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a fastgan checkpoint (no '{FORMAT}' metadata); point at a fastgan run folder")
    try:
        return {k: json.loads(v) for k, v in md.items() if k != "format"}
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint {str(path)!r} has damaged metadata ({e.msg}); re-train or restore it "
                              "from a backup") from None


def load_checkpoint(path: str | Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """Return ({part: state_dict}, metadata) — metadata["config"] is the resolved TrainConfig dict."""
    md = read_metadata(path)
    try:
        flat = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupted ({_first_line(e)}); re-train or restore it") from None
    parts: dict[str, dict[str, torch.Tensor]] = {p: {} for p in PARTS}
    for k, v in flat.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"checkpoint {str(path)!r} holds non-finite values in {k} (a damaged file, or a run "
                                  "that diverged); restore it from a backup or use an earlier checkpoint")
        part, _, key = k.partition(".")
        parts.setdefault(part, {})[key] = v
    return parts, md


def _first_line(e: Exception) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__
