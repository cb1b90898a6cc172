"""Out-of-distribution inputs for ``eval.ood``, shaped and normalised like a data set's images.

``digits``: scikit-learn's 1 797 handwritten digits (8×8, 17 grey levels), scaled to [0, 1], resized
(bilinear) to the data set's height and width, repeated over its channels and normalised with its
training statistics. Grey strokes on black, as Fashion-MNIST's items are, so format alone does not give
them away; but no digit is a garment, so every one is out of distribution for Fashion-MNIST's classes
(a far-OOD set: an easy test, which a model that fails it fails badly). Offline, bundled with
scikit-learn.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Dataset

OOD_SETS = ("digits",)


def ood_inputs(name: str, ds: Dataset) -> Tensor:
    """The OOD set ``name`` as inputs of ``ds`` (N, C, H, W) on its device; ValueError where it cannot be."""
    if name not in OOD_SETS:
        raise ValueError(f"eval.ood={name!r}: expected null or one of {list(OOD_SETS)}")
    ds.require_image_classifier(f"eval.ood={name!r}", "data=fashion_mnist, cifar10, ... or eval.ood=null")
    from sklearn.datasets import load_digits

    x = torch.as_tensor(load_digits().images, dtype=torch.float32)[:, None] / 16.0
    c, h, w = ds.input_shape
    x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1).repeat(1, c, 1, 1)
    return ds.normalise(x.to(ds.x_test.device)).contiguous()
