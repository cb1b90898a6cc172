"""Fashion-MNIST-format files of made-up items (a rectangle of ink on black, class = index mod 10), for the
detection scenes without the real data set (tests/test_detection.py, test_config.py, test_fuzz_config.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mixlab.data.images import FASHION_MNIST_FILES

from .test_data import write_idx


def items(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` (28, 28) uint8 items, background exactly 0 like Fashion-MNIST's, and their labels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 28, 28, dtype=torch.uint8)
    for i in range(n):
        r0, c0 = torch.randint(0, 10, (2,), generator=g).tolist()
        x[i, r0:r0 + 15, c0:c0 + 12] = torch.randint(1, 256, (15, 12), generator=g, dtype=torch.uint8)
    return x, torch.arange(n) % 10


def write_items(folder: Path, n_train: int = 300, n_test: int = 60) -> Path:
    """The four idx files of a Fashion-MNIST of made-up items in ``folder``; returns it."""
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        x, y = items(n, seed)
        write_idx(folder / FASHION_MNIST_FILES[f"{split}_images"], x.numpy())
        write_idx(folder / FASHION_MNIST_FILES[f"{split}_labels"], y.numpy().astype(np.uint8))
    return folder
