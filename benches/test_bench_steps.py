"""End-to-end training iterations under pytest-benchmark (CPU-sized; runs anywhere).

    python -m pytest benches/test_bench_steps.py --benchmark-only
    python -m pytest benches/ --benchmark-only --benchmark-json=bench.json   # machine-readable

The same tiny DCGAN (16px, width 8, batch 16) as (a) the PyTorch DCGAN tutorial loop in eager
fp32 (fastgan.bench.baselines) and (b) ``fastgan.Trainer`` in eager mode. pytest-benchmark
records min/median/IQR and the machine; the GPU matrix lives in ``fastgan bench`` and
scripts/gpu_bench.py.
"""
import pytest
import torch

import fastgan
from fastgan.bench.baselines import TutorialStep
from fastgan.variants import get_variant

RES, WIDTH, BATCH = 16, 8, 16


def _case(variant: str):
    spec = get_variant(variant)
    cfg = spec.model_config(False, resolution=RES, channels=3, width=WIDTH)
    g = torch.Generator().manual_seed(0)
    real = torch.rand(BATCH, 3, RES, RES, generator=g) * 2 - 1
    return spec, cfg, real


def _run(benchmark, step, real):
    step(lambda: real)                    # first call outside the timing (allocations, lazy init)
    benchmark.pedantic(step, args=(lambda: real,), rounds=8, iterations=2, warmup_rounds=1)


@pytest.mark.parametrize("variant", ["dcgan", "wgan-gp"])
def test_step_eager_tutorial(benchmark, variant):
    spec, cfg, real = _case(variant)
    s = TutorialStep(spec, cfg, mode="eager-tutorial", device="cpu")
    benchmark.group = f"{variant} {RES}px width {WIDTH} batch {BATCH} (cpu)"
    benchmark.extra_info.update(mode="eager-tutorial", img_per_step=BATCH * spec.n_critic)
    _run(benchmark, s.step, real)


@pytest.mark.parametrize("variant", ["dcgan", "wgan-gp"])
def test_step_fastgan_trainer_eager(benchmark, variant):
    spec, cfg, real = _case(variant)
    G, D, _ = spec.build(False, resolution=RES, channels=3, width=WIDTH)
    o = spec.optim
    t = fastgan.Trainer(G, D, loss=spec.objective, n_critic=spec.n_critic, clip=spec.clip, optimizer=o.name,
                        lr_g=o.lr_g, lr_d=o.lr_d, betas=o.betas, batch_size=BATCH, device="cpu", mode="eager",
                        precision="fp32", seed=0)
    benchmark.group = f"{variant} {RES}px width {WIDTH} batch {BATCH} (cpu)"
    benchmark.extra_info.update(mode="fastgan eager", img_per_step=BATCH * spec.n_critic)
    _run(benchmark, t.step, real)
