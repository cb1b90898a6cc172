"""``python -m mixlab.study DIR``: the whole study as one pre-registered command (issue 24)."""
from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mixlab.run.config import ConfigError
from mixlab.study.plan import make_plan

from .test_config import compose_cfg

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
SMALL = ["experiment=digits_study", "model=mlp", "model.hidden=[32]", "~model.width", "trainer.epochs=3",
         "data.train_subset=150", "study.trials=2", "study.arms=[none,beta,schedule]", "study.eval_seeds=[100,101]",
         "study.controls={schedule:[strength,reversed],beta:[stop_late]}"]


def study(folder: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mixlab.study", folder, *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=600)


def records(folder: Path) -> dict[str, dict]:
    """Each run's folder (relative) -> its summary, timings aside."""
    out = {}
    for f in sorted(folder.rglob("summary.json")):
        s = json.loads(f.read_text())
        out[str(f.parent.relative_to(folder))] = {k: s.get(k) for k in ("status", "objective", "final", "config")}
    return out


def spent(folder: Path) -> dict[str, list[str]]:
    """Each arm's tuning trials completed in the study's Optuna storage (its budget spent), by key."""
    db = sqlite3.connect(folder / "optuna.db")
    rows = db.execute("select s.study_name, a.value_json from trials t join studies s using(study_id) "
                      "join trial_user_attributes a using(trial_id) where a.key = 'key' and t.state = 'COMPLETE' "
                      "and s.study_name not in ('s/comparison', 's/controls', 's/report') order by t.number")
    out: dict[str, list[str]] = {}
    for name, key in rows:
        out.setdefault(name, []).append(json.loads(key))
    return out


@pytest.fixture(scope="module")
def done(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("study")
    r = study("s", *SMALL, cwd=cwd)
    assert r.returncode == 0, r.stderr[-3000:]
    return cwd / "s"


def test_the_one_command_runs_every_phase_from_its_plan(done):
    plan = yaml.safe_load((done / "plan.yaml").read_text())
    first_run = min(p.stat().st_mtime_ns for p in done.rglob(".hydra/config.yaml"))
    assert (done / "plan.yaml").stat().st_mtime_ns <= first_run  # written before the first run
    assert [a["arm"] for a in plan["arms"]] == ["none", "beta", "schedule"] and plan["hash"]
    assert plan["primary_family"] == ["schedule vs beta on test_acc", "schedule vs its strength control on test_acc",
                                      "schedule vs its reversed control on test_acc",
                                      "schedule vs beta's stop_late control on test_acc"]
    assert [(c["of"], c["kind"]) for c in plan["controls"]] == [("beta", "stop_late"), ("schedule", "strength"),
                                                               ("schedule", "reversed")]
    # tuning: the declared budget per arm, on the tuning seeds, never reading the test set
    runs = records(done)
    tuning = {k: v for k, v in runs.items() if k.startswith("tuning/")}
    assert sorted(tuning) == sorted(f"tuning/{arm}/trial_{k}/seed={s}" for arm, n in
                                    (("none", 1), ("beta", 2), ("schedule", 2)) for k in range(n) for s in (0, 1))
    assert all(v["status"] == "completed" and v["final"] == {} and v["config"]["eval"]["test"] is False
               for v in tuning.values())
    assert spent(done) == {"s/none": ["trial_0"], "s/beta": ["trial_0", "trial_1"],
                           "s/schedule": ["trial_0", "trial_1"]}
    tuned = yaml.safe_load((done / "tuned.yaml").read_text())
    log = json.loads((done / "tuning.json").read_text())
    for arm in ("beta", "schedule"):  # the chosen trial: the best mean over the two tuning seeds
        mine = [t for t in log["trials_run"] if t["lambda"] == arm]
        best = max(mine, key=lambda t: (t["objective"], -t["trial"]))
        assert log["chosen"][arm] == best["trial"] and tuned[arm] == best["values"]
        assert best["objective"] == pytest.approx(sum(best["objectives"]) / 2)
    # comparison on the evaluation seeds, with the tuned values; controls of every dynamic arm
    compare = {k: v for k, v in runs.items() if k.startswith("compare/")}
    assert all(v["status"] == "completed" and v["config"]["seed"] in (100, 101) for v in compare.values())
    arms = sorted((v["config"]["lam"]["name"], (v["config"]["study"].get("control_of") or {}).get("name", ""),
                   v["config"]["study"].get("control_kind", "")) for v in compare.values())
    assert arms == sorted([(a, "", "") for a in ("none", "beta", "schedule") for _ in range(2)]
                          + [("beta", "schedule", "strength"), ("schedule", "schedule", "reversed"),
                             ("beta", "beta", "stop_late")] * 2)
    for v in compare.values():
        c = v["config"]
        if c["study"].get("control_kind") != "strength":  # the arm's tuned values, its own or its control's
            for key, value in tuned.get(c["lam"]["name"], {}).items():
                assert c["lam"][key.split(".", 1)[1]] == value
        if c["study"].get("control_kind") in ("reversed", "stop_late"):  # ... under the control's one change
            assert c["study"]["control_of"] == {**c["lam"]}
            assert (c["trainer"]["reverse_time"], c["trainer"]["mix_until"]) == \
                ((True, 1.0) if c["study"]["control_kind"] == "reversed" else (False, 0.75))
    assert (done / "report" / "report.md").read_text().startswith("# mixlab report")


def test_the_report_leads_with_the_plans_verdict(done):
    from .test_study_report import check_study_report

    check_study_report(done)


def test_running_the_same_command_again_runs_nothing_and_gives_the_same_report(done):
    before = {p: p.stat().st_mtime_ns for p in done.rglob("summary.json")}
    report = (done / "report" / "report.md").read_text()
    r = study("s", *SMALL, cwd=done.parent)
    assert r.returncode == 0, r.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in done.rglob("summary.json")} == before
    assert (done / "report" / "report.md").read_text() == report


def test_a_study_folder_holds_one_plan(done):
    plan = (done / "plan.yaml").read_bytes()
    r = study("s", *SMALL, "study.trials=3", cwd=done.parent)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "arms.beta.trials: 2 -> 3" in lines[0], r.stderr[-2000:]
    assert (done / "plan.yaml").read_bytes() == plan


def launched(stderr: str) -> list[tuple[str, str]]:
    """The items a copy of the command launched, from its lines such as
    "mixlab.study: tuning beta: 2 trial(s) x 2 seed(s): trial_0: 2 job(s)"."""
    batches = re.findall(r"^mixlab\.study: ([^:]+): .*: (\S+(?:, \S+)*): \d+ job\(s\)", stderr, re.M)
    return [(phase, key) for phase, keys in batches for key in keys.split(", ")]


def test_two_copies_on_one_storage_one_killed_give_the_records_of_one_uninterrupted_study(done, tmp_path):
    """A copy of the command starts; a second joins it on the same folder and storage (as a second machine
    would, or a re-run); the first is SIGKILLed part-way. The second takes over what the first held and
    finishes: each arm's trials are exactly its budget, no item ran in both but the one the kill cut short,
    and every record equals the uninterrupted study's."""
    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "mixlab.study", "s", *SMALL], cwd=tmp_path, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def wait_for(n: int) -> None:
        deadline = time.time() + 300
        while time.time() < deadline and len(list(tmp_path.glob("s/tuning/*/*/*/summary.json"))) < n:
            time.sleep(0.05)

    first = start()
    wait_for(2)
    second = start()
    wait_for(6)
    first.send_signal(signal.SIGKILL)
    first_err = first.communicate()[1]
    second_err = second.communicate(timeout=600)[1]
    assert second.returncode == 0, second_err[-3000:]
    assert spent(tmp_path / "s") == spent(done)
    a, b = launched(first_err), launched(second_err)
    assert a and b and len(set(a) & set(b)) <= 1, (a, b)  # both worked; only the killed item ran twice
    assert "refused" not in second_err and "FAILED" not in second_err
    assert records(tmp_path / "s") == records(done)
    assert (tmp_path / "s" / "tuned.yaml").read_text() == (done / "tuned.yaml").read_text()
    assert (tmp_path / "s" / "report" / "report.md").read_text() == (done / "report" / "report.md").read_text()


