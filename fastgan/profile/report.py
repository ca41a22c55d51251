"""The profile report: a JSON document and a self-contained HTML page with embedded charts.

JSON (``schema: "fastgan.profile/1"``)::

    title, created, device {...}, versions {...}, git {commit, dirty}, config {...}
    window   {requested_steps, warmup, steps, wall_s, step_ms {median, p20, p80, min, max} | null,
              step_time_source, images, img_per_s, s_per_kimg, status, reason}
    phases_order [str]   the phase names the window was read with, in order: data, then the ranges the task's
                         schedule names (fastgan.train.step.Engine.phase_names; for the DCGAN family, and by
                         default, fastgan.profile.analyze.PHASES: data, G_forward, D_forward, D_backward,
                         D_penalty, D_step, G_loss, G_backward, G_step, G_ema)
    phases   [{name, count, cpu_ms, cpu_ms_per_step, device_ms, device_ms_per_step, device_span_ms, share}]
             (in phases_order; only those that ran)
             (graphs mode: device_ms attributed from the warm-up iteration's kernels, "attributed": true)
             (+ an "other (outside phases)" entry; share = CPU-side time / summed step time,
              or device time / summed kernel time on CUDA)
    top      {kind "cuda kernels (device time)" | "cpu ops (self CPU time)", total_ms,
              rows [{name, calls, time_ms, share}]}
    idle_gaps {available, reason, window_ms, busy_ms, idle_ms, idle_frac, gaps_between_kernels_ms,
               n_gaps, largest_gap_ms, median_gap_us, ...}            (CUDA only; null + reason on CPU)
    nvml     {available, reason, device, driver, note, gpm {available, reason, metrics},
              summary {gpu_util_mean, sm_util_mean, sm_occupancy_mean, tensor_util_mean, dram_bw_util_mean,
                       sm_clock_mhz_mean/min/max, mem_used_max_bytes, power_w_mean/max, energy_j, ...} | null,
              samples [{t (s from the first sample), gpu_util, sm_clock_mhz, mem_used_bytes, power_w, ...}]}
    notes    [str]
    files    {json, html, trace}
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from fastgan.bench.stats import summarize
from fastgan.profile.analyze import PHASES, STEP_PHASES, phase_list
from fastgan.profile.nvml import UTIL_NOTE, summarize_samples


def build_report(*, schema, title, created, device, versions, git, config, analysis, n_steps, warmup,
                 requested_steps, window_steps, window_images, wall_s, window_wall, nvml_status, nvml_samples,
                 phases=None) -> dict:
    """The report document (module doc). ``phases``: the phase names the window was read with
    (:func:`fastgan.profile.analyze.phase_list`), recorded as ``phases_order``; an analysis's own list wins."""
    cuda = device["type"] == "cuda"
    order = list(analysis["phases_order"]) if analysis and analysis.get("phases_order") else list(phase_list(phases))
    step_order = list(analysis.get("step_phases", STEP_PHASES)) if analysis else list(STEP_PHASES)
    window: dict = {"requested_steps": requested_steps, "warmup": warmup, "steps": window_steps, "step_calls": n_steps,
                    "wall_s": wall_s, "images": window_images or None, "status": "ok", "reason": None}
    if analysis is None:
        window.update(status="empty", reason=(
            f"no profiled window: the loop made {n_steps} step() calls, fewer than warmup {warmup} + 1"
            if requested_steps is not None else "the profiler recorded no events"))
    elif requested_steps is not None and window_steps < requested_steps:
        window.update(status="partial", reason=(
            f"the loop ended after {window_steps} of the {requested_steps} profiled steps asked for "
            f"({n_steps} step() calls, warmup {warmup}): the figures cover those {window_steps}"))
    step_ms = analysis["step_ms"] if analysis else []
    window["step_ms"] = summarize(step_ms) if step_ms else None
    window["step_time_source"] = ("ProfilerStep ranges on the host (CPU side of each iteration; with an async "
                                  "GPU the window wall time is the exact figure)") if step_ms else None
    if window_images and wall_s:
        window["img_per_s"] = window_images / wall_s
        window["s_per_kimg"] = wall_s * 1000.0 / window_images
    else:
        window["img_per_s"] = window["s_per_kimg"] = None

    phases: list[dict] = []
    if analysis:
        nsteps = max(1, window_steps or len(step_ms) or 1)
        total_step = sum(step_ms) if step_ms else None
        total_dev = analysis["top"]["total_ms"] if (cuda and analysis["top"]["kind"].startswith("cuda")) else None
        for p in analysis["phases"]:
            share = (p["device_ms"] / total_dev) if (cuda and total_dev and p["device_ms"] is not None) else \
                (p["cpu_ms"] / total_step if (total_step and p["cpu_ms"] is not None) else None)
            phases.append({**p, "cpu_ms_per_step": None if p["cpu_ms"] is None else p["cpu_ms"] / nsteps,
                           "device_ms_per_step": None if p["device_ms"] is None else p["device_ms"] / nsteps,
                           "share": share})
        if total_step:
            inside = sum(p["cpu_ms"] or 0.0 for p in analysis["phases"])
            other_dev = (total_dev - sum(p["device_ms"] or 0 for p in analysis["phases"])) if total_dev else None
            phases.append({"name": "other (outside phases)", "count": None, "cpu_ms": max(0.0, total_step - inside),
                           "cpu_ms_per_step": max(0.0, total_step - inside) / nsteps,
                           "device_ms": other_dev, "device_ms_per_step": None if other_dev is None else other_dev / nsteps,
                           "device_span_ms": None,
                           "share": (other_dev / total_dev) if total_dev else max(0.0, total_step - inside) / total_step})

    nvml = dict(nvml_status or {"available": False, "reason": "not sampled"})
    nvml.setdefault("note", UTIL_NOTE)
    if nvml.get("available") and nvml_samples:
        w0, w1 = window_wall
        nvml["summary"] = summarize_samples(nvml_samples, w0, w1) if (w0 and w1) else summarize_samples(nvml_samples)
        nvml["summary_scope"] = "profiled window" if (w0 and w1) else "whole session"
        nvml["summary_session"] = summarize_samples(nvml_samples)
        t0 = nvml_samples[0]["t"]
        nvml["samples"] = [{**s, "t": s["t"] - t0} for s in nvml_samples]
        nvml["window_s"] = [w0 - t0, w1 - t0] if (w0 and w1) else None
    else:
        nvml["summary"] = None
        nvml["samples"] = []

    notes = [UTIL_NOTE,
             "Phases are the record_function ranges the training step opens, named by the task's schedule (in "
             "order: " + ", ".join(order) + "). For the DCGAN family: data (real batch to the device), G_forward "
             "(the generator making the fake batch), D_forward / D_backward / D_step (D loss forward, its backward, "
             "optimizer step + clipping + zero_grad), D_penalty (gradient penalty forward and double backward, when "
             "due), G_loss / G_backward / G_step (D on the fake batch and the G loss forward, its backward through D "
             "into G, optimizer step), G_ema (EMA update). Backward kernels run on autograd's thread and count in "
             "the backward range that waits for them.",
             "cpu_ms is host time inside a range less the phase ranges nested in it (it includes waiting for the "
             "device when something syncs); "
             "device_ms is the summed duration of the GPU kernels launched while the range was open on the host, from any "
             "thread (by time: autograd launches backward kernels from its own thread)."]
    attr = analysis.get("phase_attribution") if analysis else None
    if attr:
        frac = attr.get("matched_frac")
        why = ("graphs mode: a replayed CUDA graph does not re-enter the host's phase ranges, so each phase's GPU time "
               "is attributed by matching the replayed kernels, in order, to the kernels the eager warm-up iteration "
               f"launched inside its phase ranges ({attr.get('map_kernels')} kernels; "
               + (f"{100 * frac:.1f}% of kernel time matched" if frac is not None else "nothing matched")
               + "; the rest is in 'other'). Host ms per phase is n/a: the host only launches the graph.")
        window["phases_note"] = why
        notes.insert(0, why)
    elif cuda and analysis and not any(p["name"] in step_order for p in analysis["phases"]):
        why = (f"no {'/'.join(step_order) or 'step'} ranges in the window: a step replayed as a CUDA graph (fastgan "
               "mode 'graphs', the default on CUDA) does not re-enter the host ranges, so the per-phase split is "
               "unavailable; profile with --mode compile or eager for it (the kernels, busy % and idle gaps still "
               "describe the graphed step)")
        window["phases_note"] = why
        notes.insert(0, why)
    if analysis and analysis.get("no_device_events"):
        why = ("the profiler recorded no GPU kernels in this CUDA run (CUPTI unavailable or not permitted?): "
               "GPU times are n/a, shares are of host time")
        window["device_note"] = why
        notes.insert(0, why)
    if not cuda:
        notes.append("CPU run: there are no kernels or NVML counters; 'top' lists CPU operators by self time and "
                     "idle gaps are n/a.")
    return {"schema": schema, "title": title, "created": created, "device": device, "versions": versions, "git": git,
            "config": config, "window": window, "phases_order": order, "phases": phases,
            "top": analysis["top"] if analysis else {"kind": None, "total_ms": None, "rows": []},
            "idle_gaps": analysis["idle_gaps"] if analysis else {"available": False, "reason": "no profiled window"},
            "nvml": nvml, "notes": notes, "files": {}}


