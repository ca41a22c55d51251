"""Every task's debug flavour on CPU: eager and compiled training, compile against eager, sampling, bad input.

Plus a test-only two-domain task (two generators, two discriminators, an unpaired A/B batch: CycleGAN's
shape) that trains in eager and compile mode on the unchanged engine.
"""
import pytest
import torch
from torch import nn

import fastgan
from fastgan.data import ImageDataset
from fastgan.errors import ConfigError
from fastgan.tasks import Forward, Nets, Noise, Objective, OptimizerSpec, Task, Term, Update
from fastgan.tasks.terms import cycle_loss, mutual_information_loss, scores

pytestmark = pytest.mark.usefixtures("one_thread")

NEW = ("cgan", "acgan", "projection", "infogan")


def _labelled(n=64, res=16, seed=0) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, res, res, generator=g) * 2 - 1
    y = torch.randint(0, 10, (n,), generator=g)
    return ImageDataset("toy", x, y, 10, [str(i) for i in range(10)])


def _make(variant, mode, **kw):
    tr = fastgan.create(variant, flavor="debug", resolution=16, channels=1, seed=0, batch_size=8, device="cpu",
                        mode=mode, **kw)
    for opt in tr.optimizers.values():         # see tests/test_engine.py: keeps the comparison about the engine
        for group in opt.param_groups:
            if "eps" in group:
                group["eps"] = 1e-5
    return tr


def _params(tr):
    return {f"{n}.{k}": v.detach().clone() for n, m in tr.nets.items() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("variant", NEW)
def test_new_variant_trains_and_samples_on_cpu(variant):
    tr = _make(variant, "eager")
    before = _params(tr)
    out = tr.fit(_labelled(), 3)
    assert out["nonfinite"] == 0.0 and all(v == v for v in out.values())
    after = _params(tr)
    for name in tr.task.trained():            # every trained network moved
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(name + ".")), name
    x = tr.sample(6, labels=[0, 1, 2, 3, 4, 5])
    assert x.shape == (6, 1, 16, 16) and x.min() >= -1 and x.max() <= 1 and torch.isfinite(x).all()
    torch.testing.assert_close(x, tr.sample(6, labels=[0, 1, 2, 3, 4, 5]))   # fixed noise
    assert not torch.equal(tr.sample(6, labels=0), tr.sample(6, labels=9))     # the class changes the images


@pytest.mark.parametrize("variant", NEW)
def test_new_variant_compiled_matches_eager_over_3_steps(variant):
    ds = _labelled()
    runs = {}
    for mode in ("eager", "compile"):
        tr = _make(variant, mode)
        torch.manual_seed(1)
        stats = []
        for _ in range(3):
            tr.fit(ds, 1)
            stats.append(tr.stats.read())
        runs[mode] = (tr, stats)
    (te, se), (tc, sc) = runs["eager"], runs["compile"]
    assert tc.mode == "compile" and tc.engine.fallback_reason is None
    for a, b in zip(se, sc):
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=2e-4, abs=4e-4), k
    pe, pc = _params(te), _params(tc)
    for k in pe:
        torch.testing.assert_close(pc[k].float(), pe[k].float(), rtol=2e-4, atol=4e-4, msg=k)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", NEW)
def test_new_variant_graphs_match_eager_on_gpu(variant):
    ds = _labelled()
    runs = {}
    for mode in ("eager", "graphs"):
        tr = fastgan.create(variant, flavor="debug", resolution=16, channels=1, seed=0, batch_size=8, device="cuda",
                            mode=mode, precision="fp32")
        torch.manual_seed(1)
        runs[mode] = [tr.fit(ds, 1) for _ in range(3)], tr
    assert runs["graphs"][1].engine.captures >= 1
    for a, b in zip(runs["eager"][0], runs["graphs"][0]):
        assert b["loss_D"] == pytest.approx(a["loss_D"], rel=2e-3, abs=2e-3)
        assert b["loss_G"] == pytest.approx(a["loss_G"], rel=2e-3, abs=2e-3)


def test_conditional_bad_input_is_one_line():
    tr = _make("acgan", "eager")
    unlabelled = ImageDataset("plain", torch.rand(32, 1, 16, 16) * 2 - 1, None, 0, [])
    with pytest.raises(ConfigError, match="conditional .* has no labels; use a labelled dataset"):
        tr.fit(unlabelled, 1)
    bad = _labelled()
    bad.labels[3] = 12
    with pytest.raises(ConfigError, match=r"labels must lie in 0\.\.9 .*got min 0, max 12"):
        _make("cgan", "eager").fit(bad, 1)
    with pytest.raises(ConfigError, match="this run is conditional: pass labels="):
        tr.sample(4)
    with pytest.raises(ConfigError, match=r"labels must lie in 0\.\.9"):
        tr.sample(4, labels=10)
    with pytest.raises(ConfigError, match="got 3 labels for 4 images"):
        tr.sample(4, labels=[1, 2, 3])
    with pytest.raises(ConfigError, match="batches carry no labels"):
        _make("cgan", "eager").fit([torch.rand(8, 1, 16, 16) * 2 - 1], 1)
    with pytest.raises(ConfigError, match="unconditional; num_classes applies"):
        fastgan.create("dcgan", num_classes=10)


