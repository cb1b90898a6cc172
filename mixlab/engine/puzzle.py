"""PuzzleMix (Kim, Choo & Song, ICML 2020, "Puzzle Mix: Exploiting Saliency and Local Statistics for Optimal
Mixup"), its transport-free variant with two labels: an exact graph cut (PyMaxflow, ``pip install mixlab[puzzle]``)
chooses which of an n×n grid of blocks each blend takes from sample i itself and which from its partner.

PyMaxflow is imported when a ``PuzzleMix`` is built, never with mixlab: every other mixer works without it.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .masks import _check_images, _keep_own, _work_dtype
from .mixing import MIXERS, Mixer
from .pairing import _rand
from .registry import is_number

PAPER_BLOCKS = (2, 4, 8, 16)  # the official code's per-batch draw for CIFAR: block_num = 2**randint(1, 5)


class MissingPackage(ImportError, ValueError):
    """An optional package a component needs is not installed. Also a ``ValueError``, so the configuration
    check (which turns a component's ``ValueError`` into its one-line ``ConfigError``) stops the run before
    training with this message."""


def _maxflow():
    try:
        import maxflow
    except ImportError:
        raise MissingPackage("mixer=puzzlemix: needs PyMaxflow (its graph cut), which is not installed; "
                             "expected it installed: pip install mixlab[puzzle]") from None
    return maxflow


def _band_edges(size: int, n: int) -> list[int]:
    """Start of each of the n bands of ``size`` pixels, and ``size``: pixel p lies in band ⌊p·n/size⌋ (torch's
    nearest-neighbour upsampling of n blocks to ``size`` pixels), so band b starts at ⌈b·size/n⌉."""
    return [-(-b * size // n) for b in range(n)] + [size]


def _averaging(rows: list[tuple[int, int]], size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(len(rows), size): row r averages the pixels [start, stop) of ``rows[r]``."""
    m = torch.zeros(len(rows), size, dtype=dtype)
    for r, (start, stop) in enumerate(rows):
        m[r, start:stop] = 1.0 / (stop - start)
    return m.to(device)


class _Axis:
    """One image axis cut into n bands: the matrices that average a band, the t pixels on either side of each
    boundary between bands, and the t-pixel windows along a band (t = ``depth``)."""

    def __init__(self, size: int, n: int, depth: int, dtype: torch.dtype, device: torch.device) -> None:
        e = _band_edges(size, n)
        self.mean = _averaging([(e[b], e[b + 1]) for b in range(n)], size, dtype, device)  # (n, size)
        t = min(depth, *(e[b + 1] - e[b] for b in range(n)))
        self.before = _averaging([(e[b + 1] - t, e[b + 1]) for b in range(n - 1)], size, dtype, device)  # (n-1, size)
        self.after = _averaging([(e[b + 1], e[b + 1] + t) for b in range(n - 1)], size, dtype, device)  # (n-1, size)
        windows = [(s, min(s + t, e[b + 1]), b) for b in range(n) for s in range(e[b], e[b + 1], t)]
        self.window = _averaging([(s, stop) for s, stop, _ in windows], size, dtype, device)  # (K, size)
        owner = torch.zeros(n, len(windows), dtype=dtype)
        for k, (_, _, b) in enumerate(windows):
            owner[b, k] = 1.0
        self.per_band = (owner / owner.sum(1, keepdim=True)).to(device)  # (n, K): the mean over a band's windows


@MIXERS.register("puzzlemix")
class PuzzleMix(Mixer):
    """PuzzleMix (Kim, Choo & Song 2020), transport-free, two labels: blend i takes each block of an n×n grid
    either from its own image (z_k = 1) or from its partner's (z_k = 0), the mask z that minimises

        E(z) = − Σ_k [z_k·s_i(k) + (1 − z_k)·s_p(k)]                                   (saliency kept)
               + β_n · Σ_{k~l} ([z_k ≠ z_l] + γ·φ_kl(z_k, z_l))                         (smoothness)
               + (η / n²) · Σ_k −log p(z_k | λ_i),   p(1 | λ) = λ,  p(0 | λ) = 1 − λ     (prior)

    exactly: an s-t minimum cut (PyMaxflow, double precision) over the grid, one graph for the whole batch (its
    samples disconnected). ``k~l``: blocks sharing a side. Then ``x̃_i = z·x_i + (1 − z)·x_partner`` with z
    upsampled to pixels (nearest: pixel row r lies in block row ⌊r·n/H⌋, columns likewise), and
    ``λ_applied`` = the pixel mask's mean, the own image's exact share.

    * Saliency s(k): the L2 norm over channels of ``input_grad`` (the clean loss's input gradient), averaged
      over block k's pixels, divided by its sum over the image's blocks (the official code takes the RMS over
      channels, the same after this normalisation); an image whose gradient is zero gets 1/n² everywhere.
    * φ_kl(a, b), the paper's data local statistics: the distance across the boundary between block k taken
      from image a and block l taken from image b (a, b ∈ {own, partner}): the mean over channels, and over the
      t-pixel windows along the boundary, of the absolute difference between the t×t means on either side of
      it (t = min(``neigh_size``, the thinnest band along that axis)); with n dividing the side and t dividing
      the band, the official code's neighbour penalty. The images are first rescaled per channel to [0, 1] by
      the batch's range (the official code un-normalises to pixel values in [0, 1]), so φ ∈ [0, 1], and with
      γ ≤ 1 every pair's term is submodular (φ₀₁ + φ₁₀ − φ₀₀ − φ₁₁ ≥ −2 ≥ −2/γ): one min cut is the exact
      minimiser.
    * β_n = β / (16·n), the official code's normalisation of β by the grid; its data term is β_n·γ·φ, as here.
    * λ_i = 1 keeps every block own and λ_i = 0 none (−log 0 = ∞; the official code adds 1e-8 inside the log),
      so λ = 1 returns x unchanged, bit for bit.

    ``block_num``: the grid sizes n, one drawn per batch (uniformly, from ``generator``) among those not
    larger than the image's shorter side; the default [2, 4, 8, 16] is the official code's draw for CIFAR.

    Departures from the paper: no optimal-transport step (the paper then moves salient blocks within each image;
    ``transport`` must be false); two labels, z ∈ {0, 1} (the official default is three, z ∈ {0, ½, 1}, solved
    approximately by α-β swap); the official code's adversarial-noise and clean-loss options are not part of
    a mixer. λ comes from the λ policy (the paper's is ``lambda=beta`` with α = 1).
    """

    needs = ("input_grad",)
    needs_images = True
    host_sync = True  # the graph cut runs on the host (PyMaxflow): the block energies go there and back

    def __init__(self, *, block_num: list[int] = PAPER_BLOCKS, beta: float = 1.2, gamma: float = 0.5,
                 eta: float = 0.2, neigh_size: int = 4, transport: bool = False) -> None:
        if not (isinstance(block_num, (list, tuple)) and block_num
                and all(isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= 64 for k in block_num)):
            raise ValueError(f"block_num={block_num!r}: expected a non-empty list of integers in 1..64 (the grid is "
                             "n x n, n drawn per batch among them; [4]: always 4; the paper's is [2, 4, 8, 16])")
        for key, value, hi in (("beta", beta, None), ("gamma", gamma, 1.0), ("eta", eta, None)):
            if not (is_number(value) and value >= 0 and (hi is None or value <= hi)):
                allowed = "a number in [0, 1] (above 1 the smoothness term may not be submodular)" if hi else \
                    "a number >= 0"
                raise ValueError(f"{key}={value!r}: expected {allowed}")
        if not (isinstance(neigh_size, int) and not isinstance(neigh_size, bool) and neigh_size >= 1):
            raise ValueError(f"neigh_size={neigh_size!r}: expected an integer >= 1 (pixels compared on either side "
                             "of a block boundary; the official default is 4)")
        if transport is not False:
            raise ValueError(f"transport={transport!r}: the optimal-transport step is not implemented (this is the "
                             "transport-free variant); expected false")
        self.block_num = [int(k) for k in block_num]
        self.beta, self.gamma, self.eta, self.neigh_size = float(beta), float(gamma), float(eta), neigh_size
        self._maxflow = _maxflow()

    # ------------------------------------------------------------------ the energy
    def terms(self, x: Tensor, partner: Tensor, input_grad: Tensor, n: int) -> dict[str, Tensor]:
        """The energy's pieces on an n×n grid, float64 on the CPU: ``saliency`` (B, n, n) normalised; and
        ``down`` (B, 2, 2, n−1, n) / ``right`` (B, 2, 2, n, n−1) the local statistics φ between block (r, c)
        and the block below / to its right, indexed [a, b] with a the upper/left block's image and b the
        other's (1: own, 0: partner), before any weight."""
        b, _, h, w = x.shape
        dtype = _work_dtype(x)
        rows = _Axis(h, n, self.neigh_size, dtype, x.device)
        cols = _Axis(w, n, self.neigh_size, dtype, x.device)
        g = input_grad.detach().to(dtype).square().sum(1).sqrt()  # (B, H, W)
        pooled = rows.mean @ g @ cols.mean.T  # (B, n, n)
        total = pooled.sum((1, 2), keepdim=True)
        saliency = torch.where(total > 0, pooled / total.where(total > 0, torch.ones_like(total)),
                               torch.full_like(pooled, 1.0 / (n * n)))
        xs = x.detach().to(dtype)
        lo, hi = xs.amin((0, 2, 3), keepdim=True), xs.amax((0, 2, 3), keepdim=True)
        xs = (xs - lo) / torch.where(hi > lo, hi - lo, torch.ones_like(hi))

        def across(first: Tensor, second: Tensor) -> Tensor:  # (B, C, m, K) each side -> (B, 2, 2, m, K)
            sides = [(first[partner], first), (second[partner], second)]
            return torch.stack([torch.stack([(sides[0][a] - sides[1][bb]).abs().mean(1) for bb in (0, 1)], 1)
                                for a in (0, 1)], 1)

        down = across(rows.before @ xs @ cols.window.T, rows.after @ xs @ cols.window.T) @ cols.per_band.T
        right = rows.per_band @ across(rows.window @ xs @ cols.before.T, rows.window @ xs @ cols.after.T)
        return {"saliency": saliency.cpu().double(), "down": down.cpu().double(), "right": right.cpu().double()}

    def block_mask(self, x: Tensor, partner: Tensor, lam: Tensor, input_grad: Tensor, n: int) -> Tensor:
        """(B, n, n) bool on the CPU: the minimiser of the energy (class docstring), True where a block is own."""
        t = self.terms(x, partner, input_grad, n)
        s = t["saliency"]
        lam = lam.detach().cpu().double().clamp(0.0, 1.0)
        bn = self.beta / (16.0 * n)
        # the cost of own minus the cost of partner at each block: saliency, then the prior
        delta = s[partner.cpu()] - s
        inner = (lam > 0) & (lam < 1)
        safe = torch.where(inner, lam, torch.full_like(lam, 0.5))
        delta = delta - (self.eta / (n * n)) * (safe.log() - (-safe).log1p())[:, None, None]
        # each neighbour pair's table E(a, b) = β_n·γ·φ(a, b), written as unaries plus a Potts weight on a ≠ b
        weights = {}
        for key, first, second in (("down", (slice(None), slice(0, n - 1)), (slice(None), slice(1, n))),
                                   ("right", (slice(None), slice(None), slice(0, n - 1)),
                                    (slice(None), slice(None), slice(1, n)))):
            e = bn * self.gamma * t[key]
            e00, e01, e10, e11 = e[:, 0, 0], e[:, 0, 1], e[:, 1, 0], e[:, 1, 1]
            delta[first] += (e11 + e10 - e01 - e00) / 2
            delta[second] += (e11 + e01 - e10 - e00) / 2
            weights[key] = bn + (e10 + e01 - e00 - e11) / 2  # >= 0: γ <= 1 and φ in [0, 1]
        own = (lam >= 1)[:, None, None].expand(-1, n, n).clone()
        if bool(inner.any()):
            own[inner] = self._cut(delta[inner], weights["down"][inner], weights["right"][inner])
        return own

    def _cut(self, delta: Tensor, down: Tensor, right: Tensor) -> Tensor:
        """Exact minimiser of Σ_k delta_k·z_k + Σ_{k~l} w_kl·[z_k ≠ z_l] (w >= 0), per sample, by one min cut."""
        m, n, _ = delta.shape
        d = delta.numpy()
        graph = self._maxflow.Graph[float]()
        nodes = graph.add_grid_nodes((m, n, n))
        # a node in the sink segment (own) pays its source capacity, one in the source segment its sink capacity
        graph.add_grid_tedges(nodes, np.maximum(d, 0.0), np.maximum(-d, 0.0))
        for w, axis in ((down, 1), (right, 2)):
            if n > 1:
                pad = np.zeros((m, n, n))
                pad[:, : n - 1 if axis == 1 else n, : n - 1 if axis == 2 else n] = w.clamp_min(0.0).numpy()
                structure = np.zeros((3, 3, 3))
                structure[(1, 2, 1) if axis == 1 else (1, 1, 2)] = 1.0
                graph.add_grid_edges(nodes, weights=pad, structure=structure, symmetric=True)
        graph.maxflow()
        return torch.from_numpy(graph.get_grid_segments(nodes).copy())

    # ------------------------------------------------------------------ the mixer
    def grid(self, h: int, w: int, generator: torch.Generator | None, device: torch.device) -> int:
        """This batch's n: one of ``block_num`` not above min(H, W), drawn uniformly when there are several."""
        choices = [k for k in self.block_num if k <= min(h, w)]
        if not choices:
            raise ValueError(f"block_num={self.block_num!r}: every grid is finer than the {h}x{w} images' "
                             f"pixels; expected a size <= {min(h, w)}")
        if len(self.block_num) == 1:
            return choices[0]
        u = float(_rand((1,), generator, device)[0])
        return choices[min(int(u * len(choices)), len(choices) - 1)]

    def __call__(self, x: Tensor, partner: Tensor, lam: Tensor, *, generator: torch.Generator | None = None,
                 input_grad: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_images("puzzlemix", x, partner, lam)
        if input_grad is None or input_grad.shape != x.shape:
            got = None if input_grad is None else tuple(input_grad.shape)
            raise ValueError(f"input_grad={got}: mixer 'puzzlemix' needs the clean loss's input gradient; "
                             f"expected a tensor of the images' shape {tuple(x.shape)}")
        b, _, h, w = x.shape
        n = self.grid(h, w, generator, x.device)
        blocks = self.block_mask(x, partner, lam, input_grad, n).to(x.device)  # (B, n, n)
        rows, cols = (torch.arange(s, device=x.device) * n // s for s in (h, w))
        own = blocks[:, rows][:, :, cols][:, None]  # (B, 1, H, W), nearest
        return _keep_own(x, partner, own)

