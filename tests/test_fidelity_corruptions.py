"""eval.corruptions against its references, corruption by corruption and severity by severity: each set equals
a float64 re-implementation of the reference's formula (hendrycks/robustness ImageNet-C/create_c/make_cifar_c.py
and make_imagenet_c.py; google-research/mnist-c corruptions.py), applied to the same random draws, with the
severity tables restated here from those files. Grey images get MNIST-C's, 32×32 colour CIFAR-10-C's, larger
colour ImageNet-C's (issue: the noise labelled CIFAR-10-C was ImageNet-C's, brightness was added per channel,
contrast used the grey mean, the Gaussian blur mirrored its borders and stopped at 3σ)."""
from __future__ import annotations

import colorsys
import io
import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

import mixlab.data.corruptions as C

from .fashion_items import items

MNIST_C = {  # mnist-c corruptions.py; make_imagenet_c.py has the same values for these twelve
    "gaussian_noise": [.08, .12, 0.18, 0.26, 0.38],
    "shot_noise": [60, 25, 12, 5, 3],
    "impulse_noise": [.03, .06, .09, 0.17, 0.27],
    "gaussian_blur": [1, 2, 3, 4, 6],
    "defocus_blur": [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)],
    "motion_blur": [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)],
    "contrast": [0.4, .3, .2, .1, .05],
    "brightness": [.1, .2, .3, .4, .5],
    "fog": [(1.5, 2), (2., 2), (2.5, 1.7), (2.5, 1.5), (3., 1.4)],
    "pixelate": [0.6, 0.5, 0.4, 0.3, 0.25],
    "jpeg": [25, 18, 15, 10, 7],
    "elastic": [(2, 0.7, 0.1), (2, 0.08, 0.2), (0.05, 0.01, 0.02), (0.07, 0.01, 0.02), (0.12, 0.01, 0.02)],  # × IMSIZE
}
CIFAR_10_C = {  # make_cifar_c.py
    "gaussian_noise": [0.04, 0.06, .08, .09, .10],
    "shot_noise": [500, 250, 100, 75, 50],
    "impulse_noise": [.01, .02, .03, .05, .07],
    "gaussian_blur": [.4, .6, 0.7, .8, 1],
    "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
    "motion_blur": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
    "contrast": [.75, .5, .4, .3, 0.15],
    "brightness": [.05, .1, .15, .2, .3],
    "fog": [(.2, 3), (.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],
    "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],
    "jpeg": [80, 65, 58, 50, 40],
    "elastic": [(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)],  # × 32
}
REFERENCE = {"mnist_c": MNIST_C, "cifar10_c": CIFAR_10_C, "imagenet_c": MNIST_C}
IMSIZE = {"mnist_c": lambda side: side, "cifar10_c": lambda side: side, "imagenet_c": lambda side: side * 244 / 224}


def colour(n: int, side: int, seed: int) -> torch.Tensor:
    """Smooth colour images in 8 bits, with black and white pixels (hue-less corners of HSV) among them."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=(side, side), mode="bilinear")
    x = (x + 0.15 * torch.rand(n, 3, side, side, generator=g)).clamp(0, 1)
    x[:, :, :3, :3], x[:, :, -2:, -2:] = 0, 1
    return (x * 255).round() / 255


IMAGES = {"mnist_c": items(12, 0)[0][:, None].float() / 255, "cifar10_c": colour(10, 32, 0),
          "imagenet_c": colour(2, 64, 1)}


# ----------------------------------------------------------------------------- the references, in float64


def channels(f, x: np.ndarray) -> np.ndarray:
    return np.stack([[f(ch) for ch in im] for im in x])


def rgb2hsv2rgb_brightness(x: np.ndarray, c: float) -> np.ndarray:
    """brightness(): skimage rgb2hsv, V + c clipped, hsv2rgb; MNIST-C goes gray2rgb first and rgb2gray after."""
    def pixel(rgb):
        h, s, v = colorsys.rgb_to_hsv(*rgb)
        return colorsys.hsv_to_rgb(h, s, min(max(v + c, 0.0), 1.0))

    grey = x.shape[1] == 1
    rgb = np.repeat(x, 3, 1) if grey else x
    out = np.apply_along_axis(pixel, 1, rgb)
    return (out * np.array([0.2125, 0.7154, 0.0721])[:, None, None]).sum(1, keepdims=True) if grey else out


def disk(radius: float, alias_blur: float) -> np.ndarray:
    """The references' disk(): aliased disk over [-8, 8]² (or [-r, r]², 5×5 blur, above r = 8), normalised, then
    cv2.GaussianBlur(ksize, sigmaX=alias_blur): getGaussianKernel's weights, BORDER_REFLECT_101 (scipy's mirror)."""
    L, k = (np.arange(-8, 8 + 1), 3) if radius <= 8 else (np.arange(-radius, radius + 1), 5)
    X, Y = np.meshgrid(L, L)
    aliased = ((X**2 + Y**2) <= radius**2).astype(np.float64)
    aliased /= aliased.sum()
    g = np.exp(-((np.arange(k) - (k - 1) / 2) ** 2) / (2 * alias_blur**2))
    return ndimage.correlate(aliased, np.outer(g, g) / g.sum() ** 2, mode="mirror")


def motion(x: np.ndarray, radius: float, sigma: float, angles: np.ndarray) -> np.ndarray:
    """ImageMagick's MotionBlurImage (MagickCore/effect.c): width 2·ceil(radius)+1, kernel exp(-i²/2σ²) normalised,
    tap i at (x + ceil(i·cos θ − .5), y + ceil(i·sin θ − .5)), edge virtual pixels."""
    width = 2 * math.ceil(radius) + 1
    k = np.exp(-np.arange(width) ** 2 / (2 * sigma**2))
    k /= k.sum()
    h, w = x.shape[-2:]
    out = np.zeros_like(x)
    for n, theta in enumerate(np.radians(angles)):
        for i in range(width):
            rows = np.clip(np.arange(h) + math.ceil(i * math.sin(theta) - 0.5), 0, h - 1)
            cols = np.clip(np.arange(w) + math.ceil(i * math.cos(theta) - 0.5), 0, w - 1)
            out[n] += k[i] * x[n][:, rows][:, :, cols]
    return out


def pil(x: np.ndarray, op) -> np.ndarray:
    u8 = np.round(x * 255).astype(np.uint8).transpose(0, 2, 3, 1)
    return np.stack([np.asarray(op(Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im))).reshape(im.shape)
                     for im in u8]).transpose(0, 3, 1, 2) / 255


def pixelate(c: float):
    def op(im):
        w, h = im.size
        return im.resize((int(w * c), int(h * c)), Image.BOX).resize((w, h), Image.BOX)
    return op


def jpeg(quality: int):
    def op(im):
        out = io.BytesIO()
        im.save(out, "JPEG", quality=quality)
        return Image.open(out)
    return op


def elastic(x: np.ndarray, c: tuple, imsize: float, d: dict, grey: bool) -> np.ndarray:
    """elastic_transform(): cv2.getAffineTransform of three points moved by U(±c2), cv2.warpAffine (bilinear;
    BORDER_REFLECT_101 = map_coordinates mirror, MNIST-C's BORDER_CONSTANT = grid-constant), then
    map_coordinates(order=1) at (y + dy, x + dx), d = gaussian(U(±1), c1, mode='reflect', truncate=3)·c0,
    in mode reflect (MNIST-C: constant)."""
    alpha, sigma, shift = (f * imsize for f in c)
    h, w = x.shape[-2:]
    centre, s = np.float32((h, w)) // 2, min(h, w) // 3
    pts1 = np.array([centre + s, [centre[0] + s, centre[1] - s], centre - s], dtype=np.float64)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.empty_like(x)
    for n in range(len(x)):
        pts2 = pts1 + shift * d["jitter"][n]
        M = np.linalg.solve(np.c_[pts1, np.ones(3)], pts2).T  # (2, 3): M @ [p, 1] = q
        inv = np.linalg.inv(np.r_[M, [[0, 0, 1]]])[:2]
        src_x, src_y = (inv @ np.stack([xx.ravel(), yy.ravel(), np.ones(h * w)])).reshape(2, h, w)
        dx, dy = (ndimage.gaussian_filter(d[k][n], sigma, mode="reflect", truncate=3) * alpha for k in ("dx", "dy"))
        for ch in range(x.shape[1]):
            warped = ndimage.map_coordinates(x[n, ch], [src_y, src_x], order=1,
                                             mode="grid-constant" if grey else "mirror")
            out[n, ch] = ndimage.map_coordinates(warped, [yy + dy, xx + dx], order=1,
                                                 mode="constant" if grey else "reflect")
    return out


def reference(form: str, name: str, severity: int, x: np.ndarray, d: dict) -> np.ndarray:
    c = REFERENCE[form][name][severity - 1]
    if name == "gaussian_noise":
        out = x + c * d["z"]
    elif name == "shot_noise":
        out = d["counts"] / c
    elif name == "impulse_noise":  # skimage random_noise 's&p': a share `amount` flipped, salt and pepper 50:50
        out = np.where(d["u"] < c / 2, 0.0, np.where(d["u"] < c, 1.0, x))
    elif name == "gaussian_blur":  # skimage.filters.gaussian(multichannel=True): scipy's, nearest, truncate 4
        out = channels(lambda ch: ndimage.gaussian_filter(ch, c, mode="nearest", truncate=4.0), x)
    elif name == "defocus_blur":  # cv2.filter2D: correlation, BORDER_REFLECT_101
        kernel = disk(*c)
        out = channels(lambda ch: ndimage.correlate(ch, kernel, mode="mirror"), x)
    elif name == "motion_blur":
        out = motion(x, *c, d["angle"])
    elif name == "contrast":
        means = x.mean(axis=(2, 3), keepdims=True)  # np.mean(x, axis=(0, 1)) of an (H, W, C) image
        out = (x - means) * c + means
    elif name == "brightness":
        out = rgb2hsv2rgb_brightness(x, c)
    elif name == "fog":
        max_val = x.max(axis=(1, 2, 3), keepdims=True)
        out = (x + c[0] * d["plasma"][:, None]) * max_val / (max_val + c[0])
    elif name == "pixelate":
        return pil(x, pixelate(c))
    elif name == "jpeg":
        return pil(x, jpeg(c))
    else:
        out = elastic(x, c, IMSIZE[form](min(x.shape[-2:])), d, grey=form == "mnist_c")
    return np.clip(out, 0, 1)


# ----------------------------------------------------------------------------- the tests


CASES = [(form, name) for form in REFERENCE for name in C.CORRUPTIONS]


@pytest.mark.parametrize("form,name", CASES, ids=[f"{f}-{n}" for f, n in CASES])
def test_each_corruption_is_its_references_formula_at_every_severity(form, name):
    x = IMAGES[form]  # the images' kind picks the form: no option given
    for s in C.SEVERITIES:
        got = C.corrupt(x, name, s)
        draws = {k: v.numpy() for k, v in C.sample(x, name, s).items()} if name in RANDOM else {}
        want = reference(form, name, s, x.double().numpy(), draws)
        assert got.dtype == torch.float32 and got.shape == x.shape
        np.testing.assert_allclose(got.numpy(), want, atol=1e-6, rtol=0, err_msg=f"{form} {name} severity {s}")
        assert torch.equal(C.corrupt(x, name, s, form=form), got)


RANDOM = {"gaussian_noise", "shot_noise", "impulse_noise", "motion_blur", "fog", "elastic"}


def test_the_draws_have_the_references_distributions():
    grey = torch.full((40, 3, 32, 32), 0.5)  # colour, 32 px: CIFAR-10-C's tables
    for s, sigma in zip(C.SEVERITIES, CIFAR_10_C["gaussian_noise"]):
        assert float((C.corrupt(grey, "gaussian_noise", s) - 0.5).std()) == pytest.approx(sigma, rel=0.03)
    for s, c in zip(C.SEVERITIES, CIFAR_10_C["shot_noise"]):  # Poisson(x·c): mean and variance x·c
        counts = C.sample(grey, "shot_noise", s)["counts"]
        assert torch.equal(counts, counts.round()) and float(counts.mean()) == pytest.approx(0.5 * c, rel=0.01)
        assert float(counts.var()) == pytest.approx(0.5 * c, rel=0.05)
    for s, c in zip(C.SEVERITIES, CIFAR_10_C["impulse_noise"]):  # 614 400 values: 1.3% the spread at c = .01
        out = C.corrupt(grey.repeat(5, 1, 1, 1), "impulse_noise", s)
        assert float((out != 0.5).float().mean()) == pytest.approx(c, rel=0.06)
        assert float((out == 1).float().mean()) == pytest.approx(c / 2, rel=0.1)
    angles = C.sample(grey, "motion_blur", 1)["angle"]
    assert -45 <= float(angles.min()) and float(angles.max()) <= 45 and float(angles.std()) > 20
    d = C.sample(grey, "elastic", 2)
    assert {k: tuple(v.shape) for k, v in d.items()} == {"jitter": (40, 3, 2), "dx": (40, 32, 32), "dy": (40, 32, 32)}
    assert all(-1 <= float(v.min()) and float(v.max()) < 1 for v in d.values())


def plasma_fractal(noise: list[np.ndarray], wibbledecay: float) -> np.ndarray:
    """The references' plasma_fractal (diamond-square on a torus), one map, fed the given uniform draws in
    [-1, 1) in place of wibble * np.random.uniform(-wibble, wibble, ...) / wibble."""
    mapsize = 2 * noise[-1].shape[-1]
    maparray = np.zeros((mapsize, mapsize))
    stepsize, wibble, draws = mapsize, 100.0, iter(noise)
    while stepsize >= 2:
        half = stepsize // 2
        cornerref = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        squareaccum = cornerref + np.roll(cornerref, shift=-1, axis=0)
        squareaccum += np.roll(squareaccum, shift=-1, axis=1)
        maparray[half:mapsize:stepsize, half:mapsize:stepsize] = squareaccum / 4 + wibble * wibble * next(draws)
        drgrid = maparray[half:mapsize:stepsize, half:mapsize:stepsize]
        ulgrid = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        ltsum = drgrid + np.roll(drgrid, 1, axis=0) + ulgrid + np.roll(ulgrid, -1, axis=1)
        maparray[0:mapsize:stepsize, half:mapsize:stepsize] = ltsum / 4 + wibble * wibble * next(draws)
        ttsum = drgrid + np.roll(drgrid, 1, axis=1) + ulgrid + np.roll(ulgrid, -1, axis=0)
        maparray[half:mapsize:stepsize, 0:mapsize:stepsize] = ttsum / 4 + wibble * wibble * next(draws)
        stepsize //= 2
        wibble /= wibbledecay
    maparray -= maparray.min()
    return maparray / maparray.max()


@pytest.mark.parametrize("form,side", [("mnist_c", 256), ("cifar10_c", 32), ("imagenet_c", 256)])
def test_the_fogs_plasma_is_the_references_diamond_square_cropped_to_the_image(form, side):
    x = IMAGES[form]
    for s, (_, decay) in zip(C.SEVERITIES, REFERENCE[form]["fog"]):
        noise = C._plasma_noise(len(x), side, C._generator(form, "fog", s))  # the draws sample() takes, in order
        want = np.stack([plasma_fractal([u[i].numpy() for u in noise], decay) for i in range(len(x))])
        np.testing.assert_allclose(C._plasma(noise, decay).numpy(), want, atol=1e-12)
        h, w = x.shape[-2:]
        np.testing.assert_array_equal(C.sample(x, "fog", s)["plasma"].numpy(), want[:, :h, :w])


def test_auto_picks_the_reference_of_the_image_kind():
    assert [C.resolve_form("auto", s) for s in ((5, 1, 28, 28), (5, 1, 8, 8), (5, 3, 32, 32), (5, 3, 64, 64))] == [
        "mnist_c", "mnist_c", "cifar10_c", "imagenet_c"]
    assert C.resolve_form("cifar10_c", (5, 1, 28, 28)) == "cifar10_c"  # a form named is the form used
    with pytest.raises(ValueError, match=r"images of 4 channels: expected 1 \(grey\) or 3 \(colour\)"):
        C.resolve_form("auto", (5, 4, 32, 32))
    with pytest.raises(ValueError, match=r"form='cifar10c': expected one of \['auto', 'mnist_c', 'cifar10_c'"):
        C.corrupt(IMAGES["cifar10_c"], "contrast", 1, form="cifar10c")
    assert set(C.TABLES) == set(C.FORMS) == set(C.LABELS) and C.CHOICES == ("auto", *C.FORMS)


def test_a_grey_image_in_colour_is_corrupted_as_the_grey_one_by_the_photometric_formulas():
    """MNIST-C's brightness (gray2rgb, HSV, rgb2gray) and contrast reduce to the colour formulas on grey pixels."""
    grey = IMAGES["mnist_c"]
    for name in ("brightness", "contrast", "gaussian_blur", "defocus_blur"):
        for s in C.SEVERITIES:
            as_colour = C.corrupt(grey.expand(-1, 3, -1, -1), name, s, form="mnist_c")
            torch.testing.assert_close(as_colour, C.corrupt(grey, name, s).expand(-1, 3, -1, -1), atol=1e-6, rtol=0)


def test_each_form_caches_its_own_sets_and_v1_keeps_its_old_files(tmp_path):
    x = IMAGES["cifar10_c"][:4]
    auto = C.corrupted_sets(x, tmp_path)
    v1 = C.corrupted_sets(x, tmp_path, form="v1")
    names = sorted(p.name.rsplit("-", 1)[0] for p in tmp_path.glob("*.pt"))
    assert names == sorted([f"{n}-cifar10_c-v{C.VERSION}" for n in C.CORRUPTIONS] + [f"{n}-v1" for n in C.CORRUPTIONS])
    assert not torch.equal(auto["brightness", 3], v1["brightness", 3])
    want = (C.corrupt(x, "brightness", 3) * 255).round().to(torch.uint8)
    assert torch.equal(C.corrupted_sets(x, tmp_path)["brightness", 3], want)  # read back from the cache


def test_the_config_takes_the_forms_and_a_record_from_before_reads_as_v1():
    from mixlab.run.config import RULES, ConfigError, check_rule, fingerprint

    assert RULES["eval.corruption_form"][0] == " | ".join(C.CHOICES)
    for form in C.CHOICES:
        check_rule("eval.corruption_form", form)
    with pytest.raises(ConfigError, match=r"^eval.corruption_form='cifar10c': expected auto \| mnist_c \| cifar10_c"):
        check_rule("eval.corruption_form", "cifar10c")
    assert fingerprint({"seed": 0, "eval": {"corruptions": True}})["eval.corruption_form"] == "v1"  # made with v1
    assert fingerprint({"seed": 0, "eval": {"corruptions": True, "corruption_form": "auto"}})["eval.corruption_form"] == "auto"


def test_the_form_is_part_of_a_runs_identity_only_where_corruptions_are_evaluated():
    """A record made before the option (no key) reads as v1 where it evaluated corruptions, and matches a new
    run's config wherever corruptions are off (the form changes nothing there)."""
    from mixlab.run.config import fingerprint

    old_off, new_off = {"eval": {"corruptions": False}}, {"eval": {"corruptions": False, "corruption_form": "auto"}}
    assert fingerprint(old_off) == fingerprint(new_off)
    old_on, new_on = {"eval": {"corruptions": True}}, {"eval": {"corruptions": True, "corruption_form": "auto"}}
    assert fingerprint(old_on)["eval.corruption_form"] == "v1" != fingerprint(new_on)["eval.corruption_form"]
