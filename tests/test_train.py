import json

import pytest
import torch

from fastgan import Trainer
from fastgan.data import load_dataset
from fastgan.errors import CheckpointError, ConfigError
from fastgan.train.checkpoint import load_checkpoint, save_checkpoint
from fastgan.train.config import TrainConfig
from fastgan.train.loop import run_training
from fastgan.train.step import StatsAccumulator
from fastgan.variants import get_variant


def _losses(variant: str, seed: int, steps: int = 4) -> list[float]:
    ds = load_dataset("digits", 32)
    torch.manual_seed(seed)
    spec = get_variant(variant)
    G, D, _ = spec.build(debug=True)
    tr = Trainer(G, D, loss=spec.objective, n_critic=spec.n_critic, clip=spec.clip, batch_size=16,
                 device="cpu", mode="eager", optimizer=spec.optim.name, lr_g=spec.optim.lr_g,
                 lr_d=spec.optim.lr_d, betas=spec.optim.betas)
    out = []
    for _ in range(steps):
        s = tr.fit(ds, 1, seed=seed)
        out += [s["loss_D"], s["loss_G"]]
    return out


@pytest.mark.parametrize("variant", ["dcgan", "wgan-gp"])
def test_training_is_deterministic_on_cpu(variant):
    a, b = _losses(variant, 0), _losses(variant, 0)
    assert a == b  # bit-identical
    assert _losses(variant, 1) != a


def test_trainer_learns_something_and_tracks_ema():
    ds = load_dataset("digits", 32)
    torch.manual_seed(0)
    G, D, _ = get_variant("dcgan").build(debug=True)
    tr = Trainer(G, D, batch_size=32, device="cpu")
    before = [p.clone() for p in tr.G_ema.parameters()]
    s = tr.fit(ds, 5)
    assert s["img_per_s"] > 0 and s["nonfinite"] == 0.0
    assert tr.nimg == 5 * 32
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.G_ema.parameters()))
    assert all(not p.requires_grad for p in tr.G_ema.parameters())
    x = tr.sample(9, seed=3)
    assert x.shape == (9, 1, 32, 32)
    torch.testing.assert_close(x, tr.sample(9, seed=3))


def test_n_critic_counts_real_images():
    ds = load_dataset("digits", 32)
    spec = get_variant("wgan")
    G, D, _ = spec.build(debug=True)
    tr = Trainer(G, D, loss=spec.objective, n_critic=5, clip=0.01, optimizer="rmsprop", batch_size=8, device="cpu")
    tr.fit(ds, 2)
    assert tr.nimg == 2 * 5 * 8
    assert max(p.abs().max().item() for p in tr.D.parameters()) <= 0.01 + 1e-7  # weight clipping


def test_stats_accumulator_means_and_nonfinite_flag():
    acc = StatsAccumulator()
    acc.add({"a": torch.tensor(1.0)})
    acc.add({"a": torch.tensor(3.0)})
    assert acc.read() == {"a": 2.0, "nonfinite": 0.0}
    acc.add({"a": torch.tensor(float("nan"))})
    assert acc.read()["nonfinite"] == 1.0
    assert acc.read() == {}
    # lazy regularization: the penalty appears only on some steps and is averaged over those
    acc.add({"a": torch.tensor(1.0), "penalty": torch.tensor(4.0)})
    acc.add({"a": torch.tensor(3.0)})
    acc.add({"a": torch.tensor(5.0), "penalty": torch.tensor(6.0)})
    assert acc.read() == {"a": 3.0, "penalty": 5.0, "nonfinite": 0.0}
    acc.add({"a": torch.tensor(float("inf"))})
    assert acc.read()["nonfinite"] == 1.0


def test_checkpoint_round_trip(tmp_path):
    G, D, _ = get_variant("dcgan").build(debug=True)
    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, {"G": G, "D": D, "G_ema": G}, {"hello": 1}, step=7)
    parts, md = load_checkpoint(path)
    assert md["config"] == {"hello": 1} and md["step"] == 7
    G2, D2, _ = get_variant("dcgan").build(debug=True)
    G2.load_state_dict(parts["G"])
    D2.load_state_dict(parts["D"])
    for a, b in zip(G.state_dict().values(), G2.state_dict().values()):
        assert torch.equal(a, b)
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


