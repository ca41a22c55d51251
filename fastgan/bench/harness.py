"""The throughput benchmark behind ``fastgan bench``.

For every case (variant × resolution × batch) and precision it measures each mode in the same
process: the baselines of :mod:`fastgan.bench.baselines` and ``fastgan`` (``fastgan.Trainer``
with mode ``auto``, or ``fastgan:<mode>`` for an explicit one; ``fastgan:fuse`` is the drop-in
route: the ``eager-best`` tutorial loop with both models passed through ``fastgan.fuse``). Per row:

1. build fresh models (seeded) and the mode's optimizers; a pool of pre-generated batches on
   the device (``data="synthetic"``) so the input pipeline is not measured, or the real
   loader (``data=SPEC``) inside the timed loop;
2. warm up until two consecutive timings agree within ``warmup_tol`` (or ``warmup`` steps):
   this absorbs compilation, autotuning and CUDA-graph recording;
3. ``repeats`` timed windows of ``steps`` iterations between CUDA events (CPU: a synchronized
   ``perf_counter``), reported as median, p20 and p80 seconds per iteration;
4. img/s counts real images shown to D (``batch × n_critic`` per iteration, read from the
   runner's ``nimg``), s/kimg = 1000 / (img/s);
5. FLOPs of one iteration counted once per case by ``FlopCounterMode`` on the eager tutorial
   loop (the same maths in every mode; matmul/conv FLOPs only), → TFLOP/s, fraction of the
   datasheet peak and of a matmul timed in the same run;
6. peak memory (CUDA ``max_memory_allocated``; CPU: growth of the process's peak RSS) and the
   number of Dynamo graphs compiled during the timed phase (0 is the goal).

A mode that cannot run here (``compile-ro`` on CPU, a fastgan mode this build
lacks) becomes a ``skipped`` row with the reason; an exception becomes a ``failed`` row. The
matrix always finishes.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import gc
import itertools
import resource
import sys
import time
from typing import Callable

import torch

from fastgan.bench import stats as S
from fastgan.bench.baselines import (BASELINE_MODES, COMPILE_MODES, TutorialStep, baseline_settings, tutorial_discriminator,
                                     tutorial_generator)
from fastgan.bench.env import device_info, git_info, loadavg, versions
from fastgan.bench.peaks import lookup_peak, math_mode, measure_matmul_ceiling, peak_for
from fastgan.errors import ConfigError, FastganError
from fastgan.train.step import cudagraph_tree_state

SCHEMA = "fastgan.bench/1"
FASTGAN_MODES = ("fastgan", "fastgan:auto", "fastgan:eager", "fastgan:compile", "fastgan:graphs", "fastgan:fuse",
                 "fastgan:compile-ro", "fastgan:graphs-max", "fastgan:graphs-eager", "fastgan:graphs-eagerpen",
                 "fastgan:fuse-trainer")
# fastgan modes that are an engine mode plus a torch.compile mode for its compiled phases: the
# measurement behind the engine's design choice (its own whole-iteration capture vs Inductor's
# reduce-overhead CUDA-graph trees; max-autotune kernels inside the capture; eager phases captured
# with no torch.compile at all, which keeps channels_last).
ENGINE_VARIANTS = {"compile-ro": ("compile", "reduce-overhead"), "graphs-max": ("graphs", "max-autotune-no-cudagraphs"),
                   "graphs-eager": ("graphs", "none"), "graphs-eagerpen": ("graphs", "default")}
# Engine variants that also switch the penalty phase: graphs with the penalty run eagerly inside the
# capture instead of compiled (trace_autograd_ops), to measure what compiling it buys.
EAGER_PENALTY_VARIANTS = ("graphs-eagerpen",)
ALL_MODES = BASELINE_MODES + ("fastgan", "fastgan:fuse")
PRECISIONS = ("auto", "fp32", "bf16")


# Every row carries every field (null where it does not apply: skipped/failed rows, CPU peaks, ...).
ROW_FIELDS = ("variant", "resolution", "batch", "precision", "mode", "width", "channels", "n_critic", "status", "reason",
              "settings", "samples_s", "median_s", "p20_s", "p80_s", "img_per_step", "img_per_s", "img_per_s_p20",
              "img_per_s_p80", "s_per_kimg", "warmup_steps", "warmup_converged", "warmup_timings_s", "steps", "repeats",
              "timer", "flops_per_step", "flops_method", "tflops", "peak_tflops", "frac_peak", "matmul_tflops",
              "frac_matmul", "math", "peak_mem_bytes", "peak_mem_kind", "mem_start_bytes", "graphs_compiled",
              "recompiles_timed", "cudagraph_skips", "cudagraph_tree_graphs", "cudagraph_recorded_timed",
              "cudagraph_rerecords_timed", "captures_timed", "vs_tutorial", "vs_best_baseline", "best_baseline_mode")
TOP_FIELDS = ("schema", "created", "wall_s", "device", "versions", "git", "settings", "matmul_ceiling", "notes",
              "partial", "rows")


@dataclasses.dataclass
class Case:
    variant: str
    resolution: int
    batch: int


@dataclasses.dataclass
class BenchConfig:
    cases: list[Case]
    precisions: list[str] = dataclasses.field(default_factory=lambda: ["auto"])
    modes: list[str] = dataclasses.field(default_factory=lambda: list(ALL_MODES))
    width: int | None = None          # None: the variant's own width (DCGAN: 64 = the paper's ngf)
    channels: int = 3
    steps: int = 50                   # iterations per timed window
    repeats: int = 5                  # timed windows
    warmup: int = 200                 # max warm-up iterations
    warmup_chunk: int | None = None   # iterations per warm-up timing (None: 5 on CUDA, 1 on CPU)
    warmup_tol: float = 0.10
    data: str = "synthetic"           # "synthetic": on-device pool; else a load_dataset spec through the loader
    device: str = "auto"
    seed: int = 0
    debug: bool = False               # the variants' CPU-sized debug widths (width overrides)
    cpu_defaults: bool = False        # informational: the CPU-sized defaults were used
    matmul_ceiling: bool = True

    def __post_init__(self):
        if not self.cases:
            raise ConfigError("the benchmark matrix is empty; pass at least one variant, resolution and batch")
        for p in self.precisions:
            if p not in PRECISIONS:
                raise ConfigError(f"unknown precision {p!r}; choose from {', '.join(PRECISIONS)}")
        for m in self.modes:
            if m not in BASELINE_MODES and m not in FASTGAN_MODES:
                raise ConfigError(f"unknown bench mode {m!r}; choose from {', '.join(ALL_MODES)} "
                                  "(or fastgan:eager|compile|graphs|fuse|fuse-trainer|compile-ro|graphs-max|graphs-eager|graphs-eagerpen)")
        if len(set(self.modes)) != len(self.modes):
            raise ConfigError(f"bench modes listed twice: {','.join(self.modes)}")
        for name, v in (("steps", self.steps), ("repeats", self.repeats)):
            if v < 1:
                raise ConfigError(f"--{name} must be >= 1 (got {v})")
        if self.warmup < 0:
            raise ConfigError(f"--warmup must be >= 0 (got {self.warmup})")
        for c in self.cases:
            if c.batch < 1:
                raise ConfigError(f"batch must be >= 1 (got {c.batch})")

    @classmethod
    def matrix(cls, variants: list[str], resolutions: list[int], batches: list[int], **kw) -> "BenchConfig":
        cases = [Case(v, r, b) for v in variants for r in resolutions for b in batches]
        return cls(cases=cases, **kw)


def default_settings(device_type: str) -> dict:
    """Sensible defaults: the GPU matrix, or a small one a 2-core CPU finishes in minutes."""
    if device_type == "cuda":
        return {"variants": ["dcgan"], "resolutions": [32, 64], "batches": [64, 256], "width": None,
                "steps": 50, "repeats": 5, "warmup": 200, "cpu_defaults": False}
    return {"variants": ["dcgan"], "resolutions": [32], "batches": [16, 32], "width": 16,
            "steps": 5, "repeats": 3, "warmup": 8, "cpu_defaults": True}


def resolve_precision(p: str, device: torch.device) -> str:
    if p == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return p


# ----------------------------------------------------------------------------- runners


class FastganRunner:
    """``fastgan.Trainer`` behind the same interface as :class:`TutorialStep`.

    ``fastgan:fuse-trainer`` is the drop-in story end to end: the tutorial's own stock-module G and D
    (the baselines' models), through ``fastgan.fuse``, trained by ``fastgan.Trainer`` in its default mode;
    every other fastgan mode trains fastgan's own model family built from the same config."""

    def __init__(self, spec, cfg, *, mode: str, device: torch.device, precision: str, batch: int, seed: int):
        from fastgan.train.trainer import Trainer

        requested = mode.split(":", 1)[1] if ":" in mode else "auto"
        tutorial_models = requested == "fuse-trainer"
        if tutorial_models:
            requested = "auto"
        engine_mode, compile_mode = ENGINE_VARIANTS.get(requested, (requested, "default"))
        if requested in ENGINE_VARIANTS and device.type != "cuda":
            raise ConfigError("CUDA only")
        torch.manual_seed(seed)
        nets, z_dim = None, None
        if tutorial_models:
            import fastgan

            nets = {"G": fastgan.fuse(tutorial_generator(cfg)), "D": fastgan.fuse(tutorial_discriminator(cfg))}
            z_dim = (cfg.z_dim, 1, 1)              # the tutorial's G takes (N, z, 1, 1) latents
        task, _ = spec.make_task(cfg, nets=nets, z_shape=z_dim)   # the variant's task, as fastgan.create builds it
        self.trainer = Trainer(task=task, batch_size=batch, device=device, mode=engine_mode, precision=precision,
                               compile_mode=compile_mode,
                               compile_penalty=False if requested in EAGER_PENALTY_VARIANTS else None)
        self.tutorial_models = tutorial_models
        self.device = device
        self.requested = "fuse-trainer" if tutorial_models else requested
        self.compile_mode = compile_mode

    @property
    def settings(self) -> dict:
        """What the trainer really ran (read again after the run: a graphs capture may fall back)."""
        t = self.trainer
        eng = getattr(t, "engine", None)
        ran = getattr(eng, "mode", t.mode)
        return {"precision": t.precision, "requested_mode": self.requested, "mode": t.mode, "engine_mode": ran,
                "mode_reason": getattr(t, "mode_reason", None), "fallback_reason": getattr(eng, "fallback_reason", None),
                "penalty_mode": getattr(eng, "penalty_mode", None),
                "channels_last": t.channels_last, "compile": None, "compile_mode": self.compile_mode,
                "cudnn_benchmark": torch.backends.cudnn.benchmark if self.device.type == "cuda" else None,
                "models": "the tutorial's stock modules through fastgan.fuse" if self.tutorial_models else "fastgan's",
                "note": ("the tutorial's G/D through fastgan.fuse, fastgan.Trainer(mode='auto')" if self.tutorial_models
                         else f"fastgan.Trainer(mode={self.requested!r})") + f" ran as {ran!r}, precision {t.precision}"
                        + ("" if self.compile_mode == "default" else
                           ", eager phases captured, no torch.compile" if self.compile_mode == "none" else
                           f", compiled phases in torch.compile mode {self.compile_mode!r}")}

    @property
    def nimg(self) -> int:
        return self.trainer.nimg

    def prepare(self, real) -> dict[str, torch.Tensor]:
        return self.trainer.prepare(real)   # named fields, in the trainer's own layout (NCHW for compiled steps)

    def step(self, next_batch) -> None:
        self.trainer.step(next_batch)


def build_runner(mode: str, spec, cfg, *, device: torch.device, precision: str, batch: int, seed: int):
    if mode in BASELINE_MODES:
        return TutorialStep(spec, cfg, mode=mode, device=device, precision=precision, seed=seed)
    if mode == "fastgan:fuse":  # the user's own loop at the best stock flags, models through fastgan.fuse
        return TutorialStep(spec, cfg, mode="eager-best", device=device, precision=precision, seed=seed, fuse=True)
    return FastganRunner(spec, cfg, mode=mode, device=device, precision=precision, batch=batch, seed=seed)


# ----------------------------------------------------------------------------- counting


def count_flops(fn: Callable[[], None]) -> int:
    """FLOPs (matmul/conv family only) of one call of ``fn`` under ``FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


class _RegistryFlopCounter:
    """The same per-op formulas as ``FlopCounterMode`` (``torch.utils.flop_counter.flop_registry``)
    without its module tracker, whose hooks raise under ``autograd.grad(create_graph=True)``
    (gradient penalties: "A leaf node was passed to _will_engine_execute_node ...")."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils.flop_counter import flop_registry

        counter = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                f = flop_registry.get(func._overloadpacket)
                if f is not None:
                    counter.total += int(f(*args, **kwargs, out_val=out))
                return out

        self.total = 0
        self.mode = _Mode()

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)


