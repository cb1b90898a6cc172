"""Sweeps: re-launching an interrupted sweep, the parallel and submitit launchers, failing jobs."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TINY = ["data=digits", "data.train_subset=128", "data.batch_size=32", "model=mlp", "model.hidden=[16]",
        "device=cpu", "trainer.progress=false"]


def sweep(tmp: Path, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mixlab", "-m", *TINY, *overrides, f"hydra.sweep.dir={tmp}"]
    return subprocess.run(cmd, cwd=tmp.parent, capture_output=True, text=True, timeout=timeout)


def summaries(tmp: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in tmp.glob("*/summary.json")}


def folder_of(tmp: Path, lam: str) -> str | None:
    """The job folder whose name says lambda=<lam> (folders are keyed by the job's overrides)."""
    return next((p.name for p in tmp.glob("*") if f"lambda={lam}," in p.name + ","), None)


def assert_labels_match_records(tmp: Path) -> None:
    """Every job folder's name (its overrides) agrees with the config its records hold, and its metrics."""
    for name, s in summaries(tmp).items():
        said = dict(o.split("=", 1) for o in name.split(",") if o.split("=", 1)[0] in ("lambda", "seed"))
        assert said.get("lambda", s["config"]["lam"]["name"]) == s["config"]["lam"]["name"], name
        assert int(said.get("seed", s["config"]["seed"])) == s["config"]["seed"], name
        rows = [json.loads(line) for line in (tmp / name / "metrics.jsonl").read_text().splitlines()]
        if s["config"]["lam"]["name"] == "none":
            assert all(r["lam_mean"] == 1.0 for r in rows), name
        else:
            assert all(r["lam_mean"] < 1.0 for r in rows), name


def test_relaunch_skips_finished_runs_and_completes_the_rest(tmp_path):
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "mixlab", "-m", *TINY, "trainer.epochs=3", "lambda=none,beta,automix",
           f"hydra.sweep.dir={out}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline:  # kill the whole sweep once its first run has completed
        first = folder_of(out, "none")
        s = summaries(out).get(first) if first else None
        if s and s["status"] == "completed":
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert summaries(out)[first]["status"] == "completed"
    finished = (out / first / "metrics.jsonl").stat().st_mtime_ns

    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    after = summaries(out)
    assert len(after) == 3 and all(s["status"] == "completed" for s in after.values())
    assert "already completed; skipping" in r.stderr
    assert (out / first / "metrics.jsonl").stat().st_mtime_ns == finished  # not redone
    assert all(len((out / k / "metrics.jsonl").read_text().splitlines()) == 3 for k in after)
    assert_labels_match_records(out)


def test_extending_a_sweep_adds_runs_and_reuses_only_identical_ones(tmp_path):
    # The README's two commands into one sweep folder. With folders numbered by job position the
    # second command "resumed" job 0 (the none run) as beta seed 0 and job 3 (beta seed 1) as sk seed 0.
    out = tmp_path / "sweep"
    first = sweep(out, "trainer.epochs=1", "lambda=none,beta", "seed=0,1")
    assert first.returncode == 0, first.stderr[-2000:]
    before = {k: (out / k / "metrics.jsonl").stat().st_mtime_ns for k in summaries(out)}
    second = sweep(out, "trainer.epochs=1", "lambda=beta,sk", "seed=0,1,2")
    assert second.returncode == 0, second.stderr[-2000:]
    after = summaries(out)
    labels = sorted((s["config"]["lam"]["name"], s["config"]["seed"]) for s in after.values())
    assert labels == sorted([("none", 0), ("none", 1), ("beta", 0), ("beta", 1), ("beta", 2),
                             ("sk", 0), ("sk", 1), ("sk", 2)])
    assert all(s["status"] == "completed" for s in after.values())
    assert second.stderr.count("already completed; skipping") == 2  # beta seeds 0 and 1, reused
    assert all((out / k / "metrics.jsonl").stat().st_mtime_ns == t for k, t in before.items())  # untouched
    assert_labels_match_records(out)


def test_failing_and_diverging_jobs_do_not_stop_the_sweep(tmp_path):
    # pairing=same_class on regression data fails at build time; lr=1e12 diverges in its first epoch
    r = sweep(tmp_path / "s", "data=diabetes", "data.train_subset=null", "trainer.epochs=1",
              "pairing=same_class,random", "optim.lr=1e12,0.01")
    # the refused jobs (same_class needs class labels) write nothing; the sweep says it did not all complete
    assert r.returncode == 1 and "3 job(s) of the sweep did not complete" in r.stderr, r.stderr[-2000:]
    assert r.stderr.count("pairing='same_class': needs class labels") == 2
    s = summaries(tmp_path / "s")
    statuses = sorted((v["config"]["pairing"]["name"], v["config"]["optim"]["lr"], v["status"]) for v in s.values())
    assert statuses == [("random", 0.01, "completed"), ("random", 1e12, "diverged")]
    assert not list((tmp_path / "s").glob("*same_class*"))
    diverged = next(v for v in s.values() if v["status"] == "diverged")
    assert "training loss is nan at epoch 1, step" in diverged["error"]


def test_parallel_launcher_runs_jobs_at_once(tmp_path):
    r = sweep(tmp_path / "s", "trainer.epochs=1", "lambda=none,beta,sk", "hydra/launcher=joblib",
              "hydra.launcher.n_jobs=2")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Joblib.Parallel" in r.stdout + r.stderr
    s = summaries(tmp_path / "s")
    assert sorted(v["config"]["lam"]["name"] for v in s.values()) == ["beta", "none", "sk"]
    assert all(v["status"] == "completed" for v in s.values())


@pytest.mark.slow
def test_submitit_launcher_with_the_local_executor(tmp_path):
    r = sweep(tmp_path / "s", "trainer.epochs=1", "lambda=none,beta", "hydra/launcher=submitit_local",
              "hydra.launcher.timeout_min=10", "hydra.launcher.cpus_per_task=1")
    assert r.returncode == 0, r.stderr[-2000:]
    s = summaries(tmp_path / "s")
    assert sorted(v["config"]["lam"]["name"] for v in s.values()) == ["beta", "none"]
    assert all(v["status"] == "completed" for v in s.values())
    assert any((tmp_path / "s" / ".submitit").rglob("*_log.out"))


def test_job_folder_names_say_what_the_job_runs():
    from mixlab.run.config import job_dir

    a = job_dir(["data=digits", "seed=1", "lambda=beta", "device=cpu", "trainer.progress=false", "logger.mode=offline"])
    assert a == "lambda=beta,seed=1,data=digits"  # volatile keys out; policy and seed first
    assert job_dir(["lambda=beta", "data=digits", "seed=1"]) == a  # command-line order does not matter
    assert job_dir(["data.root=/a/b", "model.hidden=[32,16]"]) == "model.hidden=[32,16]"
    assert job_dir(["logger.project=a/b", "+model.extra=x/y"]) == "+model.extra=x%2Fy"  # never a subfolder
    long = job_dir(["lambda=distance", "seed=3", *[f"data.k{i}={'v' * 20}" for i in range(8)]])
    other = job_dir(["lambda=distance", "seed=3", *[f"data.k{i}={'w' * 20}" for i in range(8)]])
    assert len(long) <= 93 and long.startswith("lambda=distance,seed=3,") and long != other
    assert job_dir([]) == "default"
