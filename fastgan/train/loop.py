"""The training loop behind ``fastgan train``: run folder, ticks, evaluation, checkpoints.

Run folder layout::

    config.json               resolved TrainConfig (+ model config, variant, versions)
    stats.jsonl               one JSON record per tick and per evaluation
    samples/step-NNNNNN.png   sample grid from fixed latents (G_ema), one per tick (conditional runs: a row per class)
    samples.png               the latest grid
    progress.png              losses and domain-FID against steps, refreshed at each evaluation
    checkpoints/step-NNNNNN/  everything that resumes the run exactly (fastgan.train.checkpoint): at step 0, at each
                              evaluation (each tick without evaluations) and when SIGTERM/SIGINT stop the run; the
                              newest ``keep`` are kept
    summary.json              wall time, throughput, first/last domain-FID
    tensorboard/              with --tensorboard: event files mirroring stats.jsonl and the sample grids

``run_training(cfg, resume=RUN)`` continues a run from its latest valid checkpoint: the same batches, noise and
updates as a run that was never stopped. Non-finite losses at a tick (or weights at a checkpoint) stop the run
(TrainingDiverged, naming the last good checkpoint) or, with ``on_nan="rollback"``, reload that checkpoint with
the learning rates multiplied by ``nan_lr_factor`` and go on.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import platform
import signal
import threading
import time
from pathlib import Path
from typing import Callable

import torch

from fastgan.errors import CheckpointError, ConfigError, RunStopped, TrainingDiverged
from fastgan.progress import progress_bar
from fastgan.train.checkpoint import (CONFIG, NonFiniteState, RunCheckpoint, atomic_write, clean_partial,
                                      latest_checkpoint, nonfinite_keys, read_records, require_checkpoint,
                                      restore_rng, rewrite_records, write_run_checkpoint)
from fastgan.train.config import TrainConfig
from fastgan.train.distributed import SINGLE, DistContext
from fastgan.train.logger import RunLog, check_tensorboard
from fastgan.train.report import plot_progress, save_grid
from fastgan.train.sampling import grid_images
from fastgan.train.trainer import Trainer, resolve_device

RUN_MARKERS = ("config.json", "stats.jsonl", "checkpoint.safetensors", "checkpoints")
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
    try:
        (p / "samples").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"cannot create the run folder {str(p)!r} ({e.strerror or e}); pass an --out folder "
                              "in a writable place") from None
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


def build_trainer(cfg: TrainConfig, dataset, dist: DistContext = SINGLE) -> tuple[Trainer, object]:
    """The run's Trainer for ``dataset`` (a conditional variant takes its class count) and its model config;
    ``dist``: this process's rank of a data-parallel run."""
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

    def build(batch: int) -> Trainer:
        # The debug flavour fixes its own (tiny) width; otherwise cfg.width overrides the variant's.
        return create(cfg.variant, flavor="debug" if cfg.debug else "full", resolution=cfg.resolution,
                      channels=dataset.channels, width=cfg.width, z_dim=cfg.z_dim, num_classes=num_classes,
                      lr_g=cfg.lr_g, lr_d=cfg.lr_d, batch_size=batch, device=cfg.device, mode=cfg.mode,
                      compile_mode=cfg.compile_mode, precision=cfg.precision, ema_kimg=cfg.ema_kimg,
                      ema_rampup=cfg.ema_rampup, channels_last=cfg.channels_last, distributed=dist)
    try:
        trainer = build(cfg.batch)
    except torch.cuda.OutOfMemoryError:
        raise ConfigError(_out_of_memory_at_build(cfg, build)) from None
    trainer.check_dataset(dataset)
    return trainer, trainer.model_config


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _out_of_memory_at_build(cfg: TrainConfig, build: Callable[[int], Trainer]) -> str:
    """The message for a run whose networks ran out of GPU memory in the Trainer's probe (each network once at
    the training batch): the probe is retried at halved batches to name one that fits. Nothing is changed."""
    what = f"out of GPU memory running the networks once at batch {cfg.batch} (the Trainer's build-time probe)"
    batch = cfg.batch // 2
    while batch >= 1:
        _free_memory()
        try:
            build(batch)                   # built and dropped: only the batch size that fits is reported
        except torch.cuda.OutOfMemoryError:
            batch //= 2
            continue
        _free_memory()
        return (f"{what}; the probe fits at batch {batch}, and training also needs memory for gradients and "
                f"optimizer state: pass --batch {batch} or less, or lower --width or --resolution")
    _free_memory()
    return (f"{what}, and at every smaller batch down to 1: the networks alone do not fit; lower --width or "
            "--resolution, or free the GPU (nvidia-smi shows what else holds its memory)")