def step_flops(spec, cfg, device: torch.device, batch: int, seed: int = 0) -> tuple[int, str]:
    """FLOPs of one full iteration of the eager tutorial loop (fp32) for this case, and the method used.

    With a lazy penalty (every k D steps) it is the average iteration: plain + (regularized - plain) / k.
    """
    def once(count, d_steps: int):
        step = TutorialStep(spec, cfg, mode="eager-tutorial", device=device, seed=seed)
        step.d_steps = d_steps
        g = torch.Generator(device="cpu").manual_seed(seed)
        real = (torch.rand(batch, cfg.channels, cfg.resolution, cfg.resolution, generator=g) * 2 - 1).to(device)
        return count(lambda: step.step(lambda: real))

    def by_registry(fn):
        with _RegistryFlopCounter() as c:
            fn()
        return c.total

    def average(count):
        obj = spec.objective
        if obj.has_penalty and obj.penalty_every > 1:
            plain, reg = once(count, 1), once(count, 0)
            return int(round(plain + (reg - plain) / obj.penalty_every))
        return once(count, 0)

    try:
        return average(count_flops), "FlopCounterMode"
    except RuntimeError:
        return average(by_registry), "flop_counter.flop_registry (FlopCounterMode's module tracker fails under double backward)"


def _dynamo_graphs() -> int:
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
    except Exception:  # pragma: no cover
        return 0


