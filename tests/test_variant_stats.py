"""The registered variants train exactly as recorded: per-step stats and final weights, bit for bit.

``tests/data/variant_stats.json`` holds, per torch release (major.minor) and per variant, the stats of
``STEPS`` seeded eager CPU iterations of the variant's debug flavour (as float hex strings) and a sha256
of the final G, D and G_ema weights. It was recorded with the engine that preceded the task engine and
is the proof that moving a variant onto the task engine changed nothing. Record for a new torch with
``python tests/test_variant_stats.py --record`` (only where the engine is known to be right).
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch

PATH = Path(__file__).parent / "data" / "variant_stats.json"
VARIANTS = ("dcgan", "dcgan-minimax", "dcgan-r1", "hinge", "lsgan", "wgan", "wgan-gp")
STEPS = 18          # dcgan-r1's lazy R1 (every 16 D steps) runs at D steps 0 and 16
BATCH = 8


def _torch_key() -> str:
    return ".".join(torch.__version__.split("+")[0].split(".")[:2])


def _data() -> torch.Tensor:
    g = torch.Generator().manual_seed(1234)
    return torch.rand(64, 1, 32, 32, generator=g) * 2 - 1     # images in [-1, 1]


def _digest(modules) -> str:
    h = hashlib.sha256()
    for m in modules:
        for k, v in sorted(m.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _build(name: str):
    import fastgan

    return fastgan.create(name, flavor="debug", resolution=32, channels=1, batch_size=BATCH, device="cpu",
                          mode="eager", seed=0)


def run_variant(name: str) -> dict:
    """STEPS seeded eager CPU iterations of ``name``'s debug flavour: per-step stats, final weight digest."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tr = _build(name)
        data = _data()
        steps = []
        for _ in range(STEPS):
            tr.fit(data, 1, seed=0)
            s = tr.stats.read()
            steps.append({k: float(v).hex() for k, v in sorted(s.items())})
        return {"steps": steps, "weights": _digest([tr.G, tr.D, tr.G_ema])}
    finally:
        torch.set_num_threads(prev)


def _recorded() -> dict:
    return json.loads(PATH.read_text()) if PATH.is_file() else {}


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_trains_as_recorded(name):
    rec = _recorded().get(_torch_key(), {}).get(name)
    if rec is None:
        pytest.skip(f"no recorded stats for {name} on torch {_torch_key()} (recorded: {sorted(_recorded())})")
    got = run_variant(name)
    for i, (a, b) in enumerate(zip(got["steps"], rec["steps"])):
        assert a == b, f"{name} step {i}: {a} != recorded {b}"
    assert got["weights"] == rec["weights"], f"{name}: final weights differ from the recorded run"


if __name__ == "__main__":
    if "--record" not in sys.argv:
        sys.exit("usage: python tests/test_variant_stats.py --record")
    data = _recorded()
    data[_torch_key()] = {n: run_variant(n) for n in VARIANTS}
    PATH.parent.mkdir(exist_ok=True)
    PATH.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"recorded {len(VARIANTS)} variants for torch {_torch_key()} in {PATH}")
