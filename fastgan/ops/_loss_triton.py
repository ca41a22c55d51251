"""Triton fast path of the GAN objectives: host launchers and ``torch.library`` registration.

``fastgan::d_loss(real, fake, kind, smooth) -> (loss, dreal, dfake)`` and
``fastgan::g_loss(fake, kind) -> (loss, dfake)`` are custom ops whose single forward launch
writes the fp32 loss *and* the gradients of the loss w.r.t. the logits (in the logits' dtype).
Their autograd formula only saves those gradients and multiplies them by the incoming scalar
gradient, so a D step's loss costs one kernel forward and one elementwise multiply per logit
tensor backward (fused by Inductor under torch.compile).

Launch settings: up to ``SINGLE_PROGRAM_MAX`` logits per tensor, one program holds every logit
in one block and stores the loss directly — one launch. Larger (PatchGAN: N·30·30 per tensor)
splits the logits over up to ``MAX_PROGRAMS`` programs writing fp32 partials, summed in a fixed
order by a one-program second launch (deterministic; no atomics).

Double backward: when the backward is itself being recorded (``create_graph=True``), the VJP is
computed by differentiating the reference with torch ops instead, so second derivatives are
exact. It is not a fast path; no GAN recipe differentiates its loss twice.
"""
from __future__ import annotations


import torch

from fastgan.kernels import gan_loss as _k
from fastgan.kernels.gan_loss import _d_loss_fwd_kernel, _g_loss_fwd_kernel, _loss_combine_kernel
from fastgan.ops.losses import _d_loss_ref, _g_loss_ref
from fastgan.ops._impl import cdiv, eager_twin, next_pow2, device_guard as _device_guard

KIND_IDS = {"nonsat": _k.NONSAT, "minimax": _k.MINIMAX, "hinge": _k.HINGE, "wasserstein": _k.WASSERSTEIN,
            "lsgan": _k.LSGAN}

SINGLE_PROGRAM_MAX = 4096  # logits per tensor handled by one program in one block (one launch)
MULTI_BLOCK = 1024         # block size when the logits are split over several programs
MAX_PROGRAMS = 1024        # cap on programs (= partials) of the split reduction


