"""Fidelity of SK-Mixup and C-Mixup to their published definitions (the audit's items 2 and 3).

Every reference here is float64, written from the published formulas and the reference code's math
(scipy's Beta distribution, sklearn's ``KernelDensity``), never from mixlab's own output:

- SK-Mixup (Bouniot et al., ICLR 2025). The authors' code, github.com/qbouniot/sim_kernel_mixup,
  ``classification/torch_uncertainty/transforms/mixup.py``: ``KernelMixup.__call__`` computes
  d̃ = d / mean(d), τ = ``sim_gauss_kernel`` = τ_max·exp(−(d̃ − 1)/(2τ_std²)), then ``beta_warping``:
  ``scipy.stats.beta.ppf(λ', τ, τ)`` for ``warping="inverse_beta_cdf"`` (every published
  ``sk_mixup.yaml``) or ``scipy.stats.beta.cdf(λ', 1/τ, 1/τ)`` for ``"beta_cdf"`` (the class default).
  torch-uncertainty, ``torch_uncertainty/transforms/mixup.py``, ``WarpingMixup.forward``: the CDF, with
  1/(τ_max·exp(−(d − 1)/(2τ_std²·mean(d))) + 1e-12) as the Beta parameter.
- C-Mixup (Yao et al., 2022), github.com/huaxiuyao/C-Mixup, ``src/algorithm.py``:
  ``get_mixup_sample_rate`` (P(j | i) over the training set from a Gaussian ``KernelDensity`` of
  bandwidth σ fitted on y_i), ``train`` (``idx_2`` drawn from those rates, one
  ``lambd = np.random.beta(α, α)`` per batch).

New names are imported inside the tests, so on a mixlab without them each test fails on its own line.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.spatial.distance import pdist

from mixlab import LAMBDAS, PAIRINGS
from mixlab.tasks.metrics import lam_stats

from .test_config import compose_cfg

ROOT = Path(__file__).resolve().parents[1]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sk_reference(x: np.ndarray, partner: np.ndarray, u: np.ndarray, *, alpha: float, tau_max: float,
                 tau_std: float, warp: str) -> np.ndarray:
    """SK-Mixup's λ in float64 for rows ``x``, partners and the uniforms ``u`` behind λ' ~ Beta(α, α).

    d: squared Euclidean distance of each pair (the reference code's ``.pow(2).sum``); d̄: the mean over
    all pairs of the batch (mixlab's documented choice; the reference divides by the chosen pairs' mean,
    equal in expectation under its random permutation). λ' = F⁻¹_α(u), warped through its distance to
    the nearer end (both warps are odd about ½)."""
    d = ((x - x[partner]) ** 2).sum(1)
    d_bar = pdist(x, "sqeuclidean").mean()
    tau = tau_max * np.exp(-(d / d_bar - 1.0) / (2.0 * tau_std**2))
    t = stats.beta(alpha, alpha).ppf(np.minimum(u, 1.0 - u))
    if warp == "inverse_cdf":
        tau = np.clip(tau, 0.01, 1000.0)
        lower = stats.beta(tau, tau).ppf(t)
    else:
        w = np.clip(1.0 / tau, 0.01, 1000.0)
        lower = stats.beta(w, w).cdf(t)
    return np.where(u > 0.5, 1.0 - lower, lower)


# --------------------------------------------------------------------------- item 2: SK-Mixup's warp


@pytest.mark.parametrize("warp", ["inverse_cdf", "cdf"])
@pytest.mark.parametrize("alpha,tau_max,tau_std", [(1.0, 1.0, 0.5), (0.2, 0.66, 0.48), (2.0, 3.0, 1.0)])
def test_sk_warp_is_the_reference_codes_beta_ppf_or_cdf_of_the_same_draw(warp, alpha, tau_max, tau_std):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(96, 12)) * np.linspace(0.2, 2.0, 96)[:, None]  # a wide spread of pair distances
    partner = torch.randperm(96, generator=gen(4))
    policy = LAMBDAS.build("sk", alpha=alpha, tau_max=tau_max, tau_std=tau_std, warp=warp)
    lam = policy(torch.tensor(x, dtype=torch.float32), partner, generator=gen(5)).double().numpy()
    u = torch.rand(96, generator=gen(5)).double().numpy()  # the policy's own uniforms
    expected = sk_reference(x.astype(np.float32).astype(np.float64), partner.numpy(), u, alpha=alpha,
                            tau_max=tau_max, tau_std=tau_std, warp=warp)
    np.testing.assert_allclose(lam, expected, atol=3e-5)
    assert np.abs(np.minimum(lam, 1 - lam) - np.minimum(expected, 1 - expected)).max() < 3e-5


def test_sk_cdf_warp_at_unit_mean_distance_is_torch_uncertaintys_warping_mixup_literally():
    # torch-uncertainty's sim_gauss_kernel: τ_max·exp(−(d − 1)/(2τ_std²·mean(d))), Beta(1/τ + 1e-12)'s CDF
    # of λ'. With 3 rows under roll pairing the chosen pairs are all the pairs, and scaled to mean(d) = 1
    # its kernel is the authors' d̃ kernel: the two agree to the last digit that float32 keeps.
    tau_max, tau_std = 1.3, 0.45
    x = np.array([[0.0, 0.0], [1.0, 0.2], [0.3, 1.4]])
    partner = np.array([2, 0, 1])
    d = ((x - x[partner]) ** 2).sum(1)
    x = x / np.sqrt(d.mean())
    d = ((x - x[partner]) ** 2).sum(1)
    assert d.mean() == pytest.approx(1.0)
    for seed in range(20):
        u = torch.rand(3, generator=gen(seed)).double().numpy()
        lam_prime = stats.beta(0.7, 0.7).ppf(u)
        w = 1.0 / (tau_max * np.exp(-(d - 1.0) / (np.mean(d) * 2.0 * tau_std * tau_std)) + 1e-12)
        expected = stats.beta.cdf(lam_prime, a=w + 1e-12, b=w + 1e-12)
        policy = LAMBDAS.build("sk", alpha=0.7, tau_max=tau_max, tau_std=tau_std, warp="cdf")
        lam = policy(torch.tensor(x, dtype=torch.float32), torch.tensor(partner), generator=gen(seed))
        np.testing.assert_allclose(lam.double().numpy(), expected, atol=3e-5)


def test_sk_defaults_to_the_authors_published_inverse_cdf_and_the_config_says_so():
    from mixlab.engine.lam import SK_WARPS

    assert SK_WARPS == ("inverse_cdf", "cdf")
    assert LAMBDAS.build("sk").warp == "inverse_cdf"
    cfg = compose_cfg("lambda=sk")
    assert cfg.lam.warp == "inverse_cdf"
    with pytest.raises(ValueError, match=r"warp='ppf': expected one of \['inverse_cdf', 'cdf'\]"):
        LAMBDAS.build("sk", warp="ppf")


def test_beta_cdf_lower_matches_scipy_over_the_clipped_range():
    from mixlab.engine.lam import beta_cdf_lower

    t = np.concatenate([np.linspace(0.0, 0.5, 2001), np.geomspace(1e-300, 0.5, 400)])
    for a in [0.01, 0.05, 0.3, 1.0, 2.0, 7.4, 30.0, 100.0, 1000.0]:
        expected = stats.beta(a, a).cdf(t)
        np.testing.assert_allclose(beta_cdf_lower(torch.tensor(t), a).numpy(), expected, atol=2e-5, rtol=0)
        per_element = beta_cdf_lower(torch.tensor(t), torch.full((t.size,), a, dtype=torch.float64)).numpy()
        np.testing.assert_allclose(per_element, expected, atol=2e-5, rtol=0)
        if a <= 1:  # steep at the ends: a draw 1e-40 from an end keeps its digits
            tiny = t < 1e-6
            np.testing.assert_allclose(beta_cdf_lower(torch.tensor(t[tiny]), a).numpy(), expected[tiny], rtol=1e-5)


def _digits_strengths(pairing: str, batches: int = 40) -> dict[str, float]:
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().data, dtype=torch.float32)
    x = (x - x.mean()) / x.std()
    pair, out = PAIRINGS.build(pairing), {}
    for warp in ("inverse_cdf", "cdf"):
        policy, s = LAMBDAS.build("sk", warp=warp), []
        for k in range(batches):
            xb = x[torch.randperm(x.shape[0], generator=gen(k))[:128]]
            lam = policy(xb, pair(xb, generator=gen(1000 + k)), generator=gen(2000 + k)).double()
            s.append(torch.minimum(lam, 1 - lam).mean())
        out[warp] = float(torch.stack(s).mean())
    return out


def test_sk_warps_mix_alike_under_random_pairing_and_the_inverse_less_under_farthest():
    # What the docstring and README say, at the defaults on standardised digits, batches of 128
    # (300 batches: −1.7% and −12%)
    rnd, far = _digits_strengths("random"), _digits_strengths("farthest")
    assert abs(rnd["inverse_cdf"] / rnd["cdf"] - 1) < 0.03
    assert -0.17 < far["inverse_cdf"] / far["cdf"] - 1 < -0.07


def test_sk_warp_is_validated_in_one_line_and_the_committed_sk_runs_predate_it():
    from mixlab.run.config import ConfigError, validate

    with pytest.raises(ConfigError, match=r"^lam\.warp='ppf': expected inverse_cdf \| cdf$"):
        validate(compose_cfg("lambda=sk", "lam.warp=ppf"))
    validate(compose_cfg("lambda=sk", "lam.warp=cdf"))
    # fashion_1k's sk arm and its tuning ran before lam.warp existed: the inverse CDF, the only form then
    # (docs/results/fashion_1k/README.md says so); a run made now records its warp
    configs = [json.loads(p.read_text())["config"] for p in (ROOT / "docs" / "results").rglob("summary.json")]
    sk = [c["lam"] for c in configs if c["lam"]["name"] == "sk"]  # 8 seeds and 6 tuning trials
    sk += [c["study"]["control_of"] for c in configs if ((c.get("study") or {}).get("control_of") or {}).get("name") == "sk"]
    assert len(sk) == 14 + 8 and not any("warp" in lam for lam in sk)


# --------------------------------------------------------------------------- item 3: C-Mixup


@pytest.mark.parametrize("k", [1, 2])
def test_label_kernel_set_draw_is_cmixups_get_mixup_sample_rate_over_the_training_set(k):
    # The official --mixtype kde: P(j | i) = exp(KernelDensity(gaussian, σ).fit(y_i).score_samples(y_j)),
    # normalised over the whole training set, the sample itself included; partners are dataset indices.
    from sklearn.neighbors import KernelDensity

    sigma, n = 0.4, 30
    y_set = torch.tensor(np.random.default_rng(7).normal(size=(n, k)) if k > 1 else
                         np.random.default_rng(7).normal(size=n))
    anchors = torch.tensor([0, 5, 11, 29])  # dataset indices of a batch
    rate = []
    for i in anchors.tolist():
        yi = y_set[i].reshape(1, -1).numpy()
        kd = KernelDensity(kernel="gaussian", bandwidth=sigma).fit(yi)
        r = np.exp(kd.score_samples(y_set.reshape(n, -1).numpy()))
        rate.append(r / r.sum())
    rate = np.array(rate)
    pairing = PAIRINGS.build("label_kernel", sigma=sigma)
    draws = 20000
    batch = y_set.float()[anchors.repeat(draws // 4)]
    j = pairing.draw_from_set(batch, y_set.float(), generator=gen(11))
    assert j.dtype == torch.long and j.shape == (draws,) and 0 <= int(j.min()) and int(j.max()) < n
    counts = np.zeros((4, n))
    np.add.at(counts, (np.tile(np.arange(4), draws // 4), j.numpy()), 1)
    freq = counts / counts.sum(1, keepdims=True)
    se = np.sqrt(rate * (1 - rate) / (draws // 4))
    assert (np.abs(freq - rate) <= 5 * se + 1e-9).all(), np.abs(freq - rate).max()
    for a in range(4):  # and a chi-square per anchor, the cells expecting fewer than 5 draws pooled
        per = draws // 4
        small = rate[a] * per < 5
        obs = np.append(counts[a, ~small], counts[a, small].sum())
        exp = np.append(rate[a, ~small], rate[a, small].sum()) * per
        assert stats.chisquare(obs[exp > 0], exp[exp > 0]).pvalue > 1e-3


def test_label_kernel_set_draw_on_class_indices_and_wrong_kinds():
    pairing = PAIRINGS.build("label_kernel", sigma=0.5)
    y_set = torch.tensor([0, 1, 1, 2, 2, 2])
    j = pairing.draw_from_set(torch.tensor([1] * 4000), y_set, generator=gen(2))
    # one-hot: ‖e_a − e_b‖² = 2 across classes; P(same class) ∝ 2 · 1 against 4 · e^(−2/(2·0.25)) = 4e^(−4)
    p_same = 2 / (2 + 4 * np.exp(-4.0))
    assert abs(float((y_set[j] == 1).double().mean()) - p_same) < 5 * np.sqrt(p_same * (1 - p_same) / 4000)
    with pytest.raises(ValueError, match="one kind"):
        pairing.draw_from_set(torch.randn(4), y_set)
    with pytest.raises(ValueError, match="one kind"):
        pairing.draw_from_set(torch.randn(4, 2), torch.randn(6, 3))


def test_official_per_batch_lambda_is_beta_per_sample_false():
    # C-Mixup's train: one lambd = np.random.beta(mix_alpha, mix_alpha) per batch (mix_alpha = 2 for
    # RCF-MNIST in src/config.py). mixlab: lambda=beta lam.per_sample=false. (Already offered before the
    # audit: this test guards it; it passes on the old code too.)
    policy = LAMBDAS.build("beta", alpha=2.0, per_sample=False)
    lams = [policy(torch.zeros(64, 1), torch.randperm(64, generator=gen(s)), generator=gen(s)) for s in range(3000)]
    assert all(bool((lam == lam[0]).all()) for lam in lams)
    first = torch.stack([lam[0] for lam in lams]).double().numpy()
    assert stats.kstest(first, stats.beta(2.0, 2.0).cdf).pvalue > 0.01


def test_a_self_pair_counts_as_unmixed_in_the_strength():
    # strength = mean over rows of min(λ, 1 − λ) where the partner is another sample, 0 where it is itself
    from mixlab.engine.lam import unmixed_self_pairs

    rng = np.random.default_rng(0)
    for b, seed in [(5, 1), (32, 2), (128, 3)]:
        lam = torch.rand(b, generator=gen(seed))
        partner = torch.tensor(rng.integers(0, b, size=b))  # many self-pairs, like label_kernel's
        partner[0] = 0
        lam64, p = lam.double().numpy(), partner.numpy()
        expected = np.where(p == np.arange(b), 0.0, np.minimum(lam64, 1 - lam64)).mean()
        got = lam_stats(unmixed_self_pairs(lam, partner))["lam_strength"]
        assert got == pytest.approx(expected, rel=1e-6, abs=1e-12)
        # rows of a gathered batch (this process's start at 2b) and dataset indices (set-level draws)
        shifted = lam_stats(unmixed_self_pairs(lam, partner + 2 * b, torch.arange(b) + 2 * b))["lam_strength"]
        assert shifted == pytest.approx(expected, rel=1e-6, abs=1e-12)
        index = torch.tensor(rng.permutation(1000)[:b])
        by_index = lam_stats(unmixed_self_pairs(lam, index[partner], index))["lam_strength"]
        assert by_index == pytest.approx(expected, rel=1e-6, abs=1e-12)


def test_the_training_loop_records_self_pairs_as_unmixed(tmp_path):
    # flip on batches of 3 pairs the middle sample with itself: with λ = 0.8 everywhere, two rows of three
    # blend (strength 0.2) and one does not (0), so lam_strength = 2/15; the λ statistics stay the draws.
    from mixlab.run.train import train

    cfg = compose_cfg("data=digits", "data.train_subset=30", "data.batch_size=3", "model=mlp", "model.hidden=[8]",
                      "device=cpu", "trainer.epochs=1", "trainer.progress=false", "pairing=flip",
                      "lambda=constant", "lam.value=0.8")
    train(cfg, tmp_path / "run")
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["lam_strength"] == pytest.approx(2 / 15, rel=1e-6)
    assert row["lam_strength_hist"][0] == 10 and sum(row["lam_strength_hist"]) == 30  # 10 self-pairs at 0
    assert row["lam_mean"] == pytest.approx(0.8) and row["lam_hist"][16] == 30  # λ drawn: 0.8 for all 30
