"""Adaptive ECE (Nixon et al. 2019, "Measuring Calibration in Deep Learning"): Σ_b |B_b|/N · |acc(B_b) − conf(B_b)|
over confidence ranges that each hold N/n_bins predictions. Checked against a float64 reference, and for
independence of the order of the rows where confidences tie (issue: permuting tied rows moved it by up to .022)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mixlab.tasks.metrics import classification_metrics


def softmax64(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def adaptive_ece64(conf: np.ndarray, correct: np.ndarray, n_bins: int) -> float:
    """Equal-mass ranges: numpy.array_split's cuts of the sorted confidences give each range's top confidence;
    a range is right-closed, so equal confidences fall in one range (the lowest that reaches them)."""
    s = np.sort(conf)
    tops = np.array([part[-1] for part in np.array_split(s, n_bins) if len(part)])
    rng = np.searchsorted(tops, conf, side="left")
    return sum(abs(correct[rng == b].sum() - conf[rng == b].sum()) for b in range(len(tops))) / len(conf)


def tied_case(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """90 rows, 7 distinct logit rows (so 7 distinct confidences) repeated, labels right or wrong at random:
    runs of equal confidence longer than a bin (6 rows), straddling the cuts."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.randn(7, 4, generator=g) * 2
    pick = torch.randint(0, 7, (90,), generator=g)
    logits = rows[pick]
    right = torch.rand(90, generator=g) < 0.6
    labels = torch.where(right, logits.argmax(1), (logits.argmax(1) + 1) % 4)
    return logits, labels


@pytest.mark.parametrize("seed", range(4))
def test_no_order_of_the_rows_changes_the_adaptive_ece(seed):
    logits, labels = tied_case(seed)
    want = classification_metrics(logits, labels)["aece"]
    g = torch.Generator().manual_seed(100 + seed)
    for _ in range(50):
        perm = torch.randperm(90, generator=g)
        assert classification_metrics(logits[perm], labels[perm])["aece"] == want


@pytest.mark.parametrize("seed", range(4))
def test_with_ties_it_is_the_float64_reference_of_right_closed_equal_mass_ranges(seed):
    logits, labels = tied_case(seed)
    p = softmax64(logits.double().numpy())
    conf, correct = p.max(1), (p.argmax(1) == labels.numpy()).astype(np.float64)
    assert len(np.unique(conf)) < 90  # ties there are
    assert classification_metrics(logits, labels)["aece"] == pytest.approx(adaptive_ece64(conf, correct, 15), abs=1e-6)


@pytest.mark.parametrize("n", [7, 15, 44, 1000])
def test_without_ties_it_is_nixons_equal_mass_ace_in_float64(n):
    g = torch.Generator().manual_seed(n)
    logits = torch.randn(n, 10, generator=g, dtype=torch.float64) * 3
    labels = (logits + 3 * torch.randn(n, 10, generator=g, dtype=torch.float64)).argmax(1)
    p = softmax64(logits.numpy())
    conf, correct = p.max(1), (p.argmax(1) == labels.numpy()).astype(np.float64)
    assert len(np.unique(conf.astype(np.float32))) == n  # no ties, even in float32
    order = np.argsort(conf)
    want = sum(len(b) / n * abs(correct[b].mean() - conf[b].mean()) for b in np.array_split(order, 15) if len(b))
    assert classification_metrics(logits.float(), labels)["aece"] == pytest.approx(want, abs=1e-6)
