import pytest
import torch
from torch import nn

from fastgan.errors import ConfigError
from fastgan.models import dcgan
from fastgan.nn import BatchNormAct2d, ConvNormAct
from fastgan.variants import get_variant, list_variants


@pytest.mark.parametrize("resolution", [32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_dcgan_shapes(resolution, channels):
    cfg = dcgan.Config(resolution=resolution, channels=channels, width=8)
    G, D = dcgan.Generator(cfg), dcgan.Discriminator(cfg)
    z = torch.randn(3, cfg.z_dim)
    x = G(z)
    assert x.shape == (3, channels, resolution, resolution)
    assert x.min() >= -1 and x.max() <= 1  # tanh output
    assert D(x).shape == (3,)


def test_dcgan_widths_double_toward_low_resolution():
    cfg = dcgan.Config(resolution=64, width=64)
    assert cfg.widths() == [512, 256, 128, 64]
    assert dcgan.Config(resolution=32, width=64).widths() == [256, 128, 64]


@pytest.mark.parametrize("bad", [0, 24, 48, 1000])
def test_dcgan_rejects_unbuildable_resolution(bad):
    with pytest.raises(ConfigError, match="resolution"):
        dcgan.Config(resolution=bad)


def test_conditional_generator_needs_labels():
    G = dcgan.Generator(dcgan.Config(width=8, num_classes=10))
    out = G(torch.randn(4, 100), torch.arange(4))
    assert out.shape == (4, 1, 32, 32)
    with pytest.raises(ConfigError, match="labels"):
        G(torch.randn(4, 100))


def test_batchnorm_act_state_dict_is_batchnorm2d():
    torch.manual_seed(0)
    ref = nn.BatchNorm2d(6)
    ours = BatchNormAct2d(6, act="relu")
    x = torch.randn(4, 6, 5, 5)
    for _ in range(3):
        ref(x)
    ours.load_state_dict(ref.state_dict())  # same keys, same buffers
    assert set(ours.state_dict()) == set(ref.state_dict())
    ref.eval(), ours.eval()
    torch.testing.assert_close(ours(x), torch.relu(ref(x)))
    # and training-mode running statistics follow nn.BatchNorm2d (incl. num_batches_tracked)
    ref.train(), ours.train()
    for _ in range(3):
        torch.testing.assert_close(ours(x), torch.relu(ref(x)))
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[k], v)


def test_batchnorm_act_cumulative_momentum():
    ref, ours = nn.BatchNorm2d(3, momentum=None), BatchNormAct2d(3, momentum=None)
    for i in range(4):
        x = torch.randn(5, 3, 2, 2) + i
        ref(x), ours(x)
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)


def test_convnormact_rejects_unknown_norm():
    with pytest.raises(ConfigError, match="norm"):
        ConvNormAct(3, 4, norm="group")


def test_every_variant_builds_debug_flavour_and_runs():
    for spec in list_variants():
        task, cfg = spec.make_task(debug=True)
        with torch.no_grad():
            shape = task.probe(2, torch.device("cpu"))     # G and D (and any other network) on a batch of 2
        assert tuple(shape) == (cfg.channels, cfg.resolution, cfg.resolution), spec.name


def test_list_variants_glob():
    names = [s.name for s in list_variants("wgan*")]
    assert names == ["wgan", "wgan-gp"]
    with pytest.raises(ConfigError, match="fastgan variants"):
        get_variant("nope")
