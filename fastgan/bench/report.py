"""Rendering a benchmark result: terminal table, JSON, PNG bar chart, Markdown tables (one run; fastgan rows
against baselines across runs, each ratio marked same-run or cross-run).

JSON document (``schema: "fastgan.bench/1"``)::

    created, wall_s
    device        {type, name, driver, driver_note, cuda, capability, memory_bytes, ...,
                   peak_tflops {bf16, tf32, fp32} | null, peak_source}
    versions      {python, torch, triton, fastgan}
    git           {commit | null, dirty | null}
    settings      every BenchConfig field (cases, precisions, modes, width, steps, repeats, warmup,
                  warmup_tol, data, device, seed, cpu_defaults, ...) + precisions_resolved,
                  warmup_chunk_resolved, timer, tf32 {cudnn, matmul}, cudnn_version, loadavg_1m_at_end
    matmul_ceiling {precision: {math, dtype, n, iters, seconds, tflops}}
    notes         [str]  (what the numbers mean, CPU caveats)
    rows          [{variant, resolution, batch, precision, mode, width, channels, n_critic,
                    status ok|skipped|failed, reason, settings {...flags of the mode...},
                    samples_s, median_s, p20_s, p80_s, img_per_step, img_per_s, img_per_s_p20,
                    img_per_s_p80, s_per_kimg, warmup_steps, warmup_converged, warmup_timings_s,
                    steps, repeats, timer, flops_per_step, tflops, peak_tflops, frac_peak,
                    matmul_tflops, frac_matmul, math, peak_mem_bytes, peak_mem_kind, mem_start_bytes,
                    graphs_compiled, recompiles_timed, cudagraph_skips, cudagraph_tree_graphs,
                    cudagraph_recorded_timed, cudagraph_rerecords_timed, captures_timed,
                    vs_tutorial, vs_best_baseline, best_baseline_mode}]

Every row has every field (``fastgan.bench.harness.ROW_FIELDS``); skipped and failed rows have
``status`` and ``reason`` and null measurements. Nulls elsewhere mean "not known here" (no peak
table for CPUs, no FLOP count), never zero. A document that ``scripts/gpu_bench.py --cells`` wrote
(several ``run_bench`` calls in one process, merged) also has ``settings.cells`` (the run order) and
``groups`` [{mode, cases, wall_s}].
"""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

from fastgan.bench.env import slug


def _fmt(x, spec: str, none: str = "-") -> str:
    return none if x is None else format(x, spec)


def _mem(b) -> str:
    if b is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(b) < 1024 or unit == "GiB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024
    return "-"


def header(result: dict) -> str:
    d, v, s = result["device"], result["versions"], result["settings"]
    lines = [f"fastgan bench | device: {d['name']} ({d['type']}"
             + (f", driver {d['driver']}" if d.get("driver") else "") + ")"
             + f" | torch {v['torch']} | triton {v.get('triton')} | commit {(result['git'].get('commit') or 'n/a')[:10]}"]
    if s.get("cpu_defaults") or d["type"] != "cuda":
        lines.append("CPU run: no GPU in use, so this is the CPU-sized matrix (small widths, few steps); "
                     "compile-ro (CUDA graphs) is CUDA only. These are not GPU numbers.")
        if d.get("loadavg_1m_at_start") is not None:
            lines.append(f"CPU: {d.get('cpu_count')} cores, {d.get('torch_threads')} torch threads, load average "
                         f"{d['loadavg_1m_at_start']} at start (other work on the box skews these timings).")
    lines.append(f"steps {s['steps']} x repeats {s['repeats']}, warm-up <= {s['warmup']} (until three timings agree within "
                 f"{s['warmup_tol']:.0%}); data: {s['data']}; timer: {s['timer']}")
    return "\n".join(lines)


COLUMNS = ("variant", "res", "batch", "prec", "mode", "img/s", "p20-p80", "s/kimg", "TFLOP/s", "%peak", "%matmul",
           "mem", "recomp", "x tutorial", "x best base")