# ----------------------------------------------------------------------------- charts


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def busy_series(kernels_ms: list[tuple[float, float]], bins: int = 200) -> tuple[list[float], list[float]]:
    """GPU busy % per time bin from kernel (start, duration) ms: the union over streams (two kernels running
    at once count once), so 100 means some kernel was running all through the bin."""
    from fastgan.profile.analyze import merge_intervals

    union = merge_intervals([(s, s + d) for s, d in kernels_ms])
    end = max(b for _, b in union)
    w = end / bins if end > 0 else 1.0
    busy = [0.0] * bins
    for a, b in union:
        i = max(0, int(a // w))
        while i < bins and i * w < b:
            busy[i] += max(0.0, min(b, (i + 1) * w) - max(a, i * w))
            i += 1
    return [(i + 0.5) * w for i in range(bins)], [min(100.0, 100 * x / w) for x in busy]


def plot_timeline(report: dict, analysis: dict | None) -> bytes:
    """Phase ranges over the profiled window (+ GPU kernel busy % on CUDA), and NVML counters over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nv = report["nvml"]
    has_nvml = bool(nv.get("available") and nv.get("samples"))
    fig, axes = plt.subplots(3 if has_nvml else 2, 1, figsize=(10, 7.5 if has_nvml else 5.5), dpi=100)
    ax = axes[0]
    names = list(report.get("phases_order") or PHASES)    # a report written before phases_order: the defaults
    colors = plt.get_cmap("tab10")
    ranges = analysis["ranges"] if analysis else []
    for i, name in enumerate(names):
        for where, dy in (("cpu", 0.0), ("device", 0.4)):
            segs = [(r["start_ms"], r["dur_ms"]) for r in ranges if r["name"] == name and r["where"] == where]
            if segs:
                ax.broken_barh(segs, (i + dy - 0.2, 0.35 if where == "cpu" else 0.2), color=colors(i % 10),
                               alpha=1.0 if where == "cpu" else 0.5)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlabel("ms from the first profiled step (host ranges; lighter: device spans)", fontsize=8)
    ax.set_title("phases over the profiled window", fontsize=9)
    ax.invert_yaxis()

    ax = axes[1]
    kern = analysis["kernel_intervals_ms"] if analysis else []
    if kern:
        xs, ys = busy_series(kern)
        ax.plot(xs, ys, lw=1)
        ax.set_ylabel("kernel busy %", fontsize=8)
        ax.set_xlabel("ms from the first profiled step (from the trace)", fontsize=8)
        ax.set_ylim(0, 105)
        ax.set_title("GPU busy over the window (any kernel running, union over streams)", fontsize=9)
    else:
        steps = report["window"].get("step_ms")
        sm = analysis["step_ms"] if analysis else []
        if sm:
            ax.bar(range(len(sm)), sm, color="steelblue")
            ax.set_xticks(range(len(sm)))
            ax.set_xlabel("profiled iteration", fontsize=8)
            ax.set_ylabel("ms (host)", fontsize=8)
            ax.set_title("iteration time (no GPU: kernel busy % is n/a)", fontsize=9)
        else:
            ax.text(0.5, 0.5, "no step() marks in the window", ha="center", va="center")
        del steps
    if not has_nvml:
        fig.text(0.5, 0.01, "NVML unavailable: " + str(nv.get("reason")), ha="center", fontsize=8, color="firebrick",
                 wrap=True)
    else:
        ax = axes[2]
        ss = nv["samples"]
        t = [s["t"] for s in ss]
        for key, label in (("gpu_util", "NVML utilization % (a kernel was running)"), ("sm_util", "GPM SM util %"),
                           ("sm_occupancy", "GPM SM occupancy %"), ("tensor_util", "GPM tensor util %"),
                           ("dram_bw_util", "GPM DRAM BW util %")):
            ys = [s.get(key) for s in ss]
            if any(y is not None for y in ys):
                ax.plot(t, [float("nan") if y is None else y for y in ys], lw=1, label=label)
        ax.set_ylim(0, 105)
        ax.set_ylabel("%", fontsize=8)
        ax.set_xlabel("s since session start (NVML samples)", fontsize=8)
        ax2 = ax.twinx()
        clk = [s.get("sm_clock_mhz") for s in ss]
        pw = [s.get("power_w") for s in ss]
        if any(c is not None for c in clk):
            ax2.plot(t, [float("nan") if c is None else c for c in clk], color="0.4", ls="--", lw=0.8, label="SM clock MHz")
        if any(p is not None for p in pw):
            ax2.plot(t, [float("nan") if p is None else p for p in pw], color="darkred", ls=":", lw=0.8, label="power W")
        ax2.set_ylabel("MHz / W", fontsize=8)
        if nv.get("window_s"):
            ax.axvspan(*nv["window_s"], color="gold", alpha=0.15, label="profiled window")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="lower right", ncol=2)
        ax.set_title("NVML over the session", fontsize=9)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return _png(fig)


def plot_phases(report: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ph = report["phases"]
    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=100)
    if not ph:
        ax.text(0.5, 0.5, "no phases recorded", ha="center", va="center")
        return _png(fig)
    names = [p["name"] for p in ph]
    y = range(len(ph))
    cpu = [p["cpu_ms_per_step"] or 0.0 for p in ph]     # None: not measured (graphs mode's attributed phases)
    dev = [p["device_ms_per_step"] for p in ph]
    on_gpu = any(d is not None for d in dev)
    if on_gpu:
        ax.barh([i - 0.2 for i in y], cpu, 0.4, label="host ms / step", color="steelblue")
        ax.barh([i + 0.2 for i in y], [d or 0 for d in dev], 0.4, label="GPU kernel ms / step", color="darkorange")
        ax.legend(fontsize=8)
    else:
        ax.barh(list(y), cpu, 0.6, color="steelblue")
    for i, p in enumerate(ph):
        if p.get("share") is not None:
            ax.text(max(cpu[i], dev[i] or 0), i, f"  {100 * p['share']:.1f}%", va="center", fontsize=8)
    ax.set_yticks(list(y))
    ax.set_yticklabels(names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ms per iteration", fontsize=8)
    ax.set_title("time per phase (share: of the GPU kernel time)" if on_gpu else
                 "time per phase (share: of the iterations' host time)", fontsize=9)
    fig.tight_layout()
    return _png(fig)


# ----------------------------------------------------------------------------- HTML


def _f(x, spec=".2f", none="n/a"):
    return none if x is None else format(x, spec)


def _table(headers: list[str], rows: list[list]) -> str:
    h = "".join(f"<th>{html.escape(str(c))}</th>" for c in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;color:#222;
line-height:1.4}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f4f4f4}td:not(:first-child){font-variant-numeric:tabular-nums}.warn{color:#a33}.muted{color:#777;font-size:.85em}
img{max-width:100%;border:1px solid #eee}"""


def render_html(report: dict, images: dict[str, bytes]) -> str:
    d, v, w, nv = report["device"], report["versions"], report["window"], report["nvml"]
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(report['title'])}</title>"
             f"<style>{CSS}</style></head><body>", f"<h1>{e(report['title'])}</h1>"]
    parts.append(f"<p>{e(d['name'])} ({e(d['type'])}"
                 + (f", driver {e(str(d.get('driver')))}" if d.get("driver") else "")
                 + f") · torch {e(v['torch'])} · triton {e(str(v.get('triton')))} · fastgan {e(v.get('fastgan', ''))}"
                 + f" · commit {e((report['git'].get('commit') or 'n/a')[:10])} · {e(report['created'])}</p>")
    if d["type"] != "cuda":
        parts.append("<p class='warn'>CPU run: no NVIDIA GPU in use. NVML is unavailable "
                     f"({e(str(nv.get('reason')))}); GPU busy %, clocks, power and kernel idle gaps are not measured "
                     "(n/a, not zero).</p>")
    if w["status"] != "ok":
        parts.append(f"<p class='warn'>{e(str(w['reason']))}</p>")
    for key in ("phases_note", "device_note"):
        if w.get(key):
            parts.append(f"<p class='warn'>{e(w[key])}</p>")
    sm = w.get("step_ms") or {}
    parts.append("<h2>Window</h2>" + _table(["", "value"], [
        ["profiled iterations", w["steps"]], ["warm-up iterations (not profiled)", w["warmup"]],
        ["window wall time (s, synchronized)", _f(w["wall_s"], ".3f")],
        ["iteration ms (median, p20–p80)",
         f"{_f(sm.get('median'))} ({_f(sm.get('p20'))}–{_f(sm.get('p80'))})" if sm else "n/a"],
        ["img/s (real images shown to D)", _f(w.get("img_per_s"), ".1f")], ["s/kimg", _f(w.get("s_per_kimg"), ".3f")],
    ]))
    if report["config"]:
        parts.append("<h2>Configuration</h2>" + _table(["setting", "value"], [[k, v_] for k, v_ in report["config"].items()]))
    parts.append("<h2>Phases</h2>")
    if "phases" in images:
        parts.append(f"<img alt='per-phase time' src='data:image/png;base64,{base64.b64encode(images['phases']).decode()}'>")
    parts.append(_table(["phase", "calls", "host ms/step", "GPU kernel ms/step", "GPU span ms (total)", "share"], [
        [p["name"], p["count"] if p["count"] is not None else "", _f(p["cpu_ms_per_step"], ".3f"),
         _f(p["device_ms_per_step"], ".3f"), _f(p.get("device_span_ms"), ".3f"),
         _f(None if p["share"] is None else 100 * p["share"], ".1f") + ("%" if p["share"] is not None else "")]
        for p in report["phases"]]))
    parts.append("<h2>Timeline</h2>")
    if "timeline" in images:
        b64 = base64.b64encode(images["timeline"]).decode()
        parts.append(f"<img alt='utilization timeline' src='data:image/png;base64,{b64}'>")
    top = report["top"]
    parts.append(f"<h2>Top {e(str(top['kind']))}</h2>" + _table(["name", "calls", "ms", "share"], [
        [r["name"][:120], r["calls"], _f(r["time_ms"], ".3f"), f"{100 * r['share']:.1f}%"] for r in top["rows"]]))
    g = report["idle_gaps"]
    parts.append("<h2>Idle gaps between kernels</h2>")
    if g.get("available"):
        parts.append(_table(["", "value"], [["window ms", _f(g["window_ms"], ".3f")], ["busy ms", _f(g["busy_ms"], ".3f")],
                                            ["idle fraction", _f(100 * g["idle_frac"], ".1f") + "%"],
                                            ["gaps between kernels (ms, summed)", _f(g["gaps_between_kernels_ms"], ".3f")],
                                            ["number of gaps", g["n_gaps"]], ["largest gap ms", _f(g["largest_gap_ms"], ".3f")],
                                            ["median gap µs", _f(g["median_gap_us"], ".1f")]])
                     + f"<p class='muted'>{e(g.get('how', ''))}</p>")
    else:
        parts.append(f"<p>n/a: {e(str(g.get('reason')))}</p>")
    parts.append("<h2>NVML</h2>")
    if nv.get("available"):
        s = nv.get("summary") or {}
        gpm = nv.get("gpm") or {}
        parts.append(f"<p>{e(str(nv.get('device')))} · GPM: "
                     + ("available" if gpm.get("available") else f"unavailable ({e(str(gpm.get('reason')))})")
                     + f" · summary over the {e(str(nv.get('summary_scope')))}</p>")
        parts.append(_table(["metric", "value"], [
            ["NVML utilization % (mean)", _f(s.get("gpu_util_mean"), ".1f")],
            ["GPM SM util % (mean)", _f(s.get("sm_util_mean"), ".1f")],
            ["GPM SM occupancy % (mean)", _f(s.get("sm_occupancy_mean"), ".1f")],
            ["GPM tensor util % (mean)", _f(s.get("tensor_util_mean"), ".1f")],
            ["GPM DRAM BW util % (mean)", _f(s.get("dram_bw_util_mean"), ".1f")],
            ["SM clock MHz (mean, min–max)", f"{_f(s.get('sm_clock_mhz_mean'), '.0f')} "
             f"({_f(s.get('sm_clock_mhz_min'), '.0f')}–{_f(s.get('sm_clock_mhz_max'), '.0f')})"],
            ["memory used max (GiB)",
             _f(None if s.get("mem_used_max_bytes") is None else s["mem_used_max_bytes"] / 2 ** 30, ".2f")],
            ["power W (mean, max)", f"{_f(s.get('power_w_mean'), '.0f')} ({_f(s.get('power_w_max'), '.0f')})"],
            ["energy J", f"{_f(s.get('energy_j'), '.1f')} over {_f(s.get('duration_s'), '.3f')} s "
             f"({e(str(s.get('energy_source')))})"],
            ["samples", s.get("n_samples")]]))
    else:
        parts.append(f"<p class='warn'>NVML unavailable: {e(str(nv.get('reason')))}. No GPU counters are reported "
                     "(null, not zero).</p>")
    parts.append(f"<p class='muted'>{e(nv.get('note', UTIL_NOTE))}</p>")
    files = report.get("files") or {}
    parts.append("<h2>Files</h2><ul>" + "".join(f"<li>{e(k)}: <code>{e(str(p))}</code></li>" for k, p in files.items())
                 + "</ul><p class='muted'>Open trace.json in https://ui.perfetto.dev or chrome://tracing.</p>")
    parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{e(n)}</li>" for n in report["notes"]) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(report: dict, analysis: dict | None, out_dir: str | Path, trace_path: str | None = None) -> dict[str, str]:
    """Write ``report.json`` and ``report.html`` (charts embedded as base64 PNGs) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": str(out / "report.json"), "html": str(out / "report.html")}
    if trace_path:
        paths["trace"] = str(trace_path)
    report["files"] = dict(paths)
    images = {"phases": plot_phases(report), "timeline": plot_timeline(report, analysis)}
    Path(paths["json"]).write_text(json.dumps(report, indent=1, default=str) + "\n")
    Path(paths["html"]).write_text(render_html(report, images))
    return paths
