"""Corrupted copies of a test set after Hendrycks & Dietterich (ICLR 2019) and Mu & Gilmer (2019), made
offline and deterministically (``eval.corruptions``; the form: ``eval.corruption_form``).

Twelve corruptions, five severities each, in one of these *forms*, each its reference's formulas and
severity tables (hendrycks/robustness ``ImageNet-C/create_c/make_cifar_c.py`` and ``make_imagenet_c.py``;
google-research/mnist-c ``corruptions.py``):

- ``mnist_c``: MNIST-C's, for grey images. For these twelve MNIST-C took ImageNet-C's tables unchanged.
- ``cifar10_c``: CIFAR-10-C's, for 32×32 colour images.
- ``imagenet_c``: ImageNet-C's, for larger colour images (elastic scaled to the side, as 244/224 of it).
- ``auto`` picks by image kind: grey → ``mnist_c``; colour up to 32 px a side → ``cifar10_c``; larger
  colour → ``imagenet_c``.
- ``v1``: mixlab's first mix (ImageNet-C's noise, CIFAR-10-C's blur σ and contrast on the grey mean,
  brightness added per channel, a simplified fog, 64 elastic fields a set), kept so that records made
  with it can be reproduced (runs recorded before the key existed read as ``v1``).

Per corruption, the formula (x in [0, 1], the result clipped to [0, 1]), then the parameter at severities
1..5 under mnist_c and imagenet_c (M) and under cifar10_c (C):

- gaussian_noise: x + σ·N(0, 1). M σ .08 .12 .18 .26 .38; C σ .04 .06 .08 .09 .10.
- shot_noise: Poisson(x·c)/c. M c 60 25 12 5 3; C c 500 250 100 75 50.
- impulse_noise: a share c of the values set to 0 or 1, half each. M .03 .06 .09 .17 .27; C .01 .02 .03 .05 .07.
- gaussian_blur: Gaussian of σ px, edge pixels repeated, radius int(4σ + ½) (skimage's defaults).
  M σ 1 2 3 4 6; C σ .4 .6 .7 .8 1.
- defocus_blur: a disk of radius r blurred by a 3×3 Gaussian of σₐ (5×5 above r = 8), mirrored edges.
  M (r, σₐ) (3, .1) (4, .5) (6, .5) (8, .5) (10, .5); C (.3, .4) (.4, .5) (.5, .6) (1, .2) (1.5, .1).
- motion_blur: ImageMagick's, a one-sided Gaussian trail of 2⌈r⌉ + 1 px at an angle U(−45°, 45°) per image,
  edge pixels repeated. M (r, σ) (10, 3) (15, 5) (15, 8) (15, 12) (20, 15); C (6, 1) (6, 1.5) (6, 2) (8, 2) (9, 2.5).
- contrast: (x − m)·c + m, m the mean of each channel. M c .4 .3 .2 .1 .05; C c .75 .5 .4 .3 .15.
- brightness: the HSV value V + c (clipped), hue and saturation kept. M c .1 .2 .3 .4 .5; C c .05 .1 .15 .2 .3.
- fog: (x + c·plasma)·m/(m + c), m = max x, the plasma a diamond-square fractal of roughness decay d.
  M (c, d) (1.5, 2) (2, 2) (2.5, 1.7) (2.5, 1.5) (3, 1.4); C (.2, 3) (.5, 3) (.75, 2.5) (1, 2) (1.5, 1.75).
- pixelate: PIL's box resize to int(side·c), then back. M c .6 .5 .4 .3 .25; C c .95 .9 .85 .75 .65.
- jpeg: PIL's JPEG at quality q. M q 25 18 15 10 7; C q 80 65 58 50 40.
- elastic: a random affine (3 points moved by U(±a)), then a displacement of α·(U(±1) smoothed by a
  Gaussian σ truncated at 3σ), both bilinear; (α, σ, a) in sides. M (2, .7, .1) (2, .08, .2) (.05, .01, .02)
  (.07, .01, .02) (.12, .01, .02); C (0, 0, .08) (.05, .2, .07) (.08, .06, .06) (.1, .04, .05) (.1, .03, .03).

Borders as the references have them: elastic mirrors (affine: OpenCV's reflect-101; displacement: scipy's
reflect) except under MNIST-C, which fills with black. The plasma is 32 px a side under CIFAR-10-C, else
256 (or the next power of two above the image), cropped to the image. Computed in float64 from the draws
(:func:`sample`), so a test can apply the formula to the same draws; the references' own random streams
(numpy's) are not reproduced, nor ImageMagick's and OpenCV's fixed-point arithmetic (motion blur works on
floats here, OpenCV's affine warp interpolates at 1/32 px there); the sets are stored in 8 bits rounded,
where the references' ``np.uint8`` truncates.
"""
from __future__ import annotations

