"""``fastgan.fuse(model)``: a user's own generator or discriminator, faster, with the same weights.

This module is ``fastgan.fusion`` (``fastgan.fuse`` is the function, so the name is not shadowed);
it also has :func:`explain` (what would be fused and why the rest is not) and :func:`unfuse`.

What is rewritten: inside every ``nn.Sequential`` of the module tree (a Sequential's order *is* its
call order, so "A then B" is known there and nowhere else), a stock layer followed by a stock
activation becomes one fused module::

    BatchNorm1d/BatchNorm2d  -> act     BatchNormAct1d/2d       (fastgan.ops.batch_norm_act)
    InstanceNorm2d           -> act     InstanceNormAct2d       (fastgan.ops.instance_norm_act)
    Conv2d/ConvTranspose2d/Linear with a bias -> act
                                        Conv2dBiasAct, ...      (cuDNN/cuBLAS without the bias, then
                                                                 fastgan.ops.bias_act: bias + act in one pass)

A layer that ends a nested plain Sequential pairs with the activation after that Sequential
(``Sequential(Sequential(conv, bn), ReLU())``, torchvision-style ``ConvBN`` blocks), since the inner
one returns its last layer's output; the chain must not pass through a shared module.

Activations: ReLU, LeakyReLU (any slope), Tanh, Sigmoid, SiLU, GELU (exact). With
``standalone_norms=True`` a norm that no activation follows is fused with the identity too.

How: the layer keeps its identity: its class is swapped for the fused subclass of the same stock
class (``BatchNormAct2d`` *is* an ``nn.BatchNorm2d``), so its parameters, buffers, ``state_dict``
keys, an optimizer built before ``fuse`` and references such as ``self.bn1`` all stay valid; the
activation's slot becomes ``nn.Identity()``, so Sequential indices and keys do not move. A fused
model loads a checkpoint written by the original model and the original loads the fused one's.

Left alone, each with its reason in :func:`explain`: layers outside a Sequential (an ``F.relu`` in
a hand-written ``forward`` cannot be seen without tracing it), a norm or layer followed by something
else, a layer registered in more than one place (shared or tied: every use would get the
activation), modules with hooks or an instance-level ``forward``, parametrized modules
(``spectral_norm``, ``weight_norm``), subclasses of the stock classes (their ``forward`` may
differ), lazy modules before their first forward, instance norm with running statistics,
``GELU(approximate="tanh")``, biasless convs (the activation alone has nothing to fuse with).

Assumptions a Sequential cannot tell us: it is called as a whole (code that iterates it by hand to
collect intermediate features, or slices it between a layer and its activation, sees the fused
layer's post-activation output), and ``fuse`` is the last rewrite of the model: a later tool that
rebuilds modules by type (``nn.SyncBatchNorm.convert_sync_batchnorm``, quantization) would drop
the fused activation. Convert first, then fuse; :func:`unfuse` turns a fused model back into stock
modules (the activation back in its slot) when a stock model is needed.

The fused forward computes the same function: outputs and gradients match the original to float
rounding (tests/test_fusion.py checks train and eval mode, running statistics, second-order gradients
for penalties, state_dict round trips and ``torch.compile``). Which implementation runs is the
process-wide ``fastgan.ops`` choice (``impl="auto"``: Triton on CUDA, the torch reference elsewhere).
"""
from __future__ import annotations

import copy
import dataclasses

from torch import nn

from fastgan.errors import ConfigError
from fastgan.nn.blocks import (
    BatchNormAct1d,
    BatchNormAct2d,
    Conv2dBiasAct,
    ConvTranspose2dBiasAct,
    InstanceNormAct2d,
    LinearBiasAct,
)

# stock class -> fused subclass it is swapped to
_NORMS = {nn.BatchNorm1d: BatchNormAct1d, nn.BatchNorm2d: BatchNormAct2d, nn.InstanceNorm2d: InstanceNormAct2d}
_LAYERS = {nn.Conv2d: Conv2dBiasAct, nn.ConvTranspose2d: ConvTranspose2dBiasAct, nn.Linear: LinearBiasAct}
_FUSED = tuple(_NORMS.values()) + tuple(_LAYERS.values())


