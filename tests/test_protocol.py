"""The comparison protocol end to end: tune on validation -> the tuned comparison -> strength-matched
controls (python -m mixlab.controls) -> report v2; and each step's pieces against independent references."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from scipy import stats as sps
from scipy.special import beta as beta_fn

from mixlab.study.controls import control_config, plan
from mixlab.study.controls import main as controls_main
from mixlab.engine.lam import LAMBDAS, STRENGTH_RANGE
from mixlab.study.report import compare, group_runs, load_runs, matched_policy
from mixlab.study.report import main as report_main
from mixlab.run.train import train
from mixlab.study.tune import main as tune_main

from .test_config import compose_cfg

ROOT = Path(__file__).resolve().parent.parent
TINY = ["data=digits", "data.train_subset=128", "data.batch_size=32", "model=mlp", "model.hidden=[16]",
        "device=cpu", "trainer.epochs=2", "trainer.progress=false", "optim=sgd"]


def summaries(sweep: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep.rglob("summary.json"))]


@pytest.fixture(scope="module")
def protocol(tmp_path_factory) -> dict:
    """The README's sequence at a tiny budget: tune beta and distance (2 trials each) on validation, the
    tuned comparison of none, beta and distance over 3 seeds through the real CLI, then the controls."""
    d = tmp_path_factory.mktemp("protocol")
    assert tune_main(["--lambdas", "beta,distance", "--trials", "2", "--out", str(d / "tuning"), *TINY]) == 0
    r = subprocess.run([sys.executable, "-m", "mixlab", "-m", *TINY, "lambda=none,beta,distance", "seed=0,1,2",
                        f"tuned={d / 'tuning' / 'tuned.yaml'}", f"hydra.sweep.dir={d / 'sweep'}"],
                       cwd=d, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    before = {p.parent.name for p in (d / "sweep").rglob("summary.json")}
    assert controls_main([str(d / "sweep"), "--jobs", "2"]) == 0  # two at a time, each in a process of its own
    return {"dir": d, "sweep": d / "sweep", "before": before, "tuned": yaml.safe_load((d / "tuning" / "tuned.yaml").read_text())}


def test_controls_match_each_dynamic_policy_seed_by_seed_at_its_measured_strength(protocol):
    runs = [s for s in summaries(protocol["sweep"])]
    controls = [s for s in runs if (s["config"].get("study") or {}).get("control_of")]
    policies = [s for s in runs if not (s["config"].get("study") or {}).get("control_of")]
    distance = [s for s in policies if s["config"]["lam"]["name"] == "distance"]
    # one control per launched run of the one dynamic policy (none and beta are fixed: no control)
    assert len(policies) == 9 and len(controls) == 3 and len(distance) == 3
    assert sorted(s["config"]["seed"] for s in controls) == [0, 1, 2]
    # s: the mean over seeds of each run's mean over epochs of min(λ, 1 − λ), from metrics.jsonl
    per_run = []
    for s in distance:
        folder = next(p.parent for p in protocol["sweep"].rglob("summary.json")
                      if json.loads(p.read_text())["config"] == s["config"])
        rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
        per_run.append(sum(r["lam_strength"] for r in rows) / len(rows))
    s_matched = round(sum(per_run) / len(per_run), 4)
    for c in controls:
        lam = c["config"]["lam"]
        assert lam["name"] == "beta" and lam["strength"] == s_matched and c["config"]["tuned"] is None
        # α* solves ½ − 1/(α·4^α·B(α, α)) = s (scipy's Beta function as the oracle), and the record shows it
        a = lam["alpha"]
        assert 0.5 - 1.0 / (a * 4.0**a * beta_fn(a, a)) == pytest.approx(s_matched, rel=1e-9)
        assert c["config"]["study"]["control_of"] == distance[0]["config"]["lam"]
        twin = next(s for s in distance if s["config"]["seed"] == c["config"]["seed"])
        # everything but the λ policy, the tuned file and the study block is the policy's own config
        strip = ("lam", "tuned", "study")
        assert {k: v for k, v in c["config"].items() if k not in strip} == \
            {k: v for k, v in twin["config"].items() if k not in strip}
        assert c["status"] == "completed" and c["lam_dynamic"] is False and twin["lam_dynamic"] is True


def test_rerunning_controls_does_no_work_and_adds_nothing(protocol, capsys):
    n = len(summaries(protocol["sweep"]))
    assert controls_main([str(protocol["sweep"])]) == 0
    assert len(summaries(protocol["sweep"])) == n
    assert capsys.readouterr().err.count("already completed; skipping") == 3


def test_the_report_pairs_each_dynamic_policy_with_its_control_in_the_primary_family(protocol, tmp_path):
    configs = group_runs(load_runs(protocol["sweep"]))
    rows = compare(configs, "test_acc", "beta", primary=True)
    primary = [r for r in rows if r["family"] == "primary"]
    assert [(r["label"], r["ref"]) for r in primary] == [("lam=distance", "beta"), ("lam=distance", "matched")]
    control = next(c for c in configs if c.control_of is not None)
    assert matched_policy(control, configs).lam == "distance" and "[matched to lam=distance]" in control.label
    # the control is never a reference: every "vs beta" row is against the tuned beta
    refs = {r["ref_label"] for r in rows if r["ref"] == "beta"}
    assert len(refs) == 1 and "matched" not in next(iter(refs))
    # simultaneous intervals: the t interval of the seed differences at 1 − 0.05/m, m = 2 (scipy's t as oracle)
    for r in primary:
        d = r["d"]
        half = sps.t.ppf(1 - 0.05 / 2 / 2, len(d) - 1) * sps.tstd(d) / math.sqrt(len(d))
        assert (r["lo_sim"], r["hi_sim"]) == pytest.approx((r["diff"] - half, r["diff"] + half), abs=1e-12)
        assert r["m"] == 2 and r["lo_sim"] <= r["lo"] and r["hi_sim"] >= r["hi"]
    with_exploratory = compare(configs, "test_acc", "beta", primary=True, matched="exploratory")
    assert [r["ref"] for r in with_exploratory if r["family"] == "primary"] == ["beta"]


def test_report_v2_states_tuning_controls_calibration_and_the_paired_figure(protocol, tmp_path):
    assert report_main([str(protocol["sweep"]), "--out", str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    # the budget, the search spaces and the chosen values, from the run records alone
    assert "Budget: 2 trials per policy" in md and "lam.alpha ∈ [0.05, 4] log-uniform" in md
    assert "lam.temperature ∈ [0.1, 10] log-uniform" in md
    chosen = protocol["tuned"]["distance"]["lam.temperature"]
    assert f"lam.temperature={float(f'{chosen:.6g}')}" in md
    assert "against its strength-matched Beta control" in md and "vs its strength-matched control" in md
    assert "NLL (T-scaled)" in md and "ECE (T-scaled)" in md
    for fig in ("paired", "reliability_ts", "reliability", "lam_strength", "lam_distance"):
        assert (tmp_path / "figures" / f"{fig}.png").stat().st_size > 1000, fig
    assert "simultaneous over the family" in md


def test_an_untuned_sweep_says_so(tmp_path):
    train(compose_cfg(*TINY, "lambda=beta"), tmp_path / "sweep" / "a")
    assert report_main([str(tmp_path / "sweep"), "--out", str(tmp_path / "out")]) == 0
    assert "No run used tuned=: every policy ran at the values of its config, untuned." in \
        (tmp_path / "out" / "report.md").read_text()


def test_builtin_policies_say_whether_they_are_dynamic_and_new_ones_default_to_dynamic():
    fixed = {name for name in LAMBDAS.names() if not LAMBDAS.get(name).dynamic}
    assert fixed == {"none", "constant", "beta"}
    from mixlab import Policy

    class Mine(Policy):
        pass

    assert Mine.dynamic is True


def test_a_strength_beta_cannot_match_gets_no_control_and_a_line_saying_why(tmp_path, capsys):
    # distance at τ = 0.01: λ = e^(−d/τ) ≈ 0, the partner takes (almost) everything, min(λ, 1 − λ) ≈ 0,
    # below what Beta(α, α) with α >= 0.01 reaches
    run = tmp_path / "sweep" / "distance"
    train(compose_cfg(*TINY, "lambda=distance", "lam.temperature=0.01", "trainer.epochs=1"), run)
    strength = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["lam_strength"]
    assert strength < STRENGTH_RANGE[0]
    todo, skipped = plan(tmp_path / "sweep")
    assert todo == [] and len(skipped) == 1 and f"outside [{STRENGTH_RANGE[0]}, {STRENGTH_RANGE[1]}]" in skipped[0]
    assert controls_main([str(tmp_path / "sweep")]) == 0
    assert "no control for lam=distance" in capsys.readouterr().err


def test_control_config_changes_only_the_policy():
    cfg = {"seed": 3, "tuned": "t.yaml", "lam": {"name": "sk", "tau_max": 2.0}, "study": {"reference": "beta"},
           "data": {"name": "digits"}}
    out = control_config(cfg, 0.2)
    assert out["lam"] == {"name": "beta", "alpha": 1.0, "per_sample": True, "strength": 0.2}
    assert out["study"] == {"reference": "beta", "control_of": {"name": "sk", "tau_max": 2.0}}
    assert out["tuned"] is None and out["seed"] == 3 and out["data"] == cfg["data"]
    assert cfg["lam"]["name"] == "sk" and "control_of" not in cfg["study"]  # the run's own config is untouched


def test_lam_strength_out_of_range_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mixlab", *TINY, "lambda=beta", "lam.strength=0.6",
                        f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "lam.strength=0.6: expected a number in [0.01, 0.49]" in r.stderr


def test_controls_on_a_missing_folder_is_one_line(tmp_path, capsys):
    assert controls_main([str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip().endswith("expected a sweep directory with run records, got no such directory")
    assert controls_main([str(tmp_path), "--jobs", "0"]) == 2
    assert capsys.readouterr().err.strip() == "mixlab.controls: error: --jobs=0: expected an integer >= 1"


def test_only_beating_runs_controls_for_the_dynamic_policies_that_beat_the_reference(tmp_path, capsys):
    # hand-made records: distance beats beta by +0.015 on average, loss trails it by 0.015
    accs = {"beta": [0.80, 0.82], "distance": [0.81, 0.84], "loss": [0.79, 0.80]}
    for lam, values in accs.items():
        for seed, acc in enumerate(values):
            d = tmp_path / "sweep" / f"{lam}-{seed}"
            d.mkdir(parents=True)
            config = {"seed": seed, "lam": {"name": lam}, "data": {"name": "digits"}, "model": {"name": "mlp"},
                      "study": {"reference": "beta", "metric": "test_acc"}}
            (d / "summary.json").write_text(json.dumps({"status": "completed", "config": config,
                                                        "final": {"test_acc": acc}}))
            (d / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "test_acc": acc, "lam_strength": 0.2}) + "\n")
    everything, _ = plan(tmp_path / "sweep")
    todo, skipped = plan(tmp_path / "sweep", beating=True)
    assert sorted(j["policy"] for j in everything) == ["lam=distance"] * 2 + ["lam=loss"] * 2
    assert [j["policy"] for j in todo] == ["lam=distance"] * 2 and [j["seed"] for j in todo] == [0, 1]
    assert skipped == ["lam=loss: does not beat beta on test_acc (mean paired difference -0.0150)"]
    assert controls_main([str(tmp_path / "sweep"), "--only-beating", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "no control for lam=loss: does not beat beta" in err and err.count("lam=distance seed") == 2
    assert "--only-beating is exploratory" in err  # a choice made on test results, and said so


# ----------------------------------------------------------------------------- paired seeds (issue 24)

def batches_seen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *overrides: str) -> list[list[tuple]]:
    """Each epoch's batches as the loop hands them to the mixer: (dataset indices, sum of the augmented inputs)."""
    from mixlab.engine.mixing import Mix

    seen: list[tuple] = []
    real = Mix.__call__

    def spy(self, x, y, **kw):
        seen.append((tuple(kw["index"].tolist()), round(float(x.double().sum()), 6)))
        return real(self, x, y, **kw)

    monkeypatch.setattr(Mix, "__call__", spy)
    run = tmp_path / "_".join(o.replace("/", "_") for o in overrides)
    train(compose_cfg(*overrides), run)
    monkeypatch.setattr(Mix, "__call__", real)
    steps = len(seen) // 3
    return [seen[e * steps:(e + 1) * steps] for e in range(3)]


