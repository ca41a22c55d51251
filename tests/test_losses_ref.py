"""The reference GAN objectives against their textbook formulas (float64)."""
import pytest
import torch

from fastgan import ops
from fastgan.errors import ConfigError, FastganError


def _sig(x):
    return 1 / (1 + torch.exp(-x))


def test_d_loss_nonsat_is_bce():
    r = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    f = torch.tensor([-3.0, 0.0, 1.5], dtype=torch.float64)
    want = -torch.log(_sig(r)).mean() - torch.log(1 - _sig(f)).mean()
    torch.testing.assert_close(ops.d_loss(r, f, "nonsat", impl="ref").double(), want)
    # one-sided label smoothing: real target 0.9
    t = 0.9
    want_s = -(t * torch.log(_sig(r)) + (1 - t) * torch.log(1 - _sig(r))).mean() - torch.log(1 - _sig(f)).mean()
    torch.testing.assert_close(ops.d_loss(r, f, "nonsat", smooth=0.1, impl="ref").double(), want_s, rtol=1e-6, atol=1e-6)


def test_g_losses():
    f = torch.tensor([-3.0, 0.0, 1.5], dtype=torch.float64)
    torch.testing.assert_close(ops.g_loss(f, "nonsat", impl="ref").double(), -torch.log(_sig(f)).mean())
    torch.testing.assert_close(ops.g_loss(f, "minimax", impl="ref").double(), torch.log(1 - _sig(f)).mean())
    torch.testing.assert_close(ops.g_loss(f, "hinge", impl="ref").double(), -f.mean())
    torch.testing.assert_close(ops.g_loss(f, "wasserstein", impl="ref").double(), -f.mean())
    torch.testing.assert_close(ops.g_loss(f, "lsgan", impl="ref").double(), 0.5 * ((f - 1) ** 2).mean())


def test_d_losses_hinge_wasserstein_lsgan():
    r = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    f = torch.tensor([-3.0, 0.0, 1.5], dtype=torch.float64)
    torch.testing.assert_close(ops.d_loss(r, f, "hinge").double(), torch.relu(1 - r).mean() + torch.relu(1 + f).mean())
    torch.testing.assert_close(ops.d_loss(r, f, "wasserstein").double(), f.mean() - r.mean())
    torch.testing.assert_close(ops.d_loss(r, f, "lsgan").double(), 0.5 * ((r - 1) ** 2).mean() + 0.5 * (f ** 2).mean())


def test_softplus_forms_are_stable_for_large_logits():
    big = torch.tensor([1e4, -1e4])
    for kind in ("nonsat", "minimax"):
        assert torch.isfinite(ops.d_loss(big, big, kind)).all()
        assert torch.isfinite(ops.g_loss(big, kind)).all()
    assert ops.g_loss(torch.tensor([-1e4]), "nonsat").item() == pytest.approx(1e4)


def test_penalties():
    g = torch.tensor([[3.0, 4.0], [0.0, 1.0]], dtype=torch.float64)  # norms 5 and 1
    torch.testing.assert_close(ops.grad_penalty(g, "wgan-gp").double(), torch.tensor((16.0 + 0.0) / 2, dtype=torch.float64))
    torch.testing.assert_close(ops.grad_penalty(g, "r1").double(), torch.tensor((25.0 + 1.0) / 2, dtype=torch.float64))


def test_unknown_names_raise_one_line_errors():
    x = torch.zeros(2)
    for call in (lambda: ops.d_loss(x, x, "bce"), lambda: ops.grad_penalty(x[:, None], "r3"),
                 lambda: ops.bias_act(x, act="softsign")):
        with pytest.raises(ConfigError) as e:
            call()
        assert "\n" not in str(e.value)


def test_impl_switch(monkeypatch):
    assert ops.get_impl() in ops.IMPLS
    with ops.use_impl("ref"):
        assert ops.get_impl() == "ref"
        assert ops.resolve_impl(None, torch.zeros(1)) == "ref"
    monkeypatch.setenv("FASTGAN_IMPL", "bogus")
    with pytest.raises(FastganError, match="FASTGAN_IMPL"):
        ops.get_impl()
    monkeypatch.setenv("FASTGAN_IMPL", "auto")
    if not torch.cuda.is_available():
        assert ops.resolve_impl(None, torch.zeros(1)) == "ref"  # auto picks the reference on CPU
    # use_impl overrides FASTGAN_IMPL inside the block only; an explicit impl= overrides both.
    monkeypatch.setenv("FASTGAN_IMPL", "ref")
    with ops.use_impl("auto"):
        assert ops.get_impl() == "auto"
        assert ops.resolve_impl("ref", torch.zeros(1)) == "ref"
    assert ops.get_impl() == "ref"
    assert ops.resolve_impl(None, torch.zeros(1)) == "ref"
    with pytest.raises(FastganError, match="unknown impl"):
        ops.resolve_impl("fast", torch.zeros(1))
