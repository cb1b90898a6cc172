"""The corrupted test sets of eval.corruptions (issue 16), each corruption against its definition: here the ``v1``
form, kept so that runs recorded with it can be reproduced (the reference forms: test_fidelity_corruptions.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

import mixlab.data.corruptions as C
from mixlab.data.corruptions import CORRUPTIONS, SEVERITIES, corrupt, corrupted_sets

from .fashion_items import items


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return items(64, 0)[0][:, None].float() / 255


@pytest.mark.parametrize("form", C.FORMS)
def test_every_corruption_is_deterministic_in_range_and_worse_with_severity(images, form):
    for name in CORRUPTIONS:
        outs = [corrupt(images, name, s, form=form) for s in SEVERITIES]
        assert torch.equal(outs[0], corrupt(images, name, 1, form=form)), name
        assert all(o.shape == images.shape and 0 <= float(o.min()) and float(o.max()) <= 1 for o in outs), name
        change = [float((o - images).abs().mean()) for o in outs]
        # the references' tables do not always grow in effect (MNIST-C's elastic, its fog's roughness); v1's did
        assert change[0] > 0 and (form != "v1" or all(b > a for a, b in zip(change, change[1:]))), (name, change)


def test_noises_have_their_published_statistics():
    grey = torch.full((200, 1, 28, 28), 0.5)
    for s, sigma in zip(SEVERITIES[:3], C._V1["gaussian_noise"]):  # clipping at 0/1 is rare up to σ = .18
        assert float((corrupt(grey, "gaussian_noise", s, form="v1") - 0.5).std()) == pytest.approx(sigma, rel=0.03)
    for s, c in zip(SEVERITIES[:3], C._V1["shot_noise"]):  # Poisson(x·c)/c: mean x, variance x/c (unclipped)
        out = corrupt(grey, "shot_noise", s, form="v1")
        assert float(out.mean()) == pytest.approx(0.5, abs=0.01) and float(out.var()) == pytest.approx(0.5 / c, rel=0.1)
    for s, share in zip(SEVERITIES, C._V1["impulse_noise"]):
        out = corrupt(grey, "impulse_noise", s, form="v1")
        assert float(((out == 0) | (out == 1)).float().mean()) == pytest.approx(share, rel=0.05)
        assert float((out == 0).float().mean()) == pytest.approx(share / 2, rel=0.1)


def test_blurs_and_photometric_corruptions_match_their_formulas(images):
    for s, sigma in zip(SEVERITIES, C._V1["gaussian_blur"]):  # scipy's Gaussian filter, mirrored edges, same support
        want = np.stack([ndimage.gaussian_filter(im[0].double().numpy(), sigma, mode="mirror",
                                                 truncate=math.ceil(3 * sigma) / sigma) for im in images])
        np.testing.assert_allclose(corrupt(images, "gaussian_blur", s, form="v1")[:, 0].numpy(), want, atol=2e-6)
    disk = C._disk(2.0)  # a disk of radius 2: 13 pixels, equal weights, summing to 1
    assert int((disk > 0).sum()) == 13 and float(disk.sum()) == pytest.approx(1.0)
    want = np.stack([ndimage.convolve(im[0].double().numpy(), disk.double().numpy(), mode="constant") for im in images])
    np.testing.assert_allclose(corrupt(images, "defocus_blur", 3, form="v1")[:, 0].numpy(), np.clip(want, 0, 1), atol=2e-6)
    lines = C._lines(7, torch.tensor([0.0, math.pi / 2, math.pi / 4]))
    assert torch.equal(lines[0], torch.zeros(7, 7).index_fill_(0, torch.tensor([3]), 1 / 7))  # horizontal: the middle row
    diagonal = torch.diag(torch.tensor([0, 1, 1, 1, 1, 1, 0.0])) / 5  # 7 px long at 45°: ±2.5 px in x and y
    assert torch.equal(lines[1], lines[0].T) and torch.allclose(lines[2], diagonal)
    for s, c in zip(SEVERITIES, C._V1["contrast"]):
        mean = images.mean((1, 2, 3), keepdim=True)
        torch.testing.assert_close(corrupt(images, "contrast", s, form="v1"), ((images - mean) * c + mean).clamp(0, 1),
                                   atol=1e-6, rtol=0)
    torch.testing.assert_close(corrupt(images, "brightness", 2, form="v1"), (images + 0.2).clamp(0, 1))


def test_sets_are_cached_by_content_and_version(images, tmp_path, monkeypatch):
    first = corrupted_sets(images[:8], tmp_path)
    assert len(first) == len(CORRUPTIONS) * len(SEVERITIES) and len(list(tmp_path.glob("*.pt"))) == len(CORRUPTIONS)
    monkeypatch.setattr(C, "corrupt", lambda *a, **k: pytest.fail("made again instead of read from the cache"))
    again = corrupted_sets(images[:8], tmp_path)
    assert all(torch.equal(first[k], again[k]) for k in first)
    with pytest.raises(pytest.fail.Exception):  # other images: another cache entry, made anew
        corrupted_sets(images[8:16], tmp_path)
    with pytest.raises(ValueError, match=r"corruption='snow': expected one of"):
        corrupt(images, "snow", 1)  # the module's own, not the patched one