def _cudagraph_skips() -> int:
    """Times Inductor declined to CUDA-graph a compiled function (reduce-overhead / max-autotune modes)."""
    try:
        from torch._dynamo.utils import counters

        return int(counters["inductor"]["cudagraph_skips"])
    except Exception:  # pragma: no cover
        return 0


def _tf32_flags() -> dict:
    import warnings

    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # newer torch deprecates allow_tf32 in favour of fp32_precision
        for name, obj in (("cudnn", torch.backends.cudnn), ("matmul", torch.backends.cuda.matmul)):
            try:
                out[name] = bool(obj.allow_tf32)
            except Exception:  # pragma: no cover
                out[name] = None
    return out


def _captures(runner) -> int | None:
    """fastgan's whole-iteration CUDA graph captures so far (graphs mode), or None for other runners."""
    eng = getattr(getattr(runner, "trainer", None), "engine", None)
    n = getattr(eng, "captures", None)
    return int(n) if n is not None else None


def resolved_warmup_chunk(bc: "BenchConfig", device: torch.device) -> int:
    """Iterations per warm-up timing: the configured chunk, else 5 on CUDA and 1 on CPU."""
    return bc.warmup_chunk or (5 if device.type == "cuda" else 1)


def _maxrss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) * (1 if sys.platform == "darwin" else 1024)   # Linux reports KiB, macOS bytes


