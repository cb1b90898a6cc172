"""The parts of a report that a study's plan adds (``python -m mixlab.study``): the verdict of the plan's
primary family first, the plan the study ran under and its deviations, and the warnings (tuning that chose
within noise, runs missing against the plan); and the check, for every report, that runs compared with
each other saw the same data (their fingerprints)."""
from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path

import yaml

from .plan import PLAN, plan_hash
from .runs import FLIP, Config, Run, _finite, _short, _space_text, bounded, ceiling_text, matched_policy
from .runs import fmt as _f

# plan.yaml's primary_family: ARM vs REF on METRIC, REF an arm, "its [KIND] control" or "ARM's KIND control"
FAMILY = re.compile(r"^(?P<arm>\S+) vs (?:its (?:(?P<kind>\w+) )?control|(?P<owner>\S+)'s (?P<okind>\w+) control|"
                    r"(?P<ref>\S+)) on (?P<metric>\S+)$")


def read_study(sweep: Path) -> dict | None:
    """What ``python -m mixlab.study DIR`` wrote beside ``DIR/compare``, where ``sweep`` is that folder and
    ``DIR/plan.yaml`` exists: ``{"plan": ..., "tuning": tuning.json or None, "go": go.json or None}``.
    None for any other folder: a sweep without a plan gets the report it always got."""
    folder = sweep.resolve()
    if folder.name != "compare" or not (folder.parent / PLAN).is_file():
        return None
    path = folder.parent / PLAN
    try:
        plan = yaml.safe_load(path.read_text(encoding="utf-8"))
        found = {name: json.loads(p.read_text(encoding="utf-8")) if (p := folder.parent / name).is_file() else None
                 for name in ("tuning.json", "go.json")}
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise ValueError(f"{path.parent}: its plan.yaml, tuning.json or go.json cannot be read ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); expected the files python -m mixlab.study "
                         "writes") from None
    if not isinstance(plan, dict) or not isinstance(plan.get("arms"), list) or "hash" not in plan:
        raise ValueError(f"{path}: expected the plan python -m mixlab.study writes (a mapping with arms, evaluation, "
                         f"primary_family and hash), got {type(plan).__name__}")
    return {"plan": plan, "tuning": found["tuning.json"] or {}, "go": found["go.json"]}


def planned_family(plan: dict, configs: list[Config], metric: str) -> list[dict]:
    """Each comparison of plan.yaml's ``primary_family``: its ``text`` and the (label, reference label) ``key``
    of the configurations it compares, or ``why`` these records cannot make it."""
    arms: dict[str, Config] = {}
    for c in configs:
        if c.control_of is None:
            arms.setdefault(c.arm, c)
    out = []
    for text in plan.get("primary_family") or []:
        entry, m = {"text": str(text), "key": None, "why": None}, FAMILY.match(str(text))
        if m is None:
            entry["why"] = "not of the form 'ARM vs REFERENCE on METRIC'"
        elif m["metric"] != metric:
            entry["why"] = f"this report's metric is {metric}, not the plan's {m['metric']}"
        elif m["arm"] not in arms:
            entry["why"] = f"no run of arm {m['arm']} in these records"
        else:
            c = arms[m["arm"]]
            if m["ref"] is None:  # a control: the arm's own, or another arm's (the reference's stop_late)
                owner, kind = (arms.get(m["owner"]), m["okind"]) if m["owner"] else (c, m["kind"] or "strength")
                ref = next((b for b in configs if b.control_of is not None and (b.control_kind or "strength") == kind
                            and owner is not None and matched_policy(b, configs) is owner), None)
                entry["why"] = None if ref is not None else \
                    f"no run of the {kind} control of {m['owner'] or m['arm']} in these records"
            else:
                ref = arms.get(m["ref"])
                entry["why"] = None if ref is not None else f"no run of arm {m['ref']} in these records"
            if ref is not None:
                entry["key"] = (c.label, ref.label)
        out.append(entry)
    return out


