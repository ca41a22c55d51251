"""Offline GAN quality metrics in a domain feature space, plus an optional Inception FID.

FID/KID (torchmetrics) and precision/recall (Kynkäänniemi et al. 2019) are computed in the
embedding of a small classifier trained on the dataset itself and cached per dataset. The
numbers are comparable across fastgan runs on the same dataset only, not with published
Inception FIDs; those come from ``load_inception(weights)`` (``pip install 'fastgan[inception]'``,
weights file on disk, nothing downloaded).
"""
from fastgan.metrics.conditional import best_mapping_accuracy, class_agreement
from fastgan.metrics.features import FeatureNet, extract_features, get_feature_net
from fastgan.metrics.fid import DomainEvaluator, fid_from_features, kid_from_features, precision_recall
from fastgan.metrics.inception import InceptionFeatures, check_inception_weights, load_inception

__all__ = [
    "FeatureNet",
    "get_feature_net",
    "extract_features",
    "fid_from_features",
    "kid_from_features",
    "precision_recall",
    "DomainEvaluator",
    "InceptionFeatures",
    "load_inception",
    "check_inception_weights",
    "class_agreement",
    "best_mapping_accuracy",
]
