"""Shapes, ranges, gradients and one-line errors of the conditional (cGAN/AC-GAN/projection) and InfoGAN networks."""
import copy

import pytest
import torch

from fastgan.errors import ConfigError
from fastgan.models import FAMILIES, conditional, infogan

N = 3
GRID = [(r, c) for r in (16, 32, 64) for c in (1, 3)]
TINY = dict(width=8, max_width=16)  # CPU-sized stacks


def _labels(cfg, n=N):
    return torch.randint(cfg.num_classes, (n,))


def _assert_all_grads(*modules):
    for m in modules:
        for name, p in m.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{type(m).__name__}.{name} got no gradient"


# conditional ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("resolution,channels", GRID)
def test_conditional_generator_shapes_and_range(resolution, channels):
    torch.manual_seed(0)
    cfg = conditional.Config(resolution=resolution, channels=channels, **TINY, z_dim=16)
    G = conditional.Generator(cfg)
    assert (G.z_dim, G.num_classes) == (16, 10)
    x = G(torch.randn(N, G.z_dim), _labels(cfg))
    assert x.shape == (N, channels, resolution, resolution) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1  # tanh
    x.square().mean().backward()
    _assert_all_grads(G)


@pytest.mark.parametrize("d_kind", conditional.D_KINDS)
@pytest.mark.parametrize("resolution,channels", GRID)
def test_conditional_discriminator_shapes_and_grads(d_kind, resolution, channels):
    torch.manual_seed(0)
    cfg = conditional.Config(resolution=resolution, channels=channels, **TINY, num_classes=5, d_kind=d_kind)
    D = conditional.Discriminator(cfg)
    assert isinstance(D, conditional.DISCRIMINATORS[d_kind])
    x, y = torch.randn(N, channels, resolution, resolution), _labels(cfg)
    out = D(x, y)  # labels passed uniformly to every kind
    if d_kind == "acgan":
        logits, class_logits = out
        assert class_logits.shape == (N, 5) and class_logits.dtype == torch.float32
        torch.testing.assert_close(D(x)[0], logits)  # labels are optional and ignored
        loss = logits.sum() + class_logits.square().sum()
    else:
        logits = out
        loss = logits.sum()
    assert logits.shape == (N,) and logits.dtype == torch.float32
    loss.backward()
    _assert_all_grads(D)  # for projection this includes the class embedding


def test_projection_parts_sum_to_logits_and_follow_the_label():
    torch.manual_seed(0)
    cfg = conditional.Config(resolution=16, width=8, num_classes=4, d_kind="projection", d_norm="none")
    D = conditional.Discriminator(cfg)
    x = torch.randn(N, 1, 16, 16)
    y0, y1 = torch.zeros(N, dtype=torch.long), torch.ones(N, dtype=torch.long)
    realness, match = D.parts(x, y0)
    assert realness.shape == match.shape == (N,)
    torch.testing.assert_close(D(x, y0), realness + match)
    phi = D.blocks(x).sum(dim=(2, 3))  # the contract: phi is the sum-pooled trunk output
    torch.testing.assert_close(match, phi @ D.embed.weight[0])
    r1, m1 = D.parts(x, y1)
    torch.testing.assert_close(r1, realness)  # the realness part does not see the label
    assert not torch.allclose(m1, match)


def test_concat_discriminator_output_depends_on_label():
    torch.manual_seed(0)
    D = conditional.Discriminator(conditional.Config(resolution=16, width=8, d_norm="none"))
    x = torch.randn(N, 1, 16, 16)
    assert not torch.allclose(D(x, torch.zeros(N, dtype=torch.long)), D(x, torch.full((N,), 7)))


def test_generator_output_depends_on_label_and_embed_dim():
    torch.manual_seed(0)
    G = conditional.Generator(conditional.Config(resolution=16, width=8, embed_dim=4)).eval()
    assert G.embed.weight.shape == (10, 4)
    z = torch.randn(N, G.z_dim)
    assert not torch.allclose(G(z, torch.zeros(N, dtype=torch.long)), G(z, torch.ones(N, dtype=torch.long)))


@pytest.mark.parametrize("bad,match", [
    (None, "pass labels"),
    (torch.zeros(N), "integer class indices"),
    (torch.zeros(N + 1, dtype=torch.long), r"shape \(3,\)"),
    (torch.zeros(N, 1, dtype=torch.long), r"shape \(3,\)"),
    (torch.tensor([0, 1, 10]), r"\[0, 10\)"),
    (torch.tensor([0, -1, 2]), r"\[0, 10\)"),
])
@pytest.mark.parametrize("net", ["G", "concat", "projection"])
def test_label_errors_are_one_line_config_errors(net, bad, match):
    cfg = conditional.Config(resolution=16, width=8, d_kind="concat" if net == "G" else net)
    if net == "G":
        call = lambda: conditional.Generator(cfg)(torch.randn(N, cfg.z_dim), bad)  # noqa: E731
    else:
        call = lambda: conditional.Discriminator(cfg)(torch.randn(N, 1, 16, 16), bad)  # noqa: E731
    with pytest.raises(ConfigError, match=match) as e:
        call()
    assert "\n" not in str(e.value)