def _delta(x: float, metric: str) -> str:
    """A difference of ``metric``: in percentage points for a score in [0, 1] (see ``_unit``), else as the
    tables print it."""
    if not math.isfinite(x):
        return "—"
    return f"{100 * x:+.2f}" if bounded(metric) else f"{x:+.4f}"


def _unit(metric: str) -> str:
    return " pp" if bounded(metric) else ""


def _verdict_words(row: dict, alpha: float) -> str:
    """One primary comparison in words no stronger than its interval, from its row of the comparison table."""
    n, metric = row["n"], row["metric"]
    if n < 2:
        return f"untestable: {n} seed pair(s), where a paired test needs at least 2"
    lo, hi, unit = _delta(row["lo"], metric), _delta(row["hi"], metric), _unit(metric)
    head = (f"Δ {_delta(row['diff'], metric)}{unit}, 95% CI [{lo}, {hi}]{unit}, Holm p = {_f(row['p_adj'], 3)}, "
            f"n = {n} seed pairs — ")
    if row["verdict"] in FLIP:
        words = f"detectably {row['verdict']} at α = {alpha:g}: by between {lo} and {hi}{unit}, at this budget"
    else:
        words = (f"not distinguishable at α = {alpha:g} with n = {n}; no evidence of equality either: the interval "
                 f"allows anything from {lo} to {hi}{unit}")
    if row.get("ceiling"):
        a, b = row["ceiling"]
        words += f"; ⚠ {a:.3f} vs {b:.3f} is no evidence of equality: the test cannot tell these apart"
    return head + words


def _verdict_lead(family: list[dict], rows: list[dict], alpha: float) -> list[tuple]:
    """The first block of a study's report: each planned primary comparison, Holm-adjusted, and the overall line."""
    title = ("h2", "Verdict of the pre-registered primary family")
    if not family:
        return [title, ("p", "plan.yaml declares no primary comparison (no dynamic arm): every comparison below is "
                             "exploratory and supports no claim on its own.")]
    items, found = [], []
    for f in family:
        row = next((r for r in rows if f["key"] is not None and (r["label"], r["ref_label"]) == f["key"]), None)
        if row is None:
            why = f["why"] or "no such comparison in the tables below (--baseline other than the plan's reference?)"
            items.append(f"{f['text']}: not computed — {why}")
        else:
            items.append(f"{f['text']}: {_verdict_words(row, alpha)}")
            found.append((f["text"], row))
    m = max((r["m"] for _, r in found), default=0)
    hits = [f"{text} ({r['verdict']})" for text, r in found if r["verdict"] in FLIP]
    overall = (f"Overall: {len(hits)} of the {len(family)} planned comparisons detected a difference at α = {alpha:g} "
               f"(Holm over {m}): " + "; ".join(hits) + "." if hits else
               f"Overall: none of the {len(family)} planned comparisons detected a difference at α = {alpha:g} (Holm "
               f"over {m}). That is no evidence that the arms are equal: each interval above bounds the differences "
               "this study cannot rule out.")
    if m < len(family):
        overall += (f" ⚠ Holm ran over {m} test(s), not the {len(family)} planned: the others could not be tested "
                    "(above), so this family is incomplete.")
    return [title, ("ul", items), ("p", overall)]


