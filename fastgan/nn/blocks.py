"""Norm+activation and bias+activation blocks (thin wrappers over fastgan.ops)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastgan import ops
from fastgan.errors import ConfigError


class _ActAttrs:
    """``act``/``alpha`` as plain attributes (no state_dict entries), checked once, shown in the repr."""

    act: str
    alpha: float | None

    def _init_act(self, act: str, alpha: float | None) -> None:
        ops.get_activation(act)
        self.act, self.alpha = act, alpha

    def extra_repr(self) -> str:
        return super().extra_repr() + f", act={self.act}" + (f", alpha={self.alpha}" if self.alpha is not None else "")


class _BatchNormActMixin(_ActAttrs):
    """Forward of nn.BatchNorm{1,2}d (same momentum/num_batches_tracked rules) + activation."""

    def __init__(self, num_features: int, act: str = "linear", alpha: float | None = None, **kw):
        super().__init__(num_features, **kw)
        self._init_act(act, alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        self._check_input_dim(x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as in nn.BatchNorm
                factor = 1.0 / float(self.num_batches_tracked)
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        track = not self.training or self.track_running_stats
        return ops.batch_norm_act(
            x, self.weight, self.bias,
            self.running_mean if track else None,
            self.running_var if track else None,
            training=use_batch_stats, momentum=factor, eps=self.eps, act=self.act, alpha=self.alpha,
        )


class BatchNormAct2d(_BatchNormActMixin, nn.BatchNorm2d):
    """``act(BatchNorm2d(x))``; state_dict identical to ``nn.BatchNorm2d``."""


class BatchNormAct1d(_BatchNormActMixin, nn.BatchNorm1d):
    """``act(BatchNorm1d(x))``; state_dict identical to ``nn.BatchNorm1d``."""


class InstanceNormAct2d(_ActAttrs, nn.InstanceNorm2d):
    """``act(InstanceNorm2d(x))``; state_dict identical to ``nn.InstanceNorm2d`` (no running stats)."""

    def __init__(self, num_features: int, act: str = "linear", alpha: float | None = None,
                 eps: float = 1e-5, affine: bool = False):
        super().__init__(num_features, eps=eps, affine=affine, track_running_stats=False)
        self._init_act(act, alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if x.dim() == 3:  # unbatched (C, H, W), as nn.InstanceNorm2d accepts
            return self.forward(x.unsqueeze(0)).squeeze(0)
        return ops.instance_norm_act(x, self.weight, self.bias, eps=self.eps, act=self.act, alpha=self.alpha)


class PixelNorm(nn.Module):
    """Normalize each pixel's feature vector to unit RMS (ProGAN)."""

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.pixel_norm(x, eps=self.eps)


class BiasAct(nn.Module):
    """``gain * act(x + bias)`` with the bias along dim 1; ``bias=False`` for activation only."""

    def __init__(self, channels: int, act: str = "linear", alpha: float | None = None,
                 gain: float = 1.0, clamp: float | None = None, bias: bool = True):
        super().__init__()
        ops.get_activation(act)
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None
        self.act, self.alpha, self.gain, self.clamp = act, alpha, gain, clamp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.bias_act(x, self.bias, act=self.act, alpha=self.alpha, gain=self.gain, clamp=self.clamp)

    def extra_repr(self) -> str:
        return f"act={self.act}, alpha={self.alpha}, gain={self.gain}, clamp={self.clamp}"


class _BiasActMixin(_ActAttrs):
    """A stock layer that computes its matmul/conv without the bias, then ``act(y + bias)`` in one fused pass.

    Same constructor arguments (plus ``act``/``alpha``), parameters and state_dict keys as the stock layer.
    """

    def __init__(self, *args, act: str = "linear", alpha: float | None = None, **kw):
        super().__init__(*args, **kw)
        self._init_act(act, alpha)

    def _bias_act(self, y: torch.Tensor, dim: int = 1) -> torch.Tensor:
        return ops.bias_act(y, self.bias, dim=dim, act=self.act, alpha=self.alpha)


class Conv2dBiasAct(_BiasActMixin, nn.Conv2d):
    """``act(conv2d(x) + bias)``; state_dict identical to ``nn.Conv2d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:  # unbatched (C, H, W)
            return self.forward(x.unsqueeze(0)).squeeze(0)
        return self._bias_act(self._conv_forward(x, self.weight, None))


class ConvTranspose2dBiasAct(_BiasActMixin, nn.ConvTranspose2d):
    """``act(conv_transpose2d(x) + bias)``; state_dict identical to ``nn.ConvTranspose2d``."""

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if x.dim() == 3:  # unbatched (C, H, W)
            return self.forward(x.unsqueeze(0), output_size).squeeze(0)
        if self.padding_mode != "zeros":
            raise ValueError("only 'zeros' padding mode is supported for ConvTranspose2d")
        output_padding = self._output_padding(x, output_size, self.stride, self.padding, self.kernel_size, 2,
                                              self.dilation)
        y = F.conv_transpose2d(x, self.weight, None, self.stride, self.padding, output_padding, self.groups,
                               self.dilation)
        return self._bias_act(y)


class LinearBiasAct(_BiasActMixin, nn.Linear):
    """``act(x @ W.T + bias)``; state_dict identical to ``nn.Linear``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight)
        return self._bias_act(y, dim=y.dim() - 1)  # features are the last dim


NORMS = ("batch", "instance", "none")


class ConvNormAct(nn.Module):
    """Conv (or transposed conv) → norm → activation, the DCGAN/pix2pix building block.

    With a norm the conv has no bias (the norm's shift replaces it) and the norm fuses the
    activation; with ``norm="none"`` the conv's bias is fused with the activation (``BiasAct``).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 4, stride: int = 2, padding: int = 1, *,
                 transposed: bool = False, norm: str = "batch", act: str = "relu", alpha: float | None = None):
        super().__init__()
        if norm not in NORMS:
            raise ConfigError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
        conv = nn.ConvTranspose2d if transposed else nn.Conv2d
        self.conv = conv(in_ch, out_ch, kernel, stride, padding, bias=False)
        if norm == "batch":
            self.norm: nn.Module = BatchNormAct2d(out_ch, act=act, alpha=alpha)
        elif norm == "instance":
            self.norm = InstanceNormAct2d(out_ch, act=act, alpha=alpha, affine=True)
        else:
            self.norm = BiasAct(out_ch, act=act, alpha=alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))
