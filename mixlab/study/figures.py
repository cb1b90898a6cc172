"""The report's figures: one function per picture, each from grouped run records (``runs.Config``).

Each returns a matplotlib Figure, or None when the sweep has nothing to show for it. Imports
``runs`` (the types and names it shares with ``report``), never ``report`` itself.
"""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .runs import LOWER_IS_BETTER, NAMES, Config  # noqa: E402
from .runs import fmt as _f  # noqa: E402
from .stats import mean_ci  # noqa: E402

DYNAMIC_LAM = {"distance", "sk"}


def _colors(configs: list[Config]) -> dict[str, tuple]:
    return {c.label: plt.cm.tab10(i % 10) for i, c in enumerate(configs)}


def _panels(n: int, w: float = 3.4, h: float = 3.0) -> tuple[plt.Figure, list]:
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(w * cols, h * rows + 0.6), squeeze=False, layout="constrained")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _per_epoch(ax: plt.Axes, configs: list[Config], key: str) -> None:
    """Per configuration, ``key`` of each epoch: mean over seeds (line) and min–max over seeds (band)."""
    colors = _colors(configs)
    for c in configs:
        per_epoch: dict[int, list[float]] = {}
        for r in c.done:
            for row in r.rows:
                if isinstance(row.get(key), (int, float)):
                    per_epoch.setdefault(int(row["epoch"]), []).append(float(row[key]))
        if not per_epoch:
            continue
        ep = sorted(per_epoch)
        v = [np.array(per_epoch[e]) for e in ep]
        ax.plot(ep, [x.mean() for x in v], marker="o", color=colors[c.label], label=f"{c.label} (n={len(c.done)})")
        ax.fill_between(ep, [x.min() for x in v], [x.max() for x in v], color=colors[c.label], alpha=0.12)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: the bands stay visible
    ax.grid(alpha=0.3)


def curve_name(key: str) -> str:
    """A per-epoch key's name on a curve's axis (the final metrics' names, and the training loss)."""
    return NAMES.get(key, "training loss (mixed batches)" if key == "train_loss" else key)


def fig_curves(configs: list[Config], metric: str) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    _per_epoch(ax, configs, metric)
    ax.set(xlabel="epoch", ylabel=curve_name(metric),
           title=f"{curve_name(metric)} per epoch (line: mean, band: min–max over seeds)")
    return fig


def fig_lam_strength(configs: list[Config]) -> plt.Figure | None:
    """Per epoch: the mean λ (left) and the mixing strength min(λ, 1 − λ) (right); None for records that
    predate ``lam_strength``."""
    if not any(isinstance(row.get("lam_strength"), (int, float)) for c in configs for r in c.done for row in r.rows):
        return None
    fig, (ax_lam, ax) = plt.subplots(1, 2, figsize=(13, 4.5), layout="constrained")
    _per_epoch(ax_lam, configs, "lam_mean")
    ax_lam.get_legend().remove()  # one legend, on the right panel
    ax_lam.set(xlabel="epoch", ylabel="mean λ (the sample's own weight)", ylim=(-0.02, 1.02),
               title="Mean λ per epoch")
    for y, text in ((0.25, "Beta(1, 1)"), (0.5, "even blend")):
        ax.axhline(y, color="grey", ls=":", lw=1)
        ax.annotate(text, (0.01, y), xycoords=("axes fraction", "data"), xytext=(0, 2), textcoords="offset points",
                    fontsize=7, color="grey")
    _per_epoch(ax, configs, "lam_strength")
    ax.set(xlabel="epoch", ylabel="mixing strength min(λ, 1 − λ)", ylim=(-0.02, 0.54),
           title="Mixing strength per epoch (0: no mixing, ½: even blends)")
    fig.suptitle("λ policies over training (line: mean over seeds, band: min–max over seeds)", fontsize=10)
    return fig