@dataclasses.dataclass(frozen=True)
class Entry:
    """One decision: ``path`` (as in ``named_modules``), ``fused`` or not, and what / why."""

    path: str
    fused: bool
    what: str


@dataclasses.dataclass
class FusePlan:
    """What :func:`fuse` does (or did) to a model; ``str(plan)`` is a readable table."""

    entries: list[Entry]

    @property
    def fused(self) -> list[Entry]:
        return [e for e in self.entries if e.fused]

    @property
    def skipped(self) -> list[Entry]:
        return [e for e in self.entries if not e.fused]

    def __str__(self) -> str:
        if not self.entries:
            return "fastgan.fuse: no norm or biased conv/linear layer in this model"
        width = max(len(e.path or "<root>") for e in self.entries)
        already = sum(e.what == "already fused" for e in self.skipped)
        lines = [f"fastgan.fuse: {len(self.fused)} fused, {len(self.skipped)} left as they are"
                 + (f" ({already} of them already fused)" if already else "")]
        lines += [f"  {'fused' if e.fused else 'left '}  {(e.path or '<root>'):<{width}}  {e.what}" for e in self.entries]
        return "\n".join(lines)


def _activation(m: nn.Module) -> tuple[str, float | None] | str:
    """(act, alpha) for a fusable activation module, else the reason it is not one."""
    t = type(m)
    if t is nn.ReLU:
        return "relu", None
    if t is nn.LeakyReLU:
        return "lrelu", float(m.negative_slope)
    if t is nn.Tanh:
        return "tanh", None
    if t is nn.Sigmoid:
        return "sigmoid", None
    if t is nn.SiLU:
        return "silu", None
    if t is nn.GELU:
        return ("gelu", None) if m.approximate == "none" else "GELU(approximate='tanh') is not in the fused table"
    return f"followed by {t.__name__}, not an activation fastgan fuses"


def _hooked(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                or getattr(m, "_backward_pre_hooks", None))


def _fusable(m: nn.Module, uses: int) -> str | None:
    """None when ``m`` may be swapped to its fused class, else why not (``uses``: slots holding ``m``)."""
    t = type(m)
    if isinstance(m, _FUSED):
        return "already fused"
    if nn.utils.parametrize.is_parametrized(m):
        return "parametrized (spectral_norm/weight_norm): the fused class would drop the parametrization"
    if isinstance(m, nn.modules.lazy.LazyModuleMixin):
        return "lazy module: run one forward first, then fuse"
    if t not in _NORMS and t not in _LAYERS:
        return f"{t.__name__} is a subclass of a stock layer; its forward may differ, so it is kept"
    if uses > 1:
        return f"registered in {uses} places (shared or tied): every use would get the activation"
    if _hooked(m):
        return "has hooks, which fusing would move or break"
    if "forward" in m.__dict__:
        return "its forward is overridden on the instance"
    if t is nn.InstanceNorm2d and m.track_running_stats:
        return "InstanceNorm2d(track_running_stats=True) is not fused"
    if t is nn.ConvTranspose2d and m.padding_mode != "zeros":
        return f"ConvTranspose2d(padding_mode={m.padding_mode!r}) is refused by PyTorch itself"
    return None


_STOCK = tuple(_NORMS) + tuple(_LAYERS)


def _candidate(m: nn.Module) -> bool:
    """Worth mentioning in the plan: a stock norm/layer or a subclass of one (fused ones included)."""
    lazy = isinstance(m, nn.modules.lazy.LazyModuleMixin) and getattr(m, "cls_to_become", None) in _STOCK
    return isinstance(m, _STOCK) or lazy


def _is_plain_sequential(m: nn.Module) -> bool:
    return isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward


def _slot_uses(model: nn.Module) -> dict[int, int]:
    """How many container slots hold each module (by id): a module in two slots (tied weights, a layer
    kept as an attribute and also inside a Sequential) cannot take an activation for only one of them."""
    uses: dict[int, int] = {}
    for parent in model.modules():
        for child in parent._modules.values():
            if child is not None:
                uses[id(child)] = uses.get(id(child), 0) + 1
    return uses


