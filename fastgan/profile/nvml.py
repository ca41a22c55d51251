"""NVML sampling in a background thread: utilization, SM clock, memory, power, energy, GPM.

``utilization.gpu`` from NVML is the percentage of sample periods in which *some* kernel was
running on the GPU: a single one-SM kernel reads as 100%. It is not SM occupancy. Hopper and
newer GPUs expose GPM metrics (``nvmlGpmMetricsGet``) that say more: SM_UTIL (share of SMs
busy), SM_OCCUPANCY (active warps vs the maximum), ANY_TENSOR_UTIL (share of time tensor cores
did anything) and DRAM_BW_UTIL (share of peak memory bandwidth). They are sampled here where
the driver offers them.

Without an NVIDIA driver (or without ``nvidia-ml-py``) the sampler does not raise: its
``status`` says ``available: False`` with the reason, and it records nothing.
"""
from __future__ import annotations

import threading
import time

UTIL_NOTE = ("NVML 'utilization' (gpu_util) only means that a kernel was running during the sample window "
             "(one tiny kernel reads as 100%); it is not SM occupancy. GPM sm_util / sm_occupancy / tensor_util / "
             "dram_bw_util (Hopper+, where the driver offers them) measure how much of the GPU was busy.")

GPM_FIELDS = (("sm_util", "NVML_GPM_METRIC_SM_UTIL"), ("sm_occupancy", "NVML_GPM_METRIC_SM_OCCUPANCY"),
              ("tensor_util", "NVML_GPM_METRIC_ANY_TENSOR_UTIL"), ("dram_bw_util", "NVML_GPM_METRIC_DRAM_BW_UTIL"))

GPM_MIN_INTERVAL = 0.1   # s: NVML's minimum between the two GPM samples a metric is computed from (the
#                          sampling interval defaults to 0.125 s, so timing jitter does not skip every other one)

SAMPLE_FIELDS = ("t", "gpu_util", "mem_util", "sm_clock_mhz", "mem_used_bytes", "power_w", "energy_mj") + \
    tuple(f for f, _ in GPM_FIELDS)


def _err(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0]}" if msg and msg[0] else type(e).__name__


def _cuda_uuid(index: int) -> str | None:
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        u = str(torch.cuda.get_device_properties(index).uuid)
        return u if u.startswith("GPU-") or u.startswith("MIG-") else f"GPU-{u}"
    except Exception:
        return None