def test_corrupted_checkpoint_is_reported(tmp_path):
    p = tmp_path / "ck.safetensors"
    p.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(p)


def test_run_training_writes_run_folder(tmp_path):
    out = tmp_path / "run"
    cfg = TrainConfig(data="digits", debug=True, steps=4, batch=16, tick=2, eval_every=2, eval_images=64, out=str(out))
    lines = []
    summary = run_training(cfg, log=lines.append)
    for f in ("config.json", "stats.jsonl", "checkpoints/step-000004/manifest.json", "samples.png", "progress.png",
              "summary.json", "samples/step-000000.png", "samples/step-000004.png"):
        assert (out / f).exists(), f
    resolved = json.loads((out / "config.json").read_text())
    assert resolved["train"]["variant"] == "dcgan" and resolved["model"]["width"] == 8
    recs = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if "fid" in r] == [0, 2, 4]
    assert all("img_per_s" in r and "mode" in r for r in recs if "loss_D" in r)
    assert summary["fid_start"] > 0 and "domain-FID" in lines[-1]
    # a second run into the same folder is refused and nothing is overwritten
    weights = out / "checkpoints" / "step-000004" / "weights.safetensors"
    before = weights.read_bytes()
    with pytest.raises(CheckpointError, match="already holds a run"):
        run_training(cfg, log=lambda s: None)
    assert weights.read_bytes() == before


def test_fit_on_an_iterable_drops_partial_batches_and_rejects_mismatched_ones():
    G, D, _ = get_variant("dcgan").build(debug=True)
    tr = Trainer(G, D, batch_size=4, device="cpu")
    batches = [torch.rand(4, 1, 32, 32) * 2 - 1, torch.rand(3, 1, 32, 32) * 2 - 1]  # last one partial
    tr.fit(batches, 3)
    assert tr.nimg == 12
    with pytest.raises(ConfigError, match="batch_size=4"):
        tr.fit([torch.zeros(5, 1, 32, 32)], 1)


def test_latent_shape_accepts_ints_and_tuples_and_refuses_the_rest():
    import numpy as np

    from fastgan.errors import ConfigError
    from fastgan.latent import latent_shape

    assert latent_shape(8) == (8,) and latent_shape(np.int64(8)) == (8,) and latent_shape(torch.tensor(8)) == (8,)
    assert latent_shape((100, 1, 1)) == (100, 1, 1) and latent_shape([4, 2]) == (4, 2)
    for bad in (True, 8.0, 0, (), (4, 0), "8", None):
        with pytest.raises(ConfigError, match="z_dim must be a positive int"):
            latent_shape(bad)


def test_trainer_checks_user_models_with_clear_errors():
    """The drop-in route: the PyTorch DCGAN tutorial's models, as users have them."""
    from torch import nn

    from fastgan.bench.baselines import tutorial_discriminator, tutorial_generator
    from fastgan.errors import ConfigError
    from fastgan.models.dcgan import Config
    from fastgan.train.trainer import Trainer

    cfg = Config(resolution=16, width=4, z_dim=8)
    G, D = tutorial_generator(cfg), tutorial_discriminator(cfg)
    with pytest.raises(ConfigError, match=r"G failed on latents of shape \(4, 8\).*runs with z_dim=\(8, 1, 1\)"):
        Trainer(G, D, z_dim=8, device="cpu", batch_size=4)
    D_sig = tutorial_discriminator(cfg)
    D_sig.main.append(nn.Sigmoid())   # the tutorial's D really ends like this, with nn.BCELoss
    with pytest.raises(ConfigError, match="D ends in nn.Sigmoid.*remove the final Sigmoid"):
        Trainer(G, D_sig, z_dim=(8, 1, 1), device="cpu")
    D_map = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, 16 * 16))      # one score per pixel
    with pytest.raises(ConfigError, match="D must return one score per image"):
        Trainer(G, D_map, z_dim=(8, 1, 1), device="cpu")
    D_bad = nn.Sequential(nn.Flatten(), nn.Linear(7, 1))
    with pytest.raises(ConfigError, match=r"D failed on G's output of shape \(64, 1, 16, 16\)"):
        Trainer(G, D_bad, z_dim=(8, 1, 1), device="cpu")
    bn = [m for m in G.modules() if isinstance(m, nn.BatchNorm2d)][0]
    before = bn.running_mean.clone()
    state = torch.get_rng_state()
    t = Trainer(G, D, z_dim=(8, 1, 1), device="cpu")    # the probe leaves no trace
    assert t.G.training and t.D.training and torch.equal(bn.running_mean, before)
    assert torch.equal(torch.get_rng_state(), state)