import hashlib
import io
import math
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "gaussian_blur", "defocus_blur", "motion_blur",
               "contrast", "brightness", "fog", "pixelate", "jpeg", "elastic")
SEVERITIES = (1, 2, 3, 4, 5)
FORMS = ("mnist_c", "cifar10_c", "imagenet_c", "v1")
CHOICES = ("auto", *FORMS)  # what eval.corruption_form takes
LABELS = {"mnist_c": "MNIST-C (Mu & Gilmer 2019)", "cifar10_c": "CIFAR-10-C (Hendrycks & Dietterich 2019)",
          "imagenet_c": "ImageNet-C (Hendrycks & Dietterich 2019)",
          "v1": "mixlab v1 (a mix, before the reference forms)"}
VERSION = 2  # bump when a corruption of the reference forms changes: cached sets of another version are not read
FIELDS = 64  # v1's elastic: displacement fields drawn per set, image i warped by field i mod 64
_BLOCK = 128  # images made at a time: bounds the memory of the FFTs and of the fog's 256² plasma maps

_IMAGENET_C = {  # make_imagenet_c.py; MNIST-C's corruptions.py has the same values for these twelve
    "gaussian_noise": (.08, .12, .18, .26, .38),
    "shot_noise": (60, 25, 12, 5, 3),
    "impulse_noise": (.03, .06, .09, .17, .27),
    "gaussian_blur": (1, 2, 3, 4, 6),
    "defocus_blur": ((3, .1), (4, .5), (6, .5), (8, .5), (10, .5)),
    "motion_blur": ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
    "contrast": (.4, .3, .2, .1, .05),
    "brightness": (.1, .2, .3, .4, .5),
    "fog": ((1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)),
    "pixelate": (.6, .5, .4, .3, .25),
    "jpeg": (25, 18, 15, 10, 7),
    "elastic": ((2, .7, .1), (2, .08, .2), (.05, .01, .02), (.07, .01, .02), (.12, .01, .02)),  # × the side
}
_CIFAR_10_C = {  # make_cifar_c.py
    "gaussian_noise": (.04, .06, .08, .09, .10),
    "shot_noise": (500, 250, 100, 75, 50),
    "impulse_noise": (.01, .02, .03, .05, .07),
    "gaussian_blur": (.4, .6, .7, .8, 1),
    "defocus_blur": ((.3, .4), (.4, .5), (.5, .6), (1, .2), (1.5, .1)),
    "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
    "contrast": (.75, .5, .4, .3, .15),
    "brightness": (.05, .1, .15, .2, .3),
    "fog": ((.2, 3), (.5, 3), (.75, 2.5), (1, 2), (1.5, 1.75)),
    "pixelate": (.95, .9, .85, .75, .65),
    "jpeg": (80, 65, 58, 50, 40),
    "elastic": ((0, 0, .08), (.05, .2, .07), (.08, .06, .06), (.1, .04, .05), (.1, .03, .03)),  # × 32
}
_V1 = {
    "gaussian_noise": (.08, .12, .18, .26, .38),
    "shot_noise": (60, 25, 12, 5, 3),
    "impulse_noise": (.03, .06, .09, .17, .27),
    "gaussian_blur": (.4, .6, .7, .8, 1.0),
    "defocus_blur": (1.0, 1.5, 2.0, 2.5, 3.0),
    "motion_blur": (3, 5, 7, 9, 11),
    "contrast": (.75, .5, .4, .3, .15),
    "brightness": (.1, .2, .3, .4, .5),
    "fog": (.2, .5, .75, 1.0, 1.5),
    "pixelate": (.75, .57, .43, .32, .25),
    "jpeg": (80, 65, 58, 50, 40),
    "elastic": ((8, 4), (12, 4), (16, 3.5), (20, 3.5), (26, 3)),
}
TABLES = {"mnist_c": _IMAGENET_C, "imagenet_c": _IMAGENET_C, "cifar10_c": _CIFAR_10_C, "v1": _V1}
# elastic: its lengths are fractions of this many times the side (ImageNet-C wrote 244 for its 224-px images);
# its borders (the affine warp's, the displacement's): OpenCV reflect-101 = scipy mirror; MNIST-C's black
_ELASTIC = {"mnist_c": (1.0, "zeros", "constant"), "cifar10_c": (1.0, "mirror", "reflect"),
            "imagenet_c": (244 / 224, "mirror", "reflect")}
