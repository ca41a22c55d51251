"""The one-command GPU session (scripts/gpu_session.sh) and the README's generated benchmark tables.

The dry run goes through every stage of the default plan on the CPU with the smallest settings, so a
renamed test file, a bench mode the harness no longer knows, a kernel script that stops parsing its
GPU arguments or a profile CLI change fails here rather than on a lent GPU.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"
FILE_NAME = re.compile(r"[A-Za-z0-9._-]+")      # names the device tool returns


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_script_{name}", SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod          # dataclasses look their module up while the class is made
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def gs():
    return _load("gpu_session")


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    """One dry run of the default plan through the shell entry point: (completed process, session.json,
    session folder, pack folder)."""
    tmp = tmp_path_factory.mktemp("gpu-session")
    wheels = tmp / "wheels"
    wheels.mkdir()
    (wheels / "example_pkg-1.0-py3-none-any.whl").write_bytes(b"")
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("OUT", None)
    proc = subprocess.run(["bash", str(SCRIPTS / "gpu_session.sh"), "--dry-run", "--results", str(tmp / "results"),
                           "--pack", str(tmp / "out"), "--wheels", str(wheels)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    session = json.loads((tmp / "out" / "session.json").read_text())
    return proc, session, tmp / "results" / session["name"], tmp / "out"


def test_dry_run_goes_through_every_stage_of_the_default_plan(dry, gs):
    proc, session, work, _ = dry
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert session["schema"] == "fastgan.gpu-session/1" and session["dry_run"] is True
    assert [s["name"] for s in session["stages"]] == [s for s, _ in gs.PLAN]
    bad = {s["name"]: (s["status"], s["commands"]) for s in session["stages"] if s["status"] != "ok"}
    assert not bad, bad
    for s in session["stages"]:
        assert {"status", "seconds", "limit_s", "budget_s", "commands", "files", "summary"} <= set(s)
    assert set(session["versions"]) >= {"python", "torch", "triton"} and session["versions"]["torch"]
    assert session["device"]["name"] == "cpu"
    assert "commit" in session["git"] and "dirty" in session["git"]
    assert session["fastgan_import"] == "ok"
    assert session["requirements"]["missing"] == [] or isinstance(session["requirements"]["missing"], list)
    assert session["finished"] and session["wall_s"] is not None


def test_default_plan_fits_the_nine_minutes(gs):
    assert sum(b for _, b in gs.PLAN) + gs.RESERVE_S <= gs.BUDGET_S <= 540
    assert [s for s, _ in gs.PLAN][:4] == ["setup", "tests", "bench", "kernels"]   # the priority order


def test_dry_run_setup_prints_pip_and_lists_the_wheels(dry):
    _, session, work, _ = dry
    setup = session["stages"][0]
    printed = [c["argv"] for c in setup["commands"] if c["status"] == "printed"]
    assert any("--target" in a and a[-1].endswith("example_pkg-1.0-py3-none-any.whl") for a in printed)
    assert any(a[-3:] == ["--no-build-isolation", "-e", "."] for a in printed)
    assert session["wheels"] == ["example_pkg-1.0-py3-none-any.whl"]
    assert json.loads((work / "env.json").read_text())["cuda_available"] is False


def test_dry_run_writes_each_stage_results(dry, gs):
    _, session, work, _ = dry
    stages = {s["name"]: s for s in session["stages"]}
    for name in ("tests", "tests-rest"):
        lines = [json.loads(x) for x in (work / f"{name}.jsonl").read_text().splitlines()]
        assert lines[0]["event"] == "collected" and lines[0]["count"] > 0
        assert all(x["outcome"] == "skipped" for x in lines if x["event"] == "test")   # gpu tests on a CPU
        assert stages[name]["summary"]["skipped"] > 0 and stages[name]["summary"]["failed"] == 0
    bench = [f for f in stages["bench"]["files"] if f.endswith("-matrix.json")]
    assert len(bench) == 1
    doc = json.loads((work / bench[0]).read_text())
    assert doc["schema"] == "fastgan.bench/1" and doc["partial"] is False
    assert [r["mode"] for r in doc["rows"]] == ["eager-tutorial", "fastgan"]    # one run_bench per cell
    assert doc["settings"]["cells"] == ["eager-tutorial@dcgan:16:4", "fastgan@dcgan:16:4"]
    fg = doc["rows"][1]
    assert fg["status"] == "ok" and fg["vs_tutorial"] is not None         # ratios across the cells' runs
    assert fg["matmul_tflops"] is not None                                # the ceiling measured once, reused
    assert stages["bench"]["summary"][bench[0]]["partial"] is False
    assert any(f.endswith("report.json") for f in stages["profile"]["files"])
    assert {"session.json", "session.log", "env.json"} <= set(session["files"])


def test_dry_run_packs_three_returnable_files(dry):
    _, session, work, out = dry
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["session.json", "session.log", session["packed"]["tar"]])
    assert all(FILE_NAME.fullmatch(n) for n in names)
    with tarfile.open(out / session["packed"]["tar"]) as tar:
        members = tar.getnames()
    assert f"{work.name}/session.json" in members
    assert any(m.endswith("-matrix.json") for m in members)
    assert session["packed"]["bytes"] <= 15 * 2**20


def test_gpu_plan_runs_the_matrix_in_one_bench_process(gs, tmp_path):
    ctx = gs.Ctx(work=tmp_path, dry=False, py="python3", xdist=True)
    (bench,) = gs.stage_commands("bench", ctx)
    argv = bench.argv
    cells = argv[argv.index("--cells") + 1]
    modes = {c.split("@")[0] for c in cells.split(",")}
    assert modes == {"eager-tutorial", "eager-best", "compile-max", "compile-ro", "fastgan", "fastgan:fuse-trainer"}
    assert argv[argv.index("--cases") + 1] == "dcgan:64:256,dcgan:32:64,wgan-gp:64:64"
    tests = gs.stage_commands("tests", ctx)[0].argv
    assert "-n" in tests and all(t in tests for t in gs.SHORT_TESTS)
    for path in gs.SHORT_TESTS + gs.E2E_TESTS:
        assert (REPO / path).is_file(), f"{path} is gone: update scripts/gpu_session.py"
    # every op's micro-benchmark script is in the kernels stage
    ops = {p.stem.removeprefix("gpu_") for p in (REPO / "benches").glob("gpu_*.py")}
    assert ops == set(gs.KERNEL_OPS)
    kernels = [c.argv for c in gs.stage_commands("kernels", ctx)]
    assert all("--quick" in a for a in kernels) and len(kernels) == 2 * len(gs.KERNEL_OPS)


def test_a_stage_past_its_limit_is_stopped_and_the_next_still_runs(gs, tmp_path, monkeypatch):
    pid_file = tmp_path / "pid"
    slow = gs.Cmd(["bash", "-c", f"sleep 120 & echo $! > {pid_file}; wait"])
    quick = gs.Cmd([sys.executable, "-c", "print('done')"])
    monkeypatch.setattr(gs, "stage_commands", lambda stage, ctx: [slow] if stage == "tests" else [quick])
    monkeypatch.setattr(gs, "MIN_STAGE_S", 0.5)
    # 25 s for the stages: setup gets 2, tests its 3 plus what setup left, profile keeps its 20
    rc = gs.main(["setup:1", "tests:3", "profile:20", "--budget", str(25 + gs.RESERVE_S),
                  "--results", str(tmp_path / "r"), "--pack", "",
                  "--wheels", str(tmp_path / "none")])
    (work,) = (tmp_path / "r").iterdir()
    session = json.loads((work / "session.json").read_text())
    status = {s["name"]: s["status"] for s in session["stages"]}
    assert status == {"setup": "ok", "tests": "timeout", "profile": "ok"} and rc == 1
    pid = int(pid_file.read_text())
    state = Path(f"/proc/{pid}/status")
    assert not state.exists() or "\nState:\tZ" in state.read_text()   # the whole process group was killed


def test_plan_arguments(gs):
    assert gs.parse_plan(["bench:100", "profile"]) == [("setup", 30), ("bench", 100), ("profile", 60)]
    with pytest.raises(ValueError, match="unknown stage"):
        gs.parse_plan(["benchmark"])


def test_bench_cells_run_each_cell_once_in_the_order_given():
    gb = _load("gpu_bench")
    cases = [gb.Case("dcgan", 64, 256), gb.Case("dcgan", 32, 64)]
    plan = gb.parse_cells("eager-tutorial,compile-max@dcgan:64:256,fastgan,compile-max", cases)
    assert [(m, [c.resolution for c in cs]) for m, cs in plan] == [
        ("eager-tutorial", [64, 32]), ("compile-max", [64]), ("fastgan", [64, 32]), ("compile-max", [32])]
    with pytest.raises(ValueError):
        gb.parse_cells("fastgan@dcgan:64", cases)


def test_readme_benchmark_tables_are_rendered_from_the_committed_json():
    rr = _load("render_results")
    text = (REPO / "README.md").read_text()
    blocks = rr.BLOCK.findall(text)
    assert blocks, "README.md has no generated benchmark blocks"
    for _, args in blocks:
        assert all((REPO / p).is_file() for p in args.split()), args
    assert rr.render(text) == text, "README benchmark tables are stale: run python scripts/render_results.py"
