"""What a benchmark or profile ran on: device, driver, versions, commit (never the host name)."""
from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def nvml_driver() -> tuple[str | None, str | None]:
    """``(driver version, None)`` from NVML, or ``(None, reason)``."""
    try:
        import pynvml
    except Exception as e:  # pragma: no cover - nvidia-ml-py is a dependency
        return None, f"nvidia-ml-py not importable ({type(e).__name__})"
    try:
        pynvml.nvmlInit()
    except Exception as e:
        return None, f"NVML unavailable: {_one_line(e)}"
    try:
        v = pynvml.nvmlSystemGetDriverVersion()
        return (v.decode() if isinstance(v, bytes) else str(v)), None
    except Exception as e:  # pragma: no cover - needs a driver
        return None, f"NVML driver query failed: {_one_line(e)}"
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def device_info(device: torch.device) -> dict:
    """Name, kind and driver of ``device`` (plus compute capability and memory on CUDA)."""
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        driver, why = nvml_driver()
        return {"type": "cuda", "name": torch.cuda.get_device_name(idx), "index": idx,
                "capability": f"{props.major}.{props.minor}", "memory_bytes": int(props.total_memory),
                "sm_count": int(props.multi_processor_count), "driver": driver, "driver_note": why,
                "cuda": torch.version.cuda}
    load = loadavg()                           # other work on the box skews CPU timings: say how busy it was
    return {"type": device.type, "name": cpu_model() if device.type == "cpu" else str(device),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "loadavg_1m_at_start": load,
            "driver": None,
            "driver_note": "no NVIDIA GPU in use (CPU run)", "cuda": torch.version.cuda}


def loadavg() -> float | None:
    """The 1-minute load average, rounded (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):  # pragma: no cover
        return None


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        import triton

        out["triton"] = triton.__version__
    except Exception:
        out["triton"] = None
    from fastgan import __version__

    out["fastgan"] = __version__
    return out


def git_info() -> dict[str, object]:
    """``{"commit": sha | None, "dirty": bool | None}`` of the checkout fastgan is imported from. Dirty: a
    tracked file changed, or an untracked Python file that git does not ignore (code that may have run;
    result files a run writes, such as its own JSON, do not count)."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return {"commit": None, "dirty": None}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    commit = sha.stdout.strip()
    try:
        st = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=here,
                            capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):      # e.g. a huge untracked tree: the commit still counts
        return {"commit": commit, "dirty": None}
    if st.returncode != 0:
        return {"commit": commit, "dirty": None}
    lines = [ln for ln in st.stdout.splitlines() if ln.strip()]
    dirty = any(not ln.startswith("??") or ln[3:].strip().strip('"').endswith(".py") for ln in lines)
    return {"commit": commit, "dirty": dirty}


def slug(text: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` → ``"nvidia-h100-80gb-hbm3"`` (for file names)."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:60] or "device"


def _one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0]}" if msg and msg[0] else type(e).__name__
