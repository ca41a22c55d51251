"""Does a conditional generator make the class it is asked for? Measured with the dataset's own classifier.

- :func:`class_agreement`: the fraction of images whose predicted class is the requested one (cGAN, AC-GAN,
  projection: sample each class, classify with the domain feature network, compare).
- :func:`best_mapping_accuracy`: for InfoGAN, whose categorical code is learned without labels, the accuracy of
  the best one-to-one mapping from code values to classes (the Hungarian assignment on the confusion matrix).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from fastgan.errors import FastganError


@torch.no_grad()
def predict(classifier: nn.Module, images: Tensor, batch_size: int = 500) -> Tensor:
    """Class predictions (N,) int64 on the CPU of ``classifier`` (logits (N, K)) over ``images`` in chunks."""
    device = next((p.device for p in classifier.parameters()), torch.device("cpu"))
    was = classifier.training
    classifier.eval()
    try:
        return torch.cat([classifier(images[i:i + batch_size].to(device)).argmax(1).cpu()
                          for i in range(0, images.shape[0], batch_size)])
    finally:
        classifier.train(was)


def class_agreement(classifier: nn.Module, images: Tensor, labels: Tensor) -> float:
    """The fraction of ``images`` that ``classifier`` assigns to their requested ``labels``."""
    if labels.shape != (images.shape[0],):
        raise FastganError(f"class_agreement needs one label per image, got {tuple(labels.shape)} for "
                           f"{images.shape[0]} images")
    return float((predict(classifier, images) == labels.cpu()).float().mean())


def best_mapping_accuracy(codes: Tensor, predicted: Tensor, num_codes: int, num_classes: int
                          ) -> tuple[float, dict[int, int]]:
    """(accuracy, code -> class) of the best one-to-one mapping of ``codes`` (N,) to ``predicted`` classes (N,)."""
    from scipy.optimize import linear_sum_assignment

    confusion = torch.zeros(num_codes, num_classes, dtype=torch.long)
    confusion.index_put_((codes.long().cpu(), predicted.long().cpu()), torch.ones(codes.shape[0], dtype=torch.long),
                         accumulate=True)
    rows, cols = linear_sum_assignment(confusion.numpy(), maximize=True)
    hits = int(confusion[torch.as_tensor(rows), torch.as_tensor(cols)].sum())
    return hits / max(codes.shape[0], 1), {int(r): int(c) for r, c in zip(rows, cols)}


def conditional_quality(sample, classifier: nn.Module, num_classes: int, per_class: int = 100,
                        learned_codes: bool = False) -> dict:
    """Sample ``per_class`` images of each class with ``sample(labels) -> images`` and classify them.

    Returns ``agreement`` (requested class == predicted class) and, with ``learned_codes`` (InfoGAN: the
    "labels" are code values with no fixed meaning), ``mapping_accuracy`` and ``mapping`` of the best
    one-to-one code -> class assignment; ``per_class_agreement`` lists the agreement of each label."""
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    pred = predict(classifier, sample(labels))
    hit = (pred == labels).float()
    out = {"agreement": float(hit.mean()),
           "per_class_agreement": [round(float(hit[labels == k].mean()), 3) for k in range(num_classes)]}
    if learned_codes:
        acc, mapping = best_mapping_accuracy(labels, pred, num_classes, int(getattr(classifier, "num_classes",
                                                                                    num_classes)))
        out.update(mapping_accuracy=acc, mapping=mapping)
    return out