def fig_final(configs: list[Config], metrics: list[str]) -> plt.Figure:
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 0.5 * len(configs) + 1.8), squeeze=False)
    colors = _colors(configs)
    for ax, m in zip(axes[0], metrics, strict=True):
        for i, c in enumerate(configs):
            mean, _, lo, hi, n = mean_ci(list(c.values(m).values()))
            err = [[mean - lo], [hi - mean]] if math.isfinite(lo) else None
            ax.errorbar([mean], [i], xerr=err, fmt="o", capsize=4, color=colors[c.label])
            ax.annotate(f"n={n}", (mean, i), textcoords="offset points", xytext=(0, 6), fontsize=7, ha="center")
        ax.set_yticks(range(len(configs)), [c.label for c in configs] if ax is axes[0][0] else [])
        ax.set_ylim(-0.7, len(configs) - 0.3)
        better = "lower" if m in LOWER_IS_BETTER else "higher"
        ax.set(xlabel=f"final {NAMES.get(m, m)} ({better} is better)", title=f"{NAMES.get(m, m)}: mean, 95% t-CI")
        ax.grid(alpha=0.3, axis="x")
    return fig


def fig_paired(comparisons: list[dict]) -> plt.Figure | None:
    """The primary family's paired differences: per comparison, each seed's Δ (points), the mean Δ
    (diamond) and its interval simultaneous over the family (``lo_sim``/``hi_sim``, bar); colour is
    the Holm verdict. None where no primary comparison was made."""
    rows = [r for r in comparisons if r.get("family") == "primary" and r["n"] >= 1]
    if not rows:
        return None
    metric = rows[0]["metric"]
    colors = {"better": "tab:green", "worse": "tab:red"}
    fig, ax = plt.subplots(figsize=(8.5, 0.6 * len(rows) + 1.9))
    for i, r in enumerate(rows):
        y, color = len(rows) - 1 - i, colors.get(r["verdict"], "tab:grey")
        jitter = np.linspace(-0.18, 0.18, len(r["d"])) if len(r["d"]) > 1 else np.zeros(len(r["d"]))
        ax.scatter(r["d"], y + jitter, s=14, color=color, alpha=0.55, zorder=2)
        err = [[r["diff"] - r["lo_sim"]], [r["hi_sim"] - r["diff"]]] if math.isfinite(r["lo_sim"]) else None
        ax.errorbar([r["diff"]], [y], xerr=err, fmt="D", color=color, markeredgecolor="k", capsize=5, lw=2, zorder=3)
        ax.annotate(f"{r['verdict'].split(' at n=')[0]} (n={r['n']}, Holm p={_f(r['p_adj'], 3)})", (r["diff"], y), xytext=(0, 9),
                    textcoords="offset points", ha="center", fontsize=7)
    ax.axvline(0, color="k", lw=1)
    ax.set_yticks(range(len(rows))[::-1], [f"{r['label']}\n  − {r['ref_label']}" for r in rows], fontsize=8)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    better = "lower" if metric in LOWER_IS_BETTER else "higher"
    ax.set(xlabel=f"Δ {NAMES.get(metric, metric)}, policy − reference, seed by seed ({better} is better for the policy)",
           title=f"Primary comparison: paired differences (points: seeds; diamond: mean Δ; bar: 95% interval "
                 f"simultaneous over the {rows[0]['m']} test(s), Bonferroni)")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3, axis="x")
    return fig