class NvmlSampler:
    """Samples one GPU every ``interval`` seconds in a daemon thread.

    >>> s = NvmlSampler(0)
    >>> s.start(); ...; s.stop()
    >>> s.status        # {"available": bool, "reason": str | None, "gpm": {...}, "device": name}
    >>> s.samples       # [{"t", "gpu_util", "sm_clock_mhz", "mem_used_bytes", "power_w", "energy_mj", "sm_util", ...}]

    ``device_index`` is the CUDA device index as torch numbers it (mapped to NVML by UUID, so
    ``CUDA_VISIBLE_DEVICES`` is respected), or None for device 0.
    """

    def __init__(self, device_index: int | None = None, *, interval: float = 0.125, gpm: bool = True):
        self.interval = float(interval)
        self.samples: list[dict] = []
        self.status: dict = {"available": False, "reason": None, "device": None, "driver": None,
                             "gpm": {"available": False, "reason": "not probed"}, "note": UTIL_NOTE}
        self._nv = None
        self._handle = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._gpm_samples = None
        self._gpm_ids: list[tuple[str, int]] = []
        self._gpm_t: float | None = None     # when the held GPM sample was taken (monotonic s)
        self._lock = threading.RLock()       # one sample at a time: the thread, the window edges, stop()
        self._init(device_index if device_index is not None else 0, gpm)

    # -- setup ----------------------------------------------------------------------------
    def _init(self, index: int, gpm: bool) -> None:
        try:
            import pynvml as nv
        except Exception as e:
            self.status["reason"] = f"nvidia-ml-py (pynvml) is not importable: {_err(e)}"
            self.status["gpm"]["reason"] = "NVML unavailable"
            return
        try:
            nv.nvmlInit()
        except Exception as e:
            lib_missing = type(e).__name__.endswith("LibraryNotFound") or "not found" in str(e).lower()
            self.status["reason"] = ("NVML library not found: no NVIDIA driver on this machine" if lib_missing
                                     else f"NVML could not be initialised ({_err(e)})")
            self.status["gpm"]["reason"] = "NVML unavailable"
            return
        self._nv = nv
        try:
            uuid = _cuda_uuid(index)
            try:
                self._handle = nv.nvmlDeviceGetHandleByUUID(uuid) if uuid else nv.nvmlDeviceGetHandleByIndex(index)
                self.status["mapping"] = f"by UUID {uuid}" if uuid else f"by NVML index {index} (torch gave no UUID)"
            except Exception as e:
                if not uuid:
                    raise
                # e.g. a UUID spelling NVML does not take; under CUDA_VISIBLE_DEVICES the index may name another GPU
                self._handle = nv.nvmlDeviceGetHandleByIndex(index)
                self.status["mapping"] = (f"by NVML index {index}: the UUID lookup failed ({_err(e)}), so with "
                                          "CUDA_VISIBLE_DEVICES set this may be another GPU than the profiled one")
            name = nv.nvmlDeviceGetName(self._handle)
            self.status["device"] = name.decode() if isinstance(name, bytes) else str(name)
            drv = nv.nvmlSystemGetDriverVersion()
            self.status["driver"] = drv.decode() if isinstance(drv, bytes) else str(drv)
        except Exception as e:
            self.status["reason"] = f"NVML has no handle for CUDA device {index} ({_err(e)})"
            self.status["gpm"]["reason"] = "NVML unavailable"
            self._shutdown()
            return
        self.status["available"] = True
        self.status["gpm"] = self._probe_gpm() if gpm else {"available": False, "reason": "disabled"}

    def _probe_gpm(self) -> dict:
        nv = self._nv
        if not hasattr(nv, "nvmlGpmQueryDeviceSupport"):
            return {"available": False, "reason": "this nvidia-ml-py has no GPM bindings"}
        try:
            sup = nv.nvmlGpmQueryDeviceSupport(self._handle)
            if not sup.isSupportedDevice:
                return {"available": False,
                        "reason": "the driver reports no GPM support on this GPU (GPM needs Hopper or newer)"}
            self._gpm_ids = [(f, getattr(nv, const)) for f, const in GPM_FIELDS if hasattr(nv, const)]
            self._gpm_samples = [nv.nvmlGpmSampleAlloc(), nv.nvmlGpmSampleAlloc()]
            nv.nvmlGpmSampleGet(self._handle, self._gpm_samples[0])
            self._gpm_t = time.monotonic()
            return {"available": True, "reason": None, "metrics": [f for f, _ in self._gpm_ids]}
        except Exception as e:
            self._free_gpm()
            return {"available": False, "reason": f"GPM query failed ({_err(e)})"}

    # -- sampling -------------------------------------------------------------------------
    def _read(self, fn, *args):
        try:
            return fn(*args)
        except Exception:
            return None

    def sample(self) -> dict | None:
        """Take one sample now (also what the thread does; safe to call while it runs); None when NVML is
        unavailable or the sampler has stopped."""
        with self._lock:
            if not self.status["available"] or self._nv is None:
                return None
            return self._sample()

    def _sample(self) -> dict:
        nv, h = self._nv, self._handle
        s: dict = {"t": time.time()}
        u = self._read(nv.nvmlDeviceGetUtilizationRates, h)
        s["gpu_util"] = None if u is None else float(u.gpu)
        s["mem_util"] = None if u is None else float(u.memory)
        clk = self._read(nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_SM)
        s["sm_clock_mhz"] = None if clk is None else float(clk)
        mem = self._read(nv.nvmlDeviceGetMemoryInfo, h)
        s["mem_used_bytes"] = None if mem is None else int(mem.used)
        p = self._read(nv.nvmlDeviceGetPowerUsage, h)
        s["power_w"] = None if p is None else p / 1000.0
        e = self._read(nv.nvmlDeviceGetTotalEnergyConsumption, h)
        s["energy_mj"] = None if e is None else float(e)
        s.update(self._gpm_step())
        self.samples.append(s)
        return s

    def _gpm_step(self) -> dict:
        """GPM metrics between the held sample and a new one. NVML needs the two more than 100 ms apart
        (closer pairs give meaningless values): until then this returns None for them and keeps the old one."""
        out = {f: None for f, _ in GPM_FIELDS}
        if self._gpm_samples is None:
            return out
        if self._gpm_t is not None and time.monotonic() - self._gpm_t <= GPM_MIN_INTERVAL:
            return out
        nv = self._nv
        prev, cur = self._gpm_samples
        try:
            nv.nvmlGpmSampleGet(self._handle, cur)
            self._gpm_t = time.monotonic()
            mg = nv.c_nvmlGpmMetricsGet_t()
            mg.version = nv.NVML_GPM_METRICS_GET_VERSION
            mg.numMetrics = len(self._gpm_ids)
            mg.sample1, mg.sample2 = prev, cur
            for i, (_, mid) in enumerate(self._gpm_ids):
                mg.metrics[i].metricId = mid
            nv.nvmlGpmMetricsGet(mg)
            for i, (f, _) in enumerate(self._gpm_ids):
                if mg.metrics[i].nvmlReturn == nv.NVML_SUCCESS:
                    out[f] = float(mg.metrics[i].value)
        except Exception as e:
            self.status["gpm"]["last_error"] = _err(e)
        self._gpm_samples = [cur, prev]
        return out

    def _run(self) -> None:
        # A deadline per tick, so the period stays ``interval`` however long the reads take.
        due = time.monotonic() + self.interval
        while not self._stop.wait(max(0.01, due - time.monotonic())):     # never a busy loop
            self.sample()
            due = max(due + self.interval, time.monotonic())

    def start(self) -> "NvmlSampler":
        if self.status["available"] and self._thread is None:
            self.sample()
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="fastgan-nvml", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> "NvmlSampler":
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)     # a read stuck in the driver: the lock below still waits for it
            self._thread = None
            self.sample()
        with self._lock:
            self._free_gpm()
            self._shutdown()
        return self

    def __enter__(self) -> "NvmlSampler":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _free_gpm(self) -> None:
        if self._gpm_samples is not None and self._nv is not None:
            for smp in self._gpm_samples:
                try:
                    self._nv.nvmlGpmSampleFree(smp)
                except Exception:
                    pass
        self._gpm_samples = None

    def _shutdown(self) -> None:
        if self._nv is not None:
            try:
                self._nv.nvmlShutdown()
            except Exception:
                pass
            self._nv = None

    # -- summary --------------------------------------------------------------------------
    def summary(self, t0: float | None = None, t1: float | None = None) -> dict:
        """Means/maxima over samples with ``t0 <= t <= t1`` (time.time() seconds); energy from the
        driver's energy counter where it exists, else the integral of power."""
        return summarize_samples(self.samples, t0, t1)


