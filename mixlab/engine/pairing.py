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

import contextlib
from typing import Iterator

import torch
from torch import Tensor

from .registry import Registry, is_number

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


@contextlib.contextmanager
def float32_region(device: torch.device) -> Iterator[None]:
    """Switch autocast off for ``device``: pairing and λ are computed in float32 whatever the caller's
    autocast state. Under bf16 autocast ``a @ a.T`` runs in bf16, which picks the wrong nearest
    neighbour for most rows of non-negative, embedding-like features (tests/test_pairing.py)."""
    try:
        region = torch.autocast(torch.device(device).type, enabled=False)
    except RuntimeError:  # a device type autocast does not know: nothing to switch off
        region = contextlib.nullcontext()
    with region:
        yield


def pair_distance(a: Tensor, b: Tensor, metric: str = "euclidean") -> Tensor:
    """Row-wise distance d(a_i, b_i) of two (B, ...) tensors -> (B,) float32.

    ``cosine`` is 1 - cos(a_i, b_i), in [0, 2]. Computed in float32 whatever the input dtype and
    autocast state, because bf16 sums of thousands of squared pixels lose most of their digits.
    """
    with float32_region(a.device):
        return _pair_distance(a.flatten(1).float(), b.flatten(1).float(), metric)


def _pair_distance(a: Tensor, b: Tensor, metric: str) -> Tensor:
    if metric == "cosine":
        # clamp: rounding can give cos > 1, and a d of -2e-7 becomes λ > 1 (or inf after d / mean d).
        return (1.0 - torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-8)).clamp_min(0.0)
    sq = (a - b).square().sum(1)
    return sq if metric == "sqeuclidean" else sq.sqrt()


def pairwise_distance(a: Tensor, metric: str = "euclidean") -> Tensor:
    """All-pairs distance matrix (B, B) float32 of the rows of ``a`` (B, ...), autocast or not."""
    with float32_region(a.device):
        return _pairwise_distance(a.flatten(1).float(), metric)


def _pairwise_distance(a: Tensor, metric: str) -> Tensor:
    if metric == "cosine":
        a = torch.nn.functional.normalize(a, dim=1, eps=1e-8)
        return (1.0 - a @ a.T).clamp_min(0.0)
    # The matmul form is O(B^2 D) in one GEMM; clamp because cancellation can give -1e-6.
    sq = a.square().sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (a @ a.T)).clamp_min(0.0)
    return d2 if metric == "sqeuclidean" else d2.sqrt()


