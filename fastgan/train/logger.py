"""A run's record log: ``stats.jsonl`` (the source of truth) and, optionally, a TensorBoard mirror.

>>> log = RunLog(run, tensorboard=True)   # RUN/stats.jsonl, RUN/tensorboard/events.out.tfevents.*
>>> log.write({"step": 100, "kimg": 6.4, "img_per_s": 412.0, "loss_D": 1.21, "mode": "eager"})
>>> log.image("samples", images, step=100)  # (N, C, H, W) in [-1, 1]; TensorBoard only (PNGs are the loop's)
>>> log.close()                             # also on errors and Ctrl-C: use ``with RunLog(...) as log``

Every numeric field of a record becomes one TensorBoard scalar at x = ``record["step"]`` (see
:func:`scalar_tags`); strings (the step mode) stay in ``stats.jsonl`` only, and event records
(``{"event": "mode_fallback", ...}``) become text under the tag ``events``.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from fastgan.errors import ConfigError

TENSORBOARD_INSTALL = 'pip install "fastgan[tensorboard]"'
SPEED_KEYS = ("img_per_s", "sec_per_kimg")


def check_tensorboard() -> None:
    """Raise a one-line ConfigError unless ``torch.utils.tensorboard`` can be used here."""
    try:
        import tensorboard  # noqa: F401  (torch.utils.tensorboard needs the package itself)
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except Exception as e:   # missing package, or one that fails to import (e.g. a protobuf mismatch)
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"--tensorboard needs the tensorboard package, which cannot be imported ({reason}); "
                          f"install it with {TENSORBOARD_INSTALL}, or drop --tensorboard") from None


def scalar_tags(rec: dict) -> dict[str, float]:
    """The TensorBoard scalars that mirror one stats.jsonl record, ``{tag: value}``.

    Evaluation records (those with ``fid``) go under ``eval/``, ``img_per_s`` and ``sec_per_kimg`` under
    ``speed/``, every other number of a tick record (losses, D outputs, penalty, kimg, seconds, loss
    scales, ...) under ``train/``. ``step`` is the x axis, not a scalar; event records give none."""
    if "event" in rec:
        return {}
    group = "eval" if "fid" in rec else "train"
    out = {}
    for k, v in rec.items():
        if k == "step" or isinstance(v, str) or not isinstance(v, (int, float)):
            continue
        if group == "eval" and k == "kimg":   # the tick record at the same step carries it
            continue
        out[f"speed/{k}" if k in SPEED_KEYS else f"{group}/{k}"] = float(v)
    return out


class RunLog:
    """Appends records to ``RUN/stats.jsonl`` (flushed per record) and keeps them in ``records``;
    with ``tensorboard=True`` mirrors them, and sample grids, to ``RUN/tensorboard`` (``purge_step``: drop the
    mirrored events from that step on, for a run resumed from the step before it)."""

    def __init__(self, run: str | Path, tensorboard: bool = False, purge_step: int | None = None):
        run = Path(run)
        self.records: list[dict] = []
        self._file = (run / "stats.jsonl").open("a")
        self._tb = None
        if tensorboard:
            try:
                check_tensorboard()
                from torch.utils.tensorboard import SummaryWriter

                # purge_step: a resumed run drops the events it is about to write again
                self._tb = SummaryWriter(log_dir=str(run / "tensorboard"), purge_step=purge_step)
            except BaseException:
                self._file.close()
                raise

    def write(self, rec: dict) -> None:
        """Append ``rec`` to stats.jsonl, then mirror it (numbers as scalars, events as text)."""
        self.records.append(rec)
        self._file.write(json.dumps(rec) + "\n")
        self._file.flush()
        if self._tb is None:
            return
        step = int(rec.get("step", 0))
        if "event" in rec:
            self._tb.add_text("events", json.dumps(rec), step)
        for tag, v in scalar_tags(rec).items():
            self._tb.add_scalar(tag, v, step)
        self._tb.flush()

    def image(self, tag: str, images: torch.Tensor, step: int, nrow: int = 8) -> None:
        """Mirror a sample grid of ``images`` (N, C, H, W) in [-1, 1] to TensorBoard; no-op without it."""
        if self._tb is None:
            return
        from fastgan.train.report import image_grid

        self._tb.add_image(tag, image_grid(images, nrow), step, dataformats="HWC")
        self._tb.flush()

    def close(self) -> None:
        """Close stats.jsonl and the TensorBoard writer; safe to call twice."""
        try:
            if self._tb is not None:
                self._tb.close()
                self._tb = None
        finally:
            self._file.close()

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
