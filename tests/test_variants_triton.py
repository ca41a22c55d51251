"""Every registered variant trains through the Triton kernels exactly as through the reference.

The op tests check each kernel alone; the engine tests check compile/graphs against eager on the
reference path. This is the product of the two: ``fastgan.Trainer`` steps of each variant (conditional and InfoGAN ones included) with
``impl="triton"`` (the interpreter on CPU, real kernels on CUDA) against ``impl="ref"``: the same
losses step by step and the same weights, penalties (WGAN-GP, lazy R1) and multi-critic schedules
included. It is the test that would have caught a penalty that crashes only on the fast path.
"""
import pytest
import torch

import fastgan
from fastgan import list_variants
from fastgan.ops import use_impl

pytestmark = pytest.mark.usefixtures("one_thread", "no_tf32")


def _run(spec, impl: str, steps: int, device, mode: str = "eager") -> tuple[list[dict], dict]:
    t = fastgan.create(spec.name, resolution=16, channels=1, width=4, z_dim=8, seed=0, batch_size=4, device=device,
                       mode=mode, precision="fp32", num_classes=10 if spec.conditional else None)
    # eps 1e-5 (not 1e-8): Adam turns rounding-level differences in near-zero gradients into whole-lr
    # updates, which would make the comparison measure Adam's conditioning instead of the kernels.
    for opt in t.optimizers.values():
        for group in opt.param_groups:
            if "eps" in group:
                group["eps"] = 1e-5
    g = torch.Generator().manual_seed(1)
    losses = []
    with use_impl(impl):
        for _ in range(steps):
            t.step(lambda: t.prepare((torch.rand(4, 1, 16, 16, generator=g) * 2 - 1,
                                      torch.randint(0, 10, (4,), generator=g))))
            losses.append(t.stats.read())
    assert t.mode == mode, t.mode_reason
    weights = {f"{net}.{n}": p.detach().cpu() for net, m in t.nets.items() for n, p in m.named_parameters()}
    return losses, weights


def _assert_same_run(fast_losses, fast_w, ref_losses, ref_w):
    for step, (f, r) in enumerate(zip(fast_losses, ref_losses)):
        assert f.keys() == r.keys() and not f["nonfinite"]
        for k in r:
            assert f[k] == pytest.approx(r[k], rel=1e-4, abs=1e-5), f"step {step} {k}: {f[k]} vs {r[k]}"
    for n in ref_w:
        torch.testing.assert_close(fast_w[n], ref_w[n], rtol=1e-4, atol=1e-5, msg=n)


@pytest.mark.parametrize("name", [s.name for s in list_variants()])
def test_variant_trains_the_same_through_the_kernels(name, device):
    spec = next(s for s in list_variants(name) if s.name == name)
    _assert_same_run(*_run(spec, "triton", 2, device), *_run(spec, "ref", 2, device))


@pytest.mark.parametrize("name", ["dcgan", "wgan-gp"])
def test_compiled_step_through_the_kernels_matches_eager(name, device):
    """The compiled phases trace the kernels' custom ops (no graph breaks) and compute the same steps."""
    spec = next(s for s in list_variants(name) if s.name == name)
    _assert_same_run(*_run(spec, "triton", 2, device, mode="compile"), *_run(spec, "triton", 2, device))
