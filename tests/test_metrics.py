"""Tests of mixlab.metrics against independent float64 NumPy references and hand-built cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mixlab.tasks.metrics import (
    Accumulator,
    classification_metrics,
    fit_temperature,
    lam_stats,
    median_last,
    regression_metrics,
    reliability,
    temperature_scaled,
)
from mixlab.tasks.metrics import TEMPERATURE_RANGE

# ----------------------------------------------------------------------------- references


def _softmax64(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def ref_ece(logits: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Guo et al. (2017) ECE written as a plain loop over right-closed bins (lo, hi]."""
    p = _softmax64(logits)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == labels).astype(np.float64)
    n = len(labels)
    ece = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        members = (conf > lo) & (conf <= hi)
        if b == 0:
            members |= conf == 0.0
        if members.any():
            ece += members.sum() / n * abs(correct[members].mean() - conf[members].mean())
    return ece


def ref_adaptive_ece(logits: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Nixon et al. (2019)'s adaptive ECE: equal-mass bins of the samples sorted by confidence (numpy's
    array_split of a stable argsort), Σ_b |B_b|/N · |acc(B_b) − conf(B_b)|."""
    p = _softmax64(logits)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == labels).astype(np.float64)
    ece = 0.0
    for members in np.array_split(np.argsort(conf, kind="stable"), n_bins):
        if len(members):
            ece += len(members) / len(labels) * abs(correct[members].mean() - conf[members].mean())
    return ece


def ref_brier(logits: np.ndarray, labels: np.ndarray) -> float:
    p = _softmax64(logits)
    onehot = np.eye(p.shape[1])[labels]
    return float(((p - onehot) ** 2).sum(axis=1).mean())


def _random_case(seed: int, n: int = 500, c: int = 10, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g) * scale
    # Make the labels correlated with the logits so accuracy and calibration are non-trivial.
    noisy = logits + torch.randn(n, c, generator=g) * scale
    labels = noisy.argmax(dim=1)
    return logits, labels


# ----------------------------------------------------------------------------- classification


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("n_bins", [15, 10, 1])
def test_classification_metrics_match_numpy_reference(seed: int, n_bins: int) -> None:
    logits, labels = _random_case(seed)
    m = classification_metrics(logits, labels, n_bins=n_bins)
    ln, yn = logits.double().numpy(), labels.numpy()
    assert set(m) == {"acc", "nll", "ece", "brier", "aece"}
    assert all(isinstance(v, float) for v in m.values())
    assert m["ece"] == pytest.approx(ref_ece(ln, yn, n_bins), abs=1e-5)
    assert m["aece"] == pytest.approx(ref_adaptive_ece(ln, yn, n_bins), abs=1e-5)
    assert m["brier"] == pytest.approx(ref_brier(ln, yn), abs=1e-5)
    assert m["acc"] == pytest.approx(float((ln.argmax(1) == yn).mean()), abs=1e-7)
    assert m["nll"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)


def test_accuracy_and_nll_hand_computed() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0], [5.0, 0.0, 0.0]])
    labels = torch.tensor([0, 1, 0, 2])
    m = classification_metrics(logits, labels)
    assert m["acc"] == pytest.approx(0.5)
    log_p = torch.log_softmax(logits.double(), dim=1)
    expected_nll = -(log_p[torch.arange(4), labels]).mean().item()
    assert m["nll"] == pytest.approx(expected_nll, rel=1e-6)
    assert m["nll"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)


def test_perfectly_calibrated_construction_has_zero_ece() -> None:
    # Groups of samples predicted with confidence q (in different bins) of which exactly a
    # fraction q is correct: acc(B) = conf(B) in every bin.
    c, per_group = 4, 100
    logits, labels = [], []
    for q in (0.4, 0.6, 0.75, 0.9):
        probs = torch.full((c,), (1 - q) / (c - 1))
        probs[0] = q
        n_correct = round(q * per_group)
        logits.append(probs.log().expand(per_group, c))
        labels.append(torch.tensor([0] * n_correct + [1] * (per_group - n_correct)))
    m = classification_metrics(torch.cat(logits), torch.cat(labels))
    assert m["ece"] == pytest.approx(0.0, abs=1e-6)
    assert m["acc"] == pytest.approx((0.4 + 0.6 + 0.75 + 0.9) / 4, abs=1e-6)


def test_all_confident_and_wrong_has_ece_one() -> None:
    n, c = 64, 5
    logits = torch.zeros(n, c)
    logits[:, 0] = 100.0
    labels = torch.ones(n, dtype=torch.long)
    m = classification_metrics(logits, labels)
    assert m["acc"] == 0.0
    assert m["ece"] == pytest.approx(1.0, abs=1e-6)
    assert m["brier"] == pytest.approx(2.0, abs=1e-6)  # the maximum of the multi-class Brier score
    assert m["nll"] == pytest.approx(100.0, rel=1e-5)


def test_brier_of_perfect_one_hot_is_zero() -> None:
    labels = torch.tensor([0, 3, 2, 1, 3])
    logits = F.one_hot(labels, 4).float() * 1000.0
    m = classification_metrics(logits, labels)
    assert m["brier"] == pytest.approx(0.0, abs=1e-12)
    assert m["acc"] == 1.0
    assert m["ece"] == pytest.approx(0.0, abs=1e-6)
    assert m["nll"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("c", [2, 3, 10, 100])
def test_brier_of_uniform_prediction_is_c_minus_1_over_c(c: int) -> None:
    labels = torch.arange(50) % c
    m = classification_metrics(torch.zeros(50, c), labels)
    assert m["brier"] == pytest.approx((c - 1) / c, rel=1e-6)
    assert m["nll"] == pytest.approx(math.log(c), rel=1e-6)


def test_zero_confidence_cannot_occur_but_exact_edges_go_to_the_lower_bin() -> None:
    # Confidence exactly 0.5 (two tied classes) is the upper edge of bin (7/15, 8/15] with 15
    # bins, and exactly 1/2 with 2 bins: right-closed means it lands in bin 0 of 2.
    logits = torch.zeros(3, 2)
    labels = torch.tensor([0, 0, 1])
    r = reliability(logits, labels, n_bins=2)
    assert r["count"] == [3.0, 0.0]
    assert r["confidence"][0] == pytest.approx(0.5)
    assert math.isnan(r["confidence"][1]) and math.isnan(r["accuracy"][1])


def test_bf16_logits_agree_with_float32() -> None:
    logits, labels = _random_case(7, n=4000)
    m32 = classification_metrics(logits, labels)
    bf = logits.to(torch.bfloat16)
    m16 = classification_metrics(bf, labels)
    for k in m32:
        assert m16[k] == pytest.approx(m32[k], abs=1e-2), k
    # The bf16 path is exactly the float32 computation on the upcast values.
    assert m16 == classification_metrics(bf.float(), labels)


def test_float16_and_int32_labels_accepted() -> None:
    logits, labels = _random_case(8)
    m = classification_metrics(logits.half(), labels.int())
    assert m["acc"] == pytest.approx(classification_metrics(logits, labels)["acc"], abs=1e-2)


def test_reliability_is_consistent_with_ece() -> None:
    logits, labels = _random_case(3, n=1000)
    r = reliability(logits, labels)
    assert set(r) == {"confidence", "accuracy", "count"}
    assert all(len(v) == 15 for v in r.values())
    assert sum(r["count"]) == 1000
    ece = sum(
        k / 1000 * abs(a - c) for c, a, k in zip(r["confidence"], r["accuracy"], r["count"], strict=True) if k > 0
    )
    assert ece == pytest.approx(classification_metrics(logits, labels)["ece"], abs=1e-6)
    for b, (c, k) in enumerate(zip(r["confidence"], r["count"], strict=True)):
        if k > 0:
            assert b / 15 < c <= (b + 1) / 15 + 1e-7


@pytest.mark.parametrize("seed", [0, 1])
def test_ece_matches_torchmetrics(seed: int) -> None:
    # The test extras install torchmetrics: a missing oracle is a broken environment, so it fails, never skips.
    from torchmetrics.classification import MulticlassCalibrationError

    logits, labels = _random_case(seed, n=2000, c=7)
    oracle = MulticlassCalibrationError(num_classes=7, n_bins=15, norm="l1")
    expected = oracle(torch.softmax(logits, dim=1), labels).item()
    assert classification_metrics(logits, labels)["ece"] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize(
    ("logits", "labels", "match"),
    [
        (torch.zeros(4), torch.zeros(4, dtype=torch.long), r"shape \(N, C\)"),
        (torch.zeros(4, 3), torch.zeros(5, dtype=torch.long), r"expected shape \(4,\)"),
        (torch.zeros(4, 3), torch.zeros(4), "integer dtype"),
        (torch.zeros(4, 3, dtype=torch.long), torch.zeros(4, dtype=torch.long), "floating dtype"),
        (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), "N >= 1"),
    ],
)
def test_classification_input_errors(logits: torch.Tensor, labels: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        classification_metrics(logits, labels)


def test_bad_n_bins() -> None:
    with pytest.raises(ValueError, match="n_bins"):
        classification_metrics(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long), n_bins=0)


# ----------------------------------------------------------------------------- regression


@pytest.mark.parametrize(("pshape", "tshape"), [((50,), (50,)), ((50, 1), (50,)), ((50, 1), (50, 1))])
def test_regression_metrics_match_numpy(pshape: tuple[int, ...], tshape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(pshape, generator=g), torch.randn(tshape, generator=g)
    m = regression_metrics(pred, target)
    err = pred.double().numpy().reshape(-1) - target.double().numpy().reshape(-1)
    assert m["mse"] == pytest.approx(float((err**2).mean()), rel=1e-6)
    assert m["mae"] == pytest.approx(float(np.abs(err).mean()), rel=1e-6)


def test_regression_metrics_errors() -> None:
    with pytest.raises(ValueError, match=r"\(N,\) or \(N, 1\)"):
        regression_metrics(torch.zeros(5, 2), torch.zeros(5))
    with pytest.raises(ValueError, match="expected 5 values"):
        regression_metrics(torch.zeros(5), torch.zeros(4))


# ----------------------------------------------------------------------------- accumulator


def test_accumulator_weighted_mean() -> None:
    acc = Accumulator()
    batches = [(torch.tensor(2.0), 10), (torch.tensor(1.0), 30), (torch.tensor(4.0), 20)]
    for value, n in batches:
        acc.add("loss", value, count=n)
        acc.add("acc", value / 4, count=torch.tensor(n))
    expected = (2.0 * 10 + 1.0 * 30 + 4.0 * 20) / 60
    assert acc.mean() == {"loss": pytest.approx(expected), "acc": pytest.approx(expected / 4)}
    assert "loss" in acc and len(acc) == 2


def test_accumulator_per_item_tensors_python_numbers_and_reset() -> None:
    acc = Accumulator()
    acc.add("per_sample", torch.tensor([1.0, 2.0, 3.0]))
    acc.add("per_sample", torch.tensor([[5.0]]))  # one item: a scalar of count 1
    acc.add("lr", 0.1)
    acc.add("lr", 0.3)
    acc.add("bf16", torch.tensor(0.5, dtype=torch.bfloat16), count=3)
    acc.add("grad_free", torch.tensor(2.0, requires_grad=True) * 1.0)
    out = acc.mean()
    assert out["per_sample"] == pytest.approx(11.0 / 4)
    assert out["lr"] == pytest.approx(0.2)
    assert out["bf16"] == pytest.approx(0.5)
    assert out["grad_free"] == pytest.approx(2.0)
    assert list(out) == ["per_sample", "lr", "bf16", "grad_free"]
    acc.reset()
    assert acc.mean() == {}


def test_accumulator_zero_count_is_nan_and_errors() -> None:
    acc = Accumulator()
    acc.add("a", torch.tensor(1.0), count=0)
    acc.add("b", 1.0, count=0)
    out = acc.mean()
    assert math.isnan(out["a"]) and math.isnan(out["b"])
    with pytest.raises(ValueError, match="count=None"):
        acc.add("c", torch.ones(3), count=3)
    with pytest.raises(ValueError, match="non-empty"):
        acc.add("c", torch.ones(0))


def test_accumulator_does_not_keep_float32_rounding() -> None:
    # 100k terms of 0.1: a float32 running sum drifts by ~1e-3 relative; float64 does not.
    acc = Accumulator()
    for _ in range(1000):
        acc.add("x", torch.tensor(0.1, dtype=torch.float32), count=100)
    assert acc.mean()["x"] == pytest.approx(float(np.float32(0.1)), rel=1e-9)


# ----------------------------------------------------------------------------- λ statistics


@pytest.mark.parametrize("bins", [20, 7])
def test_lam_stats_match_numpy(bins: int) -> None:
    beta = np.random.default_rng(0).beta(0.4, 0.4, size=3000)  # mass near both ends
    lam = torch.cat([torch.from_numpy(beta).float(), torch.tensor([0.0, 1.0, 1.0])])  # closed ends
    s = lam_stats(lam.reshape(-1, 1), bins=bins)
    x = lam.double().numpy()
    assert s["lam_mean"] == pytest.approx(x.mean(), rel=1e-6)
    assert s["lam_std"] == pytest.approx(x.std(), rel=1e-6)
    assert s["lam_min"] == 0.0 and s["lam_max"] == 1.0
    expected_hist = np.histogram(x, bins=bins, range=(0.0, 1.0))[0].tolist()
    assert s["lam_hist"] == expected_hist
    assert sum(s["lam_hist"]) == lam.numel()
    assert all(isinstance(v, int) for v in s["lam_hist"])
    strength = np.minimum(x, 1.0 - x)
    assert s["lam_strength"] == pytest.approx(strength.mean(), rel=1e-12)
    assert s["lam_strength_std"] == pytest.approx(strength.std(), rel=1e-12)
    assert s["lam_strength_hist"] == np.histogram(strength, bins=bins, range=(0.0, 0.5))[0].tolist()
    assert sum(s["lam_strength_hist"]) == lam.numel()
    assert all(isinstance(v, int) for v in s["lam_strength_hist"])


def test_lam_strength_of_beta_and_constants() -> None:
    # E[min(λ, 1 − λ)] under Beta(1, 1) = uniform is ¼; its std is 1/√48 (uniform on [0, ½]).
    lam = torch.from_numpy(np.random.default_rng(1).beta(1.0, 1.0, size=200_000))
    s = lam_stats(lam, bins=10)
    assert s["lam_strength"] == pytest.approx(0.25, abs=2e-3)
    assert s["lam_strength_std"] == pytest.approx(1 / math.sqrt(48), abs=2e-3)
    assert max(s["lam_strength_hist"]) / min(s["lam_strength_hist"]) < 1.1  # flat on [0, ½]
    # λ and 1 − λ mix equally strongly; the mean of λ tells them apart, the strength does not.
    for value, strength in [(0.2, 0.2), (0.8, 0.2), (1.0, 0.0), (0.0, 0.0), (0.5, 0.5)]:
        s = lam_stats(torch.full((7,), value, dtype=torch.float64), bins=4)
        assert s["lam_strength"] == pytest.approx(strength, abs=1e-15), value
        assert s["lam_strength_std"] == pytest.approx(0.0, abs=1e-15)
        assert s["lam_strength_hist"] == np.histogram(np.full(7, strength), bins=4, range=(0.0, 0.5))[0].tolist()
    assert lam_stats(torch.full((3,), 0.5), bins=4)["lam_strength_hist"] == [0, 0, 0, 3]  # ½ closes the last bin
    # Out-of-range λ (a buggy policy) keeps its signed strength in the mean and drops out of the histogram.
    s = lam_stats(torch.tensor([1.2, 0.1, 0.6], dtype=torch.float64), bins=2)
    assert s["lam_strength"] == pytest.approx((-0.2 + 0.1 + 0.4) / 3)
    assert s["lam_strength_hist"] == [1, 1]


def test_lam_stats_constant_and_out_of_range() -> None:
    s = lam_stats(torch.full((10,), 0.5))
    assert s["lam_std"] == 0.0 and s["lam_mean"] == pytest.approx(0.5)
    assert s["lam_hist"][10] == 10
    s = lam_stats(torch.tensor([-0.1, 0.5, 1.2]), bins=2)
    assert s["lam_hist"] == [0, 1]  # like np.histogram(range=(0, 1)): outside values not counted
    assert s["lam_min"] == pytest.approx(-0.1) and s["lam_max"] == pytest.approx(1.2)
    with pytest.raises(ValueError, match="at least one value"):
        lam_stats(torch.tensor([]))
    with pytest.raises(ValueError, match="bins"):
        lam_stats(torch.rand(3), bins=0)


# ----------------------------------------------------------------------------- median_last


def test_median_last() -> None:
    accs = [float(i) for i in range(1, 16)]
    assert median_last(accs) == 10.5  # last 10 = 6..15
    assert median_last(accs, k=3) == 14.0
    assert median_last([0.3, 0.9, 0.1]) == 0.3  # fewer than k: all of them
    assert median_last([0.7]) == 0.7
    assert median_last([5.0, 1.0, 3.0, 2.0], k=4) == 2.5
    assert math.isnan(median_last([1.0, float("nan")]))
    with pytest.raises(ValueError, match="at least one value"):
        median_last([])
    with pytest.raises(ValueError, match="positive int"):
        median_last([1.0], k=0)


# ----------------------------------------------------------------------------- temperature scaling


def _nll64(logits: np.ndarray, labels: np.ndarray, t: float) -> float:
    from scipy.special import logsumexp

    z = logits.astype(np.float64) / t
    return float(np.mean(logsumexp(z, axis=1) - z[np.arange(len(labels)), labels]))


def _miscalibrated(seed: int, n: int = 600, c: int = 10, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g) * scale
    labels = torch.randint(0, c, (n,), generator=g)
    right = torch.rand(n, generator=g) < 0.6  # 60% right: the logits' scale says more, or less, than that
    labels[right] = logits[right].argmax(1)
    return logits, labels


@pytest.mark.parametrize("seed,scale", [(0, 3.0), (1, 0.3), (2, 12.0)])
def test_fitted_temperature_minimises_the_nll_like_scipy(seed, scale):
    from scipy.optimize import minimize_scalar

    logits, labels = _miscalibrated(seed, scale=scale)
    z, y = logits.numpy(), labels.numpy()
    ref = minimize_scalar(lambda lt: _nll64(z, y, math.exp(lt)), bounds=(math.log(1e-2), math.log(1e2)),
                          method="bounded", options={"xatol": 1e-10})
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(math.exp(ref.x), rel=1e-5)
    assert _nll64(z, y, t) <= min(_nll64(z, y, 1.0), ref.fun + 1e-12)  # T = 1 is a candidate: never worse


def test_fitted_temperature_scales_with_the_logits():
    logits, labels = _miscalibrated(3)
    assert fit_temperature(logits * 4.0, labels) == pytest.approx(4.0 * fit_temperature(logits, labels), rel=1e-6)


def test_fitted_temperature_stops_at_its_range_where_the_nll_keeps_falling():
    labels = torch.arange(20) % 4
    separable = F.one_hot(labels, 4).float() * 5.0  # every sample right: sharper is always better
    assert fit_temperature(separable, labels) == TEMPERATURE_RANGE[0]
    assert fit_temperature(-separable, labels) == TEMPERATURE_RANGE[1]  # every sample wrong: flatter is better


def test_temperature_scaled_metrics_are_the_metrics_of_the_scaled_test_logits():
    val_logits, val_labels = _miscalibrated(4, scale=6.0)
    logits, labels = _miscalibrated(5, scale=6.0)
    out = temperature_scaled(val_logits, val_labels, logits, labels)
    t = fit_temperature(val_logits, val_labels)  # fitted on validation, not on the logits it scales
    assert out["temperature"] == t != pytest.approx(fit_temperature(logits, labels), rel=1e-3)
    assert out["nll"] == pytest.approx(_nll64(logits.numpy(), labels.numpy(), t), abs=1e-5)
    assert out["ece"] == pytest.approx(ref_ece(logits.numpy() / t, labels.numpy()), abs=1e-5)
    raw = classification_metrics(logits, labels)
    assert out["temperature"] > 1 and out["nll"] < raw["nll"]  # overconfident: a T fitted on like data helps
    assert sum(out["reliability"]["count"]) == len(labels)


@pytest.mark.parametrize("n", [7, 15, 16, 44, 1000])  # fewer samples than bins, exact multiples, remainders
def test_adaptive_ece_bins_as_array_split_does(n: int) -> None:
    logits, labels = _random_case(n, n=n, scale=2.0)
    m = classification_metrics(logits, labels, n_bins=15)
    assert m["aece"] == pytest.approx(ref_adaptive_ece(logits.double().numpy(), labels.numpy(), 15), abs=1e-6)
    # and it differs from the equal-width ECE where confidences crowd one end (most samples here)
    if n == 1000:
        assert abs(m["aece"] - m["ece"]) > 1e-4


# ----------------------------------------------------------------------------- out-of-distribution detection


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ood_auroc_and_fpr95_match_sklearns_roc(seed: int) -> None:
    from sklearn.metrics import roc_auc_score, roc_curve

    from mixlab.tasks.metrics import ood_metrics

    g = torch.Generator().manual_seed(seed)
    logits_in = torch.randn(400, 10, generator=g) * 3
    logits_out = torch.randn(300, 10, generator=g) * 1.5  # flatter: lower max-probability on the whole
    logits_out[:20] = logits_in[:20]  # ties between the two sets
    m = ood_metrics(logits_in, logits_out)
    msp = np.concatenate([_softmax64(logits_in.numpy()).max(1), _softmax64(logits_out.numpy()).max(1)])
    y = np.r_[np.ones(400), np.zeros(300)]
    assert m["auroc"] == pytest.approx(roc_auc_score(y, msp), abs=1e-4)
    fpr, tpr, _ = roc_curve(y, msp, drop_intermediate=False)
    assert m["fpr95"] == pytest.approx(fpr[np.searchsorted(tpr, 0.95)], abs=2e-3)
    assert 0.5 < m["auroc"] < 1 and 0 < m["fpr95"] < 1
