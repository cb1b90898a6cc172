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
from mixlab.engine.pairing import METRICS, pair_distance, pairwise_distance

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


def test_offset_draws_an_offset_per_sample_as_seed_002_does():
    # Seed 002: j = i + randint(1, B-1) inside the per-sample loop: k_i independent, uniform on {1..B-1}.
    b, n = 6, 400
    x, _ = make_batch(b)
    ks = torch.stack([(call("offset", x, None, seed=seed) - torch.arange(b)) % b for seed in range(n)])
    assert int((ks == 0).sum()) == 0  # never itself
    counts = torch.stack([(ks == k).sum(0) for k in range(1, b)])  # (B-1, B): per offset, per position
    # each cell Binomial(400, 1/5): mean 80, sd 8; every position draws every offset
    assert int(counts.min()) > 40 and int(counts.max()) < 120
    same = (ks == ks[:, :1]).all(1).float().mean()  # a shared shift would make every row constant
    assert float(same) < 0.05  # independent draws: P(all 6 equal) = 5^-5


def test_offset_per_batch_is_a_cyclic_shift_by_a_uniform_k():
    b = 6
    x, _ = make_batch(b)
    ks = []
    for seed in range(300):
        partner = PAIRINGS.build("offset", per_sample=False)(x, None, generator=torch.Generator().manual_seed(seed))
        k = (partner - torch.arange(b)) % b
        assert bool((k == k[0]).all()), "per_sample=False should be one shift for the whole batch"
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
    # The default (solver='auto') solves on the host on the CPU and for small batches.
    flagged = [n for n in ALL if getattr(PAIRINGS.build(n), "host_sync", False)]
    assert flagged == ["optimal"]
    assert PAIRINGS.build("optimal", solver="exact").host_sync is True
    assert PAIRINGS.build("optimal", solver="auto").host_sync is True
    assert PAIRINGS.build("optimal", solver="sinkhorn").host_sync is False


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