def summarize_samples(samples: list[dict], t0: float | None = None, t1: float | None = None) -> dict:
    xs = [s for s in samples if (t0 is None or s["t"] >= t0) and (t1 is None or s["t"] <= t1)]
    out: dict = {"n_samples": len(xs), "duration_s": (xs[-1]["t"] - xs[0]["t"]) if len(xs) > 1 else None}

    def col(k):
        return [s[k] for s in xs if s.get(k) is not None]

    for k in ("gpu_util", "mem_util", "sm_clock_mhz", "power_w") + tuple(f for f, _ in GPM_FIELDS):
        v = col(k)
        out[f"{k}_mean"] = sum(v) / len(v) if v else None
    clk = col("sm_clock_mhz")
    out["sm_clock_mhz_min"] = min(clk) if clk else None
    out["sm_clock_mhz_max"] = max(clk) if clk else None
    pw = col("power_w")
    out["power_w_max"] = max(pw) if pw else None
    mem = col("mem_used_bytes")
    out["mem_used_max_bytes"] = max(mem) if mem else None
    e = [(s["t"], s["energy_mj"]) for s in xs if s.get("energy_mj") is not None]
    if len(e) > 1:
        out["energy_j"], out["energy_source"] = (e[-1][1] - e[0][1]) / 1000.0, "nvmlDeviceGetTotalEnergyConsumption"
    else:
        p = [(s["t"], s["power_w"]) for s in xs if s.get("power_w") is not None]
        if len(p) > 1:
            out["energy_j"] = sum((b[0] - a[0]) * (a[1] + b[1]) / 2 for a, b in zip(p, p[1:]))
            out["energy_source"] = "trapezoid integral of nvmlDeviceGetPowerUsage"
        else:
            out["energy_j"], out["energy_source"] = None, "too few samples"
    return out
