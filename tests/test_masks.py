"""The mask mixers of mixlab.engine.masks (fmix, resizemix, saliencymix, gridmix, smoothmix), against float64
references written from each paper's definition (as mixlab states it in the mixer's docstring):

* FMix: exactly round(λ·H·W) own pixels, the largest of the grey map (ties to the lower index), and the grey
  map's power spectrum is the 1/max(f, 1/max(H, W))^(2δ) envelope (per band; its log-log slope is −δ);
* ResizeMix: the pasted patch is round(√(1 − λ)·H) × round(√(1 − λ)·W), equals torch's bilinear resize of the
  partner, and λ_applied = 1 − its area/(H·W);
* SaliencyMix: the box is centred on the argmax of the partner's spectral-residual saliency (NumPy, float64);
* GridMix: the own mask is constant on each cell, round(λ·cells²) cells, drawn uniformly;
* SmoothMix: the partner's weight is an isotropic Gaussian whose mean is ≈ 1 − λ;
* every mixer: a per-pixel convex blend whose own weight averages to the returned λ; λ = 1 is the identity;
  through ``Mix`` with every pairing and three λ policies the targets use the applied λ; one tiny training
  run each; one-line errors for token ids, flat inputs and boxes.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mixlab import MIXERS, PAIRINGS, Mix
from mixlab.engine.masks import FMix
from mixlab.run.config import ConfigError
from mixlab.run.train import build, train

from .test_config import compose_cfg, scenes_base, text_base

MASKS = ["fmix", "resizemix", "saliencymix", "gridmix", "smoothmix"]
C = 5


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def distinct_images(b: int, h: int, w: int, *, seed: int = 0, channels: int = 3) -> torch.Tensor:
    """float64 images that differ from one another at every pixel by more than 1 (image i in [3i, 3i + 1))."""
    x = torch.rand(b, channels, h, w, generator=gen(seed), dtype=torch.float64)
    return x + 3.0 * torch.arange(b, dtype=torch.float64).view(b, 1, 1, 1)


def lams(b: int, seed: int = 0) -> torch.Tensor:
    """Per-sample λ in (0, 1), with an exact 0, 1 and ½ among them."""
    lam = torch.rand(b, generator=gen(seed + 100))
    lam[:3] = torch.tensor([0.0, 1.0, 0.5])
    return lam


def onehot(y: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(y.shape[0], C, dtype=torch.float64)
    out[torch.arange(y.shape[0]), y] = 1.0
    return out


# ----------------------------------------------------------------------------- FMix


def fmix_own_reference(grey: np.ndarray, lam: float) -> np.ndarray:
    """The definition: the round(λ·H·W) largest grey values (ties to the lower row-major index) are own."""
    h, w = grey.shape
    k = round(float(lam) * h * w)
    flat = grey.reshape(-1).astype(np.float64)
    order = np.lexsort((np.arange(flat.size), -flat))  # by value, descending; then by index
    own = np.zeros(flat.size, dtype=bool)
    own[order[:k]] = True
    return own.reshape(h, w)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("shape", [(12, 10), (7, 16)])
def test_fmix_keeps_exactly_round_lambda_pixels_the_top_of_its_grey_map(shape, ties, monkeypatch):
    h, w = shape
    b = 9
    x = distinct_images(b, h, w)
    partner = torch.arange(b).roll(1)
    lam = lams(b)
    lam[3] = (2 * 17 + 1) / (2 * h * w)  # λ·H·W = 17.5 (in float32, within rounding): a tie between 17 and 18
    mixer = MIXERS.build("fmix")
    grey = FMix().grey(b, h, w, generator=gen(5))  # the draws the call will make
    if ties:  # a coarse grey map (many equal values): the tie-break decides
        grey = (grey * 4 / grey.abs().max()).round()
        monkeypatch.setattr(mixer, "grey", lambda *a, **k: grey.clone())
    out, applied = mixer(x, partner, lam, generator=gen(5))
    for i in range(b):
        own = torch.from_numpy(fmix_own_reference(grey[i].numpy(), float(lam[i])))
        k = round(float(lam[i]) * h * w)
        assert int(own.sum()) == k
        assert torch.equal(out[i][:, own], x[i][:, own]) and torch.equal(out[i][:, ~own], x[partner[i]][:, ~own])
        assert float(applied[i]) == pytest.approx(k / (h * w), abs=1e-7)


@pytest.mark.parametrize("delta", [1.0, 3.0])
def test_fmix_grey_map_spectrum_is_the_one_over_f_to_the_delta_envelope(delta):
    h, w, n = 16, 12, 4096
    grey = FMix(decay_power=delta).grey(n, h, w, generator=gen(2)).double().numpy()
    power = (np.abs(np.fft.fft2(grey)) ** 2).mean(0)  # E|FFT(map)(k)|², (H, W)
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    f = np.sqrt(fy ** 2 + fx ** 2)
    envelope = np.maximum(f, 1.0 / max(h, w)) ** (-2 * delta)  # the paper's f = 0: floored at 1/max(H, W)
    ratio = power / envelope
    c = np.median(ratio)
    # per frequency band (rings of width 1/16), the power over the envelope is one constant
    bands = np.round(f * 16).astype(int)
    for band in np.unique(bands):
        sel = bands == band
        assert abs(ratio[sel].mean() / c - 1) < 0.08, (band, ratio[sel].mean() / c)
    assert abs(ratio[0, 0] / c - 1) < 0.1  # the constant term: one bin, its scale that of f = 1/16
    # the log-log slope of the mean amplitude by band is −δ
    centres, amplitude = [], []
    for band in range(1, 9):
        sel = bands == band
        centres.append(np.log(f[sel].mean()))
        amplitude.append(np.log(np.sqrt(power[sel]).mean()))
    slope = np.polyfit(centres, amplitude, 1)[0]
    assert abs(slope + delta) < 0.1, slope


# ----------------------------------------------------------------------------- ResizeMix


def resize_reference(src: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """torch's bilinear interpolation (align_corners=False, no antialiasing), float64."""
    return F.interpolate(src[None].double(), size=size, mode="bilinear", align_corners=False)[0]