def timed_recompiles(r: dict) -> int | None:
    """Dynamo recompiles + Inductor CUDA graphs recorded or re-recorded + fastgan captures during the timed
    windows (the tables' recompile column: anything compiled or recorded while the clock ran; 0 is the goal)."""
    if r.get("recompiles_timed") is None:
        return None
    return sum(int(r.get(k) or 0) for k in ("recompiles_timed", "cudagraph_recorded_timed",
                                              "cudagraph_rerecords_timed", "captures_timed"))


def _cuda_skips(result: dict, r: dict) -> int:
    """Inductor's CUDA-graph skips of a row, on CUDA only (Inductor counts one for every CPU graph too)."""
    return (r.get("cudagraph_skips") or 0) if result["device"]["type"] == "cuda" else 0


def table_rows(result: dict) -> list[tuple[str, ...]]:
    out = []
    for r in result["rows"]:
        skips = _cuda_skips(result, r)
        ident = (r["variant"], str(r["resolution"]), str(r["batch"]), r["precision"],
                 r["mode"] + (f" (cudagraph skips {skips})" if skips else ""))
        if r["status"] != "ok":
            out.append(ident + (f"{r['status']}: {r['reason']}",) + ("",) * (len(COLUMNS) - 6))
            continue
        out.append(ident + (
            f"{r['img_per_s']:.1f}",
            f"{r['img_per_s_p20']:.0f}-{r['img_per_s_p80']:.0f}",
            f"{r['s_per_kimg']:.3f}",
            _fmt(r.get("tflops"), ".3g"),
            _fmt(None if r.get("frac_peak") is None else 100 * r["frac_peak"], ".1f"),
            _fmt(None if r.get("frac_matmul") is None else 100 * r["frac_matmul"], ".1f"),
            _mem(r.get("peak_mem_bytes")) + ("*" if r.get("peak_mem_kind") == "cpu_peak_rss_growth" else ""),
            str(timed_recompiles(r)),
            _fmt(r.get("vs_tutorial"), ".2f"),
            _fmt(r.get("vs_best_baseline"), ".2f") + (f" ({r['best_baseline_mode']})" if r.get("best_baseline_mode")
                                                      and r["mode"] not in (r["best_baseline_mode"],) else ""),
        ))
    return out


