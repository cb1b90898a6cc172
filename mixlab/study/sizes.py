"""``python -m mixlab.study.sizes DIR [DIR ...] --out OUT``: studies that differ in one setting, side by side.

Each DIR is a study folder (``python -m mixlab.study``: ``plan.yaml`` beside ``compare/``); they share arms
and controls and differ in ``--setting`` (``data.train_subset`` by default: issue 26's training sizes). For
each study it takes the plan's primary family as the study's own report computes it (Holm within the study),
and writes to OUT:

- ``sizes.md`` and ``sizes.json``: per study, each primary comparison (Δ in points for a score in [0, 1], its
  95% CI, Holm p, verdict, n), the tuned values, and the declared secondary analysis, the trend: for each
  comparison, the least-squares slope of its per-seed differences against log2 of the setting, pooled over
  the studies, with its 95% t interval (a description, not corrected, not a test of the primary question);
- ``figures/delta.png``: one panel per study, each arm's and control's paired difference to the tuned
  reference, per seed and mean with its 95% CI;
- ``figures/strength.png``: each dynamic arm's mixing strength per epoch against its controls' (mean over seeds).
Labels say what ran ("Beta(0.96)", "schedule α 1.64 → 0.15", "reversed schedule"), not the config keys.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import sys
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402
from scipy import stats as sps  # noqa: E402

from .plan_report import _delta, _unit, planned_family  # noqa: E402
from .report import compare, group_runs, load_runs  # noqa: E402
from .runs import LOWER_IS_BETTER, NAMES, Config, bounded, matched_policy  # noqa: E402
from .stats import mean_ci, paired_comparison  # noqa: E402

# Each role's colour, the same in every panel and figure; roles not listed take the next of tab10's others.
COLORS = {"none": "tab:gray", "beta": "tab:blue", "beta:stop_late": "tab:cyan", "schedule": "tab:orange",
          "schedule:reversed": "tab:brown", "schedule:strength": "tab:olive", "loss": "tab:green",
          "loss:strength": "tab:purple"}
SPARE = ["tab:red", "tab:pink", "black", "gold", "navy", "teal"]
# How a role reads in a figure, whatever its tuned values (those differ by study: the tables give them).
WORDS = {"none": "no mixing", "beta": "tuned Beta", "beta:stop_late": "tuned Beta, mixing off late",
         "schedule": "schedule (α annealed)", "schedule:reversed": "reversed schedule",
         "schedule:strength": "Beta of the schedule's strength", "loss": "loss rule (seed 000, one λ per batch)",
         "loss:strength": "Beta of the loss rule's strength"}
ORDER = ["schedule", "schedule:reversed", "schedule:strength", "beta:stop_late", "loss", "loss:strength", "beta",
         "none"]  # top to bottom in the figures and tables; other roles after them


def _ordered(roles) -> list[str]:
    roles = list(dict.fromkeys(roles))
    return sorted(roles, key=lambda r: (ORDER.index(r) if r in ORDER else len(ORDER), roles.index(r)))


def role(c: Config, configs: list[Config]) -> str:
    """``arm`` for an arm's runs; ``arm:kind`` for a control of that arm."""
    if c.control_of is None:
        return c.arm
    owner = matched_policy(c, configs)
    return f"{owner.arm if owner is not None else c.control_of.get('name')}:{c.control_kind or 'strength'}"


def words(r: str) -> str:
    arm, _, kind = r.partition(":")
    return WORDS.get(r) or (f"{arm}'s {kind} control" if kind else arm)


