"""An endless, seeded, shuffled batch stream with device prefetch.

On the CPU a batch is a plain ``index_select`` (no threads, fully deterministic). On CUDA a
background thread gathers upcoming batches into pinned host memory and the main thread copies
them with ``non_blocking=True`` on a side stream, keeping ``prefetch`` batches in flight; the
consumer's stream waits on a per-batch event, and ``record_stream`` tells the caching allocator
the batch is used there. The batch order depends only on ``seed``, never on the device.
"""
from __future__ import annotations

import queue
import threading
import weakref
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from fastgan.data.datasets import ImageDataset
from fastgan.errors import DataError

__all__ = ["InfiniteLoader", "UnpairedLoader"]

_IndexBatch = tuple[int, torch.Tensor]  # (epoch, indices)


def _index_batches(n: int, batch_size: int, seed: int, drop_last: bool) -> Iterator[_IndexBatch]:
    """Endless ``(epoch, indices)``: one seeded permutation of ``range(n)`` per epoch."""
    g = torch.Generator().manual_seed(seed)
    stop = n - n % batch_size if drop_last else n
    epoch = 0
    while True:
        perm = torch.randperm(n, generator=g)
        for start in range(0, stop, batch_size):
            yield epoch, perm[start:start + batch_size]
        epoch += 1


@dataclass
class _HostBatch:
    epoch: int
    images: torch.Tensor
    labels: torch.Tensor | None


class _HostPrefetcher:
    """A daemon thread that gathers batches into (optionally pinned) CPU tensors, in order.

    The thread holds no reference to the loader, so dropping the loader stops it (through
    ``weakref.finalize``); errors in the thread are re-raised by :meth:`get`.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None,
                 indices: Iterator[_IndexBatch], depth: int, pin: bool) -> None:
        self._queue: queue.Queue[_HostBatch | BaseException] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(images, labels, indices, pin, self._queue, self._stop),
            name="fastgan-prefetch", daemon=True)
        self._thread.start()

    @staticmethod
    def _run(images: torch.Tensor, labels: torch.Tensor | None, indices: Iterator[_IndexBatch],
             pin: bool, out: queue.Queue, stop: threading.Event) -> None:
        def put(item: _HostBatch | BaseException) -> bool:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            for epoch, idx in indices:
                x = torch.empty((len(idx), *images.shape[1:]), dtype=images.dtype, pin_memory=pin)
                torch.index_select(images, 0, idx, out=x)
                y = None
                if labels is not None:
                    y = torch.empty((len(idx),), dtype=labels.dtype, pin_memory=pin)
                    torch.index_select(labels, 0, idx, out=y)
                if not put(_HostBatch(epoch, x, y)):
                    return
        except BaseException as exc:  # hand the failure to the consumer
            put(exc)

    def get(self) -> _HostBatch:
        """The next gathered batch, in order."""
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stop the thread and wait for it."""
        self._stop.set()
        self._thread.join(timeout=5.0)


@dataclass
class _DeviceBatch:
    epoch: int
    images: torch.Tensor
    labels: torch.Tensor | None
    ready: torch.cuda.Event
    host: _HostBatch  # keep the pinned source alive until the copy is consumed