def fig_reliability(configs: list[Config], key: str = "reliability", what: str = "") -> plt.Figure | None:
    """Reliability diagrams from each run's ``summary[key]`` (``reliability``: raw; ``reliability_ts``:
    after temperature scaling), bins summed over seeds; ``what`` goes in the title."""
    shown = [c for c in configs if any(r.summary.get(key) for r in c.done)]
    if not shown:
        return None
    fig, axes = _panels(len(shown))
    for ax, c in zip(axes, shown, strict=True):
        k = len(next(r.summary[key]["count"] for r in c.done if r.summary.get(key)))
        count, s_conf, s_acc = np.zeros(k), np.zeros(k), np.zeros(k)
        for r in c.done:
            rel = r.summary.get(key)
            if rel:  # bin means × counts are sums, which add across seeds; empty bins (null) add 0
                n = np.array(rel["count"], dtype=float)
                count += n
                s_conf += np.nan_to_num(np.array(rel["confidence"], dtype=float)) * n
                s_acc += np.nan_to_num(np.array(rel["accuracy"], dtype=float)) * n
        keep = count > 0
        centers = (np.arange(k) + 0.5) / k
        ax.bar(centers[keep], s_acc[keep] / count[keep], width=1 / k, edgecolor="k", alpha=0.7, label="accuracy")
        ax.plot(s_conf[keep] / count[keep], s_acc[keep] / count[keep], "r.", label="(mean conf, acc)")
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        # each bin's count (its share of the predictions), so a nearly empty bin is not read as a trend
        share = ax.twinx()
        share.bar(centers[keep], count[keep] / count.sum(), width=0.6 / k, color="grey", alpha=0.35,
                  label="share of predictions")
        share.set(ylim=(0, 1), ylabel="share of predictions in the bin")
        share.yaxis.label.set_fontsize(7)
        ax.set_zorder(share.get_zorder() + 1)  # the accuracy bars in front of the count bars
        ax.patch.set_visible(False)
        for x_c, n_c in zip(centers[keep], count[keep], strict=True):
            ax.annotate(f"{int(n_c)}", (x_c, 0.01), ha="center", va="bottom", fontsize=5, rotation=90)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy",
               title=f"{c.label}\n(n={len(c.done)} seeds, {int(count.sum())} preds)")
        ax.title.set_fontsize(9)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Reliability diagrams{what}, final epoch, bins summed over seeds (numbers: predictions per bin)")
    return fig


def fig_lam_hist(configs: list[Config]) -> plt.Figure | None:
    shown = [c for c in configs if any(r.rows and r.rows[-1].get("lam_hist") for r in c.done)]
    if not shown:
        return None
    fig, axes = _panels(len(shown), h=2.6)
    colors = _colors(configs)
    for ax, c in zip(axes, shown, strict=True):
        h = np.sum([r.rows[-1]["lam_hist"] for r in c.done if r.rows and r.rows[-1].get("lam_hist")], axis=0)
        k = len(h)
        ax.bar((np.arange(k) + 0.5) / k, h / max(h.sum(), 1), width=1 / k, color=colors[c.label], edgecolor="k")
        ax.set(xlim=(0, 1), xlabel="λ", ylabel="fraction of draws", title=f"{c.label} (n={len(c.done)})")
        ax.title.set_fontsize(9)
    fig.suptitle("λ histograms of the final epoch, summed over seeds")
    return fig