def pasted_region(out: torch.Tensor, x: torch.Tensor) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the rectangle where ``out`` differs from ``x``; asserts it is one."""
    diff = (out != x).any(0)
    if not bool(diff.any()):
        return 0, 0, 0, 0
    rows, cols = diff.any(1).nonzero()[:, 0], diff.any(0).nonzero()[:, 0]
    top, left = int(rows[0]), int(cols[0])
    hh, ww = int(rows[-1]) - top + 1, int(cols[-1]) - left + 1
    assert bool(diff[top:top + hh, left:left + ww].all()) and int(diff.sum()) == hh * ww  # a full rectangle
    return top, left, hh, ww


@pytest.mark.parametrize("shape", [(13, 11), (8, 8), (5, 20)])
def test_resizemix_pastes_the_bilinearly_resized_partner_of_the_size_lambda_sets(shape):
    h, w = shape
    b = 12
    x = distinct_images(b, h, w, seed=1)
    partner = torch.randint(0, b - 1, (b,), generator=gen(3))
    partner = partner + (partner >= torch.arange(b)).long()  # any partner but itself
    lam = lams(b, seed=1)
    out, applied = MIXERS.build("resizemix")(x, partner, lam, generator=gen(4))
    for i in range(b):
        s = math.sqrt(1.0 - float(lam[i]))
        want = (round(s * h), round(s * w))
        top, left, hh, ww = pasted_region(out[i], x[i])
        if 0 in want:
            assert (hh, ww) == (0, 0)
        else:
            assert (hh, ww) == want
            torch.testing.assert_close(out[i][:, top:top + hh, left:left + ww], resize_reference(x[partner[i]], want),
                                       rtol=0, atol=1e-12)
        area = want[0] * want[1]
        assert float(applied[i]) == pytest.approx(1 - area / (h * w), abs=1e-7)
    assert torch.equal(out[0], x[partner[0]])  # λ = 0: the whole partner, resized to its own size (the identity)


def test_resizemix_paper_scale_draws_the_size_and_keeps_lambda_one_unmixed():
    h = w = 20
    b = 64
    x = distinct_images(b, h, w, seed=2)
    partner = torch.arange(b).roll(3)
    lam = torch.rand(b, generator=gen(1))
    lam[::8] = 1.0
    out, applied = MIXERS.build("resizemix", scale=[0.1, 0.8])(x, partner, lam, generator=gen(6))
    sides = []
    for i in range(b):
        top, left, hh, ww = pasted_region(out[i], x[i])
        if float(lam[i]) == 1.0:
            assert hh == 0 and torch.equal(out[i], x[i]) and float(applied[i]) == 1.0
            continue
        assert hh == ww and round(0.1 * h) <= hh <= round(0.8 * h)
        torch.testing.assert_close(out[i][:, top:top + hh, left:left + ww], resize_reference(x[partner[i]], (hh, ww)),
                                   rtol=0, atol=1e-12)
        assert float(applied[i]) == pytest.approx(1 - hh * ww / (h * w), abs=1e-7)
        sides.append(hh)
    assert len(set(sides)) > 5  # drawn, not set by λ


# ----------------------------------------------------------------------------- SaliencyMix


def spectral_residual(img: np.ndarray, sigma: float = 0.125) -> np.ndarray:
    """Hou & Zhang's spectral-residual saliency of one image (C, H, W), float64, as mixlab defines it: channel
    mean; L = log|FFT| (floored at 1e-12); R = L minus its 3×3 mean (periodic); |IFFT(e^(R + i·phase))|²;
    Gaussian smoothing of σ = sigma·max(H, W) px per axis, weights normalised over the image."""
    g = img.mean(0)
    h, w = g.shape
    spectrum = np.fft.fft2(g)
    log_amp = np.log(np.maximum(np.abs(spectrum), 1e-12))
    local = np.zeros_like(log_amp)
    for i in range(h):
        for j in range(w):
            local[i, j] = np.mean([log_amp[(i + a) % h, (j + c) % w] for a in (-1, 0, 1) for c in (-1, 0, 1)])
    s = np.abs(np.fft.ifft2(np.exp(log_amp - local) * np.exp(1j * np.angle(spectrum)))) ** 2
    sd = sigma * max(h, w)
    out = np.zeros_like(s)
    for i in range(h):
        for j in range(w):
            wy = np.exp(-((np.arange(h) - i) ** 2) / (2 * sd * sd))
            wx = np.exp(-((np.arange(w) - j) ** 2) / (2 * sd * sd))
            out[i, j] = (wy[:, None] * wx[None, :] * s).sum() / (wy.sum() * wx.sum())
    return out


def spotted_images(b: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Smooth random float64 images, each with a bright 2×2 spot somewhere (a salient point)."""
    g = gen(seed)
    x = F.interpolate(torch.rand(b, 3, 3, 3, generator=g, dtype=torch.float64), size=(h, w), mode="bilinear",
                      align_corners=False)
    for i in range(b):
        r, c = int(torch.randint(0, h - 1, (1,), generator=g)), int(torch.randint(0, w - 1, (1,), generator=g))
        x[i, :, r:r + 2, c:c + 2] += 3.0
    return x + 5.0 * torch.arange(b, dtype=torch.float64).view(b, 1, 1, 1)