def test_check_labels_standalone_and_range_skip():
    conditional.check_labels(torch.tensor([0, 9]), 10, 2)
    conditional.check_labels(torch.tensor([0, 1], dtype=torch.int32), 2)
    conditional.check_labels(torch.tensor([0, 99]), 10, 2, check_range=False)  # static checks only
    with pytest.raises(ConfigError, match="num_classes=100"):
        conditional.check_labels(torch.tensor([0, 99]), 10)


def test_forward_traces_without_graph_breaks():
    torch._dynamo.reset()
    cfg = conditional.Config(resolution=16, width=8, z_dim=8, d_kind="projection")
    G, D = conditional.Generator(cfg), conditional.Discriminator(cfg)
    z, y = torch.randn(N, 8), _labels(cfg)
    x = torch.compile(G, backend="eager", fullgraph=True)(z, y)
    torch.testing.assert_close(x, G(z, y))
    torch.testing.assert_close(torch.compile(D, backend="eager", fullgraph=True)(x, y), D(x, y))


@pytest.mark.parametrize("kw,match", [
    (dict(d_kind="hinge"), "d_kind"),
    (dict(num_classes=1), "num_classes >= 2"),
    (dict(num_classes=0), "num_classes >= 2"),
    (dict(resolution=24), "resolution"),
    (dict(resolution=512), "resolution"),
    (dict(embed_dim=0), "embed_dim"),
    (dict(d_norm="group"), "d_norm"),
])
def test_conditional_config_validation(kw, match):
    with pytest.raises(ConfigError, match=match) as e:
        conditional.Config(**kw)
    assert "\n" not in str(e.value)


def test_conditional_widths_follow_dcgan():
    cfg = conditional.Config(resolution=64, width=64)
    assert cfg.widths() == [512, 256, 128, 64] and cfg.feat_dim == 512 and cfg.label_dim == 10


# InfoGAN -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("resolution,channels", GRID)
def test_infogan_shapes_and_grads(resolution, channels):
    torch.manual_seed(0)
    cfg = infogan.Config(resolution=resolution, channels=channels, **TINY, z_dim=8, num_categorical=2,
                         categorical_dim=3, num_continuous=2, q_hidden=16)
    G, D, Q = infogan.Generator(cfg), infogan.Discriminator(cfg), infogan.QHead(cfg)
    assert G.code_dim == cfg.code_dim == 2 * 3 + 2
    codes, cat, cont = infogan.sample_codes(cfg, N)
    assert codes.shape == (N, 8) and cat.shape == (N, 2) and cont.shape == (N, 2)
    x = G(torch.randn(N, cfg.z_dim), codes)
    assert x.shape == (N, channels, resolution, resolution) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    logits, feats = D(x)
    assert logits.shape == (N,) and feats.shape == (N, cfg.feat_dim) == (N, cfg.widths()[0] * 16)
    cat_logits, mean, logvar = Q(feats)
    assert cat_logits.shape == (N, 2, 3) and mean.shape == logvar.shape == (N, 2)
    (logits.sum() + cat_logits.square().sum() + mean.square().sum() + logvar.square().sum()).backward()
    _assert_all_grads(G, D, Q)


def test_infogan_codes_layout_and_degenerate_code_sets():
    cfg = infogan.Config(resolution=16, width=8, num_categorical=2, categorical_dim=3, num_continuous=1)
    codes = infogan.make_codes(cfg, torch.tensor([[2, 0]]), torch.tensor([[0.5]]))
    torch.testing.assert_close(codes, torch.tensor([[0, 0, 1, 1, 0, 0, 0.5]]))
    for kw, shapes in [(dict(num_categorical=0), ((N, 0, 10), (N, 2))), (dict(num_continuous=0), ((N, 1, 10), (N, 0)))]:
        cfg = infogan.Config(resolution=16, width=8, q_hidden=8, **kw)
        codes, _, _ = infogan.sample_codes(cfg, N)
        _, feats = infogan.Discriminator(cfg)(infogan.Generator(cfg)(torch.randn(N, cfg.z_dim), codes))
        cat_logits, mean, logvar = infogan.QHead(cfg)(feats)
        assert (cat_logits.shape, mean.shape) == shapes and logvar.shape == mean.shape


def test_infogan_generator_code_errors():
    G = infogan.Generator(infogan.Config(resolution=16, width=8))
    z = torch.randn(N, G.z_dim)
    for bad, match in [(None, "needs latent codes"), (torch.zeros(N), r"shape \(3, 12\)"),
                       (torch.zeros(N, 11), r"shape \(3, 12\)"), (torch.zeros(N + 1, 12), r"shape \(3, 12\)")]:
        with pytest.raises(ConfigError, match=match) as e:
            G(z, bad)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("kw,match", [
    (dict(num_categorical=0, num_continuous=0), "needs a latent code"),
    (dict(num_categorical=-1), "num_categorical"),
    (dict(categorical_dim=1), "categorical_dim"),
    (dict(resolution=48), "resolution"),
    (dict(q_hidden=0), "q_hidden"),
])
def test_infogan_config_validation(kw, match):
    with pytest.raises(ConfigError, match=match) as e:
        infogan.Config(**kw)
    assert "\n" not in str(e.value)


# both ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["conditional", "infogan"])
def test_families_registered_and_deepcopyable(family):
    fam = FAMILIES[family]
    cfg = fam.Config(resolution=16, width=8)
    for net in (fam.Generator(cfg), fam.Discriminator(cfg)):
        twin = copy.deepcopy(net)  # EMA copies
        assert twin.state_dict().keys() == net.state_dict().keys()
