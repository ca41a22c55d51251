"""Run checkpoints (checkpoints/step-NNNNNN/ with a manifest), exact resume, refusals, NaN faults, OOM at start.

Crash safety under SIGKILL and the SIGTERM / SIGINT exits are in tests/test_crash.py.
"""
import hashlib
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from fastgan.cli import main
from fastgan.errors import ConfigError, RunStopped, TrainingDiverged
from fastgan.train.checkpoint import (MANIFEST, STATE, WEIGHTS, latest_checkpoint, list_checkpoints,
                                      save_checkpoint, verify_checkpoint)
from fastgan.train.config import TrainConfig
from fastgan.train.loop import resume_config, run_training
from fastgan.train.trainer import Trainer

TIMING = ("img_per_s", "sec_per_kimg", "seconds")


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Bit-exact comparisons between two runs of one process, on one thread (and faster on a shared CPU)."""


def _cfg(out, **kw) -> TrainConfig:
    base = dict(data="digits", debug=True, batch=8, eval=False, tick=4, steps=8, out=str(out))
    return TrainConfig(**{**base, **kw})


def _quiet(line: str) -> None:
    pass


def _records(run) -> list[dict]:
    return [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]


def _losses(records) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def _state(run) -> tuple[dict, dict]:
    """(weights, state.pt) of the run's latest valid checkpoint."""
    ck, _ = latest_checkpoint(run)
    return load_file(str(ck.path / WEIGHTS)), torch.load(ck.path / STATE, weights_only=True)