@pytest.mark.parametrize("shape", [(12, 16), (15, 9)])
def test_saliencymix_box_is_centred_on_the_partners_spectral_residual_peak(shape):
    h, w = shape
    b = 10
    x = spotted_images(b, h, w, seed=sum(shape))
    partner = torch.arange(b).roll(2)
    lam = lams(b, seed=2)
    out, applied = MIXERS.build("saliencymix")(x, partner, lam, generator=gen())
    for i in range(b):
        sal = spectral_residual(x[partner[i]].numpy())
        top2 = np.sort(sal.reshape(-1))[-2:]
        assert top2[1] - top2[0] > 1e-9 * top2[1]  # a clear peak: float64 rounding cannot move it
        cy, cx = np.unravel_index(np.argmax(sal), sal.shape)
        cut = math.sqrt(1.0 - float(lam[i]))
        bh, bw = round(cut * h), round(cut * w)
        y0, x0 = cy - bh // 2, cx - bw // 2  # centred on the peak pixel (for even sizes, its lower-right half)
        y0, y1, x0, x1 = max(y0, 0), min(y0 + bh, h), max(x0, 0), min(x0 + bw, w)
        box = torch.zeros(h, w, dtype=torch.bool)
        box[y0:y1, x0:x1] = True
        assert torch.equal(out[i][:, box], x[partner[i]][:, box]) and torch.equal(out[i][:, ~box], x[i][:, ~box])
        assert float(applied[i]) == pytest.approx(1 - (y1 - y0) * (x1 - x0) / (h * w), abs=1e-7)


