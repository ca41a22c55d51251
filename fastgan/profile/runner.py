"""``fastgan profile``: profile a short window of a fastgan training configuration.

Builds the variant and a ``fastgan.Trainer`` exactly as ``fastgan train`` would (data through
the real loader, inside a ``data`` range; ``mode``, ``compile_mode``, ``channels_last`` and
``precision`` as in ``fastgan train``), runs ``warmup`` unprofiled iterations (compilation,
autotuning, graph recording), then profiles ``steps`` iterations with
:func:`fastgan.profile.session` and writes the report. The per-phase split comes from the step's
``record_function`` ranges: ``data`` (the loader call), then the ranges the task's schedule names
(:meth:`fastgan.train.step.Engine.phase_names`; for the DCGAN family G_forward, D_forward, D_backward,
D_penalty, D_step, G_loss, G_backward, G_step, G_ema); in graphs mode, from the kernels of the eager
warm-up iteration that precedes the capture.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
from pathlib import Path
from typing import Callable

import torch
from torch.profiler import record_function


def default_out_dir(variant: str, device: torch.device) -> Path:
    from fastgan.bench.env import cpu_model, slug

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu-{cpu_model()}"
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("profile-results") / f"{variant}-{slug(name)}-{stamp}"


def engine_phases(engine) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The phases a profile of ``engine``'s iterations reads, ``data`` (the runner's loader range) first, and
    those only an iteration that is not a replayed CUDA graph opens (``Engine.step_phase_names``)."""
    from fastgan.profile.analyze import phase_list

    return phase_list(engine.phase_names()), tuple(engine.step_phase_names())


def profile_training(*, variant: str = "dcgan", data: str = "synthetic", resolution: int = 32, batch: int = 64,
                     width: int | None = None, channels: int | None = None, steps: int = 20, warmup: int = 5,
                     mode: str = "auto", compile_mode: str = "default", channels_last: bool | None = None,
                     precision: str = "auto", device: str = "auto", out: str | Path | None = None,
                     debug: bool = False, nvml_interval: float = 0.125, trace: bool = True, seed: int = 0,
                     log: Callable[[str], None] | None = print) -> dict:
    """Profile ``steps`` iterations after ``warmup``; returns the report dict (paths under ``report["files"]``).

    ``compile_mode``: torch.compile mode of the compiled phases (``fastgan.train.step.COMPILE_MODES``;
    ``reduce-overhead`` with ``mode="compile"`` is the stock CUDA-graph alternative to ``graphs``).
    ``channels_last``: None picks the Trainer's default (on for eager steps on CUDA)."""
    from fastgan.data import InfiniteLoader, load_dataset
    from fastgan.errors import ConfigError
    from fastgan.profile.session import check_out_dir, session
    from fastgan.train.step import COMPILE_MODES
    from fastgan.train.build import create
    from fastgan.train.trainer import resolve_device
    from fastgan.variants import get_variant

    log = log or (lambda s: None)
    if steps < 1:
        raise ConfigError(f"--steps must be >= 1 (got {steps})")
    if warmup < 0:
        raise ConfigError(f"--warmup must be >= 0 (got {warmup})")
    if compile_mode not in COMPILE_MODES:        # before building anything (the Trainer checks the rest)
        raise ConfigError(f"unknown compile mode {compile_mode!r}; choose one of {', '.join(COMPILE_MODES)}")
    if out is not None:
        check_out_dir(out)                       # before the build and the graphs-mode first iteration
    dev = resolve_device(device)
    spec = get_variant(variant)
    spec.model_config(debug, resolution=resolution, width=width)   # before data is made at that resolution
    ds = load_dataset(data, resolution, channels, synthetic_size=max(4 * batch, 512), seed=seed)
    trainer = create(variant, flavor="debug" if debug else "full", resolution=resolution, channels=ds.channels,
                     width=width, num_classes=ds.num_classes if spec.conditional else None, seed=seed,
                     batch_size=batch, device=dev, mode=mode, precision=precision, compile_mode=compile_mode,
                     channels_last=channels_last)
    trainer.check_dataset(ds)
    mcfg = trainer.model_config
    loader = InfiniteLoader(ds, batch, trainer.device, seed=seed)

    def next_batch() -> dict[str, torch.Tensor]:
        with record_function("data"):
            return trainer.prepare(next(loader))

    config = {"variant": variant, "data": ds.name, "resolution": resolution, "channels": ds.channels, "batch": batch,
              "width": mcfg.width, "n_critic": spec.n_critic, "requested_mode": mode, "mode": trainer.mode,
              "mode_reason": getattr(trainer, "mode_reason", None), "compile_mode": trainer.compile_mode,
              "channels_last": trainer.channels_last, "precision": trainer.precision,
              "device": str(trainer.device), "steps": steps, "warmup": warmup, "debug": debug}
    out = Path(out) if out is not None else default_out_dir(variant, trainer.device)
    cm = f" {trainer.compile_mode}" if trainer.mode != "eager" and trainer.compile_mode != "default" else ""
    cl = ", channels_last" if trainer.channels_last else ""
    log(f"profiling {variant} {resolution}px batch {batch} on {trainer.device} (mode {trainer.mode}{cm}, "
        f"{trainer.precision}{cl}): {warmup} warm-up + {steps} profiled iterations -> {out}")
    try:
        phases, step_phases = engine_phases(trainer.engine)
        kernel_phases = None
        if trainer.mode == "graphs" and trainer.device.type == "cuda" and warmup >= 1:
            # The first graphs-mode iteration runs eagerly (inside the phase ranges) and captures the
            # graph that later iterations replay: its kernels in launch order, with their phases, let
            # the report attribute the replayed kernels to phases (analyze.kernel_phase_map).
            kernel_phases = _first_iteration_phase_map(trainer, next_batch, phases)
            warmup -= 1
            config["phase_map_kernels"] = len(kernel_phases)
        with session(out, device=trainer.device, steps=steps, warmup=warmup, nvml_interval=nvml_interval,
                     trace=trace, config=config, title=f"fastgan profile: {variant} {resolution}px batch {batch}",
                     kernel_phases=kernel_phases, phases=phases, step_phases=step_phases) as s:
            for _ in range(warmup + steps):
                n0 = trainer.nimg
                trainer.step(next_batch)
                s.step(images=trainer.nimg - n0)
            eng = getattr(trainer, "engine", None)
            config["engine_mode"] = getattr(eng, "mode", trainer.mode)          # a graphs capture may fall back
            config["fallback_reason"] = getattr(eng, "fallback_reason", None)
            config["penalty_mode"] = getattr(eng, "penalty_mode", None)        # compiled, or eager and why
    finally:
        loader.close()
    return s.report


