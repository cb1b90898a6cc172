"""``python -m mixlab.report SWEEP_DIR [--out DIR] [--baseline beta] [--metric test_acc]``.

Reads a sweep's run records (``summary.json``, ``metrics.jsonl``, ``mixed_examples.png``, ``last.pt``;
never W&B), groups the runs into configurations (the resolved config minus the seed and the keys
that do not define a method), and writes ``report.md`` (figures in ``figures/``) and a
self-contained ``report.html`` (figures inlined as base64 PNG). Differences are only called
"better" or "worse" when a seed-matched, Holm-adjusted test says they exceed the noise.

A study's ``DIR/compare`` (``python -m mixlab.study``, beside ``DIR/plan.yaml``) gets more: the verdict of the
plan's primary family first, then the plan it ran under (hash, command, commit, arms, budgets, seeds,
decision rules, deviations) and its warnings (tuning within noise, scores at the ceiling, runs missing
against the plan). Every report refuses to compare runs that saw different data (their fingerprints).
"""
from __future__ import annotations

import argparse
import base64
import html
import importlib.util
import io
import json
import math
import re
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server or in CI
import matplotlib.pyplot as plt  # noqa: E402

from ..run.config import fingerprint  # noqa: E402
from .figures import (fig_boundaries, fig_curves, fig_final, fig_lam_distance, fig_lam_hist,  # noqa: E402
                      fig_lam_strength, fig_mixed, fig_paired, fig_reliability, curve_name, fig_corruptions)
from .runs import (FLIP, LOWER_IS_BETTER, NAMES, Config, Run, _short, _space_text, bounded,  # noqa: E402
                   CONTROL_KINDS, TUNED_KEYS, ceiling_text, matched_policy, references)
from .plan_report import (_fingerprint_note, _plan_blocks, _study_warnings, _verdict_lead,  # noqa: E402
                          check_fingerprints, planned_family, read_study)
from .runs import fmt as _f  # noqa: E402
from .stats import WILCOXON_MIN_PAIRS, holm, mean_ci, paired_comparison, verdict  # noqa: E402

STATUS_ORDER = ("completed", "failed", "diverged", "running", "interrupted")
STRENGTH = "mixing strength (mean over epochs)"
STRENGTH_NOTE = ("Mixing strength (mean over epochs): the mean of min(λ, 1 − λ) over each training epoch's λ "
                 "draws, averaged over the run's epochs, then mean ± std over seeds; 0 = no mixing, ½ = even blends, "
                 "Beta(1, 1) gives ¼. Under a symmetric pairing λ = 0.3 and 0.7 make the same blends, so a policy "
                 "can win or lose just by mixing more or less: read its verdicts beside its strength. "
                 "\"—\" in its column: no completed run recorded it (older run records).")


# ----------------------------------------------------------------------------- reading and grouping


def method_key(config: dict) -> dict[str, object]:
    """A run's configuration minus its seed and volatile keys: runs with equal keys are seeds of one method."""
    return {k: v for k, v in fingerprint(config).items() if k != "seed"}


def _natural(p: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(p))]