def _quiet(line: str) -> None:
    """The log of a data-parallel run's other ranks: rank 0 speaks for the run."""


class _NullLog:
    """The run log of a data-parallel run's other ranks: records nothing, writes nothing."""

    def __init__(self):
        self.records: list[dict] = []

    def write(self, rec: dict) -> None:
        pass

    def image(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


def _agreed_signal(signum: int | None) -> int | None:
    """The stop signal any rank has received (the largest number), agreed by all ranks of the process group."""
    flag = torch.tensor([signum or 0], dtype=torch.int64,
                        device="cuda" if torch.distributed.get_backend() == "nccl" else "cpu")
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return int(flag) or None


def _print(line: str) -> None:
    print(line, flush=True)


# Settings a resumed run may change; every other one is the saved run's (a different value is a conflict).
RESUME_FLAGS = ("steps", "keep", "on_nan", "nan_lr_factor")
MAX_ROLLBACKS = 3       # rollbacks to one checkpoint before a run with on_nan="rollback" gives up


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def resume_config(run_dir: str | Path, overrides: dict | None = None) -> TrainConfig:
    """The TrainConfig that continues run ``run_dir``: its saved config (RUN/config.json, else its latest
    checkpoint's) with ``overrides`` applied to the settings of RESUME_FLAGS. An override of any other setting
    with another value is a one-line ConfigError naming it; a folder without a valid checkpoint a CheckpointError."""
    run = Path(run_dir)
    if not run.is_dir():
        raise CheckpointError(f"--resume {str(run_dir)!r} is not a folder; pass a run folder written by `fastgan train`")
    ck, _ = require_checkpoint(run, "--resume")
    try:
        saved = json.loads((run / CONFIG).read_text())["train"]
        if not isinstance(saved, dict):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        saved = ck.config()["train"]
    conflicts = []
    merged = dict(saved)
    for k, v in (overrides or {}).items():
        if k in RESUME_FLAGS:
            merged[k] = v
        elif k == "out":
            if Path(v).resolve() != run.resolve():
                conflicts.append(f"--out {v} (the run is {run})")
        elif saved.get(k) != v:
            conflicts.append(f"{_flag(k)} {v} (the run has {saved.get(k)})")
    if conflicts:
        raise ConfigError(f"--resume continues {str(run)!r} with its saved settings, and {'; '.join(conflicts)} "
                          f"{'differs' if len(conflicts) == 1 else 'differ'} from them; drop "
                          f"{'it' if len(conflicts) == 1 else 'them'} (only {', '.join(map(_flag, RESUME_FLAGS))} "
                          "may change on resume) or start a new run with --out")
    merged["out"] = str(run)
    return TrainConfig.from_dict(merged)


def _check_checkpoint_config(ck: RunCheckpoint, cfg: TrainConfig, model: dict | None = None) -> None:
    """A one-line CheckpointError if ``ck`` was written by a run of other settings (variant, data, resolution, ...,
    all but RESUME_FLAGS and the folder) or another model config than ``model``."""
    saved = ck.config()
    mine = cfg.to_dict()
    for k, v in saved["train"].items():
        if k in RESUME_FLAGS or k == "out" or k not in mine or mine[k] == v:
            continue
        raise CheckpointError(f"{ck.path} was written by a run with {k} {v!r}, but this run has {k} {mine[k]!r}; "
                              f"resume a run from its own checkpoints (or remove {ck.name} from it)")
    if model is not None and isinstance(saved.get("model"), dict):
        for k, v in saved["model"].items():
            if model.get(k, v) != v:
                raise CheckpointError(f"{ck.path} holds a model with {k} {v!r}, this run builds {k} {model[k]!r}; "
                                      f"resume a run from its own checkpoints (or remove {ck.name} from it)")


class _StopSignals:
    """While active, SIGTERM and SIGINT set ``signum``: the loop finishes its step, checkpoints and stops. A second
    signal raises KeyboardInterrupt at once. Inactive off the main thread (Python runs handlers there only). A
    signal the process ignores stays ignored (a shell starts a background job `fastgan train ... &` with SIGINT
    ignored, so the terminal's Ctrl-C is not meant for it)."""

    def __enter__(self) -> "_StopSignals":
        self.signum: int | None = None
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _scale_learning_rates(trainer: Trainer, factor: float) -> None:
    for opt in trainer.optimizers.values():
        for group in opt.param_groups:
            group["lr"] = group["lr"] * factor


def _reopen_log(run: Path, cfg: TrainConfig, step: int) -> RunLog:
    """The run's log continued from checkpoint ``step``: stats.jsonl keeps the records up to it (those after it
    are written again), which ``records`` holds; the TensorBoard mirror drops its later events."""
    kept = read_records(run / "stats.jsonl", step)
    rewrite_records(run / "stats.jsonl", kept)
    runlog = RunLog(run, tensorboard=cfg.tensorboard, purge_step=step + 1)
    runlog.records = kept
    return runlog


def _rollback_target(run: Path, cfg: TrainConfig, what: str, rollbacks: dict[int, int]) -> tuple[RunCheckpoint, float]:
    """(the checkpoint to roll back to, the factor on its learning rates) for ``what`` (a non-finite value at a
    step), counting rollbacks per checkpoint in ``rollbacks``; raises TrainingDiverged where the run must stop
    (``cfg.on_nan`` is stop, no valid checkpoint, or MAX_ROLLBACKS to one checkpoint already)."""
    good, _ = latest_checkpoint(run)
    if good is None:
        raise TrainingDiverged(f"{what} and no valid checkpoint in {run} to go back to; train with lower lr_g / lr_d "
                               "(--config)")
    if cfg.on_nan != "rollback":
        raise TrainingDiverged(f"{what}; the last good checkpoint is {good.path} (step {good.step}): resume from it "
                               f"with `fastgan train --resume {run} --on-nan rollback` (which lowers the learning "
                               "rates on a NaN), or train with lower lr_g / lr_d (--config)")
    n = rollbacks[good.step] = rollbacks.get(good.step, 0) + 1
    if n > MAX_ROLLBACKS:
        raise TrainingDiverged(f"{what} after {MAX_ROLLBACKS} rollbacks to {good.path} (learning rates "
                               f"x{cfg.nan_lr_factor ** MAX_ROLLBACKS:g}); train with lower lr_g / lr_d (--config) or "
                               "another variant")
    return good, cfg.nan_lr_factor ** n


def run_training(cfg: TrainConfig, log: Callable[[str], None] = _print, *, resume: str | Path | None = None,
                 dist: DistContext = SINGLE) -> dict:
    """Train ``cfg`` end to end; returns the summary dict (also written to summary.json). ``resume``: a run folder
    to continue from its latest valid checkpoint (``cfg`` from :func:`resume_config`). SIGTERM / SIGINT stop it
    after the current step with a checkpoint (RunStopped); non-finite values stop it (TrainingDiverged) or roll
    it back (``cfg.on_nan``). ``dist``: this process's rank of a data-parallel run (``torchrun``): every rank
    trains its share; rank 0 alone writes the run folder, logs, samples and evaluates; a stop signal is acted
    on at the next tick, by all ranks together; the ranks read checkpoints from the run folder (multi-node runs
    need it on a shared filesystem)."""
    main = dist.is_main
    if not main:
        log = _quiet
    from fastgan.data import InfiniteLoader, load_dataset
    from fastgan.variants import get_variant

    ck = None
    if resume is not None:                      # checked before data or models are touched
        ck, skipped = require_checkpoint(resume, "--resume")
        _check_checkpoint_config(ck, cfg)
        if cfg.steps <= ck.step:
            raise ConfigError(f"run {str(resume)!r} is at step {ck.step} (its latest checkpoint) and trains to step "
                              f"{cfg.steps}; pass --steps N with N > {ck.step} to train further")
        for why in skipped:
            log(f"skipping {why}")
    spec = get_variant(cfg.variant)  # fail fast on a bad name, before touching data or disk
    # The model config (resolution, width, z_dim) is checked before the data is read at that resolution.
    spec.model_config(cfg.debug, resolution=cfg.resolution, width=None if cfg.debug else cfg.width, z_dim=cfg.z_dim)
    if cfg.tensorboard:
        check_tensorboard()   # a one-line error naming the install, before the run folder exists
    device = resolve_device(cfg.device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)          # one GPU per rank
        cfg = dataclasses.replace(cfg, device=str(device))
    inception = None
    if main and cfg.eval and cfg.fid_weights:   # read and checked (one-line errors) before the run folder exists
        from fastgan.metrics import load_inception

        inception = load_inception(cfg.fid_weights, device=device)
    dataset = load_dataset(cfg.data, cfg.resolution, cfg.channels, synthetic_size=cfg.synthetic_size, seed=cfg.seed)
    if cfg.batch > len(dataset):                # before any network is run at that batch size
        raise ConfigError(f"batch size {cfg.batch} is larger than dataset {dataset.name!r} ({len(dataset)} images); "
                          f"lower --batch to at most {len(dataset)}")
    # Small datasets (mnist5k is 20 MB) live on the GPU whole: no per-step host-to-device copy.
    on_device = device.type == "cuda" and dataset.images.numel() * 4 <= 2**30

    def start_from(ck: RunCheckpoint | None, lr_factor: float = 1.0):
        """(trainer, model config, batch stream, restored state or None): a new run's, or ``ck``'s exactly."""
        torch.manual_seed(cfg.seed)
        trainer, mcfg = build_trainer(cfg, dataset, dist)   # validates the model config before the folder exists
        state = None
        if ck is not None:
            state = ck.training_state()
            _check_checkpoint_config(ck, cfg, dataclasses.asdict(mcfg))
            trainer.restore(state, source=f"checkpoint {ck.path}")
            if lr_factor != 1.0:
                _scale_learning_rates(trainer, lr_factor)
        # Built before the folder too: it checks the batch against the dataset, and a failed run leaves nothing.
        loader = InfiniteLoader(dataset, cfg.batch, device, seed=cfg.seed, on_device=on_device,
                                skip=trainer.batches_drawn, shard=(dist.rank, dist.world))
        return trainer, mcfg, loader, state

    trainer, mcfg, loader, state = start_from(ck)
    if not main:
        run = None
    elif ck is None:
        run = prepare_run_dir(cfg.out, cfg)
    else:
        run = Path(resume)
        clean_partial(run)
    if dist.enabled:                             # every rank learns the folder rank 0 made (a timestamped name)
        box = [str(run) if main else None]
        torch.distributed.broadcast_object_list(box, src=0)
        run = Path(box[0])
    cfg = dataclasses.replace(cfg, out=str(run))
    resolved = {"train": cfg.to_dict(), "model": dataclasses.asdict(mcfg), "family": get_variant(cfg.variant).family,
                "task": get_variant(cfg.variant).task,
                "device": str(device), "mode": trainer.mode, "mode_reason": trainer.mode_reason,
                "compile_mode": trainer.compile_mode,
                "precision": trainer.precision, "versions": versions(), "processes": dist.world}
    if main:
        atomic_write(run / "config.json",
                     lambda tmp: Path(tmp).write_text(json.dumps(resolved, indent=2, sort_keys=True)))

    evaluator = None
    if main and cfg.eval:
        from fastgan.metrics import DomainEvaluator

        t = time.perf_counter()
        evaluator = DomainEvaluator(dataset, device=device, inception=inception)
        log(f"domain feature net ready for {dataset.name} in {time.perf_counter() - t:.1f}s "
            "(FID/KID in this net's feature space: comparable across fastgan runs, not with Inception FID)")

    def next_batch():
        batch = next(loader)
        trainer.batches_drawn += 1               # the stream position a checkpoint saves
        return trainer.prepare(batch)

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

    def clock() -> dict:
        return {"seconds": seconds0 + time.perf_counter() - t_start, "train_seconds": train_seconds}

    def checkpoint(step: int) -> None:
        """Raises NonFiniteState (writing nothing) if a weight or optimizer value is NaN or inf. Rank 0 writes;
        every rank waits until it has (a rollback or resume reads it)."""
        nonlocal saved_step
        if main:
            write_run_checkpoint(run, step, trainer.training_state(), resolved, keep=cfg.keep, loop=clock())
        dist.barrier()
        saved_step = step

    def samples(step: int) -> None:
        if not main:
            return
        imgs, nrow = grid_images(trainer.task, trainer.G_ema, seed=cfg.seed, device=trainer.device)
        save_grid(imgs, run / "samples" / f"step-{step:06d}.png", nrow=nrow)
        save_grid(imgs, run / "samples.png", nrow=nrow, scale=2 if cfg.resolution <= 32 else 1)
        runlog.image("samples", imgs, step, nrow=nrow)

    def last_good() -> str:
        good, _ = latest_checkpoint(run)
        return f"{good.path} (step {good.step})" if good else "none (the run folder has no valid checkpoint)"

    log(f"fastgan train | variant {cfg.variant} | data {dataset.name} ({len(dataset)} images, "
        f"{dataset.channels}x{dataset.resolution}x{dataset.resolution}) | batch {cfg.batch} | steps {cfg.steps} | "
        f"device {device} | mode {trainer.mode} ({trainer.mode_reason})"
        + (f" | compile_mode {trainer.compile_mode}" if trainer.compile_mode != "default" else "")
        + f" | precision {trainer.precision} | out {run}"
        + (f" | resumed from {ck.name}" if ck is not None else ""))
    runlog = (_NullLog() if not main else
              RunLog(run, tensorboard=cfg.tensorboard) if ck is None else _reopen_log(run, cfg, ck.step))
    records = runlog.records
    start = trainer.steps_done
    saved_step = None if ck is None else ck.step          # the step of the newest checkpoint on disk
    seconds0 = state["loop"].get("seconds", 0.0) if state else 0.0
    train_seconds = state["loop"].get("train_seconds", 0.0) if state else 0.0
    t_start = time.perf_counter()
    first = next((r for r in records if "fid" in r), None)
    last = next((r for r in reversed(records) if "fid" in r), None)
    rollbacks: dict[int, int] = {}
    bar = None
    try:
        with _StopSignals() as stop:
            if ck is None:
                first = last = evaluate(0) if evaluator is not None else None
                samples(0)
                checkpoint(0)
            bar = progress_bar(total=cfg.steps if main else None, desc="train", unit="step")   # a bar on a terminal
            bar.update(start)
            if log is _print:                    # log lines print above the bar (plain lines without one)
                log = bar.write
            if state is not None:                # after the evaluator and samples, which may draw random numbers
                restore_rng(state, trainer.device)
            t_tick, nimg_tick = time.perf_counter(), trainer.nimg
            mode_now = trainer.mode
            step = start
            while step < cfg.steps:
                try:
                    trainer.step(next_batch)
                except torch.cuda.OutOfMemoryError:
                    if step > start:
                        raise
                    raise ConfigError(f"out of GPU memory in the first training step at batch {cfg.batch} (the networks "
                                      "ran once at build; gradients and optimizer state did not fit): pass --batch "
                                      f"{max(1, cfg.batch // 2)} or less, or lower --width or --resolution") from None
                step += 1
                bar.update(1)
                if trainer.mode != mode_now:   # an engine fallback (a failed graph capture) happens inside a step
                    write({"step": step, "event": "mode_fallback", "from": mode_now, "mode": trainer.mode,
                           "mode_reason": trainer.mode_reason})
                    log(f"mode fallback at step {step}: {mode_now} -> {trainer.mode} ({trainer.mode_reason})")
                    mode_now = trainer.mode
                is_tick = step % cfg.tick == 0 or step == cfg.steps
                # (cfg.eval, not the evaluator: every rank of a data-parallel run must reach the same ticks)
                is_eval = bool(cfg.eval) and (step == cfg.steps or (cfg.eval_every and step % cfg.eval_every == 0))
                if is_tick or is_eval:
                    s = trainer.stats.read(reduce=dist.mean if dist.enabled else None)   # the tick's one host sync
                    now = time.perf_counter()
                    dt = now - t_tick
                    train_seconds += dt
                    rate = (trainer.nimg - nimg_tick) / max(dt, 1e-9)
                    rec = {"step": step, "kimg": trainer.nimg / 1000, "img_per_s": rate,
                           "sec_per_kimg": 1000 / max(rate, 1e-9), "seconds": seconds0 + now - t_start,
                           "mode": trainer.mode, **s}
                    write(rec)
                    parts = " ".join(f"{k} {s[k]:.3f}" for k in ("loss_D", "loss_G", "penalty", "D_real", "D_fake")
                                     if k in s)
                    log(f"step {step:>6}/{cfg.steps} | kimg {rec['kimg']:7.2f} | {rate:7.1f} img/s | {parts} | "
                        f"{rec['seconds']:6.1f}s | {trainer.mode}" + (" | NON-FINITE" if s.get("nonfinite") else ""))
                    bad = [f"losses ({', '.join(nonfinite_keys(s)) or 'stats'})"] if s.get("nonfinite") else []
                    if not bad:
                        samples(step)
                        if is_eval and evaluator is not None:
                            last = evaluate(step)
                        if is_eval or not cfg.eval:          # without evaluations, at every tick
                            try:
                                checkpoint(step)
                            except NonFiniteState as e:
                                bad = [f"values in {e.key}"]
                    if bad:
                        good, factor = _rollback_target(run, cfg, f"non-finite {bad[0]} at step {step}", rollbacks)
                        loader.close()
                        del trainer
                        _free_memory()
                        trainer, _, loader, state = start_from(good, lr_factor=factor)
                        restore_rng(state, trainer.device)
                        runlog.close()
                        runlog = _reopen_log(run, cfg, good.step) if main else _NullLog()
                        kept = runlog.records
                        write({"step": good.step, "event": "nonfinite_rollback", "detected_at": step,
                               "what": bad[0], "lr_factor": factor})
                        log(f"non-finite {bad[0]} at step {step}: rolled back to {good.name}, learning rates "
                            f"x{factor:g} of that checkpoint's")
                        bar.update(good.step - step)
                        step, saved_step = good.step, good.step
                        last = next((r for r in reversed(kept) if "fid" in r), None)
                        mode_now = trainer.mode
                    t_tick, nimg_tick = time.perf_counter(), trainer.nimg
                if dist.enabled and (is_tick or is_eval):   # the ranks stop together, at a tick
                    stop.signum = _agreed_signal(stop.signum)
                if stop.signum is not None and step < cfg.steps and (not dist.enabled or is_tick or is_eval):
                    name = signal.Signals(stop.signum).name
                    if saved_step != step:
                        try:
                            checkpoint(step)
                        except NonFiniteState as e:
                            raise TrainingDiverged(f"{name} at step {step}: not checkpointed, its values in {e.key} "
                                                   f"are non-finite; the last good checkpoint is {last_good()}") from None
                    raise RunStopped(f"{name}: stopped after step {step} with a checkpoint in {run}/checkpoints; "
                                     f"continue with `fastgan train --resume {run}`", stop.signum)
    except KeyboardInterrupt as e:
        # RunStopped has checkpointed its step; any other interruption may have come mid-step, so nothing is written.
        if not isinstance(e, RunStopped):
            log(f"interrupted; the latest checkpoint is {last_good()}")
        raise
    finally:
        if bar is not None:
            bar.close()
        runlog.close()
        loader.close()
    wall = seconds0 + time.perf_counter() - t_start
    summary = {"steps": cfg.steps, "kimg": trainer.nimg / 1000, "wall_seconds": wall,
               "train_seconds": train_seconds, "img_per_s": trainer.nimg / max(train_seconds, 1e-9),
               "mode": trainer.mode, "mode_reason": trainer.mode_reason,
               "penalty_mode": trainer.engine.penalty_mode, "precision": trainer.precision,
               "device": str(device), "run": str(run)}
    if first and last:
        summary.update({"fid_start": first["fid"], "fid_end": last["fid"], "kid_end": last["kid"],
                        "precision_end": last["precision"], "recall_end": last["recall"]})
        if "fid_inception" in last and "fid_inception" in first:
            summary.update({"fid_inception_start": first["fid_inception"], "fid_inception_end": last["fid_inception"]})
    dist.barrier()
    if not main:
        return summary
    atomic_write(run / "summary.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2)))
    msg = (f"done in {wall:.1f}s | {summary['img_per_s']:.1f} img/s ({1000 / max(summary['img_per_s'], 1e-9):.1f} s/kimg) "
           f"on {device}, {trainer.mode}")
    if first and last:
        msg += f" | domain-FID {first['fid']:.2f} -> {last['fid']:.2f}"
    log(msg + f" | {run}")
    return summary