def test_trainer_model_check_has_no_false_alarms_and_clear_messages():
    from torch import nn

    from fastgan.errors import ConfigError
    from fastgan.train.trainer import Trainer

    class G(nn.Module):
        def __init__(self, bug=None):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh())
            self.bug = bug

        def forward(self, z):
            if self.bug == "empty":
                raise RuntimeError()   # an exception with no message
            if self.bug == "typo":
                return self.nett(z)
            return self.net(z).view(-1, 1, 4, 4)

    class SEDiscriminator(nn.Module):   # a squeeze-excitation gate (ends in Sigmoid) registered last
        def __init__(self):
            super().__init__()
            self.body = nn.Conv2d(1, 4, 3, padding=1)
            self.head = nn.Linear(4 * 16, 1)
            self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(4, 4, 1), nn.Sigmoid())

        def forward(self, x):
            h = self.body(x)
            return self.head((h * self.gate(h)).flatten(1))

    t = Trainer(G(), SEDiscriminator(), z_dim=8, device="cpu", batch_size=4)
    t.step(lambda: torch.rand(4, 1, 4, 4))
    with pytest.raises(ConfigError, match=r"G failed on latents of shape \(4, 8\): RuntimeError$"):
        Trainer(G("empty"), SEDiscriminator(), z_dim=8, device="cpu", batch_size=4)
    with pytest.raises(ConfigError, match=r"has no attribute 'nett'$"):   # no latent-shape hint for a bug
        Trainer(G("typo"), SEDiscriminator(), z_dim=8, device="cpu", batch_size=4)
    # bf16 weights train under bf16 autocast; the check runs under the same autocast.
    Trainer(G().to(torch.bfloat16), SEDiscriminator().to(torch.bfloat16), z_dim=8, device="cpu", batch_size=4,
            precision="bf16")


def test_a_mode_fallback_is_recorded_in_stats_summary_and_log(tmp_path, monkeypatch):
    # A graph capture fails inside the first step on a GPU; simulate what GanStep._warm_and_capture does then.
    orig = Trainer.step

    def step(self, next_batch):
        orig(self, next_batch)
        if self.steps_done == 2:
            self.engine.fallback_reason = "CUDA graph capture failed (RuntimeError: simulated)"
            self.engine.mode = "compile"
            self._sync_mode()

    monkeypatch.setattr(Trainer, "step", step)
    out = tmp_path / "run"
    lines = []
    summary = run_training(TrainConfig(data="digits", debug=True, steps=4, batch=16, tick=2, eval=False, out=str(out)),
                           log=lines.append)
    recs = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
    events = [r for r in recs if r.get("event") == "mode_fallback"]
    assert len(events) == 1 and events[0]["step"] == 2 and events[0]["from"] == "eager"
    assert events[0]["mode"] == "compile" and "simulated" in events[0]["mode_reason"]
    assert [r["mode"] for r in recs if "loss_D" in r] == ["compile", "compile"]
    assert summary["mode"] == "compile" and "simulated" in summary["mode_reason"]
    assert any("mode fallback at step 2: eager -> compile" in ln for ln in lines)


def test_a_compiled_step_refuses_a_batch_of_another_size():
    G, D, _ = get_variant("dcgan").build(debug=True)
    tr = Trainer(G, D, batch_size=4, device="cpu", mode="compile")
    with pytest.raises(ConfigError, match=r"batch of 3 images .* batch_size=4"):
        tr.step(lambda: torch.zeros(3, 1, 32, 32))


def _seeded_trainer(variant: str = "dcgan", **kw):
    torch.manual_seed(0)
    spec = get_variant(variant)
    G, D, _ = spec.build(True, resolution=16, channels=1)
    return Trainer(G, D, loss=spec.objective, n_critic=spec.n_critic, clip=spec.clip, optimizer=spec.optim.name,
                   batch_size=8, device="cpu", mode="eager", seed=0, **kw)