def load_runs(path: str | Path) -> list[Run]:
    """Every run under ``path`` (a sweep dir searched recursively, or one run dir), sorted naturally.

    An unreadable summary.json and a Hydra job dir without one are runs too (status "failed" /
    "unknown"), so nothing disappears from the report silently.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: expected a sweep or run directory, got no such directory")
    runs = []
    for f in sorted(path.rglob("summary.json"), key=_natural):
        try:
            summary = json.loads(f.read_text())
            if not isinstance(summary, dict):
                raise ValueError(f"expected a JSON object, got {type(summary).__name__}")
        except (OSError, ValueError) as e:
            summary = {"status": "failed", "error": f"unreadable summary.json ({type(e).__name__}: {e})"}
        rows = []
        if (f.parent / "metrics.jsonl").exists():
            rows = [json.loads(x) for x in (f.parent / "metrics.jsonl").read_text().splitlines() if x.strip()]
        runs.append(Run(f.parent, summary, rows))
    for h in sorted(path.rglob(".hydra"), key=_natural):
        if h.is_dir() and not (h.parent / "summary.json").exists():
            runs.append(Run(h.parent, {"status": "unknown", "error": "no summary.json: killed before writing it"}, []))
    return runs


def varying_keys(flats: list[dict]) -> list[str]:
    """Keys whose value differs between configurations. A component option (``lam.temperature``)
    counts only among configurations with the same component (``lam.name``), so ``distance`` and
    ``sk`` are not told apart by options they do not share."""
    keys = list(dict.fromkeys(k for f in flats for k in f))
    out = []
    for k in keys:
        ctx = k.split(".")[0] + ".name"
        seen: dict[object, set] = {}
        for f in flats:
            seen.setdefault(f.get(ctx) if k != ctx else None, set()).add(repr(f.get(k)))
        if any(len(v) > 1 for v in seen.values()):
            out.append(k)
    first = {"lam.name": 0, "pairing.name": 1, "mixer.name": 2}
    return sorted(out, key=lambda k: (first.get(k, 3), keys.index(k)))


def group_runs(runs: list[Run]) -> list[Config]:
    """Configurations in first-seen order, each labelled by its values of the varying keys."""
    by_key: dict[str, Config] = {}
    for r in runs:
        if not r.config:
            continue
        flat = method_key(r.config)
        by_key.setdefault(json.dumps(flat, sort_keys=True, default=str), Config("", flat)).runs.append(r)
    configs = list(by_key.values())
    vary = varying_keys([c.flat for c in configs])
    # a key a declared control changes (trainer.mix_until) is said by the control's own tag, not by every label
    by_control = {k for kind in CONTROL_KINDS.values() for k in kind["keys"]}
    # ``tuned`` (the file the λ values came from) names a configuration only where its values do not
    for keys in ([k for k in vary if k not in TUNED_KEYS and k not in by_control], [k for k in vary if k not in TUNED_KEYS],
                 vary):
        for c in configs:
            # a key this configuration leaves unset (null: lam.strength of a tuned beta) says nothing about it
            parts = [f"{k.removesuffix('.name')}={_short(c.flat[k])}" for k in keys if c.flat.get(k) is not None]
            c.label = " ".join(parts) or (f"lam={c.lam}" if c.lam else "all runs")
        labels = [(c.label, c.control_kind, json.dumps(c.control_of, sort_keys=True, default=str)) for c in configs]
        if len(set(labels)) == len(configs):
            break
    for c in configs:  # a control says whose control it is (a strength-matched one: whose strength it matches)
        if c.control_of is not None:
            target = matched_policy(c, configs)
            said = f"{target.label}" if target is not None else f"lam={c.control_of.get('name')}, not in these records"
            kind = c.control_kind or "strength"
            c.label += f" [matched to {said}]" if kind == "strength" else \
                f" [{CONTROL_KINDS[kind]['name']} control of {said}]"
    for c in configs:
        for r in c.runs:
            r.label = c.label
    return configs


# ----------------------------------------------------------------------------- numbers


def compare(configs: list[Config], metric: str, baseline: str = "beta", primary: bool = False,
            matched: str = "primary", alpha: float = 0.05,
            planned: set[tuple[str, str]] | None = None) -> list[dict]:
    """Seed-matched comparisons of each configuration against ``baseline`` and ``none`` with the same
    non-λ keys, and of each dynamic policy against its strength-matched Beta control (``ref`` "matched",
    from ``python -m mixlab.controls``); then the verdicts. Each comparison is in a ``family``: with
    ``primary``, each *dynamic* policy against ``baseline``, and against its matched control where
    ``matched`` is "primary", form the declared primary comparison; everything else (none, constant,
    the controls themselves, other metrics) is exploratory. Holm's correction runs within each family,
    so the primary claims pay only for their own tests. ``lo_sim``/``hi_sim``: the t interval of Δ at
    level 1 − alpha/m for the m tests of the family (Bonferroni), simultaneous over the family.
    ``planned``: the (label, reference label) pairs a study's plan.yaml declared as its primary family,
    which then replace the rule above. ``ceiling``: both sides' means where both are at the top of a
    score in [0, 1] (see :func:`ceiling`), else None."""
    hib = metric not in LOWER_IS_BETTER
    rows: list[dict] = []
    for ref in dict.fromkeys([baseline, "none"]):
        for c in configs:
            for b in references(c, ref, configs):
                if any(r["label"] == b.label and r["ref_label"] == c.label for r in rows):
                    continue  # beta vs none is none vs beta again: one test, counted once by Holm
                if c.control_of is not None and b is matched_policy(c, configs):
                    continue  # a control against the arm it controls: made below, the arm against its control
                pc = paired_comparison(c.values(metric), b.values(metric), higher_is_better=hib)
                rows.append({"label": c.label, "lam": c.lam, "ref": ref, "ref_label": b.label, "metric": metric,
                             "control": c.control_of is not None,
                             "claim": c.dynamic and c.control_of is None and ref == baseline,
                             "ceiling": ceiling(metric, c.values(metric), b.values(metric), pc["seeds"]), **pc})
    for b in configs:
        c = matched_policy(b, configs) if b.control_of is not None else None
        if c is None:
            continue
        kind = b.control_kind or "strength"
        # a control of the reference (fixed mixup switched off late) is another fixed recipe: every dynamic
        # configuration compared with the reference is compared with it too
        vs = [c] + ([d for d in configs if d.control_of is None and d.dynamic and c in references(d, baseline, configs)]
                    if c.lam == baseline and kind != "strength" else [])
        for d in vs:
            pc = paired_comparison(d.values(metric), b.values(metric), higher_is_better=hib)
            rows.append({"label": d.label, "lam": d.lam, "ref": "matched", "ref_label": b.label, "metric": metric,
                         "kind": kind, "control": False, "claim": matched == "primary" and d.dynamic,
                         "ceiling": ceiling(metric, d.values(metric), b.values(metric), pc["seeds"]), **pc})
    for row in rows:
        claim = row.pop("claim")
        if planned is not None:
            claim = (row["label"], row["ref_label"]) in planned
        row["family"] = "primary" if primary and claim else "exploratory"
    for family in ("primary", "exploratory"):
        members = [r for r in rows if r["family"] == family]
        m = sum(math.isfinite(r["p"]) for r in members)
        for row, p_adj in zip(members, holm([r["p"] for r in members]), strict=True):
            row["p_adj"] = p_adj
            row["verdict"] = verdict(row["diff"], row["lo"], row["hi"], p_adj, alpha, higher_is_better=hib, n=row["n"])
            lo, hi = (row["lo"], row["hi"]) if row["n"] < 2 or len(set(row["d"])) == 1 else \
                mean_ci(row["d"], 1 - alpha / max(m, 1))[2:4]
            row.update(lo_sim=lo, hi_sim=hi, m=m)
    return rows


CEILING = 0.999  # a mean score in [0, 1] at or above this is at the ceiling: 0.9995 and 1.000 print alike


def ceiling(metric: str, a: dict, b: dict, seeds: list) -> tuple[float, float] | None:
    """(mean of ``a``, mean of ``b``) over the paired ``seeds`` where ``metric`` is a score in [0, 1] and both
    means are at least ``CEILING`` (every seed at 1.000 is such a case): a test that both sides pass
    (nearly) perfectly cannot tell them apart, whatever the p-value says. Else None."""
    if not bounded(metric) or not seeds:
        return None
    means = statistics.fmean(a[s] for s in seeds), statistics.fmean(b[s] for s in seeds)
    return means if min(means) >= CEILING else None


def matched_family(runs: list[Run]) -> str:
    """``study.matched`` as the runs declared it: "exploratory" only where every run that says says so."""
    said = {((r.summary.get("config") or {}).get("study") or {}).get("matched") for r in runs} - {None}
    return "exploratory" if said == {"exploratory"} else "primary"


def declared(runs: list[Run]) -> tuple[str, str]:
    """The primary comparison the runs' config declared before they ran (``study.reference``,
    ``study.metric``): one (reference policy, metric) shared by every run; beta and test_acc where no
    run declares one (older records). A run without a recorded config (still running, or killed before its
    first summary) declares nothing."""
    said = [r.summary["config"].get("study") or {} for r in runs if r.summary.get("config")]
    pairs = {s.get("reference", "beta") for s in said}, {s.get("metric", "test_acc") for s in said}
    if len(pairs[0]) > 1 or len(pairs[1]) > 1:
        raise ValueError(f"the runs declare different primary comparisons (study.reference {sorted(pairs[0])}, "
                         f"study.metric {sorted(pairs[1])}); expected one per sweep, or --baseline/--metric")
    return next(iter(pairs[0]), "beta"), next(iter(pairs[1]), "test_acc")


def build_table(configs: list[Config], metric: str, others: list[str], comparisons: list[dict],
                refs: tuple[str, ...]) -> list[dict]:
    """One row per configuration: n completed, mean/std/CI of ``metric``, mean±std of ``others`` and of the
    mixing strength (``lam_strength``, each run's mean over epochs), and the verdict against each reference;
    sorted by the mean of ``metric`` (best first)."""
    table = []
    for c in configs:
        mean, std, lo, hi, _ = mean_ci(list(c.values(metric).values()))
        row = {"label": c.label, "n": len(c.done), "mean": mean, "std": std, "lo": lo, "hi": hi, "config": c}
        for m in others:
            row[m] = mean_ci(list(c.values(m).values()))[:2]
        row["lam_strength"] = mean_ci([r.epoch_mean("lam_strength") for r in c.done])[:2]
        if any(x["ref"] == "matched" for x in comparisons):
            hit = [(x["verdict"], x["diff"], x.get("kind", "strength"), x["ref_label"]) for x in comparisons
                   if x["label"] == c.label and x["ref"] == "matched"]
            kinds = {k for _, _, k, _ in hit}
            row["vs matched"] = ("(control)" if c.control_of is not None else "; ".join(
                (f"vs {ref}: " if kinds != {"strength"} else "") + v + (f" (Δ {d:+.4f})" if v in FLIP else "")
                for v, d, _, ref in hit) or "—")
        for ref in refs:
            hit = [(x["verdict"], x["diff"]) for x in comparisons if x["label"] == c.label and x["ref"] == ref]
            # the reference itself; a reference policy under a pairing of its own (C-Mixup) is compared with it
            reference = c.lam == ref and c.control_of is None and not hit
            # A comparison made the other way round (none vs beta, read in beta's row as beta vs none).
            # Only from c's own references: C-Mixup (beta under label_kernel) vs none is not none vs beta.
            mine = {b.label for b in references(c, ref, configs)}
            hit += [(FLIP.get(x["verdict"], x["verdict"]), -x["diff"]) for x in comparisons
                    if x["ref_label"] == c.label and x["label"] in mine and not x.get("control")]
            row[f"vs {ref}"] = "(reference)" if reference else "; ".join(
                v + (f" (Δ {d:+.4f})" if v in FLIP else "") for v, d in hit) or "no matching reference"
        table.append(row)
    sign = -1 if metric in LOWER_IS_BETTER else 1
    return sorted(table, key=lambda r: -sign * r["mean"] if math.isfinite(r["mean"]) else math.inf)


def _pm(mean_std: tuple[float, float]) -> str:
    m, s = mean_std
    return _f(m) + ("" if not math.isfinite(s) else f" ± {_f(s)}")


# ----------------------------------------------------------------------------- the document


def _budget(configs: list[Config]) -> str:
    """data, train subset, model with its options, epochs; several values joined by commas."""
    def vals(k: str) -> str:
        return ",".join(dict.fromkeys("all" if c.flat.get(k) is None else str(c.flat.get(k)) for c in configs))
    model_opts = dict.fromkeys(k for c in configs for k in c.flat if k.startswith("model.") and k != "model.name")
    opts = ", ".join(f"{k.split('.', 1)[1]}={vals(k)}" for k in model_opts)
    return (f"data={vals('data.name')} (train_subset={vals('data.train_subset')}), model={vals('model.name')}"
            + (f" ({opts})" if opts else "") + f", {vals('trainer.epochs')} epochs")


def _evidence(comps: dict[str, list[dict]], n_text: str, budget: str, baseline: str,
              planned: list[str] | None = None, alpha: float = 0.05) -> list[tuple]:
    """One bullet per metric and reference: which policies are detectably better, worse, or neither.
    ``planned``: the primary family as a study's plan.yaml states it."""
    items = []
    for m, rows in comps.items():
        name = NAMES.get(m, m)
        if not rows:
            items.append(f"{name}: no comparison could be made (no matching lam={baseline} or lam=none runs)")
        for ref, fam in dict.fromkeys((r["ref_label"], r["family"]) for r in rows):
            mine = [r for r in rows if r["ref_label"] == ref and r["family"] == fam]
            parts = []
            for word in ("better", "worse"):
                hits = [f"{r['label']} ({r['diff']:+.4f}, 95% CI [{r['lo']:+.4f}, {r['hi']:+.4f}])"
                        for r in mine if r["verdict"] == word]
                if hits:
                    parts.append(f"detectably {word}: " + ", ".join(hits))
            rest = [r["label"] for r in mine if r["verdict"] not in ("better", "worse")]
            if rest:
                parts.append("no detectable difference: " + ", ".join(rest))
            items.append(f"{name} against {ref} ({fam}) — " + "; ".join(parts))
    primary = [r for rows in comps.values() for r in rows if r.get("family") == "primary"]
    refs = [f"lam={baseline}"] * any(r["ref"] != "matched" for r in primary) + \
        ["its strength-matched Beta control (fixed mixup of the same mean strength)"] * any(
            r["ref"] == "matched" for r in primary)
    rest = "Everything else is exploratory (Holm within each exploratory set) and supports no claim on its own. "
    if primary and planned is not None:
        family = (f"The primary comparison, declared in plan.yaml before the runs: {'; '.join(planned)}; Holm over "
                  f"its {len(primary)} test(s) made here. " + rest)
    else:
        family = (f"The primary comparison, declared before the runs (study.reference, study.metric, study.matched): "
                  f"each dynamic λ policy against {' and against '.join(refs)} on "
                  f"{NAMES.get(primary[0]['metric'], primary[0]['metric'])}, Holm over its {len(primary)} test(s). "
                  + rest if primary else "No primary comparison could be made: every verdict below is exploratory. ")
    lead = (f"At {n_text} (budget: {budget}). {family}Δ is the seed-matched mean difference; a policy is called "
            f"better or worse only when the Holm-adjusted paired t-test gives p < {alpha:g} and the 95% CI of Δ "
            "excludes 0. "
            "Differences smaller than the seed-to-seed noise are not ranked, and a verdict holds for this budget only.")
    return [("p", lead), ("ul", items)]


def _save(fig: plt.Figure, path: Path) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def _md(blocks: list[tuple]) -> str:
    out = []
    for b in blocks:
        if b[0] == "table":
            out += ["| " + " | ".join(b[1]) + " |", "|" + "---|" * len(b[1])]
            out += ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in b[2]]
            out.append("")
        elif b[0] == "figure":
            out += [f"![{b[2]}](figures/{b[1]}.png)", "", f"*{b[2]}*", ""]
        elif b[0] == "ul":
            out += [f"- {item}" for item in b[1]] + [""]
        else:
            out += [{"h1": "# ", "h2": "## ", "p": "", "note": "> "}[b[0]] + b[1], ""]
    return "\n".join(out)