@pytest.mark.parametrize("overrides,message", [
    (["study.arms=[]"], "study.arms=[]: expected the arms to compare"),
    (["study.arms=[none,schedule]"], "study.reference='beta': not one of study.arms"),
    (["study.eval_seeds=[1,2]"], "share [1] with study.tuning_seeds"),
    (["study.arms=[beta,schedule]", "study.go=reference_beats_none"], "needs the arm none"),
    (["+study.arm_overrides={cutmix:['mixer.cells=2']}"], "study.arm_overrides: names ['cutmix'], not in study.arms"),
    (["+study.arm_overrides={beta:['lam.alpha=0.5']}"], "study.arm_overrides.beta: 'lam.alpha=0.5' sets lam.alpha, "
                                                        "which the arm tunes"),
    (["+study.arm_overrides={beta:['data.train_subset=50']}"], "sets data.train_subset, which every arm shares"),
])
def test_a_study_that_cannot_run_as_declared_is_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        make_plan(compose_cfg("experiment=digits_study", *overrides), [])


def test_no_go_stops_before_the_comparison(tmp_path):
    """The declared rule on validation: a tuned reference that does not beat none stops the study."""
    from mixlab.study.sweeper import Study

    s = Study()
    s.folder = tmp_path
    s.plan = {"decisions": {"go": "reference_beats_none"}, "evaluation": {"reference": "beta", "metric": "test_acc"}}
    tuning = {"chosen": {"none": 0, "beta": 1},
              "trials_run": [{"lambda": "none", "trial": 0, "objective": 0.80, "objective_key": "val_acc"},
                             {"lambda": "beta", "trial": 0, "objective": 0.85, "objective_key": "val_acc"},
                             {"lambda": "beta", "trial": 1, "objective": 0.79, "objective_key": "val_acc"}]}
    assert s.go(tuning) is False
    assert json.loads((tmp_path / "go.json").read_text())["validation"] == {"beta": 0.79, "none": 0.80}
    tuning["chosen"]["beta"] = 0
    assert s.go(tuning) is True
    s.plan["evaluation"]["metric"] = "test_mse"  # a regression study: lower is better
    assert s.go(tuning) is False


