"""The report of a study (``python -m mixlab.study DIR`` ends with ``python -m mixlab.report DIR/compare``): the
verdict of the planned primary family first, the plan it ran under, its warnings; and, for every report, the
ceiling warning and the refusal to pair runs that saw different data. Hand-made records: fast."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats as sps

from mixlab.study.plan import plan_hash
from mixlab.study.report import main as report_main
from mixlab.study.report import write_report

SEEDS = [100, 101, 102]
SCHEDULE = {"name": "schedule", "alpha_start": 1.0, "alpha_end": 0.1}
LAM = {"none": {"name": "none"}, "beta": {"name": "beta", "alpha": 0.6}, "schedule": SCHEDULE,
       "control": {"name": "beta", "alpha": 0.5, "strength": 0.18}}
FAMILY = ["schedule vs beta on test_acc", "schedule vs its control on test_acc"]
TUNING = {"chosen": {"none": 0, "beta": 1, "schedule": 0}, "trials_run": [
    {"lambda": "none", "trial": 0, "values": {}, "objectives": [0.90, 0.92], "objective": 0.91},
    {"lambda": "beta", "trial": 0, "values": {"lam.alpha": 1.0}, "objectives": [0.80, 0.82], "objective": 0.81},
    {"lambda": "beta", "trial": 1, "values": {"lam.alpha": 0.6}, "objectives": [0.93, 0.95], "objective": 0.94},
    {"lambda": "schedule", "trial": 0, "values": {"lam.alpha_start": 1.0, "lam.alpha_end": 0.1},
     "objectives": [0.93, 0.95], "objective": 0.94},
    {"lambda": "schedule", "trial": 1, "values": {"lam.alpha_start": 2.0, "lam.alpha_end": 0.2},
     "objectives": [0.70, 0.72], "objective": 0.71}]}
for _t in TUNING["trials_run"]:
    _t.update(objective_key="val_acc", status="completed")


def make_plan(**edits) -> dict:
    """A plan.yaml as ``python -m mixlab.study`` writes it (mixlab/study/plan.py), with a valid hash."""
    space = {"lam.alpha": {"low": 0.05, "high": 4.0, "log": True}}
    plan = {
        "study": "s", "command": "python -m mixlab.study s experiment=digits_study",
        "git": {"commit": "0123456789abcdef0123456789abcdef01234567", "dirty": False},
        "overrides": ["experiment=digits_study"],
        "arms": [{"arm": "none", "lambda": "none", "pairing": "random", "dynamic": False, "space": {}, "trials": 1},
                 {"arm": "beta", "lambda": "beta", "pairing": "random", "dynamic": False, "space": space, "trials": 2},
                 {"arm": "schedule", "lambda": "schedule", "pairing": "random", "dynamic": True,
                  "space": {"lam.alpha_start": {"low": 0.1, "high": 4.0, "log": True}}, "trials": 2}],
        "tuning": {"sampler": "random", "search_seed": 0, "seeds": [0, 1], "score": "the mean over the tuning seeds",
                   "ties": "the lower trial number wins"},
        "evaluation": {"seeds": SEEDS, "reference": "beta", "metric": "test_acc"},
        "primary_family": FAMILY, "controls": [{"of": "schedule", "control": "fixed Beta of its strength"}],
        "decisions": {"go": "always", "correction": "Holm over the primary family", "alpha": 0.05,
                      "matched": "primary"},
        "config": {"data.name": "digits"}, "deviations": []}
    plan.update(edits)
    plan["hash"] = plan_hash(plan)
    return plan


def run_config(arm: str, seed: int, subset_per_seed: bool = False) -> dict:
    study = {"reference": "beta", "metric": "test_acc", "matched": "primary"}
    if arm == "control":
        study["control_of"] = SCHEDULE
    return {"seed": seed, "lam": LAM[arm], "pairing": {"name": "random"}, "model": {"name": "mlp"},
            "data": {"name": "digits", "subset_per_seed": subset_per_seed}, "study": study}


def make_study(root: Path, accs: dict[str, list[float | None]], vals: dict[str, list[float]] | None = None,
               plan: dict | None = None, tuning: dict | None = None, go: dict | None = None,
               fingerprints: bool = True) -> Path:
    """``root/s``: plan.yaml, tuning.json (go.json) and compare/ with one run per arm (``control``: schedule's
    strength-matched Beta) and evaluation seed; an accuracy of None leaves that run out. Returns s/compare."""
    d = root / "s"
    (d / "compare").mkdir(parents=True)
    (d / "plan.yaml").write_text(yaml.safe_dump(plan or make_plan(), sort_keys=False, allow_unicode=True))
    (d / "tuning.json").write_text(json.dumps({"plan": (plan or make_plan())["hash"], **(tuning or TUNING)}))
    if go is not None:
        (d / "go.json").write_text(json.dumps(go))
    for arm, per_seed in accs.items():
        for i, (seed, acc) in enumerate(zip(SEEDS, per_seed, strict=True)):
            if acc is None:
                continue
            val = (vals or {}).get(arm, [0.9, 0.91, 0.92])[i]
            summary = {"status": "completed", "config": run_config(arm, seed), "final": {"test_acc": acc},
                       "final_val": {"val_acc": val}, "objective": val, "objective_key": "val_acc",
                       "lam_dynamic": arm == "schedule"}
            if fingerprints:
                summary["dataset"] = {"fingerprint": {"train": "t" * 16, "val": "v" * 16, "test": "e" * 16}}
            run = d / "compare" / (f"lambda=beta,matched_to=schedule,seed={seed}" if arm == "control"
                                   else f"lambda={arm},seed={seed}")
            run.mkdir()
            (run / "summary.json").write_text(json.dumps(summary))
            (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "test_acc": acc, "lam_strength": 0.2}) + "\n")
    return d / "compare"


@pytest.fixture(autouse=True)
def no_figures(monkeypatch):
    """The text is under test here, not the pictures (tests/test_report.py draws those): 1-2 s a report saved."""
    import mixlab.study.report

    monkeypatch.setattr(mixlab.study.report, "_figures", lambda *args: [])


ACCS = {"none": [0.90, 0.91, 0.89], "beta": [0.92, 0.93, 0.91], "schedule": [0.925, 0.95, 0.915],
        "control": [0.92, 0.935, 0.91]}


def report(compare: Path, tmp_path: Path) -> str:
    md, _ = write_report(compare, out=tmp_path / "report")
    return md.read_text()


def section(md: str, heading: str) -> str:
    return md.split(f"## {heading}")[1].split("\n## ")[0]


def comparison_rows(md: str) -> dict[tuple[str, str], dict[str, str]]:
    """The test-accuracy comparison table: (configuration, vs) -> the row."""
    lines = section(md, "Paired comparisons on test accuracy").strip().splitlines()
    head = [c.strip() for c in lines[2].strip("|").split("|")]
    rows = [dict(zip(head, (c.strip() for c in line.strip("|").split("|")), strict=True))
            for line in lines[4:] if line.startswith("|")]
    return {(r["configuration"], r["vs"]): r for r in rows}


# ----------------------------------------------------------------------------- 1. the verdict leads


def test_a_study_report_leads_with_the_planned_familys_verdict_in_the_tables_numbers(tmp_path):
    md = report(make_study(tmp_path, ACCS), tmp_path)
    blocks = md.split("\n\n")
    assert blocks[0].startswith("# mixlab report") and blocks[1] == "## Verdict of the pre-registered primary family"
    lines = blocks[2].splitlines()
    assert [line.split(":")[0] for line in lines] == [f"- {f}" for f in FAMILY]
    table = comparison_rows(md)
    d = np.subtract(ACCS["schedule"], ACCS["beta"])
    control = "lam=beta lam.alpha=0.5 lam.strength=0.18 [matched to lam=schedule]"
    for line, key in zip(lines, [("lam=schedule", "lam=beta lam.alpha=0.6"), ("lam=schedule", control)], strict=True):
        row = table[key]
        assert row["family"] == "primary" and "(m=2)" in row["95% CI, simultaneous over the family"]
        delta, lo, hi = (float(x) for x in re.findall(r"[-+]\d+\.\d+", line)[:3])
        ci = [float(x) for x in re.findall(r"-?\d+\.\d+", row["95% CI"])]
        assert delta == pytest.approx(100 * float(row["Δ mean"]), abs=0.01)  # the table's numbers, in points
        assert [lo, hi] == pytest.approx([100 * x for x in ci], abs=0.01)
        assert f"Holm p = {row['p (Holm)']}, n = 3 seed pairs" in line
        assert "not distinguishable at α = 0.05 with n = 3; no evidence of equality either" in line
    assert float(table[("lam=schedule", "lam=beta lam.alpha=0.6")]["Δ mean"]) == pytest.approx(d.mean(), abs=6e-5)
    assert blocks[3].startswith("Overall: none of the 2 planned comparisons detected a difference at α = 0.05 "
                                "(Holm over 2)")
    # the same records beside no plan.yaml: the report a sweep always got, without plan, verdict or warnings
    (tmp_path / "s" / "plan.yaml").unlink()
    md = report(tmp_path / "s" / "compare", tmp_path)
    assert "## Verdict" not in md and "## The plan" not in md and "## Warnings" not in md
    assert md.split("\n\n")[2] == "## What the evidence supports"


def test_a_detected_difference_is_stated_with_its_interval_and_the_overall_line_names_it(tmp_path):
    accs = {**ACCS, "schedule": [0.95, 0.961, 0.94]}  # +3 pp over beta on every seed, about +2 over its control
    md = report(make_study(tmp_path, accs), tmp_path)
    lead = section(md, "Verdict of the pre-registered primary family")
    d = np.subtract(accs["schedule"], accs["beta"])
    lo, hi = sps.t.interval(0.95, 2, loc=d.mean(), scale=sps.sem(d))
    want = f"schedule vs beta on test_acc: Δ {100 * d.mean():+.2f} pp, 95% CI [{100 * lo:+.2f}, {100 * hi:+.2f}] pp"
    assert want in lead
    assert f"detectably better at α = 0.05: by between {100 * lo:+.2f} and {100 * hi:+.2f} pp" in lead
    assert re.search(r"Overall: [12] of the 2 planned comparisons detected a difference at α = 0.05 \(Holm over 2\): "
                     r"schedule vs beta on test_acc \(better\)", lead)


def test_the_plans_family_is_the_holm_family_and_a_comparison_it_cannot_make_is_said(tmp_path):
    # C-Mixup (beta under its own pairing) is in a plan's family (mixlab/study/plan.py) though no dynamic λ:
    # the plan, not the report's own rule, says which tests Holm covers. A missing control is said, not dropped.
    plan = make_plan(primary_family=FAMILY + ["none vs beta on test_acc"])
    accs = {k: v for k, v in ACCS.items() if k != "control"}
    md = report(make_study(tmp_path, accs, plan=plan), tmp_path)
    table = comparison_rows(md)
    assert table[("lam=none", "lam=beta")]["family"] == "primary"
    assert table[("lam=schedule", "lam=beta")]["family"] == "primary"
    lead = section(md, "Verdict of the pre-registered primary family")
    assert "schedule vs its control on test_acc: not computed — no run of the strength control of schedule in these " \
           "records" in lead
    assert "Holm ran over 2 test(s), not the 3 planned" in lead


# ----------------------------------------------------------------------------- 2. the plan it ran under


def test_the_plan_its_budgets_seeds_decisions_and_every_deviation_are_stated(tmp_path):
    devs = ["resumed under commit fedcba987654 (planned under 0123456789ab)", "seed 102 of schedule re-run by hand"]
    plan = make_plan(deviations=devs, decisions={"go": "reference_beats_none", "correction": "Holm over the primary "
                                                 "family", "alpha": 0.05, "matched": "primary"})
    go = {"rule": "reference_beats_none", "go": True, "validation": {"beta": 0.94, "none": 0.91},
          "objective_key": "val_acc"}
    md = report(make_study(tmp_path, ACCS, plan=plan, go=go), tmp_path)
    text = section(md, "The plan it was run under")
    assert f"plan.yaml (hash {plan['hash']}) was written before the first run by: {plan['command']} — at git " \
           "commit 0123456789ab." in text
    assert "| schedule | schedule | random | yes | lam.alpha_start ∈ [0.1, 4] log-uniform | 2 | " \
           "trial 0: lam.alpha_start=1.0, lam.alpha_end=0.1 (val_acc 0.9400) | strength |" in text
    assert "| beta | beta | random | no | lam.alpha ∈ [0.05, 4] log-uniform | 2 | trial 1: lam.alpha=0.6" in text
    assert "tuning seed [0, 1]" in text and "Evaluation: seeds [100, 101, 102] (disjoint from the tuning seeds)" in text
    assert "go/no-go reference_beats_none — go (go.json, on validation val_acc: beta 0.9400, none 0.9100)" in text
    assert "Holm over the primary family, α = 0.05" in text
    assert "Deviations from the plan (2):\n\n" + "\n".join(f"- {d}" for d in devs) in text
    assert "the 12 compared runs saw the same validation and test sets" in text


def test_a_plan_without_deviations_says_none_and_an_edited_plan_is_flagged(tmp_path):
    plan = make_plan()
    plan["arms"][1]["trials"] = 9  # edited after it was written: the hash no longer matches
    md = report(make_study(tmp_path, ACCS, plan=plan), tmp_path)
    text = section(md, "The plan it was run under")
    assert "Deviations from the plan: none recorded in plan.yaml." in text
    assert f"⚠ Its content gives the hash {plan_hash(plan)}: plan.yaml was edited after it was written." in text
    assert "go/no-go always — no check, by design" in text


# ----------------------------------------------------------------------------- 3. warnings


def test_tuning_that_chose_within_the_seed_to_seed_noise_is_named(tmp_path):
    # schedule's two trials 0.9400 vs 0.9390; its comparison runs' validation accuracy has SD 0.01: within noise.
    # beta's 0.94 vs 0.81 is far beyond it: no warning for beta.
    tuning = json.loads(json.dumps(TUNING))
    tuning["trials_run"][4].update(objectives=[0.938, 0.94], objective=0.939)
    md = report(make_study(tmp_path, ACCS, tuning=tuning), tmp_path)
    warnings = section(md, "Warnings")
    [line] = [x for x in warnings.splitlines() if x.startswith("- Tuning chose within noise")]
    assert line.startswith("- Tuning chose within noise — arm schedule: the chosen trial 0 (val_acc 0.9400) is not "
                           "told apart from trial 1 (0.9390: 0.0010 apart); noise: the seed-to-seed SD 0.0100 "
                           "(val_acc over the arm's 3 comparison runs); the spread of its 2 trials (max − min "
                           "0.0010) is below that SD.")
    assert "arm beta" not in warnings


def test_without_validation_scores_the_noise_comes_from_the_tuning_seeds_and_ties_at_printed_precision(tmp_path):
    tuning = json.loads(json.dumps(TUNING))
    tuning["trials_run"][1].update(objectives=[0.9400, 0.94002], objective=0.94001)  # beta: 0.9400 twice
    tuning["trials_run"][4].update(objectives=[0.90, 0.98], objective=0.94)  # schedule: SD across seeds 0.057
    compare = make_study(tmp_path, ACCS, tuning=tuning)
    for f in compare.rglob("summary.json"):  # comparison runs that recorded no validation score
        s = json.loads(f.read_text())
        s.pop("final_val")
        f.write_text(json.dumps(s))
    warnings = section(report(compare, tmp_path), "Warnings")
    assert "arm beta: the chosen trial 1 (val_acc 0.9400) is not told apart from trial 0 (0.9400: equal at the " \
           "printed precision)" in warnings
    sd = np.sqrt(np.mean([np.var([0.93, 0.95], ddof=1), np.var([0.90, 0.98], ddof=1)]))
    assert f"arm schedule: the chosen trial 0 (val_acc 0.9400) is not told apart from trial 1 (0.9400: equal at the " \
           f"printed precision); noise: the seed-to-seed SD {sd:.4f} (val_acc across the tuning seeds, pooled over " \
           "the arm's 2 trials)" in warnings


def test_a_comparison_at_the_ceiling_is_no_evidence_of_equality(tmp_path):
    accs = {**ACCS, "beta": [1.0, 1.0, 1.0], "schedule": [1.0, 1.0, 0.9995]}
    md = report(make_study(tmp_path, accs), tmp_path)
    said = "1.000 vs 1.000 is no evidence of equality: the test cannot tell these apart"
    lead = section(md, "Verdict of the pre-registered primary family")
    assert "schedule vs beta on test_acc: Δ -0.02 pp" in lead and f"⚠ {said}" in lead
    assert f"- Ceiling: lam=schedule vs lam=beta lam.alpha=0.6 on test accuracy: {said}." in section(md, "Warnings")


def test_the_ceiling_warning_appears_in_a_report_without_a_plan_too(tmp_path):
    from .test_report import write_fake_runs

    write_fake_runs(tmp_path / "runs", [(lam, s, 1.0, None) for lam in ("beta", "distance") for s in range(3)]
                    + [("none", s, 0.97 + s / 100, None) for s in range(3)])
    md = report(tmp_path / "runs", tmp_path)
    para = section(md, "Paired comparisons on test accuracy").split("⚠ At the ceiling: ")[1].split("\n")[0]
    assert para == "lam=distance vs lam=beta on test accuracy: 1.000 vs 1.000 is no evidence of equality: the test " \
                   "cannot tell these apart."  # none (0.98 on average) is below the ceiling: no warning for it


def test_runs_missing_failed_or_outside_the_plan_are_warned(tmp_path):
    accs = {**ACCS, "schedule": [0.925, 0.95, None]}
    compare = make_study(tmp_path, accs)
    failed = compare / "lambda=beta,matched_to=schedule,seed=100" / "summary.json"
    s = json.loads(failed.read_text())
    s.update(status="failed", error="RuntimeError: made up", final=None)
    failed.write_text(json.dumps(s))
    extra = compare / "lambda=none,seed=7"
    extra.mkdir()
    (extra / "summary.json").write_text(json.dumps({"status": "completed", "config": run_config("none", 7),
                                                    "final": {"test_acc": 0.9}}))
    warnings = section(report(compare, tmp_path), "Warnings")
    assert "- Runs missing against the plan (1 of 12: every arm and every planned control on every evaluation " \
           "seed): arm schedule, seed 102." in warnings
    assert "- Planned runs that did not complete (1): the strength control of schedule, seed 100 " \
           "(lambda=beta,matched_to=schedule,seed=100: failed)." in warnings
    assert "- Runs outside the plan (1: an arm, control or seed it does not list): lambda=none,seed=7." in warnings


# ----------------------------------------------------------------------------- 4. the data each run saw


def set_fingerprint(compare: Path, folder: str, **splits: str) -> None:
    f = compare / folder / "summary.json"
    s = json.loads(f.read_text())
    s["dataset"]["fingerprint"].update(splits)
    f.write_text(json.dumps(s))


def test_runs_paired_under_one_seed_that_saw_different_data_are_refused_in_one_line(tmp_path):
    compare = make_study(tmp_path, ACCS)
    set_fingerprint(compare, "lambda=schedule,seed=101", test="0" * 16)
    r = subprocess.run([sys.executable, "-m", "mixlab.report", str(compare), "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
    assert lines[0].startswith("mixlab.report: error: cannot compare lambda=schedule,seed=101 with ")
    assert "they saw different test data (fingerprint 0000000000000000 vs eeeeeeeeeeeeeeee)" in lines[0]
    assert not (tmp_path / "out" / "report.md").exists()


def test_training_data_may_differ_across_seeds_only_under_subset_per_seed(tmp_path, capsys):
    compare = make_study(tmp_path, {k: ACCS[k] for k in ("none", "beta")})
    for arm in ("none", "beta"):  # every arm sees seed s's own training subset
        for seed in SEEDS:
            set_fingerprint(compare, f"lambda={arm},seed={seed}", train=f"{seed:016d}")
    assert report_main([str(compare), "--out", str(tmp_path / "a")]) == 2  # data.subset_per_seed false: refused
    assert "saw different train data" in capsys.readouterr().err
    for f in compare.rglob("summary.json"):
        s = json.loads(f.read_text())
        s["config"]["data"]["subset_per_seed"] = True
        f.write_text(json.dumps(s))
    assert report_main([str(compare), "--out", str(tmp_path / "b")]) == 0
    set_fingerprint(compare, "lambda=beta,seed=102", train="1" * 16)  # under one seed: still refused
    assert report_main([str(compare), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert re.search(r"cannot compare lambda=\w+,seed=102 with lambda=\w+,seed=102: they saw different train data "
                     r"\(fingerprint \d{16} vs \d{16}\); runs paired under one seed must see the same data", err), err


def test_a_sweep_without_a_plan_is_refused_too_and_records_without_fingerprints_are_not(tmp_path, capsys):
    from .test_report import write_fake_runs

    write_fake_runs(tmp_path / "runs", [(lam, s, 0.9 + s / 100, None) for lam in ("beta", "none") for s in range(2)])
    assert report_main([str(tmp_path / "runs"), "--out", str(tmp_path / "a")]) == 0  # no fingerprints: not refused
    for i, f in enumerate(sorted((tmp_path / "runs").glob("*/summary.json"))):
        s = json.loads(f.read_text())
        s["dataset"] = {"fingerprint": {"train": "t" * 16, "val": None, "test": f"{i % 2:016d}"}}
        f.write_text(json.dumps(s))
    assert report_main([str(tmp_path / "runs"), "--out", str(tmp_path / "b")]) == 2
    assert "they saw different test data" in capsys.readouterr().err
    # in a study, runs without fingerprints are said to be unchecked
    md = report(make_study(tmp_path / "study", ACCS, fingerprints=False), tmp_path)
    assert "Data fingerprints: 12 of the 12 compared runs recorded none (older records)" in md


# ----------------------------------------------------------------------------- a real study's report


def check_study_report(done: Path) -> None:
    """What a real study's report (``python -m mixlab.study``; tests/test_study.py's fixture) must say: the
    verdict of its plan's primary family first, in the comparison table's numbers, then its plan and warnings."""
    plan = yaml.safe_load((done / "plan.yaml").read_text())
    md = (done / "report" / "report.md").read_text()
    blocks = md.split("\n\n")
    assert blocks[1] == "## Verdict of the pre-registered primary family"
    lines = blocks[2].splitlines()
    assert [line.split(":")[0] for line in lines] == [f"- {f}" for f in plan["primary_family"]]
    assert all(" not computed " not in line for line in lines)
    primary = [r for r in comparison_rows(md).values() if r["family"] == "primary"]
    assert len(primary) == len(plan["primary_family"])
    assert sorted(re.search(r"Holm p = (\S+),", line)[1] for line in lines) == sorted(r["p (Holm)"] for r in primary)
    assert blocks[3].startswith("Overall: ")
    text = section(md, "The plan it was run under")
    assert f"hash {plan['hash']}" in text and plan["command"] in text and "Deviations from the plan" in text
    assert "saw the same validation and test sets" in text
    assert "## Warnings" in md
