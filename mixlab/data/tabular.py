"""Bundled and synthetic data sets from scikit-learn: digits (8x8 images), diabetes (regression), moons (2-D).

Their train/test splits are fixed (``SPLIT_SEED``): the split is part of the data set's definition.
"""
from __future__ import annotations

import torch

from .base import DATASETS, SPLIT_SEED, RawData, stratified_split


@DATASETS.register("digits")
def digits(*, root: str | None = None, download: bool = True) -> RawData:
    """scikit-learn's bundled 8x8 digits: 1437 train / 360 test (fixed stratified split), 10 classes.

    ``root`` and ``download`` are unused: the data ship with scikit-learn.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).div_(16.0).unsqueeze(1)  # (1797,1,8,8)
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    train, test = stratified_split(y, n_test=360, generator=torch.Generator().manual_seed(SPLIT_SEED))
    return x[train], y[train], x[test], y[test], 10, "classification"


@DATASETS.register("diabetes")
def diabetes(*, root: str | None = None, download: bool = True) -> RawData:
    """scikit-learn's bundled diabetes regression: 10 raw features, 353 train / 89 test (fixed split)."""
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes(scaled=False)  # raw units; load_dataset standardises with train stats
    x = torch.as_tensor(bunch.data, dtype=torch.float32)
    y = torch.as_tensor(bunch.target, dtype=torch.float32)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(SPLIT_SEED))
    train, test = perm[:353], perm[353:]
    return x[train], y[train], x[test], y[test], 1, "regression"


@DATASETS.register("moons")
def moons(*, root: str | None = None, download: bool = True) -> RawData:
    """Two interleaved half-moons (noise 0.2): 2000 train / 1000 test points in 2-D, 2 classes."""
    from sklearn.datasets import make_moons

    # Separate fixed samples for train and test: independent draws from the same distribution.
    x_tr, y_tr = make_moons(n_samples=2000, noise=0.2, random_state=SPLIT_SEED)
    x_te, y_te = make_moons(n_samples=1000, noise=0.2, random_state=SPLIT_SEED + 1)
    return (
        torch.as_tensor(x_tr, dtype=torch.float32),
        torch.as_tensor(y_tr, dtype=torch.int64),
        torch.as_tensor(x_te, dtype=torch.float32),
        torch.as_tensor(y_te, dtype=torch.int64),
        2,
        "classification",
    )
