"""PuzzleMix (mixlab.engine.puzzle), against float64 references written from the paper's objective as mixlab states
it (transport-free, two labels; PuzzleMix's docstring):

    E(z) = − Σ_k [z_k·s_i(k) + (1 − z_k)·s_p(k)] + β/(16n)·Σ_{k~l} ([z_k ≠ z_l] + γ·φ_kl(z_k, z_l))
           − (η/n²)·Σ_k log p(z_k | λ),   p(1 | λ) = λ, p(0 | λ) = 1 − λ

* the mask is the exact minimiser: every one of the 2^9 masks of a 3×3 grid enumerated, NumPy loops over pixels
  for the saliency s (L2 norm over channels of the input gradient, block means, normalised) and for φ (the
  boundary distance between the blocks' contents), including grids that do not divide the image;
* the blend is z·x_i + (1 − z)·x_partner with z the block mask upsampled (nearest), and λ_applied its mean;
* the prior alone: the mask follows λ; λ = 1 is the identity, λ = 0 the partner;
* through ``Mix``: the targets weigh the labels by the applied λ; a tiny training run; one-line errors, PyMaxflow
  missing included (every other mixer still works).
"""
from __future__ import annotations

import itertools
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from mixlab import MIXERS, PAIRINGS, Mix
from mixlab.engine.puzzle import PuzzleMix
from mixlab.run.config import ConfigError
from mixlab.run.train import build

from .test_config import ROOT, compose_cfg
from .test_masks import distinct_images, gen
from .test_train import run

C = 5




def lumpy_grad(b: int, c: int, h: int, w: int, seed: int) -> torch.Tensor:
    """An input gradient whose size varies strongly from region to region (so the saliency has structure)."""
    g = torch.randn(b, c, h, w, generator=gen(seed), dtype=torch.float64)
    scale = torch.rand(b, 1, 3, 3, generator=gen(seed + 1), dtype=torch.float64) ** 3
    return g * torch.nn.functional.interpolate(scale, size=(h, w), mode="nearest")


# ----------------------------------------------------------------------------- the reference (NumPy, float64)


