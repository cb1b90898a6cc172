"""Property tests of every registered pairing strategy (mixlab.pairing).

Parametrised over ``PAIRINGS.names()``, so a new registration is held to the contract
automatically: partner (B,) int64 on x's device with values in [0, B), for any B >= 1.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from mixlab import PAIRINGS
from mixlab.pairing import METRICS, pair_distance, pairwise_distance

ALL = PAIRINGS.names()
# Strategies that never pair a sample with itself when B >= 2 (class pairings via their
# documented fallback: a sample with no allowed partner gets a random *other* sample).
NEVER_SELF = ["offset", "nearest", "farthest", "optimal", "same_class", "cross_class", "roll"]
DISTANCE_BASED = ["nearest", "farthest", "optimal"]
CLASS_BASED = ["same_class", "cross_class"]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
BATCH_SIZES = [1, 2, 7, 64, 1024]


def make_batch(b: int, *, classes: int = 3, seed: int = 0, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, 4, 4, generator=g)
    y = torch.randint(0, classes, (b,), generator=g)
    return x.to(device), y.to(device)


def call(name: str, x: torch.Tensor, y: torch.Tensor | None, *, seed: int = 0, **kwargs) -> torch.Tensor:
    return PAIRINGS.build(name)(x, y, generator=torch.Generator().manual_seed(seed), **kwargs)


def sq_dist_np(z: torch.Tensor, metric: str) -> np.ndarray:
    """Independent float64 reference of the all-pairs distance (scipy's cdist)."""
    a = z.flatten(1).double().cpu().numpy()
    return cdist(a, a, {"euclidean": "euclidean", "sqeuclidean": "sqeuclidean", "cosine": "cosine"}[metric])


# --------------------------------------------------------------------------- the contract


def test_registry_lists_the_known_strategies():
    # Not a closed list (new ones are welcome) but the ones the docs promise must exist.
    assert set(NEVER_SELF + ["random", "flip"]) <= set(ALL)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("b", BATCH_SIZES)
@pytest.mark.parametrize("name", ALL)
def test_partner_contract(name, b, device):
    x, y = make_batch(b, device=device)
    partner = call(name, x, y)
    assert partner.shape == (b,)
    assert partner.dtype == torch.int64
    assert partner.device == x.device
    assert bool(((partner >= 0) & (partner < b)).all())
    if b == 1:
        assert partner.tolist() == [0]  # the only possible partner
    if b >= 2 and name in NEVER_SELF:
        assert not bool((partner == torch.arange(b, device=device)).any()), f"{name} paired a sample with itself"


@pytest.mark.parametrize("name", ALL)
def test_partner_contract_with_features_and_soft_targets(name):
    # Distance-based strategies measure features when given; class-based ones accept (B, C) soft targets.
    x, y = make_batch(9)
    soft = torch.nn.functional.one_hot(y, 3).float() * 0.9 + 0.1 / 3
    partner = call(name, x, soft, features=torch.randn(9, 5))
    assert partner.shape == (9,) and partner.dtype == torch.int64
    assert bool(((partner >= 0) & (partner < 9)).all())
    if name in NEVER_SELF:
        assert not bool((partner == torch.arange(9)).any())


@pytest.mark.parametrize("name", ALL)
def test_deterministic_given_the_generator(name):
    x, y = make_batch(17)
    assert torch.equal(call(name, x, y, seed=5), call(name, x, y, seed=5))


@settings(max_examples=30, deadline=None)
@given(b=st.integers(2, 40), classes=st.integers(1, 6), seed=st.integers(0, 2**31 - 1),
       name=st.sampled_from(NEVER_SELF))
def test_never_itself_property(b, classes, seed, name):
    x, y = make_batch(b, classes=classes, seed=seed)
    partner = call(name, x, y, seed=seed)
    assert not bool((partner == torch.arange(b)).any())
    assert bool(((partner >= 0) & (partner < b)).all())


# --------------------------------------------------------------------------- fixed pairings


@pytest.mark.parametrize("b", [1, 2, 7, 8])
def test_flip_roll_match_timm_and_torchvision_conventions(b):
    x, y = make_batch(b)
    assert torch.equal(call("flip", x, y), torch.arange(b).flip(0))  # timm: x.flip(0)
    assert torch.equal(call("roll", x, y), torch.arange(b).roll(1, 0))  # torchvision v2: x.roll(1, 0)
    if b % 2:  # flip pairs the middle sample of an odd batch with itself, as timm does
        assert call("flip", x, y)[b // 2] == b // 2


def test_random_is_a_uniform_permutation():
    x, _ = make_batch(5)
    counts = torch.zeros(5, 5)
    for seed in range(400):
        partner = call("random", x, None, seed=seed)
        assert torch.equal(partner.sort().values, torch.arange(5))
        counts[torch.arange(5), partner] += 1
    # Each cell is Binomial(400, 1/5): mean 80, sd 8. Generous bounds (well beyond 5 sd).
    assert counts.min() > 40 and counts.max() < 120


def test_offset_is_a_cyclic_shift_by_a_uniform_k():
    b = 6
    x, _ = make_batch(b)
    ks = []
    for seed in range(300):
        partner = call("offset", x, None, seed=seed)
        k = (partner - torch.arange(b)) % b
        assert bool((k == k[0]).all()), "offset pairing should be one shift for the whole batch"
        ks.append(int(k[0]))
    assert set(ks) == set(range(1, b))  # k ~ U{1..B-1}: every shift occurs, 0 never
    assert max(ks.count(k) for k in range(1, b)) < 2.0 * min(ks.count(k) for k in range(1, b))


# --------------------------------------------------------------------------- distance pairings


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("name", ["nearest", "farthest"])
@pytest.mark.parametrize("use_features", [False, True])
def test_nearest_farthest_match_brute_force(name, metric, use_features):
    x, _ = make_batch(23, seed=1)
    feats = torch.randn(23, 6, generator=torch.Generator().manual_seed(2))
    z = feats if use_features else x
    space = "feature" if use_features else "input"
    # features are always passed; only space='feature' may use them
    partner = PAIRINGS.build(name, metric=metric, space=space)(x, None, features=feats).numpy()
    d = sq_dist_np(z, metric)
    np.fill_diagonal(d, np.inf if name == "nearest" else -np.inf)
    best = d.min(1) if name == "nearest" else d.max(1)
    got = d[np.arange(23), partner]
    # Compare distances, not indices (ties); float32 vs float64 arithmetic.
    np.testing.assert_allclose(got, best, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("metric", METRICS)
def test_distances_are_non_negative_and_zero_on_identical_rows(metric):
    a = torch.randn(500, 75, generator=torch.Generator().manual_seed(0))
    same = pair_distance(a, a, metric)
    assert bool((same >= 0).all()) and float(same.max()) <= 1e-6  # 1 − cos rounds to ±1e-7
    if metric != "cosine":
        assert torch.equal(same, torch.zeros(500))
    b = torch.randn(500, 75, generator=torch.Generator().manual_seed(1))
    assert bool((pair_distance(a, b, metric) >= 0).all())
    assert bool((pairwise_distance(a, metric) >= 0).all())
    np.testing.assert_allclose(pair_distance(a, b, metric).numpy(),
                               np.diag(cdist(a.double().numpy(), b.double().numpy(), metric)), rtol=1e-4, atol=1e-5)


def test_nearest_with_duplicate_points_picks_the_duplicate_not_itself():
    x = torch.tensor([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0], [9.0, 9.0]])
    partner = call("nearest", x, None)
    assert partner.tolist()[:2] == [1, 0]


def _total(d: np.ndarray, partner) -> float:
    return float(d[np.arange(len(partner)), np.asarray(partner)].sum())


def _random_derangement(b: int, rng: np.random.Generator) -> np.ndarray:
    while True:
        p = rng.permutation(b)
        if not (p == np.arange(b)).any():
            return p


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("b", [2, 3, 7, 32])
def test_optimal_is_the_exact_assignment(b, metric):
    x, _ = make_batch(b, seed=b)
    partner = PAIRINGS.build("optimal", metric=metric)(x, None).numpy()
    assert sorted(partner.tolist()) == list(range(b)), "optimal pairing should be one-to-one"
    assert not (partner == np.arange(b)).any()
    d = sq_dist_np(x, metric)
    cost = d.copy()
    np.fill_diagonal(cost, np.inf)
    rows, cols = linear_sum_assignment(cost)
    optimum = cost[rows, cols].sum()
    np.testing.assert_allclose(_total(d, partner), optimum, rtol=1e-6, atol=1e-6)
    rng = np.random.default_rng(0)
    for _ in range(200):
        assert _total(d, partner) <= _total(d, _random_derangement(b, rng)) + 1e-6


def test_optimal_small_batch_is_brute_force_optimum():
    x, _ = make_batch(6, seed=3)
    d = sq_dist_np(x, "euclidean")
    best = min(_total(d, p) for p in itertools.permutations(range(6)) if all(p[i] != i for i in range(6)))
    np.testing.assert_allclose(_total(d, call("optimal", x, None)), best, rtol=1e-6)


def test_optimal_uses_features_in_feature_space():
    x, _ = make_batch(12, seed=4)
    feats = torch.randn(12, 3, generator=torch.Generator().manual_seed(9))
    partner = PAIRINGS.build("optimal", space="feature")(x, None, features=feats).numpy()
    cost = sq_dist_np(feats, "euclidean")
    np.fill_diagonal(cost, np.inf)
    r, c = linear_sum_assignment(cost)
    np.testing.assert_allclose(_total(cost, partner), cost[r, c].sum(), rtol=1e-6)


def test_only_optimal_declares_a_host_sync():
    flagged = [n for n in ALL if getattr(PAIRINGS.build(n), "host_sync", False)]
    assert flagged == ["optimal"]


# --------------------------------------------------------------------------- class pairings


@settings(max_examples=40, deadline=None)
@given(labels=st.lists(st.integers(0, 4), min_size=2, max_size=40), seed=st.integers(0, 2**31 - 1))
def test_same_and_cross_class_semantics_and_fallbacks(labels, seed):
    y = torch.tensor(labels)
    b = len(labels)
    x = torch.randn(b, 2)
    ar = torch.arange(b)
    counts = torch.bincount(y, minlength=5)

    same = call("same_class", x, y, seed=seed)
    has_mate = counts[y] >= 2
    assert bool((y[same] == y)[has_mate].all()), "same_class should pick a same-class partner when one exists"
    assert not bool((same == ar).any())  # singletons fall back to a random *other* sample

    cross = call("cross_class", x, y, seed=seed)
    if int((counts > 0).sum()) >= 2:
        assert bool((y[cross] != y).all()), "cross_class should pick a different class when the batch has two"
    assert not bool((cross == ar).any())  # one-class batch: a random other sample


def test_class_fallbacks_are_random_not_fixed():
    # A singleton class (same_class) and a one-class batch (cross_class) get a random other partner.
    y = torch.tensor([0, 1, 1, 1, 1, 1])
    x = torch.randn(6, 2)
    seen = {int(call("same_class", x, y, seed=s)[0]) for s in range(60)}
    assert seen == {1, 2, 3, 4, 5}
    y1 = torch.zeros(6, dtype=torch.long)
    seen = {int(call("cross_class", x, y1, seed=s)[0]) for s in range(60)}
    assert seen == {1, 2, 3, 4, 5}


def test_class_pairings_are_uniform_among_allowed():
    y = torch.tensor([0, 0, 0, 0, 1, 1])
    x = torch.randn(6, 2)
    picks = torch.stack([call("same_class", x, y, seed=s) for s in range(600)])
    counts = torch.bincount(picks[:, 0], minlength=6)  # sample 0 chooses among 1, 2, 3
    assert counts[0] == 0 and counts[4:].sum() == 0
    assert counts[1:4].min() > 150  # each ~200


@pytest.mark.parametrize("name", CLASS_BASED)
def test_class_pairings_reject_missing_or_regression_targets(name):
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="needs the targets"):
        PAIRINGS.build(name)(x, None)
    with pytest.raises(ValueError, match="regression"):
        PAIRINGS.build(name)(x, torch.randn(4))


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize("name", DISTANCE_BASED)
def test_bad_metric_is_a_value_error_naming_it(name):
    with pytest.raises(ValueError, match="manhattan"):
        PAIRINGS.build(name, metric="manhattan")


@pytest.mark.parametrize("name", DISTANCE_BASED)
def test_misspelled_option_is_named(name):
    with pytest.raises(ValueError, match="metrik"):
        PAIRINGS.build(name, metrik="cosine")


@pytest.mark.parametrize("name", ["nearest", "farthest", "optimal"])
def test_feature_space_pairing_needs_features_and_checks_space(name):
    x, _ = make_batch(5, seed=0)
    with pytest.raises(ValueError, match="space='feature' needs features"):
        PAIRINGS.build(name, space="feature")(x, None)
    with pytest.raises(ValueError, match="space='pixels'"):
        PAIRINGS.build(name, space="pixels")