def _html(blocks: list[tuple], title: str) -> str:
    e = html.escape
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>"
           "body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}"
           "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}"
           "img{max-width:100%}figcaption{font-style:italic}</style></head><body>"]
    for b in blocks:
        if b[0] == "table":
            out.append("<table><tr>" + "".join(f"<th>{e(c)}</th>" for c in b[1]) + "</tr>" + "".join(
                "<tr>" + "".join(f"<td>{e(str(v))}</td>" for v in row) + "</tr>" for row in b[2]) + "</table>")
        elif b[0] == "figure":
            src = "data:image/png;base64," + base64.b64encode(b[3]).decode()
            out.append(f"<figure id='{b[1]}'><img alt='{e(b[2])}' src='{src}'>"
                       f"<figcaption>{e(b[2])}</figcaption></figure>")
        elif b[0] == "ul":
            out.append("<ul>" + "".join(f"<li>{e(item)}</li>" for item in b[1]) + "</ul>")
        elif b[0] == "note":
            out.append(f"<blockquote>{e(b[1])}</blockquote>")
        else:
            out.append(f"<{b[0]}>{e(b[1])}</{b[0]}>")
    return "\n".join(out + ["</body></html>"])


def _log_wandb(runs: list[Run], out: Path, columns: list[str], rows: list[list], meta: dict) -> None:
    """The report's table and figures as one W&B run, where the runs logged to W&B; a study's run is tagged
    with the study's name and plan hash, as its runs are (``study.run``)."""
    logger_cfg = next((r.config["logger"] for r in runs if r.config.get("logger", {}).get("name") == "wandb"), None)
    if logger_cfg is None or importlib.util.find_spec("wandb") is None:
        return
    from ..run import loggers

    study = next((r.config["study"]["run"] for r in runs if (r.config.get("study") or {}).get("run")), None)
    tags = [f"study:{study['name']}", f"plan:{study['plan']}"] if study else []
    images = {f"figures/{p.stem}": p for p in sorted((out / "figures").glob("*.png"))}
    loggers.log_report(out, config=meta, tables={"report": (columns, rows)}, images=images, tags=tags,
                       project=logger_cfg.get("project", "mixlab"), entity=logger_cfg.get("entity"),
                       mode=logger_cfg.get("mode", "auto"))


