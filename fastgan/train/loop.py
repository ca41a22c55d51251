"""The training loop behind ``fastgan train``: run folder, ticks, evaluation, checkpoints.

Run folder layout::

    config.json               resolved TrainConfig (+ model config, variant, versions)
    stats.jsonl               one JSON record per tick and per evaluation
    samples/step-NNNNNN.png   sample grid from fixed latents (G_ema), one per tick (conditional runs: a row per class)
    samples.png               the latest grid
    progress.png              losses and domain-FID against steps, refreshed at each evaluation
    checkpoint.safetensors    every network and EMA copy (G, D, G_ema, ...; + resolved config as metadata), refreshed at each evaluation
                              (each tick without evaluations) and on Ctrl-C
    summary.json              wall time, throughput, first/last domain-FID
    tensorboard/              with --tensorboard: event files mirroring stats.jsonl and the sample grids
"""
from __future__ import annotations

import dataclasses
import json
import platform
import time
from pathlib import Path
from typing import Callable

import torch

from fastgan.errors import CheckpointError, ConfigError
from fastgan.progress import progress_bar
from fastgan.train.checkpoint import atomic_write, save_checkpoint
from fastgan.train.config import TrainConfig
from fastgan.train.logger import RunLog, check_tensorboard
from fastgan.train.report import plot_progress, save_grid
from fastgan.train.sampling import grid_images
from fastgan.train.trainer import Trainer, resolve_device

RUN_MARKERS = ("config.json", "stats.jsonl", "checkpoint.safetensors")
RUN_OUTPUTS = RUN_MARKERS + ("summary.json", "samples.png", "progress.png")   # every file a run writes at its top


def prepare_run_dir(out: str | None, cfg: TrainConfig) -> Path:
    """Create the run folder; refuse one that already holds a run (nothing is overwritten)."""
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        data = cfg.data.split(":")[0]
        out = f"runs/{cfg.variant}-{data}-{stamp}"
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise CheckpointError(f"--out {str(p)!r} is a file; pass a folder path for the run")
    if p.is_dir() and any((p / m).exists() for m in RUN_MARKERS):
        raise CheckpointError(f"--out {str(p)!r} already holds a run; pass a new --out folder or move that run away")
    taken = [m for m in RUN_OUTPUTS if (p / m).exists()]
    if (p / "samples").is_dir() and any((p / "samples").iterdir()):
        taken.append("samples/")
    if taken:
        raise CheckpointError(f"--out {str(p)!r} already holds {', '.join(taken)}, which a run would overwrite; pass a "
                              "new --out folder")
    (p / "samples").mkdir(parents=True, exist_ok=True)
    return p


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        import triton

        out["triton"] = triton.__version__
    except Exception:
        out["triton"] = "unavailable"
    from fastgan import __version__

    out["fastgan"] = __version__
    return out


def build_trainer(cfg: TrainConfig, dataset) -> tuple[Trainer, object]:
    """The run's Trainer for ``dataset`` (a conditional variant takes its class count) and its model config."""
    from fastgan.train.build import create
    from fastgan.variants import get_variant

    spec = get_variant(cfg.variant)
    num_classes = None
    if spec.conditional:
        if dataset.labels is None or dataset.num_classes < 2:
            raise ConfigError(f"variant {cfg.variant!r} is conditional but dataset {dataset.name!r} has no labels; use "
                              "a labelled dataset (mnist5k, digits, folder:PATH with one subfolder per class, "
                              "npz:PATH with a `labels` array) or an unconditional variant such as dcgan")
        num_classes = dataset.num_classes
    # The debug flavour fixes its own (tiny) width; otherwise cfg.width overrides the variant's.
    trainer = create(cfg.variant, flavor="debug" if cfg.debug else "full", resolution=cfg.resolution,
                     channels=dataset.channels, width=cfg.width, z_dim=cfg.z_dim, num_classes=num_classes,
                     lr_g=cfg.lr_g, lr_d=cfg.lr_d, batch_size=cfg.batch, device=cfg.device, mode=cfg.mode,
                     compile_mode=cfg.compile_mode, precision=cfg.precision, ema_kimg=cfg.ema_kimg,
                     ema_rampup=cfg.ema_rampup, channels_last=cfg.channels_last)
    trainer.check_dataset(dataset)
    return trainer, trainer.model_config


def _print(line: str) -> None:
    print(line, flush=True)


