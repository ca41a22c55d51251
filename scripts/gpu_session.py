#!/usr/bin/env python
"""Everything a lent GPU should run, in one command that ends inside a time budget.

    bash scripts/gpu_session.sh                     # the default plan below, 540 s in all
    bash scripts/gpu_session.sh bench:400 profile   # chosen stages (STAGE[:SECONDS]), in that order
    bash scripts/gpu_session.sh --dry-run           # on a CPU: every stage at its smallest settings

Stages, in the default plan's order (their priority) with their budgets in seconds:

    setup       30  wheels from .whl/ (if any; scripts/gpu_wheels.sh fetches them), pip install -e .,
                    then a probe of device, driver, versions and missing requirements (env.json)
    tests       75  pytest -m gpu on SHORT_TESTS (the engine's graphs-vs-eager tests, one fused op)
    bench      255  the throughput matrix in ONE process: BENCH_CASES x every BENCH_CELLS mode, cell by
                    cell in BENCH_CELLS order, the JSON rewritten after every row
    kernels     60  every op's micro-benchmark, --quick: CUDA-graph replays, then back-to-back launches
    profile     60  one `fastgan profile` report of PROFILE (graphs mode)
    tests-rest  45  the other pytest -m gpu tests, then the end-to-end tests of E2E_TESTS on CUDA
    engine       -  (not in the default plan) the engine's own variants side by side

Named stages run in the order given, setup first whether named or not. A stage may use its own
budget plus whatever the stages before it left unused; the budgets of the stages after it stay
reserved, so a slow stage is stopped (SIGTERM to its process group, SIGKILL 5 s later) and cannot
eat the rest; a stage left with under 10 s is skipped. Each stage writes its results as it goes:
pytest outcomes one JSON line per test (tests.jsonl, tests-rest.jsonl), the bench JSON after every
row, each kernel script's JSON when it ends; so a stage cut short keeps what it finished.

The whole bench matrix may not fit its stage: each compiled mode compiles per case, and compile-max
autotunes every convolution shape. BENCH_CELLS orders the cells so that a cut leaves the most
useful ones (every case's tutorial, eager-best and fastgan rows, then compile-max where it is the
fastest baseline); `--bench-cells` runs the cells a cut left in a later session (another process:
ratios against the first session's rows are then cross-run).

Everything lands in one folder, <results>/gpu-session-<device>-<time>/ (default results folder:
benches/results; for a dry run bench-results/gpu-session-dry-run, which git ignores), with
session.json (device, driver, versions, commit, and each stage's status ok | failed | timeout |
skipped, seconds and files; a tests stage is "ok" when pytest ran to its end, its outcomes are in
the stage's summary) and session.log (all output). With --pack DIR (default: $OUT when set, as on
the device tool) the folder is also packed into DIR/<folder>.tar.gz, next to copies of session.json
and session.log: three files, rewritten after every stage. A trace.json that would push the archive
past 15 MiB is left out of it (session.json says so). Exit status 0 when every stage is ok, 1
otherwise (the results are there either way).

--dry-run runs the same plan on a CPU with the smallest settings: pip is printed, not run; the
pytest selections run (every gpu test is skipped on a CPU; the end-to-end files are only collected);
gpu_bench.py --check validates the GPU bench arguments and a tiny CPU matrix runs through the same
cell order; each kernel script must parse its GPU arguments and stop at "needs a CUDA device"; the
profile runs a debug-sized model on the CPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCHEMA = "fastgan.gpu-session/1"
BUDGET_S = 540            # the whole command: nine minutes, inside the device tool's ten
RESERVE_S = 15            # kept back from the stages for the SIGKILL grace, session.json and packing
GRACE_S = 5
MIN_STAGE_S = 10          # a stage given less than this is skipped
PACK_LIMIT = 15 * 2**20   # the device tool returns files of at most 16 MiB

PLAN = [("setup", 30), ("tests", 75), ("bench", 255), ("kernels", 60), ("profile", 60), ("tests-rest", 45)]
EXTRA_STAGES = {"engine": 300}

SHORT_TESTS = ["tests/test_engine.py", "tests/test_op_batch_norm_act.py"]
E2E_TESTS = ["tests/test_variants_triton.py", "tests/test_op_penalty_paths.py", "tests/test_fusion.py"]
BENCH_CASES = "dcgan:64:256,dcgan:32:64,wgan-gp:64:64"
# Cheap modes first, then compile-max on the case where it is the fastest baseline, then the rest;
# compile-max autotunes every convolution shape (minutes per case), so its other cases come last.
BENCH_CELLS = ("eager-tutorial,eager-best,fastgan,compile-max@dcgan:64:256,compile-ro,fastgan:fuse-trainer,"
               "compile-max")
BENCH_TIMING = ["--steps", "20", "--repeats", "5", "--warmup", "60"]
ENGINE_MODES = ("eager-tutorial,fastgan:compile,fastgan:compile-ro,fastgan:graphs,fastgan:graphs-max,"
                "fastgan:graphs-eager,fastgan:graphs-eagerpen")
KERNEL_OPS = ("batch_norm_act", "norm_misc", "losses")
PROFILE = {"variant": "dcgan", "resolution": "64", "batch": "256", "steps": "10", "warmup": "5"}
DRY_PROFILE = {"variant": "dcgan", "resolution": "16", "batch": "4", "steps": "1", "warmup": "1"}
WHEEL_DIR = ".whl"
WHEEL_SITE = "/tmp/fastgan-wheels"


# -- commands ------------------------------------------------------------------------------------

@dataclasses.dataclass
class Cmd:
    argv: list[str]
    ok_rc: tuple[int, ...] = (0,)
    expect: str | None = None        # text the output must contain (dry runs of GPU-only scripts)
    env: dict | None = None          # added to the session's environment
    run: bool = True                 # False: printed, not run (pip in a dry run)


@dataclasses.dataclass
class Ctx:
    work: Path
    dry: bool
    py: str
    xdist: bool = False
    wheels: list[str] = dataclasses.field(default_factory=list)
    bench_cells: str = BENCH_CELLS


def _pytest(ctx: Ctx, name: str, args: list[str]) -> Cmd:
    """pytest with the JSONL plugin writing <work>/<name>.jsonl as tests finish; exit 1 (failed tests) is a
    finished run."""
    extra = ["-n", "8"] if ctx.xdist and not ctx.dry else []
    env = {"FASTGAN_PYTEST_JSONL": str(ctx.work / f"{name}.jsonl"), "PYTHONPATH": str(REPO / "scripts")}
    return Cmd([ctx.py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "pytest_jsonl", *extra, *args],
               ok_rc=(0, 1), env=env)


def _bench_gpu_args(ctx: Ctx) -> list[str]:
    return ["--out", str(ctx.work), "--tag", "matrix", "--cases", BENCH_CASES, "--cells", ctx.bench_cells,
            *BENCH_TIMING]


def stage_commands(stage: str, ctx: Ctx) -> list[Cmd]:
    py, w = ctx.py, ctx.work
    if stage == "setup":
        cmds = []
        if ctx.wheels:
            cmds.append(Cmd([py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                             "--no-cache-dir", "--upgrade", "--target", WHEEL_SITE, *ctx.wheels], run=not ctx.dry))
        cmds.append(Cmd([py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", "."],
                        run=not ctx.dry))
        cmds.append(Cmd([py, str(REPO / "scripts" / "gpu_session.py"), "--probe", str(w / "env.json")]))
        return cmds
    if stage == "tests":
        return [_pytest(ctx, "tests", ["-m", "gpu", *SHORT_TESTS])]
    if stage == "tests-rest":
        ignore = [f"--ignore={t}" for t in SHORT_TESTS]
        e2e = ["--collect-only"] if ctx.dry else []          # on a CPU these run the interpreter: minutes
        return [_pytest(ctx, "tests-rest", ["-m", "gpu", "tests", *ignore]),
                _pytest(ctx, "tests-rest", [*e2e, "-m", "not gpu", *E2E_TESTS])]
    if stage == "bench":
        gb = [py, str(REPO / "scripts" / "gpu_bench.py")]
        if not ctx.dry:
            return [Cmd(gb + _bench_gpu_args(ctx))]
        return [Cmd(gb + ["--check"] + _bench_gpu_args(ctx)),
                Cmd(gb + ["--dry-run", "--out", str(w), "--tag", "matrix", "--cases", "dcgan:16:4", "--cells",
                          "eager-tutorial,fastgan", "--steps", "1", "--repeats", "1", "--warmup", "0"])]
    if stage == "engine":
        gb = [py, str(REPO / "scripts" / "gpu_bench.py")]
        args = ["--out", str(w), "--tag", "engine", "--cases", BENCH_CASES, "--modes", ENGINE_MODES, *BENCH_TIMING]
        return [Cmd(gb + (["--check"] if ctx.dry else []) + args)]
    if stage == "kernels":
        cmds = []
        for graph in (True, False):
            for op in KERNEL_OPS:
                out = w / f"kernels-{op}{'-graph' if graph else ''}.json"
                argv = [py, str(REPO / "benches" / f"gpu_{op}.py"), "--quick", "--out", str(out)]
                argv += ["--cudagraph"] if graph else []
                if ctx.dry:      # the script parses its GPU arguments, imports its ops, stops for want of CUDA;
                    #              the launch runs are the same scripts without --cudagraph: printed only
                    cmds.append(Cmd(argv, ok_rc=(2,), expect="needs a CUDA device", run=graph))
                else:
                    cmds.append(Cmd(argv))
        return cmds
    if stage == "profile":
        p = DRY_PROFILE if ctx.dry else PROFILE
        out = w / f"profile-{p['variant']}-{p['resolution']}-b{p['batch']}"
        flags = [x for k, v in p.items() for x in (f"--{k}", v)]
        argv = [py, "-m", "fastgan.cli", "profile", *flags, "--out", str(out)]
        return [Cmd(argv + (["--device", "cpu", "--debug"] if ctx.dry else []))]
    raise ValueError(f"unknown stage {stage!r}")


# -- running ------------------------------------------------------------------------------------

class Log:
    """Writes to stdout and to session.log."""

    def __init__(self, path: Path):
        self.f = open(path, "ab")
        self.lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self.lock:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
            self.f.write(data)
            self.f.flush()

    def say(self, text: str) -> None:
        self.write((text + "\n").encode())


def run_cmd(cmd: Cmd, limit: float, env: dict, log: Log) -> dict:
    """Run one command in its own process group for at most ``limit`` seconds; its output goes to ``log``.
    Returns {argv, status ok|failed|timeout|printed, rc, seconds}."""
    shown = " ".join(a if re.fullmatch(r"[\w@%+=:,./-]+", a) else repr(a) for a in cmd.argv)
    rec = {"argv": cmd.argv, "status": None, "rc": None, "seconds": 0.0}
    if not cmd.run:
        log.say(f"$ {shown}    (dry run: not run)")
        rec["status"] = "printed"
        return rec
    log.say(f"$ {shown}")
    e = dict(env)
    for k, v in (cmd.env or {}).items():
        e[k] = v + os.pathsep + e[k] if k == "PYTHONPATH" and e.get(k) else v
    t0 = time.time()
    seen = bytearray()
    proc = subprocess.Popen(cmd.argv, cwd=REPO, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)

    def pump():
        for line in iter(proc.stdout.readline, b""):
            log.write(line)
            if cmd.expect and len(seen) < 1 << 20:
                seen.extend(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=max(limit, 0.1))
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc)
        rc = proc.returncode
    except BaseException:
        _kill_group(proc)
        raise
    reader.join(timeout=5)
    rec["rc"], rec["seconds"] = rc, round(time.time() - t0, 1)
    if timed_out:
        rec["status"] = "timeout"
        log.say(f"--- stopped at its {limit:.0f} s limit")
    elif rc in cmd.ok_rc and (cmd.expect is None or cmd.expect.encode() in seen):
        rec["status"] = "ok"
    else:
        rec["status"] = "failed"
        log.say(f"--- failed: exit {rc}" + (f" (expected exit {cmd.ok_rc} and {cmd.expect!r})" if cmd.expect else ""))
    return rec


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the command's process group, then SIGKILL whatever of it is left GRACE_S later."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)      # also the group's other processes (compile workers)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


# -- summaries ----------------------------------------------------------------------------------

def _jsonl_summary(path: Path) -> dict:
    """Outcome counts of a pytest_jsonl file; ``unreported``: collected tests with no outcome (a run cut short)."""
    counts = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
    collected, bad, seen = 0, [], set()
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if r.get("event") == "collected":
                collected += r["count"]
                continue
            counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
            seen.add(r["nodeid"])
            if r["outcome"] in ("failed", "error"):
                bad.append(r["nodeid"])
    return {"collected": collected, **counts, "unreported": max(collected - len(seen), 0),
            "failed_tests": bad[:50], "file": path.name}


def _bench_summary(paths: list[Path]) -> dict:
    out = {}
    for p in paths:
        try:
            doc = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if doc.get("schema") != "fastgan.bench/1":
            continue
        st = [r.get("status") for r in doc.get("rows", [])]
        cells = doc.get("settings", {}).get("cells")
        out[p.name] = {"partial": doc.get("partial"), "rows": len(st), "ok": st.count("ok"),
                       "failed": st.count("failed"), "skipped": st.count("skipped"),
                       "cells_planned": len(cells) if cells else None}
    return out


def summarize(stage: str, work: Path, files: list[str]) -> dict:
    if stage in ("tests", "tests-rest"):
        return _jsonl_summary(work / f"{stage}.jsonl")
    if stage in ("bench", "engine"):
        return _bench_summary([work / f for f in files if f.endswith(".json")])
    if stage == "kernels":
        out = {}
        for f in files:
            if f.startswith("kernels-") and f.endswith(".json"):
                try:
                    out[f] = {"rows": len(json.loads((work / f).read_text()).get("rows", []))}
                except (OSError, ValueError):
                    out[f] = {"rows": None}
        return out
    if stage == "profile":
        return {"reports": [f for f in files if f.endswith("report.json")]}
    if stage == "setup":
        try:
            env = json.loads((work / "env.json").read_text())
        except (OSError, ValueError):
            return {"probe": "missing"}
        return {"cuda": env.get("cuda_available"), "fastgan_import": env.get("fastgan_import"),
                "requirements": env.get("requirements")}
    return {}


# -- session ------------------------------------------------------------------------------------

def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def _run_text(argv: list[str], timeout: float = 10) -> str | None:
    try:
        r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def git_info() -> dict:
    status = _run_text(["git", "status", "--porcelain", "--untracked-files=all"])
    changed = status.splitlines() if status else []
    return {"commit": _run_text(["git", "rev-parse", "HEAD"]), "dirty": bool(changed) if status is not None else None,
            "changed": changed[:100]}


def gpu_name() -> str | None:
    out = _run_text(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"])
    return out.splitlines()[0].strip() if out else None


def parse_plan(items: list[str]) -> list[tuple[str, int]]:
    """``STAGE[:SECONDS]`` items -> [(stage, budget)]; a stage without seconds gets its default budget, and
    setup comes first whether named or not (a fresh machine has nothing installed)."""
    if not items:
        return list(PLAN)
    known = dict(PLAN) | EXTRA_STAGES
    plan = []
    for it in items:
        name, _, secs = it.partition(":")
        if name not in known:
            raise ValueError(f"unknown stage {name!r}; choose from {', '.join(known)}")
        plan.append((name, int(secs) if secs else known[name]))
    if "setup" not in [s for s, _ in plan]:
        plan.insert(0, ("setup", known["setup"]))
    return plan


def list_files(work: Path) -> list[str]:
    return sorted(str(p.relative_to(work)) for p in work.rglob("*") if p.is_file())


def pack(work: Path, dest: Path) -> dict:
    """<dest>/<work.name>.tar.gz of the whole folder (trace.json files left out if it would pass PACK_LIMIT)
    and copies of session.json and session.log beside it."""
    dest.mkdir(parents=True, exist_ok=True)
    tgz = dest / f"{work.name}.tar.gz"
    dropped: list[str] = []
    for drop in (lambda p: False, lambda p: p.name == "trace.json"):
        dropped = [f for f in list_files(work) if drop(work / f)]
        tmp = tgz.with_name(tgz.name + ".tmp")
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(work, arcname=work.name, filter=lambda ti: None if any(
                ti.name == f"{work.name}/{d}" for d in dropped) else ti)
        tmp.replace(tgz)
        if tgz.stat().st_size <= PACK_LIMIT:
            break
    for name in ("session.json", "session.log"):
        if (work / name).exists():
            shutil.copyfile(work / name, dest / name)
    return {"tar": tgz.name, "bytes": tgz.stat().st_size, "dropped": dropped}


def write_session(work: Path, doc: dict) -> None:
    tmp = work / "session.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    tmp.replace(work / "session.json")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stages", nargs="*", help="STAGE[:SECONDS] in run order [the default plan]")
    ap.add_argument("--dry-run", action="store_true", help="CPU, smallest settings, pip printed not run")
    ap.add_argument("--budget", type=float, default=BUDGET_S, help=f"seconds for the whole command [{BUDGET_S}]")
    ap.add_argument("--results", help="folder in which the session folder is made "
                                      "[benches/results; dry run: bench-results/gpu-session-dry-run]")
    ap.add_argument("--pack", default=os.environ.get("OUT"),
                    help="also write <PACK>/<session>.tar.gz, session.json, session.log [$OUT if set]")
    ap.add_argument("--wheels", default=str(REPO / WHEEL_DIR), help=f"folder of wheels to install first [{WHEEL_DIR}]")
    ap.add_argument("--bench-cells", default=BENCH_CELLS,
                    help="the bench stage's run order (scripts/gpu_bench.py --cells) [BENCH_CELLS]")
    ap.add_argument("--probe", metavar="PATH", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.probe:
        return probe(Path(a.probe))
    try:
        plan = parse_plan(a.stages)
    except ValueError as e:
        ap.error(str(e))
    if sum(b for _, b in plan) > a.budget - RESERVE_S:
        ap.error(f"the stages' budgets add up to {sum(b for _, b in plan)} s, more than --budget {a.budget:.0f} "
                 f"less {RESERVE_S} s kept for packing")
    return run_session(plan, a)


def run_session(plan: list[tuple[str, int]], a) -> int:
    t0 = time.time()
    deadline = t0 + a.budget - RESERVE_S
    dev = "cpu" if a.dry_run else (gpu_name() or "no-gpu")
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    results = Path(a.results or REPO / ("bench-results/gpu-session-dry-run" if a.dry_run else "benches/results"))
    work = results.resolve() / f"gpu-session-{_slug(dev)}-{stamp}{'-dry-run' if a.dry_run else ''}"
    work.mkdir(parents=True, exist_ok=False)
    log = Log(work / "session.log")
    wheels = sorted(str(p) for p in Path(a.wheels).glob("*.whl")) if Path(a.wheels).is_dir() else []
    ctx = Ctx(work=work, dry=a.dry_run, py=sys.executable, wheels=wheels, bench_cells=a.bench_cells)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    doc = {"schema": SCHEMA, "name": work.name, "dry_run": a.dry_run,
           "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "finished": None,
           "wall_s": None, "budget_s": a.budget, "reserve_s": RESERVE_S, "command": sys.argv,
           "device": {"name": dev}, "versions": {}, "requirements": None, "git": git_info(),
           "wheels": [Path(w).name for w in wheels],
           "plan": [{"stage": s, "budget_s": b} for s, b in plan], "stages": [], "files": [], "packed": None}
    state: dict = {"current": None, "t": t0}

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    prev_term = signal.signal(signal.SIGTERM, on_term)
    log.say(f"=== gpu session {work.name}: {len(plan)} stages, budget {a.budget:.0f} s")
    try:
        for i, (stage, budget) in enumerate(plan):
            later = sum(b for _, b in plan[i + 1:])
            limit = deadline - time.time() - later
            rec = {"name": stage, "status": None, "budget_s": budget, "limit_s": round(limit, 1), "seconds": 0.0,
                   "commands": [], "files": [], "summary": {}}
            doc["stages"].append(rec)
            state["current"], state["t"] = rec, time.time()
            before = set(list_files(work))
            if limit < MIN_STAGE_S:
                rec["status"] = "skipped"
                rec["reason"] = f"{limit:.0f} s left for it"
                log.say(f"=== stage {stage}: skipped ({limit:.0f} s left)")
            elif stage != "setup" and not a.dry_run and doc.get("cuda_available") is False:
                rec["status"] = "skipped"
                rec["reason"] = "no CUDA device (setup's probe)"
                log.say(f"=== stage {stage}: skipped (no CUDA device)")
            else:
                log.say(f"=== stage {stage} (limit {limit:.0f} s) {_dt.datetime.now(_dt.timezone.utc):%H:%M:%S}")
                run_stage(stage, rec, ctx, env, limit, log)
                log.say(f"=== stage {stage}: {rec['status']} in {rec['seconds']:.0f} s")
            rec["files"] = sorted(set(list_files(work)) - before - {"session.log", "session.json", "session.json.tmp"})
            rec["summary"] = summarize(stage, work, rec["files"])
            if stage == "setup":
                absorb_probe(doc, work, ctx)
            state["current"] = None
            checkpoint(doc, work, a, t0, log)
    except KeyboardInterrupt as e:
        rec = state["current"]
        if rec is not None and rec["status"] is None:
            rec.update(status="timeout", reason=f"session interrupted ({e})",
                       seconds=round(time.time() - state["t"], 1))
            rec["files"] = sorted(set(list_files(work)) - {"session.log", "session.json", "session.json.tmp"}
                                  - set(f for s in doc["stages"][:-1] for f in s["files"]))
            rec["summary"] = summarize(rec["name"], work, rec["files"])
        log.say(f"=== interrupted: {e}")
    finally:
        signal.signal(signal.SIGTERM, prev_term)
    doc["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    checkpoint(doc, work, a, t0, log)
    width = max(len(s["name"]) for s in doc["stages"]) if doc["stages"] else 5
    for s in doc["stages"]:
        log.say(f"  {s['name']:<{width}}  {s['status']:<8} {s['seconds']:>5.0f} s  {json.dumps(s['summary'])[:150]}")
    log.say(f"=== {work}" + (f" packed into {a.pack}/{doc['packed']['tar']}" if doc.get("packed") else ""))
    return 0 if all(s["status"] == "ok" for s in doc["stages"]) else 1


def run_stage(stage: str, rec: dict, ctx: Ctx, env: dict, limit: float, log: Log) -> None:
    t0 = time.time()
    end = t0 + limit
    statuses = []
    for cmd in stage_commands(stage, ctx):
        left = end - time.time()
        if left < 1:
            statuses.append("timeout")
            break
        r = run_cmd(cmd, left, env, log)
        rec["commands"].append(r)
        statuses.append(r["status"])
        if r["status"] == "timeout":
            break
        if stage == "setup" and r["status"] == "ok" and "--target" in cmd.argv:
            env["PYTHONPATH"] = WHEEL_SITE + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    rec["seconds"] = round(time.time() - t0, 1)
    rec["status"] = ("timeout" if "timeout" in statuses else "failed" if "failed" in statuses else "ok")


def absorb_probe(doc: dict, work: Path, ctx: Ctx) -> None:
    try:
        p = json.loads((work / "env.json").read_text())
    except (OSError, ValueError):
        return
    doc["device"] = p.get("device") or doc["device"]
    doc["versions"] = p.get("versions") or {}
    doc["requirements"] = p.get("requirements")
    doc["fastgan_import"] = p.get("fastgan_import")
    doc["cuda_available"] = p.get("cuda_available")
    ctx.xdist = bool(p.get("xdist"))


def checkpoint(doc: dict, work: Path, a, t0: float, log: Log) -> None:
    """session.json now, and the pack folder's three files when there is one."""
    doc["wall_s"] = round(time.time() - t0, 1)
    doc["files"] = [f for f in list_files(work) if f != "session.json.tmp"]
    write_session(work, doc)
    if a.pack:
        try:
            doc["packed"] = pack(work, Path(a.pack))
            write_session(work, doc)
            shutil.copyfile(work / "session.json", Path(a.pack) / "session.json")
        except OSError as e:
            log.say(f"--- packing into {a.pack} failed: {e}")


