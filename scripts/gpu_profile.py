#!/usr/bin/env python
"""Profile fastgan's step on a GPU for the configurations of the README and keep the reports.

    python scripts/gpu_profile.py               # CUDA: DCGAN 64px batch 256 and WGAN-GP 64px batch 64
    python scripts/gpu_profile.py --dry-run     # anywhere: the same code path at tiny CPU sizes

Each configuration writes report.html, report.json and trace.json into
benches/results/profile-<device>-<date>/<variant>-<resolution>-b<batch>/.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import sys
from pathlib import Path

import torch

from fastgan.bench.env import cpu_model, slug
from fastgan.profile import format_summary, profile_training

GPU_CONFIGS = [dict(variant="dcgan", resolution=64, batch=256, width=64),
               dict(variant="wgan-gp", resolution=64, batch=64, width=64)]
DRY_CONFIGS = [dict(variant="dcgan", resolution=16, batch=8, width=4),
               dict(variant="wgan-gp", resolution=16, batch=4, width=4)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny CPU sizes, output under profile-results/dry-run/")
    ap.add_argument("--mode", default="auto", help="fastgan step engine [auto]")
    ap.add_argument("--steps", type=int, help="profiled iterations [20; dry run 2]")
    ap.add_argument("--warmup", type=int, help="unprofiled iterations first [10; dry run 1]")
    ap.add_argument("--out", help="output folder")
    a = ap.parse_args(argv)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    if a.dry_run:
        configs, device, steps, warmup = DRY_CONFIGS, "cpu", 2 if a.steps is None else a.steps, 1 if a.warmup is None else a.warmup
        root = Path(a.out or "profile-results/dry-run") / f"profile-{slug('cpu-' + cpu_model())}-{stamp}"
    else:
        if not torch.cuda.is_available():
            print("error: no CUDA device; run on a GPU machine or pass --dry-run", file=sys.stderr)
            return 2
        configs, device, steps, warmup = GPU_CONFIGS, "cuda", 20 if a.steps is None else a.steps, 10 if a.warmup is None else a.warmup
        base = Path(a.out) if a.out else Path(__file__).resolve().parent.parent / "benches" / "results"
        root = base / f"profile-{slug(torch.cuda.get_device_name())}-{stamp}"
    from fastgan.errors import FastganError

    for c in configs:
        out = root / f"{c['variant']}-{c['resolution']}-b{c['batch']}"
        try:
            rep = profile_training(**c, steps=steps, warmup=warmup, mode=a.mode, device=device, out=out)
        except FastganError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(format_summary(rep), flush=True)
    print(f"reports under {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