_PLASMA_SIDE = {"mnist_c": 256, "imagenet_c": 256, "cifar10_c": 32}


def resolve_form(form: str, shape: tuple[int, ...]) -> str:
    """The form ``form`` names for images of ``shape`` (..., C, H, W): ``auto`` by image kind, else itself."""
    if form not in CHOICES:
        raise ValueError(f"corruption form={form!r}: expected one of {list(CHOICES)}")
    if form != "auto":
        return form
    c, h, w = shape[-3:]
    if c == 1:
        return "mnist_c"
    if c == 3:
        return "cifar10_c" if max(h, w) <= 32 else "imagenet_c"
    raise ValueError(f"images of {c} channels: expected 1 (grey) or 3 (colour) for corruption form='auto'")


def _generator(form: str, name: str, severity: int) -> torch.Generator:
    key = f"{name}/{severity}" if form == "v1" else f"{form}/{name}/{severity}"  # v1: its sets as they were
    return torch.Generator().manual_seed(zlib.crc32(key.encode()))


# ----------------------------------------------------------------------------- filters, borders, sampling


def _fold(i: Tensor, n: int, mode: str) -> Tensor:
    """Indices ``i`` (any integers) into 0..n-1 by a border rule: nearest (edge repeated), reflect (scipy's:
    d c b a | a b c d) or mirror (scipy's mirror = OpenCV's reflect-101: d c b | a b c d)."""
    if mode == "nearest" or n == 1:
        return i.clamp(0, n - 1)
    if mode == "reflect":
        i = i % (2 * n)
        return torch.where(i < n, i, 2 * n - 1 - i)
    i = i % (2 * n - 2)
    return torch.where(i < n, i, 2 * n - 2 - i)