# -- probe (runs in its own process, after the install) -------------------------------------------

def requirements_status() -> dict:
    """The project's requirements (pyproject.toml) missing here or installed at a version outside their range."""
    try:
        import tomllib
    except ImportError:                                   # Python 3.10
        return {"missing": None, "mismatched": None, "note": "tomllib unavailable"}
    from importlib import metadata

    try:
        from packaging.requirements import Requirement
    except ImportError:
        from pip._vendor.packaging.requirements import Requirement
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"].get("dependencies", [])
    missing, mismatched = [], []
    for text in deps:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            v = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            missing.append(str(req))
            continue
        if req.specifier and not req.specifier.contains(v, prereleases=True):
            mismatched.append(f"{req} (installed {v})")
    return {"missing": missing, "mismatched": mismatched}


def probe(path: Path) -> int:
    import importlib.util
    import platform

    info: dict = {"versions": {"python": platform.python_version()}, "device": {}, "cuda_available": False}
    try:
        import torch

        info["versions"].update(torch=torch.__version__, cuda=torch.version.cuda,
                                cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            driver = _run_text(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
            info["device"] = {"name": props.name, "count": torch.cuda.device_count(),
                              "capability": f"{props.major}.{props.minor}", "memory_bytes": props.total_memory,
                              "multiprocessors": props.multi_processor_count,
                              "driver": driver.splitlines()[0].strip() if driver else None}
            info["cuda_available"] = True
        else:
            info["device"] = {"name": "cpu", "cpu": platform.processor() or platform.machine(), "count": 0}
    except Exception as e:  # noqa: BLE001 - a probe reports what it could not read
        info["torch_error"] = f"{type(e).__name__}: {e}"
    try:
        import triton

        info["versions"]["triton"] = triton.__version__
    except Exception as e:  # noqa: BLE001
        info["versions"]["triton"] = None
        info["triton_error"] = f"{type(e).__name__}: {e}"
    try:
        import fastgan

        info["fastgan_import"] = "ok"
        info["fastgan_path"] = str(Path(fastgan.__file__).resolve().parent)
    except Exception as e:  # noqa: BLE001
        info["fastgan_import"] = f"{type(e).__name__}: {str(e)[:300]}"
    try:
        info["requirements"] = requirements_status()
    except Exception as e:  # noqa: BLE001
        info["requirements"] = {"error": f"{type(e).__name__}: {e}"}
    info["xdist"] = importlib.util.find_spec("xdist") is not None
    path.write_text(json.dumps(info, indent=1) + "\n")
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