def _plan_blocks(study: dict, fingerprints: str) -> list[tuple]:
    """What the study was run under: plan.yaml's hash, command and commit, the arms with their budgets and
    what tuning chose, the seeds, the decision rules with the go/no-go outcome, and every deviation."""
    plan, tuning, go = study["plan"], study["tuning"], study["go"]
    git = plan.get("git") or {}
    tu, ev, dec = (plan.get(k) or {} for k in ("tuning", "evaluation", "decisions"))
    head = (f"plan.yaml (hash {plan.get('hash')}) was written before the first run by: {plan.get('command')} — at "
            f"git commit {str(git.get('commit') or 'unknown')[:12]}"
            + (" with uncommitted changes" if git.get("dirty") else "") + ".")
    if plan_hash(plan) != plan.get("hash"):
        head += f" ⚠ Its content gives the hash {plan_hash(plan)}: plan.yaml was edited after it was written."
    if tuning.get("plan") not in (None, plan.get("hash")):
        head += f" ⚠ tuning.json was made under plan {tuning['plan']}, not this one."
    chosen = tuning.get("chosen") or {}
    trials = {(t.get("lambda"), t.get("trial")): t for t in tuning.get("trials_run") or []}
    controls: dict[str, list[str]] = {}
    for c in plan.get("controls") or []:
        controls.setdefault(c.get("of"), []).append(c.get("kind", "strength"))
    rows = []
    for a in plan["arms"]:
        t = trials.get((a.get("arm"), chosen.get(a.get("arm"))))
        pick = "—" if t is None else (
            f"trial {t.get('trial')}: " + (", ".join(f"{k}={_short(v)}" for k, v in (t.get("values") or {}).items())
                                           or "nothing to tune")
            + f" ({t.get('objective_key') or 'objective'} {_f(t.get('objective'))})")
        own = ", ".join(a.get("overrides") or [])  # the arm's declared settings (study.arm_overrides)
        rows.append([a.get("arm") + (f" ({own})" if own else ""), a.get("lambda"), a.get("pairing"), "yes" if a.get("dynamic") else "no",
                     _space_text(a.get("space")), a.get("trials"), pick,
                     ", ".join(controls[a.get("arm")]) if a.get("arm") in controls else "—"])
    t_seeds, e_seeds = list(tu.get("seeds") or []), list(ev.get("seeds") or [])
    shared = sorted(set(map(str, t_seeds)) & set(map(str, e_seeds)))
    seeds = (f"Tuning: {tu.get('sampler')} search (search seed {tu.get('search_seed')}) on the validation split, each "
             f"trial one run per tuning seed {t_seeds}; score: {tu.get('score')}; ties: {tu.get('ties')}. Evaluation: "
             f"seeds {e_seeds} "
             + (f"⚠ sharing {shared} with tuning" if shared else "(disjoint from the tuning seeds)")
             + f", reference arm {ev.get('reference')}, metric {ev.get('metric')}; each control on the same seeds.")
    rule = dec.get("go")
    if isinstance(go, dict):
        scores = ", ".join(f"{k} {_f(v)}" for k, v in (go.get("validation") or {}).items())
        outcome = f"{'go' if go.get('go') else 'no-go'} (go.json, on validation {go.get('objective_key')}: {scores})"
    else:
        outcome = ("no check, by design" if rule == "always" else
                   "⚠ its outcome was not recorded (no go.json beside plan.yaml)")
    decisions = (f"Decision rules: go/no-go {rule} — {outcome}. Correction: {dec.get('correction')}, α = "
                 f"{dec.get('alpha')}; the comparison of each dynamic arm with its planned controls is "
                 f"{dec.get('matched')}.")
    devs = [str(d) for d in plan.get("deviations") or []]
    return [("h2", "The plan it was run under"), ("p", head),
            ("table", ["arm", "λ policy", "pairing", "dynamic", "search space", "tuning budget (trials)",
                       "chosen (validation score, mean over the tuning seeds)", "planned controls"], rows),
            ("p", seeds), ("p", decisions),
            *([("p", f"Deviations from the plan ({len(devs)}):"), ("ul", devs)] if devs else
              [("p", "Deviations from the plan: none recorded in plan.yaml.")]),
            ("p", fingerprints)]


def _seed_sd(config: Config | None, key: str, trials: list[dict]) -> tuple[float, str]:
    """The seed-to-seed SD of an arm's validation objective ``key``: over its comparison runs where they
    recorded it, else pooled over its trials' tuning seeds (two or more); NaN where neither says."""
    vals = [v for r in (config.done if config is not None else []) if (v := r.value(key)) is not None]
    if len(vals) >= 2:
        return statistics.stdev(vals), f"{key} over the arm's {len(vals)} comparison runs"
    per = [[o for o in t.get("objectives") or [] if _finite(o)] for t in trials]
    per = [p for p in per if len(p) >= 2]
    if per:
        return (math.sqrt(statistics.fmean(statistics.variance(p) for p in per)),
                f"{key} across the tuning seeds, pooled over the arm's {len(per)} trials")
    return math.nan, ""


