"""Pairing strategies: who each sample is mixed with.

A pairing strategy is called as ``pair(x, y, features=None, generator=None)`` and returns
``partner: LongTensor[B]`` on ``x.device``, an index into the batch: sample ``i`` is mixed
with sample ``partner[i]``. It need not be a permutation (``nearest`` is not). Strategies
that look at distances use ``features`` (B, D) when given (feature space) and the flattened
inputs otherwise.

All strategies work for any batch size >= 1. With B = 1 the only possible partner is the
sample itself, so every strategy returns ``[0]`` (and mixing is then the identity).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .registry import Registry

PAIRINGS: Registry = Registry("pairing")
METRICS = ("euclidean", "sqeuclidean", "cosine")
SPACES = ("input", "feature")


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name}={value!r}: expected one of {list(allowed)}")
    return value


def _space(x: Tensor, features: Tensor | None, space: str, who: str) -> Tensor:
    """The tensor distances are measured in: the (flattened) inputs, or the features the loop supplies."""
    if space == "input":
        return x
    if features is None:
        raise ValueError(f"{who} with space='feature' needs features=(B, D) from the training loop; got None")
    return features


def pair_distance(a: Tensor, b: Tensor, metric: str = "euclidean") -> Tensor:
    """Row-wise distance d(a_i, b_i) of two (B, ...) tensors -> (B,) float32.

    ``cosine`` is 1 - cos(a_i, b_i), in [0, 2]. Computed in float32 whatever the input dtype,
    because bf16 sums of thousands of squared pixels lose most of their digits.
    """
    a, b = a.flatten(1).float(), b.flatten(1).float()
    if metric == "cosine":
        # clamp: rounding can give cos > 1, and a d of -2e-7 becomes λ > 1 (or inf after d / mean d).
        return (1.0 - torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-8)).clamp_min(0.0)
    sq = (a - b).square().sum(1)
    return sq if metric == "sqeuclidean" else sq.sqrt()


def pairwise_distance(a: Tensor, metric: str = "euclidean") -> Tensor:
    """All-pairs distance matrix (B, B) float32 of the rows of ``a`` (B, ...)."""
    a = a.flatten(1).float()
    if metric == "cosine":
        a = torch.nn.functional.normalize(a, dim=1, eps=1e-8)
        return (1.0 - a @ a.T).clamp_min(0.0)
    # The matmul form is O(B^2 D) in one GEMM; clamp because cancellation can give -1e-6.
    sq = a.square().sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (a @ a.T)).clamp_min(0.0)
    return d2 if metric == "sqeuclidean" else d2.sqrt()


def class_labels(y: Tensor) -> Tensor:
    """Class indices (B,) from class indices or soft/one-hot targets (B, C)."""
    if not y.is_floating_point() and y.dim() == 1:
        return y
    if y.is_floating_point() and y.dim() == 2:
        return y.argmax(1)
    raise ValueError(
        f"class-aware pairing needs class indices (B,) or soft targets (B, C), got {tuple(y.shape)} {y.dtype} "
        "(regression targets have no classes)"
    )


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Uniform [0, 1) numbers drawn from ``generator`` (which may live on another device)."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device, non_blocking=True)


@PAIRINGS.register("random")
class RandomPairing:
    """A uniformly random permutation (classic mixup, Zhang et al. 2018). May pair a sample with itself."""

    def __call__(self, x: Tensor, y: Tensor | None = None, *, features: Tensor | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        # argsort of uniforms is a uniform permutation, drawn from any generator without a sync.
        return _rand((x.shape[0],), generator, x.device).argsort()


@PAIRINGS.register("flip")
class FlipPairing:
    """``partner[i] = B - 1 - i``: timm's ``Mixup`` pairs a batch with its reverse (``x.flip(0)``)."""

    def __call__(self, x: Tensor, y: Tensor | None = None, *, features: Tensor | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        return torch.arange(x.shape[0] - 1, -1, -1, device=x.device)


@PAIRINGS.register("roll")
class RollPairing:
    """``partner[i] = i - 1 mod B``: torchvision's ``v2.MixUp`` pairs with ``x.roll(1, 0)``."""

    def __call__(self, x: Tensor, y: Tensor | None = None, *, features: Tensor | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        return torch.arange(x.shape[0], device=x.device).roll(1)


@PAIRINGS.register("offset")
class OffsetPairing:
    """Seed 002's pairing with its bug fixed: ``partner[i] = (i + k) mod B``, k ~ U{1, ..., B-1}.

    The seed drew ``j = i + randint(1, B-1)`` without the modulo and indexed past the end of
    the batch. With the modulo and k >= 1 no sample is ever its own partner (for B >= 2).
    """

    def __call__(self, x: Tensor, y: Tensor | None = None, *, features: Tensor | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        b = x.shape[0]
        # k = 1 + floor(u * (B - 1)) is uniform on {1..B-1}; stays on the device (no .item()).
        k = 1 + (_rand((1,), generator, x.device) * max(b - 1, 0)).long().clamp_max(max(b - 2, 0))
        return (torch.arange(b, device=x.device) + k) % b


class _DistancePairing:
    """Pick each sample's partner from the (B, B) distance matrix, never itself (B >= 2).

    ``space='input'`` measures distances between the inputs (under manifold mixup: the hidden
    state being mixed), ``space='feature'`` between the ``features`` the training loop passes.
    """

    largest = False

    def __init__(self, *, metric: str = "euclidean", space: str = "input") -> None:
        self.metric = _check_choice("metric", metric, METRICS)
        self.space = _check_choice("space", space, SPACES)

    def __call__(self, x: Tensor, y: Tensor | None = None, *, features: Tensor | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        z = _space(x, features, self.space, f"pairing {type(self).__name__}")
        d = pairwise_distance(z, self.metric)
        if d.shape[0] > 1:
            d.fill_diagonal_(-float("inf") if self.largest else float("inf"))
        return d.argmax(1) if self.largest else d.argmin(1)


@PAIRINGS.register("nearest")
class NearestPairing(_DistancePairing):
    """Each sample's nearest neighbour in the batch (by ``metric``), excluding itself."""


@PAIRINGS.register("farthest")
class FarthestPairing(_DistancePairing):
    """Each sample's farthest sample in the batch (by ``metric``)."""

    largest = True


class _ClassPairing:
    """A random partner among the allowed ones, chosen by argmax of random scores over a mask.

    Fallback (documented behaviour): a sample with no allowed partner in the batch (the only
    member of its class for ``same_class``; a batch of one class for ``cross_class``) gets a
    random partner among all *other* samples instead. O(B^2) memory, fine for B <= ~8k.
    """

    same = True
    needs_classes = True  # the training loop rejects these on regression data before training

    def __call__(self, x: Tensor, y: Tensor | None = None, *, features: Tensor | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        if y is None:
            raise ValueError(f"pairing {type(self).__name__} needs the targets y; got None")
        c = class_labels(y).to(x.device)
        b = c.shape[0]
        other = ~torch.eye(b, dtype=torch.bool, device=x.device)
        if b == 1:
            other = ~other  # the only candidate is the sample itself
        allowed = other & ((c[:, None] == c[None, :]) if self.same else (c[:, None] != c[None, :]))
        allowed = torch.where(allowed.any(1, keepdim=True), allowed, other)
        scores = _rand((b, b), generator, x.device).masked_fill_(~allowed, -1.0)
        return scores.argmax(1)


@PAIRINGS.register("same_class")
class SameClassPairing(_ClassPairing):
    """A random other sample of the same class (intra-class mixup)."""


@PAIRINGS.register("cross_class")
class CrossClassPairing(_ClassPairing):
    """A random sample of a different class."""

    same = False


@PAIRINGS.register("optimal")
class OptimalPairing(_DistancePairing):
    """A one-to-one assignment minimising the total pair distance, with no self-pairs.

    Optimal transport between the batch and itself with uniform weights, as in k-Mixup
    (Greenewald et al. 2023): solved exactly with the Hungarian algorithm
    (``scipy.optimize.linear_sum_assignment``) on the host. This copies the (B, B) cost
    matrix to the host once per batch: one device sync (``host_sync = True``).
    """

    host_sync = True

    def __call__(self, x: Tensor, y: Tensor | None = None, *, features: Tensor | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        from scipy.optimize import linear_sum_assignment

        b = x.shape[0]
        if b == 1:
            return torch.zeros(1, dtype=torch.long, device=x.device)
        z = _space(x, features, self.space, "pairing 'optimal'")
        d = pairwise_distance(z, self.metric).double()
        d.fill_diagonal_(float("inf"))  # forbid self-pairs; a derangement always exists for B >= 2
        _, cols = linear_sum_assignment(d.cpu().numpy())
        return torch.as_tensor(cols, dtype=torch.long).to(x.device)
