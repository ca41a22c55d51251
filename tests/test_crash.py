"""Crash safety of `fastgan train`: SIGKILL at random moments never loses more than the steps since the last
checkpoint nor leaves an unloadable latest one, and the resumed run ends where an uninterrupted one does;
SIGTERM / SIGINT finish the step, checkpoint and exit 143 / 130.

The killed runs are real `fastgan train` processes: children forked from a launcher that imported torch and
fastgan once, each running ``fastgan.cli.main(["train", ...])`` (a fresh ``python -m fastgan`` spends ~3 s of a
busy 2-core CPU importing, too slow for 20+ legs). The signal tests start plain ``python -m fastgan.cli``.
"""
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from fastgan.cli import main
from fastgan.train.checkpoint import (MANIFEST, PAUSE_ENV, STATE, WEIGHTS, latest_checkpoint, list_checkpoints,
                                      verify_checkpoint)

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = r"""
import json, os, signal, sys, traceback
import torch
torch.set_num_threads(1)
import torch._dynamo, torch.optim                        # what building a Trainer imports, once
import fastgan.cli, fastgan.data, fastgan.train.loop, fastgan.variants, fastgan.models, fastgan.tasks
import fastgan.train.report, safetensors.torch, PIL.Image
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "start":
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            rc = 99
            try:
                fd = os.open(cmd["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                sys.stdout = open(1, "w", buffering=1, closefd=False)
                sys.stderr = open(2, "w", buffering=1, closefd=False)
                sys.stdin = open(os.devnull)
                os.environ.update(cmd["env"])
                rc = fastgan.cli.main(cmd["argv"])
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(rc)
        print(json.dumps({"pid": pid}), flush=True)
    elif cmd["op"] == "wait":
        _, status = os.waitpid(cmd["pid"], 0)
        print(json.dumps({"status": os.waitstatus_to_exitcode(status)}), flush=True)
"""
WAIT_LIMIT = 300     # seconds a launcher reply or a child may take before the test gives up (a hang, not a timing)


class Launcher:
    def __init__(self):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "FASTGAN_PROGRESS": "0", "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-c", LAUNCHER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env, cwd=ROOT)
        assert self._reply() == {"ready": True}

    def _reply(self) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], WAIT_LIMIT)
        assert ready, "the launcher did not answer"
        line = self.proc.stdout.readline()
        assert line, f"the launcher exited ({self.proc.wait()})"
        return json.loads(line)

    def _ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def start(self, argv: list[str], log: Path, env: dict | None = None) -> int:
        return self._ask(op="start", argv=argv, log=str(log), env=env or {})["pid"]

    def wait(self, pid: int) -> int:
        return self._ask(op="wait", pid=pid)["status"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=WAIT_LIMIT)


def _wait_for(pred, what: str, limit: float = WAIT_LIMIT) -> None:
    end = time.monotonic() + limit
    while not pred():
        assert time.monotonic() < end, f"waited {limit}s for {what}"
        time.sleep(0.005)


def _writing(run: Path) -> bool:
    root = run / "checkpoints"
    return root.is_dir() and any(p.name.startswith(".tmp-") for p in root.iterdir())


def _interrupted_write(run: Path) -> list[str]:
    """What a kill inside a checkpoint write or deletion leaves: a temporary or half-deleted folder, a step folder
    without a whole manifest, a manifest temporary."""
    root = run / "checkpoints"
    out = [p.name for p in root.iterdir() if p.name.startswith(".")]
    for _, p in list_checkpoints(run):
        if verify_checkpoint(p) is not None or any(p.glob(f".{MANIFEST}.*")):
            out.append(p.name)
    return out


def _last_logged_step(log: Path) -> int:
    steps = [int(line.split()[1].split("/")[0]) for line in log.read_text(errors="replace").splitlines()
             if line.startswith("step ")]
    return max(steps, default=0)


def _loads(run: Path):
    """The latest checkpoint, read whole (weights, EMA, optimizer and RNG state, config)."""
    ck, _ = latest_checkpoint(run)
    assert ck is not None
    state = ck.training_state()
    assert state["steps_done"] == ck.step and ck.config()["train"]["variant"] == "dcgan"
    return ck, state


KILLS = 22