def format_table(result: dict) -> str:
    rows = table_rows(result)
    ok_rows = [r for r in rows if not r[5].startswith(("skipped", "failed"))]
    widths = [max([len(c)] + [len(r[i]) for r in ok_rows]) for i, c in enumerate(COLUMNS)]
    lines = [header(result), ""]
    lines.append("  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths)))
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        if r[5].startswith(("skipped", "failed")):
            lines.append("  ".join(c.ljust(w) for c, w in zip(r[:5], widths[:5])) + "  " + r[5])
        else:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    if any(r.get("peak_mem_kind") == "cpu_peak_rss_growth" for r in result["rows"]):
        lines.append("* CPU memory column: growth of the process's peak RSS during the row (not the row's footprint).")
    lines.append("x tutorial: img/s over eager-tutorial (fp32 NCHW, the DCGAN tutorial loop); "
                 "x best base: over the fastest baseline of the same case and precision.")
    return "\n".join(lines)


def default_paths(result: dict, out_dir: str | Path, prefix: str = "bench-") -> tuple[Path, Path]:
    d = result["device"]
    name = d["name"] if d["type"] == "cuda" else f"cpu-{d['name']}"
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(out_dir) / f"{prefix}{slug(name)}-{stamp}"
    return base.with_suffix(".json"), base.with_suffix(".png")


def write_json(result: dict, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
    tmp.replace(p)
    return p


def plot_png(result: dict, path: str | Path) -> Path:
    """Grouped bars: img/s per mode for each (variant, resolution, batch, precision), p20–p80 whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    groups = list(dict.fromkeys((r["variant"], r["resolution"], r["batch"], r["precision"]) for r in rows
                                if r["mode"] != "eager-tutorial" or len({x["precision"] for x in rows}) == 1))
    if not groups:
        groups = list(dict.fromkeys((r["variant"], r["resolution"], r["batch"], r["precision"]) for r in rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(groups) * max(1, len(modes)) / 3), 4.5), dpi=110)
    width = 0.8 / max(1, len(modes))
    cmap = plt.get_cmap("tab10")
    for j, mode in enumerate(modes):
        xs, ys, lo, hi, labels = [], [], [], [], []
        for i, g in enumerate(groups):
            match = [r for r in rows if r["mode"] == mode and (r["variant"], r["resolution"], r["batch"]) == g[:3]
                     and (mode == "eager-tutorial" or r["precision"] == g[3])]
            if not match:
                continue
            r = match[0]
            x = i + (j - (len(modes) - 1) / 2) * width
            if r["status"] != "ok":
                ax.text(x, 0, f"{mode}: {r['status']}", rotation=90, ha="center", va="bottom", fontsize=7, color="0.4")
                continue
            xs.append(x)
            ys.append(r["img_per_s"])
            lo.append(r["img_per_s"] - r["img_per_s_p20"])
            hi.append(r["img_per_s_p80"] - r["img_per_s"])
            labels.append(f"{r['vs_tutorial']:.2f}x" if r.get("vs_tutorial") and mode != "eager-tutorial" else "")
        if not xs:
            continue
        color = "crimson" if mode.startswith("fastgan") else cmap(j % 10)
        bars = ax.bar(xs, ys, width * 0.95, yerr=[lo, hi], capsize=2, label=mode, color=color,
                      edgecolor="black" if mode.startswith("fastgan") else None, linewidth=0.6)
        for b, lab in zip(bars, labels):
            if lab:
                ax.text(b.get_x() + b.get_width() / 2, b.get_height(), lab, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{v} {r}px\nbatch {b} {p}" for v, r, b, p in groups], fontsize=8)
    ax.set_ylabel("img/s (real images shown to D)")
    d = result["device"]
    ax.set_title(f"fastgan bench on {d['name']}" + (" (CPU run)" if d["type"] != "cuda" else "")
                 + "\nbars: median, whiskers p20-p80, labels: x eager-tutorial", fontsize=9)
    ax.legend(fontsize=7, ncol=min(3, len(modes)))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p)
    plt.close(fig)
    return p


def write_outputs(result: dict, out_dir: str | Path | None = None, *, json_path: str | Path | None = None,
                  png_path: str | Path | None = None, prefix: str = "bench-") -> tuple[Path, Path]:
    """Write ``<out_dir>/<prefix><device>-<date>.json`` and ``.png`` (or the explicit paths)."""
    if json_path is None or png_path is None:
        j, p = default_paths(result, out_dir or "bench-results", prefix)
        json_path, png_path = json_path or j, png_path or p
    result.setdefault("files", {})
    result["files"] = {"json": str(json_path), "png": str(png_path)}
    write_json(result, json_path)
    plot_png(result, png_path)
    return Path(json_path), Path(png_path)


def markdown_table(json_path: str | Path) -> str:
    """A Markdown table of a bench JSON (for the README): one line per row, ratios included."""
    result = json.loads(Path(json_path).read_text())
    d, v = result["device"], result["versions"]
    out = [f"Device: **{d['name']}**" + (f" (driver {d['driver']})" if d.get("driver") else "")
           + f", torch {v['torch']}, triton {v.get('triton')}, commit `{(result['git'].get('commit') or 'n/a')[:10]}`"
           + f", {result['created'][:10]}.", ""]
    if d["type"] != "cuda":
        out.append("_CPU run with the small CPU defaults; not GPU numbers._\n")
    out.append("| variant | res | batch | precision | mode | img/s (p20–p80) | s/kimg | TFLOP/s | % peak | "
               "× tutorial | × best baseline | recompiles |")
    out.append("|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in result["rows"]:
        skips = _cuda_skips(result, r)
        mode = r["mode"] + (f" (CUDA graphs skipped ×{skips})" if skips else "")
        ident = f"| {r['variant']} | {r['resolution']} | {r['batch']} | {r['precision']} | {mode} "
        if r["status"] != "ok":
            out.append(ident + f"| {r['status']}: {r['reason']} | | | | | | |")
            continue
        pk = None if r.get("frac_peak") is None else 100 * r["frac_peak"]
        out.append(ident + f"| {r['img_per_s']:.0f} ({r['img_per_s_p20']:.0f}–{r['img_per_s_p80']:.0f}) "
                   f"| {r['s_per_kimg']:.3f} | {_fmt(r.get('tflops'), '.3g')} | {_fmt(pk, '.1f')} "
                   f"| {_fmt(r.get('vs_tutorial'), '.2f')} | {_fmt(r.get('vs_best_baseline'), '.2f')} "
                   f"| {timed_recompiles(r)} |")
    return "\n".join(out) + "\n"


def compare_table(json_paths: list[str | Path]) -> str:
    """A Markdown table of every fastgan row in ``json_paths`` against the baselines of the same case found
    in any of them, saying for each ratio whether it is same-run or cross-run.

    Baselines of a case: each baseline mode's ok row, taken from the fastgan row's own file if it has one,
    else from the most recent other file (``created``). ``× tutorial`` divides by eager-tutorial; ``× best
    baseline`` by the fastest baseline (same precision, eager-tutorial at any), as the bench's own columns
    do. ``runs`` is "same run" when every row used comes from the fastgan row's file, else "cross-run" and
    the names of the files used."""
    from fastgan.bench.baselines import BASELINE_MODES

    docs = [json.loads(Path(p).read_text()) for p in json_paths]
    labels = [Path(p).name for p in json_paths]
    order = sorted(range(len(docs)), key=lambda i: docs[i]["created"], reverse=True)   # most recent first
    key = lambda r: (r["variant"], r["resolution"], r["batch"])   # noqa: E731
    out = ["| variant | res | batch | precision | mode | img/s | × tutorial | × best baseline | runs |",
           "|---|---:|---:|---|---|---:|---:|---:|---|"]
    for i, doc in enumerate(docs):
        for r in doc["rows"]:
            if not r["mode"].startswith("fastgan") or r["status"] != "ok":
                continue
            base: dict[str, tuple[int, dict]] = {}
            for j in [i] + [j for j in order if j != i]:
                for b in docs[j]["rows"]:
                    if (b["mode"] in BASELINE_MODES and b["status"] == "ok" and key(b) == key(r)
                            and b["mode"] not in base
                            and (b["mode"] == "eager-tutorial" or b["precision"] == r["precision"])):
                        base[b["mode"]] = (j, b)
            tut = base.get("eager-tutorial")
            best = max(base.values(), key=lambda jb: jb[1]["img_per_s"]) if base else None
            used = {i} | {j for j, _ in ([tut] if tut else []) + ([best] if best else [])}
            runs = ("same run" if used == {i} else
                    "cross-run: " + ", ".join(f"`{labels[j]}`" for j in [i] + sorted(used - {i})))
            vs_tut = _fmt(r["img_per_s"] / tut[1]["img_per_s"] if tut else None, ".2f")
            vs_best = (f"{r['img_per_s'] / best[1]['img_per_s']:.2f} ({best[1]['mode']})" if best else "-")
            out.append(f"| {r['variant']} | {r['resolution']} | {r['batch']} | {r['precision']} | {r['mode']} "
                       f"| {r['img_per_s']:.0f} | {vs_tut} | {vs_best} | {runs} |")
    if len(out) == 2:
        out.append("| (no fastgan rows) | | | | | | | | |")
    return "\n".join(out) + "\n"
