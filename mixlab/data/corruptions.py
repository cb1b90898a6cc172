"""Corrupted copies of a test set in the style of CIFAR-10-C (Hendrycks & Dietterich, ICLR 2019) and
MNIST-C (Mu & Gilmer, 2019), generated offline and deterministically (``eval.corruptions``).

Twelve corruptions in four families, each at five severities. Inputs are images in [0, 1]
(N, C, H, W); every draw comes from a generator seeded by the corruption and severity, so a set is
the same on every machine and run. torchvision's operations are used where they exist (Gaussian
noise and blur, contrast, JPEG, elastic warping from a displacement field); the rest are a few
lines each. The parameters follow CIFAR-10-C's where they carry over to 28×28 images, and are made
stronger where a 28-pixel image shrugs them off (pixelation, motion blur):

| corruption | parameter per severity 1..5 |
|---|---|
| gaussian_noise | σ = .08 .12 .18 .26 .38 (CIFAR-10-C) |
| shot_noise | Poisson with λ = x·c, c = 60 25 12 5 3 (CIFAR-10-C) |
| impulse_noise | salt-and-pepper share .03 .06 .09 .17 .27 (CIFAR-10-C) |
| gaussian_blur | σ = .4 .6 .7 .8 1.0 px (CIFAR-10-C) |
| defocus_blur | disk radius 1 1.5 2 2.5 3 px |
| motion_blur | a line of 3 5 7 9 11 px at an angle drawn per image |
| contrast | blend toward the image mean, c = .75 .5 .4 .3 .15 (CIFAR-10-C) |
| brightness | + .1 .2 .3 .4 .5 (clipped) |
| fog | a fractal of 4 octaves of smooth noise, weight .2 .5 .75 1 1.5 (CIFAR-10-C's plasma, simplified) |
| pixelate | down to .75 .57 .43 .32 .25 of the side (box), back up (bilinear) |
| jpeg | quality 80 65 58 50 40 (CIFAR-10-C) |
| elastic | torchvision's elastic warp, α = 8 12 16 20 26 px, σ = 4 4 3.5 3.5 3 px (64 fields a set) |
"""
from __future__ import annotations

import hashlib
import math
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "gaussian_blur", "defocus_blur", "motion_blur",
               "contrast", "brightness", "fog", "pixelate", "jpeg", "elastic")
SEVERITIES = (1, 2, 3, 4, 5)
VERSION = 1  # bump when a corruption changes: cached sets of another version are not read
FIELDS = 64  # elastic: displacement fields drawn per set, image i warped by field i mod 64

_P = {
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


def _generator(name: str, severity: int) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(f"{name}/{severity}".encode()))


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


def _fog(n: int, h: int, w: int, g: torch.Generator, octaves: int = 4) -> Tensor:
    """Smooth fractal noise in [0, 1] (N, 1, H, W): octaves of uniform noise on coarse grids, upsampled."""
    out = torch.zeros(n, 1, h, w)
    for o in range(octaves):
        side = 2 ** (o + 1)
        noise = torch.rand(n, 1, side, side, generator=g)
        out += F.interpolate(noise, size=(h, w), mode="bicubic", align_corners=False) / 2**o
    lo, hi = out.amin((2, 3), keepdim=True), out.amax((2, 3), keepdim=True)
    return (out - lo) / (hi - lo).clamp(min=1e-6)


def corrupt(x: Tensor, name: str, severity: int) -> Tensor:
    """``x`` (N, C, H, W) in [0, 1], corrupted by ``name`` at ``severity`` (1..5); float32 in [0, 1]."""
    from torchvision.transforms.v2 import functional as TF

    if name not in CORRUPTIONS:
        raise ValueError(f"corruption={name!r}: expected one of {list(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity={severity!r}: expected one of {list(SEVERITIES)}")
    p, g, x = _P[name][severity - 1], _generator(name, severity), x.float().cpu()
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
        out = (x + p * _fog(n, h, w, g)) * top / (top + p)
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


def corrupted_sets(x: Tensor, cache: Path | None = None) -> dict[tuple[str, int], Tensor]:
    """Every (corruption, severity) of ``x`` (N, C, H, W) in [0, 1] as uint8, from ``cache`` where a set of the
    same images (a SHA-256 of their uint8 bytes) and of this ``VERSION`` is there, else made and written there."""
    raw = (x.float().cpu() * 255).round().clamp(0, 255).to(torch.uint8)
    tag = hashlib.sha256(raw.numpy().tobytes()).hexdigest()[:16]
    out = {}
    for name in CORRUPTIONS:
        path = None if cache is None else cache / f"{name}-v{VERSION}-{tag}.pt"
        if path is not None and path.exists():
            try:
                stored = torch.load(path, weights_only=True)
                if stored.shape == (len(SEVERITIES), *raw.shape) and stored.dtype == torch.uint8:
                    out.update({(name, s): stored[s - 1] for s in SEVERITIES})
                    continue
            except Exception:  # noqa: BLE001 - a damaged cache file is made again
                pass
        made = torch.stack([(corrupt(raw.float() / 255, name, s) * 255).round().to(torch.uint8) for s in SEVERITIES])
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save(made, tmp)
            tmp.replace(path)
        out.update({(name, s): made[s - 1] for s in SEVERITIES})
    return out
