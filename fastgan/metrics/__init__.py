"""Offline GAN quality metrics in a domain feature space (no downloads, no Inception).

FID/KID and precision/recall (Kynkäänniemi et al. 2019) are computed in the embedding of a
small classifier trained on the dataset itself and cached per dataset. The numbers are
comparable across fastgan runs on the same dataset only, not with published Inception FIDs.
"""
from fastgan.metrics.features import FeatureNet, extract_features, get_feature_net
from fastgan.metrics.fid import DomainEvaluator, fid_from_features, kid_from_features, precision_recall

__all__ = [
    "FeatureNet",
    "get_feature_net",
    "extract_features",
    "fid_from_features",
    "kid_from_features",
    "precision_recall",
    "DomainEvaluator",
]