def _weights(t) -> torch.Tensor:
    return torch.cat([v.float().flatten() for m in (t.G, t.D, t.G_ema) for v in m.state_dict().values()])


@pytest.mark.parametrize("variant", ["dcgan", "dcgan-r1"])      # dcgan-r1: a lazy penalty, driven by d_steps
def test_save_and_load_resume_a_run_exactly(tmp_path, variant):
    data = torch.rand(64, 1, 16, 16) * 2 - 1
    whole = _seeded_trainer(variant)
    whole.fit(data, 6)
    halves = _seeded_trainer(variant)
    halves.fit(data, 3)
    halves.fit(data, 3)                          # the same data object: its stream continues
    first = _seeded_trainer(variant)
    first.fit(data, 3)
    first.save(tmp_path / "state.pt")
    resumed = _seeded_trainer(variant)          # (seeds the global RNG afresh: load() must restore the saved one)
    resumed.load(tmp_path / "state.pt")
    resumed.fit(data, 3)
    for other in (halves, resumed):
        assert torch.equal(_weights(other), _weights(whole))
        assert other.nimg == whole.nimg == 48 and other.engine.counts == whole.engine.counts
    # an iterable of batches resumes too (reading past the batches already used)
    batches = [torch.rand(8, 1, 16, 16) * 2 - 1 for _ in range(5)]
    a = _seeded_trainer()
    a.fit(batches, 7)
    b = _seeded_trainer()
    b.fit(batches, 4)
    b.save(tmp_path / "it.pt")
    c = _seeded_trainer().load(tmp_path / "it.pt")
    c.fit(batches, 3)
    assert torch.equal(_weights(c), _weights(a))