def fig_lam_distance(configs: list[Config]) -> plt.Figure | None:
    shown = [c for c in configs if c.lam in DYNAMIC_LAM | {"beta"}]
    if not any(c.lam in DYNAMIC_LAM for c in shown):
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = _colors(configs)
    for c in shown:
        d, lam = [], []
        for r in c.done:
            pairs = r.summary.get("lam_vs_distance") or {}
            d += pairs.get("distance", [])
            lam += pairs.get("lam", [])
        ax.scatter(d, lam, s=8, alpha=0.5, color=colors[c.label], label=f"{c.label} (n={len(c.done)}, {len(d)} pairs)")
    ax.set(xlabel="pair distance as the policy measured it, over the batch's all-pairs statistic", ylabel="λ",
           ylim=(-0.03, 1.03), title="λ against normalised pair distance (first batch of the final epoch)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def fig_mixed(configs: list[Config]) -> plt.Figure | None:
    picks = [(c, next((r for r in c.done + c.runs if (r.path / "mixed_examples.png").exists()), None)) for c in configs]
    picks = [(c, r) for c, r in picks if r is not None]
    if not picks:
        return None
    fig, axes = _panels(len(picks), w=4.0, h=2.4)
    for ax, (c, r) in zip(axes, picks, strict=True):
        ax.imshow(plt.imread(r.path / "mixed_examples.png"), interpolation="nearest")
        ax.set_title(f"{c.label}\n(seed {r.seed})", fontsize=9)
        ax.axis("off")
    fig.suptitle("Mixed training images (epoch 1), one run per configuration")
    return fig


def fig_boundaries(configs: list[Config]) -> plt.Figure | None:
    import torch

    from ..data import dataset_from_config
    from ..models import build_model
    from ..run.records import load_checkpoint

    picks = [(c, next((r for r in c.done if (r.path / "last.pt").exists()), None)) for c in configs
             if c.flat.get("data.name") == "moons"]
    picks = [(c, r) for c, r in picks if r is not None]
    if not picks:
        return None
    fig, axes = _panels(len(picks), w=3.6, h=3.3)
    for ax, (c, r) in zip(axes, picks, strict=True):
        cfg = r.config
        # The normalisation depends on the kept training examples, so rebuild exactly the run's data.
        ds = dataset_from_config(cfg["data"], seed=cfg["seed"])
        model = build_model(cfg["model"]["name"], in_shape=(2,), num_classes=2,
                            **{k: v for k, v in cfg["model"].items() if k != "name"})
        model.load_state_dict(load_checkpoint(r.path / "last.pt")["model"])
        model.eval()
        x, y = ds.x_test.numpy(), ds.y_test.numpy()
        lo, hi = x.min(0) - 0.5, x.max(0) + 0.5
        g0, g1 = np.meshgrid(np.linspace(lo[0], hi[0], 200), np.linspace(lo[1], hi[1], 200))
        with torch.no_grad():
            grid = torch.tensor(np.stack([g0.ravel(), g1.ravel()], 1), dtype=torch.float32)
            prob = model(grid).softmax(1)[:, 1].reshape(g0.shape).numpy()
        cs = ax.contourf(g0, g1, prob, levels=np.linspace(0, 1, 11), cmap="RdBu_r", alpha=0.8)
        ax.contour(g0, g1, prob, levels=[0.5], colors="k", linewidths=1)
        for cls, color in ((0, "navy"), (1, "darkred")):  # darker than the background, white-edged to stand out
            ax.scatter(*x[y == cls].T, s=7, color=color, edgecolors="white", linewidths=0.3, label=f"test, class {cls}")
        ax.set(xlabel="x₁ (normalised)", ylabel="x₂ (normalised)",
               title=f"{c.label}\nseed {r.seed}, test acc {_f(r.value('test_acc'), 3)}")
        ax.title.set_fontsize(9)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.colorbar(cs, ax=axes, label="P(class 1)", shrink=0.8)
    fig.suptitle("Decision boundaries on moons (test points overlaid)")
    return fig




def fig_corruptions(configs: list[Config]) -> plt.Figure | None:
    """Accuracy on the corrupted test sets against severity (mean over corruptions; line: mean over seeds,
    band: min–max over seeds); None where no run recorded ``eval.corruptions``."""
    shown = [c for c in configs if any(isinstance(r.summary.get("corruptions"), dict) for r in c.done)]
    if not shown:
        return None
    colors = _colors(configs)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for c in shown:
        per_seed = np.array([[np.mean([per[k]["acc"] for per in r.summary["corruptions"].values()]) for k in range(5)]
                             for r in c.done if isinstance(r.summary.get("corruptions"), dict)])
        sev = np.arange(1, 6)
        ax.plot(sev, per_seed.mean(0), marker="o", color=colors[c.label], label=f"{c.label} (n={len(per_seed)})")
        ax.fill_between(sev, per_seed.min(0), per_seed.max(0), color=colors[c.label], alpha=0.12)
    ax.set(xlabel="severity", ylabel="accuracy (mean over the 12 corruptions)", xticks=range(1, 6),
           title="Accuracy on the corrupted test sets")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.grid(alpha=0.3)
    return fig
