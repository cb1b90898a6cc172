"""Equal-budget tuning on the validation split (python -m mixlab.tune) and tuned= in the comparison."""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from mixlab.run.config import ConfigError
from mixlab.study.tune import main as tune_main
from mixlab.study.tune import sample, search_spaces, trials_for, tune

from .test_config import compose_cfg

TINY = ["data=digits", "data.train_subset=128", "data.batch_size=32", "model=mlp", "model.hidden=[16]",
        "device=cpu", "trainer.epochs=1", "trainer.progress=false", "optim=sgd"]


def test_every_registered_policy_has_a_search_space_whose_keys_exist():
    from mixlab import LAMBDAS

    spaces = search_spaces()
    assert sorted(spaces) == sorted(LAMBDAS.names())
    for policy, space in spaces.items():
        cfg = compose_cfg(f"lambda={policy}")
        for key, spec in space.items():
            assert key.startswith("lam.") and key[4:] in cfg.lam, (policy, key)
            assert spec["low"] < spec["high"]
    assert spaces["none"] == {} and spaces["beta"]  # none has nothing to tune; the fixed baseline is tuned too
    from mixlab.run.config import pairing_spaces

    assert pairing_spaces()  # C-Mixup's σ at least
    for pairing, space in pairing_spaces().items():
        cfg = compose_cfg(f"pairing={pairing}")
        assert all(key.startswith("pairing.") and key[8:] in cfg.pairing for key in space), (pairing, space)


def test_sampling_is_seeded_per_policy_and_log_uniform_where_asked():
    space = {"lam.alpha": {"low": 0.05, "high": 4.0, "log": True}}
    a = trials_for("beta", space, 6, seed=0)
    assert a[0] == {} and len(a) == 6 and a == trials_for("beta", space, 6, seed=0)
    assert a != trials_for("beta", space, 6, seed=1) and trials_for("none", {}, 6, seed=0) == [{}]
    rng = np.random.default_rng(5)
    logs = np.log([sample(space, rng)["lam.alpha"] for _ in range(4000)])
    assert stats.kstest(logs, stats.uniform(np.log(0.05), np.log(4.0) - np.log(0.05)).cdf).pvalue > 0.01


def test_tuning_gives_equal_budgets_selects_on_validation_and_the_comparison_uses_it(tmp_path, capsys):
    out = tmp_path / "tuning"
    assert tune_main(["--lambdas", "none,beta,distance", "--trials", "3", "--out", str(out), *TINY]) == 0
    log = json.loads((out / "tuning.json").read_text())
    per = {p: [t for t in log["trials_run"] if t["lambda"] == p] for p in ("none", "beta", "distance")}
    assert [len(per[p]) for p in ("none", "beta", "distance")] == [1, 3, 3]  # equal budgets; none has no knob
    tuned = yaml.safe_load((out / "tuned.yaml").read_text())
    for policy in ("beta", "distance"):
        # the choice is the trial with the best *validation* objective, read back from each trial's records
        summaries = [json.loads((out / policy / f"trial_{t['trial']}" / "summary.json").read_text()) for t in per[policy]]
        assert all(s["objective_key"] == "val_acc" and s["objective"] == s["final_val"]["val_acc"] for s in summaries)
        best = max(range(3), key=lambda k: (summaries[k]["objective"], -k))
        key = next(iter(tuned[policy]))
        assert tuned[policy][key] == pytest.approx(summaries[best]["config"]["lam"][key[4:]])
    assert tuned["none"] == {}
    # the comparison reads tuned.yaml: its records show exactly the chosen values
    from mixlab.run.train import train

    train(compose_cfg(*TINY, "lambda=beta", f"tuned={out / 'tuned.yaml'}"), tmp_path / "compare")
    used = json.loads((tmp_path / "compare" / "summary.json").read_text())["config"]
    assert used["lam"]["alpha"] == pytest.approx(tuned["beta"]["lam.alpha"]) and used["tuned"] == str(out / "tuned.yaml")
    # the run keeps what tuning chose and on what evidence: the chosen trial's validation score, the budget
    record = json.loads((tmp_path / "compare" / "summary.json").read_text())["tuning"]
    chosen = next(t for t in per["beta"] if t["trial"] == log["chosen"]["beta"])
    assert record["best_objective"] == chosen["objective"] == max(t["objective"] for t in per["beta"])
    assert record["trials"] == 3 and record["trials_run"] == 3 and record["objective_key"] == "val_acc"
    assert math.isfinite(json.loads((tmp_path / "compare" / "summary.json").read_text())["objective"])