def _tuning_noise(study: dict, configs: list[Config]) -> list[str]:
    """Per arm, where tuning chose within noise: the chosen trial's objective equal to another's at the
    printed precision or within the seed-to-seed SD, or all its trials within less than that SD."""
    tuning = study["tuning"]
    chosen = tuning.get("chosen") or {}
    scored = [t for t in tuning.get("trials_run") or [] if _finite(t.get("objective"))]
    arms: dict[str, Config] = {}
    for c in configs:
        if c.control_of is None:
            arms.setdefault(c.arm, c)
    out = []
    for arm in dict.fromkeys(t.get("lambda") for t in scored):
        mine = [t for t in scored if t.get("lambda") == arm]
        best = next((t for t in mine if t.get("trial") == chosen.get(arm)), None)
        if len(mine) < 2 or best is None:
            continue
        key = best.get("objective_key") or "objective"
        sd, source = _seed_sd(arms.get(arm), key, mine)
        near = []
        for t in mine:
            gap = abs(t["objective"] - best["objective"])
            if t is best:
                continue
            if _f(t["objective"]) == _f(best["objective"]):
                near.append(f"trial {t.get('trial')} ({_f(t['objective'])}: equal at the printed precision)")
            elif math.isfinite(sd) and gap <= sd:
                near.append(f"trial {t.get('trial')} ({_f(t['objective'])}: {gap:.4f} apart)")
        spread = max(t["objective"] for t in mine) - min(t["objective"] for t in mine)
        flat = math.isfinite(sd) and spread < sd
        if not near and not flat:
            continue
        noise = f"the seed-to-seed SD {_f(sd)} ({source})" if math.isfinite(sd) else \
            "no seed-to-seed SD (one tuning seed, and no validation score in the comparison runs)"
        text = (f"Tuning chose within noise — arm {arm}: the chosen trial {best.get('trial')} ({key} "
                f"{_f(best['objective'])}) is not told apart from " + (", ".join(near) if near else "its other trials")
                + f"; noise: {noise}")
        if flat:
            text += f"; the spread of its {len(mine)} trials (max − min {spread:.4f}) is below that SD"
        out.append(text + ". Tuning could not tell these values apart: the chosen ones are one draw among equals, "
                          "not a known optimum.")
    return out


def _coverage(study: dict, runs: list[Run], sweep: Path) -> list[str]:
    """Runs missing, not completed, or outside the plan: every arm, and every planned control, on every
    evaluation seed."""
    plan = study["plan"]
    seeds = list((plan.get("evaluation") or {}).get("seeds") or [])
    want = [(a.get("arm"), None, None) for a in plan["arms"]] + \
        [(None, c.get("of"), c.get("kind", "strength")) for c in plan.get("controls") or []]
    found: dict[tuple, list[Run]] = {}
    unplaced = []
    for r in runs:
        if not r.config:
            unplaced.append(_rel(r, sweep))
        else:
            found.setdefault((None, r.control_of, r.control_kind, r.seed) if r.control_of else
                             (r.arm, None, None, r.seed), []).append(r)
    missing, lost = [], []
    for arm, of, kind in want:
        what = f"arm {arm}" if of is None else f"the {kind} control of {of}"
        for s in seeds:
            mine = found.pop((arm, of, kind, s), [])
            if not mine:
                missing.append(f"{what}, seed {s}")
            elif not any(r.status == "completed" for r in mine):
                lost.append(f"{what}, seed {s} (" + ", ".join(f"{_rel(r, sweep)}: {r.status}" for r in mine) + ")")
    items = []
    if missing:
        items.append(f"Runs missing against the plan ({len(missing)} of {len(want) * len(seeds)}: every arm and every "
                     "planned control on every evaluation seed): " + "; ".join(missing) + ".")
    if lost:
        items.append(f"Planned runs that did not complete ({len(lost)}): " + "; ".join(lost)
                     + ". Their seeds drop out of the paired comparisons.")
    if unplaced:
        items.append(f"Run folders without a recorded config ({len(unplaced)}), which the plan cannot place: "
                     + ", ".join(unplaced) + ".")
    extra = [_rel(r, sweep) for rs in found.values() for r in rs]
    if extra:
        items.append(f"Runs outside the plan ({len(extra)}: an arm, control or seed it does not list): "
                     + ", ".join(extra) + ". They appear in the tables but were not planned.")
    return items