# ----------------------------------------------------------------------------- data


class _Data:
    """``next_batch`` factory: a cycled on-device pool, or the real loader."""

    def __init__(self, spec: str, resolution: int, channels: int, batch: int, device: torch.device, seed: int):
        self.spec, self.device, self.batch, self.seed = spec, device, batch, seed
        self.loader = None
        if spec == "synthetic":
            g = torch.Generator(device="cpu").manual_seed(seed)
            self.pool = [(torch.rand(batch, channels, resolution, resolution, generator=g) * 2 - 1).to(device)
                         for _ in range(4)]
            self.channels = channels
        else:
            from fastgan.data import load_dataset

            self.dataset = load_dataset(spec, resolution, None, seed=seed)
            self.channels = self.dataset.channels
            if batch > len(self.dataset):
                from fastgan.errors import DataError

                raise DataError(f"batch {batch} is larger than dataset '{self.dataset.name}' ({len(self.dataset)} "
                                "images); pass smaller --batches or a bigger dataset")
            self.pool = []

    def next_batch_for(self, runner) -> Callable[[], torch.Tensor]:
        if self.spec == "synthetic":
            pool = [runner.prepare(x) for x in self.pool]     # the mode's memory format, once
            it = itertools.cycle(pool)
            return lambda: next(it)
        from fastgan.data import InfiniteLoader

        self.close()
        self.loader = InfiniteLoader(self.dataset, self.batch, self.device, seed=self.seed)
        loader = self.loader
        return lambda: runner.prepare(next(loader))

    def close(self) -> None:
        if self.loader is not None:
            self.loader.close()
            self.loader = None