@pytest.mark.parametrize("data", [("data=digits", "data.crop_padding=2", "data.hflip=true"),
                                  ("data=diabetes", "data.train_subset=128")])
def test_under_one_seed_every_policy_sees_the_same_batches_in_every_epoch(data, tmp_path, monkeypatch):
    """Batch order and augmentation have a random stream of their own: pairing and λ draw from another, so
    policies that draw different amounts (none nothing, distance one partner per sample, sk and label_kernel
    more) see the same batches. Before: one stream for all of them, so from epoch 2 the batches differed."""
    base = [*TINY, *data, "trainer.epochs=3", "seed=3"]
    arms = ["lambda=none", "lambda=beta", "lambda=distance", "lambda=loss", "lambda=sk", "pairing=optimal"]
    if "data=diabetes" in data:
        arms += ["pairing=label_kernel"]
    reference = batches_seen(tmp_path, monkeypatch, *base, arms[0])
    assert len({b for epoch in reference for b in epoch}) == sum(map(len, reference))  # epochs differ
    for arm in arms[1:]:
        assert batches_seen(tmp_path, monkeypatch, *base, arm) == reference, arm
    # trainer.streams=shared, how the committed studies ran: the batches part ways (with augmentation drawn
    # per batch, in epoch 1 already; without, from epoch 2)
    shared = [batches_seen(tmp_path, monkeypatch, *base, arm, "trainer.streams=shared") for arm in arms[:2]]
    assert shared[0][1:] != shared[1][1:]
    assert (shared[0][0] == shared[1][0]) == ("data=diabetes" in data)
