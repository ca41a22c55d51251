"""CLI: every bad input is one line on stderr, exit code 2, no traceback, nothing overwritten."""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fastgan.cli import main


def _err(capsys, argv) -> str:
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in captured.err
    return lines[0]


def test_help_reads_well(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for word in ("train", "sample", "eval", "variants", "examples"):
        assert word in out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for flag in ("--variant", "--data", "--steps", "--batch", "--out", "--device", "--seed", "--config", "--mode",
                 "--compile-mode"):
        assert flag in out


def test_variants_table(capsys):
    assert main(["variants"]) == 0
    out = capsys.readouterr().out
    assert "dcgan" in out and "wgan-gp" in out and "n_critic" in out
    assert main(["variants", "wgan*"]) == 0
    out = capsys.readouterr().out
    assert "wgan-gp" in out and "\ndcgan " not in out and "lsgan" not in out


def test_unknown_variant(capsys, tmp_path):
    msg = _err(capsys, ["train", "--variant", "dcgann", "--out", str(tmp_path / "r")])
    assert "unknown variant 'dcgann'" in msg and "fastgan variants" in msg
    assert not (tmp_path / "r").exists()


def test_unknown_dataset(capsys, tmp_path):
    msg = _err(capsys, ["train", "--data", "mnsit", "--out", str(tmp_path / "r")])
    assert "unknown dataset" in msg and "mnist5k" in msg


def test_missing_and_empty_folder(capsys, tmp_path):
    msg = _err(capsys, ["train", "--data", f"folder:{tmp_path / 'nope'}", "--out", str(tmp_path / "r")])
    assert "nope" in msg
    (tmp_path / "empty").mkdir()
    msg = _err(capsys, ["train", "--data", f"folder:{tmp_path / 'empty'}", "--out", str(tmp_path / "r")])
    assert "empty" in msg


def test_unreadable_image(capsys, tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / "ok.png")
    (d / "broken.png").write_bytes(b"not a png at all")
    msg = _err(capsys, ["train", "--data", f"folder:{d}", "--out", str(tmp_path / "r")])
    assert "broken.png" in msg


def test_unknown_compile_mode(capsys, tmp_path):
    msg = _err(capsys, ["train", "--compile-mode", "fastest", "--out", str(tmp_path / "r")])
    assert "unknown compile mode 'fastest'" in msg and "reduce-overhead" in msg
    assert not (tmp_path / "r").exists()


def test_unbuildable_resolution(capsys, tmp_path):
    msg = _err(capsys, ["train", "--resolution", "48", "--out", str(tmp_path / "r"), "--no-eval"])
    assert "resolution 48" in msg
    assert not (tmp_path / "r").exists()


def test_bad_config_file(capsys, tmp_path):
    msg = _err(capsys, ["train", "--config", str(tmp_path / "missing.toml")])
    assert "missing.toml" in msg
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = \n")
    assert "not valid TOML" in _err(capsys, ["train", "--config", str(bad)])
    unk = tmp_path / "unk.toml"
    unk.write_text("stepz = 3\n")
    assert "stepz" in _err(capsys, ["train", "--config", str(unk)])


def test_out_folder_holding_a_run_is_refused(capsys, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data", "digits", "--debug", "--steps", "2", "--batch", "8", "--no-eval", "--out", str(out)]
    assert main(args) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    msg = _err(capsys, args)
    assert "already holds a run" in msg
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_config_toml_and_sample(capsys, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[train]\ndata = "digits"\ndebug = true\nsteps = 2\nbatch = 8\neval = false\n')
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--seed", "3"]) == 0
    import json

    resolved = json.loads((out / "config.json").read_text())
    assert resolved["train"]["seed"] == 3 and resolved["train"]["steps"] == 2
    assert main(["sample", str(out), "--n", "4", "--out", str(tmp_path / "s.png")]) == 0
    assert Image.open(tmp_path / "s.png").size[0] > 32


def test_corrupted_checkpoint(capsys, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--data", "digits", "--debug", "--steps", "1", "--batch", "8", "--no-eval", "--out", str(out)]) == 0
    for ck in (out / "checkpoints").iterdir():
        (ck / "weights.safetensors").write_bytes(b"\x07" * 64)
    for cmd in ("sample", "eval"):
        msg = _err(capsys, [cmd, str(out)])
        assert "no valid checkpoint" in msg and "weights.safetensors has 64 bytes" in msg
    assert "does not exist" in _err(capsys, ["eval", str(tmp_path / "nowhere")])


def test_console_script_no_traceback():
    r = subprocess.run([sys.executable, "-m", "fastgan.cli", "train", "--variant", "nope"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: unknown variant") and "Traceback" not in r.stderr


def test_eval_prints_domain_metrics(capsys, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--data", "digits", "--debug", "--steps", "2", "--batch", "8", "--no-eval", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--num-images", "64"]) == 0
    text = capsys.readouterr().out
    for word in ("domain-FID", "KID", "precision", "recall", "not Inception"):
        assert word in text
    assert main(["eval", str(out), "--num-images", "64", "--json"]) == 0
    import json

    m = json.loads(capsys.readouterr().out)
    assert m["fid"] > 0 and m["step"] == 2 and "not Inception" in m["feature_space"]


def test_readme_variant_table_is_the_one_generated_from_the_registry(capsys):
    from pathlib import Path

    from fastgan.variants import list_variants, markdown_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Variants", 1)[1].split("\n## ", 1)[0]
    table = markdown_table()
    assert table in section, "README's variant table is stale: paste `fastgan variants --markdown` into it"
    assert main(["variants", "--markdown"]) == 0 and capsys.readouterr().out == table
    rows = [line for line in table.splitlines()[2:]]
    assert [r.split("`")[1] for r in rows] == [s.name for s in list_variants()]
    wgan = next(r for r in rows if r.startswith("| `wgan` |"))
    assert "| Wasserstein | weight clipping 0.01 | 5 |" in wgan


def test_a_reader_that_leaves_early_gets_no_traceback():
    """`fastgan variants | head -1`: the pipe closes under the writer; it exits 141 (as after SIGPIPE), quietly."""
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-m", "fastgan", "variants"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()                          # before the child has imported fastgan: every write fails
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_out_folder_holding_the_users_own_outputs_is_refused(capsys, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "samples.png").write_bytes(b"my own picture")
    (out / "notes.txt").write_text("mine")
    msg = _err(capsys, ["train", "--data", "digits", "--debug", "--steps", "1", "--batch", "8", "--no-eval",
                        "--out", str(out)])
    assert "samples.png" in msg and "would overwrite" in msg
    assert (out / "samples.png").read_bytes() == b"my own picture"


def test_a_run_refused_for_its_batch_size_leaves_nothing_so_the_retry_works(capsys, tmp_path):
    out = tmp_path / "x"
    msg = _err(capsys, ["train", "--data", "synthetic:40", "--debug", "--batch", "64", "--no-eval", "--out", str(out)])
    assert "larger than dataset" in msg and not (out / "config.json").exists()
    assert main(["train", "--data", "synthetic:40", "--debug", "--batch", "8", "--steps", "1", "--no-eval",
                 "--out", str(out)]) == 0


def test_sample_eval_and_variants_refuse_bad_counts_and_paths(capsys, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--data", "digits", "--debug", "--steps", "1", "--batch", "8", "--no-eval", "--out", str(out)]) == 0
    capsys.readouterr()
    for n in ("0", "-3"):
        assert "--n must be at least 1" in _err(capsys, ["sample", str(out), "--n", n])
    assert "ending in .png" in _err(capsys, ["sample", str(out), "--out", str(tmp_path / "g.jpg")])
    (tmp_path / "taken.png").write_bytes(b"mine")
    assert "already exists" in _err(capsys, ["sample", str(out), "--out", str(tmp_path / "taken.png")])
    assert (tmp_path / "taken.png").read_bytes() == b"mine"
    assert "--num-images must be at least 4" in _err(capsys, ["eval", str(out), "--num-images", "0"])
    assert "no variant matches 'nomatch'" in _err(capsys, ["variants", "nomatch"])


def test_damaged_checkpoint_tensors_and_metadata_are_reported(capsys, tmp_path):
    import json

    from safetensors.torch import load_file, save_file

    out = tmp_path / "run"
    assert main(["train", "--data", "digits", "--debug", "--steps", "1", "--batch", "8", "--no-eval", "--out", str(out)]) == 0
    ck = out / "checkpoints" / "step-000001" / "weights.safetensors"
    from safetensors import safe_open

    from fastgan.train.checkpoint import MANIFEST

    def reseal():          # a manifest that matches the edited file: the damage is in what the file says
        import hashlib

        man = json.loads((ck.parent / MANIFEST).read_text())
        man["files"][ck.name] = {"sha256": hashlib.sha256(ck.read_bytes()).hexdigest(), "bytes": ck.stat().st_size}
        (ck.parent / MANIFEST).write_text(json.dumps(man))

    with safe_open(str(ck), framework="pt") as f:
        md = f.metadata()
    tensors = load_file(str(ck))
    key = next(k for k in tensors if k.startswith("G_ema.") and tensors[k].is_floating_point())
    tensors[key] = tensors[key].clone().fill_(float("nan"))
    save_file(tensors, str(ck), metadata=md)
    reseal()
    assert "non-finite values in " + key in _err(capsys, ["sample", str(out)])
    save_file(load_file(str(ck)), str(ck), metadata={**md, "config": "{not json"})
    reseal()
    assert "damaged metadata" in _err(capsys, ["sample", str(out)])
    assert json.loads(md["config"])            # the original was fine


def test_no_eval_runs_checkpoint_at_ticks_and_on_ctrl_c(tmp_path, monkeypatch):
    from fastgan.train.checkpoint import latest_checkpoint
    from fastgan.train.trainer import Trainer

    real_step, calls = Trainer.step, []

    def step(self, next_batch):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt       # from inside a step: it is incomplete, so nothing more is written
        real_step(self, next_batch)

    monkeypatch.setattr(Trainer, "step", step)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        from fastgan.train.config import TrainConfig
        from fastgan.train.loop import run_training

        run_training(TrainConfig(data="digits", debug=True, steps=10, batch=8, eval=False, out=str(out), tick=100),
                     log=lambda s: None)
    assert latest_checkpoint(out)[0].step == 0          # the start's; a Ctrl-C (SIGINT) checkpoints: test_resume.py
    # without evaluations a checkpoint is written at every tick (here every step)
    monkeypatch.setattr(Trainer, "step", real_step)
    import fastgan.train.loop as loop

    saved = []
    real_save = loop.write_run_checkpoint
    monkeypatch.setattr(loop, "write_run_checkpoint", lambda run, step, *a, **k: (saved.append(step),
                                                                                   real_save(run, step, *a, **k)))
    run_training(TrainConfig(data="digits", debug=True, steps=3, batch=8, eval=False, out=str(tmp_path / "t"), tick=1),
                 log=lambda s: None)
    assert saved == [0, 1, 2, 3]


def test_fid_weights_problems_are_one_line_errors_before_any_run_folder(capsys, tmp_path):
    out = tmp_path / "r"
    msg = _err(capsys, ["train", "--data", "digits", "--debug", "--fid-weights", str(tmp_path / "nope.pth"), "--out", str(out)])
    assert "is not a file" in msg and "--fid-weights" in msg
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not weights")
    msg = _err(capsys, ["train", "--data", "digits", "--debug", "--fid-weights", str(garbage), "--out", str(out)])
    assert "cannot be read as a PyTorch state dict" in msg and not out.exists()
    msg = _err(capsys, ["eval", str(tmp_path / "no-run"), "--fid-weights", str(garbage)])
    assert "cannot be read as a PyTorch state dict" in msg
    msg = _err(capsys, ["train", "--no-eval", "--fid-weights", str(garbage), "--out", str(out)])
    assert "drop --no-eval or --fid-weights" in msg


def test_train_with_fid_weights_records_fid_inception(tmp_path, monkeypatch):
    import json

    import fastgan.metrics as metrics
    from test_metrics import random_inception_weights

    from fastgan.train.config import TrainConfig
    from fastgan.train.loop import run_training

    weights = tmp_path / "inception.pth"
    random_inception_weights(weights, monkeypatch)
    real_load = metrics.load_inception
    # the 64-d tap keeps the CPU cost small; the loop asks for the standard 2048-d one
    monkeypatch.setattr(metrics, "load_inception", lambda path, device="cpu": real_load(path, device, feature=64))
    out = tmp_path / "run"
    summary = run_training(TrainConfig(data="synthetic:16", debug=True, steps=1, batch=8, eval_images=8, tick=1,
                                       fid_weights=str(weights), out=str(out)), log=lambda s: None)
    evals = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines() if '"fid"' in line]
    assert [r["step"] for r in evals] == [0, 1]
    assert all(r["fid_inception"] > 0 and r["fid"] > 0 for r in evals)
    assert summary["fid_inception_end"] == evals[-1]["fid_inception"]


def test_readme_python_api_snippet_runs_as_written():
    """The README's first Python block (create, fit, sample, a user's pair, the fused ops) runs unchanged."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    ns: dict = {}
    exec(compile(code, "README.md:Python API", "exec"), ns)
    assert ns["images"].shape == (16, 1, 32, 32) and float(ns["images"].abs().max()) <= 1
    import torch

    torch.testing.assert_close(ns["y"], ns["y_ref"])


@pytest.mark.parametrize("variant", ["acgan", "infogan"])
def test_conditional_and_infogan_runs_write_class_grids_and_sample_by_label(capsys, tmp_path, variant):
    import json

    out = tmp_path / "run"
    assert main(["train", "--variant", variant, "--data", "digits", "--debug", "--steps", "2", "--batch", "8",
                 "--tick", "2", "--eval-every", "2", "--out", str(out)]) == 0
    grid = Image.open(out / "samples" / "step-000002.png")
    rows = grid.size[1] // (grid.size[0] // 8)            # square cells, 8 per row: one row per class
    assert rows == 10, grid.size
    resolved = json.loads((out / "config.json").read_text())
    assert resolved["task"] == ("conditional" if variant == "acgan" else "infogan")
    recs = [json.loads(x) for x in (out / "stats.jsonl").read_text().splitlines()]
    assert any("fid" in r for r in recs)
    capsys.readouterr()
    assert main(["sample", str(out), "--n", "8", "--labels", "3", "--out", str(tmp_path / "three.png")]) == 0
    assert main(["sample", str(out), "--n", "6", "--labels", "0,1,2", "--out", str(tmp_path / "rows.png")]) == 0
    assert Image.open(tmp_path / "rows.png").size[1] > Image.open(tmp_path / "three.png").size[1] // 2
    capsys.readouterr()
    assert main(["eval", str(out), "--num-images", "64", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fid"] > 0
    if variant == "acgan":
        assert "is conditional (10 classes): pass --labels" in _err(capsys, ["sample", str(out), "--out",
                                                                             str(tmp_path / "x.png")])
    assert "--labels takes class numbers" in _err(capsys, ["sample", str(out), "--labels", "three", "--out",
                                                             str(tmp_path / "y.png")])
    assert "labels must" in _err(capsys, ["sample", str(out), "--labels", "10", "--out", str(tmp_path / "z.png")])


def test_a_conditional_variant_on_unlabelled_data_is_refused_before_the_run_folder(capsys, tmp_path):
    arr = (np.random.default_rng(0).random((16, 16, 16)) * 255).astype(np.uint8)
    np.savez(tmp_path / "plain.npz", images=arr)
    out = tmp_path / "run"
    msg = _err(capsys, ["train", "--variant", "cgan", "--data", f"npz:{tmp_path / 'plain.npz'}", "--debug",
                        "--resolution", "16", "--steps", "1", "--batch", "8", "--no-eval", "--out", str(out)])
    assert "is conditional but dataset" in msg and "has no labels" in msg
    assert not out.exists()
    out2 = tmp_path / "plain-run"
    assert main(["train", "--data", "digits", "--debug", "--steps", "1", "--batch", "8", "--no-eval",
                 "--out", str(out2)]) == 0
    assert "is unconditional; --labels applies" in _err(capsys, ["sample", str(out2), "--labels", "3", "--out",
                                                                 str(tmp_path / "u.png")])