def _same(a, b, where="state") -> None:
    """Nested dicts / lists / tensors equal bit for bit (tensors by value, everything else by ==)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _reseal(ck_dir) -> None:
    """Rewrite a checkpoint's manifest to match its files (a whole checkpoint, as another run would write it)."""
    man = json.loads((ck_dir / MANIFEST).read_text())
    for name in man["files"]:
        data = (ck_dir / name).read_bytes()
        man["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (ck_dir / MANIFEST).write_text(json.dumps(man))


def _err(capsys, argv) -> str:
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    return lines[0]


# -- exact resume --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["dcgan", "dcgan-r1", "acgan"])
def test_resume_continues_exactly(tmp_path, variant):
    """24 steps straight == 12 steps, then --resume to 24: the same loss records after step 12 and the same final
    weights, EMA, optimizer state, counters and RNG. dcgan-r1's lazy R1 (every 16 D steps) runs at step 16, after
    the resume point; acgan is conditional (labels from the digits)."""
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    run_training(_cfg(straight, variant=variant, steps=24), log=_quiet)
    run_training(_cfg(halves, variant=variant, steps=12), log=_quiet)
    assert latest_checkpoint(halves)[0].step == 12
    lines = []
    run_training(resume_config(halves, {"steps": 24}), log=lines.append, resume=halves)
    assert "resumed from checkpoints/step-000012" in lines[0]

    a, b = _records(straight), _records(halves)
    assert [r["step"] for r in b] == [r["step"] for r in a] == [4, 8, 12, 16, 20, 24]   # no duplicates
    assert _losses(b) == _losses(a)
    assert all(r["nonfinite"] == 0.0 for r in a)
    wa, sa = _state(straight)
    wb, sb = _state(halves)
    _same(wa, wb, "weights")
    assert sa["step"] == sb["step"] == 24
    _same(sa["trainer"], sb["trainer"], "trainer")
    _same(sa["rng"], sb["rng"], "rng")
    if variant == "dcgan-r1":            # the lazy term's counter went past 16 in the resumed half
        assert sb["trainer"]["engine"]["counts"]["D"] == 24
        assert "penalty" in a[0] and "penalty" not in a[3] and "penalty" in a[4]   # steps 1 and 17
    resolved = json.loads((halves / "config.json").read_text())
    assert resolved["train"]["steps"] == 24


def test_resume_after_a_crash_drops_records_past_the_checkpoint(tmp_path):
    run = tmp_path / "run"
    run_training(_cfg(run, steps=8), log=_quiet)
    with open(run / "stats.jsonl", "a") as f:        # what a run killed after writing step 12's record leaves
        f.write(json.dumps({"step": 12, "loss_D": 9.0}) + "\n" + '{"step": 13, "loss')
    run_training(resume_config(run, {"steps": 12}), log=_quiet, resume=run)
    recs = _records(run)
    assert [r["step"] for r in recs] == [4, 8, 12] and recs[-1]["loss_D"] != 9.0


# -- checkpoint folders --------------------------------------------------------------------------------------

def test_checkpoint_folders_manifest_and_keep(tmp_path):
    run = tmp_path / "run"
    run_training(_cfg(run, steps=12, tick=2, keep=2), log=_quiet)
    assert [s for s, _ in list_checkpoints(run)] == [12, 10]
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    ck = run / "checkpoints" / "step-000012"
    assert sorted(p.name for p in ck.iterdir()) == ["config.json", MANIFEST, STATE, WEIGHTS]
    man = json.loads((ck / MANIFEST).read_text())
    assert man["step"] == 12 and set(man["files"]) == {"config.json", STATE, WEIGHTS}
    assert verify_checkpoint(ck) is None
    w = load_file(str(ck / WEIGHTS))
    assert any(k.startswith("G.") for k in w) and any(k.startswith("D.") for k in w) and any(k.startswith("G_ema.") for k in w)
    st = torch.load(ck / STATE, weights_only=True)
    assert st["trainer"]["steps_done"] == 12 and st["trainer"]["batches_drawn"] == 12
    assert set(st["trainer"]["optimizers"]) == {"G", "D"} and st["trainer"]["engine"]["nimg"] == 96
    assert set(st["rng"]) == {"numpy", "python"} and st["trainer"]["rng_cpu"].dtype == torch.uint8
    assert json.loads((ck / "config.json").read_text())["train"]["keep"] == 2


def test_keep_must_be_positive(capsys, tmp_path):
    msg = _err(capsys, ["train", "--keep", "0", "--out", str(tmp_path / "r")])
    assert "keep must be >= 1" in msg and "--keep" in msg
    assert "on_nan" in _err(capsys, ["train", "--on-nan", "ignore", "--out", str(tmp_path / "r")])
    assert "between 0 and 1" in _err(capsys, ["train", "--nan-lr-factor", "2", "--out", str(tmp_path / "r")])
    assert not (tmp_path / "r").exists()


def test_a_checkpoint_without_a_valid_manifest_is_never_the_latest(tmp_path):
    run = tmp_path / "run"
    run_training(_cfg(run, steps=12, tick=4), log=_quiet)
    ck12, ck8 = run / "checkpoints" / "step-000012", run / "checkpoints" / "step-000008"
    damage = {
        "no manifest": lambda: (ck12 / MANIFEST).unlink(),
        "not valid JSON": lambda: (ck12 / MANIFEST).write_text('{"format": "fastgan-run-chec'),
        "truncated": lambda: (ck12 / WEIGHTS).write_bytes((ck12 / WEIGHTS).read_bytes()[:1000]),
        "modified": lambda: (ck12 / STATE).write_bytes(bytes([(ck12 / STATE).read_bytes()[0] ^ 1])
                                                        + (ck12 / STATE).read_bytes()[1:]),
        "is missing": lambda: (ck12 / "config.json").unlink(),
        "for step 8": lambda: (ck12 / MANIFEST).write_text((ck8 / MANIFEST).read_text()),
    }
    pristine = tmp_path / "pristine"
    shutil.copytree(ck12, pristine)
    for phrase, do in damage.items():
        do()
        reason = verify_checkpoint(ck12)
        assert reason is not None and phrase in reason, (phrase, reason)
        ck, skipped = latest_checkpoint(run)
        assert ck.step == 8 and skipped[0].startswith("checkpoints/step-000012: ")
        shutil.rmtree(ck12)
        shutil.copytree(pristine, ck12)
    assert latest_checkpoint(run)[0].step == 12


# -- sample / eval read the latest valid checkpoint ------------------------------------------------------------

def test_sample_reads_the_latest_valid_checkpoint_and_old_runs(capsys, tmp_path):
    run = tmp_path / "run"
    run_training(_cfg(run, steps=8), log=_quiet)
    (run / "checkpoints" / "step-000008" / MANIFEST).unlink()
    assert main(["sample", str(run), "--n", "4", "--out", str(tmp_path / "a.png")]) == 0
    err = capsys.readouterr().err
    assert "skipping checkpoints/step-000008" in err and "reading checkpoints/step-000004" in err
    for _, p in list_checkpoints(run):
        (p / WEIGHTS).write_bytes((p / WEIGHTS).read_bytes()[:-10])
    msg = _err(capsys, ["sample", str(run)])
    assert "no valid checkpoint" in msg and "step-000008: it has no manifest.json" in msg
    # a run folder from before checkpoints/: its checkpoint.safetensors
    old = tmp_path / "old"
    old.mkdir()
    good = tmp_path / "good"
    run_training(_cfg(good, steps=4), log=_quiet)
    parts, md = latest_checkpoint(good)[0].weights()
    save_checkpoint(old / "checkpoint.safetensors", {part: _Flat(sd) for part, sd in parts.items()}, md["config"],
                    step=4)
    assert main(["sample", str(old), "--n", "4", "--out", str(tmp_path / "b.png")]) == 0


class _Flat(torch.nn.Module):
    """A module whose state_dict is the given one (to write a checkpoint in the old single-file format)."""

    def __init__(self, sd):
        super().__init__()
        self._sd = sd

    def state_dict(self, *a, **k):
        return dict(self._sd)


# -- resume refusals ---------------------------------------------------------------------------------------

def test_resume_refusals_are_one_line_errors(capsys, tmp_path):
    run = tmp_path / "run"
    run_training(_cfg(run, steps=4), log=_quiet)
    (tmp_path / "empty").mkdir()
    assert "has no checkpoints/" in _err(capsys, ["train", "--resume", str(tmp_path / "empty")])
    assert "is not a folder" in _err(capsys, ["train", "--resume", str(tmp_path / "nowhere")])
    msg = _err(capsys, ["train", "--resume", str(run), "--batch", "16", "--variant", "wgan"])
    assert "--batch 16 (the run has 8)" in msg and "--variant wgan (the run has 'dcgan')" not in msg
    assert "--variant wgan (the run has dcgan)" in msg and "only --steps" in msg
    assert "--out" in _err(capsys, ["train", "--resume", str(run), "--out", str(tmp_path / "elsewhere")])
    msg = _err(capsys, ["train", "--resume", str(run)])
    assert "is at step 4" in msg and "--steps N with N > 4" in msg
    # same values are not conflicts; --keep may change
    assert main(["train", "--resume", str(run), "--steps", "5", "--batch", "8", "--data", "digits", "--keep", "1"]) == 0
    assert [s for s, _ in list_checkpoints(run)] == [5]


def _edit_checkpoint_config(ck_dir, **train) -> None:
    cfg = json.loads((ck_dir / "config.json").read_text())
    cfg["train"].update(train)
    (ck_dir / "config.json").write_text(json.dumps(cfg))
    _reseal(ck_dir)


def test_resume_refuses_a_checkpoint_of_another_run(capsys, tmp_path):
    run, other = tmp_path / "run", tmp_path / "other"
    run_training(_cfg(run, steps=4), log=_quiet)
    run_training(_cfg(other, steps=8, variant="lsgan"), log=_quiet)
    foreign = run / "checkpoints" / "step-000008"
    shutil.copytree(other / "checkpoints" / "step-000008", foreign)
    msg = _err(capsys, ["train", "--resume", str(run), "--steps", "12"])
    assert "variant 'lsgan'" in msg and "this run has variant 'dcgan'" in msg
    shutil.rmtree(foreign)
    ck4 = run / "checkpoints" / "step-000004"
    pristine = (ck4 / "config.json").read_text()
    for field, value in (("resolution", 64), ("data", "mnist5k"), ("seed", 5)):
        _edit_checkpoint_config(ck4, **{field: value})
        msg = _err(capsys, ["train", "--resume", str(run), "--steps", "8"])
        assert f"with {field} {value!r}" in msg, msg
        (ck4 / "config.json").write_text(pristine)
        _reseal(ck4)
    # a consistent manifest over weights of another shape: the restore names the mismatch
    w = load_file(str(other / "checkpoints" / "step-000008" / WEIGHTS))
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(ck4 / WEIGHTS), framework="pt") as f:
        md = f.metadata()
    mine = load_file(str(ck4 / WEIGHTS))
    key = next(k for k in mine if k.startswith("D.") and mine[k].dim() == 4)
    mine[key] = torch.zeros(*mine[key].shape[:-1], mine[key].shape[-1] + 1)
    save_file(mine, str(ck4 / WEIGHTS), metadata=md)
    _reseal(ck4)
    msg = _err(capsys, ["train", "--resume", str(run), "--steps", "8"])
    assert "does not fit these models" in msg and str(ck4) in msg
    assert w   # the other run's file was readable: the mismatch is the shape, not the file
    # tampered: the manifest no longer matches -> no valid checkpoint, named
    shutil.rmtree(run / "checkpoints" / "step-000000")      # (else the run resumes from step 0, skipping step 4)
    (ck4 / WEIGHTS).write_bytes(b"\x00" + (ck4 / WEIGHTS).read_bytes()[1:])
    msg = _err(capsys, ["train", "--resume", str(run), "--steps", "8"])
    assert "no valid checkpoint" in msg and "weights.safetensors does not match its sha256" in msg


