"""Datasets (embedded real default, folders, npz, synthetic) and the device-prefetching loader."""
from fastgan.data.datasets import (
    DEFAULT_DATASET,
    IMAGE_EXTENSIONS,
    ImageDataset,
    available_datasets,
    load_dataset,
)
from fastgan.data.loader import InfiniteLoader, UnpairedLoader

__all__ = [
    "DEFAULT_DATASET",
    "IMAGE_EXTENSIONS",
    "ImageDataset",
    "InfiniteLoader",
    "UnpairedLoader",
    "available_datasets",
    "load_dataset",
]