class InfiniteLoader:
    """Endless shuffled batches ``(images (B,C,R,R) float32, labels (B,) int64 | None)`` on device.

    Each epoch is a fresh permutation from a ``torch.Generator`` seeded with ``seed``.
    ``len(loader)`` is the number of batches per epoch; ``loader.epoch`` is the epoch of the
    batch returned last. With ``on_device=True`` the whole dataset is copied to the device once
    and batches are gathered there (fastest when it fits in device memory). ``skip=k`` starts ``k``
    batches into the stream (resuming one: the same permutations, without reading the skipped images).
    ``shard=(rank, world)`` (data-parallel runs): ``batch_size`` is the global batch, and this loader yields
    rank ``rank``'s ``batch_size / world`` images of each one.
    """

    def __init__(self, dataset: ImageDataset, batch_size: int, device: torch.device | str, *,
                 seed: int = 0, drop_last: bool = True, prefetch: int = 2,
                 on_device: bool = False, skip: int = 0, shard: tuple[int, int] = (0, 1)) -> None:
        n = len(dataset)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise DataError(f"batch size must be a positive integer, got {batch_size!r}; "
                            "pass e.g. --batch 64")
        if batch_size > n:
            raise DataError(f"batch size {batch_size} is larger than dataset '{dataset.name}' "
                            f"({n} images); lower --batch to at most {n}")
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1:
            raise DataError(f"prefetch must be an integer >= 1, got {prefetch!r}; pass e.g. 2")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise DataError(f"device '{self.device}' was requested but CUDA is not available; "
                            "pass device='cpu' or run on a machine with a GPU")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.drop_last = drop_last
        self.prefetch = prefetch
        self.on_device = on_device
        self.epoch = 0
        self._closed = False
        self._len = n // batch_size if drop_last else -(-n // batch_size)
        rank, world = shard
        if world < 1 or not 0 <= rank < world or batch_size % world:
            raise DataError(f"cannot shard batches of {batch_size} over {world} processes as rank {rank}; the batch "
                            f"must be a multiple of the process count")
        self._indices = _index_batches(n, batch_size, seed, drop_last)
        if world > 1:   # this rank's slice of every global batch: the ranks together see the whole batch
            b = batch_size // world
            self._indices = ((e, idx[rank * b:(rank + 1) * b]) for e, idx in self._indices)
        for _ in range(int(skip)):      # resume a stream: the same permutations, k batches in (indices only)
            self.epoch, _ = next(self._indices)

        self._images = dataset.images
        self._labels = dataset.labels
        if on_device:
            self._images = self._images.to(self.device)
            self._labels = None if self._labels is None else self._labels.to(self.device)
        self._cuda_prefetch = self.device.type == "cuda" and not on_device
        self._host: _HostPrefetcher | None = None
        self._inflight: deque[_DeviceBatch] = deque()
        self._stream: torch.cuda.Stream | None = None

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> InfiniteLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self._closed:
            raise StopIteration
        if self._cuda_prefetch:
            return self._next_cuda()
        epoch, idx = next(self._indices)
        if self.on_device:
            idx = idx.to(self.device, non_blocking=True)
        x = self._images.index_select(0, idx)
        y = None if self._labels is None else self._labels.index_select(0, idx)
        if x.device != self.device:  # devices other than CPU and CUDA: plain copy
            x = x.to(self.device)
            y = None if y is None else y.to(self.device)
        self.epoch = epoch
        return x, y

    # -- CUDA: pinned gather in a thread, non-blocking copies on a side stream ----------------

    def _start_cuda(self) -> None:
        self._stream = torch.cuda.Stream(device=self.device)
        self._host = _HostPrefetcher(self._images, self._labels, self._indices,
                                     depth=self.prefetch, pin=True)
        weakref.finalize(self, self._host.close)

    def _transfer(self) -> None:
        assert self._host is not None and self._stream is not None
        host = self._host.get()
        with torch.cuda.stream(self._stream):
            x = host.images.to(self.device, non_blocking=True)
            y = None if host.labels is None else host.labels.to(self.device, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(self._stream)
        self._inflight.append(_DeviceBatch(host.epoch, x, y, ready, host))

    def _next_cuda(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self._host is None:
            self._start_cuda()
        if not self._inflight:
            self._transfer()
        batch = self._inflight.popleft()
        while len(self._inflight) < self.prefetch:  # keep the next copies in flight
            self._transfer()
        consumer = torch.cuda.current_stream(self.device)
        consumer.wait_event(batch.ready)
        batch.images.record_stream(consumer)
        if batch.labels is not None:
            batch.labels.record_stream(consumer)
        self.epoch = batch.epoch
        return batch.images, batch.labels

    def close(self) -> None:
        """Stop the prefetch thread (CUDA only); the loader yields nothing afterwards."""
        self._closed = True
        if self._host is not None:
            self._host.close()
        self._inflight.clear()


class UnpairedLoader:
    """An endless stream of unpaired two-domain batches ``{"A": images of a, "B": images of b}`` (CycleGAN's
    data): each domain shuffled on its own (seeds ``seed`` and ``seed + 1``), so a pair is not a
    correspondence. Batches have the ``batch_size`` of both domains; labels are not carried."""

    def __init__(self, a: ImageDataset, b: ImageDataset, batch_size: int, device: torch.device | str, *,
                 seed: int = 0, **kwargs) -> None:
        if a.images.shape[1:] != b.images.shape[1:]:
            raise DataError(f"domains '{a.name}' and '{b.name}' have images of shapes {tuple(a.images.shape[1:])} and "
                            f"{tuple(b.images.shape[1:])}; load both at the same resolution and channels")
        self.a = InfiniteLoader(a, batch_size, device, seed=seed, **kwargs)
        self.b = InfiniteLoader(b, batch_size, device, seed=seed + 1, **kwargs)
        self.batch_size = batch_size

    def __iter__(self) -> "UnpairedLoader":
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        return {"A": next(self.a)[0], "B": next(self.b)[0]}

    def close(self) -> None:
        self.a.close()
        self.b.close()