def _tail(seq: nn.Sequential, uses: dict[int, int]) -> nn.Module | None:
    """The module whose output a plain Sequential returns (through nested plain Sequentials), or None
    when that chain passes through a module registered in more than one place."""
    while True:
        slots = [c for c in seq._modules.values() if c is not None]
        if not slots:
            return None
        last = slots[-1]
        if uses.get(id(last), 1) > 1:
            return None
        if not _is_plain_sequential(last):
            return last
        seq = last


def _plan(model: nn.Module, standalone_norms: bool, layers: bool) -> tuple[FusePlan, list]:
    uses = _slot_uses(model)
    entries: dict[str, Entry] = {}
    actions: list[tuple[nn.Module, type, str, float | None, nn.Sequential | None, str | None]] = []
    paths: dict[int, str] = {}
    for p, mod in model.named_modules():
        paths.setdefault(id(mod), p)
    claimed: set[int] = set()   # layers fused with an activation that follows their Sequential
    for seq_path, seq in model.named_modules():
        if not _is_plain_sequential(seq):
            continue
        # Every slot in call order, repeats included (named_children would drop a repeated module).
        slots = [(name, m) for name, m in seq._modules.items() if m is not None]
        i = 0
        while i < len(slots):
            name, m = slots[i]
            nxt = slots[i + 1] if i + 1 < len(slots) else None
            if id(m) in claimed:
                i += 1
                continue
            if _is_plain_sequential(m):
                # Sequential(Sequential(conv, bn), ReLU()): the inner one returns its last layer's output.
                tail = _tail(m, uses) if uses.get(id(m), 1) == 1 else None   # a shared one has other uses
                act = _activation(nxt[1]) if nxt is not None else None
                if (tail is not None and isinstance(act, tuple) and _candidate(tail)
                        and (isinstance(tail, tuple(_NORMS)) or layers)
                        and _fusable(tail, uses.get(id(tail), 1)) is None
                        and (isinstance(tail, tuple(_NORMS)) or tail.bias is not None)
                        and not (_hooked(nxt[1]) or "forward" in nxt[1].__dict__)):
                    target = _NORMS.get(type(tail)) or _LAYERS[type(tail)]
                    actions.append((tail, target, act[0], act[1], seq, nxt[0]))
                    tpath = paths[id(tail)]
                    entries[tpath] = Entry(tpath, True, f"{type(tail).__name__} (last in its Sequential) + "
                                                        f"{type(nxt[1]).__name__} -> {target.__name__}(act={act[0]!r})")
                    claimed.add(id(tail))
                    i += 2
                    continue
                i += 1
                continue
            path = f"{seq_path}.{name}" if seq_path else name
            is_norm = isinstance(m, tuple(_NORMS))
            if not _candidate(m) or (not is_norm and not layers):
                i += 1
                continue
            why = _fusable(m, uses.get(id(m), 1))
            if why is not None:
                entries.setdefault(path, Entry(path, False, why))
                i += 1
                continue
            act = _activation(nxt[1]) if nxt is not None else "last in its Sequential, no activation follows"
            if isinstance(act, tuple) and (_hooked(nxt[1]) or "forward" in nxt[1].__dict__):
                act = f"the following {type(nxt[1]).__name__} has hooks or an instance-level forward"
            if isinstance(act, tuple) and not is_norm and m.bias is None:
                act = f"no bias: the {type(nxt[1]).__name__} after it has nothing to fuse with"
            if isinstance(act, tuple):
                target = _NORMS.get(type(m)) or _LAYERS[type(m)]
                actions.append((m, target, act[0], act[1], seq, nxt[0]))
                entries[path] = Entry(path, True, f"{type(m).__name__} + {type(nxt[1]).__name__} -> "
                                                  f"{target.__name__}(act={act[0]!r})")
                i += 2
                continue
            if is_norm and standalone_norms:
                target = _NORMS[type(m)]
                actions.append((m, target, "linear", None, None, None))
                entries[path] = Entry(path, True, f"{type(m).__name__} -> {target.__name__}(act='linear')")
            else:
                entries[path] = Entry(path, False, act)
            i += 1
    seen = {id(m) for e in entries for m in [model.get_submodule(e)]}
    for path, m in model.named_modules():
        if id(m) not in seen and _candidate(m) and (isinstance(m, tuple(_NORMS)) or layers):
            why = _fusable(m, uses.get(id(m), 1)) or \
                "not inside an nn.Sequential: fastgan cannot see what follows it in a custom forward"
            entries[path] = Entry(path, False, why)
    order: dict[str, int] = {}
    for k, (p, _) in enumerate(model.named_modules(remove_duplicate=False)):
        order.setdefault(p, k)
    plan = FusePlan(sorted(entries.values(), key=lambda e: order.get(e.path, len(order))))
    return plan, actions


