"""The resolved training configuration: a dataclass validated in ``__post_init__``.

Built from defaults, then a TOML file (``--config``), then command-line flags; the resolved
result is written into every run folder as ``config.json`` and into checkpoint metadata.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import sys
from pathlib import Path
from typing import Any

from fastgan.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MODES = ("auto", "eager", "compile", "graphs")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ON_NAN = ("stop", "rollback")


@dataclasses.dataclass
class TrainConfig:
    variant: str = "dcgan"
    data: str = "mnist5k"
    resolution: int = 32
    channels: int | None = None      # None: the dataset's own channel count
    batch: int = 64
    steps: int = 1500                # generator steps
    seed: int = 0
    device: str = "auto"             # auto | cpu | cuda | cuda:N
    out: str | None = None           # run folder; None: runs/<variant>-<data>-<time>
    debug: bool = False              # the variant's CPU-sized flavour
    # model overrides (None: the variant's default). The CLI default width is 32 — a DCGAN sized
    # for 32×32 digits that trains in ~5 minutes on a 2-core CPU; the paper's ngf is --width 64.
    width: int | None = 32
    z_dim: int | None = None
    # optimizer overrides (None: the variant's default)
    lr_g: float | None = None
    lr_d: float | None = None
    # engine
    mode: str = "auto"               # auto | eager | compile | graphs
    compile_mode: str = "default"    # torch.compile mode of the compiled phases (fastgan.train.step.COMPILE_MODES)
    precision: str = "auto"          # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    channels_last: bool | None = None  # None: on for eager steps on CUDA; off for compiled/graphed steps and on CPU
    # generator EMA (StyleGAN convention: half-life in kimg, ramped up early in training)
    ema_kimg: float = 10.0
    ema_rampup: float | None = 0.05
    # ticks
    tick: int = 100                  # steps between status lines and sample grids
    eval_every: int = 500            # steps between domain-FID evaluations (0: only at start and end)
    eval_images: int = 2000          # generated images per evaluation
    eval: bool = True                # compute domain-FID at all
    synthetic_size: int = 4096       # images in the synthetic dataset
    tensorboard: bool = False        # mirror stats.jsonl and sample grids to RUN/tensorboard (fastgan[tensorboard])
    fid_weights: str | None = None   # FID Inception weights file: evaluations add fid_inception (fastgan[inception])
    # checkpoints and faults
    keep: int = 3                    # newest checkpoints kept in RUN/checkpoints/
    on_nan: str = "stop"             # non-finite losses at a tick: stop | rollback (to the last good checkpoint)
    nan_lr_factor: float = 0.5       # rollback multiplies the learning rates by this (0 < f < 1)

    def __post_init__(self):
        _check_types(self)
        if self.out is not None and not self.out.strip():
            raise ConfigError("out must be a folder path (got an empty string); pass --out RUN_DIR or leave it out")
        for name in ("width", "z_dim"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.ema_rampup is not None and self.ema_rampup < 0:
            raise ConfigError(f"ema_rampup must be >= 0 or left out (got {self.ema_rampup})")
        if self.mode not in MODES:
            raise ConfigError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        from fastgan.train.step import COMPILE_MODES

        if self.compile_mode not in COMPILE_MODES:
            raise ConfigError(f"unknown compile mode {self.compile_mode!r}; choose one of {', '.join(COMPILE_MODES)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        for name in ("batch", "steps", "tick", "eval_images", "synthetic_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1 (got {getattr(self, name)}); pass a positive --{name.replace('_', '-')}")
        if self.eval_every < 0:
            raise ConfigError(f"eval_every must be >= 0 (got {self.eval_every})")
        if self.keep < 1:
            raise ConfigError(f"keep must be >= 1 (got {self.keep}); pass --keep K, the newest checkpoints to keep")
        if self.on_nan not in ON_NAN:
            raise ConfigError(f"unknown on_nan {self.on_nan!r}; choose one of {', '.join(ON_NAN)}")
        if not 0 < self.nan_lr_factor < 1:
            raise ConfigError(f"nan_lr_factor must be between 0 and 1 (got {self.nan_lr_factor}); e.g. 0.5 halves "
                              "the learning rates at each rollback")
        if self.ema_kimg < 0:
            raise ConfigError(f"ema_kimg must be >= 0 (got {self.ema_kimg})")
        if not isinstance(self.tensorboard, bool):
            raise ConfigError(f"tensorboard must be true or false (got {self.tensorboard!r})")
        if self.fid_weights is not None:   # the file's contents are checked when the run starts, before its folder
            if not self.eval:
                raise ConfigError("fid_weights needs evaluations; drop --no-eval or --fid-weights")
            if not Path(str(self.fid_weights)).expanduser().is_file():
                raise ConfigError(f"fid_weights {str(self.fid_weights)!r} is not a file; pass --fid-weights the path "
                                  "of the FID Inception weights (weights-inception-2015-12-05-6726825d.pth)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown config key(s) {', '.join(unknown)}; valid keys are {', '.join(sorted(names))}")
        return cls(**d)


_INT64 = 2**63


def _check_types(cfg: TrainConfig) -> None:
    """Every field holds its annotated type: integers (not bools) within 64 bits, finite real numbers, strings,
    bools, or None where the annotation allows it — so a TOML value of the wrong type is a one-line error.
    Numbers are stored as Python int / float (numpy scalars included)."""
    kinds = {"int": numbers.Integral, "float": numbers.Real, "str": str, "bool": bool}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        names = [t.strip() for t in str(f.type).split("|")]
        if v is None and "None" in names:
            continue
        kind = next((k for k in names if k in kinds), None)
        if kind is None:                      # a field of another type checks itself
            continue
        if kind == "str" and isinstance(v, os.PathLike):
            v = os.fspath(v)
            setattr(cfg, f.name, v)
        ok = isinstance(v, kinds[kind]) and (kind == "bool" or not isinstance(v, bool))
        if ok and kind == "int":
            ok = -_INT64 <= int(v) < _INT64
            setattr(cfg, f.name, int(v))
        elif ok and kind == "float":
            try:
                ok = math.isfinite(float(v))
            except OverflowError:                 # an integer too large for a float
                ok = False
            if ok:
                setattr(cfg, f.name, float(v))
        if not ok:
            want = {"int": "an integer within 64 bits", "float": "a finite number", "str": "a string",
                    "bool": "true or false"}[kind] + (" (or left out)" if "None" in names else "")
            raise ConfigError(f"{f.name} must be {want} (got {v!r})")


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file (top-level keys, or a [train] table, not both) into a dict."""
    p = Path(path)
    if not p.is_file():
        what = "is not a file" if p.exists() else "does not exist"
        raise ConfigError(f"config file {str(p)!r} {what}; pass an existing --config FILE.toml")
    try:
        d = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {str(p)!r} is not valid TOML ({str(e).splitlines()[0]}); fix the syntax") from None
    if "train" not in d:
        return d
    if not isinstance(d["train"], dict):
        raise ConfigError(f"config file {str(p)!r}: train must be a [train] table of settings (got {d['train']!r})")
    if len(d) > 1:
        raise ConfigError(f"config file {str(p)!r} has settings both in [train] and at the top level "
                          f"({', '.join(sorted(k for k in d if k != 'train'))}); put them all in one place")
    return dict(d["train"])
