"""The training loop behind ``fastgan train``: run folder, ticks, evaluation, checkpoints.

Run folder layout::

    config.json               resolved TrainConfig (+ model config, variant, versions)
    stats.jsonl               one JSON record per tick and per evaluation
    samples/step-NNNNNN.png   sample grid from fixed latents (G_ema), one per tick
    samples.png               the latest grid
    progress.png              losses and domain-FID against steps, refreshed at each evaluation
    checkpoint.safetensors    G, D, G_ema (+ resolved config as metadata), refreshed at each evaluation
                              (each tick without evaluations) and on Ctrl-C
    summary.json              wall time, throughput, first/last domain-FID
"""
from __future__ import annotations

import dataclasses
import json
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from fastgan.errors import CheckpointError, ConfigError
from fastgan.train.checkpoint import atomic_write, save_checkpoint
from fastgan.train.config import TrainConfig
from fastgan.train.report import plot_progress, save_grid
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
    from fastgan.variants import get_variant

    spec = get_variant(cfg.variant)
    # The debug flavour fixes its own (tiny) width; otherwise cfg.width overrides the variant's.
    G, D, mcfg = spec.build(cfg.debug, resolution=cfg.resolution, channels=dataset.channels,
                            width=None if cfg.debug else cfg.width, z_dim=cfg.z_dim)
    trainer = Trainer(
        G, D, loss=spec.objective, n_critic=spec.n_critic, clip=spec.clip, optimizer=spec.optim.name,
        lr_g=cfg.lr_g or spec.optim.lr_g, lr_d=cfg.lr_d or spec.optim.lr_d, betas=spec.optim.betas,
        batch_size=cfg.batch, device=cfg.device, mode=cfg.mode, compile_mode=cfg.compile_mode, precision=cfg.precision,
        ema_kimg=cfg.ema_kimg, ema_rampup=cfg.ema_rampup, channels_last=cfg.channels_last,
    )
    return trainer, mcfg


def _print(line: str) -> None:
    print(line, flush=True)


def run_training(cfg: TrainConfig, log: Callable[[str], None] = _print) -> dict:
    """Train ``cfg`` end to end; returns the summary dict (also written to summary.json)."""
    from fastgan.data import InfiniteLoader, load_dataset
    from fastgan.variants import get_variant

    get_variant(cfg.variant)  # fail fast on a bad name, before touching data or disk
    device = resolve_device(cfg.device)
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
                "device": str(device), "mode": trainer.mode, "mode_reason": trainer.mode_reason,
                "compile_mode": trainer.compile_mode,
                "precision": trainer.precision, "versions": versions()}
    atomic_write(run / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(resolved, indent=2, sort_keys=True)))

    evaluator = None
    if cfg.eval:
        from fastgan.metrics import DomainEvaluator

        t = time.perf_counter()
        evaluator = DomainEvaluator(dataset, device=device)
        log(f"domain feature net ready for {dataset.name} in {time.perf_counter() - t:.1f}s "
            "(FID/KID in this net's feature space: comparable across fastgan runs, not with Inception FID)")

    next_batch = lambda: trainer._prep(next(loader)[0])  # noqa: E731
    records: list[dict] = []
    stats_path = run / "stats.jsonl"
    stats_file = stats_path.open("a")

    def write(rec: dict) -> None:
        records.append(rec)
        stats_file.write(json.dumps(rec) + "\n")
        stats_file.flush()

    def evaluate(step: int) -> dict:
        t = time.perf_counter()
        m = evaluator.evaluate_generator(trainer.G_ema, num_images=cfg.eval_images, device=device, seed=cfg.seed)
        rec = {"step": step, "kimg": trainer.nimg / 1000, "fid": m["fid"], "kid": m["kid"],
               "precision": m["precision"], "recall": m["recall"], "eval_seconds": time.perf_counter() - t}
        write(rec)
        log(f"eval  step {step:>6} | domain-FID {m['fid']:8.3f} | KID {m['kid']:.4f} | "
            f"precision {m['precision']:.3f} recall {m['recall']:.3f} | {rec['eval_seconds']:.1f}s")
        plot_progress(records, run / "progress.png")
        return rec

    def checkpoint(step: int) -> None:
        save_checkpoint(run / "checkpoint.safetensors", {"G": trainer.G, "D": trainer.D, "G_ema": trainer.G_ema},
                        resolved, step=step, kimg=trainer.nimg / 1000)

    def samples(step: int) -> None:
        imgs = trainer.sample(64, seed=cfg.seed)
        save_grid(imgs, run / "samples" / f"step-{step:06d}.png", nrow=8)
        save_grid(imgs, run / "samples.png", nrow=8, scale=2 if cfg.resolution <= 32 else 1)

    log(f"fastgan train | variant {cfg.variant} | data {dataset.name} ({len(dataset)} images, "
        f"{dataset.channels}x{dataset.resolution}x{dataset.resolution}) | batch {cfg.batch} | steps {cfg.steps} | "
        f"device {device} | mode {trainer.mode} ({trainer.mode_reason})"
        + (f" | compile_mode {trainer.compile_mode}" if trainer.compile_mode != "default" else "")
        + f" | precision {trainer.precision} | out {run}")
    first = evaluate(0) if evaluator else None
    samples(0)
    t_start = time.perf_counter()
    train_seconds = 0.0
    t_tick, nimg_tick = time.perf_counter(), trainer.nimg
    last = first
    done = 0                                     # steps completed (what a Ctrl-C checkpoint holds)
    try:
        mode_now = trainer.mode
        for step in range(1, cfg.steps + 1):
            trainer.step(next_batch)
            done = step
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
        stats_file.close()
    wall = time.perf_counter() - t_start
    summary = {"steps": cfg.steps, "kimg": trainer.nimg / 1000, "wall_seconds": wall,
               "train_seconds": train_seconds, "img_per_s": trainer.nimg / max(train_seconds, 1e-9),
               "mode": trainer.mode, "mode_reason": trainer.mode_reason,
               "penalty_mode": trainer.engine.penalty_mode, "precision": trainer.precision,
               "device": str(device), "run": str(run)}
    if first and last:
        summary.update({"fid_start": first["fid"], "fid_end": last["fid"], "kid_end": last["kid"],
                        "precision_end": last["precision"], "recall_end": last["recall"]})
    atomic_write(run / "summary.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2)))
    msg = (f"done in {wall:.1f}s | {summary['img_per_s']:.1f} img/s ({1000 / max(summary['img_per_s'], 1e-9):.1f} s/kimg) "
           f"on {device}, {trainer.mode}")
    if first and last:
        msg += f" | domain-FID {first['fid']:.2f} -> {last['fid']:.2f}"
    log(msg + f" | {run}")
    return summary