def test_sigkill_at_random_moments_never_loses_a_checkpoint(tmp_path, capsys):
    """22 SIGKILLs of a training child (every third aimed into a checkpoint write, made slower by PAUSE_ENV; the
    others at a random time after start: setup, steps, sample grids or writes), each followed by a resume. After
    each kill the latest valid checkpoint loads, is no older than the last one seen and than the step before the
    last step the child logged (a checkpoint per step: --tick 1). The killed legs train towards a step they never
    reach; the last leg resumes with --steps 10 past the latest checkpoint and runs to the end, and the finished run
    equals an uninterrupted run of as many steps."""
    rng = random.Random(14)
    run, ref = tmp_path / "run", tmp_path / "ref"
    common = ["--data", "digits", "--debug", "--batch", "8", "--no-eval", "--tick", "1"]
    fresh = ["train", *common, "--steps", "100000", "--out", str(run)]
    launcher = Launcher()
    try:
        kills = in_writes = 0
        seen = -1
        kill_steps = []
        while kills < KILLS:
            log = tmp_path / f"leg{kills:02d}.log"
            argv = fresh if kills == 0 else ["train", "--resume", str(run)]
            pid = launcher.start(argv, log, env={PAUSE_ENV: "0.02"})
            if kills == 0:                       # the first leg lives until its step-0 checkpoint exists
                _wait_for(lambda: (run / "checkpoints" / "step-000000" / MANIFEST).is_file(), "the first checkpoint")
            if kills % 3 == 2:                   # aimed: inside a checkpoint write
                _wait_for(lambda: _writing(run), "a checkpoint write")
                time.sleep(rng.uniform(0.0, 0.05))
            else:
                time.sleep(rng.uniform(0.05, 1.2))
            os.kill(pid, signal.SIGKILL)
            status = launcher.wait(pid)
            assert status == -signal.SIGKILL, (status, log.read_text())   # not finished, not crashed on its own
            kills += 1
            in_writes += bool(_interrupted_write(run))
            ck, _ = _loads(run)
            assert ck.step >= seen and ck.step >= _last_logged_step(log) - 1, (ck.step, seen, log.read_text())
            seen = ck.step
            kill_steps.append(ck.step)
        # finish the run (no pause), and run the same configuration uninterrupted
        steps = seen + 10
        pid = launcher.start(["train", "--resume", str(run), "--steps", str(steps)], tmp_path / "last.log")
        assert launcher.wait(pid) == 0, (tmp_path / "last.log").read_text()
        pid = launcher.start(["train", *common, "--steps", str(steps), "--out", str(ref)], tmp_path / "ref.log")
        assert launcher.wait(pid) == 0, (tmp_path / "ref.log").read_text()
    finally:
        launcher.close()
    with capsys.disabled():
        print(f"\n{kills} kills, {in_writes} inside checkpoint writes, latest checkpoint after each: {kill_steps}")
    assert in_writes >= 5
    ck, state = _loads(run)
    assert ck.step == steps and not _interrupted_write(run)
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    ref_ck, ref_state = _loads(ref)
    a, b = load_file(str(ck.path / WEIGHTS)), load_file(str(ref_ck.path / WEIGHTS))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = torch.load(ck.path / STATE, weights_only=True), torch.load(ref_ck.path / STATE, weights_only=True)
    assert sa["trainer"]["engine"] == sb["trainer"]["engine"] and torch.equal(sa["trainer"]["rng_cpu"], sb["trainer"]["rng_cpu"])
    for n in sa["trainer"]["optimizers"]:
        for p, st in sa["trainer"]["optimizers"][n]["state"].items():
            assert all(torch.equal(v, sb["trainer"]["optimizers"][n]["state"][p][k]) for k, v in st.items())
    recs = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    ref_recs = [json.loads(line) for line in (ref / "stats.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == list(range(1, steps + 1))
    assert [r["loss_D"] for r in recs] == [r["loss_D"] for r in ref_recs]
    capsys.readouterr()
    assert main(["sample", str(run), "--n", "4", "--out", str(tmp_path / "s.png")]) == 0


def _train_process(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FASTGAN_PROGRESS": "0", "PYTHONPATH": str(ROOT)}
    # SIGINT at its default, as typed in a terminal, even where the test runner inherited it ignored
    # (a background job); a run leaves an ignored SIGINT ignored (tests/test_resume.py).
    return subprocess.Popen([sys.executable, "-m", "fastgan.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _signal_after_step(proc: subprocess.Popen, sig: int, after: int) -> tuple[int, str, str]:
    """Send ``sig`` once the process has logged step ``after`` or later; its (exit code, stdout, stderr)."""
    out = []
    for line in proc.stdout:
        out.append(line)
        if line.startswith("step ") and int(line.split()[1].split("/")[0]) >= after:
            proc.send_signal(sig)
            break
    rest, err = proc.communicate(timeout=WAIT_LIMIT)
    return proc.returncode, "".join(out) + rest, err


def test_sigterm_and_sigint_finish_the_step_checkpoint_and_exit_143_130(tmp_path):
    run = tmp_path / "run"
    # --tick 5: checkpoints only every 5 steps, so the stop's own checkpoint is the one that holds its step
    proc = _train_process(["train", "--data", "digits", "--debug", "--batch", "8", "--no-eval", "--tick", "5",
                           "--steps", "100000", "--out", str(run)])
    rc, out, err = _signal_after_step(proc, signal.SIGTERM, 5)
    assert rc == 143, (out, err)
    line = err.strip().splitlines()[-1]
    assert line.startswith("SIGTERM: stopped after step ") and "--resume" in line and "Traceback" not in err
    stopped = int(line.split("after step ")[1].split()[0])
    ck, state = _loads(run)
    assert ck.step == stopped >= 5 and state["batches_drawn"] == stopped
    assert all(json.loads(r)["step"] <= stopped for r in (run / "stats.jsonl").read_text().splitlines())

    proc = _train_process(["train", "--resume", str(run), "--steps", "100000"])
    rc, out, err = _signal_after_step(proc, signal.SIGINT, stopped + 5)
    assert rc == 130, (out, err)
    assert f"resumed from checkpoints/{ck.path.name}" in out
    line = err.strip().splitlines()[-1]
    assert line.startswith("SIGINT: stopped after step ") and "Traceback" not in err
    stopped2 = int(line.split("after step ")[1].split()[0])
    ck2, _ = _loads(run)
    assert ck2.step == stopped2 >= stopped + 5