# ----------------------------------------------------------------------------- one row


def _failure(e: BaseException) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0][:300]}" if lines else type(e).__name__


def run_row(mode: str, spec, cfg, case: Case, precision: str, data: _Data, device: torch.device,
            bc: BenchConfig, timer=None) -> dict:
    """Measure one mode on one case; never raises for a mode that cannot run (skipped/failed rows)."""
    row: dict = {"variant": case.variant, "resolution": case.resolution, "batch": case.batch,
                 "precision": "fp32" if mode == "eager-tutorial" else precision, "mode": mode,
                 "width": cfg.width, "channels": cfg.channels, "n_critic": spec.n_critic,
                 "status": "ok", "reason": None, "settings": None}
    cuda = device.type == "cuda"
    timer = timer or S.make_timer(device)
    runner = None
    cudnn_prev = torch.backends.cudnn.benchmark
    gc.collect()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    rss0 = _maxrss_bytes()
    mem0 = torch.cuda.memory_allocated(device) if cuda else None
    try:
        # cudnn.benchmark as each row's settings record it: the baselines' own flags (fastgan:fuse is the
        # eager-best loop, so it has eager-best's); fastgan.Trainer rows run with it off, as a Trainer leaves
        # the process-wide flag alone (conservative for fastgan: the baselines b-d have it on).
        flag_mode = "eager-best" if mode == "fastgan:fuse" else mode
        if flag_mode in BASELINE_MODES:
            settings = baseline_settings(flag_mode, device, precision)    # raises "CUDA only" early
            if cuda:
                torch.backends.cudnn.benchmark = bool(settings["cudnn_benchmark"])
        elif cuda:
            torch.backends.cudnn.benchmark = False
        if mode in COMPILE_MODES or mode in FASTGAN_MODES:
            torch._dynamo.reset()      # a fresh cache per row: rows must not share recompile budgets
        g0, skips0 = _dynamo_graphs(), _cudagraph_skips()
        runner = build_runner(mode, spec, cfg, device=device, precision=precision, batch=case.batch, seed=bc.seed)
        row["settings"] = runner.settings
        next_batch = data.next_batch_for(runner)

        def one() -> None:
            runner.step(next_batch)

        chunk = resolved_warmup_chunk(bc, device)
        wu = S.warmup(one, timer, chunk=chunk, max_steps=bc.warmup, tol=bc.warmup_tol)
        g1, tree1, cap1 = _dynamo_graphs(), cudagraph_tree_state(device), _captures(runner)
        nimg0 = runner.nimg
        samples = S.measure(one, timer, steps=bc.steps, repeats=bc.repeats)
        g2, cap2 = _dynamo_graphs(), _captures(runner)
        row["settings"] = runner.settings
        img_per_step = (runner.nimg - nimg0) / (bc.steps * bc.repeats)
        row.update(_timing_fields(samples, img_per_step))
        row.update({"warmup_steps": wu["steps"], "warmup_converged": wu["converged"],
                    "warmup_timings_s": wu["timings_s"], "steps": bc.steps, "repeats": bc.repeats,
                    "timer": timer.kind, "graphs_compiled": g2 - g0, "recompiles_timed": g2 - g1,
                    # > 0 on a reduce-overhead row: Inductor ran (some) compiled code without CUDA graphs,
                    # so the row does not measure what its name says; the log says why.
                    "cudagraph_skips": _cudagraph_skips() - skips0})
        tree2 = cudagraph_tree_state(device)
        # Inductor's CUDA-graph trees (reduce-overhead rows): graphs recorded, and graphs recorded or
        # re-recorded during the timed windows (should be 0; the skip counter misses silent partitioning
        # and some re-records); fastgan's own whole-iteration captures during them (graphs mode; 0).
        row["cudagraph_tree_graphs"] = tree2[0] if tree2 else 0
        row["cudagraph_recorded_timed"] = (tree2[0] - (tree1[0] if tree1 else 0)) if tree2 else 0
        row["cudagraph_rerecords_timed"] = (tree2[1] - tree1[1]) if (tree1 and tree2) else 0
        row["captures_timed"] = (cap2 - cap1) if (cap1 is not None and cap2 is not None) else None
        if cuda:
            torch.cuda.synchronize(device)
            row["peak_mem_bytes"] = int(torch.cuda.max_memory_allocated(device))
            row["peak_mem_kind"] = "cuda_max_memory_allocated"
            row["mem_start_bytes"] = int(mem0)     # already allocated when the row began (the case's batch pool)
        else:
            row["peak_mem_bytes"] = _maxrss_bytes() - rss0
            row["peak_mem_kind"] = "cpu_peak_rss_growth"
    except ConfigError as e:
        row.update(status="skipped", reason=str(e))
    except (Exception, FastganError) as e:
        row.update(status="failed", reason=_failure(e))
    finally:
        torch.backends.cudnn.benchmark = cudnn_prev
        del runner
        if mode in COMPILE_MODES or mode in FASTGAN_MODES:
            torch._dynamo.reset()      # drop compiled code and CUDA-graph pools before the next row
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    return row


