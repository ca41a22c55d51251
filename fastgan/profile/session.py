"""``fastgan.profile.session``: profile any training loop and write the fastgan report.

>>> with fastgan.profile.session("prof-out", steps=20, warmup=5) as s:
...     for batch in loader:
...         with s.phase("data"):
...             x = batch.cuda()
...         train_step(x)                 # your own loop; record_function ranges show up as phases
...         s.step(images=x.shape[0])     # marks an iteration and drives the profiler schedule
>>> s.report["phases"], s.paths["html"]

Phases are the ranges named in ``phases`` (``data`` always first); by default the names fastgan's
DCGAN-family step opens (:data:`fastgan.profile.analyze.PHASES`: ``data``, ``G_forward``,
``D_forward``, ``D_backward``, ``D_penalty``, ``D_step``, ``G_loss``, ``G_backward``, ``G_step``,
``G_ema``), so a loop of that shape names its ranges so; a fastgan task's come from its schedule
(``Engine.phase_names()``, what ``fastgan profile`` passes). Time outside them is reported as
"other". Wrap a ``.backward()`` call itself in its range: on CUDA the backward kernels are launched
from autograd's thread and are attributed to the range that is open, on the host, while they are
launched.

With ``steps`` the profiler skips ``warmup`` iterations (compilation, autotuning, graph
recording happen there) and records the next ``steps``; without it, everything inside the
block is recorded. The window is bracketed by device synchronizations so its wall time is
exact. Without ``steps`` the window is the whole block: make ``s.step()`` the last statement of an
iteration, since time after the last call counts in the window's phases but in no step. Writes
``report.json``, ``report.html`` (self-contained) and ``trace.json`` (open it in
https://ui.perfetto.dev or chrome://tracing) into ``out_dir``, which must not already hold them
(nothing is overwritten).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerAction, ProfilerActivity, profile, record_function, schedule

from fastgan.errors import ConfigError
from fastgan.profile.analyze import phase_list, step_phase_list

SCHEMA = "fastgan.profile/1"
OUTPUTS = ("report.json", "report.html", "trace.json")     # what a session writes into its folder


def check_out_dir(out_dir: str | Path) -> None:
    """Refuse a file, or a folder that already holds a profile report (nothing a user has is overwritten)."""
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ConfigError(f"--out {str(out_dir)!r} is a file; pass a folder for the profile report")
    taken = [n for n in OUTPUTS if (Path(out_dir) / n).exists()]
    if taken:
        raise ConfigError(f"{out_dir} already holds a profile report ({', '.join(taken)}); pass another output "
                          "folder or move that one away (nothing is overwritten)")


def _always_record(step: int) -> ProfilerAction:
    return ProfilerAction.RECORD


class ProfileSession:
    """State of one profiling session; use :func:`session` to create it."""

    def __init__(self, out_dir: str | Path, *, device: str | torch.device | None = None, steps: int | None = None,
                 warmup: int = 0, nvml: bool = True, nvml_interval: float = 0.125, record_shapes: bool = False,
                 with_stack: bool = False, trace: bool = True, img_per_step: int | None = None,
                 config: dict | None = None, title: str | None = None,
                 kernel_phases: list[tuple[str, str | None]] | None = None,
                 phases=None, step_phases=None):
        if steps is not None and steps < 1:
            raise ConfigError(f"profile steps must be >= 1 (got {steps})")
        if warmup < 0:
            raise ConfigError(f"profile warmup must be >= 0 (got {warmup})")
        if not nvml_interval > 0:
            raise ConfigError(f"nvml_interval must be > 0 seconds (got {nvml_interval}); 0.125 is the default")
        check_out_dir(out_dir)
        if device is None or str(device) == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {str(device)!r} requested but no CUDA device is available; pass --device cpu")
        self.out_dir = Path(out_dir)
        self.steps, self.warmup = steps, warmup
        self.want_nvml, self.nvml_interval = nvml, nvml_interval
        self.record_shapes, self.with_stack, self.trace = record_shapes, with_stack, trace
        self.img_per_step = img_per_step
        self.config = config if config is not None else {}   # read at exit: callers may add to it
        self.title = title or "fastgan profile"
        self.kernel_phases = kernel_phases   # graphs mode: see fastgan.profile.analyze.kernel_phase_map
        self.phases = phase_list(phases)     # the range names read as phases, "data" first
        self.step_phases = step_phase_list(phases, step_phases)
        self.n_steps = 0                 # step() calls so far
        self.window_steps = 0            # steps inside the profiled window
        self.window_images = 0
        self._t_begin: float | None = None
        self._t_end: float | None = None
        self._wall_begin: float | None = None
        self._wall_end: float | None = None
        self._events = None
        self._discard = False
        self._trace_tmp: Path | None = None
        self._nvml_begin: float | None = None
        self._nvml_end: float | None = None
        self._prof = None
        self.sampler = None
        self.nvml_status: dict | None = None
        self.report: dict | None = None
        self.paths: dict[str, str] = {}

    # -- user API -------------------------------------------------------------------------
    def phase(self, name: str):
        """``with s.phase("data"): ...`` — a named range (``torch.profiler.record_function``)."""
        return record_function(name)

    def step(self, images: int | None = None) -> None:
        """Mark the end of one iteration (``images``: real images it consumed, for img/s)."""
        in_window = self._t_begin is not None and self._t_end is None
        if in_window:
            self.window_steps += 1
            if images is not None:
                self.window_images += int(images)
            elif self.img_per_step is not None:
                self.window_images += int(self.img_per_step)
        self.n_steps += 1
        if self.steps is not None and self.n_steps == self.warmup + self.steps:
            self._end()                  # before prof.step(), which then processes and exports the trace
        begin = self.steps is not None and self.n_steps == self.warmup
        if begin:
            self._sync()                 # the warm-up's queued GPU work drains before the first profiled step opens
        self._prof.step()
        if begin:
            self._begin()

    # -- internals ------------------------------------------------------------------------
    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _edge_sample(self) -> float | None:
        """One NVML sample now (at a window edge, so energy and means cover the whole window); its time."""
        s = self.sampler.sample() if self.sampler is not None else None
        return s["t"] if s else None

    def _begin(self) -> None:
        self._sync()
        self._nvml_begin = self._edge_sample()       # just outside the timed window
        self._t_begin, self._wall_begin = time.perf_counter(), time.time()

    def _end(self) -> None:
        if self._t_begin is None or self._t_end is not None:
            return
        self._sync()
        self._t_end, self._wall_end = time.perf_counter(), time.time()
        self._nvml_end = self._edge_sample()

    def _on_trace(self, prof) -> None:
        if self._discard:
            return
        self._events = prof.events()
        if self.trace:
            # under a temporary name until the report is written: a block that raises later leaves nothing
            self._trace_tmp = self.out_dir / ".trace.json.partial"     # set first: a failed export is cleaned up too
            prof.export_chrome_trace(str(self._trace_tmp))

    def _start(self) -> None:
        from fastgan.profile.nvml import NvmlSampler

        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create the report folder {str(self.out_dir)!r} ({e.strerror or e}); pass an "
                              "--out folder in a writable place") from None
        cuda = self.device.type == "cuda"
        if self.want_nvml:
            idx = (self.device.index if self.device.index is not None else torch.cuda.current_device()) if cuda else 0
            self.sampler = NvmlSampler(idx, interval=self.nvml_interval)
            if not cuda:
                st = dict(self.sampler.status)
                self.sampler.stop()
                self.sampler = None
                st["available"] = False
                st["reason"] = ("the profiled run is on CPU, so there is no GPU to sample"
                                + (f"; besides, {st['reason']}" if st.get("reason") else ""))
                st["gpm"] = {"available": False, "reason": "NVML not sampled"}
                self.nvml_status = st
            else:
                self.nvml_status = self.sampler.status
                self.sampler.start()
        else:
            from fastgan.profile.nvml import UTIL_NOTE

            self.nvml_status = {"available": False, "reason": "NVML sampling disabled (nvml=False)", "note": UTIL_NOTE,
                                "gpm": {"available": False, "reason": "disabled"}}
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        if self.steps is None or self.warmup == 0:
            self._sync()                 # work queued before the block is not the window's
        if self.steps is not None:
            sched = schedule(wait=max(self.warmup - 1, 0), warmup=min(self.warmup, 1), active=self.steps, repeat=1)
        else:
            sched = _always_record       # a schedule, so that step() marks ProfilerStep#N ranges
        prof = profile(activities=acts, schedule=sched, on_trace_ready=self._on_trace,
                       record_shapes=self.record_shapes, with_stack=self.with_stack)
        try:
            prof.__enter__()             # e.g. another profiler already running
        except BaseException:
            if self.sampler is not None:
                self.sampler.stop()
            raise
        self._prof = prof
        if self.steps is None or self.warmup == 0:
            self._begin()

    def _drop_outputs(self, *names: str) -> None:
        for p in ([self._trace_tmp] if self._trace_tmp is not None else []) + [self.out_dir / n for n in names]:
            p.unlink(missing_ok=True)

    def _finish(self, write: bool) -> None:
        """Stop the window, the profiler and the sampler whatever fails (the window's closing sync can raise a
        pending CUDA error); then write the report, or, when the block raised, nothing (its exception is the
        one the caller sees)."""
        self._discard = not write
        try:
            try:
                self._end()
            finally:
                try:
                    self._prof.__exit__(None, None, None)
                finally:
                    if self.sampler is not None:
                        self.sampler.stop()
        except BaseException:
            self._drop_outputs()
            if write:
                raise
            return
        if not write:
            self._drop_outputs()
            return
        if self._trace_tmp is not None:
            self.paths["trace"] = str(self.out_dir / "trace.json")     # named in the report; moved after it
        try:
            self._write()
        except BaseException:
            self._drop_outputs("report.json", "report.html")            # none of them was there before
            raise
        if self._trace_tmp is not None:
            self._trace_tmp.replace(self.out_dir / "trace.json")

    def _write(self) -> None:
        from fastgan.bench.env import device_info, git_info, versions
        from fastgan.profile.analyze import analyze_events
        from fastgan.profile.report import build_report, write_report

        cuda = self.device.type == "cuda"
        analysis = analyze_events(self._events, cuda=cuda, max_steps=self.window_steps,
                                  kernel_phases=self.kernel_phases, phases=self.phases,
                                  step_phases=self.step_phases) if self._events is not None else None
        samples = self.sampler.samples if self.sampler is not None else []
        self.report = build_report(
            schema=SCHEMA, title=self.title,
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            device=device_info(self.device), versions=versions(), git=git_info(), config=self.config,
            analysis=analysis, n_steps=self.n_steps, warmup=self.warmup if self.steps is not None else 0,
            requested_steps=self.steps, window_steps=self.window_steps, window_images=self.window_images,
            wall_s=(self._t_end - self._t_begin) if (self._t_begin is not None and self._t_end is not None) else None,
            window_wall=(self._nvml_begin or self._wall_begin, self._nvml_end or self._wall_end),
            nvml_status=self.nvml_status, nvml_samples=samples, phases=self.phases)
        self.paths.update(write_report(self.report, analysis, self.out_dir, self.paths.get("trace")))
        self.report["files"] = dict(self.paths)


@contextlib.contextmanager
def session(out_dir: str | Path, **kwargs):
    """Profile the block and write the report into ``out_dir``; yields a :class:`ProfileSession`.

    Keyword arguments: ``device`` (default: CUDA if available), ``steps`` and ``warmup``
    (a profiler schedule driven by ``s.step()``; default: record the whole block), ``nvml``,
    ``nvml_interval`` (s), ``record_shapes``, ``with_stack``, ``trace`` (export trace.json),
    ``img_per_step``, ``config`` (dict stored in the report), ``title``, ``kernel_phases`` (a
    :func:`fastgan.profile.analyze.kernel_phase_map` of an eager iteration, made with the same ``phases``:
    per-phase GPU time for a loop that replays that iteration as a CUDA graph), ``phases`` (the range
    names to report, in order; ``data`` is always one, first; default
    :data:`fastgan.profile.analyze.PHASES`) and ``step_phases`` (those only an iteration that is not a
    replayed CUDA graph opens; see :func:`fastgan.profile.analyze.step_phase_list`).
    If the block raises, the profiler and sampler are stopped and nothing is written.
    """
    s = ProfileSession(out_dir, **kwargs)
    s._start()
    ok = False
    try:
        yield s
        ok = True
    finally:
        s._finish(write=ok)
