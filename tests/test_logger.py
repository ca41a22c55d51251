"""RunLog: stats.jsonl is the source of truth; `--tensorboard` mirrors it (and the sample grids) to RUN/tensorboard."""
import json
import sys

import pytest
import torch

from fastgan.cli import main
from fastgan.errors import ConfigError
from fastgan.train.logger import RunLog, scalar_tags

TRAIN = ["train", "--data", "digits", "--debug", "--steps", "4", "--tick", "2", "--batch", "8", "--no-eval"]


def _events(path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(path), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    ea.Reload()
    return ea


def test_scalar_tags_group_records():
    tick = {"step": 2, "kimg": 0.016, "img_per_s": 400.0, "sec_per_kimg": 2.5, "seconds": 0.1, "mode": "eager",
            "loss_D": 1.25, "loss_G": 0.75, "nonfinite": False}
    assert scalar_tags(tick) == {"train/kimg": 0.016, "speed/img_per_s": 400.0, "speed/sec_per_kimg": 2.5,
                                 "train/seconds": 0.1, "train/loss_D": 1.25, "train/loss_G": 0.75,
                                 "train/nonfinite": 0.0}
    ev = {"step": 4, "kimg": 0.032, "fid": 12.5, "kid": 0.01, "precision": 0.5, "recall": 0.25, "eval_seconds": 3.0}
    assert scalar_tags(ev) == {"eval/fid": 12.5, "eval/kid": 0.01, "eval/precision": 0.5, "eval/recall": 0.25,
                               "eval/eval_seconds": 3.0}
    assert scalar_tags({"step": 3, "event": "mode_fallback", "from": "graphs", "mode": "compile"}) == {}


def test_runlog_without_tensorboard_writes_only_stats(tmp_path):
    with RunLog(tmp_path) as log:
        log.write({"step": 1, "loss_D": 1.0})
        log.image("samples", torch.zeros(4, 1, 8, 8), 1)     # nothing to mirror to: a no-op
        log.write({"step": 2, "loss_D": float("nan")})
    lines = (tmp_path / "stats.jsonl").read_text().splitlines()
    assert [json.loads(s)["step"] for s in lines] == [1, 2] and len(log.records) == 2
    assert not (tmp_path / "tensorboard").exists()
    log.close()                                               # closing twice is harmless


def test_runlog_mirrors_eval_records_and_events(tmp_path):
    pytest.importorskip("tensorboard")
    with RunLog(tmp_path, tensorboard=True) as log:
        log.write({"step": 0, "kimg": 0.0, "fid": 80.0, "kid": 0.5, "precision": 0.1, "recall": 0.2, "eval_seconds": 1.0})
        log.write({"step": 3, "event": "mode_fallback", "from": "graphs", "mode": "compile", "mode_reason": "x"})
        log.write({"step": 5, "kimg": 0.3, "fid": 40.0, "kid": 0.25, "precision": 0.3, "recall": 0.4, "eval_seconds": 1.0})
    ea = _events(tmp_path / "tensorboard")
    assert [(e.step, e.value) for e in ea.Scalars("eval/fid")] == [(0, 80.0), (5, 40.0)]
    assert {"eval/kid", "eval/precision", "eval/recall"} <= set(ea.Tags()["scalars"])
    assert "eval/kimg" not in ea.Tags()["scalars"]
    assert [e.step for e in ea.Tensors("events/text_summary")] == [3]


def test_train_tensorboard_mirrors_ticks_and_sample_grids(tmp_path, capsys, monkeypatch):
    pytest.importorskip("tensorboard")
    monkeypatch.delenv("FASTGAN_PROGRESS", raising=False)
    out = tmp_path / "run"
    assert main(TRAIN + ["--tensorboard", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "step      4/4" in printed and "\r" not in printed and "\x1b" not in printed   # not a tty: plain lines
    ticks = [r for r in map(json.loads, (out / "stats.jsonl").read_text().splitlines()) if "loss_D" in r]
    assert [r["step"] for r in ticks] == [2, 4]
    assert json.loads((out / "config.json").read_text())["train"]["tensorboard"] is True
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    ea = _events(out / "tensorboard")
    loss_d = ea.Scalars("train/loss_D")
    assert [e.step for e in loss_d] == [2, 4]
    assert [e.value for e in loss_d] == pytest.approx([r["loss_D"] for r in ticks], rel=1e-6)
    assert [e.value for e in ea.Scalars("speed/img_per_s")] == pytest.approx([r["img_per_s"] for r in ticks], rel=1e-6)
    assert {"train/loss_G", "speed/sec_per_kimg"} <= set(ea.Tags()["scalars"])
    grids = ea.Images("samples")
    assert [g.step for g in grids] == [0, 2, 4]                  # one per samples/step-NNNNNN.png
    from PIL import Image

    png = Image.open(out / "samples" / "step-000004.png")
    assert (grids[-1].width, grids[-1].height) == png.size


def test_tensorboard_flag_without_the_package_is_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)     # `import tensorboard` now raises ImportError
    out = tmp_path / "run"
    rc = main(TRAIN + ["--tensorboard", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert 'pip install "fastgan[tensorboard]"' in err and "Traceback" not in err
    assert not out.exists()                                    # refused before the run folder is made


def test_tensorboard_setting_must_be_a_bool(tmp_path):
    from fastgan.train.config import TrainConfig

    with pytest.raises(ConfigError, match="tensorboard must be true or false"):
        TrainConfig(tensorboard="yes")
    cfg = tmp_path / "c.toml"
    cfg.write_text('[train]\ntensorboard = "no"\n')
    with pytest.raises(ConfigError, match="tensorboard must be true or false"):
        from fastgan.train.config import load_toml

        TrainConfig.from_dict(load_toml(cfg))


def test_ctrl_c_closes_the_log(tmp_path, monkeypatch):
    """The TensorBoard writer (and stats.jsonl) is closed when the run is interrupted."""
    from fastgan.train import logger
    from fastgan.train.config import TrainConfig
    from fastgan.train.loop import run_training
    from fastgan.train.trainer import Trainer

    closed = []
    real_close = logger.RunLog.close
    monkeypatch.setattr(logger.RunLog, "close", lambda self: (closed.append(self._tb is not None), real_close(self)))
    real_step = Trainer.step

    def step(self, next_batch):
        if self.nimg:                                          # the second step is interrupted
            raise KeyboardInterrupt
        real_step(self, next_batch)

    monkeypatch.setattr(Trainer, "step", step)
    pytest.importorskip("tensorboard")
    with pytest.raises(KeyboardInterrupt):
        run_training(TrainConfig(data="digits", debug=True, steps=5, batch=8, eval=False, out=str(tmp_path / "r"),
                                 tensorboard=True), log=lambda s: None)
    assert closed == [True]                                    # closed once, with its TensorBoard writer open