def _gaussian_1d(sigma: float, truncate: float) -> Tensor:
    """scipy.ndimage's Gaussian weights: radius int(truncate·σ + ½), normalised (σ = 0: the identity)."""
    r = int(truncate * sigma + 0.5)
    if sigma <= 0 or r == 0:
        return torch.ones(1, dtype=torch.float64)
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _correlate(x: Tensor, kernel: Tensor, mode: str) -> Tensor:
    """Each (H, W) plane of ``x`` (..., H, W) correlated with ``kernel`` (kh, kw) (or one per image, (N, kh, kw),
    for ``x`` (N, C, H, W)), odd-sized and centred, borders by ``mode``; by FFT in float64 (a 2-D convolution in
    float64 is slow on CPUs, and the kernels here reach 119 taps)."""
    kh, kw = kernel.shape[-2:]
    h, w = x.shape[-2:]
    rows = _fold(torch.arange(-(kh // 2), h + kh // 2), h, mode)
    cols = _fold(torch.arange(-(kw // 2), w + kw // 2), w, mode)
    padded = x.index_select(-2, rows).index_select(-1, cols)
    size = padded.shape[-2:]
    k = torch.fft.rfft2(kernel.double().flip(-2, -1), s=size)  # correlation = convolution with the flipped kernel
    if kernel.dim() == 3 and x.dim() == 4:
        k = k[:, None]
    return torch.fft.irfft2(torch.fft.rfft2(padded) * k, s=size)[..., kh - 1:, kw - 1:]


def _filter_matrix(n: int, kernel: Tensor, mode: str) -> Tensor:
    """The (n, n) matrix of correlating a line of ``n`` pixels with the centred 1-D ``kernel``, borders by
    ``mode``: tap t of output i reads pixel fold(i + t − r)."""
    r = kernel.shape[0] // 2
    cols = _fold(torch.arange(n)[:, None] + torch.arange(-r, r + 1)[None, :], n, mode)
    return torch.zeros(n, n, dtype=torch.float64).index_put_((torch.arange(n)[:, None].expand_as(cols), cols),
                                                             kernel.expand_as(cols).clone(), accumulate=True)


def _gaussian_filter(x: Tensor, sigma: float, mode: str, truncate: float) -> Tensor:
    """scipy.ndimage.gaussian_filter over the last two axes (= skimage.filters.gaussian on each channel),
    as one matrix product a side."""
    k = _gaussian_1d(sigma, truncate)
    h, w = x.shape[-2:]
    return _filter_matrix(h, k, mode) @ x @ _filter_matrix(w, k, mode).T


def _bilinear(x: Tensor, rows: Tensor, cols: Tensor, mode: str) -> Tensor:
    """``x`` (N, C, H, W) sampled at (``rows``, ``cols``) (N, H', W'), bilinearly, as scipy's
    map_coordinates(order=1) with mode reflect or mirror; constant: 0 where a coordinate lies outside
    [0, side − 1]; zeros: the neighbours outside read 0 (OpenCV's constant border, scipy's grid-constant)."""
    n, c, h, w = x.shape
    r0, c0 = rows.floor(), cols.floor()
    fr, fc = rows - r0, cols - c0
    flat, out = x.reshape(n, c, h * w), torch.zeros(n, c, rows[0].numel(), dtype=x.dtype)
    for dr, wr in ((0, 1 - fr), (1, fr)):
        for dc, wc in ((0, 1 - fc), (1, fc)):
            ri, ci = r0.long() + dr, c0.long() + dc
            weight = wr * wc
            if mode in ("constant", "zeros"):
                weight = weight * ((ri >= 0) & (ri < h) & (ci >= 0) & (ci < w))
                ri, ci = ri.clamp(0, h - 1), ci.clamp(0, w - 1)
            else:
                ri, ci = _fold(ri, h, mode), _fold(ci, w, mode)
            index = (ri * w + ci).reshape(n, 1, -1).expand(n, c, -1)
            out += weight.reshape(n, 1, -1) * flat.gather(2, index)
    if mode == "constant":
        out *= ((rows >= 0) & (rows <= h - 1) & (cols >= 0) & (cols <= w - 1)).reshape(n, 1, -1)
    return out.reshape(n, c, *rows.shape[1:])


def _defocus_kernel(radius: float, alias_sigma: float) -> Tensor:
    """The references' disk: 1 on x² + y² ≤ r² over [−8, 8]² (or [−r, r]² above r = 8), normalised, then
    blurred by OpenCV's 3×3 (5×5 above r = 8) Gaussian of σ = ``alias_sigma`` with reflect-101 borders."""
    half = 8 if radius <= 8 else int(radius)
    t = torch.arange(-half, half + 1, dtype=torch.float64)
    disk = ((t[None, :] ** 2 + t[:, None] ** 2) <= radius**2).double()
    disk /= disk.sum()
    k = 3 if radius <= 8 else 5
    g = torch.exp(-((torch.arange(k, dtype=torch.float64) - k // 2) ** 2) / (2 * alias_sigma**2))
    g /= g.sum()
    return _correlate(disk, g[:, None] * g[None, :], "mirror")


def _motion_trail(radius: float, sigma: float, angles: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """ImageMagick's MotionBlurImage: weights exp(−i²/2σ²) for i = 0 .. 2⌈r⌉ (normalised), pixel i of the
    trail at (row, col) offsets (⌈i·sin θ − ½⌉, ⌈i·cos θ − ½⌉) for each angle θ (degrees, (N,))."""
    i = torch.arange(2 * math.ceil(radius) + 1, dtype=torch.float64)
    weights = torch.exp(-i**2 / (2 * sigma**2))
    theta = torch.deg2rad(angles.double())[:, None]
    rows, cols = (torch.ceil(i * f(theta) - 0.5).long() for f in (torch.sin, torch.cos))
    return weights / weights.sum(), rows, cols


def _plasma_noise(n: int, side: int, g: torch.Generator) -> list[Tensor]:
    """The uniform draws in [−1, 1) of ``n`` diamond-square maps of ``side`` (a power of two), coarse to fine:
    per step, the square centres', then the top edges', then the left edges'."""
    noise, step = [], side
    while step >= 2:
        k = side // step
        noise += [torch.rand(n, k, k, generator=g, dtype=torch.float64) * 2 - 1 for _ in range(3)]
        step //= 2
    return noise


def _plasma(noise: list[Tensor], decay: float, crop: tuple[int, int] | None = None) -> Tensor:
    """Diamond-square fractals (N, side, side) in [0, 1] from ``_plasma_noise``'s draws (the references'
    plasma_fractal): at each halving of the step, each new point is the mean of its four neighbours (wrapping
    round) plus w²·u, w = 100 at first and divided by ``decay`` each step; then shifted and scaled to [0, 1].
    Grown a level at a time (the grid of step s is the map's [::s, ::s]); with ``crop`` (h, w) only the map's
    [:h, :w] is put together, its scale still that of the whole map."""
    n = noise[0].shape[0]
    grid, wibble = torch.zeros(n, 1, 1, dtype=torch.float64), 100.0  # the map's [0, 0]
    for level in range(0, len(noise), 3):
        around = grid + grid.roll(-1, 1)
        # the map's [s/2::s, s/2::s], [::s, s/2::s] and [s/2::s, ::s], s the step
        centres = (around + around.roll(-1, 2)) / 4 + wibble**2 * noise[level]
        top = (centres + centres.roll(1, 1) + grid + grid.roll(-1, 2)) / 4 + wibble**2 * noise[level + 1]
        left = (centres + centres.roll(1, 2) + grid + grid.roll(-1, 1)) / 4 + wibble**2 * noise[level + 2]
        parts, wibble = (grid, top, left, centres), wibble / decay
        if crop is not None and level + 3 == len(noise):  # the last level: the whole map's range from its quarters
            lo = torch.stack([q.amin((1, 2)) for q in parts]).amin(0)[:, None, None]
            hi = torch.stack([q.amax((1, 2)) for q in parts]).amax(0)[:, None, None]
            half = (max(crop) + 1) // 2
            return (_interleave(*(q[:, :half, :half] for q in parts))[:, :crop[0], :crop[1]] - lo) / (hi - lo)
        grid = _interleave(*parts)
    grid -= grid.amin((1, 2), keepdim=True)
    return grid / grid.amax((1, 2), keepdim=True)


def _interleave(corners: Tensor, top: Tensor, left: Tensor, centres: Tensor) -> Tensor:
    """The (N, 2k, 2k) grid whose [::2, ::2] are ``corners``, [::2, 1::2] ``top``, [1::2, ::2] ``left`` and
    [1::2, 1::2] ``centres`` (each (N, k, k))."""
    n, k = corners.shape[:2]
    even = torch.stack([corners, top], -1).reshape(n, k, 2 * k)
    odd = torch.stack([left, centres], -1).reshape(n, k, 2 * k)
    return torch.stack([even, odd], 2).reshape(n, 2 * k, 2 * k)


def _elastic_affine(jitter: Tensor, h: int, w: int) -> tuple[Tensor, Tensor]:
    """Source (rows, cols) (N, H, W) of each output pixel under the references' random affine: the three
    points (c+s, c+s), (c+s, c−s), (c−s, c−s) (c = side // 2, s = side // 3, as (x, y)) moved by ``jitter``
    (N, 3, 2) in px; the warp maps the first three to the second, so each output pixel reads its inverse image."""
    cx, cy, s = float(h // 2), float(w // 2), float(min(h, w) // 3)
    src = torch.tensor([[cx + s, cy + s], [cx + s, cy - s], [cx - s, cy - s]], dtype=torch.float64)
    dst = src + jitter
    ones = torch.ones(3, 1, dtype=torch.float64)
    m = torch.linalg.solve(torch.cat([src, ones], 1).expand(len(dst), 3, 3), dst).transpose(1, 2)  # (N, 2, 3)
    inv = torch.linalg.inv(torch.cat([m, torch.tensor([[[0.0, 0, 1]]], dtype=torch.float64).expand(len(m), 1, 3)], 1))
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    pts = torch.stack([xx, yy, torch.ones_like(xx)]).reshape(3, -1)
    src_xy = (inv[:, :2] @ pts).reshape(len(m), 2, h, w)
    return src_xy[:, 1], src_xy[:, 0]


def _with_pil(x: Tensor, op) -> Tensor:
    """``op`` (PIL image -> PIL image of the same size) on each image of ``x`` (N, C, H, W) in 8 bits, as the
    references hand PIL their uint8 images; back to [0, 1] in float64."""
    from PIL import Image

    n, c, h, w = x.shape
    raw = (x * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    mode = "L" if c == 1 else "RGB"
    out = b"".join(op(Image.frombytes(mode, (w, h), im.tobytes())).tobytes() for im in raw)
    return torch.frombuffer(bytearray(out), dtype=torch.uint8).reshape(n, h, w, c).permute(0, 3, 1, 2).double() / 255


def _pixelate(c: float):
    from PIL import Image

    def op(im):
        w, h = im.size
        return im.resize((max(1, int(w * c)), max(1, int(h * c))), Image.BOX).resize((w, h), Image.BOX)
    return op


def _jpeg(quality: int):
    from PIL import Image

    def op(im):
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality)
        return Image.open(io.BytesIO(buf.getvalue()))
    return op


# ----------------------------------------------------------------------------- sample, then apply


def _check(x: Tensor, name: str, severity: int) -> None:
    if name not in CORRUPTIONS:
        raise ValueError(f"corruption={name!r}: expected one of {list(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity={severity!r}: expected one of {list(SEVERITIES)}")
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"images: expected a float tensor (N, C, H, W) in [0, 1], got {x.dtype} of shape "
                         f"{tuple(x.shape)}")


def sample(x: Tensor, name: str, severity: int, *, form: str = "auto") -> dict[str, Tensor]:
    """The random draws ``corrupt(x, name, severity, form=form)`` applies (from the same generator, so the
    same draws), float64: ``z`` N(0, 1) like ``x`` (gaussian_noise), ``counts`` Poisson(x·c) (shot_noise), ``u``
    U(0, 1) like ``x`` (impulse_noise), ``angle`` (N,) in degrees (motion_blur), ``plasma`` (N, H, W) (fog),
    ``jitter`` (N, 3, 2), ``dx`` and ``dy`` (N, H, W) in U(−1, 1) (elastic); {} for the deterministic ones."""
    _check(x, name, severity)
    form = resolve_form(form, x.shape)
    if form == "v1":
        raise ValueError("corruption form='v1' draws inside corrupt(); expected one of the reference forms")
    p, g, x = TABLES[form][name][severity - 1], _generator(form, name, severity), x.double().cpu()
    n, _, h, w = x.shape
    if name == "gaussian_noise":
        return {"z": torch.randn(x.shape, generator=g, dtype=torch.float64)}
    if name == "shot_noise":
        return {"counts": torch.poisson(x * p, generator=g)}
    if name == "impulse_noise":
        return {"u": torch.rand(x.shape, generator=g, dtype=torch.float64)}
    if name == "motion_blur":
        return {"angle": torch.rand(n, generator=g, dtype=torch.float64) * 90 - 45}
    if name == "fog":  # made in blocks: the draws of a 256² map are 0.5 MB an image
        side = max(_PLASMA_SIDE[form], 2 ** math.ceil(math.log2(max(h, w))))
        blocks = [_plasma(_plasma_noise(min(_BLOCK, n - i), side, g), p[1], (h, w)) for i in range(0, n, _BLOCK)]
        return {"plasma": torch.cat(blocks) if blocks else torch.zeros(0, h, w, dtype=torch.float64)}
    if name == "elastic":
        return {k: torch.rand(n, *s, generator=g, dtype=torch.float64) * 2 - 1
                for k, s in (("jitter", (3, 2)), ("dx", (h, w)), ("dy", (h, w)))}
    return {}


def _motion_blur(x: Tensor, p: tuple, d: dict, form: str) -> Tensor:
    weights, dr, dc = _motion_trail(*p, d["angle"])
    n, r = x.shape[0], weights.shape[0] - 1  # the trail reaches r px from the pixel: each image's trail as a kernel
    kernels = torch.zeros(n, 2 * r + 1, 2 * r + 1, dtype=torch.float64)
    kernels.index_put_((torch.arange(n)[:, None].expand_as(dr), r + dr, r + dc), weights.expand_as(dr).clone(),
                       accumulate=True)  # neighbouring taps may round to one pixel
    return _correlate(x, kernels, "nearest")


def _brightness(x: Tensor, c: float, d: dict, form: str) -> Tensor:
    """HSV's V (the largest channel) to min(V + c, 1) at the same hue and saturation: each channel scaled by
    the ratio; a black pixel (S = 0) becomes grey V + c."""
    v = x.amax(1, keepdim=True)
    brighter = (v + c).clamp(max=1)
    return torch.where(v > 0, x * brighter / v.clamp(min=1e-300), brighter)


def _fog(x: Tensor, p: tuple, d: dict, form: str) -> Tensor:
    top = x.amax((1, 2, 3), keepdim=True)  # the image's brightest value before the plasma
    return (x + p[0] * d["plasma"][:, None]) * top / (top + p[0])


def _elastic(x: Tensor, p: tuple, d: dict, form: str) -> Tensor:
    h, w = x.shape[-2:]
    scale, affine_border, border = _ELASTIC[form]
    alpha, sigma, shift = (f * min(h, w) * scale for f in p)
    rows, cols = _elastic_affine(shift * d["jitter"], h, w)
    warped = _bilinear(x, rows, cols, affine_border)
    dx, dy = (alpha * _gaussian_filter(d[k], sigma, "reflect", 3.0) for k in ("dx", "dy"))
    return _bilinear(warped, torch.arange(h, dtype=torch.float64)[:, None] + dy,
                     torch.arange(w, dtype=torch.float64)[None, :] + dx, border)


# Each corruption: (x (N, C, H, W) float64, its parameters, its draws, the form) -> x corrupted, unclipped.
_APPLY = {
    "gaussian_noise": lambda x, p, d, form: x + p * d["z"],
    "shot_noise": lambda x, p, d, form: d["counts"] / p,
    # skimage's s&p: a share p of the values replaced, salt and pepper equally likely
    "impulse_noise": lambda x, p, d, form: torch.where(d["u"] < p / 2, 0.0, torch.where(d["u"] < p, 1.0, x)),
    "gaussian_blur": lambda x, p, d, form: _gaussian_filter(x, p, "nearest", 4.0),
    "defocus_blur": lambda x, p, d, form: _correlate(x, _defocus_kernel(*p), "mirror"),
    "motion_blur": _motion_blur,
    "contrast": lambda x, p, d, form: (x - x.mean((2, 3), keepdim=True)) * p + x.mean((2, 3), keepdim=True),
    "brightness": _brightness,
    "fog": _fog,
    "pixelate": lambda x, p, d, form: _with_pil(x, _pixelate(p)),
    "jpeg": lambda x, p, d, form: _with_pil(x, _jpeg(p)),
    "elastic": _elastic,
}


def corrupt(x: Tensor, name: str, severity: int, *, form: str = "auto") -> Tensor:
    """``x`` (N, C, H, W) in [0, 1], corrupted by ``name`` at ``severity`` (1..5) in ``form`` (module docstring;
    ``auto``: by image kind); float32 in [0, 1]."""
    _check(x, name, severity)
    form = resolve_form(form, x.shape)
    if form == "v1":
        return _corrupt_v1(x.float().cpu(), name, severity)
    x64, p = x.double().cpu(), TABLES[form][name][severity - 1]
    draws = sample(x64, name, severity, form=form)
    out = [_APPLY[name](x64[i:i + _BLOCK], p, {k: v[i:i + _BLOCK] for k, v in draws.items()}, form)
           for i in range(0, x.shape[0], _BLOCK)]
    return torch.cat(out).clamp(0, 1).float() if out else x.float().cpu()


# ----------------------------------------------------------------------------- v1, as it was


def _conv_per_image(x: Tensor, kernels: Tensor) -> Tensor:
    """Convolve image i (every channel) with ``kernels[i]`` (N, k, k), zero padding, same size."""
    n, c, h, w = x.shape
    k = kernels.shape[-1]
    weight = kernels.repeat_interleave(c, 0)[:, None]  # (N·C, 1, k, k)
    return F.conv2d(x.reshape(1, n * c, h, w), weight, padding=k // 2, groups=n * c).reshape(n, c, h, w)


def _disk(radius: float) -> Tensor:
    r = math.ceil(radius)
    yy, xx = torch.meshgrid(torch.arange(-r, r + 1.0), torch.arange(-r, r + 1.0), indexing="ij")
    disk = ((xx**2 + yy**2) <= radius**2 + 1e-9).float()
    return disk / disk.sum()


def _lines(length: int, angles: Tensor) -> Tensor:
    """Per angle (radians) a (length, length) kernel: a 1-px line through the centre, normalised."""
    c = (length - 1) / 2
    t = torch.linspace(-c, c, 4 * length)
    xs = (c + t[None] * torch.cos(angles)[:, None]).round().long().clamp(0, length - 1)
    ys = (c + t[None] * torch.sin(angles)[:, None]).round().long().clamp(0, length - 1)
    k = torch.zeros(angles.shape[0], length, length)
    k[torch.arange(angles.shape[0])[:, None].expand_as(xs), ys, xs] = 1.0
    return k / k.sum((1, 2), keepdim=True)


def _fog_v1(n: int, h: int, w: int, g: torch.Generator, octaves: int = 4) -> Tensor:
    """Smooth fractal noise in [0, 1] (N, 1, H, W): octaves of uniform noise on coarse grids, upsampled."""
    out = torch.zeros(n, 1, h, w)
    for o in range(octaves):
        side = 2 ** (o + 1)
        noise = torch.rand(n, 1, side, side, generator=g)
        out += F.interpolate(noise, size=(h, w), mode="bicubic", align_corners=False) / 2**o
    lo, hi = out.amin((2, 3), keepdim=True), out.amax((2, 3), keepdim=True)
    return (out - lo) / (hi - lo).clamp(min=1e-6)


def _corrupt_v1(x: Tensor, name: str, severity: int) -> Tensor:
    """The ``v1`` form: mixlab's corruptions before the reference forms, unchanged (float32)."""
    from torchvision.transforms.v2 import functional as TF

    p, g = _V1[name][severity - 1], _generator("v1", name, severity)
    n, c, h, w = x.shape
    if name == "gaussian_noise":
        out = x + p * torch.randn(x.shape, generator=g)
    elif name == "shot_noise":
        out = torch.poisson(x * p, generator=g) / p
    elif name == "impulse_noise":
        u = torch.rand(x.shape, generator=g)
        out = torch.where(u < p / 2, 0.0, torch.where(u < p, 1.0, x))
    elif name == "gaussian_blur":
        out = TF.gaussian_blur(x, kernel_size=2 * math.ceil(3 * p) + 1, sigma=p)
    elif name == "defocus_blur":
        out = _conv_per_image(x, _disk(p).expand(n, -1, -1))
    elif name == "motion_blur":
        out = _conv_per_image(x, _lines(p, torch.rand(n, generator=g) * math.pi))
    elif name == "contrast":
        out = TF.adjust_contrast(x, p) if c in (1, 3) else (x - x.mean((1, 2, 3), keepdim=True)) * p + x.mean(
            (1, 2, 3), keepdim=True)
    elif name == "brightness":
        out = x + p
    elif name == "fog":
        top = x.amax((1, 2, 3), keepdim=True)
        out = (x + p * _fog_v1(n, h, w, g)) * top / (top + p)
    elif name == "pixelate":
        small = (max(1, round(h * p)), max(1, round(w * p)))
        out = F.interpolate(F.interpolate(x, size=small, mode="area"), size=(h, w), mode="bilinear", align_corners=False)
    elif name == "jpeg":
        out = TF.jpeg((x * 255).round().clamp(0, 255).to(torch.uint8), quality=p).float() / 255
    else:  # elastic
        alpha, sigma = p
        fields = torch.rand(FIELDS, 2, h, w, generator=g) * 2 - 1
        k = 2 * math.ceil(3 * sigma) + 1
        fields = TF.gaussian_blur(fields, kernel_size=k, sigma=sigma) * torch.tensor([alpha / w, alpha / h]).view(1, 2, 1, 1)
        out = torch.empty_like(x)
        for f in range(min(FIELDS, n)):
            rows = torch.arange(f, n, FIELDS)
            out[rows] = TF.elastic(x[rows], fields[f].permute(1, 2, 0)[None])
    return out.clamp(0, 1)


# ----------------------------------------------------------------------------- the sets, cached


def _cache_name(name: str, form: str, tag: str) -> str:
    # v1 keeps the name its sets had, so that caches made before the forms serve it still
    return f"{name}-v1-{tag}.pt" if form == "v1" else f"{name}-{form}-v{VERSION}-{tag}.pt"


def corrupted_sets(x: Tensor, cache: Path | None = None, *, form: str = "auto") -> dict[tuple[str, int], Tensor]:
    """Every (corruption, severity) of ``x`` (N, C, H, W) in [0, 1] in ``form`` (``auto``: by image kind), as
    uint8, from ``cache`` where a set of the same images (a SHA-256 of their uint8 bytes), form and version is
    there, else made and written there."""
    raw = (x.float().cpu() * 255).round().clamp(0, 255).to(torch.uint8)
    form = resolve_form(form, raw.shape)
    tag = hashlib.sha256(raw.numpy().tobytes()).hexdigest()[:16]
    out = {}
    for name in CORRUPTIONS:
        path = None if cache is None else cache / _cache_name(name, form, tag)
        if path is not None and path.exists():
            try:
                stored = torch.load(path, weights_only=True)
                if stored.shape == (len(SEVERITIES), *raw.shape) and stored.dtype == torch.uint8:
                    out.update({(name, s): stored[s - 1] for s in SEVERITIES})
                    continue
            except Exception:  # noqa: BLE001 - a damaged cache file is made again
                pass
        made = torch.stack([(corrupt(raw.float() / 255, name, s, form=form) * 255).round().to(torch.uint8)
                            for s in SEVERITIES])
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save(made, tmp)
            tmp.replace(path)
        out.update({(name, s): made[s - 1] for s in SEVERITIES})
    return out