def _status_line(runs: list[Run]) -> str:
    """"12 runs: 11 completed, 1 failed" (statuses in lifecycle order)."""
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.status] = counts.get(r.status, 0) + 1
    order = sorted(counts, key=lambda s: (STATUS_ORDER.index(s) if s in STATUS_ORDER else 99, s))
    return f"{len(runs)} run{'s' * (len(runs) != 1)}: " + ", ".join(f"{counts[s]} {s}" for s in order)


def _text_blocks(sweep: Path, runs: list[Run], table_block: tuple, comps: dict[str, list[dict]], n_text: str,
                 budget: str, metric: str, baseline: str, study: tuple[list, list, list[str]] | None = None,
                 alpha: float = 0.05, note: str | None = None) -> list[tuple]:
    """Header, evidence, the configuration table, one comparison table per metric, the failed runs. ``study``:
    (the verdict, which leads; the plan and the warnings, after the header; the planned family's text).
    ``note``: one line set off right after the title (``--note``: a superseded report says so)."""
    name = NAMES.get(metric, metric)
    lead, plan, planned = study if study is not None else ([], [], None)
    blocks: list[tuple] = [("h1", f"mixlab report: {sweep}"), *([("note", note)] if note else []), *lead,
                           ("p", f"{_status_line(runs)}. Budget: {budget}."),
                           *plan, ("h2", "What the evidence supports"),
                           *_evidence(comps, n_text, budget, baseline, planned, alpha),
                           ("h2", f"Configurations (sorted by mean {name}; not a ranking, see the verdicts)"),
                           table_block, ("p", STRENGTH_NOTE), *_tuning(runs)]
    for m, cr in comps.items():
        blocks.append(("h2", f"Paired comparisons on {NAMES.get(m, m)} (seed-matched; Holm within each family)"))
        blocks.append(("table", ["configuration", "vs", "family", "n pairs", "Δ mean", "95% CI",
                                 "95% CI, simultaneous over the family", "p (paired t)", "p (Holm)", "p (Wilcoxon)",
                                 "verdict"],
                       [[c["label"], c["ref_label"], c["family"], c["n"], _f(c["diff"]), f"[{_f(c['lo'])}, {_f(c['hi'])}]",
                         f"[{_f(c['lo_sim'])}, {_f(c['hi_sim'])}] (m={c['m']})", _f(c["p"], 3), _f(c["p_adj"], 3),
                         _f(c.get("p_wilcoxon"), 3), c["verdict"]] for c in cr])
                      if cr else
                      ("p", f"No comparison possible: no lam={baseline} or lam=none configuration shares the other "
                            "keys with the rest (missing baseline)."))
        if cr:
            blocks.append(("p", _test_agreement(cr)))
        if any(c.get("ceiling") for c in cr):
            said = "; ".join(ceiling_text(c) for c in cr if c.get("ceiling"))
            blocks.append(("p", f"⚠ At the ceiling: {said}."))
    bad = [r for r in runs if r.status != "completed"]
    blocks.append(("h2", f"Failed, diverged or unfinished runs ({len(bad)})"))
    blocks.append(("table", ["run dir", "configuration", "seed", "status", "error"],
                   [[str(r.path.relative_to(sweep)) or ".", r.label, r.seed, r.status, r.summary.get("error", "")]
                    for r in bad]) if bad else ("p", f"None: all {len(runs)} runs completed."))
    return blocks