def test_a_tuned_file_without_the_policy_is_one_line(tmp_path):
    (tmp_path / "tuned.yaml").write_text("beta:\n  lam.alpha: 0.3\n")
    r = subprocess.run([sys.executable, "-m", "mixlab", *TINY, "lambda=sk", f"tuned={tmp_path / 'tuned.yaml'}",
                        f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "has no entry for lambda=sk; expected one of ['beta']" in r.stderr
    bad = subprocess.run([sys.executable, "-m", "mixlab.tune", "--lambdas", "beta,nonsense", "--out",
                          str(tmp_path / "t"), *TINY], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "'nonsense' has no search space" in bad.stderr


def test_an_arm_with_a_pairing_tunes_its_knobs_and_the_comparison_under_that_pairing_uses_them(tmp_path):
    # C-Mixup: beta under label_kernel pairing, α and σ searched together with the same budget as beta alone
    out = tmp_path / "tuning"
    assert tune_main(["--lambdas", "beta,beta+label_kernel", "--trials", "2", "--out", str(out), *TINY]) == 0
    log = json.loads((out / "tuning.json").read_text())
    arms = [(t["lambda"], t["trial"], sorted(t["params"])) for t in log["trials_run"]]
    assert arms == [("beta", 0, []), ("beta", 1, ["lam.alpha"]),
                    ("beta+label_kernel", 0, []), ("beta+label_kernel", 1, ["lam.alpha", "pairing.sigma"])]
    trial = json.loads((out / "beta+label_kernel" / "trial_1" / "summary.json").read_text())["config"]
    assert trial["pairing"]["name"] == "label_kernel"
    assert trial["pairing"]["sigma"] == pytest.approx(log["trials_run"][3]["params"]["pairing.sigma"])
    tuned = yaml.safe_load((out / "tuned.yaml").read_text())
    assert set(tuned["beta+label_kernel"]) == {"lam.alpha", "pairing.sigma"} and set(tuned["beta"]) == {"lam.alpha"}
    from mixlab.run.config import apply_tuned

    for pairing, entry in (("label_kernel", "beta+label_kernel"), ("random", "beta")):
        cfg = compose_cfg(*TINY, "lambda=beta", f"pairing={pairing}", f"tuned={out / 'tuned.yaml'}")
        record = apply_tuned(cfg)
        assert record["lambda"] == entry and record["trials_run"] == 2
        assert cfg.lam.alpha == pytest.approx(tuned[entry]["lam.alpha"])
    assert cfg.pairing.name == "random" and "sigma" not in cfg.pairing
    for arm, said in (("beta+nonsense", "names pairing 'nonsense'; expected one of"),
                      ("none+label_kernel", "lambda=none has nothing to tune")):
        with pytest.raises(ConfigError, match=re.escape(said)):
            tune([arm], 2, tmp_path / "bad", TINY)


def test_parallel_trials_run_the_same_trials_and_choose_the_same(tmp_path):
    args = ["--lambdas", "beta,distance", "--trials", "3", *TINY]
    assert tune_main([*args[:4], "--out", str(tmp_path / "one"), *args[4:]]) == 0
    assert tune_main([*args[:4], "--out", str(tmp_path / "two"), "--jobs", "2", *args[4:]]) == 0
    one, two = (json.loads((tmp_path / d / "tuning.json").read_text())["trials_run"] for d in ("one", "two"))
    assert [(t["lambda"], t["trial"], t["params"]) for t in one] == [(t["lambda"], t["trial"], t["params"]) for t in two]
    # one process with 2 threads against two with 1: the same runs, to within a float's reduction order
    assert [t["objective"] for t in two] == pytest.approx([t["objective"] for t in one], abs=2 / 300)
    assert all(t["status"] == "completed" for t in two)
    assert yaml.safe_load((tmp_path / "two" / "tuned.yaml").read_text()).keys() == {"beta", "distance"}


def test_stopping_the_tuner_stops_its_workers_and_the_same_command_resumes(tmp_path):
    # A worker left running after its tuner is killed writes on into folders that a new tuner writes too.
    import os
    import signal
    import time

    out = tmp_path / "t"
    cmd = [sys.executable, "-m", "mixlab.tune", "--lambdas", "beta", "--trials", "2", "--jobs", "2", "--out", str(out),
           *[o for o in TINY if not o.startswith("trainer.epochs")], "trainer.epochs=400"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    logs = [out / "beta" / f"trial_{k}" / "metrics.jsonl" for k in range(2)]
    deadline = time.time() + 240
    while not all(p.exists() for p in logs) and time.time() < deadline:
        time.sleep(0.5)
    assert all(p.exists() for p in logs), proc.stderr.read() if proc.poll() is not None else "no trial started"
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "the same command resumes" in err
    sizes = [p.stat().st_size for p in logs]
    time.sleep(3)
    assert [p.stat().st_size for p in logs] == sizes  # nobody writes on
    for k in range(2):
        summary = json.loads((out / "beta" / f"trial_{k}" / "summary.json").read_text())
        assert summary["status"] == "interrupted"


def test_a_refused_retune_names_out(tmp_path, capsys):
    """A re-tune into an existing --out with other shared overrides: the one line names --out (before:
    hydra.run.dir, which mixlab.tune does not take)."""
    out = tmp_path / "t"
    assert tune_main(["--lambdas", "none", "--trials", "1", "--out", str(out), *TINY]) == 0
    capsys.readouterr()
    assert tune_main(["--lambdas", "none", "--trials", "1", "--out", str(out), *TINY, "smoothing=0.1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds a run of another configuration" in err[0], err
    assert err[0].endswith("expected a new --out, or delete that folder"), err[0]


def test_a_tuning_trial_never_reads_the_test_set(tmp_path):
    """Issue 24: selection sees validation only. Before: every trial evaluated, printed and recorded test_acc."""
    assert tune_main(["--lambdas", "beta", "--trials", "2", "--out", str(tmp_path / "t"), *TINY]) == 0
    for trial in sorted((tmp_path / "t" / "beta").glob("trial_*")):
        summary = json.loads((trial / "summary.json").read_text())
        rows = [json.loads(line) for line in (trial / "metrics.jsonl").read_text().splitlines()]
        assert summary["config"]["eval"]["test"] is False and summary["final"] == {}
        assert summary["objective_key"] == "val_acc" and not [k for r in rows for k in r if k.startswith("test_")]
