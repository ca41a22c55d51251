"""Are the batch-norm kernels' global loads and stores 16 bytes wide? (no GPU needed)

Compiles the statistics, forward and dx kernels for sm_90 with Triton's bundled ptxas, with the
specialisations the JIT applies at run time (unit strides become constants; integer arguments
divisible by 16 are marked so), for the GPU tilings of a 256×64×64×64 bf16 tensor in
channels_last and NCHW, and counts the PTX load/store widths: ``ld.global.v4.b32`` is a 16-byte
access, ``ld.global.b16`` a 2-byte one. Run without TRITON_INTERPRET:

    env -u TRITON_INTERPRET python benches/diag/ptx_vectorization.py

Seen 2026-11-23 (triton 3.9): 16-byte accesses for x/y/dy/dx in both layouts.
"""
import re
from collections import Counter
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fastgan.kernels import batch_norm as K

def compile_sm90(fn, ptrs, constexprs, unit, num_warps, div16):
    sig, consts, attrs = {}, dict(constexprs), {}
    for i, name in enumerate(fn.arg_names):
        if name in consts or name in unit:
            sig[name] = "constexpr"; consts.setdefault(name, 1)
        elif name in ptrs:
            sig[name] = "*" + ptrs[name]; attrs[(i,)] = [["tt.divisibility", 16]]
        elif name.endswith(("_hi", "_lo")):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
            if name in div16:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs),
                          target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})

f32 = dict(W="fp32", B="fp32", MEAN="fp32", STAT="fp32", PSUM="fp32", PSQ="fp32", PG="fp32", PGX="fp32",
           SUM_G="fp32", SUM_GX="fp32")
bf16 = dict(f32, X="bf16", Y="bf16", DY="bf16", DX="bf16")
cl = ("stride_xc", "stride_yc", "stride_dyc", "stride_dxc")
nchw = ("stride_xs", "stride_ys", "stride_dys", "stride_dxs")
D16 = ("N", "C", "S", "stride_xn", "stride_xc", "stride_xs", "stride_yn", "stride_yc", "stride_ys", "stride_dyn",
       "stride_dyc", "stride_dys", "stride_dxn", "stride_dxc", "stride_dxs", "num_s_blocks", "n_rows")

def report(name, k):
    ptx = k.asm["ptx"]
    ld = dict(Counter(re.findall(r"ld[.]global[.a-z0-9]*", ptx)))
    st = dict(Counter(re.findall(r"st[.]global[.a-z0-9]*", ptx)))
    print(f"{name:12s} loads {ld}  stores {st}")

for layout, strides, tiles in (("CL", cl, dict(BLOCK_C=64, BLOCK_N=1, BLOCK_S=64)),
                               ("NCHW", nchw, dict(BLOCK_C=4, BLOCK_N=1, BLOCK_S=1024))):
    t = dict(tiles, ACC=tl.float32, INT64=False)
    d16 = [d for d in D16 if d not in strides]
    report(f"stats {layout}", compile_sm90(K._bn_stats_kernel, bf16, t, strides, 8, d16))
    report(f"fwd {layout}", compile_sm90(K._bn_act_fwd_kernel, bf16, dict(t, HAS_W=True, HAS_B=True, STAT_IS_VAR=False, ACT=2), strides, 8, d16))
    report(f"bwd_dx {layout}", compile_sm90(K._bn_act_bwd_dx_kernel, bf16, dict(t, HAS_W=True, HAS_B=True, STAT_IS_VAR=False, ACT=2), strides, 8, d16))
