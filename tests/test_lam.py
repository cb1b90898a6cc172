"""Property and statistical tests of every registered λ policy (mixlab.lam) and of beta_icdf.

The contract tests are parametrised over ``LAMBDAS.names()``: a new registration is checked
automatically. The statistical tests check the seeds' formulas (seed 000: distance- and
loss-based λ; seed 002: AutoMixup λ = ½(1 − ε)/(1 + ε)) with fixed generator seeds.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, special, stats
from scipy.spatial.distance import pdist

from mixlab import LAMBDAS, Mix, beta_icdf
from mixlab.engine.lam import beta_alpha_for_strength, beta_strength
from mixlab.engine.pairing import batch_distance_scale

ALL = LAMBDAS.names()
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# Option sets exercised per policy besides the defaults ({}); unlisted policies get {} only.
VARIANTS: dict[str, list[dict]] = {
    "beta": [{"alpha": 0.2}, {"alpha": 2.0, "per_sample": False}],
    "constant": [{"value": 0.0}, {"value": 1.0}],
    "distance": [{"map": m, "metric": d, "normalize": n} for m in ("exp", "inverse", "gaussian")
                 for d in ("euclidean", "cosine") for n in ("mean", "none")] + [{"space": "feature"}],
    "sk": [{"alpha": 0.4, "tau_max": 2.0}, {"metric": "cosine", "space": "feature"}],
    "loss": [{"map": "exp"}, {"per_sample": True, "num_samples": 5000}],
    "schedule": [{"shape": "cosine", "per_sample": False}],
}
CASES = [(name, kw) for name in ALL for kw in [{}] + VARIANTS.get(name, [])]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def run_policy(policy, x: torch.Tensor, partner: torch.Tensor, *, seed: int = 0, **kw) -> torch.Tensor:
    b = x.shape[0]
    kw.setdefault("features", torch.randn(b, 7, generator=gen(seed + 1)).to(x.device))
    kw.setdefault("index", torch.arange(b, device=x.device) * 3)
    kw.setdefault("progress", 0.4)
    return policy(x, partner, generator=gen(seed), **kw)


def assert_beta(lam: torch.Tensor, a: float) -> None:
    """λ (float32) is distributed as Beta(a, a), as far as float32 can represent it.

    Below 1 float32 is spaced 2^-24, so a draw within 3e-8 of 1 rounds to exactly 1.0: for
    small a that is an atom (1.6% of Beta(0.2, 0.2), 9% of Beta(0.1, 0.1)) which a one-sample
    KS test against the continuous cdf rejects. Compare instead with scipy's draws rounded to
    float32 the same way (two-sample KS), and one-sample where the atom is negligible.
    """
    sample = lam.double().numpy()
    ref = stats.beta(a, a).rvs(size=200_000, random_state=np.random.default_rng(1)).astype(np.float32)
    assert stats.ks_2samp(sample, ref.astype(np.float64)).pvalue > 0.01
    if a >= 0.5:
        assert stats.kstest(sample, stats.beta(a, a).cdf).pvalue > 0.01


def built(name: str, kw: dict):
    policy = LAMBDAS.build(name, **kw)
    if name == "loss":  # give it some history: a per-sample loss for a few indices
        policy.observe(torch.tensor([2.0, 0.5, 1.0]), torch.tensor([0, 3, 6]))
    return policy


# --------------------------------------------------------------------------- contract


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("b", [1, 2, 7, 1024])
@pytest.mark.parametrize("name,kw", CASES, ids=[f"{n}-{i}" for n, kws in
                                                 [(n, [{}] + VARIANTS.get(n, [])) for n in ALL] for i in range(len(kws))])
def test_lambda_contract(name, kw, b, device):
    x = torch.randn(b, 3, 5, 5, generator=gen(b)).to(device)
    partner = torch.randperm(b, generator=gen(b + 1)).to(device)
    lam = run_policy(built(name, kw), x, partner)
    assert lam.shape == (b,)
    assert lam.dtype == torch.float32
    assert lam.device == x.device
    assert bool(torch.isfinite(lam).all())
    assert bool(((lam >= 0) & (lam <= 1)).all()), f"{name} {kw} gave λ outside [0, 1]: {lam.min()}, {lam.max()}"


@pytest.mark.parametrize("name", ALL)
def test_lambda_contract_low_precision_inputs(name):
    # bf16/fp16 inputs: λ is still float32 (distances are measured in float32).
    for dtype in (torch.bfloat16, torch.float16):
        x = torch.randn(9, 4, 4, generator=gen()).to(dtype)
        lam = run_policy(built(name, {}), x, torch.randperm(9, generator=gen(1)),
                         features=torch.randn(9, 3).to(dtype))
        assert lam.dtype == torch.float32 and lam.shape == (9,)
        assert bool(((lam >= 0) & (lam <= 1)).all())


@pytest.mark.parametrize("name", ALL)
def test_lambda_deterministic_given_the_generator(name):
    x = torch.randn(16, 8, generator=gen())
    partner = torch.randperm(16, generator=gen(1))
    assert torch.equal(run_policy(built(name, {}), x, partner, seed=3), run_policy(built(name, {}), x, partner, seed=3))


# --------------------------------------------------------------------------- beta_icdf


A_VALUES = [0.01, 0.1, 0.5, 1.0, 2.0, 10.0, 1000.0]
U_GRID = torch.cat([
    torch.linspace(0, 1, 4001, dtype=torch.float64),
    torch.logspace(-10, -1, 50, dtype=torch.float64),
    0.5 - torch.logspace(-10, -1, 50, dtype=torch.float64),
])
U_GRID = torch.cat([U_GRID, 1 - U_GRID]).float()  # the float32 values rand() produces


@pytest.mark.parametrize("a", A_VALUES)
def test_beta_icdf_matches_scipy_scalar_a(a):
    got = beta_icdf(U_GRID, a)
    assert got.dtype == torch.float32 and got.shape == U_GRID.shape
    ref = special.betaincinv(a, a, U_GRID.double().numpy())
    assert np.abs(got.double().numpy() - ref).max() <= 5e-5


def test_beta_icdf_matches_scipy_per_element_a():
    a = torch.tensor(A_VALUES).repeat_interleave(301)
    u = torch.rand(a.numel(), generator=gen(7))
    u[::301] = 0.0
    u[1::301] = 1.0
    got = beta_icdf(u, a)
    ref = special.betaincinv(a.double().numpy(), a.double().numpy(), u.double().numpy())
    assert np.abs(got.double().numpy() - ref).max() <= 5e-5
    # The per-element path agrees with the scalar path, value for value.
    for val in A_VALUES:
        m = a == val
        np.testing.assert_allclose(got[m].numpy(), beta_icdf(u[m], val).numpy(), atol=5e-6)


def test_beta_icdf_shape_endpoints_symmetry_monotonicity():
    u = torch.rand(4, 6, generator=gen(2))
    for a in (0.3, 1.0, 4.0):
        assert beta_icdf(u, a).shape == (4, 6)
        ends = beta_icdf(torch.tensor([0.0, 0.5, 1.0]), a)
        assert ends.tolist() == [0.0, 0.5, 1.0]
        np.testing.assert_allclose(beta_icdf(1 - u, a), 1 - beta_icdf(u, a), atol=1e-6)
        grid = beta_icdf(torch.linspace(0, 1, 1001), a)
        assert bool((grid.diff() >= 0).all())
    np.testing.assert_allclose(beta_icdf(u, 1.0), u, atol=1e-6)  # Beta(1, 1) is uniform


# --------------------------------------------------------------------------- simple policies


def test_none_and_constant():
    x = torch.randn(5, 3)
    p = torch.arange(5)
    assert torch.equal(LAMBDAS.build("none")(x, p), torch.ones(5))
    assert torch.equal(LAMBDAS.build("constant", value=0.2)(x, p), torch.full((5,), 0.2))


@pytest.mark.parametrize("alpha", [0.1, 0.2, 0.5, 1.0, 2.0, 8.0])
def test_beta_policy_is_beta_alpha_alpha(alpha):
    n = 20000
    lam = LAMBDAS.build("beta", alpha=alpha)(torch.zeros(n, 1), torch.arange(n), generator=gen(11))
    assert_beta(lam, alpha)


@pytest.mark.parametrize("alpha", [0.02, 0.2, 0.5, 1.0, 2.0, 7.5, 300.0])
def test_beta_strength_is_the_mean_of_min_lambda_one_minus_lambda(alpha):
    # Oracle: scipy's quadrature of E[min(λ, 1 − λ)] under Beta(α, α), float64.
    expected = 2 * integrate.quad(lambda t: t * stats.beta(alpha, alpha).pdf(t), 0, 0.5, limit=500)[0]
    assert beta_strength(alpha) == pytest.approx(expected, rel=1e-7, abs=1e-10)


@pytest.mark.parametrize("strength", [0.01, 0.05, 0.1937, 0.25, 0.36, 0.43, 0.49])
def test_strength_matched_beta_mixes_as_strongly_as_asked(strength):
    alpha = beta_alpha_for_strength(strength)
    assert beta_strength(alpha) == pytest.approx(strength, rel=1e-9)
    if strength == 0.25:
        assert alpha == pytest.approx(1.0, rel=1e-9)  # Beta(1, 1): E[min(λ, 1 − λ)] = ¼
    # the policy built from it draws λ whose mean strength is s (n = 200 000, well inside 5 standard errors)
    lam = LAMBDAS.build("beta", strength=strength)(torch.zeros(200_000, 1), torch.arange(200_000), generator=gen(7))
    m = torch.minimum(lam, 1 - lam).double()
    assert abs(float(m.mean()) - strength) < 5 * float(m.std()) / math.sqrt(m.numel())
    assert LAMBDAS.build("beta", strength=strength, alpha=3.0).alpha == pytest.approx(alpha)  # strength wins


@pytest.mark.parametrize("bad", [0.0, 0.005, 0.495, 0.5, -1])  # NaN: the registry's type check says so first
def test_strength_outside_what_alpha_can_reach_is_one_line(bad):
    with pytest.raises(ValueError, match=r"^strength=.*: expected a number in \[0.01, 0.49\]"):
        LAMBDAS.build("beta", strength=bad)


def test_beta_policy_per_batch_shares_one_draw():
    policy = LAMBDAS.build("beta", alpha=1.0, per_sample=False)
    draws = [policy(torch.zeros(8, 1), torch.arange(8), generator=gen(s)) for s in range(300)]
    assert all(bool((d == d[0]).all()) for d in draws)
    assert stats.kstest(np.array([float(d[0]) for d in draws]), stats.beta(1, 1).cdf).pvalue > 0.01


def test_automix_mean_bounds_and_distribution():
    # Seed 002: the partner gets λ_seed = ½(1 − ε)/(1 + ε), ε ~ U(0, 1); the sample keeps 1 − λ_seed.
    # mixlab's λ is the sample's own weight: λ = 1 − λ_seed ∈ [½, 1], E[λ] = 1 − (ln 2 − ½) = 1.5 − ln 2.
    n = 1_000_000
    lam = LAMBDAS.build("automix")(torch.zeros(n, 1), torch.arange(n), generator=gen(2024)).double()
    assert float(lam.min()) >= 0.5 and float(lam.max()) <= 1.0
    mean = 1.5 - math.log(2)
    second, _ = integrate.quad(lambda e: (1 - 0.5 * (1 - e) / (1 + e)) ** 2, 0, 1)
    se = math.sqrt((second - mean**2) / n)
    assert abs(float(lam.mean()) - mean) < 5 * se, (float(lam.mean()), mean, se)
    # P(λ ≤ l) = P(½(1 − ε)/(1 + ε) ≥ 1 − l) = P(ε ≤ (2l − 1)/(3 − 2l)) on [½, 1].
    sub = lam[:20000].numpy()
    assert stats.kstest(sub, lambda l: np.clip((2 * l - 1) / (3 - 2 * l), 0, 1)).pvalue > 0.01


def test_automix_every_sample_dominates_its_own_example_under_any_pairing():
    # With the seed's convention given to the sample itself, a non-permutation pairing (nearest)
    # left many samples dominating no mixed example at all (81/128 on digits did dominate one).
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().data[:128], dtype=torch.float32)
    mix = Mix(lam="automix", pairing="nearest", num_classes=10, generator=gen(3))
    mix(x, torch.zeros(128, dtype=torch.long))
    lam, partner = mix.last.lam, mix.last.partner
    assert not bool(torch.equal(partner.sort().values, torch.arange(128)))  # nearest is not a permutation
    own = lam >= 0.5  # example i is led by sample i
    led_by_partner = torch.zeros(128, dtype=torch.bool).index_fill_(0, partner[lam < 0.5], True)
    assert int((own | led_by_partner).sum()) == 128


# --------------------------------------------------------------------------- distance (seed 000 §4.1)


def pairs_at_increasing_distance(n: int, radius: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """2n points: anchor 2i at (r, 0), its partner 2i+1 at angle θ_i, θ increasing in (0, π).

    The Euclidean, squared Euclidean and cosine distances of pair i all increase with i.
    """
    theta = np.linspace(0.1, 3.0, n)
    x = np.zeros((2 * n, 2))
    x[0::2] = [radius, 0.0]
    x[1::2, 0], x[1::2, 1] = radius * np.cos(theta), radius * np.sin(theta)
    partner = np.arange(2 * n) ^ 1  # 2i <-> 2i+1
    return torch.tensor(x, dtype=torch.float32), torch.tensor(partner), theta


@pytest.mark.parametrize("normalize", ["mean", "median", "none"])
@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("map_", ["exp", "inverse", "gaussian"])
def test_distance_lambda_strictly_decreases_with_distance(map_, metric, normalize):
    x, partner, _ = pairs_at_increasing_distance(12)
    policy = LAMBDAS.build("distance", map=map_, metric=metric, normalize=normalize, temperature=2.0)
    lam = policy(x, partner)[0::2]
    assert bool((lam.diff() < 0).all()), lam
    assert bool(torch.equal(lam, policy(x, partner)[1::2]))  # symmetric pairs, same λ


def _expected(d: np.ndarray, map_: str, tau: float) -> np.ndarray:
    z = d / tau
    return {"exp": np.exp(-z), "inverse": 1 / (1 + z), "gaussian": np.exp(-(z**2))}[map_]


@pytest.mark.parametrize("map_", ["exp", "inverse", "gaussian"])
@pytest.mark.parametrize("normalize", ["none", "mean", "median"])
@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_distance_formula_exact(map_, normalize, tau):
    # Pairs (0, d_i e_1): the Euclidean pair distance is d_i exactly. The scale is a statistic of
    # all 66 pairs of the 12 points (scipy's pdist, float64), not of the 12 chosen ones.
    d = np.array([0.0, 0.05, 0.3, 1.0, 1.7, 2.5])
    x = torch.zeros(12, 3)
    x[1::2, 0] = torch.tensor(d, dtype=torch.float32)
    partner = torch.arange(12) ^ 1
    lam = LAMBDAS.build("distance", map=map_, normalize=normalize, temperature=tau)(x, partner).double().numpy()
    dd = np.repeat(d, 2)
    all_pairs = pdist(x.double().numpy())
    if normalize != "none":
        dd = dd / {"mean": np.mean, "median": np.median}[normalize](all_pairs)
    np.testing.assert_allclose(lam, _expected(dd, map_, tau), rtol=1e-5, atol=1e-7)
    if map_ == "exp" and normalize == "none" and tau == 1.0:  # the seed's literal λ = e^(−d)
        np.testing.assert_allclose(lam, np.exp(-dd), rtol=1e-6)


@pytest.mark.parametrize("how", ["mean", "median"])
@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("b", [2, 3, 64, 129])
def test_batch_distance_scale_matches_scipy_pdist(how, metric, b):
    # The all-pairs statistic against a float64 oracle; the median of an even count is the mean of
    # the two middle values (torch.median would return the lower one). Data with a large common
    # offset: the closed forms must not cancel catastrophically.
    x = torch.randn(b, 3, 4, 4, generator=gen(b)) + 5.0
    z = x.flatten(1).double().numpy()
    ref = {"mean": np.mean, "median": np.median}[how](pdist(z, metric))
    got = float(batch_distance_scale(x, metric, how))
    assert got == pytest.approx(ref, rel=2e-5)


def test_batch_distance_scale_true_median_for_an_even_number_of_pairs():
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]])  # 6 pairs: 1, 2, 3, 4, 6, 7 -> median 3.5
    assert float(batch_distance_scale(x, "euclidean", "median")) == 3.5
    assert float(batch_distance_scale(x[:1], "euclidean", "mean")) == 1.0  # no pair: scale 1


@pytest.mark.parametrize("name, kw", [("distance", {}), ("distance", {"normalize": "median"}), ("sk", {})])
def test_distance_based_lambda_sees_the_pairing(name, kw):
    # Dividing by the chosen pairs' own mean made nearest and farthest pairs both ≈ 1: mean λ was
    # 0.381 under nearest and 0.368 under farthest on digits (B = 128), farthest's sd 0.021.
    # Against the batch's all-pairs scale, nearest pairs mix little (λ near 1; for sk, far from ½)
    # and farthest ones a lot or, for sk, little again (τ small: λ near 0 or 1): the pairing shows.
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().data[:128], dtype=torch.float32)
    lam = {p: Mix(lam=name, pairing=p, num_classes=10, lam_kwargs=kw, generator=gen(4)) for p in ("nearest", "farthest")}
    for m in lam.values():
        m(x, torch.zeros(128, dtype=torch.long))
    near, far = lam["nearest"].last.lam, lam["farthest"].last.lam
    if name == "distance":
        assert float(near.mean()) > float(far.mean()) + 0.3, (float(near.mean()), float(far.mean()))
    else:  # sk: strength min(λ, 1 − λ) is larger for near pairs (τ large) than for far ones (τ small)
        s_near, s_far = torch.minimum(near, 1 - near).mean(), torch.minimum(far, 1 - far).mean()
        assert float(s_near) > float(s_far) + 0.1, (float(s_near), float(s_far))


@pytest.mark.parametrize("normalize", ["mean", "median", "none"])
@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
def test_distance_identical_pairs_give_lambda_one(metric, normalize):
    # d = 0 exactly (no negative round-off: 1 − cos can come out as −2e-7, which the batch
    # normalisation d / max(mean d, 1e-12) used to turn into λ = inf).
    # (1 − cos of a row with itself is 0 up to ±1e-7 in float32, so only the range is exact there;
    # a self-pair mixes to itself whatever λ is.)
    x = torch.randn(64, 75, generator=gen(12))
    lam = LAMBDAS.build("distance", metric=metric, normalize=normalize)(x, torch.arange(64))
    assert bool(((lam >= 0) & (lam <= 1)).all())
    if metric != "cosine":
        assert torch.equal(lam, torch.ones(64))
    elif normalize == "none":
        assert float(lam.min()) >= 1 - 1e-6


def test_distance_raw_form_degenerates_on_fashion_mnist_like_images():
    # 28×28 images normalised with Fashion-MNIST's mean/std: raw Euclidean distances are ~20-40,
    # so the seed's λ = e^(−d) is ~0 (every sample replaced by its partner); normalize='mean' is not.
    g = gen(28)
    ink = (torch.rand(64, 1, 28, 28, generator=g) < 0.5).float() * torch.rand(64, 1, 28, 28, generator=g)
    x = (ink - 0.286) / 0.353
    partner = torch.randperm(64, generator=g)
    d = (x - x[partner]).flatten(1).norm(dim=1)
    assert float(d.min()) > 15
    raw = LAMBDAS.build("distance", normalize="none")(x, partner)
    assert float(raw.max()) < 1e-6
    norm = LAMBDAS.build("distance")(x, partner)
    assert 0.2 < float(norm.mean()) < 0.6


def test_distance_feature_space_uses_features():
    x = torch.randn(8, 5)
    feats = torch.randn(8, 3)
    partner = torch.arange(8).roll(1)
    policy = LAMBDAS.build("distance", space="feature", normalize="none")
    d = (feats - feats[partner]).norm(dim=1)
    np.testing.assert_allclose(policy(x, partner, features=feats), torch.exp(-d), rtol=1e-6)
    with pytest.raises(ValueError, match="features"):
        policy(x, partner)


# --------------------------------------------------------------------------- loss (seed 000 §4.2)


def test_loss_lambda_rises_as_loss_falls_and_matches_float64_ema():
    policy = LAMBDAS.build("loss", momentum=0.9)
    x, p = torch.zeros(4, 2), torch.arange(4)
    policy.setup(num_classes=10)  # before any feedback: a uniform predictor's loss, ln 10
    np.testing.assert_allclose(policy(x, p).numpy(), 1 / (1 + math.log(10)), rtol=1e-6)
    rng = np.random.default_rng(0)
    ema, prev = None, -1.0
    for step in range(60):
        losses = rng.uniform(0.5, 1.5, size=16) * 3.0 * math.exp(-step / 10)  # falling loss
        policy.observe(torch.tensor(losses, dtype=torch.float32))
        mean = float(np.mean(np.float32(losses), dtype=np.float64))
        ema = mean if ema is None else 0.9 * ema + 0.1 * mean
        lam = policy(x, p)
        assert lam.dtype == torch.float32 and bool((lam == lam[0]).all())
        np.testing.assert_allclose(float(lam[0]), 1.0 / (1.0 + ema), rtol=2e-6)  # seed: λ = 1/(1 + L)
        if step >= 5:  # the EMA lags; once it tracks the falling loss λ rises step by step
            assert float(lam[0]) > prev
        prev = float(lam[0])


@pytest.mark.parametrize("signal", ["excess", "ce"])
def test_loss_signal_is_the_excess_over_the_mixed_targets_entropy(signal):
    # Through Mix, as the loop feeds it: per-sample soft-target CE of the batch it just mixed.
    # excess = CE(ỹ, p) − H(ỹ) = KL(ỹ ‖ p) (scipy's rel_entr as the float64 oracle); the seed's
    # literal CE cannot fall below H(ỹ), so even a perfect predictor p = ỹ leaves λ < 1 with it.
    b, c = 256, 10
    y = torch.randint(0, c, (b,), generator=gen(1))
    mix = Mix(lam="beta", pairing="random", num_classes=c, generator=gen(2))
    loss_mix = Mix(lam="loss", pairing="random", num_classes=c, lam_kwargs={"signal": signal, "momentum": 0.0})
    loss_mix.lam_policy, base = loss_mix.lam_policy, loss_mix.lam_policy
    _, y_mix = loss_mix.__class__.__call__(mix, torch.zeros(b, 1), y)  # mix with Beta(1, 1) λ
    loss_mix.last = mix.last
    for p in (y_mix, torch.softmax(torch.randn(b, c, generator=gen(3)), 1)):  # perfect, then some predictor
        ce = -(y_mix * p.clamp_min(1e-30).log()).sum(1)
        loss_mix.observe(ce)
        kl = special.rel_entr(y_mix.double().numpy(), p.double().numpy()).sum(1)
        entropy = special.entr(y_mix.double().numpy()).sum(1)
        expected = kl.mean() if signal == "excess" else (kl + entropy).mean()
        assert float(base.ema) == pytest.approx(expected, rel=1e-4, abs=1e-5)
    if signal == "excess":  # the perfect predictor gave λ = 1 (first observation)
        loss_mix.observe(-(y_mix * y_mix.clamp_min(1e-30).log()).sum(1))
        assert torch.equal(base(torch.zeros(3, 1), torch.arange(3)), torch.ones(3))
    else:
        assert float(base(torch.zeros(3, 1), torch.arange(3))[0]) < 1 / (1 + float(entropy.mean())) + 1e-6


def test_loss_prior_is_a_uniform_predictors_loss_so_the_first_batch_is_mixed():
    mix = Mix(lam="loss", pairing="random", num_classes=10)
    mix.setup(num_samples=100)
    x_mix, _ = mix(torch.randn(8, 3, generator=gen(5)), torch.arange(8))
    np.testing.assert_allclose(mix.last.lam.numpy(), 1 / (1 + math.log(10)), rtol=1e-6)  # not λ = 1
    reg = Mix(lam="loss", pairing="random")  # regression: predicting the mean of standardised targets
    reg.setup(num_samples=100)
    reg(torch.randn(8, 3, generator=gen(5)), torch.randn(8))
    np.testing.assert_allclose(reg.last.lam.numpy(), 0.5)
    fixed = Mix(lam="loss", num_classes=10, lam_kwargs={"init_loss": 0.0})
    fixed.setup(num_samples=100)
    fixed(torch.randn(8, 3), torch.arange(8))
    assert torch.equal(fixed.last.lam, torch.ones(8))


def test_loss_exp_map_and_temperature():
    policy = LAMBDAS.build("loss", map="exp", temperature=2.0)
    policy.observe(torch.tensor([1.0, 3.0]))
    np.testing.assert_allclose(float(policy(torch.zeros(3, 1), torch.arange(3))[0]), math.exp(-1.0), rtol=1e-6)


def test_loss_per_sample_uses_last_loss_and_ema_for_unseen():
    policy = LAMBDAS.build("loss", per_sample=True, momentum=0.5)
    policy.setup(num_samples=10)
    x, p = torch.zeros(4, 1), torch.arange(4)
    policy.observe(torch.tensor([1.0, 3.0]), torch.tensor([2, 5]))  # ema = 2
    policy.observe(torch.tensor([0.5, 1.5]), torch.tensor([2, 7]))  # ema = 0.5·2 + 0.5·1 = 1.5
    lam = policy(x, p, index=torch.tensor([2, 5, 7, 0]))
    expected = 1 / (1 + np.array([0.5, 3.0, 1.5, 1.5]))  # last loss of 2, 5, 7; index 0 unseen: EMA
    np.testing.assert_allclose(lam.numpy(), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="index"):
        policy(x, p)


def test_loss_state_dict_round_trip_through_mix():
    mix = Mix(lam="loss", pairing="random", num_classes=3, lam_kwargs={"per_sample": True, "num_samples": 6})
    mix.observe(torch.tensor([0.2, 0.9]), torch.tensor([1, 4]))
    other = Mix(lam="loss", pairing="random", num_classes=3, lam_kwargs={"per_sample": True, "num_samples": 6})
    other.load_state_dict(mix.state_dict())
    x, idx = torch.zeros(6, 1), torch.arange(6)
    assert torch.equal(mix.lam_policy(x, idx, index=idx), other.lam_policy(x, idx, index=idx))


# --------------------------------------------------------------------------- sk (SK-Mixup)


def equidistant_draws(policy, batches: int = 60, b: int = 100, seed: int = 0) -> torch.Tensor:
    """λ of ``batches`` batches of one-hot rows: every pair of a batch is at the same distance, so
    d̃ = 1 and τ = τ_max for every pair, whatever the pairing and the all-pairs scale."""
    x, partner = torch.eye(b), torch.arange(b).roll(1)
    return torch.cat([policy(x, partner, generator=gen(seed + k)) for k in range(batches)])


@pytest.mark.parametrize("tau_max", [0.5, 1.0, 3.0])
def test_sk_with_alpha_one_is_beta_tau_tau(tau_max):
    # α = 1: λ' is uniform and the inverse-CDF warp gives λ ~ Beta(τ, τ) exactly (the paper's aim).
    policy = LAMBDAS.build("sk", alpha=1.0, tau_max=tau_max)
    d = torch.full((10,), 2.0)
    assert torch.allclose(policy.tau(d), torch.tensor(tau_max))
    assert_beta(equidistant_draws(policy), tau_max)


@pytest.mark.parametrize("alpha", [0.1, 0.2, 0.4, 3.0])
def test_sk_at_tau_one_leaves_the_beta_alpha_draw_alone(alpha):
    # τ = 1: ω_τ = F⁻¹ of Beta(1, 1), the identity, so λ ~ Beta(α, α) for every α (and no pile
    # at λ = 1 beyond float32's own rounding, which assert_beta models).
    assert_beta(equidistant_draws(LAMBDAS.build("sk", alpha=alpha, tau_max=1.0)), alpha)


def test_sk_with_other_alpha_warps_a_beta_alpha_draw():
    # λ = F⁻¹_τ(F⁻¹_α(u)) -> P(λ ≤ l) = F_α(F_τ(l)).
    alpha, tau = 0.4, 2.0
    lam = equidistant_draws(LAMBDAS.build("sk", alpha=alpha, tau_max=tau)).double().numpy()
    cdf = lambda l: stats.beta(alpha, alpha).cdf(stats.beta(tau, tau).cdf(l))  # noqa: E731
    assert stats.kstest(lam, cdf).pvalue > 0.01


@pytest.mark.parametrize("alpha", [0.1, 0.2])
def test_sk_small_alpha_is_symmetric_and_matches_scipys_warp_of_the_same_draw(alpha):
    # The bug: λ' ~ Beta(α, α) was rounded to float32 before the warp, so every λ' within 3e-8 of 1
    # became 1.0 and ω_τ(1.0) = 1: with τ = 3 ~3% (α = 0.2) of draws sat at exactly λ = 1 and none
    # near 0, where ω_3 maps the same tail mass to λ ≈ 1e-3. Oracle: scipy's Beta ppf in float64
    # of the same uniforms, through the lower tail (ω_τ(1 − t) = 1 − ω_τ(t) by symmetry).
    tau, b = 3.0, 100
    policy = LAMBDAS.build("sk", alpha=alpha, tau_max=tau)
    lam = equidistant_draws(policy, b=b).double().numpy()
    u = torch.cat([torch.rand(b, generator=gen(k)) for k in range(60)]).double().numpy()
    lower = stats.beta(tau, tau).ppf(stats.beta(alpha, alpha).ppf(np.minimum(u, 1 - u)))
    expected = np.where(u > 0.5, 1 - lower, lower)
    np.testing.assert_allclose(lam, expected, atol=2e-5)
    near_one, near_zero = int((lam > 1 - 1e-3).sum()), int((lam < 1e-3).sum())
    assert abs(near_one - near_zero) < 4 * math.sqrt(near_one + near_zero + 1), (near_one, near_zero)
    assert int((lam == 1.0).sum()) < 0.002 * lam.size  # float32 rounding of λ itself only


def test_sk_tau_is_the_papers_gaussian_kernel():
    # τ = τ_max · exp(−(d̃ − 1)/(2 τ_std²)), d̃ = d / mean(d) (Bouniot et al.; torch-uncertainty's
    # sim_gauss_kernel), checked at points where it has known values rather than by restating it:
    # τ(d̃ = 1) = τ_max; τ(d̃ = 1 + 2τ_std²) = τ_max/e; τ(d̃ = 1 − 2τ_std² ln 2) = 2τ_max; clipped at 0.01.
    tau_max, tau_std = 1.5, 0.4
    policy = LAMBDAS.build("sk", tau_max=tau_max, tau_std=tau_std)
    dn = np.array([1.0, 1 + 2 * tau_std**2, 1 - 2 * tau_std**2 * math.log(2), 40.0])
    got = policy.tau(torch.tensor(dn, dtype=torch.float32), 1.0).double().numpy()
    np.testing.assert_allclose(got, [tau_max, tau_max / math.e, 2 * tau_max, 0.01], rtol=1e-5)
    # the default scale is the mean of d itself; in the policy it is the batch's all-pairs mean
    d = torch.tensor([0.5, 1.0, 1.5])
    np.testing.assert_allclose(policy.tau(d).numpy(), policy.tau(d, 1.0).numpy())
    x = torch.tensor([[0.0], [1.0], [3.0]])  # squared distances 1, 9, 4 over the 3 pairs: mean 14/3
    partner = torch.tensor([1, 2, 0])
    lam_tau = policy.tau((x - x[partner]).square().sum(1), 14 / 3)
    with torch.no_grad():  # the policy's λ for these pairs is scipy's ppf at that τ of its own λ'
        u = torch.rand(3, generator=gen(9)).double().numpy()
        lam = policy(x, partner, generator=gen(9)).double().numpy()
    lower = stats.beta(lam_tau.double().numpy(), lam_tau.double().numpy()).ppf(np.minimum(u, 1 - u))
    np.testing.assert_allclose(lam, np.where(u > 0.5, 1 - lower, lower), atol=2e-5)


def test_sk_close_pairs_mix_more_than_distant_ones():
    n = 6000
    x = torch.zeros(n, 1)
    x[1::2] = torch.where(torch.arange(n // 2) % 2 == 0, 0.5, 1.5)[:, None]  # two distance groups
    lam = LAMBDAS.build("sk")(x, torch.arange(n) ^ 1, generator=gen(8))[0::2]
    near, far = lam[0::2], lam[1::2]
    assert float((near - 0.5).abs().mean()) < float((far - 0.5).abs().mean()) - 0.05


# --------------------------------------------------------------------------- schedule


@pytest.mark.parametrize("shape", ["linear", "cosine"])
def test_schedule_alpha_endpoints_and_monotonicity(shape):
    policy = LAMBDAS.build("schedule", alpha_start=1.0, alpha_end=0.1, shape=shape)
    assert policy.alpha(0.0) == pytest.approx(1.0)
    assert policy.alpha(1.0) == pytest.approx(0.1)
    assert policy.alpha(0.5) == pytest.approx(0.55)  # both shapes cross the midpoint at t = ½
    a = np.array([policy.alpha(t) for t in np.linspace(0, 1, 101)])
    assert (np.diff(a) < 0).all()
    if shape == "linear":
        np.testing.assert_allclose(a, 1.0 - 0.9 * np.linspace(0, 1, 101))
    else:
        np.testing.assert_allclose(a, 1.0 - 0.9 * (1 - np.cos(np.pi * np.linspace(0, 1, 101))) / 2)
    rising = LAMBDAS.build("schedule", alpha_start=0.2, alpha_end=2.0, shape=shape)
    assert (np.diff([rising.alpha(t) for t in np.linspace(0, 1, 11)]) > 0).all()


def test_schedule_draws_from_beta_alpha_t():
    n = 20000
    policy = LAMBDAS.build("schedule", alpha_start=1.0, alpha_end=0.1)
    assert_beta(policy(torch.zeros(n, 1), torch.arange(n), progress=1.0, generator=gen(9)), 0.1)
    assert_beta(policy(torch.zeros(n, 1), torch.arange(n), progress=0.0, generator=gen(9)), 1.0)


@pytest.mark.parametrize("progress", [None, -0.1, 1.5])
def test_schedule_needs_progress_in_unit_interval(progress):
    with pytest.raises(ValueError, match="progress"):
        LAMBDAS.build("schedule")(torch.zeros(2, 1), torch.arange(2), progress=progress)


# --------------------------------------------------------------------------- option validation


@pytest.mark.parametrize("name,kwargs,shown", [
    ("beta", {"alpha": 0.0}, "0.0"),
    ("beta", {"alpha": -1.0}, "-1.0"),
    ("beta", {"alpha": float("inf")}, "inf"),
    ("sk", {"alpha": 0}, "0"),
    ("sk", {"tau_max": -2.0}, "-2.0"),
    ("sk", {"tau_std": 0.0}, "0.0"),
    ("schedule", {"alpha_end": 0.0}, "0.0"),
    ("distance", {"temperature": 0.0}, "0.0"),
    ("distance", {"temperature": -0.5}, "-0.5"),
    ("loss", {"temperature": 0.0}, "0.0"),
    ("loss", {"momentum": 1.0}, "1.0"),
    ("distance", {"metric": "manhattan"}, "manhattan"),
    ("sk", {"metric": "l1"}, "l1"),
    ("distance", {"map": "linear"}, "linear"),
    ("distance", {"normalize": "max"}, "max"),
    ("constant", {"value": 1.5}, "1.5"),
])
def test_invalid_options_are_value_errors_showing_the_value(name, kwargs, shown):
    with pytest.raises(ValueError, match=shown.replace(".", r"\.")):
        LAMBDAS.build(name, **kwargs)


@pytest.mark.parametrize("name", ALL)
def test_misspelled_option_is_named(name):
    with pytest.raises(ValueError, match="temprature"):
        LAMBDAS.build(name, temprature=1.0)


@settings(max_examples=25, deadline=None)
@given(alpha=st.floats(0.05, 20.0), b=st.integers(1, 64), seed=st.integers(0, 2**31 - 1))
def test_beta_policy_range_property(alpha, b, seed):
    lam = LAMBDAS.build("beta", alpha=alpha)(torch.zeros(b, 2), torch.arange(b), generator=gen(seed))
    assert lam.shape == (b,) and lam.dtype == torch.float32
    assert bool(((lam >= 0) & (lam <= 1)).all())
