"""Checkpoints: a run folder's resumable ``checkpoints/step-NNNNNN/`` and the weights-only safetensors format.

A run checkpoint is a folder::

    checkpoints/step-000120/
      weights.safetensors   every network and EMA copy (keys ``G.<param>``, ``D.<param>``, ``G_ema.<param>``;
                            the resolved config, step and kimg as metadata: :func:`load_checkpoint` reads it)
      state.pt              optimizers, loss scalers, engine counters (steps, images, per-update counts that
                            drive lazy terms), steps done, batches drawn from the data stream, every RNG state
                            (torch CPU and CUDA, numpy, Python ``random``), loop clocks; ``torch.load(...,
                            weights_only=True)`` reads it
      config.json           the resolved run config (as the run folder's config.json)
      manifest.json         sha256 and size of each file above; written last: the commit marker

:func:`write_run_checkpoint` writes the files into ``checkpoints/.tmp-step-NNNNNN-<pid>/``, fsyncs them and the
folder, renames it into place, fsyncs ``checkpoints/``, then writes the manifest (atomically), then removes all but
the newest ``keep``. A folder whose manifest is missing, unparsable or does not match its files is never taken as
the latest (:func:`latest_checkpoint`); a crash at any moment leaves the previous checkpoint whole.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import re
import shutil
import tempfile
import time
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
        _fsync_dir(path.parent)              # the rename itself, durable
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


# -- run checkpoints: checkpoints/step-NNNNNN/ ------------------------------------------------------------------

CHECKPOINTS = "checkpoints"
WEIGHTS, STATE, CONFIG, MANIFEST = "weights.safetensors", "state.pt", "config.json", "manifest.json"
FILES = (WEIGHTS, STATE, CONFIG)
MANIFEST_FORMAT = "fastgan-run-checkpoint-1"
STATE_FORMAT = "fastgan-run-state-1"
DEFAULT_KEEP = 3
# Seconds to pause after each file of a checkpoint write and before its rename and manifest. For tests only: it
# widens the write window so that a kill lands inside it.
PAUSE_ENV = "FASTGAN_TEST_CHECKPOINT_PAUSE"
_STEP_DIR = re.compile(r"step-(\d+)")


class NonFiniteState(Exception):
    """The state to checkpoint holds a NaN or inf (``key`` names the first); nothing was written."""

    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def step_dir(step: int) -> str:
    return f"step-{step:06d}"


def checkpoints_dir(run: str | Path) -> Path:
    return Path(run) / CHECKPOINTS


def capture_rng() -> dict:
    """numpy's and Python's global RNG states as plain values and tensors (``torch.load(weights_only=True)`` reads
    them back); the torch states are in the Trainer's training_state."""
    import numpy as np

    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"numpy": (str(name), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
            "python": random.getstate()}


def restore_rng(state: dict, device: torch.device | None = None) -> None:
    """Set every global RNG (torch CPU and CUDA, numpy, Python) from a state :meth:`RunCheckpoint.training_state` returned."""
    import numpy as np

    torch.set_rng_state(state["rng_cpu"].cpu())
    if device is not None and device.type == "cuda" and state.get("rng_cuda") is not None:
        torch.cuda.set_rng_state(state["rng_cuda"].cpu(), device)
    rng = state.get("rng") or {}
    if rng.get("numpy") is not None:
        np.random.set_state(_numpy_state(rng["numpy"]))
    if rng.get("python") is not None:
        random.setstate(_python_state(rng["python"]))


def _numpy_state(saved) -> tuple:
    name, keys, pos, has_gauss, gauss = saved
    return name, keys.numpy().astype("uint32"), pos, has_gauss, gauss


def _python_state(saved) -> tuple:
    version, internal, gauss_next = saved
    return version, tuple(internal), gauss_next


