"""Data-parallel training on CPU: 2 processes over gloo, against each other and against one process.

- the ranks end with identical parameters (dcgan's debug flavour, per-rank BatchNorm on CPU);
- 2 ranks × batch 4 train what 1 process with batch 8 trains (a BatchNorm-free pair, so statistics cannot
  differ; a WGAN-GP penalty and two critic steps, so sharded data, sliced noise and the penalty's sliced
  interpolation weights are all exercised);
- a saved state resumes across ranks exactly.
"""
import os

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import fastgan
from fastgan.data import ImageDataset
from fastgan.train.distributed import DistContext, SyncBatchNormAct, shutdown, sync_batch_norms

WORLD = 2


def _mlp_pair():
    torch.manual_seed(0)
    G = nn.Sequential(nn.Linear(8, 32), nn.LeakyReLU(0.2), nn.Linear(32, 64), nn.Tanh(), nn.Unflatten(1, (1, 8, 8)))
    G.z_dim = 8
    D = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))
    return G, D


def _data(res: int = 8) -> ImageDataset:
    g = torch.Generator().manual_seed(3)
    return ImageDataset("toy", torch.rand(64, 1, res, res, generator=g) * 2 - 1, None, 0, [])


def _pair_trainer(dist=None):
    G, D = _mlp_pair()
    tr = fastgan.Trainer(G, D, loss="wasserstein", penalty="wgan-gp", penalty_weight=10.0, n_critic=2,
                         lr_g=1e-3, lr_d=1e-3, batch_size=8, device="cpu", seed=0, distributed=dist)
    # Adam's m/(sqrt(v)+eps) is ±lr for any gradient much larger than eps: with eps=1e-8 the rounding of a
    # mean taken in two halves (the ranks) flips near-zero gradients into whole-lr updates (tests/test_engine.py)
    for opt in tr.optimizers.values():
        for group in opt.param_groups:
            group["eps"] = 1e-5
    return tr


def _state(tr) -> dict:
    return {f"{n}.{k}": v.detach().clone() for n, m in tr.nets.items() for k, v in m.state_dict().items()}


def _worker(rank: int, init: str, out: str, job: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    ctx = DistContext(rank=rank, world=WORLD, local_rank=rank)
    finished = False
    try:
        if job == "dcgan":
            tr = fastgan.create("dcgan", flavor="debug", resolution=16, channels=1, seed=0, batch_size=8,
                                device="cpu", distributed=ctx)
            tr.fit(_data(res=16), 3)
            result = {"params": {f"{n}.{k}": p.detach().clone() for n, m in tr.nets.items()
                                 for k, p in m.named_parameters()}}
        elif job == "pair":
            tr = _pair_trainer(ctx)
            tr.fit(_data(), 3)
            result = {"state": _state(tr), "stats": tr.stats.read(reduce=ctx.mean), "nimg": tr.nimg}
        else:   # resume: 2 steps, save, a new Trainer loads and trains 2 more; against 4 straight
            straight = _pair_trainer(ctx)
            straight.fit(_data(), 4)
            first = _pair_trainer(ctx)
            first.fit(_data(), 2)
            path = os.path.join(os.path.dirname(out), "state.pt")
            if rank == 0:
                first.save(path)
            ctx.barrier()
            second = _pair_trainer(ctx).load(path)
            second.fit(_data(), 2)
            result = {"straight": _state(straight), "resumed": _state(second)}
        torch.save(result, f"{out}.{rank}")
        finished = True
    finally:
        shutdown(ctx, clean=finished)


def _spawn(tmp_path, job: str) -> list[dict]:
    init = f"file://{tmp_path / 'rendezvous'}"
    out = str(tmp_path / "result")
    mp.spawn(_worker, args=(init, out, job), nprocs=WORLD, join=True)
    return [torch.load(f"{out}.{r}", weights_only=True) for r in range(WORLD)]


@pytest.mark.usefixtures("one_thread")
def test_ranks_end_with_identical_parameters(tmp_path):
    r0, r1 = _spawn(tmp_path, "dcgan")
    assert r0["params"].keys() == r1["params"].keys()
    for k in r0["params"]:
        assert torch.equal(r0["params"][k], r1["params"][k]), k


@pytest.mark.usefixtures("one_thread")
def test_two_ranks_train_what_one_process_trains_with_the_global_batch(tmp_path):
    ranks = _spawn(tmp_path, "pair")
    single = _pair_trainer()
    single.fit(_data(), 3)
    want = _state(single)
    for r in ranks:
        assert r["nimg"] == single.nimg == 3 * 2 * 8
        for k, v in want.items():
            torch.testing.assert_close(r["state"][k], v, rtol=1e-5, atol=1e-6, msg=k)
    s = single.stats.read()
    for k in ("loss_D", "loss_G", "penalty"):
        assert ranks[0]["stats"][k] == pytest.approx(s[k], rel=1e-4, abs=1e-6), k


@pytest.mark.usefixtures("one_thread")
def test_a_saved_state_resumes_across_ranks_exactly(tmp_path):
    for r in _spawn(tmp_path, "resume"):
        for k, v in r["straight"].items():
            assert torch.equal(r["resumed"][k], v), k


def test_batch_must_split_over_the_ranks_and_sync_batch_norm_keeps_state_and_outputs():
    from fastgan.errors import ConfigError

    with pytest.raises(ConfigError, match="batch 9 does not split over 2 processes"):
        DistContext(rank=0, world=2).local_batch(9)
    G, _, _ = fastgan.get_variant("dcgan").build(debug=True, resolution=16)
    before = {k: v.clone() for k, v in G.state_dict().items()}
    z = torch.randn(4, G.z_dim)
    G.eval()
    want = G(z)
    synced = sync_batch_norms(G)
    assert any(isinstance(m, SyncBatchNormAct) for m in synced.modules())
    assert synced.state_dict().keys() == before.keys()
    torch.testing.assert_close(synced(z), want)     # eval mode: running statistics, no process group needed


def _torchrun(*argv, timeout=600):
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "FASTGAN_PROGRESS": "0"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
                           "-m", "fastgan", "train", *argv], capture_output=True, text=True, timeout=timeout, env=env)