def test_a_config_file_edited_under_a_running_study_stops_it_before_its_next_launch(tmp_path):
    """Hydra composes each job from the files on disk: before, an edit made while a study ran reached its later
    runs unseen (or, as happened to fashion_time at 2 000 images, failed them). Now the study stops in one line."""
    group = tmp_path / "conf" / "optim"
    group.mkdir(parents=True)
    mine = group / "mine.yaml"
    adamw = (ROOT / "mixlab" / "conf" / "optim" / "adamw.yaml").read_text()
    mine.write_text(adamw)
    proc = subprocess.Popen([sys.executable, "-m", "mixlab.study", "s", *SMALL, "optim=mine",
                             f"hydra.searchpath=[file://{tmp_path / 'conf'}]"], cwd=tmp_path, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:  # the plan is written, the first launch under way: edit the file under it
        lines.append(line)
        if "job(s)" in line:
            mine.write_text(adamw.replace("lr: 2.0e-3", "lr: 1.0e-3"))
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=600) == 2, "".join(lines) + rest
    error = [x for x in rest.splitlines() if x.startswith("mixlab: error:")]
    assert len(error) == 1 and "the config files changed under the running study (config.optim.lr: 0.002 -> 0.001)" \
        in error[0], rest[-2000:]
    assert yaml.safe_load((tmp_path / "s" / "plan.yaml").read_text())["config"]["optim.lr"] == 0.002
    # only the launch in flight at the edit may have composed it (its records say so); none launched after
    lrs = [json.loads(f.read_text())["config"]["optim"]["lr"] for f in (tmp_path / "s").rglob("summary.json")]
    assert lrs.count(0.001) <= 2 and set(lrs) <= {0.002, 0.001}, lrs