def test_load_refuses_what_it_cannot_resume(tmp_path):
    t = _seeded_trainer()
    t.fit(torch.rand(16, 1, 16, 16) * 2 - 1, 1)
    t.save(tmp_path / "s.pt")
    with pytest.raises(ConfigError, match="before the first step"):
        t.load(tmp_path / "s.pt")
    with pytest.raises(ConfigError, match="batch_size 8"):
        torch.manual_seed(0)
        G, D, _ = get_variant("dcgan").build(True, resolution=16, channels=1)
        Trainer(G, D, batch_size=4, device="cpu").load(tmp_path / "s.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    for bad, msg in ((tmp_path / "junk.pt", "corrupted"), (tmp_path / "none.pt", "does not exist")):
        with pytest.raises(CheckpointError, match=msg):
            _seeded_trainer().load(bad)
    torch.manual_seed(0)
    G, D, _ = get_variant("dcgan").build(True, resolution=16, channels=1, width=4)     # other widths
    with pytest.raises(CheckpointError, match="does not fit these models"):
        Trainer(G, D, batch_size=8, device="cpu").load(tmp_path / "s.pt")


def test_trainer_arguments_and_data_get_one_line_errors():
    import numpy as np
    from torch import nn

    G, D, _ = get_variant("dcgan").build(debug=True)          # 1x32x32 images
    with pytest.raises(ConfigError, match="G must be a torch.nn.Module instance \\(got function\\)"):
        Trainer(lambda z: z, D, z_dim=8, device="cpu")
    with pytest.raises(ConfigError, match="D must be a torch.nn.Module instance \\(got the class Linear\\)"):
        Trainer(G, nn.Linear, device="cpu")
    for bs in (0, -4, True, 2.5):
        with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
            Trainer(G, D, batch_size=bs, device="cpu")
    with pytest.raises(ConfigError, match="lr_d must be a positive number"):
        Trainer(G, D, lr_d="2e-4", device="cpu")
    with pytest.raises(ConfigError, match="needs penalty_weight > 0"):
        Trainer(G, D, loss="wasserstein", penalty="wgan-gp", device="cpu")
    # batch 1: BatchNorm2d on 4x4 maps still has 16 values per channel (pix2pix trains so); BatchNorm1d has one
    Trainer(G, D, batch_size=1, device="cpu").fit(torch.rand(4, 1, 32, 32) * 2 - 1, 1)
    mlp_g = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh())
    with pytest.raises(ConfigError, match="batch_size 1 gives G.1, a BatchNorm, one value per channel"):
        Trainer(mlp_g, nn.Linear(16, 1), z_dim=8, batch_size=1, device="cpu")
    Trainer(G, D, batch_size=np.int64(4), lr_g=np.float32(1e-4), device="cpu")     # numpy scalars are numbers too
    t = Trainer(G, D, batch_size=4, device="cpu")
    with pytest.raises(ConfigError, match=r"images of shape \(1, 64, 64\) but G makes \(1, 32, 32\)"):
        t.fit(torch.rand(16, 1, 64, 64) * 2 - 1, 1)
    with pytest.raises(ConfigError, match="torch.uint8 pixels; convert them to floats in \\[-1, 1\\]"):
        Trainer(G, D, batch_size=4, device="cpu").fit(torch.randint(0, 255, (16, 1, 32, 32), dtype=torch.uint8), 1)
    with pytest.warns(UserWarning, match="image tensor spans \\[0, 255\\].*expected in \\[-1, 1\\]"):
        Trainer(G, D, batch_size=4, device="cpu").fit(torch.linspace(0, 255, 16 * 32 * 32).view(16, 1, 32, 32), 1)
    with pytest.raises(ConfigError, match="single images of shape \\(1, 32, 32\\), not batches"):
        Trainer(G, D, batch_size=4, device="cpu").fit(torch.utils.data.TensorDataset(torch.rand(8, 1, 32, 32)), 1)
    with pytest.raises(ConfigError, match=r"batches lack the fields \['images'\] this task reads"):
        Trainer(G, D, batch_size=4, device="cpu").fit([{"image": torch.rand(4, 1, 32, 32)}], 1)
    Trainer(G, D, batch_size=4, device="cpu").fit([{"images": torch.rand(4, 1, 32, 32) * 2 - 1}], 1)   # named fields
    once = (torch.rand(4, 1, 32, 32) * 2 - 1 for _ in range(2))
    with pytest.raises(ConfigError, match="ran out .*one-shot generator"):
        Trainer(G, D, batch_size=4, device="cpu").fit(once, 3)
    # float64 batches are cast to the models' dtype instead of failing deep in a conv
    Trainer(G, D, batch_size=4, device="cpu").fit([torch.rand(4, 1, 32, 32, dtype=torch.float64) * 2 - 1], 1)
    # an MLP G making (N, 16) trains on (N, 1, 4, 4) reals through a Flatten in D: same number of values
    mlp = Trainer(nn.Sequential(nn.Linear(8, 16), nn.Tanh()), nn.Sequential(nn.Flatten(), nn.Linear(16, 1)), z_dim=8,
                  batch_size=4, device="cpu")
    mlp.fit(torch.rand(8, 1, 4, 4) * 2 - 1, 1)


def test_a_callback_reading_stats_does_not_empty_fits_result():
    t = _seeded_trainer()
    out = t.fit(torch.rand(32, 1, 16, 16) * 2 - 1, 4, callback=lambda tr: tr.stats.read(), callback_every=2)
    assert {"loss_D", "loss_G", "img_per_s", "seconds"} <= set(out)


def test_checkpoint_files_get_ordinary_permissions(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "c.safetensors", {"G": torch.nn.Linear(2, 2)}, {})
        _seeded_trainer().save(tmp_path / "t.pt")
    finally:
        os.umask(old)
    for name in ("c.safetensors", "t.pt"):
        assert oct((tmp_path / name).stat().st_mode & 0o777) == "0o644"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]      # no temporary file left


def test_latent_shape_hint_works_both_ways():
    from torch import nn

    G = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Unflatten(1, (1, 4, 4)))
    D = nn.Sequential(nn.Flatten(), nn.Linear(16, 1))
    with pytest.raises(ConfigError, match=r"latents of shape \(4, 8, 1, 1\).*it runs with z_dim=8$"):
        Trainer(G, D, z_dim=(8, 1, 1), batch_size=4, device="cpu")


