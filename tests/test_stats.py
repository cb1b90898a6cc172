"""mixlab.stats on constructed inputs whose answers are known."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats as sps

from mixlab.study.stats import holm, mean_ci, paired_comparison, verdict


def seeds(values) -> dict[int, float]:
    return {i: float(v) for i, v in enumerate(values)}


# ----------------------------------------------------------------------------- mean_ci


@pytest.mark.parametrize("values", [[0.1, 0.2, 0.4], [1.0, 1.5], list(np.linspace(0, 1, 17))])
def test_mean_ci_matches_scipy_t_interval(values):
    mean, std, lo, hi, n = mean_ci(values)
    assert n == len(values)
    assert mean == pytest.approx(np.mean(values))
    assert std == pytest.approx(np.std(values, ddof=1))
    want = sps.t.interval(0.95, n - 1, loc=np.mean(values), scale=sps.sem(values))
    assert (lo, hi) == pytest.approx(want)


def test_mean_ci_other_confidence():
    _, _, lo, hi, _ = mean_ci([1.0, 2.0, 4.0, 8.0], confidence=0.9)
    assert (lo, hi) == pytest.approx(sps.t.interval(0.9, 3, loc=3.75, scale=sps.sem([1, 2, 4, 8])))


def test_mean_ci_one_value_has_no_spread_and_does_not_crash():
    mean, std, lo, hi, n = mean_ci([0.7])
    assert mean == 0.7 and n == 1 and all(math.isnan(v) for v in (std, lo, hi))


def test_mean_ci_drops_missing_values_and_handles_none_left():
    assert mean_ci([0.5, None, math.nan, 0.7])[4] == 2
    mean, *_, n = mean_ci([])
    assert n == 0 and math.isnan(mean)


def test_mean_ci_rejects_bad_confidence():
    with pytest.raises(ValueError, match="expected a number in"):
        mean_ci([1.0, 2.0], confidence=95)


# ----------------------------------------------------------------------------- paired comparison


def test_identical_runs_are_no_difference_with_p_one():
    a = seeds([0.81, 0.83, 0.79, 0.85, 0.80])
    out = paired_comparison(a, dict(a))
    assert out["n"] == 5 and out["diff"] == 0.0 and out["p"] == 1.0
    assert (out["lo"], out["hi"]) == (0.0, 0.0)
    assert out["verdict"] == "no detectable difference at n=5"


def shifted(shift: float, n: int = 10, noise: float = 0.002) -> tuple[dict, dict]:
    rng = np.random.default_rng(0)
    base = 0.8 + 0.02 * rng.standard_normal(n)  # seed-to-seed spread, shared by both arms
    return seeds(base + shift + noise * rng.standard_normal(n)), seeds(base)


def test_shift_up_is_detected_better_with_ci_covering_the_shift():
    a, b = shifted(+0.05)
    out = paired_comparison(a, b)
    assert out["verdict"] == "better" and out["lo"] <= 0.05 <= out["hi"]
    assert out["diff"] == pytest.approx(0.05, abs=0.003)
    assert out["p"] == pytest.approx(sps.ttest_rel(list(a.values()), list(b.values())).pvalue)


def test_shift_down_is_detected_worse():
    a, b = shifted(-0.05)
    out = paired_comparison(a, b)
    assert out["verdict"] == "worse" and out["lo"] <= -0.05 <= out["hi"]


def test_lower_is_better_flips_the_direction():
    a, b = shifted(-0.05)
    assert paired_comparison(a, b, higher_is_better=False)["verdict"] == "better"


def test_pure_noise_is_no_detectable_difference():
    rng = np.random.default_rng(1)
    a, b = seeds(0.8 + 0.02 * rng.standard_normal(30)), seeds(0.8 + 0.02 * rng.standard_normal(30))
    assert paired_comparison(a, b)["verdict"] == "no detectable difference at n=30"


def test_pure_noise_false_positive_rate_is_about_alpha():
    rng = np.random.default_rng(2)
    hits = sum(paired_comparison(seeds(rng.standard_normal(8)), seeds(rng.standard_normal(8)))["verdict"]
               in ("better", "worse") for _ in range(400))
    assert hits / 400 < 0.09  # alpha = 0.05; 0.09 is > 4 binomial standard errors above it


def test_unmatched_seeds_are_dropped_and_n_reported():
    a = {0: 0.9, 1: 0.8, 2: 0.7, 3: 0.6}
    b = {1: 0.7, 2: 0.5, 3: 0.5, 4: 0.1}
    out = paired_comparison(a, b)
    assert out["n"] == 3 and out["seeds"] == [1, 2, 3]
    assert out["diff"] == pytest.approx((0.1 + 0.2 + 0.1) / 3)


def test_fewer_than_two_pairs_is_not_enough_seeds():
    out = paired_comparison({0: 0.9, 1: 0.8}, {1: 0.7, 5: 0.1})
    assert out["n"] == 1 and math.isnan(out["p"]) and out["verdict"] == "not enough seeds"
    assert paired_comparison({}, {})["n"] == 0


def test_constant_nonzero_difference_is_the_limit_of_the_test():
    out = paired_comparison(seeds([0.5, 0.6, 0.7]), seeds([0.4, 0.5, 0.6]))
    assert out["p"] == 0.0 and out["lo"] == pytest.approx(0.1) and out["verdict"] == "better"


# ----------------------------------------------------------------------------- verdict


def test_verdict_needs_both_adjusted_p_and_a_ci_excluding_zero():
    assert verdict(0.05, 0.01, 0.09, 0.01, n=5) == "better"
    assert verdict(-0.05, -0.09, -0.01, 0.01, n=5) == "worse"
    assert verdict(0.05, -0.01, 0.09, 0.01, n=5) == "no detectable difference at n=5"  # CI contains 0
    assert verdict(0.05, 0.01, 0.09, 0.2, n=5) == "no detectable difference at n=5"  # adjusted p too large
    assert verdict(0.05, 0.01, 0.09, math.nan, n=5) == "no detectable difference at n=5"
    assert verdict(-0.05, -0.09, -0.01, 0.01, higher_is_better=False) == "better"
    assert verdict(0.05, 0.01, 0.09, 0.01, n=1) == "not enough seeds"


# ----------------------------------------------------------------------------- Holm


def test_holm_against_a_hand_computation():
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → running max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == []


def test_holm_leaves_nan_out_of_the_count():
    out = holm([0.01, math.nan, 0.04])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)


@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=30))
def test_holm_properties(p):
    adj = holm(p)
    assert all(a >= r - 1e-15 and a <= 1.0 for a, r in zip(adj, p, strict=True))
    for i in range(len(p)):
        for j in range(len(p)):
            if p[i] < p[j]:
                assert adj[i] <= adj[j]


def test_wilcoxon_beside_the_t_test_from_six_pairs():
    from scipy import stats as sps

    a = {s: 0.80 + 0.01 * s for s in range(8)}
    b = {s: 0.79 + 0.012 * s + (0.004 if s % 3 == 0 else -0.002) for s in range(8)}
    out = paired_comparison(a, b)
    d = [a[s] - b[s] for s in range(8)]
    assert out["p_wilcoxon"] == sps.wilcoxon(d).pvalue  # seed-matched differences, two-sided
    five = paired_comparison({s: a[s] for s in range(5)}, {s: b[s] for s in range(5)})
    assert math.isnan(five["p_wilcoxon"])  # 5 pairs: the signed-rank test cannot reach 0.05 (2/32 > 0.05)
    assert math.isnan(paired_comparison(a, dict(a))["p_wilcoxon"])  # all differences 0


def test_report_says_when_the_t_test_and_wilcoxon_disagree():
    from mixlab.study.report import _test_agreement

    agree = [{"label": "x", "ref_label": "beta", "p": 0.01, "p_wilcoxon": 0.02}]
    split = agree + [{"label": "y", "ref_label": "beta", "p": 0.03, "p_wilcoxon": 0.2}]
    assert "agree" in _test_agreement(agree) and "DISAGREE" not in _test_agreement(agree)
    text = _test_agreement(split)
    assert "DISAGREE" in text and "y vs beta (t p=0.030, Wilcoxon p=0.200)" in text and "x vs" not in text
    assert "needs at least 6" in _test_agreement([{"label": "x", "ref_label": "b", "p": 0.01, "p_wilcoxon": math.nan}])