def test_torchrun_trains_writes_from_rank_0_and_resumes_exactly(tmp_path):
    """`torchrun -m fastgan train` on 2 CPU processes: one run folder, written once; 6 steps straight equal 3 steps
    then --resume to 6 (weights of the latest checkpoints, bit for bit)."""
    import json

    from fastgan.train.checkpoint import latest_checkpoint

    args = ["--data", "digits", "--debug", "--batch", "8", "--tick", "3", "--no-eval", "--seed", "1"]
    straight, half = tmp_path / "straight", tmp_path / "half"
    r = _torchrun(*args, "--steps", "6", "--out", str(straight))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("fastgan train | variant dcgan") == 1          # rank 0 alone logs
    resolved = json.loads((straight / "config.json").read_text())
    assert resolved["processes"] == WORLD
    recs = [json.loads(x) for x in (straight / "stats.jsonl").read_text().splitlines()]
    assert [x["step"] for x in recs if "loss_D" in x] == [3, 6]          # one record per tick, not one per rank
    assert recs[-1]["kimg"] == 6 * 8 / 1000                                # images of both ranks
    r = _torchrun(*args, "--steps", "3", "--out", str(half))
    assert r.returncode == 0, r.stderr[-2000:]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FASTGAN_PROGRESS": "0"}
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
                        "-m", "fastgan", "train", "--resume", str(half), "--steps", "6"],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    a, _ = latest_checkpoint(straight)
    b, _ = latest_checkpoint(half)
    assert a.step == b.step == 6
    wa, wb = a.training_state(), b.training_state()
    for group in ("nets", "ema"):
        for net, sd in wa[group].items():
            for k, v in sd.items():
                assert torch.equal(wb[group][net][k], v), f"{group}.{net}.{k}"


@pytest.mark.gpu
def test_two_gpus_in_graphs_mode_stay_identical_and_resume(tmp_path):
    """NCCL, SyncBatchNorm and the all-reduce captured in the CUDA graph: 2 GPUs train dcgan in the default
    (graphs) mode, one run folder, and resume exactly (needs 2 GPUs)."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA devices")
    from fastgan.train.checkpoint import latest_checkpoint

    args = ["--data", "digits", "--batch", "64", "--tick", "3", "--no-eval", "--seed", "1"]
    straight, half = tmp_path / "straight", tmp_path / "half"
    assert _torchrun(*args, "--steps", "6", "--out", str(straight)).returncode == 0
    assert _torchrun(*args, "--steps", "3", "--out", str(half)).returncode == 0
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
                        "-m", "fastgan", "train", "--resume", str(half), "--steps", "6"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    a, _ = latest_checkpoint(straight)
    b, _ = latest_checkpoint(half)
    wa, wb = a.training_state(), b.training_state()
    for net, sd in wa["nets"].items():
        for k, v in sd.items():
            torch.testing.assert_close(wb["nets"][net][k], v, msg=f"{net}.{k}")
