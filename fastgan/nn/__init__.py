"""Thin modules whose forward is one call into :mod:`fastgan.ops`.

State-dict compatibility is a contract: ``BatchNormAct2d`` *is* an ``nn.BatchNorm2d`` (same
parameters, buffers and keys) whose forward also applies the activation, so a model built
from these blocks loads a checkpoint written with stock modules and vice versa.
"""
from fastgan.nn.blocks import (
    BatchNormAct1d,
    BatchNormAct2d,
    BiasAct,
    Conv2dBiasAct,
    ConvNormAct,
    ConvTranspose2dBiasAct,
    InstanceNormAct2d,
    LinearBiasAct,
    PixelNorm,
)

__all__ = ["BatchNormAct1d", "BatchNormAct2d", "BiasAct", "Conv2dBiasAct", "ConvNormAct", "ConvTranspose2dBiasAct",
           "InstanceNormAct2d", "LinearBiasAct", "PixelNorm"]