def _timing_fields(samples: list[float], img_per_step: float) -> dict:
    s = S.summarize(samples)
    out = {"samples_s": samples, "median_s": s["median"], "p20_s": s["p20"], "p80_s": s["p80"],
           "img_per_step": img_per_step}
    t = S.throughput(img_per_step, s["median"])
    out["img_per_s"] = t["img_per_s"]
    out["s_per_kimg"] = t["s_per_kimg"]
    out["img_per_s_p20"] = S.throughput(img_per_step, s["p80"])["img_per_s"]   # slow end
    out["img_per_s_p80"] = S.throughput(img_per_step, s["p20"])["img_per_s"]   # fast end
    return out


# ----------------------------------------------------------------------------- the matrix


def _derive(row: dict, flops: int | None, peaks: dict | None, ceilings: dict, tf32: bool = False) -> None:
    """TFLOP/s and its fractions of the datasheet peak and the measured matmul ceiling, both in the row's
    math: an fp32 row's convolutions run in TF32 when cuDNN allows it (``tf32``), so TF32 figures then."""
    row["flops_per_step"] = flops
    ok = row["status"] == "ok" and flops is not None
    tf = flops / row["median_s"] / 1e12 if ok else None
    row["tflops"] = tf
    row["math"] = math_mode(row["precision"], tf32)
    pk = peak_for(peaks, row["precision"], tf32)
    row["peak_tflops"] = pk
    row["frac_peak"] = tf / pk if (tf is not None and pk) else None
    ceil = ceilings.get(row["precision"], {}).get("tflops")
    row["matmul_tflops"] = ceil
    row["frac_matmul"] = tf / ceil if (tf is not None and ceil) else None


def add_ratios(rows: list[dict]) -> None:
    """``vs_tutorial`` (against eager-tutorial of the same case) and ``vs_best_baseline`` (against the
    fastest baseline a–d of the same case and precision; eager-tutorial counts at any precision)."""
    key = lambda r: (r["variant"], r["resolution"], r["batch"])   # noqa: E731
    for r in rows:
        r["vs_tutorial"] = r["vs_best_baseline"] = r["best_baseline_mode"] = None
        if r["status"] != "ok":
            continue
        tut = [x for x in rows if key(x) == key(r) and x["mode"] == "eager-tutorial" and x["status"] == "ok"]
        if tut:
            r["vs_tutorial"] = r["img_per_s"] / tut[0]["img_per_s"]
        base = [x for x in rows if key(x) == key(r) and x["status"] == "ok" and x["mode"] in BASELINE_MODES
                and (x["mode"] == "eager-tutorial" or x["precision"] == r["precision"])]
        if base:
            best = max(base, key=lambda x: x["img_per_s"])
            r["vs_best_baseline"] = r["img_per_s"] / best["img_per_s"]
            r["best_baseline_mode"] = best["mode"]