def test_an_arms_own_settings_reach_every_run_of_it_and_a_strength_control_keeps_its_mixers(tmp_path):
    """study.arm_overrides: settings of one arm beyond its name (a mixer's option, a fixed key of its λ policy),
    in its tuning, comparison and control runs; a strength control (fixed Beta, the arm's mixer) keeps the
    mixer's settings and drops the λ policy's. Before, an arm could name a mixer but not set it."""
    r = study("s", "experiment=digits_study", "model=mlp", "model.hidden=[32]", "~model.width", "trainer.epochs=1",
              "data.train_subset=150", "study.arms=[beta,loss@gridmix]", "study.go=always", "study.trials=1",
              "study.tuning_seeds=[0]", "study.eval_seeds=[100]",
              "study.arm_overrides={loss@gridmix:['mixer.cells=2','lam.momentum=0.5']}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    plan = yaml.safe_load((tmp_path / "s" / "plan.yaml").read_text())
    assert [a.get("overrides") for a in plan["arms"]] == [None, ["mixer.cells=2", "lam.momentum=0.5"]]
    runs = {k: v["config"] for k, v in records(tmp_path / "s").items() if v["status"] == "completed"}
    assert len(runs) == 5, sorted(runs)  # 2 tuning, 2 comparison, 1 strength control
    mine = {k: c for k, c in runs.items() if c["mixer"]["name"] == "gridmix"}
    assert sorted((c["lam"]["name"], c["study"].get("control_kind")) for c in mine.values()) == \
        [("beta", "strength"), ("loss", None), ("loss", None)]
    assert all(c["mixer"]["cells"] == 2 for c in mine.values())
    assert all(c["lam"]["momentum"] == 0.5 for c in mine.values() if c["lam"]["name"] == "loss")
    assert all(c["mixer"]["name"] == "input" for k, c in runs.items() if k not in mine)
    report = (tmp_path / "s" / "report" / "report.md").read_text()
    assert "| loss@gridmix (mixer.cells=2, lam.momentum=0.5) | loss |" in report


def test_every_committed_study_resumes_under_this_code():
    """A committed study's plan.yaml is the plan its command makes now: else its next start (a study under
    way, or a reader's rerun) is refused as another plan. New study keys must leave old plans' hashes alone."""
    from mixlab.study.plan import differences_line

    plans = sorted(ROOT.glob("docs/results/*/plan.yaml")) + sorted(ROOT.glob("docs/results/*/*/plan.yaml"))
    assert plans
    for path in plans:
        old = yaml.safe_load(path.read_text())
        new = make_plan(compose_cfg(*old["overrides"]), old["overrides"])
        assert new["hash"] == old["hash"], f"{path.relative_to(ROOT)}: {differences_line(old, new)}"


def test_a_study_through_submitits_local_executor_completes(tmp_path):
    """Each job a process of its own, as on a SLURM cluster (hydra/launcher=submitit_slurm): a one-arm study,
    tuning and comparison (2 jobs), to keep the suite short."""
    r = study("s", "experiment=digits_study", "model=mlp", "model.hidden=[32]", "~model.width", "trainer.epochs=2",
              "data.train_subset=150", "study.arms=[beta]", "study.go=always", "study.trials=1",
              "study.tuning_seeds=[0]", "study.eval_seeds=[100]", "hydra/launcher=submitit_local", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = records(tmp_path / "s")
    assert sorted(runs) == ["compare/lambda=beta,seed=100", "tuning/beta/trial_0/seed=0"]
    assert all(v["status"] == "completed" for v in runs.values())
    assert (tmp_path / "s" / ".submitit").is_dir() or any((tmp_path / "s").rglob("*_submitted.pkl"))
    assert (tmp_path / "s" / "report" / "report.md").exists()


def test_a_stopped_study_prints_the_study_command_that_resumes_it(tmp_path, monkeypatch):
    from mixlab.run.cli import resume_command

    monkeypatch.chdir(tmp_path)
    argv = ["-m", "hydra/sweeper=study", "hydra.sweep.dir=s", "experiment=digits_study", "study.trials=2"]
    assert resume_command(argv, str(tmp_path / "s"), multirun=True).split()[1:] == [
        "-m", "mixlab.study", "s", "experiment=digits_study", "study.trials=2"]


def test_publishing_a_study_copies_its_records_not_its_weights_and_the_report_regenerates(done, tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "publish_study.py"), str(done), "pub"], cwd=tmp_path,
                       env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    pub = tmp_path / "pub"
    kept = {p.relative_to(pub) for p in pub.rglob("*") if p.is_file()}
    assert not any(p.suffix in (".pt", ".db") or p.name == "hydra.yaml" or p.parts[0] == "tuning" and p.suffix == ".png"
                   for p in kept)
    for name in ("summary.json", "metrics.jsonl", ".hydra/config.yaml"):
        runs = sorted(p.relative_to(done) for p in done.glob(f"compare/*/{name}"))
        runs += sorted(p.relative_to(done) for p in done.glob(f"tuning/*/trial_*/seed=*/{name}"))
        assert runs and all((pub / p).read_bytes() == (done / p).read_bytes() for p in runs)
    for name in ("plan.yaml", "tuning.json", "tuned.yaml"):
        assert (pub / name).read_bytes() == (done / name).read_bytes()
    # the report made from the copy is the study's own, but for the folder its title names
    ours, theirs = ((d / "report" / "report.md").read_text().split("\n", 1) for d in (pub, done))
    assert ours[0] == "# mixlab report: pub/compare" and ours[1] == theirs[1]