class _CondG(nn.Module):
    def __init__(self, z=8, k=10):
        super().__init__()
        self.z_dim, self.embed, self.net = z, nn.Embedding(k, 4), nn.Sequential(nn.Linear(z + 4, 64), nn.Tanh())

    def forward(self, z, labels):
        return self.net(torch.cat([z, self.embed(labels)], 1)).view(-1, 1, 8, 8)


class _CondD(nn.Module):
    def __init__(self, k=10):
        super().__init__()
        self.embed, self.net = nn.Embedding(k, 64), nn.Linear(64, 1)

    def forward(self, x, labels):
        h = x.flatten(1)
        return self.net(h) + (self.embed(labels) * h).sum(1, keepdim=True)


def test_a_users_own_conditional_pair_trains_from_image_label_batches():
    G, D = _CondG(), _CondD()
    with pytest.raises(ConfigError, match="it takes labels too: pass num_classes=K"):
        fastgan.Trainer(G, D, batch_size=4, device="cpu")
    tr = fastgan.Trainer(G, D, num_classes=10, batch_size=4, device="cpu")
    batches = [(torch.rand(4, 1, 8, 8) * 2 - 1, torch.randint(0, 10, (4,))) for _ in range(3)]
    out = tr.fit(batches, 3)
    assert out["nonfinite"] == 0.0
    assert tr.sample(5, labels=2).shape == (5, 1, 8, 8)
    with pytest.raises(ConfigError, match="G failed on latents .* a conditional G must take \\(z, labels\\)"):
        fastgan.Trainer(nn.Sequential(nn.Linear(8, 64), nn.Tanh()), D, num_classes=10, z_dim=8, batch_size=4,
                        device="cpu")


def test_infogan_codes_steer_samples_and_its_q_head_trains():
    tr = _make("infogan", "eager")
    q0 = [p.detach().clone() for p in tr.nets["Q"].parameters()]
    tr.fit(_labelled(), 2)
    assert any(not torch.equal(a, b) for a, b in zip(q0, tr.nets["Q"].parameters()))
    a, b = tr.sample(4, labels=1), tr.sample(4, labels=7)
    assert not torch.equal(a, b)
    c = tr.sample(4, labels=1, continuous=[0.5, -0.5])
    assert not torch.equal(a, c)


def test_infogan_runs_its_reference_codes_settings_and_refuses_an_unknown_prior():
    """openai/InfoGAN's MNIST run: uniform(-1, 1) noise, unit-variance Q for the continuous codes, λ = 1 for both;
    the sampled z follows the same prior as the training noise."""
    from fastgan.tasks.infogan import InfoGanTask

    tr = _make("infogan", "eager")
    t = tr.task
    assert (t.z_prior, t.learned_std, t.cont_weight, t.info_weight) == ("uniform", False, 1.0, 1.0)
    assert t.noise()["z"] == Noise("uniform", t.z_shape, low=-1.0, high=1.0)
    z, _ = t.sample_inputs(256, torch.Generator().manual_seed(0))
    assert -1 <= float(z.min()) and float(z.max()) < 1 and float(z.std()) < 0.7    # not N(0, 1)
    with pytest.raises(ConfigError, match="z_prior must be 'normal' or 'uniform'"):
        InfoGanTask(*(tr.nets[k] for k in ("G", "D", "Q")), cfg=t.cfg, z_prior="gaussian")


def test_mutual_information_loss_matches_torch_distributions():
    """The MI bound against its reference twin: cross entropy + the Normal log-likelihood of torch.distributions,
    with Q's learned variance and with unit variance (the reference code's fix_std=True, logvar=None)."""
    torch.manual_seed(0)
    logits, cat = torch.randn(6, 2, 5), torch.randint(0, 5, (6, 2))
    mean, logvar, cont = torch.randn(6, 3), torch.randn(6, 3), torch.rand(6, 3) * 2 - 1
    ce = torch.distributions.Categorical(logits=logits).log_prob(cat).mean() * -1
    for lv in (logvar, None):
        std = torch.ones_like(mean) if lv is None else torch.exp(0.5 * lv)
        nll = -torch.distributions.Normal(mean, std).log_prob(cont).sum(1).mean()
        total, stats = mutual_information_loss(logits, cat, mean, lv, cont, cont_weight=0.3)
        torch.testing.assert_close(stats["mi_cat"], ce)
        torch.testing.assert_close(stats["mi_cont"], nll)
        torch.testing.assert_close(total, ce + 0.3 * nll)