def run_bench(bc: BenchConfig, *, log: Callable[[str], None] | None = print,
              on_row: Callable[[dict], None] | None = None) -> dict:
    """Run the whole matrix; returns the result document (see :mod:`fastgan.bench.report`).

    ``on_row(document)``, if given, receives the document of the rows so far (``"partial": true``)
    after every row, so a caller can save progress that a time limit would otherwise lose.
    """
    from fastgan.train.trainer import resolve_device
    from fastgan.variants import get_variant

    log = log or (lambda s: None)
    device = resolve_device(bc.device)
    specs = {c.variant: get_variant(c.variant) for c in bc.cases}       # unknown names fail before any work
    for c in bc.cases:                   # and every case's model config, before any data is made at its resolution
        specs[c.variant].model_config(bc.debug, resolution=c.resolution, width=bc.width)
    precisions = list(dict.fromkeys(resolve_precision(p, device) for p in bc.precisions))
    if "bf16" in precisions and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("bf16 is not supported on this GPU; pass --precisions fp32")
    dev = device_info(device)
    peaks, peak_source = lookup_peak(dev["name"] if device.type == "cuda" else None)
    if device.type != "cuda":
        peak_source = "no datasheet peak table for CPUs; see frac_matmul (fraction of a matmul timed in this run)"
    dev["peak_tflops"], dev["peak_source"] = peaks, peak_source
    t_start = time.time()
    ceilings: dict[str, dict] = {}
    tf32 = bool(device.type == "cuda" and _tf32_flags().get("cudnn"))   # cuDNN's fp32 convolutions in TF32
    if bc.matmul_ceiling:
        row_precs = set(precisions) | ({"fp32"} if "eager-tutorial" in bc.modes else set())
        for p in sorted(row_precs):
            try:
                ceilings[p] = measure_matmul_ceiling(device, p, tf32=tf32)
                log(f"matmul ceiling {p}: {ceilings[p]['tflops']:.3g} TFLOP/s (n={ceilings[p]['n']})")
            except Exception as e:  # pragma: no cover - device specific
                ceilings[p] = {"precision": p, "tflops": None, "error": _failure(e)}
    rows: list[dict] = []
    for case in bc.cases:
        spec = specs[case.variant]
        data = _Data(bc.data, case.resolution, bc.channels, case.batch, device, bc.seed)
        try:
            cfg = spec.model_config(bc.debug, resolution=case.resolution, channels=data.channels, width=bc.width)
            try:
                flops, flops_method = step_flops(spec, cfg, device, case.batch, bc.seed)
            except Exception as e:
                flops, flops_method = None, f"failed: {_failure(e)}"
                log(f"  FLOP count failed for {case}: {_failure(e)}")
            order = [m for m in bc.modes if m == "eager-tutorial"] + [m for m in bc.modes if m != "eager-tutorial"]
            for mode in order:
                for prec in (["fp32"] if mode == "eager-tutorial" else precisions):
                    log(f"  {case.variant} {case.resolution}px batch {case.batch} {prec} {mode} ...")
                    row = run_row(mode, spec, cfg, case, prec, data, device, bc)
                    _derive(row, flops, peaks, ceilings, tf32)
                    row["flops_method"] = flops_method
                    rows.append(row)
                    log("    " + _row_line(row))
                    if on_row is not None:
                        on_row(_document(bc, device, dev, precisions, ceilings, [dict(r) for r in rows], t_start,
                                         partial=True))
        finally:
            data.close()
    return _document(bc, device, dev, precisions, ceilings, rows, t_start, partial=False)