def _tuning(runs: list[Run]) -> list[tuple]:
    """How the λ hyperparameters were chosen, from the runs' ``tuning`` records (``tuned=``): per policy
    the budget, the search space, the chosen values and their validation score; or that nothing was tuned."""
    seen: dict[str, dict] = {}
    for r in runs:
        t = r.summary.get("tuning")
        if isinstance(t, dict) and (r.config.get("study") or {}).get("control_of") is None:
            seen.setdefault(json.dumps([t.get("file"), t.get("lambda")]), t)
    if not seen:
        return [("h2", "How the λ hyperparameters were chosen"),
                ("p", "No run used tuned=: every policy ran at the values of its config, untuned. A fair comparison "
                      "tunes each policy with the same budget on the validation split first (python -m mixlab.tune) "
                      "and runs the comparison with tuned=<its tuned.yaml>.")]
    ts = list(seen.values())
    budgets = {t.get("trials") for t in ts}
    lead = ("The λ policies' hyperparameters were chosen by python -m mixlab.tune (seeded random search, trial 0 = "
            "the config's defaults), each trial scored by its final validation metric; the test set never entered "
            "selection. " + (f"Budget: {next(iter(budgets))} trials per policy (a policy with nothing to tune runs "
                             "once). " if len(budgets) == 1 and None not in budgets else
                             f"⚠ Budgets differ or are unknown across policies ({sorted(map(str, budgets))} trials): "
                             "the comparison is not equal-budget. ")
            + "The controls (strength-matched Beta) are not tuned: their α follows from the strength they match.")
    rows = [[t.get("lambda"), t.get("file"), f"{t.get('trials_run', '—')} of {t.get('trials', '—')}",
             t.get("search_seed", "—"), _space_text(t.get("space")),
             ", ".join(f"{k}={_short(v)}" for k, v in (t.get("chosen") or {}).items()) or "—",
             f"{t.get('objective_key') or 'objective'} {_f(t.get('best_objective'))}"] for t in ts]
    return [("h2", "How the λ hyperparameters were chosen"), ("p", lead),
            ("table", ["λ policy", "tuned.yaml", "trials run (of budget)", "search seed", "search space",
                       "chosen", "chosen trial's validation score"], rows)]