def batch_distance_scale(a: Tensor, metric: str = "euclidean", how: str = "mean") -> Tensor:
    """A typical distance between two samples of the batch ``a`` (B, ...): the ``mean`` or the
    ``median`` of d(a_i, a_j) over all B(B-1)/2 pairs i < j, a float32 scalar.

    It is a property of the batch, not of the pairs a pairing chose, so that d / scale keeps what
    the pairing did: under ``nearest`` the chosen distances come out below 1, under ``farthest``
    above. The mean has O(B·D) closed forms for ``sqeuclidean`` (2/(B−1)·Σ‖a_i − ā‖²) and
    ``cosine`` (1 − (‖Σu_i‖² − Σ‖u_i‖²)/(B(B−1)) with u_i = a_i/‖a_i‖); ``euclidean`` and the
    median read the (B, B) matrix (one GEMM). The median is the true one: the mean of the two
    middle values for an even count. With B = 1 there is no pair and the scale is 1.
    """
    b = a.shape[0]
    if b < 2:
        return torch.ones((), device=a.device)
    with float32_region(a.device):
        z = a.flatten(1).float()
        if how == "mean" and metric == "sqeuclidean":
            return 2.0 * (z - z.mean(0)).square().sum() / (b - 1)
        if how == "mean" and metric == "cosine":
            u = torch.nn.functional.normalize(z, dim=1, eps=1e-8)
            return (1.0 - (u.sum(0).square().sum() - u.square().sum()) / (b * (b - 1))).clamp_min(0.0)
        i, j = torch.triu_indices(b, b, 1, device=a.device)
        d = _pairwise_distance(z, metric)[i, j]
        if how == "mean":
            return d.mean()
        s, n = d.sort().values, d.numel()
        return 0.5 * (s[(n - 1) // 2] + s[n // 2])


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


class Pairing:
    """Base class of pairing strategies (subclassing it is optional: any callable of this shape works).

    ``pair(x, y=None, *, features=None, generator=None) -> partner: LongTensor[B]`` on ``x.device``:
    sample ``i`` is mixed with ``partner[i]``. Draw randomness only from ``generator`` (and without
    a host sync, so a GPU never waits); options are keyword-only constructor arguments, so that
    ``PAIRINGS.build`` rejects a misspelled one. Register with ``@PAIRINGS.register("name")``.

    ``needs_train_set``: the pairing draws partners from the whole training set, not the batch, through
    ``draw_from_set(y, train_targets, *, generator) -> (B,) dataset indices``; ``Mix`` then needs
    ``setup(train_set=(x_train, y_train))`` and fetches the partners' rows by index.
    """

    needs_train_set = False

    def __call__(self, x: Tensor, y: Tensor | None = None, *, features: Tensor | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError


@PAIRINGS.register("random")
class RandomPairing(Pairing):
    """A uniformly random permutation (classic mixup, Zhang et al. 2018). May pair a sample with itself."""

    def __call__(self, x: Tensor, y: Tensor | None = None, *, features: Tensor | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        # argsort of uniforms is a uniform permutation, drawn from any generator without a sync.
        return _rand((x.shape[0],), generator, x.device).argsort()


@PAIRINGS.register("flip")
class FlipPairing(Pairing):
    """``partner[i] = B - 1 - i``: timm's ``Mixup`` pairs a batch with its reverse (``x.flip(0)``)."""

    def __call__(self, x: Tensor, y: Tensor | None = None, *, features: Tensor | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        return torch.arange(x.shape[0] - 1, -1, -1, device=x.device)


@PAIRINGS.register("roll")
class RollPairing(Pairing):
    """``partner[i] = i - 1 mod B``: torchvision's ``v2.MixUp`` pairs with ``x.roll(1, 0)``."""

    def __call__(self, x: Tensor, y: Tensor | None = None, *, features: Tensor | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        return torch.arange(x.shape[0], device=x.device).roll(1)


@PAIRINGS.register("offset")
class OffsetPairing(Pairing):
    """Seed 002's pairing with its bug fixed: ``partner[i] = (i + k_i) mod B``, k_i ~ U{1, ..., B-1}.

    As in the seed's loop, every sample draws its own offset k_i (so this is not a permutation:
    a sample can be the partner of several others, or of none). The seed drew
    ``j = i + randint(1, B-1)`` without the modulo and indexed past the end of the batch. With
    the modulo and k_i >= 1 no sample is ever its own partner (for B >= 2).
    ``per_sample=False`` draws one k for the whole batch: a random cyclic shift, a permutation.
    """

    def __init__(self, *, per_sample: bool = True) -> None:
        self.per_sample = bool(per_sample)

    def __call__(self, x: Tensor, y: Tensor | None = None, *, features: Tensor | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        b = x.shape[0]
        # k = 1 + floor(u * (B - 1)) is uniform on {1..B-1}; stays on the device (no .item()).
        u = _rand((b if self.per_sample else 1,), generator, x.device)
        k = 1 + (u * max(b - 1, 0)).long().clamp_max(max(b - 2, 0))
        return (torch.arange(b, device=x.device) + k) % b


class _DistancePairing(Pairing):
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


class _ClassPairing(Pairing):
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


# --------------------------------------------------------------------------- optimal (one-to-one) pairing

OPTIMAL_SOLVERS = ("auto", "exact", "sinkhorn")
# solver='auto' on an accelerator: exact up to this batch size, sinkhorn above. From
# docs/bench_optimal.json (scripts/bench_optimal.py, host: 2 EPYC cores, 1 thread): the Hungarian
# takes ~0.5 ms at B = 128 and ~2 ms at 256, less than the sinkhorn solver's fixed cost (its ~1.6k
# small ops take ~7 ms to dispatch there even at B = 8; on a GPU they are launches that do not
# stall it), so up to 256 the exact optimum costs no more. Past that the Hungarian grows ~5x
# per doubling (10 ms at 512, ~0.3 s at 2048) and the GPU idles through all of it.
AUTO_EXACT_MAX_BATCH = 256
_NEG = -float("inf")


def exact_assignment(cost: Tensor) -> Tensor:
    """The optimal derangement of the (B, B) ``cost`` (diagonal forbidden), by the Hungarian
    algorithm on the host (``scipy.optimize.linear_sum_assignment``, float64). Copies the
    matrix to the host: one device sync; ``cost`` itself is left as it was. B >= 2."""
    from scipy.optimize import linear_sum_assignment

    d = cost.detach().to(dtype=torch.float64, copy=True)  # never write into the caller's matrix
    d.fill_diagonal_(float("inf"))  # a derangement always exists for B >= 2
    _, cols = linear_sum_assignment(d.cpu().numpy())
    return torch.as_tensor(cols, dtype=torch.long).to(cost.device)


def _put(t: Tensor, index: Tensor, value: Tensor, where: Tensor) -> Tensor:
    """``t[index[k]] = value[k]`` for the k where ``where[k]``, without a sync: the other k
    write to a scratch slot past the end. Assumes no two selected k share an index."""
    n = t.shape[0]
    padded = torch.cat([t, t.new_zeros(1)])
    return padded.scatter(0, torch.where(where, index, n), value.to(t.dtype))[:n]


def _lowest_top_bidder(col: Tensor, bid: Tensor, bidding: Tensor) -> tuple[Tensor, Tensor]:
    """Row ``i`` (where ``bidding[i]``) bids ``bid[i]`` for column ``col[i]``. For each column:
    the lowest-index row among its highest bidders (B if no bid), and the highest bid."""
    b = col.shape[0]
    rows = torch.arange(b, device=col.device)
    bid = torch.where(bidding, bid, _NEG)
    best = torch.full((b,), _NEG, device=col.device).scatter_reduce(0, col, bid, "amax")
    top = bidding & (bid == best[col])
    return torch.full((b,), b, dtype=torch.long, device=col.device).scatter_reduce(
        0, col, torch.where(top, rows, b), "amin"), best


def sinkhorn_assignment(cost: Tensor, *, iters: int = 20, tau_end: float = 1e-2, auction_rounds: int = 24,
                        greedy_rounds: int = 8, polish_rounds: int = 4) -> Tensor:
    """An approximately optimal derangement of the (B, B) ``cost`` (its diagonal is ignored),
    computed entirely on ``cost.device`` with a fixed sequence of kernels: no host-device sync.

    Always a permutation with no fixed point for B >= 2 (``[0]`` for B = 1), deterministic for a
    given input. Every step is a fixed number of O(B^2) passes:

    1. normalise: subtract row then column minima (the assignment is unchanged) and divide by
       the mean off-diagonal entry, so the temperatures below are relative to the cost's scale;
    2. ``iters`` log-domain Sinkhorn iterations (uniform marginals) with the temperature annealed
       geometrically from 1 to ``tau_end``: its column potential is a near-optimal dual;
    3. ``auction_rounds`` of a parallel (Jacobi) auction (Bertsekas) started from those prices:
       every unassigned row bids for its best column, raising its price by (best - second best
       + a step growing from 1e-3 to 1 over the rounds); the highest bid wins a column and
       displaces its owner; ties go to the lowest row index;
    4. ``greedy_rounds`` in which the rows still unassigned take free columns, cheapest first,
       without displacing anyone; whatever is left is matched in index order (sort-based);
    5. self-pairs that fill made are removed: two or more are rotated among themselves, a lone
       one swaps partners with the next row (both stay one-to-one and self-free);
    6. ``polish_rounds`` of parallel 2-opt: rows i, j that are each other's best swap (positive
       gain, no self-pair created) exchange partners.
    """
    b = cost.shape[0]
    dev = cost.device
    if b == 1:
        return torch.zeros(1, dtype=torch.long, device=dev)
    if b == 2:
        return torch.arange(1, -1, -1, device=dev)  # not torch.tensor(..., device): a host->device copy waits
    rows = torch.arange(b, device=dev)
    eye = torch.eye(b, dtype=torch.bool, device=dev)

    # 1. normalised cost, +inf on the diagonal; off-diagonal mean 1 (0 if all equal), entries in [0, B^2].
    c = cost.detach().float().masked_fill(eye, float("inf"))
    c = c - c.amin(1, keepdim=True)
    c = c - c.amin(0, keepdim=True)
    c = c / (c.masked_fill(eye, 0.0).sum() / (b * (b - 1))).clamp_min(1e-30)

    # 2. annealed log-domain Sinkhorn -> column potential g (a price vector, -g).
    f = torch.zeros(b, device=dev)
    g = torch.zeros(b, device=dev)
    for t in range(iters):
        eps = tau_end ** (t / max(iters - 1, 1))
        f = -eps * torch.logsumexp((g[None, :] - c) / eps, dim=1)
        g = -eps * torch.logsumexp((f[:, None] - c) / eps, dim=0)

    # 3. Jacobi auction from prices -g. partner: row -> column, owner: column -> row (-1: none).
    price = -g
    partner = torch.full((b,), -1, dtype=torch.long, device=dev)
    owner = torch.full((b,), -1, dtype=torch.long, device=dev)
    for r in range(auction_rounds):
        value = -c - price[None, :]
        w1, j = value.max(1)  # first maximum on ties: deterministic
        w2 = value.scatter(1, j[:, None], _NEG).amax(1)
        step = 1e-3 * 1e3 ** (r / max(auction_rounds - 1, 1))
        free = partner < 0
        win, best = _lowest_top_bidder(j, price[j] + (w1 - w2).clamp_max(1e6) + step, free)
        got = win < b
        partner = _put(partner, owner, torch.full_like(owner, -1), got & (owner >= 0))  # displaced
        owner = torch.where(got, win, owner)
        price = torch.where(got, best, price)
        partner = _put(partner, win, rows, got)

    # 4. greedy on what is left, then in-order fill.
    for _ in range(greedy_rounds):
        value = torch.where((partner < 0)[:, None] & (owner < 0)[None, :], -c, _NEG)
        bid, j = value.max(1)
        win, _ = _lowest_top_bidder(j, bid, bid > _NEG)
        got = win < b
        owner = torch.where(got, win, owner)
        partner = _put(partner, win, rows, got)
    free_rows = torch.argsort((partner >= 0).long() * b + rows)  # unassigned first, in index order
    free_cols = torch.argsort((owner >= 0).long() * b + rows)
    partner = _put(partner, free_rows, free_cols, rows < (partner < 0).sum())

    # 5. remove self-pairs (only the fill can make them).
    fixed = partner == rows
    m = fixed.sum()
    order = torch.argsort((~fixed).long() * b + rows)  # fixed points first
    rotated = _put(partner, order, order[(rows + 1) % m.clamp_min(1)], rows < m)
    lone, nxt = order[:1], (order[:1] + 1) % b
    swapped = partner.scatter(0, torch.cat([lone, nxt]), torch.cat([partner[nxt], lone]))
    partner = torch.where(m == 1, swapped, rotated)

    # 6. parallel 2-opt on mutual best swaps.
    for _ in range(polish_rounds):
        cur = c.gather(1, partner[:, None]).squeeze(1)
        cross = c[:, partner]  # cross[i, j] = c[i, partner[j]]
        gain = torch.nan_to_num(cur[:, None] + cur[None, :] - cross - cross.T, nan=_NEG)
        g_best, j = gain.max(1)
        swap = (j[j] == rows) & (g_best > 0)
        partner = torch.where(swap, partner[j], partner)
    return partner


def _target_sq_distance(t: Tensor, pool: Tensor) -> Tensor:
    """‖t_i − pool_j‖² (B, N) float32: regression values (B,)/(B, k) and soft targets (B, C) as vectors,
    class indices (B,) as one-hot (2 across classes, 0 within)."""
    if not t.is_floating_point():
        return 2.0 * (t[:, None] != pool[None, :]).float()
    t, pool = t.float().reshape(t.shape[0], -1), pool.float().reshape(pool.shape[0], -1)
    return torch.cdist(t, pool).square()


LABEL_KERNEL_PARTNERS = ("batch", "set")  # where label_kernel's partners come from


@PAIRINGS.register("label_kernel")
class LabelKernelPairing(Pairing):
    """C-Mixup's pairing (Yao et al. 2022, "C-Mixup: Improving Generalization in Regression"): sample i's
    partner j is drawn with probability ∝ exp(−‖y_i − y_j‖² / (2σ²)), so samples with close targets are
    mixed more often. Targets: regression values (B,) or (B, k), soft targets (B, C), or class indices (B,),
    taken as one-hot (‖y_i − y_j‖² is 0 within a class and 2 across, so this is a soft same-class pairing).
    As in C-Mixup the sample itself is a candidate (its weight is the largest, 1). Drawn by the Gumbel-max
    trick, without a host sync.

    Where the partners come from. The official code (github.com/huaxiuyao/C-Mixup, ``src/algorithm.py``):
    ``get_mixup_sample_rate`` gives each training sample i the probabilities P(j | i) over the *whole
    training set* (a Gaussian ``KernelDensity`` of bandwidth σ fitted on y_i, evaluated at every y_j and
    normalised), and ``train`` draws ``idx_2`` from them (``np.random.choice``) and fetches ``x_train[idx_2]``
    by index (``--mixtype kde``). Its RCF-MNIST command (``src/main.sh``: ``--mixtype random --batch_type 1``)
    draws instead from the batch plus as many uniformly drawn training samples (``get_batch_kde_mixup_idx``
    via ``get_batch_kde_mixup_batch``). ``partners='batch'`` (the default, mixlab's earlier and only form
    before the option) draws from the batch: calling this pairing. ``partners='set'`` is the official form:
    ``Mix`` draws with :meth:`draw_from_set` (dataset indices) and fetches the partners' inputs from the
    training set it was given (``Mix.setup(train_set=...)``); calling the pairing still draws from the batch.

    λ: the official ``train`` draws one λ ~ Beta(α, α) per batch (``np.random.beta`` once per iteration),
    which is ``lambda=beta lam.per_sample=false``; mixlab's ``beta`` draws one per sample by default.
    """

    def __init__(self, *, sigma: float = 1.0, partners: str = "batch") -> None:
        if not (is_number(sigma) and 0 < sigma < float("inf")):
            raise ValueError(f"sigma={sigma!r}: expected a number > 0 (the kernel's bandwidth, in target units)")
        self.sigma = float(sigma)
        self.partners = _check_choice("partners", partners, LABEL_KERNEL_PARTNERS)
        self.needs_train_set = self.partners == "set"

    def __call__(self, x: Tensor, y: Tensor | None = None, *, features: Tensor | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        if y is None or y.dim() > 2:
            raise ValueError(f"pairing label_kernel needs targets (B,) or (B, k), got "
                             f"{None if y is None else tuple(y.shape)} (boxes have no kernel between them)")
        with float32_region(x.device):
            t = y.to(x.device)
            return self._draw(t, t, generator)

    def draw_from_set(self, y: Tensor, train_targets: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """C-Mixup's set-level draw (``--mixtype kde``): each sample's partner among *all* N training samples,
        P(j | i) = exp(−‖y_i − t_j‖²/(2σ²)) / Σ_j' exp(−‖y_i − t_j'‖²/(2σ²)), returned as (B,) indices into
        ``train_targets`` (N,) or (N, k), i.e. dataset indices: the partners' inputs are then fetched by index
        (``x_train.index_select(0, j)``), and j equals the sample's own dataset index where it drew itself.
        ``y``: the batch's targets, of the same kind as ``train_targets``. O(B·N) memory; no host sync.
        """
        if y.dim() > 2 or train_targets.dim() != y.dim() or y.is_floating_point() != train_targets.is_floating_point() \
                or (y.dim() == 2 and y.shape[1] != train_targets.shape[1]):
            raise ValueError(f"label_kernel.draw_from_set needs batch and training-set targets of one kind, (B,) and "
                             f"(N,) or (B, k) and (N, k); got {y.dtype} {tuple(y.shape)} and {train_targets.dtype} "
                             f"{tuple(train_targets.shape)}")
        with float32_region(y.device):
            return self._draw(y, train_targets.to(y.device), generator)

    def _draw(self, t: Tensor, pool: Tensor, generator: torch.Generator | None) -> Tensor:
        logits = -_target_sq_distance(t, pool) / (2.0 * self.sigma ** 2)
        u = _rand(tuple(logits.shape), generator, t.device).clamp_(min=1e-12, max=1 - 1e-7)
        return (logits - torch.log(-torch.log(u))).argmax(1)


@PAIRINGS.register("optimal")
class OptimalPairing(_DistancePairing):
    """A one-to-one assignment minimising the total pair distance, with no self-pairs.

    Optimal transport between the batch and itself with uniform weights, as in k-Mixup
    (Greenewald et al. 2023). ``solver``:

    - ``exact``: the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``) on the
      host. Copies the (B, B) cost matrix to the host once per batch: one device sync, and the
      GPU idles while the host solves (O(B^3)).
    - ``sinkhorn``: an approximate solver on the tensor's device with no sync
      (:func:`sinkhorn_assignment`); still one-to-one and self-free, total cost typically
      within 1% of the optimum (tests/test_pairing.py states the bound it is held to).
    - ``auto`` (default): ``exact`` on the CPU (nothing to stall) and for B <=
      ``AUTO_EXACT_MAX_BATCH``, ``sinkhorn`` on an accelerator above that.

    ``host_sync`` is True unless ``solver='sinkhorn'`` (``auto`` syncs on the CPU and on small batches).
    """

    def __init__(self, *, metric: str = "euclidean", space: str = "input", solver: str = "auto") -> None:
        super().__init__(metric=metric, space=space)
        self.solver = _check_choice("solver", solver, OPTIMAL_SOLVERS)
        self.host_sync = self.solver != "sinkhorn"

    def uses_exact(self, device: torch.device, b: int) -> bool:
        """Whether a batch of ``b`` on ``device`` is solved exactly (on the host)."""
        if self.solver == "auto":
            return torch.device(device).type == "cpu" or b <= AUTO_EXACT_MAX_BATCH
        return self.solver == "exact"

    def __call__(self, x: Tensor, y: Tensor | None = None, *, features: Tensor | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        b = x.shape[0]
        if b == 1:
            return torch.zeros(1, dtype=torch.long, device=x.device)
        z = _space(x, features, self.space, "pairing 'optimal'")
        d = pairwise_distance(z, self.metric)
        partner = exact_assignment(d) if self.uses_exact(d.device, b) else sinkhorn_assignment(d)
        return partner.to(x.device)
