"""The one tolerance table for fast-vs-reference comparisons.

Comparisons are relative norms against a float64 reference: ‖out − ref‖ / ‖ref‖ ≤ TOL[dtype]
(outputs) and ≤ GRAD_TOL[dtype] (gradients, which go through one more reduction).
"""
import torch

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float64: 1e-12}
GRAD_TOL = {torch.float32: 5e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2, torch.float64: 1e-10}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double(), ref.detach().double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def assert_close_rel(out: torch.Tensor, ref: torch.Tensor, tol: float, what: str = "output") -> None:
    """‖out − ref‖/‖ref‖ ≤ tol + the error of rounding ``ref`` itself to ``out``'s dtype.

    The second term is the floor no implementation in that dtype can beat: it is ~1e-4 of ``tol``
    for normal values, but real when the exact result is subnormal (an fp16 gradient of a mean over
    230k logits is ~1e-6, below fp16's smallest normal 6e-5, and keeps only a few bits).
    """
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(out).all(), f"{what}: non-finite values"
    err = rel_err(out, ref)
    floor = rel_err(ref.detach().to(out.dtype), ref) if out.dtype != ref.dtype else 0.0
    assert err <= tol + floor, f"{what}: relative error {err:.3g} > {tol:.3g} (+ rounding floor {floor:.3g})"


def assert_compiled_matches_eager(m: torch.nn.Module, x: torch.Tensor) -> None:
    """``torch.compile(m, fullgraph=True)`` gives the eager output and parameter gradients."""
    compiled = torch.compile(m, fullgraph=True, backend="inductor")
    y_e = m(x)
    g_e = torch.autograd.grad(y_e.square().sum(), list(m.parameters()))
    y_c = compiled(x)
    g_c = torch.autograd.grad(y_c.square().sum(), list(m.parameters()))
    torch.testing.assert_close(y_c, y_e)
    for a, b in zip(g_c, g_e):
        torch.testing.assert_close(a, b)