# ----------------------------------------------------------------------------- a study's plan (python -m mixlab.study)

def _figures(configs: list[Config], metric: str, kind: str,
             primary: list[dict]) -> list[tuple[str, plt.Figure | None, str]]:
    # Per-epoch curves from the validation split: the test set is read once, at the end (unless the
    # runs set trainer.test_every, whose test curves are then shown). Runs that read validation only at
    # the end (trainer.val_every=0) have no curve of it: the training loss per epoch stands in.
    def curve_of(key: str) -> bool:  # some run has the key in at least two epochs
        return any(sum(isinstance(row.get(key), (int, float)) for row in r.rows) >= 2 for c in configs for r in c.done)

    score = SCORE[kind]
    has_val = any(row.get(f"val_{score}") is not None for c in configs for r in c.done for row in r.rows)
    split = "val" if has_val else "test"
    curve = f"{split}_{score}"
    if not has_val and metric.startswith("test_") and metric != "test_ece":
        curve = metric
    if not curve_of(curve):
        curve = "train_loss"
    calibration = [] if kind != "classification" else [m for m in ("test_ece", "test_ece_ts") if m != metric and (
        m == "test_ece" or any(r.value(m) is not None for c in configs for r in c.done))]
    return [("paired", fig_paired(primary),
             "The declared primary comparison, seed by seed: Δ per policy against its reference with intervals "
             "simultaneous over the family (Bonferroni: an interval that excludes 0 implies Holm's verdict, not "
             "conversely); colour: the Holm verdict"),
            ("curves", fig_curves(configs, curve), f"{curve_name(curve)} per epoch, mean and min–max band"),
            ("final", fig_final(configs, [metric] + calibration),
             "Final metrics per configuration, mean with 95% t-interval over seeds"),
            ("reliability", fig_reliability(configs), "Reliability diagrams, final epoch, seeds pooled"),
            ("reliability_ts", fig_reliability(configs, "reliability_ts", " after temperature scaling (T fitted on "
                                               "validation)"),
             "Reliability diagrams after temperature scaling with T fitted on the validation split, seeds pooled"),
            ("corruptions", fig_corruptions(configs), "Accuracy on the corrupted test sets against severity"),
            ("lam_hist", fig_lam_hist(configs), "λ distribution of the final epoch, seeds pooled"),
            ("lam_strength", fig_lam_strength(configs),
             "Mean λ and mixing strength min(λ, 1 − λ) per epoch, mean and min–max band over seeds"),
            ("lam_distance", fig_lam_distance(configs), "λ against pair distance for distance/sk (beta for contrast)"),
            ("mixed_examples", fig_mixed(configs), "Mixed training images (epoch 1) of one run per configuration"),
            ("decision_boundaries", fig_boundaries(configs), "Decision boundaries on moons, one seed per config")]


def _severity_errors(c: Config) -> dict[str, list[float]] | None:
    """Per corruption, the mean over ``c``'s completed seeds of the test error at each severity (None where
    no run recorded ``eval.corruptions``)."""
    tables = [r.summary["corruptions"] for r in c.done if isinstance(r.summary.get("corruptions"), dict)]
    if not tables:
        return None
    return {name: [statistics.fmean(1 - t[name][k]["acc"] for t in tables) for k in range(len(per))]
            for name, per in tables[0].items()}


def mce(errors: dict[str, list[float]], baseline: dict[str, list[float]]) -> float:
    """Hendrycks & Dietterich's mean corruption error: per corruption c, CE_c = Σ_s E_{s,c} / Σ_s E^base_{s,c},
    then the mean over corruptions (the baseline here: ``none``, plain training, instead of AlexNet)."""
    return statistics.fmean(sum(errors[c]) / sum(baseline[c]) for c in errors)