def run_training(cfg: TrainConfig, log: Callable[[str], None] = _print) -> dict:
    """Train ``cfg`` end to end; returns the summary dict (also written to summary.json)."""
    from fastgan.data import InfiniteLoader, load_dataset
    from fastgan.variants import get_variant

    get_variant(cfg.variant)  # fail fast on a bad name, before touching data or disk
    if cfg.tensorboard:
        check_tensorboard()   # a one-line error naming the install, before the run folder exists
    device = resolve_device(cfg.device)
    inception = None
    if cfg.eval and cfg.fid_weights:   # read and checked (one-line errors) before the run folder exists
        from fastgan.metrics import load_inception

        inception = load_inception(cfg.fid_weights, device=device)
    dataset = load_dataset(cfg.data, cfg.resolution, cfg.channels, synthetic_size=cfg.synthetic_size, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    trainer, mcfg = build_trainer(cfg, dataset)   # validates the model config before the folder exists
    # Small datasets (mnist5k is 20 MB) live on the GPU whole: no per-step host-to-device copy. Built before
    # the folder too: it checks the batch against the dataset, and a failed run must leave nothing behind.
    on_device = device.type == "cuda" and dataset.images.numel() * 4 <= 2**30
    loader = iter(InfiniteLoader(dataset, cfg.batch, device, seed=cfg.seed, on_device=on_device))
    run = prepare_run_dir(cfg.out, cfg)
    cfg = dataclasses.replace(cfg, out=str(run))
    resolved = {"train": cfg.to_dict(), "model": dataclasses.asdict(mcfg), "family": get_variant(cfg.variant).family,
                "task": get_variant(cfg.variant).task,
                "device": str(device), "mode": trainer.mode, "mode_reason": trainer.mode_reason,
                "compile_mode": trainer.compile_mode,
                "precision": trainer.precision, "versions": versions()}
    atomic_write(run / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(resolved, indent=2, sort_keys=True)))

    evaluator = None
    if cfg.eval:
        from fastgan.metrics import DomainEvaluator

        t = time.perf_counter()
        evaluator = DomainEvaluator(dataset, device=device, inception=inception)
        log(f"domain feature net ready for {dataset.name} in {time.perf_counter() - t:.1f}s "
            "(FID/KID in this net's feature space: comparable across fastgan runs, not with Inception FID)")

    next_batch = lambda: trainer.prepare(next(loader))  # noqa: E731

    def write(rec: dict) -> None:
        runlog.write(rec)

    def evaluate(step: int) -> dict:
        t = time.perf_counter()
        m = evaluator.evaluate_images(trainer.generate(cfg.eval_images, seed=cfg.seed))
        rec = {"step": step, "kimg": trainer.nimg / 1000, "fid": m["fid"], "kid": m["kid"],
               "precision": m["precision"], "recall": m["recall"], "eval_seconds": time.perf_counter() - t}
        if "fid_inception" in m:
            rec["fid_inception"] = m["fid_inception"]
        write(rec)
        log(f"eval  step {step:>6} | domain-FID {m['fid']:8.3f} | KID {m['kid']:.4f} | "
            f"precision {m['precision']:.3f} recall {m['recall']:.3f} | "
            + (f"Inception-FID {m['fid_inception']:.3f} | " if "fid_inception" in m else "")
            + f"{rec['eval_seconds']:.1f}s")
        plot_progress(runlog.records, run / "progress.png")
        return rec

    def checkpoint(step: int) -> None:
        save_checkpoint(run / "checkpoint.safetensors", {**trainer.nets, **{f"{n}_ema": m for n, m in trainer.ema.items()}},
                        resolved, step=step, kimg=trainer.nimg / 1000)

    def samples(step: int) -> None:
        imgs, nrow = grid_images(trainer.task, trainer.G_ema, seed=cfg.seed, device=trainer.device)
        save_grid(imgs, run / "samples" / f"step-{step:06d}.png", nrow=nrow)
        save_grid(imgs, run / "samples.png", nrow=nrow, scale=2 if cfg.resolution <= 32 else 1)
        runlog.image("samples", imgs, step, nrow=nrow)

    log(f"fastgan train | variant {cfg.variant} | data {dataset.name} ({len(dataset)} images, "
        f"{dataset.channels}x{dataset.resolution}x{dataset.resolution}) | batch {cfg.batch} | steps {cfg.steps} | "
        f"device {device} | mode {trainer.mode} ({trainer.mode_reason})"
        + (f" | compile_mode {trainer.compile_mode}" if trainer.compile_mode != "default" else "")
        + f" | precision {trainer.precision} | out {run}")
    runlog = RunLog(run, tensorboard=cfg.tensorboard)   # stats.jsonl (+ RUN/tensorboard); closed on every exit path
    done = 0                                     # steps completed (what a Ctrl-C checkpoint holds)
    bar = None
    try:
        first = evaluate(0) if evaluator else None
        samples(0)
        t_start = time.perf_counter()
        train_seconds = 0.0
        t_tick, nimg_tick = time.perf_counter(), trainer.nimg
        last = first
        mode_now = trainer.mode
        bar = progress_bar(total=cfg.steps, desc="train", unit="step")   # a bar on a terminal, else nothing drawn
        if log is _print:                        # log lines print above the bar (plain lines without one)
            log = bar.write
        for step in range(1, cfg.steps + 1):
            trainer.step(next_batch)
            done = step
            bar.update(1)
            if trainer.mode != mode_now:   # an engine fallback (a failed graph capture) happens inside a step
                write({"step": step, "event": "mode_fallback", "from": mode_now, "mode": trainer.mode,
                       "mode_reason": trainer.mode_reason})
                log(f"mode fallback at step {step}: {mode_now} -> {trainer.mode} ({trainer.mode_reason})")
                mode_now = trainer.mode
            is_tick = step % cfg.tick == 0 or step == cfg.steps
            is_eval = evaluator is not None and (step == cfg.steps or (cfg.eval_every and step % cfg.eval_every == 0))
            if is_tick or is_eval:
                s = trainer.stats.read()   # the one host sync of the tick
                now = time.perf_counter()
                dt = now - t_tick
                train_seconds += dt
                rate = (trainer.nimg - nimg_tick) / max(dt, 1e-9)
                rec = {"step": step, "kimg": trainer.nimg / 1000, "img_per_s": rate, "sec_per_kimg": 1000 / max(rate, 1e-9),
                       "seconds": now - t_start, "mode": trainer.mode, **s}
                write(rec)
                parts = " ".join(f"{k} {s[k]:.3f}" for k in ("loss_D", "loss_G", "penalty", "D_real", "D_fake") if k in s)
                log(f"step {step:>6}/{cfg.steps} | kimg {rec['kimg']:7.2f} | {rate:7.1f} img/s | {parts} | "
                    f"{rec['seconds']:6.1f}s | {trainer.mode}" + (" | NON-FINITE" if s.get("nonfinite") else ""))
                samples(step)
                if is_eval:
                    last = evaluate(step)
                if is_eval or evaluator is None:     # without evaluations, at every tick
                    checkpoint(step)
                t_tick, nimg_tick = time.perf_counter(), trainer.nimg
    except KeyboardInterrupt:
        if done > 0:                             # Ctrl-C keeps what was trained (atomically written)
            checkpoint(done)
            log(f"interrupted after step {done}: checkpoint saved in {run}")
        raise
    finally:
        if bar is not None:
            bar.close()
        runlog.close()
    wall = time.perf_counter() - t_start
    summary = {"steps": cfg.steps, "kimg": trainer.nimg / 1000, "wall_seconds": wall,
               "train_seconds": train_seconds, "img_per_s": trainer.nimg / max(train_seconds, 1e-9),
               "mode": trainer.mode, "mode_reason": trainer.mode_reason,
               "penalty_mode": trainer.engine.penalty_mode, "precision": trainer.precision,
               "device": str(device), "run": str(run)}
    if first and last:
        summary.update({"fid_start": first["fid"], "fid_end": last["fid"], "kid_end": last["kid"],
                        "precision_end": last["precision"], "recall_end": last["recall"]})
        if "fid_inception" in last:
            summary.update({"fid_inception_start": first["fid_inception"], "fid_inception_end": last["fid_inception"]})
    atomic_write(run / "summary.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2)))
    msg = (f"done in {wall:.1f}s | {summary['img_per_s']:.1f} img/s ({1000 / max(summary['img_per_s'], 1e-9):.1f} s/kimg) "
           f"on {device}, {trainer.mode}")
    if first and last:
        msg += f" | domain-FID {first['fid']:.2f} -> {last['fid']:.2f}"
    log(msg + f" | {run}")
    return summary
