"""Data-parallel training over processes (``torchrun``): one rank per GPU (or CPU process, gloo).

The rule for batch and learning rates: ``batch_size`` is the **global** batch and the learning rates are the
single-process run's; each of the N ranks trains on ``batch_size / N`` images (which must divide), so N GPUs
run the same optimization as one GPU with the whole batch, faster.

How the ranks stay one run:

- Data: every rank walks the same seeded permutation and takes its slice of each global batch
  (:class:`fastgan.data.InfiniteLoader`'s ``shard``); the ranks see disjoint images, all of them together
  the single-process batch.
- Noise: the engine draws each noise field for the global batch from the RNG every rank seeds alike and
  keeps its own slice, so ranks draw different latents and labels, and the N slices are the single-process
  draw. Every rank thus consumes the same RNG, and stays in step with the others.
- Gradients: each update all-reduces (averages) the gradients of the networks it trains, once, after its
  terms' backwards and before its optimizer steps: :meth:`DistContext.average_gradients`. Not
  DistributedDataParallel: DDP's reducer hooks do not serve the double backward of gradient penalties
  (``autograd.grad(create_graph=True)``), nor a backward restricted to the updated networks
  (``backward(inputs=...)``) that runs twice into one step (a main term plus a lazy penalty), and they
  cannot be recorded in a CUDA graph; one flat all-reduce per update is all three modes' path (NCCL
  collectives are captured in graphs mode).
- BatchNorm: on CUDA, every BatchNorm becomes a SyncBatchNorm (statistics over the global batch, as the
  single-process run has them; fastgan's fused BatchNormAct modules become :class:`SyncBatchNormAct`, the
  same parameters and buffers with the activation applied after). SyncBatchNorm is CUDA-only: CPU (gloo) runs
  keep per-rank statistics.
- Only rank 0 writes: logs, samples, evaluations, checkpoints; the loss stats of a tick are averaged over ranks.
"""
from __future__ import annotations

import dataclasses
import datetime
import os

import torch
from torch import nn

from fastgan.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class DistContext:
    """This process's place in a data-parallel run."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local_batch(self, global_batch: int) -> int:
        """The per-rank batch of a global batch (one-line error if the ranks cannot share it evenly)."""
        if global_batch % self.world:
            raise ConfigError(f"batch {global_batch} does not split over {self.world} processes; pass a batch that is a "
                              f"multiple of {self.world} (it is the global batch: each process trains on batch / "
                              f"{self.world})")
        return global_batch // self.world

    def slice(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's share of a tensor drawn for the global batch (dim 0)."""
        n = t.shape[0] // self.world
        return t[self.rank * n:(self.rank + 1) * n]

    def average_gradients(self, params: list[torch.Tensor]) -> None:
        """Average the gradients of ``params`` over the ranks: one flat all-reduce (parameters without a
        gradient are skipped alike on every rank: each rank runs the same schedule)."""
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        flat.div_(self.world)
        torch._foreach_copy_(grads, [v.view_as(g) for v, g in zip(flat.split([g.numel() for g in grads]), grads)])

    def broadcast_modules(self, modules) -> None:
        """Every rank starts from rank 0's parameters and buffers."""
        for m in modules:
            for t in list(m.parameters()) + list(m.buffers()):
                torch.distributed.broadcast(t.data, src=0)

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean of a device tensor over the ranks (a tick's stats)."""
        out = values.clone()
        torch.distributed.all_reduce(out)
        return out / self.world

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()


SINGLE = DistContext()


def from_env() -> DistContext:
    """The context ``torchrun`` describes (RANK, WORLD_SIZE, LOCAL_RANK), the process group initialized
    (NCCL on CUDA, gloo on CPU); a single-process context without them."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        torch.distributed.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return DistContext(rank=rank, world=world, local_rank=local)


def shutdown(ctx: DistContext, *, clean: bool = True) -> None:
    """Tear the process group down. After a clean finish (``clean``) the ranks first meet at a barrier: a rank
    that tore gloo down while its peer was still in its last steps made the peer abort ("terminate called
    without an active exception", about one 2-rank run in fifteen). After an error there is no barrier (the
    other ranks may never reach it)."""
    if ctx.enabled and torch.distributed.is_initialized():
        if clean:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()


class SyncBatchNormAct(nn.SyncBatchNorm):
    """``act(SyncBatchNorm(x))`` with the state_dict of the BatchNormAct it replaces (CUDA data-parallel runs)."""

    act: str = "linear"
    alpha: float | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from fastgan.ops.activations import apply_activation_ref

        return apply_activation_ref(super().forward(x), self.act, self.alpha)


def sync_batch_norms(module: nn.Module) -> nn.Module:
    """``module`` with every BatchNorm a SyncBatchNorm (fastgan's BatchNormAct a :class:`SyncBatchNormAct`), the
    same parameters, buffers and state_dict keys; in place for children, returned for the root."""
    from fastgan.nn.blocks import _BatchNormActMixin

    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, nn.SyncBatchNorm):
        cls = SyncBatchNormAct if isinstance(module, _BatchNormActMixin) else nn.SyncBatchNorm
        out = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if isinstance(module, _BatchNormActMixin):
            out.act, out.alpha = module.act, module.alpha
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
        return out
    for name, child in module.named_children():
        new = sync_batch_norms(child)
        if new is not child:
            setattr(module, name, new)
    return module