def bands(size: int, n: int) -> list[tuple[int, int]]:
    """[start, stop) of each block along an axis: pixel p belongs to block floor(p·n/size)."""
    owner = [p * n // size for p in range(size)]
    return [(owner.index(k), len(owner) - owner[::-1].index(k)) for k in range(n)]


def saliency_ref(grad: np.ndarray, n: int) -> np.ndarray:
    """(n, n): the channels' L2 norm of the gradient, averaged per block, divided by its sum."""
    norm = np.sqrt((grad ** 2).sum(0))
    rb, cb = bands(norm.shape[0], n), bands(norm.shape[1], n)
    pooled = np.array([[norm[r0:r1, c0:c1].mean() for (c0, c1) in cb] for (r0, r1) in rb])
    return pooled / pooled.sum()


def rescale(x: np.ndarray) -> np.ndarray:
    """The batch rescaled per channel to [0, 1] (B, C, H, W)."""
    lo, hi = x.min((0, 2, 3), keepdims=True), x.max((0, 2, 3), keepdims=True)
    return (x - lo) / np.where(hi > lo, hi - lo, 1.0)


def boundary_ref(first: np.ndarray, second: np.ndarray, k: tuple[int, int], vertical: bool, n: int,
                 neigh: int) -> float:
    """φ between block k (content ``first``, C×H×W) and its neighbour below (vertical) or to its right (content
    ``second``): over t-pixel windows along the shared side, the mean over channels of |mean of the t×t pixels
    just before the side − mean of the t×t pixels just after it|, averaged over the windows."""
    _, h, w = first.shape
    rb, cb = bands(h, n), bands(w, n)
    th = min(neigh, min(r1 - r0 for r0, r1 in rb))
    tw = min(neigh, min(c1 - c0 for c0, c1 in cb))
    r, c = k
    out = []
    if vertical:
        edge = rb[r][1]  # first row of the block below
        c0, c1 = cb[c]
        for s in range(c0, c1, tw):
            a = first[:, edge - th:edge, s:min(s + tw, c1)].mean((1, 2))
            b = second[:, edge:edge + th, s:min(s + tw, c1)].mean((1, 2))
            out.append(np.abs(a - b).mean())
    else:
        edge = cb[c][1]
        r0, r1 = rb[r]
        for s in range(r0, r1, th):
            a = first[:, s:min(s + th, r1), edge - tw:edge].mean((1, 2))
            b = second[:, s:min(s + th, r1), edge:edge + tw].mean((1, 2))
            out.append(np.abs(a - b).mean())
    return float(np.mean(out))


def boundary_tables(own: np.ndarray, other: np.ndarray, n: int, neigh: int) -> dict:
    """φ of every neighbour pair (r, c, vertical) for each choice of contents, [a, b] with 1 = own, 0 = other."""
    images = (other, own)
    return {(r, c, vertical): np.array([[boundary_ref(images[a], images[b], (r, c), vertical, n, neigh)
                                         for b in (0, 1)] for a in (0, 1)])
            for r in range(n) for c in range(n) for vertical in (True, False)
            if (r + 1 < n if vertical else c + 1 < n)}


def energy_ref(z: np.ndarray, phi: dict, s_own: np.ndarray, s_other: np.ndarray, lam: float, *, beta: float,
               gamma: float, eta: float) -> float:
    """E(z) of the module docstring for one blend, z (n, n) in {0, 1}; ``phi`` from ``boundary_tables``."""
    n = z.shape[0]
    e = -float((z * s_own + (1 - z) * s_other).sum())
    pair = 0.0
    for (r, c, vertical), table in phi.items():
        a, b = z[r, c], (z[r + 1, c] if vertical else z[r, c + 1])
        pair += float(a != b) + gamma * table[a, b]
    e += beta / (16 * n) * pair
    log_p = np.where(z == 1, math.log(lam), math.log(1 - lam))
    return e - eta / n ** 2 * float(log_p.sum())


def pixel_own(out: torch.Tensor, x: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool: where the blend is the own image; asserts every other pixel is the partner's, exactly."""
    own = (out == x).all(1)
    assert bool((own | (out == x[partner]).all(1)).all())
    return own


# ----------------------------------------------------------------------------- the mask is the exact minimiser


@pytest.mark.parametrize("shape,neigh", [((9, 9), 2), ((6, 6), 4), ((10, 11), 2), ((7, 8), 1)])
@pytest.mark.parametrize("beta,gamma,eta", [(1.2, 0.5, 0.2), (3.0, 1.0, 0.2), (2.0, 0.0, 1.0), (4.0, 1.0, 0.0)])
def test_the_mask_minimises_the_papers_energy_over_every_mask(shape, neigh, beta, gamma, eta):
    h, w = shape
    b, n = 6, 3
    x = torch.rand(b, 3, h, w, generator=gen(h * w), dtype=torch.float64) * 4 - 1
    grad = lumpy_grad(b, 3, h, w, seed=h + w)
    partner = torch.arange(b).roll(1)
    lam = torch.tensor([0.5, 0.2, 0.8, 0.35, 0.65, 0.05], dtype=torch.float64)
    mixer = MIXERS.build("puzzlemix", block_num=[n], beta=beta, gamma=gamma, eta=eta, neigh_size=neigh)
    mask = mixer.block_mask(x, partner, lam, grad, n).numpy().astype(int)
    masks = np.array(list(itertools.product((0, 1), repeat=n * n))).reshape(-1, n, n)
    xs, g = rescale(x.numpy()), grad.numpy()
    mixed = 0
    for i in range(b):
        j = int(partner[i])
        s_i, s_j = saliency_ref(g[i], n), saliency_ref(g[j], n)
        phi = boundary_tables(xs[i], xs[j], n, neigh)
        kw = dict(beta=beta, gamma=gamma, eta=eta)
        energies = [energy_ref(z, phi, s_i, s_j, float(lam[i]), **kw) for z in masks]
        got = energy_ref(mask[i], phi, s_i, s_j, float(lam[i]), **kw)
        assert got <= min(energies) + 1e-12, (i, got, min(energies))
        mixed += 0 < mask[i].sum() < n * n
    assert mixed >= 2  # the cases are not decided by the prior alone


def test_the_local_statistics_change_the_mask():
    # the same saliency and λ, with and without the boundary term: it moves the cut (so the test above sees it)
    h = w = 12
    b, n = 16, 4
    x = torch.rand(b, 3, h, w, generator=gen(5), dtype=torch.float64)
    grad = lumpy_grad(b, 3, h, w, seed=6)
    partner, lam = torch.arange(b).roll(3), torch.full((b,), 0.5, dtype=torch.float64)
    plain = MIXERS.build("puzzlemix", block_num=[n], beta=8.0, gamma=0.0)
    local = MIXERS.build("puzzlemix", block_num=[n], beta=8.0, gamma=1.0)
    assert not torch.equal(plain.block_mask(x, partner, lam, grad, n), local.block_mask(x, partner, lam, grad, n))


# ----------------------------------------------------------------------------- the blend and its λ


@pytest.mark.parametrize("shape", [(12, 12), (10, 13)])
def test_blend_is_the_upsampled_block_mask_and_lambda_its_pixel_mean(shape):
    h, w = shape
    b = 10
    x = distinct_images(b, h, w, seed=2)
    grad = lumpy_grad(b, 3, h, w, seed=3)
    partner = torch.arange(b).roll(2)
    lam = torch.rand(b, generator=gen(4), dtype=torch.float64)
    mixer = MIXERS.build("puzzlemix", block_num=[3, 4], beta=2.0)
    out, applied = mixer(x, partner, lam, generator=gen(9), input_grad=grad)
    n = mixer.grid(h, w, gen(9), x.device)  # the same draw
    blocks = mixer.block_mask(x, partner, lam, grad, n)
    z = np.array([[blocks[i, r * n // h, c * n // w] for c in range(w)] for i in range(b) for r in range(h)])
    z = torch.tensor(z.reshape(b, 1, h, w), dtype=torch.float64)
    assert out.dtype == x.dtype and applied.dtype == torch.float32 and applied.shape == (b,)
    torch.testing.assert_close(out, z * x + (1 - z) * x[partner], rtol=0, atol=0)
    torch.testing.assert_close(applied.double(), z.mean((1, 2, 3)), rtol=0, atol=1e-7)
    assert torch.equal(pixel_own(out, x, partner), z[:, 0] == 1)
    assert bool(((applied > 0) & (applied < 1)).any())  # some blends are really mixed


def test_the_grid_is_drawn_from_the_generator_among_the_sizes_that_fit():
    mixer = MIXERS.build("puzzlemix")  # [2, 4, 8, 16]
    seen = {mixer.grid(32, 32, gen(s), torch.device("cpu")) for s in range(60)}
    assert seen == {2, 4, 8, 16}
    assert {mixer.grid(8, 9, gen(s), torch.device("cpu")) for s in range(60)} == {2, 4, 8}  # 16 > 8 pixels
    x, grad, partner, lam = distinct_images(4, 12, 12), lumpy_grad(4, 3, 12, 12, 1), torch.arange(4).roll(1), \
        torch.full((4,), 0.4)
    a = mixer(x, partner, lam, generator=gen(1), input_grad=grad)
    torch.manual_seed(123)  # the global stream plays no part
    b = mixer(x, partner, lam, generator=gen(1), input_grad=grad)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_saliency_is_the_normalised_block_mean_of_the_gradients_channel_norm():
    h, w, n = 10, 13, 3
    x = distinct_images(3, h, w)
    grad = lumpy_grad(3, 3, h, w, seed=11) * 40.0  # the scale does not matter after the normalisation
    got = MIXERS.build("puzzlemix", block_num=[n]).terms(x, torch.arange(3), grad, n)["saliency"]
    for i in range(3):
        np.testing.assert_allclose(got[i].numpy(), saliency_ref(grad[i].numpy(), n), rtol=1e-12, atol=0)


# ----------------------------------------------------------------------------- the prior


@pytest.mark.parametrize("n", [2, 4])
def test_with_equal_saliency_and_no_smoothness_the_mask_follows_lambda(n):
    b, h = 8, 8
    x = distinct_images(b, h, h, seed=1)
    grad = torch.ones(b, 3, h, h, dtype=torch.float64)  # the same saliency everywhere, in every image
    partner = torch.arange(b).roll(1)
    mixer = MIXERS.build("puzzlemix", block_num=[n], beta=0.0)
    for lam in (0.99, 0.7, 0.51):
        assert bool(mixer(x, partner, torch.full((b,), lam), input_grad=grad)[1].eq(1).all())  # the prior's mode
    for lam in (0.01, 0.3, 0.49):
        assert bool(mixer(x, partner, torch.full((b,), lam), input_grad=grad)[1].eq(0).all())


def test_without_smoothness_each_block_weighs_saliency_against_the_prior():
    # β = 0: block k is own iff s_i(k) − s_p(k) > −(η/n²)·log(λ/(1 − λ)); so the own share grows with λ
    b, h, n, eta = 6, 12, 4, 0.5
    x = distinct_images(b, h, h, seed=2)
    grad = lumpy_grad(b, 3, h, h, seed=5)
    partner = torch.arange(b).roll(1)
    mixer = MIXERS.build("puzzlemix", block_num=[n], beta=0.0, eta=eta)
    s = np.stack([saliency_ref(g, n) for g in grad.numpy()])
    shares = []
    for lam in (0.02, 0.2, 0.5, 0.8, 0.98):
        got = mixer.block_mask(x, partner, torch.full((b,), lam, dtype=torch.float64), grad, n).numpy()
        expected = s - s[partner.numpy()] > -eta / n ** 2 * math.log(lam / (1 - lam))
        np.testing.assert_array_equal(got, expected)
        shares.append(got.mean())
    assert shares == sorted(shares) and shares[0] < 0.5 < shares[-1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_lambda_one_returns_x_unchanged_and_zero_the_partner(dtype):
    x = (torch.randn(6, 3, 10, 9, generator=gen(3)) * 4).to(dtype)
    grad = torch.randn(6, 3, 10, 9, generator=gen(4)).to(dtype)
    partner = torch.arange(6).roll(1)
    mixer = MIXERS.build("puzzlemix", eta=0.0)  # not even the prior pulls towards λ: λ = 1 still keeps all
    out, applied = mixer(x, partner, torch.ones(6), generator=gen(), input_grad=grad)
    assert torch.equal(out, x) and torch.equal(applied, torch.ones(6))
    out, applied = mixer(x, partner, torch.zeros(6), generator=gen(), input_grad=grad)
    assert torch.equal(out, x[partner]) and torch.equal(applied, torch.zeros(6))
    out, _ = mixer(x, partner, torch.rand(6, generator=gen()), generator=gen(), input_grad=grad)
    assert out.dtype == dtype and out.shape == x.shape


# ----------------------------------------------------------------------------- through Mix


def onehot(y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(y, C).double()


@pytest.mark.parametrize("pairing", [p for p in PAIRINGS.names()])
@pytest.mark.parametrize("lam", ["beta", "distance", "schedule"])
def test_mix_targets_weigh_the_labels_by_the_applied_lambda(lam, pairing):
    b, h = 10, 8
    x = distinct_images(b, h, h, seed=10)
    y = torch.arange(b) % C
    grad = lumpy_grad(b, 3, h, h, seed=12)
    kw = dict(lam=lam, pairing=pairing, mixer="puzzlemix", num_classes=C, mixer_kwargs={"block_num": [4]})
    call = dict(features=torch.randn(b, 6, generator=gen(4)), index=torch.arange(b), progress=0.3)
    mix = Mix(**kw, generator=gen(1))
    assert mix.needs == ("input_grad",)
    x_mix, y_mix = mix(x, y, **call, input_grad=grad)
    partner, applied = mix.last.partner, mix.last.lam
    same_partner, requested = Mix(**kw, generator=gen(1)).sample(x, y, **call)  # the same draws, unmixed
    assert torch.equal(same_partner, partner)
    ref = applied.double()[:, None] * onehot(y) + (1 - applied.double())[:, None] * onehot(y[partner])
    torch.testing.assert_close(y_mix.double(), ref, rtol=0, atol=1e-7)
    blocks = mix.mixer.block_mask(x, partner, requested, grad, 4)  # the mask from the policy's λ
    own = blocks.repeat_interleave(2, 1).repeat_interleave(2, 2)
    mixed = partner != torch.arange(b)  # a self-pair's blend is its own image whatever the mask
    assert torch.equal(pixel_own(x_mix, x, partner)[mixed], own[mixed])
    torch.testing.assert_close(applied.double(), own.double().mean((1, 2)), rtol=0, atol=1e-7)


def test_mix_refuses_a_call_without_the_input_gradient():
    mix = Mix(lam="beta", num_classes=C, mixer="puzzlemix")
    with pytest.raises(ValueError, match=r"needs \['input_grad'\]"):
        mix(distinct_images(4, 8, 8), torch.arange(4))


# ----------------------------------------------------------------------------- training, refusals, errors


def test_a_tiny_fashion_mnist_run(tmp_path):
    acc, rows, summary = run(tmp_path, "data=fashion_mnist", "model=cnn", "model.width=8", "mixer=puzzlemix",
                             "data.val_size=256", "data.batch_size=64", "trainer.epochs=1", "eval.test=false")
    (row,) = rows
    assert summary["status"] == "completed" and summary["config"]["mixer"]["name"] == "puzzlemix"
    assert math.isfinite(row["train_loss"]) and 0 <= acc <= 1
    assert 0 < row["lam_mean"] < 1 and 0 <= row["lam_min"] < row["lam_max"] <= 1  # mixed, with λ as applied


def test_puzzlemix_declares_what_it_reads():
    assert PuzzleMix.needs == ("input_grad",) and PuzzleMix.needs_images is True


@pytest.mark.parametrize("options,message", [
    ({"block_num": [0, 4]}, "block_num=[0, 4]: expected a non-empty list of integers in 1..64"),
    ({"block_num": []}, "block_num=[]: expected a non-empty list"),
    ({"block_num": 4}, "block_num=4: expected a list of integers"),
    ({"beta": -1}, "beta=-1: expected a number >= 0"),
    ({"gamma": 1.5}, "gamma=1.5: expected a number in [0, 1]"),
    ({"eta": math.nan}, "eta=nan: expected a number"),
    ({"eta": -0.1}, "eta=-0.1: expected a number >= 0"),
    ({"neigh_size": 0}, "neigh_size=0: expected an integer >= 1"),
    ({"transport": True}, "transport=True: the optimal-transport step is not implemented"),
])
def test_bad_options_are_one_line_naming_the_key(options, message):
    with pytest.raises(ValueError) as e:
        MIXERS.build("puzzlemix", **options)
    assert str(e.value).startswith(message) and "expected" in str(e.value) and "\n" not in str(e.value)


def test_bad_calls_are_one_line():
    mixer = MIXERS.build("puzzlemix")
    x = distinct_images(4, 8, 8)
    with pytest.raises(ValueError, match=r"^mixer 'puzzlemix' needs images \(B, C, H, W\), but got shape \(4, 5\)$"):
        mixer(torch.randn(4, 5), torch.arange(4), torch.ones(4), input_grad=torch.randn(4, 5))
    with pytest.raises(ValueError, match=r"^input_grad=None: .* expected a tensor of the images' shape \(4, 3, 8, 8\)"):
        mixer(x, torch.arange(4), torch.ones(4))
    with pytest.raises(ValueError, match=r"^block_num=\[16\]: every grid is finer than the 8x8 images' pixels"):
        MIXERS.build("puzzlemix", block_num=[16])(x, torch.arange(4), torch.ones(4), input_grad=x)


def test_a_config_without_pymaxflow_stops_before_training_in_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "maxflow", None)  # `import maxflow` now raises ImportError
    with pytest.raises(ImportError) as e:
        MIXERS.build("puzzlemix")
    assert "pip install mixlab[puzzle]" in str(e.value)
    with pytest.raises(ConfigError) as e:
        build(compose_cfg("data=digits", "data.train_subset=64", "model=cnn", "device=cpu", "mixer=puzzlemix"))
    assert str(e.value) == ("mixer=puzzlemix: needs PyMaxflow (its graph cut), which is not installed; expected it "
                            "installed: pip install mixlab[puzzle]")
    MIXERS.build("cutmix")(distinct_images(4, 8, 8), torch.arange(4).roll(1), torch.full((4,), 0.5), generator=gen())


def test_mixlab_imports_and_other_mixers_run_without_pymaxflow(tmp_path):
    # a fresh interpreter where PyMaxflow cannot be imported: mixlab imports, cutmix mixes, and the command line
    # refuses mixer=puzzlemix before training with its one line (exit status 2)
    code = ("import runpy, sys, torch; sys.modules['maxflow'] = None; import mixlab; "
            "from mixlab import MIXERS; "
            "out, lam = MIXERS.build('cutmix')(torch.rand(2, 1, 4, 4), torch.tensor([1, 0]), torch.full((2,), 0.5)); "
            "print('cutmix', tuple(out.shape)); "
            "sys.argv = ['mixlab', 'data=digits', 'model=cnn', 'device=cpu', 'mixer=puzzlemix', "
            f"'hydra.run.dir={tmp_path / 'run'}']; runpy.run_module('mixlab', run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert r.stdout.strip() == "cutmix (2, 1, 4, 4)", r.stdout + r.stderr
    assert r.returncode == 2 and r.stderr == ("mixlab: error: mixer=puzzlemix: needs PyMaxflow (its graph cut), which "
                                              "is not installed; expected it installed: pip install mixlab[puzzle]\n")
    assert not (tmp_path / "run" / "summary.json").exists()
