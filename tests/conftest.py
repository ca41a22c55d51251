"""Test configuration: CUDA when present, otherwise Triton kernels run on CPU in the interpreter.

``TRITON_INTERPRET`` must be set before triton is first imported, so this happens at the top
of conftest, before any fastgan import.
"""
import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def device():
    return torch.device("cuda" if HAS_CUDA else "cpu")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Metric feature networks are cached per dataset; keep one cache for the whole session
    # so tests do not retrain them, and never touch the user's ~/.cache.
    cache = tmp_path_factory.getbasetemp() / "fastgan-cache"
    monkeypatch.setenv("FASTGAN_CACHE", str(cache))


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: on a shared 2-core box, OpenMP barriers with a preempted second thread make
    tiny ops ~100x slower. For tests that check correctness, never speed."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="module")
def no_tf32():
    """Plain fp32 convolutions and matmuls on CUDA: fast-vs-reference comparisons at fp32 tolerances
    must not measure TF32 rounding of the convolutions around the fused ops."""
    prev = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = prev
