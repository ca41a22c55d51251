#!/usr/bin/env python
"""Run the GPU benchmark matrix in one call and write benches/results/<device>-<date>.json + .png.

    python scripts/gpu_bench.py                 # on a CUDA machine: the README matrix, all modes
    python scripts/gpu_bench.py --dry-run       # anywhere: the same code path at tiny CPU sizes

Matrix (width 64, the DCGAN paper's ngf/ndf): DCGAN 32px batch 64 and 256, DCGAN 64px batch 256,
WGAN-GP 64px batch 64; modes eager-tutorial, eager-best, compile, compile-max, compile-ro,
fastgan, fastgan:fuse. Expect several minutes: compile-max autotunes every convolution shape.
Render the table for the README with:

    python -c "from fastgan.bench.report import markdown_table; print(markdown_table('benches/results/<file>.json'))"
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from fastgan.bench import ALL_MODES, BenchConfig, Case, format_table, markdown_table, run_bench, write_outputs
from fastgan.bench.env import device_info
from fastgan.bench.report import default_paths, write_json

GPU_CASES = [Case("dcgan", 32, 64), Case("dcgan", 32, 256), Case("dcgan", 64, 256), Case("wgan-gp", 64, 64)]
DRY_CASES = [Case("dcgan", 16, 4), Case("wgan-gp", 16, 4)]
# torch.compile of even a tiny model takes minutes on a small CPU, so the dry run leaves `compile` out
# (ask for it with --modes); compile-max/compile-ro stay in and exercise the "CUDA only" skip.
DRY_MODES = [m for m in ALL_MODES if m != "compile"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny CPU sizes, output under bench-results/dry-run/")
    ap.add_argument("--modes", help="comma-separated modes (default: all; dry run: all but compile)")
    ap.add_argument("--steps", type=int, help="iterations per timed window [50; dry run 1]")
    ap.add_argument("--repeats", type=int, help="timed windows [5; dry run 2]")
    ap.add_argument("--warmup", type=int, help="max warm-up iterations [200; dry run 2]")
    ap.add_argument("--out", help="output folder [benches/results; dry run bench-results/dry-run]")
    ap.add_argument("--cases", help="comma-separated VARIANT:RES:BATCH (default: the matrix above), e.g. dcgan:64:256")
    ap.add_argument("--tag", default="", help="suffix for the file name (to keep split runs apart)")
    a = ap.parse_args(argv)

    modes = [m.strip() for m in a.modes.split(",")] if a.modes else None
    cases = None
    if a.cases:
        try:
            cases = [Case(v, int(r), int(b)) for v, r, b in (c.strip().split(":") for c in a.cases.split(","))]
        except ValueError:
            print(f"error: --cases wants VARIANT:RES:BATCH[,...], got {a.cases!r}", file=sys.stderr)
            return 2
    if a.dry_run:
        bc = BenchConfig(cases=cases or DRY_CASES, modes=modes or DRY_MODES, width=4, steps=a.steps or 1,
                         repeats=a.repeats or 2, warmup=a.warmup if a.warmup is not None else 2, device="cpu",
                         cpu_defaults=True)
        out = Path(a.out or "bench-results/dry-run")
    else:
        if not torch.cuda.is_available():
            print("error: no CUDA device; run on a GPU machine or pass --dry-run", file=sys.stderr)
            return 2
        bc = BenchConfig(cases=cases or GPU_CASES, modes=modes or list(ALL_MODES), width=64, steps=a.steps or 50,
                         repeats=a.repeats or 5, warmup=a.warmup if a.warmup is not None else 200, device="cuda")
        out = Path(a.out or Path(__file__).resolve().parent.parent / "benches" / "results")
    # The file name is fixed before the run and the JSON rewritten after every row ("partial": true),
    # so a run cut off by a time limit still leaves every finished row on disk.
    jp, pp = default_paths({"device": device_info(torch.device(bc.device))}, out, prefix="")
    if a.tag:
        jp, pp = (p.with_name(p.stem + f"-{a.tag}" + p.suffix) for p in (jp, pp))
    result = run_bench(bc, log=lambda s: print(s, flush=True), on_row=lambda doc: write_json(doc, jp))
    write_outputs(result, json_path=jp, png_path=pp)
    print(format_table(result))
    print()
    print(markdown_table(jp))
    print(f"wrote {jp} and {pp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