def values(c: Config) -> str:
    """What ran, in a reader's words: ``Beta(0.96)``, ``schedule α 1.64 → 0.15``, ``loss rule τ = 7.9``."""
    f, kind = c.flat, c.control_kind
    if c.lam == "none":
        text = "no mixing"
    elif c.lam == "beta":
        text = f"Beta({f.get('lam.alpha'):.3g})"
    elif c.lam == "schedule":
        a, b = f.get("lam.alpha_start"), f.get("lam.alpha_end")
        text = f"reversed schedule α {b:.3g} → {a:.3g}" if kind == "reversed" else f"schedule α {a:.3g} → {b:.3g}"
    elif c.lam == "loss":
        text = f"loss rule τ = {f.get('lam.temperature'):.3g}"
    else:
        text = str(c.lam)
    if kind == "stop_late":
        text += f", no mixing after {100 * f.get('trainer.mix_until', 1.0):.0f}% of training"
    if kind == "strength":
        text += f" (strength {f.get('lam.strength')})"
    return text


def load(folder: Path, setting: str) -> dict:
    """One study: its setting's value, configurations by role, and its primary family as its report has it."""
    plan = yaml.safe_load((folder / "plan.yaml").read_text(encoding="utf-8"))
    runs = load_runs(folder / "compare")
    configs = group_runs(runs)
    ev = plan["evaluation"]
    metric, ref = ev["metric"], ev["reference"]
    family = planned_family(plan, configs, metric)
    rows = compare(configs, metric, baseline=ref, primary=True, matched=plan["decisions"]["matched"],
                   planned={f["key"] for f in family if f["key"] is not None})
    by_key = {(r["label"], r["ref_label"]): r for r in rows}
    primary = []
    for f in family:
        r = by_key.get(f["key"]) if f["key"] else None
        primary.append({"comparison": f["text"], "why": f["why"] if r is None else None,
                        **({k: r[k] for k in ("n", "diff", "lo", "hi", "p", "p_adj", "verdict", "m", "d", "seeds")}
                           if r else {})})
    by_role = {role(c, configs): c for c in configs}
    value = plan["config"].get(setting)
    return {"folder": folder, "setting": value, "metric": metric, "reference": ref, "configs": by_role,
            "primary": primary, "plan": plan["hash"], "n_runs": len(runs),
            "completed": sum(r.status == "completed" for r in runs)}


def trend(studies: list[dict]) -> list[dict]:
    """For each primary comparison every study made: the slope of its per-seed differences against log2 of
    the setting, least squares over all of them, with the 95% t interval (scipy's linregress)."""
    out = []
    texts = dict.fromkeys(p["comparison"] for s in studies for p in s["primary"])
    for text in texts:
        xs, ys = [], []
        for s in studies:
            p = next((p for p in s["primary"] if p["comparison"] == text and p.get("d")), None)
            if p is not None and isinstance(s["setting"], (int, float)):
                xs += [math.log2(s["setting"])] * len(p["d"])
                ys += p["d"]
        if len(set(xs)) < 2 or len(xs) < 3:
            out.append({"comparison": text, "slope": None, "why": "made at fewer than two settings"})
            continue
        fit = sps.linregress(xs, ys)
        t = sps.t.ppf(0.975, len(xs) - 2)
        out.append({"comparison": text, "slope": fit.slope, "lo": fit.slope - t * fit.stderr,
                    "hi": fit.slope + t * fit.stderr, "n": len(xs), "settings": len(set(xs))})
    return out


