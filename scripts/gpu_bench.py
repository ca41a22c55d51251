#!/usr/bin/env python
"""Run the GPU benchmark matrix in one process and write <out>/<device>-<date>[-tag].json + .png.

    python scripts/gpu_bench.py                 # on a CUDA machine: the README matrix, all modes
    python scripts/gpu_bench.py --dry-run       # anywhere: the same code path at tiny CPU sizes
    python scripts/gpu_bench.py --check ...     # anywhere: validate the arguments, print the plan, run nothing

Matrix (width 64, the DCGAN paper's ngf/ndf): DCGAN 32px batch 64 and 256, DCGAN 64px batch 256,
WGAN-GP 64px batch 64; modes eager-tutorial, eager-best, compile, compile-max, compile-ro,
fastgan, fastgan:fuse. Expect several minutes: compile-max autotunes every convolution shape.

Run order. By default the harness's own: case by case, every mode of a case before the next case.
``--cells`` gives the order cell by cell instead, for a run that a time limit may cut off: a
comma-separated list of ``MODE`` (that mode on every ``--cases`` case it has not run on yet, in
``--cases`` order) or ``MODE@VARIANT:RES:BATCH`` (one cell), e.g.

    --cells eager-tutorial,fastgan,compile-max@dcgan:64:256,compile-ro,compile-max

Every cell still runs in this one process, and the ratios (× tutorial, × best baseline) are
computed over all rows, as in a case-by-case run. Either way the JSON file is named before the
first row and rewritten after every row (``"partial": true`` until the end), so a run cut off by
a time limit leaves every finished row on disk; the PNG is drawn at the end.

Render a table for the README with ``python scripts/render_results.py`` (see its docstring).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

from fastgan.bench import ALL_MODES, BenchConfig, Case, format_table, markdown_table, run_bench, write_outputs
from fastgan.bench.env import device_info
from fastgan.bench.harness import add_ratios
from fastgan.bench.report import default_paths, write_json
from fastgan.errors import ConfigError

GPU_CASES = [Case("dcgan", 32, 64), Case("dcgan", 32, 256), Case("dcgan", 64, 256), Case("wgan-gp", 64, 64)]
DRY_CASES = [Case("dcgan", 16, 4), Case("wgan-gp", 16, 4)]
# torch.compile of even a tiny model takes minutes on a small CPU, so the dry run leaves `compile` out
# (ask for it with --modes); compile-max/compile-ro stay in and exercise the "CUDA only" skip.
DRY_MODES = [m for m in ALL_MODES if m != "compile"]


def parse_case(text: str) -> Case:
    """``VARIANT:RES:BATCH`` -> Case; ValueError otherwise."""
    v, r, b = text.strip().split(":")
    return Case(v, int(r), int(b))


def case_key(c: Case) -> tuple:
    return (c.variant, c.resolution, c.batch)


def parse_cells(text: str, cases: list[Case]) -> list[tuple[str, list[Case]]]:
    """``--cells`` -> [(mode, [cases])] in run order; a cell never runs twice (ValueError on bad items)."""
    done: set[tuple] = set()
    plan: list[tuple[str, list[Case]]] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        mode, _, where = item.partition("@")
        todo = [parse_case(where)] if where else cases
        todo = [c for c in todo if (mode, *case_key(c)) not in done]
        if not todo:
            continue
        done.update((mode, *case_key(c)) for c in todo)
        plan.append((mode, todo))
    if not plan:
        raise ValueError("--cells names no cell")
    return plan


def run_cells(base: BenchConfig, plan: list[tuple[str, list[Case]]], on_doc, log) -> dict:
    """Run ``plan`` (one ``run_bench`` per item, all in this process) and return one merged document.

    ``on_doc(doc)`` receives the merged document after every row. Ratios are computed over all rows;
    ``settings.cells`` records the order and ``groups`` each item's wall time. The matmul ceiling of a
    precision is measured once, by the first item that needs it, and reused by the later ones."""
    rows: list[dict] = []
    ceilings: dict = {}
    groups: list[dict] = []
    head: dict = {}              # the first item's document: device, versions, git, notes, settings
    t0 = time.time()

    def merge(new_rows: list[dict], partial: bool) -> dict:
        out_rows = [dict(r) for r in rows + new_rows]
        for r in out_rows:
            c = ceilings.get(r["precision"], {}).get("tflops")
            if r.get("matmul_tflops") is None and c:
                r["matmul_tflops"] = c
                r["frac_matmul"] = r["tflops"] / c if r.get("tflops") is not None else None
        add_ratios(out_rows)
        settings = {**head["settings"], "modes": list(dict.fromkeys(m for m, _ in plan)),
                    "cases": [dataclasses.asdict(c) for c in base.cases],
                    "cells": [f"{m}@{c.variant}:{c.resolution}:{c.batch}" for m, cs in plan for c in cs]}
        return {**head, "settings": settings, "matmul_ceiling": dict(ceilings), "groups": list(groups),
                "partial": partial, "wall_s": time.time() - t0, "rows": out_rows}

    def absorb(doc: dict) -> None:
        if not head:
            head.update(doc)
        for p, c in doc["matmul_ceiling"].items():
            ceilings.setdefault(p, c)

    for mode, cases in plan:
        needed = set(head["settings"]["precisions_resolved"]) if head else None
        if needed is not None and mode == "eager-tutorial":
            needed.add("fp32")
        bc = dataclasses.replace(base, cases=cases, modes=[mode],
                                 matmul_ceiling=needed is None or not needed <= set(ceilings))
        g0 = time.time()

        def on_row(doc: dict) -> None:
            absorb(doc)
            on_doc(merge(doc["rows"], partial=True))

        doc = run_bench(bc, log=log, on_row=on_row)
        absorb(doc)
        rows.extend(doc["rows"])
        groups.append({"mode": mode, "cases": [dataclasses.asdict(c) for c in cases], "wall_s": time.time() - g0})
    return merge([], partial=False)


def _config(a, cases: list[Case], modes: list[str] | None) -> tuple[BenchConfig, Path]:
    """The BenchConfig and output folder of the parsed arguments (ConfigError on a bad mode or size)."""
    if a.dry_run:
        bc = BenchConfig(cases=cases, modes=modes or DRY_MODES, width=4, steps=a.steps or 1,
                         repeats=a.repeats or 2, warmup=a.warmup if a.warmup is not None else 2, device="cpu",
                         cpu_defaults=True)
        return bc, Path(a.out or "bench-results/dry-run")
    bc = BenchConfig(cases=cases, modes=modes or list(ALL_MODES), width=64, steps=a.steps or 50,
                     repeats=a.repeats or 5, warmup=a.warmup if a.warmup is not None else 200, device="cuda")
    return bc, Path(a.out or Path(__file__).resolve().parent.parent / "benches" / "results")


def _print_plan(bc: BenchConfig, plan: list[tuple[str, list[Case]]] | None) -> None:
    from fastgan.variants import get_variant

    for c in bc.cases:
        get_variant(c.variant)              # an unknown variant fails here, as it would before the first row
    if plan is not None:
        cells = [(m, c) for m, cs in plan for c in cs]
    else:                                   # the harness's order: case by case, eager-tutorial first
        order = [m for m in bc.modes if m == "eager-tutorial"] + [m for m in bc.modes if m != "eager-tutorial"]
        cells = [(m, c) for c in bc.cases for m in order]
    print(f"ok: {len(cells)} cells, steps {bc.steps} x repeats {bc.repeats}, warm-up <= {bc.warmup}")
    for m, c in cells:
        print(f"  {m}@{c.variant}:{c.resolution}:{c.batch}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny CPU sizes, output under bench-results/dry-run/")
    ap.add_argument("--check", action="store_true", help="validate the arguments and print the plan; run nothing")
    ap.add_argument("--modes", help="comma-separated modes (default: all; dry run: all but compile)")
    ap.add_argument("--cells", help="run order cell by cell: MODE or MODE@VARIANT:RES:BATCH, comma-separated")
    ap.add_argument("--steps", type=int, help="iterations per timed window [50; dry run 1]")
    ap.add_argument("--repeats", type=int, help="timed windows [5; dry run 2]")
    ap.add_argument("--warmup", type=int, help="max warm-up iterations [200; dry run 2]")
    ap.add_argument("--out", help="output folder [benches/results; dry run bench-results/dry-run]")
    ap.add_argument("--cases", help="comma-separated VARIANT:RES:BATCH (default: the matrix above), e.g. dcgan:64:256")
    ap.add_argument("--tag", default="", help="suffix for the file name (to keep split runs apart)")
    a = ap.parse_args(argv)

    if a.modes and a.cells:
        print("error: give --modes or --cells, not both", file=sys.stderr)
        return 2
    modes = [m.strip() for m in a.modes.split(",")] if a.modes else None
    try:
        cases = [parse_case(c) for c in a.cases.split(",")] if a.cases else None
    except ValueError:
        print(f"error: --cases wants VARIANT:RES:BATCH[,...], got {a.cases!r}", file=sys.stderr)
        return 2
    cases = cases or (DRY_CASES if a.dry_run else GPU_CASES)
    plan = None
    if a.cells:
        try:
            plan = parse_cells(a.cells, cases)
        except ValueError:
            print(f"error: --cells wants MODE or MODE@VARIANT:RES:BATCH[,...], got {a.cells!r}", file=sys.stderr)
            return 2
        modes = list(dict.fromkeys(m for m, _ in plan))
    try:
        bc, out = _config(a, cases, modes)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.check:
        _print_plan(bc, plan)
        return 0
    if not a.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device; run on a GPU machine or pass --dry-run", file=sys.stderr)
        return 2
    # The file name is fixed before the run and the JSON rewritten after every row ("partial": true),
    # so a run cut off by a time limit still leaves every finished row on disk.
    jp, pp = default_paths({"device": device_info(torch.device(bc.device))}, out, prefix="")
    if a.tag:
        jp, pp = (p.with_name(p.stem + f"-{a.tag}" + p.suffix) for p in (jp, pp))
    log = lambda s: print(s, flush=True)  # noqa: E731
    if plan is None:
        result = run_bench(bc, log=log, on_row=lambda doc: write_json(doc, jp))
    else:
        result = run_cells(bc, plan, on_doc=lambda doc: write_json(doc, jp), log=log)
    write_outputs(result, json_path=jp, png_path=pp)
    print(format_table(result))
    print()
    print(markdown_table(jp))
    print(f"wrote {jp} and {pp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
