"""Argument checks of the fused ops' Triton path, and when impl='triton' can run at all.

* Per-channel vectors (weight, bias, running_mean, running_var) are indexed by the kernels as
  ``W + c``: strided ones must give the reference's outputs, gradients and running-statistics
  updates (a strided running buffer updated in place, as ``F.batch_norm`` does); wrong lengths,
  integer dtypes and other devices must be one-line errors naming the argument, not out-of-bounds
  reads or writes. The reference path raises for the same shapes.
* ``impl='triton'`` on CPU needs kernels that Triton decorated in interpreter mode, which Triton
  decides when ``@triton.jit`` runs: a clear FastganError otherwise (in a subprocess, so this
  process's own import state is not disturbed).
"""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from fastgan import ops
from fastgan.errors import FastganError
from tolerances import GRAD_TOL, TOL, assert_close_rel

pytestmark = pytest.mark.usefixtures("one_thread")
IMPLS = ("triton", "ref")


def _strided(base_len: int, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(base, view): ``view`` = base[1::2] holds ``values``; the other elements are sentinels."""
    base = torch.full((base_len,), 7.0, dtype=values.dtype, device=values.device)
    base[1::2] = values
    return base, base[1::2]


def _run_pair(fn, x, leaves, dy):
    """Output and gradients w.r.t. x and the leaf tensors, for impl in triton/ref."""
    out = {}
    for impl in IMPLS:
        xs = x.detach().clone().requires_grad_()
        ls = [t.detach().clone().requires_grad_() for t in leaves]
        y = fn(impl, xs, *ls)
        out[impl] = (y, *torch.autograd.grad(y, [xs, *ls], dy))
    return out


def _assert_pairs_close(out, what):
    for k, (t, r) in enumerate(zip(out["triton"], out["ref"])):
        tol = TOL[torch.float32] if k == 0 else GRAD_TOL[torch.float32]
        assert_close_rel(t, r, tol, f"{what} [{k}]")


# -- strided per-channel vectors -------------------------------------------------------------

@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_act_strided_vectors(training, layout, device):
    torch.manual_seed(0)
    x = torch.randn(3, 4, 3, 5, device=device)
    if layout == "cl":
        x = x.to(memory_format=torch.channels_last)
    w0, b0 = 1 + 0.3 * torch.randn(4, device=device), 0.3 * torch.randn(4, device=device)
    rm0, rv0 = 0.2 * torch.randn(4, device=device), 1 + torch.rand(4, device=device)
    dy = torch.randn_like(x)
    bufs = {}

    def fn(impl, x, wb, bb):           # wb, bb: the bases; the op gets their strided views
        rm_base, rm = _strided(9, rm0)
        rv_base, rv = _strided(9, rv0)
        bufs[impl] = (rm_base, rv_base)
        w, b = wb[1::2], bb[1::2]
        if impl == "ref":  # torch's CPU batch_norm backward gets dx wrong for a strided weight (or, in
            w, b = w.contiguous(), b.contiguous()   # eval, running var) on a channels_last input
            if not training:                        # (torch 2.13): the reference gets copies
                rm, rv = rm.contiguous(), rv.contiguous()
        return ops.batch_norm_act(x, w, b, rm, rv, training=training, act="lrelu", alpha=-0.3, impl=impl)

    out = _run_pair(fn, x, [_strided(9, w0)[0], _strided(9, b0)[0]], dy)
    _assert_pairs_close(out, f"batch_norm_act training={training}")
    for base in out["triton"][2:]:                      # the bases' gradients: zero between the views
        assert (base[0::2] == 0).all()
    for got, want, name in zip(bufs["triton"], bufs["ref"], ("running_mean", "running_var")):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)
        assert (got[0::2] == 7.0).all(), f"{name}: elements outside the strided view were written"
    if training:
        assert not torch.equal(bufs["triton"][0][1::2], rm0), "running_mean was not updated"


def test_batch_norm_act_strided_running_buffers_module_state(device):
    """A BatchNormAct2d whose running buffers are strided views (e.g. of a shared flat buffer)."""
    from fastgan.nn import BatchNormAct2d
    torch.manual_seed(1)
    stock = torch.nn.BatchNorm2d(3).to(device)
    stock.running_mean = torch.zeros(6, device=device)[::2]
    stock.running_var = torch.ones(6, device=device)[::2]
    fused = BatchNormAct2d(3).to(device)
    fused.running_mean = torch.zeros(6, device=device)[::2]
    fused.running_var = torch.ones(6, device=device)[::2]
    for _ in range(2):
        x = torch.randn(4, 3, 2, 2, device=device) * 2 + 1
        with ops.use_impl("triton"):
            fused(x)
        stock(x)
    torch.testing.assert_close(fused.running_mean, stock.running_mean)
    torch.testing.assert_close(fused.running_var, stock.running_var)


@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_instance_norm_act_strided_vectors(layout, device):
    torch.manual_seed(2)
    x = torch.randn(2, 4, 3, 5, device=device)
    if layout == "cl":
        x = x.to(memory_format=torch.channels_last)
    w0, b0 = 1 + 0.3 * torch.randn(4, device=device), 0.3 * torch.randn(4, device=device)

    def fn(impl, x, wb, bb):
        return ops.instance_norm_act(x, wb[1::2], bb[1::2], act="lrelu", alpha=0.2, impl=impl)

    out = _run_pair(fn, x, [_strided(9, w0)[0], _strided(9, b0)[0]], torch.randn_like(x))
    _assert_pairs_close(out, "instance_norm_act")


@pytest.mark.parametrize("shape,dim", [((2, 4, 3, 5), 1), ((6, 4), 1), ((2, 3, 4), 2), ((2, 4, 3, 5), -1)])
@pytest.mark.parametrize("act", ["lrelu", "silu"])
def test_bias_act_strided_bias(shape, dim, act, device):
    torch.manual_seed(3)
    x = torch.randn(shape, device=device)
    C = shape[dim]

    def fn(impl, x, bb):
        return ops.bias_act(x, bb[1::2], dim=dim, act=act, gain=1.4, impl=impl)

    out = _run_pair(fn, x, [_strided(2 * C + 1, torch.randn(C, device=device))[0]], torch.randn_like(x))
    _assert_pairs_close(out, f"bias_act dim={dim}")
    # a bias that is a column of a matrix (stride C), channels_last input
    if x.ndim == 4 and dim == 1:
        xc = x.to(memory_format=torch.channels_last)
        bm = torch.randn(C, 3, device=device)
        torch.testing.assert_close(ops.bias_act(xc, bm[:, 1], act=act, impl="triton"),
                                   ops.bias_act(xc, bm[:, 1].contiguous(), act=act, impl="ref"))


# -- bad shapes, dtypes, devices: one-line errors naming the argument --------------------------

def _x(device, dtype=torch.float32):
    return torch.randn(2, 3, 4, 4, device=device).to(dtype)


def _bad_calls(device):
    """(what the message must name, call(impl), whether the reference raises too)."""
    x = _x(device)
    f = dict(device=device)
    bn = ops.batch_norm_act
    return [
        ("weight", lambda i: bn(x, torch.ones(5, **f), None, None, None, training=True, impl=i), True),
        ("weight", lambda i: bn(x, torch.ones(3, 1, **f), None, None, None, training=True, impl=i), False),
        ("bias", lambda i: bn(x, None, torch.zeros(2, **f), None, None, training=True, impl=i), True),
        ("running_mean", lambda i: bn(x, None, None, torch.zeros(2, **f), torch.ones(3, **f), training=True,
                                      impl=i), True),
        ("running_var", lambda i: bn(x, None, None, torch.zeros(3, **f), torch.ones(4, **f), training=True,
                                     impl=i), True),
        ("running_mean", lambda i: bn(x, None, None, torch.zeros(2, **f), torch.ones(2, **f), training=False,
                                      impl=i), True),
        ("running_var", lambda i: bn(x, None, None, torch.zeros(3, **f), torch.ones(5, **f), training=False,
                                     impl=i), True),
        ("floating", lambda i: bn(_x(device, torch.int64), None, None, None, None, training=True, impl=i), True),
        ("weight", lambda i: bn(x, torch.ones(3, dtype=torch.int64, **f), None, None, None, training=True,
                                impl=i), True),
        ("running_mean", lambda i: bn(x, None, None, torch.zeros(3, dtype=torch.int64, **f),
                                      torch.ones(3, dtype=torch.int64, **f), training=True, impl=i), True),
        ("weight", lambda i: bn(x, torch.ones(3, device="meta"), None, None, None, training=True, impl=i), False),
        ("weight", lambda i: ops.instance_norm_act(x, torch.ones(5, **f), None, impl=i), True),
        ("bias", lambda i: ops.instance_norm_act(x, None, torch.zeros(3, 2, **f), impl=i), True),
        ("weight", lambda i: ops.instance_norm_act(x, torch.ones(3, dtype=torch.int32, **f), None, impl=i),
         False),
        ("bias", lambda i: ops.bias_act(x, torch.zeros(5, **f), impl=i), True),
        ("bias", lambda i: ops.bias_act(x, torch.zeros(2, **f), dim=-1, act="relu", impl=i), True),
        ("bias", lambda i: ops.bias_act(x, torch.zeros(3, device="meta"), impl=i), False),
        ("floating", lambda i: ops.bias_act(_x(device, torch.int32), torch.zeros(3, **f), impl=i), False),
        ("floating", lambda i: ops.pixel_norm(_x(device, torch.int32), impl=i), False),
    ]


@pytest.mark.parametrize("case", range(len(_bad_calls("cpu"))))
def test_bad_arguments_raise_one_line_errors(case, device):
    name, call, ref_raises = _bad_calls(device)[case]
    with pytest.raises(FastganError) as e:
        call("triton")
    msg = str(e.value)
    assert "\n" not in msg and name in msg, msg
    if ref_raises:  # the reference refuses the same arguments (with torch's own message)
        with pytest.raises(Exception):
            call("ref")


def test_wrong_length_running_buffers_are_not_written(device):
    """The error comes before any kernel runs: nothing past a short buffer's end is touched."""
    base = torch.full((4,), 5.0, device=device)
    rm, rv = base[:2], torch.ones(3, device=device)
    with pytest.raises(FastganError, match="running_mean"):
        ops.batch_norm_act(_x(device), None, None, rm, rv, training=True, impl="triton")
    assert (base == 5.0).all() and (rv == 1.0).all()


# -- impl='triton' when Triton cannot run the kernels on CPU --------------------------------------

_PRELUDE = """
import os, sys
import torch
from fastgan.errors import FastganError
x, b = torch.randn(2, 3, 4, 4), torch.randn(3)

def attempt(tag):
    from fastgan import ops
    calls = {
        "bias_act": lambda i: ops.bias_act(x, b, act="lrelu", impl=i),
        "batch_norm_act": lambda i: ops.batch_norm_act(x, None, b, None, None, training=True, impl=i),
        "pixel_norm": lambda i: ops.pixel_norm(x, impl=i),
        "d_loss": lambda i: ops.d_loss(x.flatten(), b, "nonsat", impl=i),
    }
    for name, call in calls.items():
        try:
            y = call("triton")
        except FastganError as e:
            assert "\\n" not in str(e)
            print(tag, name, "FastganError", str(e))
        else:
            torch.testing.assert_close(y, call("ref"), rtol=1e-5, atol=1e-6)
            print(tag, name, "ran")
"""


def _subprocess(body: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    proc = subprocess.run([sys.executable, "-c", _PRELUDE + textwrap.dedent(body)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [line for line in proc.stdout.splitlines() if line.strip()]


def _check_clear_errors(lines, n, late):
    assert len(lines) == n, lines
    for line in lines:
        tag, name, outcome, msg = line.split(" ", 3)
        assert outcome == "FastganError", line              # never InterpreterError / a driver error
        assert "impl='triton'" in msg and "impl='auto' or 'ref'" in msg, line
        if tag in late:
            assert "set after triton was imported" in msg, line
        else:
            assert "TRITON_INTERPRET=1" in msg, line


def test_triton_impl_on_cpu_without_interpreter_is_a_clear_error():
    lines = _subprocess("""
        attempt("unset")                       # TRITON_INTERPRET never set: kernels built for a GPU
        os.environ["TRITON_INTERPRET"] = "1"   # setting it now is too late
        attempt("late")
    """)
    _check_clear_errors(lines, 8, late={"late"})


def test_setting_interpret_after_importing_triton_is_a_clear_error():
    """Triton's own @jit library (tl.sum's combine function, ...) is decorated when triton is
    imported: set TRITON_INTERPRET afterwards and no kernel can run in the interpreter, even if
    fastgan's kernels are imported later."""
    lines = _subprocess("""
        import triton
        os.environ["TRITON_INTERPRET"] = "1"
        attempt("late")
    """)
    _check_clear_errors(lines, 4, late={"late"})


def test_interpreted_kernels_keep_working_when_the_variable_is_cleared():
    lines = _subprocess("""
        os.environ["TRITON_INTERPRET"] = "1"
        import triton
        attempt("set")
        del os.environ["TRITON_INTERPRET"]     # Triton has decided: the kernels stay interpreted
        attempt("cleared")
    """)
    assert len(lines) == 8 and all(line.split(" ")[2] == "ran" for line in lines), lines