def _document(bc: BenchConfig, device: torch.device, dev: dict, precisions: list[str], ceilings: dict,
              rows: list[dict], t_start: float, partial: bool) -> dict:
    add_ratios(rows)
    for r in rows:
        for k in ROW_FIELDS:
            r.setdefault(k, None)
    notes = [
        "img/s counts real images shown to D (batch x n_critic per iteration); s/kimg = 1000 / img/s.",
        "FLOPs per step: torch.utils.flop_counter.FlopCounterMode over one eager iteration of the tutorial loop "
        "(the same maths in every mode); it counts matmul/convolution FLOPs only, so TFLOP/s is a lower bound.",
        "TFLOP/s of every mode uses that one count (the work of an iteration as the tutorial defines it); fastgan's "
        "G step does not compute D's weight gradients, so it executes fewer FLOPs and its TFLOP/s is an effective figure.",
        "eager-tutorial is fp32 NCHW by definition (the DCGAN tutorial as users write it); every other mode runs at "
        "the row's precision.",
        "vs_best_baseline compares against the fastest of eager-tutorial, eager-best, compile, compile-max, compile-ro "
        "for the same case (same precision, except eager-tutorial).",
        "recompiles_timed: Dynamo graphs compiled during the timed windows; cudagraph_recorded_timed / "
        "cudagraph_rerecords_timed: Inductor CUDA graphs recorded / re-recorded then; captures_timed: fastgan "
        "whole-iteration CUDA graphs captured then (the table's recomp column adds them up; 0 is the goal).",
        "fastgan rows also update an EMA copy of G every iteration (the Trainer's G_ema) and accumulate their "
        "stats on device; the baselines do neither, so fastgan does slightly more work per iteration.",
        "cudagraph_skips: times Inductor declined to CUDA-graph a compiled function during the row (reduce-overhead "
        "and max-autotune rows should show 0; otherwise they ran partly without CUDA graphs).",
    ]
    if device.type == "cuda":
        notes.append("Timed with CUDA events around each window; peak memory is torch.cuda.max_memory_allocated per row "
                     "(peak stats reset at the row's start; mem_start_bytes was already allocated then).")
        notes.append("fp32 rows: cuDNN runs convolutions in TF32 on tensor cores when settings.tf32.cudnn is on (PyTorch's "
                     "default); such rows (math 'tf32') are compared with the dense TF32 peak and with a matmul ceiling "
                     "measured in TF32, not with plain-FP32 figures.")
        notes.append("cudnn.benchmark: on for eager-best, compile, compile-max, compile-ro and fastgan:fuse (the eager-best "
                     "loop), off for eager-tutorial and for fastgan.Trainer rows (a Trainer leaves the process-wide flag "
                     "alone): each row's settings.cudnn_benchmark says which.")
        notes.append("Rows in channels_last hold their own channels_last copy of the 4-batch synthetic pool, which their "
                     "peak_mem_bytes includes (NCHW rows share the pool counted in mem_start_bytes).")
    else:
        notes.append("CPU run: no GPU here, so the matrix runs on CPU with small defaults; compile-ro (CUDA "
                     "graphs) is CUDA only (skipped); eager-best on CPU is fp32 (or the row's precision) + foreach Adam, NCHW. "
                     "Timed with a synchronized perf_counter wall clock.")
        notes.append("CPU memory: peak_mem_bytes is the growth of the process's peak resident set (ru_maxrss) during the "
                     "row; 0 means the row stayed under an earlier peak. It is not the row's own footprint.")
    return {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "wall_s": time.time() - t_start,
        "device": dev,
        "versions": versions(),
        "git": git_info(),
        "settings": {**dataclasses.asdict(bc), "precisions_resolved": precisions,
                     "warmup_chunk_resolved": resolved_warmup_chunk(bc, device),
                     "timer": "cuda-events" if device.type == "cuda" else "wall",
                     "tf32": _tf32_flags() if device.type == "cuda" else None,
                     "cudnn_version": torch.backends.cudnn.version() if device.type == "cuda" else None,
                     "loadavg_1m_at_end": loadavg() if device.type != "cuda" else None},
        "matmul_ceiling": ceilings,
        "notes": notes,
        "partial": partial,
        "rows": rows,
    }


def _row_line(r: dict) -> str:
    if r["status"] != "ok":
        return f"{r['status']}: {r['reason']}"
    return (f"{r['img_per_s']:.1f} img/s  ({r['median_s'] * 1e3:.2f} ms/it, p20 {r['p20_s'] * 1e3:.2f}, "
            f"p80 {r['p80_s'] * 1e3:.2f})  recompiles {r['recompiles_timed']}")