def fig_delta(studies: list[dict]) -> plt.Figure:
    """One panel per study: every role's paired difference to the tuned reference (dots: seeds; diamond and
    bar: mean and 95% CI), in points for a score in [0, 1]."""
    metric, ref = studies[0]["metric"], studies[0]["reference"]
    scale = 100 if bounded(metric) else 1
    roles = [r for r in _ordered(k for s in studies for k in s["configs"]) if r != ref]
    fig, axes = plt.subplots(1, len(studies), figsize=(3.6 * len(studies) + 2.2, 0.42 * len(roles) + 1.6),
                             sharey=True, squeeze=False, layout="constrained")
    for ax, s in zip(axes[0], studies, strict=True):
        base = s["configs"].get(ref)
        for i, r in enumerate(roles):
            y = len(roles) - 1 - i
            c = s["configs"].get(r)
            if c is None or base is None:
                continue
            pc = paired_comparison(c.values(metric), base.values(metric), higher_is_better=metric not in LOWER_IS_BETTER)
            color = COLORS.get(r, SPARE[i % len(SPARE)])
            ax.scatter([scale * d for d in pc["d"]], [y] * len(pc["d"]), s=12, color=color, alpha=0.45, zorder=2)
            if pc["n"] >= 2:
                ax.errorbar([scale * pc["diff"]], [y], xerr=[[scale * (pc["diff"] - pc["lo"])],
                                                             [scale * (pc["hi"] - pc["diff"])]],
                            fmt="D", color=color, markeredgecolor="k", capsize=4, lw=2, zorder=3)
        ax.axvline(0, color="k", lw=1)
        ax.set_title(f"{s['setting']} training images\nreference {values(base) if base else ref}", fontsize=9)
        ax.set_xlabel(f"Δ {NAMES.get(metric, metric)} vs tuned {ref}" + (" (pp)" if scale == 100 else ""))
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(len(roles)), [words(r) for r in reversed(roles)])
    return fig


def fig_strength(studies: list[dict]) -> plt.Figure | None:
    """Rows: each dynamic arm; columns: studies. The arm's mixing strength per epoch (mean over seeds) against
    its controls', the reference's and the reference's controls'."""
    ref = studies[0]["reference"]
    dynamic = [r for r in _ordered(k for s in studies for k in s["configs"])
               if ":" not in r and any(s["configs"][r].dynamic for s in studies if r in s["configs"])]
    if not dynamic:
        return None
    fig, axes = plt.subplots(len(dynamic), len(studies), figsize=(max(3.6 * len(studies), 6.4), 2.8 * len(dynamic) + 1.2),
                             sharey=True, squeeze=False, layout="constrained")
    shown: dict[str, object] = {}
    for row, arm in enumerate(dynamic):
        for col, s in enumerate(studies):
            ax = axes[row][col]
            for r in _ordered(s["configs"]):
                c = s["configs"][r]
                if not (r == arm or r.startswith(f"{arm}:") or r == ref or r.startswith(f"{ref}:")):
                    continue
                curves = [[x.get("lam_strength") for x in run.rows] for run in c.done]
                curves = [v for v in curves if v and all(isinstance(x, (int, float)) for x in v)]
                if not curves:
                    continue
                k = min(len(v) for v in curves)
                mean = np.mean([v[:k] for v in curves], axis=0)
                ls = "-" if r in (arm, ref) else "--"
                (line,) = ax.plot(range(1, k + 1), mean, ls=ls, lw=1.8, color=COLORS.get(r, "black"))
                shown.setdefault(words(r), line)
            ax.set_title(f"{words(arm)} — {s['setting']} images", fontsize=9)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            if col == 0:
                ax.set_ylabel("mixing strength E[min(λ, 1−λ)]")
            ax.grid(alpha=0.3)
    fig.legend(list(shown.values()), list(shown), loc="outside lower center", ncol=min(3, len(shown)), fontsize=8,
               frameon=False)
    return fig


def _save(fig: plt.Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130, metadata={"Software": None})
    plt.close(fig)
    path.write_bytes(buf.getvalue())