@pytest.mark.parametrize("name", ["nearest", "farthest", "optimal"])
def test_distance_pairings_are_float32_under_bf16_autocast(name):
    # The loop calls the engine inside its autocast region; a @ a.T in bf16 picked the wrong nearest
    # neighbour for 68% of rows of non-negative, embedding-like features. CPU autocast reproduces it.
    g = torch.Generator().manual_seed(0)
    feats = torch.relu(torch.randn(128, 64, generator=g) @ torch.randn(64, 256, generator=g)) + 3.0
    reference = call(name, feats, None)
    brute = sq_dist_np(feats, "euclidean")
    np.fill_diagonal(brute, np.inf if name != "farthest" else -np.inf)
    if name == "nearest":
        assert reference.tolist() == brute.argmin(1).tolist()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = call(name, feats, None)
        assert torch.equal(under, reference)
        assert pairwise_distance(feats).dtype == torch.float32
        torch.testing.assert_close(pair_distance(feats, feats.roll(1, 0)), pair_distance(feats, feats.roll(1, 0)).float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d = pairwise_distance(feats)
    torch.testing.assert_close(d, pairwise_distance(feats))


def test_exact_assignment_leaves_the_callers_cost_alone():
    from mixlab.engine.pairing import exact_assignment

    cost = torch.rand(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    before = cost.clone()
    exact_assignment(cost)
    assert torch.equal(cost, before)


# --------------------------------------------------------------------------- optimal: solvers


def _optimal(solver: str, **kwargs):
    return PAIRINGS.build("optimal", solver=solver, **kwargs)


def _assert_derangement(partner: torch.Tensor, b: int) -> None:
    assert partner.shape == (b,) and partner.dtype == torch.int64
    if b == 1:
        assert partner.tolist() == [0]
        return
    assert sorted(partner.tolist()) == list(range(b)), "not one-to-one"
    assert not bool((partner == torch.arange(b, device=partner.device)).any()), "self-pair"


def _tricky_batches(b: int):
    g = torch.Generator().manual_seed(b)
    yield "random", torch.randn(b, 5, generator=g)
    yield "all equal", torch.ones(b, 5)
    yield "all zero", torch.zeros(b, 5)  # cosine of zero vectors: every distance 1
    yield "duplicated rows", torch.randn(b // 3 + 1, 5, generator=g).repeat(3, 1)[:b]
    yield "two values", (torch.arange(b) % 2).float()[:, None].expand(b, 5).contiguous()
    yield "one outlier", torch.cat([torch.zeros(b - 1, 5), torch.full((1, 5), 1e6)])[:b]


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("b", [1, 2, 3, 7, 64, 300])
def test_sinkhorn_is_always_a_deterministic_derangement(b, metric):
    pairing = _optimal("sinkhorn", metric=metric)
    for what, x in _tricky_batches(b):
        partner = pairing(x, None)
        _assert_derangement(partner, b)
        if what in ("random", "duplicated rows"):
            assert torch.equal(partner, pairing(x.clone(), None)), f"{what}: not deterministic"


@settings(max_examples=25, deadline=None)
@given(b=st.integers(2, 40), seed=st.integers(0, 2**31 - 1), levels=st.integers(1, 4))
def test_sinkhorn_derangement_property_with_ties(b, seed, levels):
    # Few distinct values per coordinate: many exactly tied distances.
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, levels, (b, 3), generator=g).float()
    _assert_derangement(_optimal("sinkhorn")(x, None), b)


def test_sinkhorn_assignment_on_degenerate_cost_matrices():
    from mixlab.engine.pairing import sinkhorn_assignment

    for b in (2, 3, 40):
        for cost in (torch.zeros(b, b), torch.ones(b, b), torch.eye(b) * 1e9, torch.rand(b, b) * 1e-30,
                     torch.full((b, b), float("nan"))):
            _assert_derangement(sinkhorn_assignment(cost), b)
    # A cost with one cheap derangement (the cycle i -> i+1): it is found.
    b = 40
    cost = torch.ones(b, b)
    cost[torch.arange(b), (torch.arange(b) + 1) % b] = 0.0
    assert torch.equal(sinkhorn_assignment(cost), (torch.arange(b) + 1) % b)


def _clustered(b: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = 3.0 * torch.randn(10, d, generator=g)
    return centres[torch.randint(0, 10, (b,), generator=g)] + torch.randn(b, d, generator=g)


def _greedy(d: np.ndarray) -> np.ndarray:
    """The textbook greedy matching, an independent baseline: the cheapest free (row, column) pair
    first, until every row has a partner (diagonal excluded)."""
    b = d.shape[0]
    partner, col_free = np.full(b, -1), np.ones(b, dtype=bool)
    for flat in np.argsort(d, axis=None, kind="stable"):
        i, j = divmod(int(flat), b)
        if i != j and partner[i] < 0 and col_free[j]:
            partner[i], col_free[j] = j, False
    return partner


# The promise in OptimalPairing's docstring and the README: a total "within ~1% of the optimum".
# Held as: each batch within 2% of scipy's exact optimum, and no worse than the greedy matching.
SINKHORN_MAX_RATIO = 1.02


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("kind,b,seed", [("clusters", 128, 0), ("clusters", 128, 1), ("uniform", 128, 2),
                                         ("clusters", 512, 3), ("uniform", 512, 4)])
def test_sinkhorn_is_close_to_the_exact_optimum(kind, b, seed, metric):
    x = _clustered(b, 20, seed) if kind == "clusters" else torch.rand(b, 20, generator=torch.Generator().manual_seed(seed))
    d = sq_dist_np(x, metric)  # float64 reference
    np.fill_diagonal(d, np.inf)
    r, c = linear_sum_assignment(d)
    optimum = d[r, c].sum()
    exact = _optimal("exact", metric=metric)(x, None).numpy()
    np.testing.assert_allclose(_total(d, exact), optimum, rtol=1e-5)
    approx = _optimal("sinkhorn", metric=metric)(x, None)
    _assert_derangement(approx, b)
    got = _total(d, approx.numpy())
    greedy = _greedy(d)
    assert sorted(greedy.tolist()) == list(range(b))
    assert got <= SINKHORN_MAX_RATIO * optimum, f"sinkhorn/exact = {got / optimum:.4f}"
    assert got <= _total(d, greedy), f"sinkhorn {got:.4f} worse than greedy {_total(d, greedy):.4f}"


@pytest.mark.parametrize("solver", ["exact", "sinkhorn"])
def test_optimal_accepts_bf16_inputs_and_features(solver):
    x = _clustered(64, 12, 7)
    d = sq_dist_np(x, "euclidean")
    np.fill_diagonal(d, np.inf)
    r, c = linear_sum_assignment(d)
    for kwargs in ({"x": x.bfloat16()}, {"x": torch.randn(64, 3), "features": x.bfloat16()}):
        space = "feature" if "features" in kwargs else "input"
        partner = _optimal(solver, space=space)(kwargs["x"], None, features=kwargs.get("features"))
        _assert_derangement(partner, 64)
        assert _total(d, partner.numpy()) <= 1.05 * d[r, c].sum()  # bf16 rounding of the inputs


def test_sinkhorn_has_no_host_sync_and_exact_is_seen_syncing(monkeypatch):
    from tests.test_mixing import find_syncs

    x = _clustered(32, 12, 0)
    feats = torch.randn(32, 6)
    for space in ("input", "feature"):
        pairing = _optimal("sinkhorn", space=space)
        assert find_syncs(lambda pairing=pairing: pairing(x, None, features=feats), monkeypatch) == []
    assert find_syncs(lambda: _optimal("exact")(x, None), monkeypatch)  # the detector does see the host solve


@pytest.mark.parametrize("device", DEVICES)
def test_sinkhorn_stays_on_the_device(device):
    x = _clustered(33, 5, 1).to(device)
    partner = _optimal("sinkhorn")(x, None)
    assert partner.device == x.device
    _assert_derangement(partner.cpu(), 33)


def test_auto_solver_picks_exact_on_the_cpu_and_for_small_batches():
    from mixlab.engine.pairing import AUTO_EXACT_MAX_BATCH

    auto = _optimal("auto")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert auto.uses_exact(cpu, 4096) and auto.uses_exact(cuda, AUTO_EXACT_MAX_BATCH)
    assert not auto.uses_exact(cuda, AUTO_EXACT_MAX_BATCH + 1)
    assert _optimal("exact").uses_exact(cuda, 4096)
    assert not _optimal("sinkhorn").uses_exact(cpu, 8)
    # On the CPU auto is exactly the exact solver.
    x = _clustered(300, 6, 2)
    assert torch.equal(auto(x, None), _optimal("exact")(x, None))


def test_bad_solver_is_a_one_line_value_error():
    with pytest.raises(ValueError) as info:
        _optimal("hungarian")
    assert str(info.value) == "solver='hungarian': expected one of ['auto', 'exact', 'sinkhorn']"


def test_optimal_config_file_matches_the_constructor():
    import inspect
    from pathlib import Path

    from omegaconf import OmegaConf

    conf = OmegaConf.to_container(OmegaConf.load(Path(__file__).parents[1] / "conf" / "pairing" / "optimal.yaml"))
    params = inspect.signature(PAIRINGS.get("optimal")).parameters
    assert conf.pop("name") == "optimal"
    assert conf == {k: p.default for k, p in params.items()}


# --------------------------------------------------------------------------- C-Mixup's label kernel


@pytest.mark.parametrize("y,sigma", [(torch.tensor([0.0, 0.3, 1.0, 2.5, 2.6]), 0.7),  # regression values
                                     (torch.tensor([[0.0, 1.0], [0.2, 0.9], [1.5, -1.0], [0.0, 0.0]]), 1.2),  # (B, k)
                                     (torch.tensor([0, 0, 1, 2, 1, 0]), 0.8)])  # class indices, one-hot
def test_label_kernel_draws_partners_with_cmixups_probabilities(y, sigma):
    from scipy.stats import chisquare

    t = y.double().reshape(len(y), -1) if y.is_floating_point() else torch.eye(3, dtype=torch.float64)[y]
    p = torch.softmax(-torch.cdist(t, t).square() / (2 * sigma**2), 1).numpy()  # C-Mixup's P(j | i), float64
    pair = PAIRINGS.build("label_kernel", sigma=sigma)
    g, n = torch.Generator().manual_seed(0), 4000
    draws = torch.stack([pair(torch.zeros(len(y), 2), y, generator=g) for _ in range(n)])  # (n, B)
    for i in range(len(y)):
        counts = np.bincount(draws[:, i].numpy(), minlength=len(y))
        assert chisquare(counts, p[i] * n).pvalue > 1e-3, (i, counts, p[i] * n)


def test_label_kernel_rejects_boxes_missing_targets_and_a_bad_sigma():
    with pytest.raises(ValueError, match=r"sigma=0: expected a number > 0"):
        PAIRINGS.build("label_kernel", sigma=0)
    pair = PAIRINGS.build("label_kernel")
    with pytest.raises(ValueError, match="needs targets"):
        pair(torch.zeros(3, 2), None)
    with pytest.raises(ValueError, match="boxes have no kernel"):
        pair(torch.zeros(3, 2), torch.zeros(3, 4, 5))
