"""Seed statistics for comparing configurations: means with t intervals, paired tests, Holm.

A sweep gives a handful of seeds per configuration, so every number here comes with its
uncertainty, and :func:`verdict` only calls a difference "better" or "worse" when it is larger
than the seed-to-seed noise (adjusted p < alpha *and* a confidence interval that excludes 0).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats as sps

__all__ = ["holm", "mean_ci", "paired_comparison", "verdict"]

WILCOXON_MIN_PAIRS = 6  # below this the signed-rank test cannot reach p < 0.05 (its smallest p is 2/2^n)


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float, float, int]:
    """Mean, sample std and Student-t confidence interval of ``values``: ``(mean, std, lo, hi, n)``.

    mean = Σx/n, std = sqrt(Σ(x − mean)²/(n − 1)), and [lo, hi] = mean ± t_{(1+c)/2, n−1} · std/√n.
    Non-finite values (NaN, None) are left out and n counts the rest. n = 1 gives std, lo, hi NaN
    (one seed says nothing about the noise); n = 0 gives all NaN.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: expected a number in (0, 1), got {confidence!r}")
    x = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return math.nan, math.nan, math.nan, math.nan, 0
    mean = float(x.mean())
    if n == 1:
        return mean, math.nan, math.nan, math.nan, 1
    std = float(x.std(ddof=1))
    half = float(sps.t.ppf((1.0 + confidence) / 2.0, n - 1)) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half, n


def paired_comparison(a: Mapping[object, float], b: Mapping[object, float], confidence: float = 0.95,
                      alpha: float = 0.05, higher_is_better: bool = True) -> dict:
    """Seed-matched comparison of ``a`` against ``b`` (each ``{seed: value}``).

    Only seeds present (with finite values) in both enter: d_s = a_s − b_s. Returns ``n`` (matched
    pairs), ``seeds``, ``d`` (the d_s, in ``seeds`` order), ``diff`` = mean d, ``lo``/``hi`` = the t interval of mean d, ``p`` = the paired
    t-test p-value (``scipy.stats.ttest_rel``) and the unadjusted ``verdict``.

    Degenerate cases scipy answers with NaN: all d equal to 0 (identical runs) → p = 1, CI [0, 0];
    all d equal to c ≠ 0 (no noise at all) → p = 0, CI [c, c], the limit of the t-test.
    n < 2 → p NaN and verdict "not enough seeds".

    ``p_wilcoxon``: with n ≥ 6 pairs, the two-sided Wilcoxon signed-rank test of d
    (``scipy.stats.wilcoxon``), a check that does not assume normal differences; NaN below 6 pairs
    (it cannot reach p < 0.05 with fewer) or when every d is 0.
    """
    seeds = sorted((s for s in a if s in b and _finite(a[s]) and _finite(b[s])), key=str)
    d = np.array([float(a[s]) - float(b[s]) for s in seeds], dtype=np.float64)
    n = int(d.size)
    out = {"n": n, "seeds": seeds, "d": d.tolist(), "diff": float(d.mean()) if n else math.nan,
           "lo": math.nan, "hi": math.nan, "p": math.nan, "p_wilcoxon": math.nan}
    if n >= WILCOXON_MIN_PAIRS and np.any(d != 0):
        out["p_wilcoxon"] = float(sps.wilcoxon(d).pvalue)
    if n < 2:
        out["verdict"] = "not enough seeds"
        return out
    if np.all(d == d[0]):
        out.update(lo=float(d[0]), hi=float(d[0]), p=1.0 if d[0] == 0 else 0.0)
    else:
        _, _, lo, hi, _ = mean_ci(d.tolist(), confidence)
        p = float(sps.ttest_rel([float(a[s]) for s in seeds], [float(b[s]) for s in seeds]).pvalue)
        out.update(lo=lo, hi=hi, p=p)
    out["verdict"] = verdict(out["diff"], out["lo"], out["hi"], out["p"], alpha, higher_is_better, n=n)
    return out


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm–Bonferroni step-down adjusted p-values, in the input order.

    With the m finite p-values sorted ascending p_(1) ≤ … ≤ p_(m):
    p̃_(i) = max_{j ≤ i} min(1, (m − j + 1) · p_(j)). The running max keeps the adjusted values in
    the same order as the raw ones. NaN (an untestable comparison) stays NaN and does not count in m.
    """
    p = [float(v) if v is not None else math.nan for v in pvalues]
    finite = sorted((i for i, v in enumerate(p) if math.isfinite(v)), key=lambda i: p[i])
    m = len(finite)
    adjusted = [math.nan] * len(p)
    running = 0.0
    for rank, i in enumerate(finite):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def verdict(diff: float, lo: float, hi: float, p_adj: float, alpha: float = 0.05,
            higher_is_better: bool = True, n: int | None = None) -> str:
    """"better" | "worse" | "no detectable difference at n=K" (``a`` relative to ``b``).

    A direction is claimed only when p_adj < alpha and the CI [lo, hi] excludes 0; otherwise the
    difference is not larger than the noise and is not ranked. ``higher_is_better=False`` for
    errors (NLL, ECE, MSE), where a negative difference is the better one.
    """
    if n is not None and n < 2:
        return "not enough seeds"
    detected = _finite(p_adj) and p_adj < alpha and _finite(lo) and _finite(hi) and (lo > 0 or hi < 0)
    if not detected:
        return "no detectable difference" + (f" at n={n}" if n is not None else "")
    return "better" if (diff > 0) == higher_is_better else "worse"


def _finite(v: object) -> bool:
    return isinstance(v, (int, float, np.floating)) and math.isfinite(float(v))