# -- faults: non-finite values ---------------------------------------------------------------------------------

def _poison_at(monkeypatch, at_step: int, times: int = 1):
    """Make the weights of D NaN right after global step ``at_step`` (the first ``times`` times it is reached)."""
    real_step, hits = Trainer.step, []

    def step(self, next_batch):
        real_step(self, next_batch)
        if self.steps_done == at_step and len(hits) < times:
            hits.append(at_step)
            with torch.no_grad():
                next(self.D.parameters()).fill_(float("nan"))

    monkeypatch.setattr(Trainer, "step", step)
    return hits


def test_nonfinite_losses_stop_the_run_naming_the_last_good_checkpoint(capsys, monkeypatch, tmp_path):
    run = tmp_path / "run"
    _poison_at(monkeypatch, 6)
    with pytest.raises(TrainingDiverged) as e:
        run_training(_cfg(run, steps=12), log=_quiet)
    msg = str(e.value)
    assert "non-finite losses" in msg and "at step 8" in msg and "step-000004 (step 4)" in msg
    assert "--on-nan rollback" in msg
    assert latest_checkpoint(run)[0].step == 4            # nothing written from the poisoned weights
    assert _records(run)[-1]["nonfinite"] == 1.0
    # the CLI: one line, exit code 1
    _poison_at(monkeypatch, 6)
    rc = main(["train", "--data", "digits", "--debug", "--batch", "8", "--no-eval", "--tick", "4", "--steps", "12",
               "--out", str(tmp_path / "cli")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith("error: non-finite")


def test_nonfinite_weights_at_a_checkpoint_are_caught_too(monkeypatch, tmp_path):
    """Poisoned in the last step of a tick: that tick's losses are finite, the checkpoint's weights are not."""
    run = tmp_path / "run"
    _poison_at(monkeypatch, 8)
    with pytest.raises(TrainingDiverged, match=r"non-finite values in nets\.D\..* at step 8.*step-000004"):
        run_training(_cfg(run, steps=12), log=_quiet)
    assert [s for s, _ in list_checkpoints(run)] == [4, 0]


def test_on_nan_rollback_reloads_the_last_good_checkpoint_with_lower_learning_rates(monkeypatch, tmp_path):
    run = tmp_path / "run"
    hits = _poison_at(monkeypatch, 6)
    lines = []
    run_training(_cfg(run, steps=12, on_nan="rollback", nan_lr_factor=0.25), log=lines.append)
    assert hits == [6]
    assert any("rolled back to checkpoints/step-000004" in line for line in lines)
    recs = _records(run)
    assert [r["step"] for r in recs] == [4, 4, 8, 12]        # the NaN tick's record replaced by the event
    what = recs[1].pop("what")
    assert recs[1] == {"step": 4, "event": "nonfinite_rollback", "detected_at": 8, "lr_factor": 0.25}
    assert what.startswith("losses (") and "loss_D" in what and "loss_G" in what
    assert all(r["nonfinite"] == 0.0 for r in recs if "loss_D" in r)
    _, st = _state(run)
    for opt in st["trainer"]["optimizers"].values():
        assert opt["param_groups"][0]["lr"] == pytest.approx(2e-4 * 0.25)
    assert st["trainer"]["steps_done"] == 12 and st["trainer"]["batches_drawn"] == 12


def test_rollback_gives_up_after_repeated_nans(monkeypatch, tmp_path):
    _poison_at(monkeypatch, 6, times=10)
    with pytest.raises(TrainingDiverged, match="after 3 rollbacks to .*step-000004"):
        run_training(_cfg(tmp_path / "run", steps=12, on_nan="rollback"), log=_quiet)


# -- faults: out of GPU memory at the start ---------------------------------------------------------------------

def test_out_of_memory_in_the_probe_names_a_batch_that_fits(monkeypatch, tmp_path):
    import fastgan.train.trainer as trainer_mod

    real_probe, tried = trainer_mod._probe_task, []

    def probe(task, device, batch, precision="fp32"):
        tried.append(batch)
        if batch > 8:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_probe(task, device, batch, precision)

    monkeypatch.setattr(trainer_mod, "_probe_task", probe)
    out = tmp_path / "run"
    with pytest.raises(ConfigError) as e:
        run_training(_cfg(out, batch=40), log=_quiet)
    assert tried == [40, 20, 10, 5]
    msg = str(e.value)
    assert "out of GPU memory" in msg and "batch 40" in msg and "--batch 5 or less" in msg and "\n" not in msg
    assert not out.exists()
    monkeypatch.setattr(trainer_mod, "_probe_task", lambda *a, **k: (_ for _ in ()).throw(
        torch.cuda.OutOfMemoryError("CUDA out of memory")))
    with pytest.raises(ConfigError, match="every smaller batch down to 1.*--width or --resolution"):
        run_training(_cfg(out, batch=4), log=_quiet)


def test_out_of_memory_in_the_first_step_is_a_one_line_error(monkeypatch, tmp_path):
    def step(self, next_batch):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")

    monkeypatch.setattr(Trainer, "step", step)
    with pytest.raises(ConfigError, match=r"first training step at batch 8.*--batch 4 or less"):
        run_training(_cfg(tmp_path / "run"), log=_quiet)


# -- a stop signal in-process: the step finishes, a checkpoint is written -------------------------------------

@pytest.fixture
def sigint_handler():
    """Sets SIGINT's handler for the test (whatever the test runner inherited: a background job starts with it
    ignored) and puts the inherited one back afterwards; yields a setter."""
    import signal

    inherited = signal.getsignal(signal.SIGINT)
    yield lambda handler: signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGINT, inherited)


def _raise_sigint_in_step_3(monkeypatch):
    import signal

    real_step = Trainer.step

    def step(self, next_batch):
        if self.steps_done == 2:
            signal.raise_signal(signal.SIGINT)      # arrives mid-step: the handler only sets a flag
        real_step(self, next_batch)

    monkeypatch.setattr(Trainer, "step", step)
    return real_step


def test_sigint_inside_a_step_finishes_it_and_checkpoints(monkeypatch, tmp_path, sigint_handler):
    import signal

    sigint_handler(signal.default_int_handler)
    real_step = _raise_sigint_in_step_3(monkeypatch)
    run = tmp_path / "run"
    with pytest.raises(RunStopped) as e:
        run_training(_cfg(run, steps=10, tick=100), log=_quiet)
    assert e.value.exit_code == 130 and "after step 3" in str(e.value)
    assert [s for s, _ in list_checkpoints(run)] == [3, 0]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler      # handlers put back
    monkeypatch.setattr(Trainer, "step", real_step)
    run_training(resume_config(run, {}), log=_quiet, resume=run)
    assert latest_checkpoint(run)[0].step == 10


def test_an_ignored_sigint_stays_ignored(monkeypatch, tmp_path, sigint_handler):
    """`fastgan train ... &` from a shell script: SIGINT is ignored for the job, and the run does not take it over."""
    import signal

    sigint_handler(signal.SIG_IGN)
    _raise_sigint_in_step_3(monkeypatch)
    run = tmp_path / "run"
    run_training(_cfg(run, steps=6, tick=100), log=_quiet)
    assert latest_checkpoint(run)[0].step == 6
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_numpy_and_python_rng_states_round_trip(tmp_path):
    import random

    import numpy as np

    from fastgan.train.checkpoint import restore_rng

    run = tmp_path / "run"
    run_training(_cfg(run, steps=4), log=_quiet)
    ck, _ = latest_checkpoint(run)
    state = ck.training_state()
    restore_rng(state)
    expect = (np.random.rand(3).tolist(), [random.random() for _ in range(3)], torch.rand(3))
    np.random.seed(123)
    random.seed(123)
    torch.manual_seed(123)
    restore_rng(ck.training_state())
    assert (np.random.rand(3).tolist(), [random.random() for _ in range(3)]) == expect[:2]
    assert torch.equal(torch.rand(3), expect[2])