# -- a toy two-domain task: CycleGAN's shape, defined here only --------------------------------------------------
class ToyCycleTask(Task):
    """G_AB: A → B and G_BA: B → A with discriminators D_A, D_B on an unpaired {A, B} batch; least-squares
    adversarial terms plus λ·cycle consistency; the G update (both generators) runs before the D update
    (both discriminators), on the fakes of one shared forward, as in CycleGAN."""

    batch_fields = ("A", "B")
    ema = ("G_AB",)
    generator = "G_AB"

    def __init__(self, lam=10.0):
        def gen():
            return nn.Sequential(nn.Conv2d(1, 4, 3, 1, 1), nn.ReLU(), nn.Conv2d(4, 1, 3, 1, 1), nn.Tanh())

        def disc():
            return nn.Sequential(nn.Conv2d(1, 4, 4, 2, 1), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(4 * 4 * 4, 1))

        self.nets = {"G_AB": gen(), "G_BA": gen(), "D_A": disc(), "D_B": disc()}
        self.objective, self.lam = Objective("lsgan"), lam

    def optimizers(self):
        return {n: OptimizerSpec("adam", 2e-4, (0.5, 0.999)) for n in self.nets}

    def schedule(self):
        return [Forward("G_forward", self._translate, nets=("G_AB", "G_BA")),
                Update("G", ("G_AB", "G_BA"), (Term("G_loss", self._g),)),
                Update("D", ("D_A", "D_B"), (Term("D_loss", self._d),))]

    @staticmethod
    def _translate(nets: Nets, b):
        fake_b, fake_a = nets.G_AB(b["A"]), nets.G_BA(b["B"])
        return {"fake_A": fake_a, "fake_B": fake_b, "rec_A": nets.G_BA(fake_b), "rec_B": nets.G_AB(fake_a)}

    def _g(self, nets: Nets, b):
        n = b["A"].shape[0]
        adv = (self.objective.g_loss(scores(nets.D_B(b["fake_B"]), n)) +
               self.objective.g_loss(scores(nets.D_A(b["fake_A"]), n)))
        cyc = cycle_loss(b["A"], b["rec_A"]) + cycle_loss(b["B"], b["rec_B"])
        return adv + self.lam * cyc, {"loss_G": adv.detach(), "cycle": cyc.detach()}

    def _d(self, nets: Nets, b):
        n = b["A"].shape[0]
        la, _ = self.objective.d_loss(scores(nets.D_A(b["A"]), n), scores(nets.D_A(b["fake_A"]), n))
        lb, _ = self.objective.d_loss(scores(nets.D_B(b["B"]), n), scores(nets.D_B(b["fake_B"]), n))
        return la + lb, {"loss_D": (la + lb).detach()}

    def sample_inputs(self, n, generator, A=None, **conditions):
        return (torch.rand(n, 1, 8, 8, generator=generator) * 2 - 1 if A is None else A,)

    def probe(self, batch, device):
        x = torch.zeros(batch, 1, 8, 8, device=device)
        for g, d in (("G_AB", "D_B"), ("G_BA", "D_A")):
            self.nets[d](self.nets[g](x))
        return x.shape[1:]


def _two_domains(steps=3, n=4):
    from fastgan.data import UnpairedLoader

    g = torch.Generator().manual_seed(0)
    a = ImageDataset("A", torch.rand(16, 1, 8, 8, generator=g) * 2 - 1, None, 0, [])
    b = ImageDataset("B", -(torch.rand(24, 1, 8, 8, generator=g) * 2 - 1).abs(), None, 0, [])
    return UnpairedLoader(a, b, n, "cpu", seed=0)


def test_a_two_domain_task_trains_in_eager_and_compile_on_the_same_engine():
    runs = {}
    for mode in ("eager", "compile"):
        torch.manual_seed(0)
        tr = fastgan.Trainer(task=ToyCycleTask(), batch_size=4, device="cpu", mode=mode)
        before = _params(tr)
        torch.manual_seed(1)
        out = tr.fit(_two_domains(), 3)
        after = _params(tr)
        assert out["nonfinite"] == 0.0 and out["cycle"] > 0
        for name in tr.nets:
            assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(name + ".")), name
        runs[mode] = after
        assert tr.engine.phase_names() == ["G_forward", "G_loss", "G_loss_backward", "G_step", "D_loss",
                                           "D_loss_backward", "D_step", "G_AB_ema"]
        assert tr.sample(3).shape == (3, 1, 8, 8)
    for k in runs["eager"]:
        torch.testing.assert_close(runs["compile"][k], runs["eager"][k], rtol=2e-4, atol=4e-4, msg=k)


def test_a_task_author_error_names_the_unknown_network():
    class Broken(ToyCycleTask):
        def schedule(self):
            return [Update("G", ("G_XY",), (Term("G_loss", self._g),))]

    with pytest.raises(ConfigError, match=r"update 'G' trains \['G_XY'\]"):
        fastgan.Trainer(task=Broken(), batch_size=4, device="cpu")


def test_noise_kinds_draw_the_declared_shapes():
    d = torch.device("cpu")
    assert Noise("normal", (3, 1, 1)).draw(5, d).shape == (5, 3, 1, 1)
    c = Noise("categorical", (2,), classes=4).draw(50, d)
    assert c.shape == (50, 2) and c.dtype == torch.int64 and 0 <= int(c.min()) and int(c.max()) < 4
    u = Noise("uniform", (2,), low=-1, high=1).draw(100, d)
    assert u.shape == (100, 2) and -1 <= float(u.min()) and float(u.max()) < 1