def _check_rng_and_loop(rng, loop) -> None:
    """A TypeError or ValueError unless the saved numpy / Python RNG states would restore (tried on private
    generators) and the loop clocks are numbers."""
    import numpy as np

    if not isinstance(rng, dict) or not isinstance(loop, dict):
        raise TypeError("not a dict")
    if rng.get("numpy") is not None:
        np.random.RandomState().set_state(_numpy_state(rng["numpy"]))
    if rng.get("python") is not None:
        random.Random().setstate(_python_state(rng["python"]))
    if not all(isinstance(loop.get(k, 0.0), (int, float)) for k in ("seconds", "train_seconds")):
        raise TypeError("loop clocks are not numbers")


def _cpu(obj):
    """A deep copy of nested dicts/lists/tuples with every tensor detached and copied to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


def _first_nonfinite(obj, prefix: str) -> str | None:
    if isinstance(obj, torch.Tensor):
        return prefix if obj.is_floating_point() and not bool(torch.isfinite(obj).all()) else None
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for k, v in items:
        bad = _first_nonfinite(v, f"{prefix}.{k}")
        if bad is not None:
            return bad
    return None


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    """Make a folder's entries (a rename into it) durable, where the platform has directory fds."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _pause() -> None:
    delay = os.environ.get(PAUSE_ENV)
    if delay:
        time.sleep(float(delay))


def _discard(path: Path) -> None:
    """Remove a checkpoint folder: renamed to a hidden name first (one atomic step), so a crash midway leaves a
    ``.trash-`` folder that :func:`clean_partial` removes, never a half-deleted ``step-`` folder."""
    trash = path.with_name(f".trash-{path.name}-{os.getpid()}-{time.monotonic_ns()}")
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def clean_partial(run: str | Path) -> list[str]:
    """Remove what interrupted writes and deletions left behind: ``.tmp-*`` and ``.trash-*`` folders and manifest
    temporaries in ``checkpoints/``, :func:`atomic_write` temporaries at the top of the run folder; returns their
    names. Only the process that writes the run's files may call it."""
    removed = []
    for p in sorted([*Path(run).glob(".*.tmp"), *Path(run).glob("samples/.*.tmp")]):   # ``.<name>.<random>.tmp``
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(str(p.relative_to(run)))
    root = checkpoints_dir(run)
    if not root.is_dir():
        return removed
    for p in sorted(root.iterdir()):
        if p.name.startswith((".tmp-", ".trash-")):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p.name)
        elif p.is_dir() and _STEP_DIR.fullmatch(p.name):
            for q in p.glob(f".{MANIFEST}.*.tmp"):
                q.unlink(missing_ok=True)
                removed.append(f"{p.name}/{q.name}")
    return removed