def test_saliencymix_saliency_matches_the_float64_reference():
    x = spotted_images(4, 11, 14, seed=9)
    ours = MIXERS.build("saliencymix", sigma=0.2).saliency(x)
    for i in range(4):
        ref = spectral_residual(x[i].numpy(), sigma=0.2)
        np.testing.assert_allclose(ours[i].numpy(), ref, rtol=1e-9, atol=1e-12 * ref.max())


# ----------------------------------------------------------------------------- GridMix


def own_mask_of_binary_blend(out: torch.Tensor, x: torch.Tensor, xp: torch.Tensor) -> torch.Tensor:
    """(H, W) bool: where the blend took sample i's own pixel; asserts every pixel is own or partner's, in
    every channel alike."""
    own, other = (out == x).all(0), (out == xp).all(0)
    assert bool((own ^ other).all())
    return own


@pytest.mark.parametrize("shape,cells", [((8, 8), 4), ((10, 7), 3), ((12, 12), 5)])
def test_gridmix_own_cells_are_round_lambda_of_the_grid(shape, cells):
    h, w = shape
    b = 11
    x = distinct_images(b, h, w, seed=3)
    partner = torch.arange(b).flip(0)
    partner[b // 2] = (b // 2 + 1) % b  # flip's middle row would pair with itself
    lam = lams(b, seed=3)
    out, applied = MIXERS.build("gridmix", cells=cells)(x, partner, lam, generator=gen(7))

    def bounds(n: int) -> list[int]:  # cell k spans [ceil(k·n/cells), ceil((k+1)·n/cells))
        return [math.ceil(k * n / cells) for k in range(cells + 1)]

    rb, cb = bounds(h), bounds(w)
    for i in range(b):
        own = own_mask_of_binary_blend(out[i], x[i], x[partner[i]])
        kept = 0
        for a in range(cells):
            for c in range(cells):
                cell = own[rb[a]:rb[a + 1], cb[c]:cb[c + 1]]
                assert bool(cell.all()) or not bool(cell.any())  # a cell comes whole from one image
                kept += bool(cell.all()) and cell.numel() > 0
        assert kept == round(float(lam[i]) * cells * cells)
        assert float(applied[i]) == pytest.approx(float(own.double().mean()), abs=1e-7)


def test_gridmix_draws_its_cells_uniformly():
    b = 4000
    x = distinct_images(b, 8, 8, seed=4, channels=1)
    out, _ = MIXERS.build("gridmix", cells=4)(x, torch.arange(b).roll(1), torch.full((b,), 0.5), generator=gen(8))
    own = (out == x)[:, 0, ::2, ::2].double()  # one pixel per cell
    assert bool((own.sum((1, 2)) == 8).all())
    freq = own.mean(0)
    assert float((freq - 0.5).abs().max()) < 0.05, freq  # each cell own half the time: ±0.05 is 6 sd


# ----------------------------------------------------------------------------- SmoothMix


@pytest.mark.parametrize("shape", [(12, 12), (10, 16)])
def test_smoothmix_partner_weight_is_an_isotropic_gaussian_of_mean_one_minus_lambda(shape):
    h, w = shape
    b = 12
    x = distinct_images(b, h, w, seed=5)
    partner = torch.arange(b).roll(5)
    lam = torch.linspace(0.03, 0.97, b, dtype=torch.float32)
    out, applied = MIXERS.build("smoothmix")(x, partner, lam, generator=gen(9))
    xp = x[partner]
    rr, cc = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    for i in range(b):
        own = ((out[i] - xp[i]) / (x[i] - xp[i]))[0]  # the own weight, from channel 0
        torch.testing.assert_close(out[i], own * x[i] + (1 - own) * xp[i], rtol=0, atol=1e-12)  # every channel
        assert bool(((own >= -1e-12) & (own <= 1 + 1e-12)).all())
        assert float(applied[i]) == pytest.approx(float(own.mean()), abs=1e-7)  # the own share, exactly
        m = (1 - own).numpy()
        assert abs(m.mean() - (1 - float(lam[i]))) < 1e-3  # λ sets the size
        sel = m > 1e-6
        design = np.stack([np.ones_like(rr), rr, cc, rr ** 2, cc ** 2, rr * cc], -1)[sel]
        coef, *_ = np.linalg.lstsq(design, np.log(m[sel]), rcond=None)
        assert np.abs(design @ coef - np.log(m[sel])).max() < 1e-6  # log m is a quadratic: a Gaussian
        assert coef[3] < 0 and coef[3] == pytest.approx(coef[4], rel=1e-6) and abs(coef[5]) < 1e-8  # isotropic
        peak = coef[0] - coef[1] ** 2 / (4 * coef[3]) - coef[2] ** 2 / (4 * coef[4])  # log m at its maximum
        assert peak == pytest.approx(0, abs=1e-6)  # the Gaussian's peak is 1


def test_smoothmix_lambda_zero_is_the_partner():
    x = distinct_images(4, 9, 9, seed=6)
    partner = torch.tensor([1, 2, 3, 0])
    out, applied = MIXERS.build("smoothmix")(x, partner, torch.zeros(4), generator=gen())
    assert torch.equal(out, x[partner]) and torch.equal(applied, torch.zeros(4))


# ----------------------------------------------------------------------------- every mask mixer


def partner_content(name: str, out: torch.Tensor, x: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
    """What each blend mixes its own image with, per pixel: the partner at the same place; for resizemix the
    partner resized (the reference) into the pasted rectangle, and the own image elsewhere."""
    if name != "resizemix":
        return x[partner]
    content = x.clone()
    for i in range(x.shape[0]):
        top, left, hh, ww = pasted_region(out[i], x[i])
        if hh:
            content[i, :, top:top + hh, left:left + ww] = resize_reference(x[partner[i]], (hh, ww))
    return content


def own_weights(name: str, out: torch.Tensor, x: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
    """(B, H, W) float64: the own image's weight m at each pixel, with out = m·x + (1 − m)·content in every
    channel (asserted); 1 where the content is the own image."""
    content = partner_content(name, out, x, partner)
    same = (content == x).all(1)
    m = torch.where(same, torch.ones_like(out[:, 0]), (out - content)[:, 0] / (x - content)[:, 0].where(~same, 1.0))
    torch.testing.assert_close(out, m[:, None] * x + (1 - m[:, None]) * content, rtol=0, atol=1e-12)
    assert bool(((m >= -1e-12) & (m <= 1 + 1e-12)).all())
    return m


@pytest.mark.parametrize("name", MASKS)
def test_every_mask_mixer_is_a_convex_blend_weighted_by_the_returned_lambda(name):
    b, h, w = 16, 12, 14
    x = distinct_images(b, h, w, seed=7)
    partner = torch.randperm(b, generator=gen(1))
    partner = torch.where(partner == torch.arange(b), (partner + 1) % b, partner)  # no self-pairs
    lam = lams(b, seed=4)
    out, applied = MIXERS.build(name)(x, partner, lam, generator=gen(2))
    assert out.dtype == x.dtype and applied.dtype == torch.float32 and applied.shape == (b,)
    m = own_weights(name, out, x, partner)
    torch.testing.assert_close(applied.double(), m.mean((1, 2)), rtol=0, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("name", MASKS)
def test_lambda_one_returns_x_unchanged(name, dtype):
    x = (torch.randn(6, 3, 10, 9, generator=gen(3)) * 4).to(dtype)
    out, applied = MIXERS.build(name)(x, torch.arange(6).roll(1), torch.ones(6), generator=gen())
    assert torch.equal(out, x) and torch.equal(applied, torch.ones(6))
    out, _ = MIXERS.build(name)(x, torch.arange(6).roll(1), torch.rand(6, generator=gen()), generator=gen())
    assert out.dtype == dtype and out.shape == x.shape


def test_draws_come_from_the_generator_alone():
    x = distinct_images(6, 10, 10, seed=8)
    partner, lam = torch.arange(6).roll(1), torch.rand(6, generator=gen(5))
    for name in MASKS:
        a = MIXERS.build(name)(x, partner, lam, generator=gen(11))
        torch.manual_seed(123)  # the global stream plays no part
        b = MIXERS.build(name)(x, partner, lam, generator=gen(11))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), name


# ----------------------------------------------------------------------------- through Mix


def requested_gap(name: str, requested: torch.Tensor, applied: torch.Tensor, h: int, w: int) -> None:
    """How far the applied λ may be from the policy's, by each mixer's definition."""
    gap = (applied.double() - requested.double()).abs()
    if name == "fmix":
        assert bool((gap <= 0.5 / (h * w) + 1e-7).all())  # a pixel count rounded
    if name == "gridmix":
        assert bool((gap <= 0.5 / 16 + 1e-7).all())  # 4×4 cells of 2×2 pixels, a cell count rounded
    if name == "smoothmix":
        assert bool((gap[(requested > 0.02) & (requested < 0.98)] < 1e-3).all())


@pytest.mark.parametrize("name", MASKS)
@pytest.mark.parametrize("pairing", PAIRINGS.names())
@pytest.mark.parametrize("lam", ["beta", "distance", "schedule"])
def test_mix_targets_weigh_the_labels_by_the_applied_lambda(lam, pairing, name):
    b, h, w = 10, 8, 8
    x = distinct_images(b, h, w, seed=10)
    y = torch.arange(b) % C
    kw = dict(lam=lam, pairing=pairing, mixer=name, num_classes=C)
    features = torch.randn(b, 6, generator=gen(4))
    call = dict(features=features, index=torch.arange(b), progress=0.3)
    mix = Mix(**kw, generator=gen(1))
    x_mix, y_mix = mix(x, y, **call)
    partner, applied = mix.last.partner, mix.last.lam
    same_partner, requested = Mix(**kw, generator=gen(1)).sample(x, y, **call)  # the same draws, unmixed
    assert torch.equal(same_partner, partner)
    ref = applied.double()[:, None] * onehot(y) + (1 - applied.double())[:, None] * onehot(y[partner])
    torch.testing.assert_close(y_mix.double(), ref, rtol=0, atol=1e-7)
    requested_gap(name, requested, applied, h, w)
    m = own_weights(name, x_mix, x, partner)
    mixed = partner != torch.arange(b)  # a self-pair's blend is its own image, whatever the weights say
    torch.testing.assert_close(applied[mixed].double(), m[mixed].mean((1, 2)), rtol=0, atol=1e-7)


# ----------------------------------------------------------------------------- training runs and refusals


@pytest.mark.parametrize("name", MASKS)
def test_a_tiny_fashion_mnist_run_per_mask_mixer(name, tmp_path):
    acc = train(compose_cfg("data=fashion_mnist", "data.train_subset=256", "data.val_size=256", "data.batch_size=64",
                            "model=cnn", "model.width=8", "device=cpu", "trainer.epochs=1", "trainer.progress=false",
                            "optim=sgd", "eval.test=false", f"mixer={name}"), tmp_path / "run")
    (row,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["config"]["mixer"]["name"] == name
    assert math.isfinite(row["train_loss"]) and 0 <= acc <= 1
    assert 0 < row["lam_mean"] < 1 and 0 <= row["lam_min"] < row["lam_max"] <= 1  # mixed, with λ as applied


@pytest.mark.parametrize("name", MASKS)
def test_flat_inputs_are_refused_in_one_line(name):
    with pytest.raises(ValueError) as e:
        MIXERS.build(name)(torch.randn(4, 5), torch.arange(4), torch.ones(4))
    assert str(e.value) == f"mixer '{name}' needs images (B, C, H, W), but got shape (4, 5)"
    with pytest.raises(ValueError, match=rf"^mixer '{name}' needs images \(B, C, H, W\), but got shape \(2, 3, 4\)$"):
        MIXERS.build(name)(torch.randn(2, 3, 4), torch.arange(2), torch.ones(2))


@pytest.mark.parametrize("name", ["cutmix", *MASKS])
@pytest.mark.parametrize("data", ["moons", "diabetes"])
def test_tabular_data_refuses_image_mixers_in_one_line(name, data):
    with pytest.raises(ConfigError) as e:
        build(compose_cfg(f"data={data}", "model=mlp", "device=cpu", "lambda=beta", f"mixer={name}"))
    shape = "(2,)" if data == "moons" else "(10,)"
    assert str(e.value) == (f"mixer={name}: needs images (C, H, W), but data={data} has inputs of shape {shape}; "
                            "expected mixer=input or manifold")


@pytest.mark.parametrize("name", MASKS)
def test_text_models_refuse_image_mixers_in_one_line(name, tmp_path):
    with pytest.raises(ConfigError) as e:
        build(compose_cfg(*text_base(tmp_path), "model=textcnn", f"mixer={name}"))
    message = str(e.value)
    assert message.startswith(f"mixer={name}: needs images, but model=textcnn embeds token ids; expected mixer=input")
    assert "\n" not in message


@pytest.mark.parametrize("name", MASKS)
def test_detection_refuses_mask_mixers_in_one_line(name, tmp_path):
    with pytest.raises(ConfigError) as e:
        build(compose_cfg(*scenes_base(tmp_path), "model=fcos", "model.width=8", f"mixer={name}"))
    message = str(e.value)
    assert message.startswith(f"mixer.name='{name}': not supported for detection; expected input")
    assert "\n" not in message


@pytest.mark.parametrize("name,options,message", [
    ("fmix", {"decay_power": -1}, "decay_power=-1: expected a number >= 0"),
    ("resizemix", {"scale": [0.8, 0.1]}, "scale=[0.8, 0.1]: expected null (the scale from λ, s = √(1 − λ)) or "
                                         "[low, high] with 0 < low <= high <= 1"),
    ("resizemix", {"scale": [0.1]}, "scale=[0.1]: expected null"),
    ("saliencymix", {"sigma": 2}, "sigma=2: expected a number in [0, 1]"),
    ("gridmix", {"cells": 0}, "cells=0: expected an integer in 1..64"),
    ("gridmix", {"cells": 2.5}, "cells=2.5: expected an integer"),
    ("smoothmix", {"sigma": 1}, "sigma"),
])
def test_bad_options_are_one_line_naming_the_key(name, options, message):
    with pytest.raises(ValueError) as e:
        MIXERS.build(name, **options)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_every_mask_mixer_declares_it_needs_images():
    for name in ["cutmix", *MASKS]:
        assert MIXERS.get(name).needs_images is True
    for name in ["input", "manifold"]:
        assert not getattr(MIXERS.get(name), "needs_images", False)