def _first_iteration_phase_map(trainer, next_batch, phases=None) -> list[tuple[str, str | None]]:
    """Run the first graphs-mode iteration with the profiler around its eager warm-up only (not the
    capture: the engine leaves ``warmup_context`` before capturing); its kernels with their phases, of
    ``phases`` (default: the engine's, :func:`engine_phases`).
    (If the capture then falls back, the window has real phase ranges and the map goes unused.)"""
    from torch.profiler import ProfilerActivity, profile

    from fastgan.profile.analyze import kernel_phase_map

    got: dict = {}

    @contextlib.contextmanager
    def around_warmup():
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            yield
        got["events"] = prof.events()

    engine = trainer.engine
    if phases is None:
        phases = engine_phases(engine)[0]
    engine.warmup_context = around_warmup
    try:
        trainer.step(next_batch)
    finally:
        engine.warmup_context = None
    return kernel_phase_map(got["events"], phases) if "events" in got else []


def format_summary(report: dict) -> str:
    """A few lines for the terminal."""
    w, nv = report["window"], report["nvml"]
    sm = w.get("step_ms") or {}
    lines = [f"{report['title']} | {report['device']['name']} ({report['device']['type']})"]
    if w["status"] != "ok":
        lines.append(f"  {w['reason']}")
    lines.append(f"  {w['steps']} profiled iterations in {w['wall_s']:.3f} s" if w.get("wall_s") else "  window: n/a")
    if sm:
        lines.append(f"  iteration {sm['median']:.2f} ms (p20 {sm['p20']:.2f}, p80 {sm['p80']:.2f})"
                     + (f" | {w['img_per_s']:.1f} img/s, {w['s_per_kimg']:.3f} s/kimg" if w.get("img_per_s") else ""))
    lines.append("  phase                    host ms/step   GPU ms/step   share")
    for p in report["phases"]:
        dev = "n/a" if p["device_ms_per_step"] is None else f"{p['device_ms_per_step']:.3f}"
        host = "n/a" if p["cpu_ms_per_step"] is None else f"{p['cpu_ms_per_step']:.3f}"
        share = "" if p["share"] is None else f"{100 * p['share']:.1f}%"
        lines.append(f"  {p['name'][:22]:<22} {host:>14}   {dev:>11}   {share:>6}")
    top = report["top"]
    if top["rows"]:
        lines.append(f"  top {top['kind']}:")
        for r in top["rows"][:5]:
            lines.append(f"    {100 * r['share']:5.1f}%  {r['time_ms']:9.3f} ms  {r['name'][:70]}")
    g = report["idle_gaps"]
    lines.append(f"  idle gaps: {100 * g['idle_frac']:.1f}% of the window idle ({g['n_gaps']} gaps)" if g.get("available")
                 else f"  idle gaps: n/a ({g.get('reason')})")
    if nv.get("available"):
        s = nv.get("summary") or {}
        def f(x, spec=".0f"):
            return "n/a" if x is None else format(x, spec)

        lines.append(f"  NVML: util {f(s.get('gpu_util_mean'))}% (a kernel was running), "
                     f"GPM SM util {f(s.get('sm_util_mean'))}%, tensor {f(s.get('tensor_util_mean'))}%, "
                     f"SM clock {f(s.get('sm_clock_mhz_mean'))} MHz, power {f(s.get('power_w_mean'))} W, "
                     f"energy {f(s.get('energy_j'), '.1f')} J")
    else:
        lines.append(f"  NVML unavailable: {nv.get('reason')}")
    files = report.get("files") or {}
    lines.append("  wrote " + ", ".join(f"{k}: {v}" for k, v in files.items()))
    return "\n".join(lines)


def run_command(args) -> int:
    """``fastgan profile`` (see :mod:`fastgan.cli`)."""
    report = profile_training(variant=args.variant, data=args.data, resolution=args.resolution, batch=args.batch,
                              width=args.width, steps=args.steps, warmup=args.warmup, mode=args.mode,
                              compile_mode=args.compile_mode, channels_last=args.channels_last,
                              precision=args.precision, device=args.device, out=args.out, debug=args.debug)
    print(format_summary(report))
    return 0