def write_run_checkpoint(run: str | Path, step: int, state: dict, config: dict, *, keep: int = DEFAULT_KEEP,
                         loop: dict | None = None) -> Path:
    """Write ``checkpoints/step-NNNNNN/`` for ``state`` (a :meth:`Trainer.training_state`) at ``step``, with the
    resolved ``config`` and the loop's own values ``loop`` (plain numbers), then keep the newest ``keep``
    checkpoints. Raises :class:`NonFiniteState` (writing nothing) if a weight or optimizer value is NaN or inf."""
    state = _cpu(state)
    bad = _first_nonfinite({k: state[k] for k in ("nets", "ema", "optimizers")}, "state")
    if bad is not None:
        raise NonFiniteState(bad[len("state."):])
    tensors = {}
    for group, suffix in (("nets", ""), ("ema", "_ema")):
        for n, sd in state[group].items():
            for k, v in sd.items():
                tensors[f"{n}{suffix}.{k}"] = v.contiguous()
    kimg = state["engine"]["nimg"] / 1000
    metadata = {"format": FORMAT, "config": json.dumps(config, sort_keys=True), "step": json.dumps(step),
                "kimg": json.dumps(kimg)}
    rest = {k: v for k, v in state.items() if k not in ("nets", "ema")}
    saved = {"format": STATE_FORMAT, "step": step, "trainer": rest, "nets": sorted(state["nets"]),
             "ema": sorted(state["ema"]), "rng": capture_rng(), "loop": dict(loop or {})}
    writers = {WEIGHTS: lambda p: save_file(tensors, str(p), metadata=metadata),
               STATE: lambda p: torch.save(saved, p),
               CONFIG: lambda p: p.write_text(json.dumps(config, indent=2, sort_keys=True))}

    root = checkpoints_dir(run)
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir(step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    files = {}
    for name, write in writers.items():
        path = tmp / name
        write(path)
        os.chmod(path, 0o666 & ~_umask())
        _fsync_file(path)
        files[name] = {"sha256": _sha256(path), "bytes": path.stat().st_size}
        _pause()
    _fsync_dir(tmp)
    if final.exists():                      # a folder of this step that never got a valid manifest
        _discard(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    _pause()
    manifest = {"format": MANIFEST_FORMAT, "step": step, "kimg": kimg, "files": files}
    atomic_write(final / MANIFEST, lambda p: Path(p).write_text(json.dumps(manifest, indent=2, sort_keys=True)))
    _prune(root, keep, step)
    return final


def _prune(root: Path, keep: int, newest: int) -> None:
    """Remove all but the newest ``keep`` checkpoints up to step ``newest`` that carry a manifest (folders of
    later steps are left: the run replaces them when it gets there)."""
    steps = sorted((s, p) for s, p in list_checkpoints(root.parent) if s <= newest)
    kept = 0
    for s, p in reversed(steps):
        if kept < keep and (p / MANIFEST).is_file():
            kept += 1
            continue
        _discard(p)


def list_checkpoints(run: str | Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every ``checkpoints/step-NNNNNN`` folder, newest first, valid or not."""
    root = checkpoints_dir(run)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _STEP_DIR.fullmatch(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return sorted(out, reverse=True)


def verify_checkpoint(path: str | Path) -> str | None:
    """None if the checkpoint folder ``path`` is whole (its manifest lists every file with the right size and
    sha256), else the reason it is not, as a phrase."""
    path = Path(path)
    mpath = path / MANIFEST
    if not mpath.is_file():
        return f"it has no {MANIFEST} (its write was interrupted)"
    try:
        man = json.loads(mpath.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return f"its {MANIFEST} is not valid JSON"
    if not isinstance(man, dict) or man.get("format") != MANIFEST_FORMAT or not isinstance(man.get("files"), dict):
        return f"its {MANIFEST} is not a fastgan checkpoint manifest"
    m = _STEP_DIR.fullmatch(path.name)
    if m and man.get("step") != int(m.group(1)):
        return f"its {MANIFEST} is for step {man.get('step')!r}, not {int(m.group(1))}"
    files = man["files"]
    missing = [f for f in FILES if f not in files]
    if missing:
        return f"its {MANIFEST} does not list {', '.join(missing)}"
    for name in FILES:
        info = files[name]
        p = path / name
        if not isinstance(info, dict) or not isinstance(info.get("sha256"), str):
            return f"its {MANIFEST} entry for {name} is damaged"
        if not p.is_file():
            return f"{name} is missing"
        size = p.stat().st_size
        if size != info.get("bytes"):
            return f"{name} has {size} bytes where {MANIFEST} says {info.get('bytes')} (truncated or replaced)"
        if _sha256(p) != info["sha256"]:
            return f"{name} does not match its sha256 in {MANIFEST} (modified or damaged)"
    return None


@dataclasses.dataclass(frozen=True)
class RunCheckpoint:
    """A verified ``checkpoints/step-NNNNNN`` folder of run ``run``."""
    path: Path
    step: int

    @property
    def name(self) -> str:
        return f"{CHECKPOINTS}/{self.path.name}"

    def weights(self) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
        """({part: state_dict}, metadata) of weights.safetensors (parts ``G``, ``D``, ``G_ema``, ...)."""
        return load_checkpoint(self.path / WEIGHTS)

    def config(self) -> dict:
        """The resolved run config it was written with."""
        try:
            cfg = json.loads((self.path / CONFIG).read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise CheckpointError(f"{self.path / CONFIG} cannot be read ({_first_line(e)}); restore it from a backup "
                                  "or start a new run") from None
        if not isinstance(cfg, dict) or not isinstance(cfg.get("train"), dict):
            raise CheckpointError(f"{self.path / CONFIG} is not a fastgan run config; restore it from a backup or "
                                  "start a new run")
        return cfg

    def training_state(self) -> dict:
        """The :meth:`Trainer.training_state` it holds (CPU tensors), plus ``rng`` (numpy and Python) and ``loop``."""
        parts, _ = self.weights()
        try:
            saved = torch.load(self.path / STATE, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{self.path / STATE} cannot be read ({_first_line(e)}); restore it from a backup "
                                  "or resume from an earlier checkpoint") from None
        if not isinstance(saved, dict) or saved.get("format") != STATE_FORMAT:
            raise CheckpointError(f"{self.path / STATE} is not a fastgan run state (no '{STATE_FORMAT}' format); "
                                  "restore it from a backup")
        try:
            state = dict(saved["trainer"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{self.path / STATE} holds no trainer state; restore it from a backup or resume "
                                  "from an earlier checkpoint") from None
        try:
            state["nets"] = {n: parts[n] for n in saved["nets"]}
            state["ema"] = {n: parts[f"{n}_ema"] for n in saved["ema"]}
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"{self.path / WEIGHTS} lacks the weights of {e.args[0]} that {STATE} names; "
                                  "restore the checkpoint from a backup") from None
        state["rng"], state["loop"] = saved.get("rng") or {}, saved.get("loop") or {}
        try:
            _check_rng_and_loop(state["rng"], state["loop"])
        except (TypeError, ValueError, AttributeError, OverflowError) as e:
            raise CheckpointError(f"{self.path / STATE} holds damaged RNG or loop state ({_first_line(e)}); restore "
                                  "it from a backup or resume from an earlier checkpoint") from None
        return state


def latest_checkpoint(run: str | Path) -> tuple[RunCheckpoint | None, list[str]]:
    """The newest whole checkpoint of ``run`` (None if there is none) and, for each newer folder skipped, a
    phrase saying why (``"checkpoints/step-000120: it has no manifest.json (...)"``)."""
    skipped = []
    for step, path in list_checkpoints(run):
        reason = verify_checkpoint(path)
        if reason is None:
            return RunCheckpoint(path, step), skipped
        skipped.append(f"{CHECKPOINTS}/{path.name}: {reason}")
    return None, skipped


def require_checkpoint(run: str | Path, what: str) -> tuple[RunCheckpoint, list[str]]:
    """:func:`latest_checkpoint`, or a one-line CheckpointError naming why ``run`` has none (``what``: the
    command that needed it, e.g. ``"--resume"``)."""
    ck, skipped = latest_checkpoint(run)
    if ck is not None:
        return ck, skipped
    if skipped:
        raise CheckpointError(f"{what}: run folder {str(run)!r} has no valid checkpoint ({skipped[0]}"
                              + (f"; and {len(skipped) - 1} older" if len(skipped) > 1 else "")
                              + "); restore the folder from a backup or start a new run")
    raise CheckpointError(f"{what}: run folder {str(run)!r} has no checkpoints/ (it stopped before its first "
                          "checkpoint, or is not a run folder); start a new run")


def read_records(path: str | Path, upto: int) -> list[dict]:
    """The records of a stats.jsonl up to and including step ``upto``; later ones (written after the checkpoint a
    run resumes from) and a line cut off by a crash are dropped."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= upto:
            out.append(rec)
    return out


def rewrite_records(path: str | Path, records: list[dict]) -> None:
    """Replace stats.jsonl with ``records`` atomically."""
    text = "".join(json.dumps(r) + "\n" for r in records)
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))


def nonfinite_keys(stats: dict[str, float]) -> list[str]:
    """The stats of a tick read that are NaN or inf."""
    return [k for k, v in stats.items() if k != "nonfinite" and isinstance(v, float) and not math.isfinite(v)]