def _study_warnings(study: dict, configs: list[Config], comps: dict[str, list[dict]], runs: list[Run],
                    sweep: Path) -> list[tuple]:
    items = (_tuning_noise(study, configs)
             + [f"Ceiling: {ceiling_text(r)}." for rows in comps.values() for r in rows if r.get("ceiling")]
             + _coverage(study, runs, sweep))
    return [("h2", f"Warnings ({len(items)})"),
            ("ul", items) if items else ("p", "None: tuning told its trials apart beyond the seed-to-seed noise, no "
                                              "comparison is at a score's ceiling, and every planned run completed.")]


# ----------------------------------------------------------------------------- the data each run saw


def _rel(r: Run, sweep: Path) -> str:
    return str(r.path.relative_to(sweep)) or "."


def check_fingerprints(comps: dict[str, list[dict]], configs: list[Config], sweep: Path) -> tuple[int, int]:
    """Refuse (``ValueError``, one line naming both runs, the split and both hashes) a comparison of runs that
    saw different data (``summary["dataset"]["fingerprint"]``): runs paired under one seed must share every
    split; every run of a comparison its validation and test sets, and its training examples too unless
    ``data.subset_per_seed`` draws them per seed. Runs without fingerprints (older records) are not checked.
    Returns (compared runs with fingerprints, compared runs without)."""
    by_label = {c.label: c for c in configs}
    seen: dict[Path, bool] = {}

    def run_at(c: Config, seed: object, metric: str) -> Run | None:  # the run whose value the comparison used
        return next((r for r in reversed(c.done) if r.seed == seed and r.value(metric) is not None), None)

    def same(a: Run, b: Run, splits: tuple[str, ...], why: str) -> None:
        fa, fb = a.fingerprints, b.fingerprints
        for split in splits if fa and fb else ():
            if split in fa and split in fb and fa[split] != fb[split]:
                raise ValueError(f"cannot compare {_rel(a, sweep)} with {_rel(b, sweep)}: they saw different {split} "
                                 f"data (fingerprint {fa[split]} vs {fb[split]}); {why}: expected equal fingerprints")

    for rows in comps.values():
        for row in rows:
            c, b = by_label[row["label"]], by_label[row["ref_label"]]
            pairs = [(run_at(c, s, row["metric"]), run_at(b, s, row["metric"])) for s in row["seeds"]]
            every = [r for pair in pairs for r in pair if r is not None]
            seen.update((r.path, bool(r.fingerprints)) for r in every)
            for ra, rb in pairs:
                if ra is not None and rb is not None:
                    same(ra, rb, ("train", "val", "test"), "runs paired under one seed must see the same data")
            first = next((r for r in every if r.fingerprints), None)
            if first is None:
                continue
            per_seed = bool((first.config.get("data") or {}).get("subset_per_seed"))
            for r in every:
                same(first, r, ("val", "test") if per_seed else ("train", "val", "test"),
                     "every run of a comparison must see the same validation and test sets"
                     + ("" if per_seed else ", and the same training examples (data.subset_per_seed is false)"))
    return sum(seen.values()), len(seen) - sum(seen.values())


def _fingerprint_note(checked: int, blind: int) -> str:
    if blind:
        return (f"Data fingerprints: {blind} of the {checked + blind} compared runs recorded none (older records), so "
                "whether they saw the same data as the runs they are paired with was not checked.")
    return (f"Data fingerprints (summary.json's dataset.fingerprint): the {checked} compared runs saw the same "
            "validation and test sets, and runs paired under one seed the same training examples.")