def explain(model: nn.Module, *, standalone_norms: bool = False, layers: bool = True) -> FusePlan:
    """What :func:`fuse` would do to ``model`` with the same options, without changing it."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"fastgan.fuse needs a torch.nn.Module, got {type(model).__name__}")
    return _plan(model, standalone_norms, layers)[0]


def fuse(model: nn.Module, *, inplace: bool = False, standalone_norms: bool = False, layers: bool = True,
         verbose: bool = False) -> nn.Module:
    """Return ``model`` with its norm+activation and bias+activation pairs fused (see the module docstring).

    ``inplace=False`` (default) works on a deep copy; ``inplace=True`` rewrites ``model`` itself, so
    optimizers and references built before stay valid. ``layers=False`` fuses only the norms.
    ``verbose=True`` prints :func:`explain`'s table. Works on any device and dtype; call it before
    ``torch.compile`` or ``fastgan.Trainer``.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"fastgan.fuse needs a torch.nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    plan, actions = _plan(model, standalone_norms, layers)
    for m, target, act, alpha, seq, act_name in actions:
        m.__class__ = target
        m.act, m.alpha = act, alpha
        m._fastgan_fused = True          # what unfuse() may undo (not blocks a user built by hand)
        if seq is not None:
            # unfuse() puts back the same activation, inplace flag included
            m._fastgan_inplace = bool(getattr(seq._modules[act_name], "inplace", False))
            setattr(seq, act_name, nn.Identity())
    if verbose:
        print(plan)
    return model


_ACT_MODULES = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "silu": nn.SiLU, "gelu": nn.GELU}


def _activation_module(act: str, alpha: float | None, inplace: bool = False) -> nn.Module:
    if act == "lrelu":
        return nn.LeakyReLU(alpha, inplace=inplace)
    if act in ("relu", "silu"):
        return _ACT_MODULES[act](inplace=inplace)
    return _ACT_MODULES[act]()


def unfuse(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Undo :func:`fuse`: stock classes again and each activation module back in its slot.

    For tools that want stock modules (``convert_sync_batchnorm``, TorchScript, export). Only
    layers that ``fuse`` rewrote are touched; the state_dict is unchanged either way.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"fastgan.unfuse needs a torch.nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    stock_of = {fused: stock for stock, fused in list(_NORMS.items()) + list(_LAYERS.items())}
    uses = _slot_uses(model)
    restored: set[int] = set()
    for seq in list(model.modules()):
        if not _is_plain_sequential(seq):
            continue
        names = [n for n, c in seq._modules.items() if c is not None]
        for k, name in enumerate(names):
            slot = seq._modules[name]
            m = _tail(slot, uses) if _is_plain_sequential(slot) else slot
            if m is None or not getattr(m, "_fastgan_fused", False) or m.act == "linear" or id(m) in restored:
                continue
            nxt = names[k + 1] if k + 1 < len(names) else None
            if nxt is None or not isinstance(seq._modules[nxt], nn.Identity):
                continue   # the activation slot is further out (fused across a nested Sequential)
            setattr(seq, nxt, _activation_module(m.act, m.alpha, getattr(m, "_fastgan_inplace", False)))
            restored.add(id(m))
    for m in model.modules():
        if getattr(m, "_fastgan_fused", False):
            if m.act != "linear" and id(m) not in restored:  # pragma: no cover - fuse always leaves the slot
                raise ConfigError(f"cannot unfuse {type(m).__name__}: its activation slot is no longer an Identity")
            m.__class__ = stock_of[type(m)]
            del m.act, m.alpha, m._fastgan_fused
            m.__dict__.pop("_fastgan_inplace", None)
    return model


# ``fastgan.fuse`` is the function; its companions hang off it too: ``fastgan.fuse.explain(model)``.
fuse.explain = explain  # type: ignore[attr-defined]
fuse.unfuse = unfuse  # type: ignore[attr-defined]
