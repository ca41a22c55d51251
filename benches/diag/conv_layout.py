"""Which cuDNN convolution_backward outputs does FakeTensor predict with the wrong strides?

torch 2.11 + CUDA: Inductor asserted "expected ... stride 16==1" on aten.convolution_backward for
the DCGAN models in channels_last bf16 (pytorch#171622 and its follow-ups). This prints, for each
conv of the tutorial G and D and each layout of (input, weight, grad_output), whether the fake
(meta) strides equal the real ones, then tries torch.compile on D alone, G alone, and G+D in NCHW.
"""
import itertools
import time

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from fastgan.bench.baselines import tutorial_discriminator, tutorial_generator
from fastgan.variants import get_variant

CL = torch.channels_last
spec = get_variant("dcgan")
cfg = spec.model_config(False, resolution=64, channels=3, width=16)


def stride_map():
    G, D = tutorial_generator(cfg).cuda().bfloat16(), tutorial_discriminator(cfg).cuda().bfloat16()
    x = {"G": torch.randn(8, cfg.z_dim, 1, 1, device="cuda", dtype=torch.bfloat16),
         "D": torch.randn(8, 3, 64, 64, device="cuda", dtype=torch.bfloat16)}
    for name, net in (("G", G), ("D", D)):
        h = x[name]
        for i, m in enumerate(net.main):
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                tr = isinstance(m, torch.nn.ConvTranspose2d)
                out = m(h)
                for fi, fw, fg in itertools.product((0, 1), repeat=3):
                    inp = h.contiguous(memory_format=CL) if fi else h.contiguous()
                    w = m.weight.detach().contiguous(memory_format=CL) if fw else m.weight.detach().contiguous()
                    go = torch.randn_like(out).contiguous(memory_format=CL if fg else torch.contiguous_format)
                    args = (go, inp, w, None, list(m.stride), list(m.padding), list(m.dilation), tr,
                            list(getattr(m, "output_padding", (0, 0))), 1, [True, True, False])
                    real = torch.ops.aten.convolution_backward(*args)
                    with FakeTensorMode() as fm:
                        fargs = tuple(fm.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args)
                        fake = torch.ops.aten.convolution_backward(*fargs)
                    bad = [k for k, r, f in zip(("dx", "dw"), real[:2], fake[:2]) if r.stride() != f.stride()]
                    if bad:
                        print(f"MISMATCH {name}[{i}] {'convT' if tr else 'conv'} in={tuple(inp.shape)} cl(in,w,go)="
                              f"{fi}{fw}{fg}: " + ", ".join(f"{k} real {tuple(r.stride())} fake {tuple(f.stride())}"
                                                            for k, r, f in zip(('dx', 'dw'), real[:2], fake[:2])
                                                            if k in bad))
                h = out
            else:
                h = m(h)
    print("stride map done")


def trial(name, cl, part):
    torch._dynamo.reset()
    G, D = tutorial_generator(cfg).cuda(), tutorial_discriminator(cfg).cuda()
    z = torch.randn(32, cfg.z_dim, 1, 1, device="cuda")
    x = torch.randn(32, 3, 64, 64, device="cuda")
    if cl:
        G.to(memory_format=CL), D.to(memory_format=CL)
        x = x.contiguous(memory_format=CL)
    if part == "D":
        f = torch.compile(D)
        fn = lambda: f(x).float().mean()  # noqa: E731
    elif part == "G":
        f = torch.compile(G)
        fn = lambda: f(z).float().square().mean()  # noqa: E731
    else:
        fg, fd = torch.compile(G), torch.compile(D)
        fn = lambda: fd(fg(z)).float().mean()  # noqa: E731
    t = time.time()
    try:
        for _ in range(2):
            with torch.autocast("cuda", torch.bfloat16):
                loss = fn()
            loss.backward()
        torch.cuda.synchronize()
        print(f"{name}: ok ({time.time() - t:.0f}s)", flush=True)
    except Exception as e:
        print(f"{name}: FAIL {type(e).__name__}: {str(e).splitlines()[0][:300]}", flush=True)


if __name__ == "__main__":
    print(torch.__version__, torch.backends.cudnn.version())
    stride_map()
    trial("compile D, channels_last", True, "D")
    trial("compile G, channels_last", True, "G")
    trial("compile G+D, NCHW", False, "GD")
