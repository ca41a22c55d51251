"""Shared helper for the ``test_kernels_compile_for_sm90`` tests.

The interpreter (``TRITON_INTERPRET=1``) never runs Triton's code generation, so errors such as
type-unstable returns across constexpr branches or dtype mismatches in ``tl.where`` go unseen
on CPU. These tests compile each kernel for sm_90 with Triton's bundled ptxas (no GPU needed)
in a subprocess without ``TRITON_INTERPRET`` (under it ``@triton.jit`` yields interpreted
functions). A test passes the body of a script; ``PROLOGUE`` gives it ``triton``, ``tl`` and
``compile_sm90``, and the script prints ``OK`` at the end.
"""
import os
import subprocess
import sys

import pytest

PROLOGUE = r"""
import sys
import triton
import triton.language as tl
try:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
except ImportError as e:
    print("SKIP", e); sys.exit(0)

def compile_sm90(fn, ptrs, constexprs, unit_strides=(), num_warps=4, floats=(), i64=()):
    # ptrs: {arg: "fp32" | "bf16" | ...}; constexprs: {arg: value}; unit_strides: int args equal
    # to 1 (the JIT specialises them to constexprs); floats: fp32 scalars (Python floats, and
    # names ending in _hi/_lo); i64: int args too large for i32; every other arg is an i32.
    sig, consts, attrs = {}, dict(constexprs), {}
    for i, name in enumerate(fn.arg_names):
        if name in consts or name in unit_strides:
            sig[name] = "constexpr"
            consts.setdefault(name, 1)  # a unit stride, as the JIT specialises it
        elif name in ptrs:
            sig[name] = "*" + ptrs[name]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in floats or name.endswith(("_hi", "_lo")):
            sig[name] = "fp32"
        else:
            sig[name] = "i64" if name in i64 else "i32"
    unknown = (set(constexprs) | set(floats) | set(i64)) - set(fn.arg_names)
    assert not unknown, f"{fn.__name__}: no such args {sorted(unknown)}"  # catch typos in the tests
    try:
        src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    except TypeError as e:
        print("SKIP", e); sys.exit(0)
    try:
        triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
    except Exception as e:
        raise RuntimeError(f"{fn.__name__} failed to compile for sm_90 with {consts}, {sig}") from e
"""


def run_sm90_compile(body: str, timeout: int = 300) -> None:
    """Run ``PROLOGUE + body`` in a fresh interpreter without TRITON_INTERPRET; skip or assert."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, "-c", PROLOGUE + body], capture_output=True, text=True, env=env,
                          timeout=timeout)
    if proc.stdout.startswith("SKIP"):
        pytest.skip(f"triton AOT compile API unavailable here: {proc.stdout[5:].strip()}")
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stderr[-3000:]