def _launch_settings(n: int) -> tuple[int, int, int, int]:
    """(BLOCK, blocks_per_program, programs, num_warps) for tensors of at most ``n`` logits."""
    if n <= SINGLE_PROGRAM_MAX:
        block = max(16, next_pow2(n))
        return block, 1, 1, min(16, max(1, block // 256))
    n_blocks = cdiv(n, MULTI_BLOCK)
    per_prog = cdiv(n_blocks, MAX_PROGRAMS)
    return MULTI_BLOCK, per_prog, cdiv(n_blocks, per_prog), 4


def _flat(x: torch.Tensor) -> torch.Tensor:
    # Logits are N (or N·K) values read as one dense run: a non-contiguous view (a strided 1-D column such
    # as AC-GAN's realness logit out[:, 0], which reshape(-1) leaves strided) is copied on purpose (cheap),
    # a contiguous one (also a chunk of a concatenated batch) is used in place.
    return x.reshape(-1).contiguous()


def _finish(partials: torch.Tensor, loss: torch.Tensor, programs: int) -> None:
    """Second pass of the split reduction (only when more than one program ran)."""
    if programs > 1:
        block = min(1024, max(16, next_pow2(programs)))
        _loss_combine_kernel[(1,)](partials, loss, programs, BLOCK=block, num_warps=4)


def d_loss_fwd(real: torch.Tensor, fake: torch.Tensor, kind: str, smooth: float):
    """Launch the D objective: returns (loss fp32 scalar, dreal, dfake)."""
    r, f = _flat(real), _flat(fake)
    n_r, n_f = r.numel(), f.numel()
    block, per_prog, programs, warps = _launch_settings(max(n_r, n_f))
    loss = torch.empty((), dtype=torch.float32, device=real.device)
    partials = loss if programs == 1 else torch.empty(programs, dtype=torch.float32, device=real.device)
    dreal = torch.empty(real.shape, dtype=real.dtype, device=real.device)
    dfake = torch.empty(fake.shape, dtype=fake.dtype, device=fake.device)
    with _device_guard(real):
        _d_loss_fwd_kernel[(programs,)](
            r, f, dreal, dfake, partials, n_r, n_f, 1.0 / n_r, 1.0 / n_f, 1.0 - float(smooth), per_prog,
            KIND=KIND_IDS[kind], BLOCK=block, num_warps=warps,
        )
        _finish(partials, loss, programs)
    return loss, dreal, dfake


def g_loss_fwd(fake: torch.Tensor, kind: str):
    """Launch the G objective: returns (loss fp32 scalar, dfake)."""
    f = _flat(fake)
    n_f = f.numel()
    block, per_prog, programs, warps = _launch_settings(n_f)
    loss = torch.empty((), dtype=torch.float32, device=fake.device)
    partials = loss if programs == 1 else torch.empty(programs, dtype=torch.float32, device=fake.device)
    dfake = torch.empty(fake.shape, dtype=fake.dtype, device=fake.device)
    with _device_guard(fake):
        _g_loss_fwd_kernel[(programs,)](
            f, dfake, partials, n_f, 1.0 / n_f, per_prog, KIND=KIND_IDS[kind], BLOCK=block, num_warps=warps,
        )
        _finish(partials, loss, programs)
    return loss, dfake


# -- torch.library registration -------------------------------------------------------------

@torch.library.custom_op("fastgan::d_loss", mutates_args=())
def _d_loss_op(real: torch.Tensor, fake: torch.Tensor, kind: str, smooth: float
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return d_loss_fwd(real, fake, kind, smooth)


@_d_loss_op.register_fake
def _(real, fake, kind, smooth):
    return (real.new_empty((), dtype=torch.float32),
            real.new_empty(real.shape), fake.new_empty(fake.shape))


def _d_loss_setup(ctx, inputs, output):
    real, fake, kind, smooth = inputs
    _, dreal, dfake = output
    ctx.kind, ctx.smooth = kind, smooth
    ctx.save_for_backward(real, fake, dreal, dfake)


def _vjp_through_ref(fn, inputs: tuple[torch.Tensor, ...], grad: torch.Tensor):
    """Differentiable VJP of the reference ``fn(*inputs)`` (used only under create_graph)."""
    need = [x for x in inputs if x.requires_grad]
    with torch.enable_grad():
        got = iter(torch.autograd.grad(fn(*inputs), need, grad, create_graph=True, allow_unused=True))
    out = []
    for x in inputs:
        g = next(got) if x.requires_grad else None
        out.append(torch.zeros_like(x) if (g is None and x.requires_grad) else g)
    return out


def _d_loss_backward(ctx, grad, _grad_dreal, _grad_dfake):
    real, fake, dreal, dfake = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: the VJP must itself be differentiable
        gr, gf = _vjp_through_ref(lambda r, f: _d_loss_ref(r, f, ctx.kind, ctx.smooth), (real, fake), grad)
        return gr, gf, None, None
    # grad is a 0-dim fp32 tensor: the products keep the logits' dtype.
    return grad * dreal, grad * dfake, None, None


_d_loss_op.register_autograd(_d_loss_backward, setup_context=_d_loss_setup)


@torch.library.custom_op("fastgan::g_loss", mutates_args=())
def _g_loss_op(fake: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    return g_loss_fwd(fake, kind)


@_g_loss_op.register_fake
def _(fake, kind):
    return fake.new_empty((), dtype=torch.float32), fake.new_empty(fake.shape)


def _g_loss_setup(ctx, inputs, output):
    fake, kind = inputs
    ctx.kind = kind
    ctx.save_for_backward(fake, output[1])


def _g_loss_backward(ctx, grad, _grad_dfake):
    fake, dfake = ctx.saved_tensors
    if torch.is_grad_enabled():
        (gf,) = _vjp_through_ref(lambda f: _g_loss_ref(f, ctx.kind), (fake,), grad)
        return gf, None
    return grad * dfake, None


_g_loss_op.register_autograd(_g_loss_backward, setup_context=_g_loss_setup)

# Eager calls skip torch.library's dispatch (see fastgan.ops._impl.eager_twin); traced ones use the ops.
_d_loss_call = eager_twin(torch.ops.fastgan.d_loss, d_loss_fwd, backward=_d_loss_backward, setup_context=_d_loss_setup,
                          name="DLossFunction")
_g_loss_call = eager_twin(torch.ops.fastgan.g_loss, g_loss_fwd, backward=_g_loss_backward, setup_context=_g_loss_setup,
                          name="GLossFunction")


# -- entry points used by fastgan.ops.losses -------------------------------------------------

def d_loss_triton(real: torch.Tensor, fake: torch.Tensor, kind: str, smooth: float) -> torch.Tensor:
    """The D objective through ``fastgan::d_loss`` (empty logits go to the reference: mean of nothing)."""
    if real.numel() == 0 or fake.numel() == 0:
        return _d_loss_ref(real, fake, kind, smooth)
    return _d_loss_call(real, fake, kind, float(smooth))[0]


def g_loss_triton(fake: torch.Tensor, kind: str) -> torch.Tensor:
    """The G objective through ``fastgan::g_loss``."""
    if fake.numel() == 0:
        return _g_loss_ref(fake, kind)
    return _g_loss_call(fake, kind)[0]