def document(studies: list[dict], trends: list[dict], setting: str, figures: list[str]) -> str:
    metric = studies[0]["metric"]
    unit = _unit(metric)
    out = [f"# Studies side by side over {setting}", "",
           "Generated by `python -m mixlab.study.sizes " + " ".join(str(s["folder"]) for s in studies)
           + " --out OUT` from the studies' records; every number is its study's own report's (Holm within each "
             "study, over its plan's primary family).", ""]
    for s in studies:
        out += [f"## {setting} = {s['setting']} ({s['folder'].name}, plan {s['plan']}; {s['completed']} of "
                f"{s['n_runs']} runs completed)", "",
                "What ran: " + "; ".join(f"{words(r)}: {values(s['configs'][r])}" for r in _ordered(s["configs"]))
                + ".", "",
                f"| primary comparison | n | Δ{unit} | 95% CI{unit} | Holm p | verdict |", "|---|---:|---:|---|---:|---|"]
        for p in s["primary"]:
            if p.get("n") is None:
                out.append(f"| {p['comparison']} | — | — | — | — | not computed: {p['why']} |")
            else:
                out.append(f"| {p['comparison']} | {p['n']} | {_delta(p['diff'], metric)} | [{_delta(p['lo'], metric)}, "
                           f"{_delta(p['hi'], metric)}] | {p['p_adj']:.3f} | {p['verdict']} |")
        out.append("")
    out += ["## Secondary: the trend over the setting (declared before the runs; a description, not corrected)", "",
            f"Least-squares slope of the per-seed differences against log2({setting}), pooled over the studies, "
            "with its 95% t interval: the change in Δ per doubling.", "",
            f"| comparison | slope per doubling{unit} | 95% CI{unit} | differences (settings) |", "|---|---:|---|---|"]
    for t in trends:
        if t["slope"] is None:
            out.append(f"| {t['comparison']} | — | — | {t['why']} |")
        else:
            out.append(f"| {t['comparison']} | {_delta(t['slope'], metric)} | [{_delta(t['lo'], metric)}, "
                       f"{_delta(t['hi'], metric)}] | {t['n']} ({t['settings']}) |")
    out += ["", *[f"![{f}](figures/{f})" for f in figures], ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mixlab.study.sizes", description=__doc__.split("\n\n")[0])
    ap.add_argument("studies", nargs="+", help="study folders (python -m mixlab.study), one per setting")
    ap.add_argument("--out", required=True, help="where sizes.md, sizes.json and figures/ go")
    ap.add_argument("--setting", default="data.train_subset", help="the config key the studies differ in")
    args = ap.parse_args(argv)
    folders = [Path(f) for f in args.studies]
    for f in folders:
        if not (f / "plan.yaml").is_file() or not (f / "compare").is_dir():
            print(f"mixlab.study.sizes: error: {f}: expected a study folder (plan.yaml beside compare/, as python -m "
                  "mixlab.study writes it)", file=sys.stderr)
            return 2
    studies = sorted((load(f, args.setting) for f in folders), key=lambda s: (str(type(s["setting"])), s["setting"]))
    if len({(s["metric"], s["reference"]) for s in studies}) > 1:
        print("mixlab.study.sizes: error: the studies declare different metrics or references "
              f"({sorted({(s['metric'], s['reference']) for s in studies})}); expected one", file=sys.stderr)
        return 2
    out = Path(args.out)
    figures = []
    for name, fig in (("delta.png", fig_delta(studies)), ("strength.png", fig_strength(studies))):
        if fig is not None:
            _save(fig, out / "figures" / name)
            figures.append(name)
    trends = trend(studies)
    (out / "sizes.md").write_text(document(studies, trends, args.setting, figures), encoding="utf-8")
    dump = {"setting": args.setting, "trend": trends,
            "studies": [{"folder": str(s["folder"]), "setting": s["setting"], "plan": s["plan"], "metric": s["metric"],
                         "reference": s["reference"], "primary": s["primary"],
                         "ran": {r: values(c) for r, c in s["configs"].items()},
                         "strength": {r: mean_ci([x for run in c.done if (x := run.epoch_mean("lam_strength")) is not None])[:2]
                                      for r, c in s["configs"].items()}} for s in studies]}
    (out / "sizes.json").write_text(json.dumps(dump, indent=1, default=str, allow_nan=True) + "\n", encoding="utf-8")
    print(f"mixlab.study.sizes: {out / 'sizes.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