def _robustness(configs: list[Config]) -> list[tuple]:
    """The robustness table (eval.corruptions): mean accuracy and ECE over the corrupted sets, and mCE
    against plain training (``none``) with the same other keys (``references``: a control's own keys aside, a
    mixer of its own against plain training under input mixing)."""
    errs = {c.label: _severity_errors(c) for c in configs}
    if not any(errs.values()):
        return []
    rows = []
    for c in configs:
        if errs[c.label] is None:
            continue
        base = c if c.lam == "none" and c.control_of is None else next(
            (b for b in references(c, "none", configs) if errs[b.label] is not None), None)
        acc = [r.value("test_corruption_acc") for r in c.done if r.value("test_corruption_acc") is not None]
        ece = [r.value("test_corruption_ece") for r in c.done if r.value("test_corruption_ece") is not None]
        rows.append([c.label, _n_cell(c), _pm(mean_ci(acc)[:2]), _pm(mean_ci(ece)[:2]),
                     _f(mce(errs[c.label], errs[base.label]), 3) if base is not None else "—"])
    return [("h2", "Robustness: the corrupted test sets (eval.corruptions)"),
            ("p", "Accuracy and ECE averaged over every corruption and severity (mean ± std over seeds); mCE as "
                  "Hendrycks & Dietterich (2019) define it, with plain training (lam=none, same other keys) as the "
                  "baseline in place of AlexNet: below 1 is more robust than plain training. mCE is computed from "
                  "the seed-averaged errors, so it has no interval here."),
            ("table", ["configuration", "n (completed/launched)", "corruption accuracy", "corruption ECE", "mCE vs none"],
             rows)]


def _test_agreement(comps: list[dict], alpha: float = 0.05) -> str:
    """Whether the paired t-test and the Wilcoxon signed-rank test agree (each unadjusted, at ``alpha``)."""
    checked = [c for c in comps if math.isfinite(c.get("p_wilcoxon", math.nan)) and math.isfinite(c["p"])]
    if not checked:
        return (f"Wilcoxon signed-rank check: needs at least {WILCOXON_MIN_PAIRS} seed pairs (shown as —); "
                "with fewer, only the t-test speaks, and it assumes roughly normal differences.")
    split = [c for c in checked if (c["p"] < alpha) != (c["p_wilcoxon"] < alpha)]
    if not split:
        return (f"The paired t-test and the Wilcoxon signed-rank test agree (each at p < {alpha}, unadjusted) "
                f"on all {len(checked)} comparisons with at least {WILCOXON_MIN_PAIRS} pairs.")
    return ("The paired t-test and the Wilcoxon signed-rank test DISAGREE (at p < "
            f"{alpha}, unadjusted) on: " + "; ".join(f"{c['label']} vs {c['ref_label']} (t p={_f(c['p'], 3)}, "
                                                      f"Wilcoxon p={_f(c['p_wilcoxon'], 3)})" for c in split)
            + ". Read those verdicts with care: the differences may not be normal.")


def _n_cell(c: Config) -> str:
    """``completed/launched``, flagged where runs of the configuration failed, diverged or did not finish:
    those count against their policy rather than disappearing from its mean."""
    lost = len(c.runs) - len(c.done)
    return f"{len(c.done)}/{len(c.runs)}" + (f" ⚠ {lost} not completed" if lost else "")


SCORE = {"classification": "acc", "regression": "mse", "detection": "map"}  # each kind's headline metric


def result_kind(done: list[Run]) -> str:
    """What the completed runs measured: ``detection`` (mAP), ``regression`` (MSE) or ``classification``."""
    if done and all(r.value("test_map") is not None for r in done):
        return "detection"
    return "regression" if done and all(r.value("test_acc") is None for r in done) else "classification"