def test_an_interrupted_fit_resumes_its_stream_and_save_after_load_keeps_the_position(tmp_path):
    batches = [torch.rand(8, 1, 16, 16) * 2 - 1 for _ in range(4)]

    class Flaky:                                   # a data source whose 3rd read is interrupted once
        def __init__(self):
            self.reads = 0

        def __iter__(self):
            for b in batches:
                self.reads += 1
                if self.reads == 3:
                    raise KeyboardInterrupt
                yield b

    whole = _seeded_trainer()
    whole.fit(batches, 4)
    t = _seeded_trainer()
    data = Flaky()
    with pytest.raises(KeyboardInterrupt):
        t.fit(data, 4)
    assert t.batches_drawn == 2 and t.nimg == 16
    t.fit(data, 2)                                 # the same cell again: the stream is rebuilt past 2 batches
    assert torch.equal(_weights(t), _weights(whole))
    t.save(tmp_path / "a.pt")
    u = _seeded_trainer().load(tmp_path / "a.pt")
    u.save(tmp_path / "b.pt")                      # saved again before any step: still 4 batches in
    assert torch.load(tmp_path / "b.pt", weights_only=True)["batches_drawn"] == 4


def test_load_keeps_the_live_optimizers_implementation_flags(tmp_path):
    from fastgan.train.trainer import _load_optimizer_state

    p = torch.nn.Parameter(torch.randn(3))
    src = torch.optim.Adam([p], foreach=True)
    p.grad = torch.ones(3)
    src.step()
    q = torch.nn.Parameter(torch.randn(3))
    dst = torch.optim.Adam([q], capturable=True, foreach=False)
    _load_optimizer_state(dst, src.state_dict())
    g = dst.param_groups[0]
    assert g["capturable"] is True and g["foreach"] is False
    assert dst.state[q]["step"].dtype == torch.float32 and float(dst.state[q]["step"]) == 1.0


def test_fit_stream_survives_step_errors_and_new_data_starts_fresh(tmp_path):
    import numpy as np

    batches = [torch.rand(8, 1, 16, 16) * 2 - 1 for _ in range(4)]
    whole = _seeded_trainer()
    whole.fit(batches, 3)
    t = _seeded_trainer()

    def stop(tr):
        raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        t.fit(batches, 3, callback=stop, callback_every=1)      # the data stream itself is fine
    t.fit(batches, 2)                                            # ... and continues: batches 1 and 2
    assert torch.equal(_weights(t), _weights(whole)) and t.batches_drawn == 3
    with pytest.raises(ConfigError, match="images of shape"):    # other data: from its start, and checked
        t.fit([torch.rand(8, 1, 32, 32)], 1)
    assert t.stats.read()                                        # fit() left the user's accumulator alone
    # numpy learning rates are stored as floats: save() and load() round-trip them
    torch.manual_seed(0)
    G, D, _ = get_variant("dcgan").build(True, resolution=16, channels=1)
    u = Trainer(G, D, batch_size=8, lr_g=np.float32(1e-4), device="cpu")
    u.save(tmp_path / "np.pt")
    torch.manual_seed(0)
    G, D, _ = get_variant("dcgan").build(True, resolution=16, channels=1)
    Trainer(G, D, batch_size=8, lr_g=np.float32(1e-4), device="cpu").load(tmp_path / "np.pt")
    with pytest.raises(ConfigError, match=r"got 4\.0\)"):
        Trainer(G, D, batch_size=4.0, device="cpu")


def test_batch_one_check_sees_keyword_inputs():
    from torch import nn

    class G(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.bn = nn.Linear(4, 16), nn.BatchNorm1d(16)

        def forward(self, z):
            return torch.tanh(self.bn(input=self.fc(z)))

    with pytest.raises(ConfigError, match="batch_size 1 gives G.bn, a BatchNorm"):
        Trainer(G(), nn.Linear(16, 1), z_dim=4, batch_size=1, device="cpu")


def test_a_dataloader_with_another_batch_size_is_refused_up_front():
    G, D, _ = get_variant("dcgan").build(debug=True)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.rand(64, 1, 32, 32) * 2 - 1),
                                         batch_size=16)
    with pytest.raises(ConfigError, match="DataLoader makes batches of 16, the Trainer's batch_size is 8"):
        Trainer(G, D, batch_size=8, device="cpu").fit(loader, 1)
    Trainer(G, D, batch_size=16, device="cpu").fit(loader, 1)      # (images,) tuples of the right size train