def write_report(sweep: str | Path, out: str | Path | None = None, baseline: str | None = None,
                 metric: str | None = None, note: str | None = None) -> tuple[Path, str]:
    """Write report.md, report.html and figures/ for ``sweep`` into ``out``; returns (md path, table).
    ``baseline``/``metric`` (the primary comparison) default to what the study's plan.yaml declared, else
    to what the runs declared (``study.*``). ``note``: one line shown right after the title of both files."""
    if note is not None and (not note.strip() or "\n" in note or "\r" in note):
        raise ValueError(f"--note={note!r}: expected one non-empty line")
    sweep = Path(sweep)
    out = Path(out) if out is not None else sweep
    runs = load_runs(sweep)
    if not runs:
        raise FileNotFoundError(f"{sweep}: expected run records (summary.json) below it, got none")
    study = read_study(sweep)  # python -m mixlab.study's DIR/compare: its plan.yaml declared the comparison
    if study is not None:
        said = ((study["plan"].get("evaluation") or {}).get("reference", "beta"),
                (study["plan"].get("evaluation") or {}).get("metric", "test_acc"))
    else:
        said = declared(runs) if baseline is None or metric is None else None
    baseline = baseline if baseline is not None else said[0]
    metric = metric if metric is not None else said[1]
    if metric not in NAMES:
        raise ValueError(f"--metric={metric!r}: expected one of {sorted(NAMES)}")
    configs = group_runs(runs)
    done = [r for r in runs if r.status == "completed"]
    kind = result_kind(done)
    if kind != "classification" and metric == "test_acc":
        metric = f"test_{SCORE[kind]}"  # no accuracy exists for a regression (its error) or detection (its mAP)
    # The median of the last 10 epochs (OpenMixup) needs a test evaluation every epoch for 20 epochs or more:
    # shown only where a run recorded it.
    median = any(r.value("median_last10_acc") is not None for r in done)
    # Calibration after temperature scaling (T fitted on validation) beside the raw figures, where recorded.
    scaled = any(r.value("test_nll_ts") is not None for r in done)
    recorded = {m for m in ("test_aece", "test_ood_auroc", "test_ood_fpr95") if any(r.value(m) is not None for r in done)}
    others = {"regression": ["test_mae"], "detection": ["test_map", "test_map50", "test_map75"]}.get(kind, [
        m for m in ("test_acc", "median_last10_acc", "test_nll", "test_nll_ts", "test_ece", "test_ece_ts", "test_aece",
                    "test_brier", "test_ood_auroc", "test_ood_fpr95")
        if (median or m != "median_last10_acc") and (scaled or not m.endswith("_ts"))
        and (m not in ("test_aece", "test_ood_auroc", "test_ood_fpr95") or m in recorded)])
    others = [m for m in others if m != metric]
    alpha = float(((study or {}).get("plan", {}).get("decisions") or {}).get("alpha", 0.05))
    family = planned_family(study["plan"], configs, metric) if study is not None else None
    planned = {f["key"] for f in family if f["key"] is not None} if family is not None else None
    comps = {m: compare(configs, m, baseline, primary=(m == metric), matched=matched_family(runs), alpha=alpha,
                        planned=planned)
             for m in dict.fromkeys([metric] + (["test_ece"] + ["test_ece_ts"] * scaled) * (kind == "classification"))}
    checked, blind = check_fingerprints(comps, configs, sweep)  # before anything is written
    # a column per reference the runs hold (the baseline's always: its absence is said in every row)
    refs = tuple(dict.fromkeys([baseline] + ["none"] * any(c.lam == "none" for c in configs)))
    table = build_table(configs, metric, others, comps[metric], refs)
    configs = [row["config"] for row in table]  # one order (the table's) in every figure
    ns = sorted({row["n"] for row in table})
    n_text = f"n={ns[0]}{'–' + str(ns[-1]) if len(ns) > 1 else ''} seeds per configuration"
    vs = [f"vs {ref}" for ref in refs] + ["vs matched"] * ("vs matched" in table[0])
    columns = ["configuration", "n (completed/launched)", f"{NAMES[metric]} mean ± std", "95% CI", *[NAMES[m] for m in others],
               STRENGTH, *[{"vs matched": "vs its strength-matched control"}.get(v, v) for v in vs]]
    rows = [[row["label"], _n_cell(row["config"]), _pm((row["mean"], row["std"])), f"[{_f(row['lo'])}, {_f(row['hi'])}]",
             *[_pm(row[m]) for m in others], _pm(row["lam_strength"]), *[row[v] for v in vs]]
            for row in table]
    parts = None if study is None else (
        _verdict_lead(family, comps[metric], alpha),
        _plan_blocks(study, _fingerprint_note(checked, blind)) + _study_warnings(study, configs, comps, runs, sweep),
        [f["text"] for f in family])
    blocks = _text_blocks(sweep, runs, ("table", columns, rows), comps, n_text, _budget(configs), metric, baseline,
                          parts, alpha, note=note)
    blocks += _robustness(configs)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    blocks.append(("h2", "Figures"))
    for fname, fig, caption in _figures(configs, metric, kind, comps[metric]):
        if fig is not None:
            blocks.append(("figure", fname, f"{caption} ({n_text}).", _save(fig, out / "figures" / f"{fname}.png")))
    md = out / "report.md"
    md.write_text(_md(blocks))
    (out / "report.html").write_text(_html(blocks, f"mixlab report: {sweep}"))
    _log_wandb(runs, out, columns, [[str(v) for v in row] for row in rows],
               {"sweep": str(sweep), "metric": metric, "baseline": baseline, "runs": _status_line(runs)})
    return md, _md([("table", columns, rows)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mixlab.report", description=__doc__.split("\n\n")[1])
    ap.add_argument("sweep", help="a sweep directory (hydra.sweep.dir) or one run directory")
    ap.add_argument("--out", help="where report.md, report.html and figures/ go (default: the sweep dir)")
    ap.add_argument("--baseline", default=None, help="lam.name of the primary reference (default: the runs' "
                                                     "study.reference, else beta)")
    ap.add_argument("--metric", default=None, help="the primary metric (default: the runs' study.metric, else "
                                                   "test_acc; test_mse for regression)")
    ap.add_argument("--note", default=None, metavar="TEXT",
                    help="one line set off as a notice right after the title of report.md and report.html, "
                         "e.g. 'Superseded by docs/results/<study>: <why>' (default: none)")
    args = ap.parse_args(argv)
    try:
        md, table = write_report(args.sweep, args.out, args.baseline, args.metric, note=args.note)
    except (FileNotFoundError, ValueError) as e:
        print(f"mixlab.report: error: {e}", file=sys.stderr)
        return 2
    print(f"report: {md} and {md.with_suffix('.html')}\n\n{table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
