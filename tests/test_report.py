"""mixlab.report on real run records (a tiny CLI sweep on digits, a tiny in-process one on moons) and hand-made ones."""
from __future__ import annotations

import ast
import json
import math
import re
import statistics
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

import mixlab.run.loggers
from mixlab.study.report import build_table, compare, group_runs, load_runs, write_report
from mixlab.run.train import train

from .test_config import compose_cfg

ROOT = Path(__file__).resolve().parent.parent
TINY = ("data=digits", "data.train_subset=128", "model=mlp", "model.hidden=[16]", "device=cpu",
        "trainer.epochs=2", "trainer.progress=false")
FIGURES = ("curves", "final", "reliability", "lam_hist", "lam_strength", "mixed_examples")
STRENGTH = "mixing strength (mean over epochs)"


def first_run(sweep: Path) -> Path:
    """The sweep's first job (lambda=none, seed=0), whatever hydra.sweep.subdir names the job directories."""
    for path in sorted(sweep.glob("*/summary.json")):
        config = json.loads(path.read_text())["config"]
        if config["lam"]["name"] == "none" and config["seed"] == 0:
            return path.parent
    raise AssertionError(f"{sweep}: no run with lambda=none seed=0")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """2 policies × 2 seeds through the real CLI, plus one hand-made failed run."""
    d = tmp_path_factory.mktemp("sweep")
    cmd = [sys.executable, "-m", "mixlab", "-m", *TINY, "lambda=none,beta", "seed=0,1", f"hydra.sweep.dir={d}"]
    r = subprocess.run(cmd, cwd=d, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    failed = json.loads((first_run(d) / "summary.json").read_text())
    failed["config"]["seed"] = 7
    failed.update(status="failed", error="RuntimeError: out of memory (made up)", final=None)
    (d / "99").mkdir()
    (d / "99" / "summary.json").write_text(json.dumps(failed))
    return d


@pytest.fixture(scope="module")
def report(sweep, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("report")
    r = subprocess.run([sys.executable, "-m", "mixlab.report", str(sweep), "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return out, r.stdout


def finals(sweep: Path) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for p in sweep.glob("*/summary.json"):
        s = json.loads(p.read_text())
        if s["status"] == "completed":
            out.setdefault(s["config"]["lam"]["name"], []).append(s["final"]["test_acc"])
    return out


def md_table(md: str, first_column: str = "configuration") -> list[dict[str, str]]:
    """The first markdown table whose header starts with ``first_column``, as dicts."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_column} | n (completed/launched) |"))
    head = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(head, (c.strip() for c in line.strip("|").split("|")), strict=True)))
    return rows


def numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+\.\d+", text)]


def test_table_numbers_match_the_run_records(sweep, report):
    out, stdout = report
    md = (out / "report.md").read_text()
    assert f"report: {out / 'report.md'}" in stdout and "| lam=beta |" in stdout
    rows = {r["configuration"]: r for r in md_table(md)}
    assert sorted(rows) == ["lam=beta", "lam=none"]
    for lam, accs in finals(sweep).items():
        row = rows[f"lam={lam}"]
        mean, std = sum(accs) / 2, abs(accs[0] - accs[1]) / math.sqrt(2)  # ddof=1 std of two values
        half = sps.t.ppf(0.975, 1) * std / math.sqrt(2)
        # a failed run counts against its policy: the hand-made failed run is lam=none's
        assert row["n (completed/launched)"] == ("2/3 ⚠ 1 not completed" if lam == "none" else "2/2")
        assert numbers(row["test accuracy mean ± std"]) == pytest.approx([mean, std], abs=6e-5)
        assert numbers(row["95% CI"]) == pytest.approx([mean - half, mean + half], abs=6e-5)
    # Mixing strength: each run's mean over epochs of metrics.jsonl's lam_strength, then mean ± std over seeds.
    strengths: dict[str, list[float]] = {}
    for p in sweep.glob("*/metrics.jsonl"):
        lam = json.loads((p.parent / "summary.json").read_text())["config"]["lam"]["name"]
        per_epoch = [json.loads(line)["lam_strength"] for line in p.read_text().splitlines()]
        strengths.setdefault(lam, []).append(sum(per_epoch) / len(per_epoch))
    assert strengths["none"] == [0.0, 0.0]  # λ = 1 throughout: no mixing
    assert 0.05 < min(strengths["beta"])
    for lam, s in strengths.items():
        assert numbers(rows[f"lam={lam}"][STRENGTH]) == pytest.approx([statistics.mean(s), statistics.stdev(s)],
                                                                      abs=6e-5)


def test_build_table_exactly(sweep):
    configs = group_runs(load_runs(sweep))
    comps = compare(configs, "test_acc")
    table = {r["label"]: r for r in build_table(configs, "test_acc", ["test_ece"], comps, ("beta", "none"))}
    for lam, accs in finals(sweep).items():
        row = table[f"lam={lam}"]
        assert row["n"] == 2 and row["mean"] == pytest.approx(sum(accs) / 2, rel=1e-12)
        assert (row["lo"], row["hi"]) == pytest.approx(sps.t.interval(0.95, 1, loc=row["mean"], scale=sps.sem(accs)))
    assert table["lam=beta"]["vs beta"] == table["lam=none"]["vs none"] == "(reference)"
    [c] = comps  # none vs beta, made once (beta vs none is the same test and is not counted twice by Holm)
    assert c["label"] == "lam=none" and c["ref_label"] == "lam=beta" and c["n"] == 2 and c["p_adj"] == c["p"]
    assert c["diff"] == pytest.approx(sum(finals(sweep)["none"]) / 2 - sum(finals(sweep)["beta"]) / 2)
    assert table["lam=none"]["vs beta"].startswith(c["verdict"])
    mirror = {"better": "worse", "worse": "better"}.get(c["verdict"], c["verdict"])
    assert table["lam=beta"]["vs none"].startswith(mirror)


def test_header_counts_and_failed_run_is_listed(report):
    md = (report[0] / "report.md").read_text()
    assert "5 runs: 4 completed, 1 failed" in md
    assert "median last-10" not in md  # 2-epoch runs: OpenMixup's median needs ≥ 20 epochs with a test each
    section = md.split("## Failed, diverged or unfinished runs (1)")[1]
    assert re.search(r"\| 99 \| lam=none \| 7 \| failed \| RuntimeError: out of memory \(made up\) \|", section)


def test_evidence_paragraph_states_n_budget_and_no_ranking(report):
    md = (report[0] / "report.md").read_text()
    text = md.split("## What the evidence supports")[1].split("##")[0]
    assert "n=2 seeds" in text and "data=digits (train_subset=128)" in text and "2 epochs" in text
    assert "not ranked" in text and "test accuracy" in text and "ECE" in text


def test_html_is_self_contained_with_every_figure(report):
    out = report[0]
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page
    assert "src='figures/" not in page and 'src="figures/' not in page
    for name in FIGURES:
        assert f"<figure id='{name}'>" in page, name
        assert (out / "figures" / f"{name}.png").stat().st_size > 5000
        assert f"(figures/{name}.png)" in (out / "report.md").read_text()
    assert "lam_distance" not in page  # no distance or sk policy in this sweep


def write_fake_runs(d: Path, runs: list[tuple[str, int, float, list[float] | None]]) -> None:
    """Hand-made records: (lam, seed, final test_acc, lam_strength per epoch, or None for an older record);
    ``lam`` may name a pairing too (``beta+label_kernel``), and a mixer (``beta@cutmix``)."""
    for i, (lam, seed, acc, strength) in enumerate(runs):
        (d / str(i)).mkdir(parents=True)
        lam, _, mixer = lam.partition("@")
        lam, _, pairing = lam.partition("+")
        config = {"seed": seed, "lam": {"name": lam}, "data": {"name": "digits"}, "model": {"name": "mlp"},
                  "mixer": {"name": mixer or "input"}, **({"pairing": {"name": pairing}} if pairing else {})}
        summary = {"status": "completed", "config": config, "final": {"test_acc": acc}}
        (d / str(i) / "summary.json").write_text(json.dumps(summary))
        rows = [{"epoch": e + 1, "test_acc": acc, **({} if strength is None else {"lam_strength": s})}
                for e, s in enumerate(strength or [0.0, 0.0])]
        (d / str(i) / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_strength_column_and_figure_from_hand_made_records(tmp_path):
    strong = {0: [0.40, 0.44, 0.48], 1: [0.30, 0.36, 0.45], 2: [0.41, 0.41, 0.41]}  # a schedule that ramps up
    runs = [("beta", s, 0.9, [0.25, 0.25, 0.25 + s / 100]) for s in range(3)]
    runs += [("sk", s, 0.8 + s / 50, strong[s]) for s in range(3)]
    runs += [("distance", s, 0.85, None) for s in range(2)]  # records that predate lam_strength
    write_fake_runs(tmp_path / "runs", runs)
    md, _ = write_report(tmp_path / "runs", out=tmp_path / "out")
    rows = {r["configuration"]: r for r in md_table(md.read_text())}
    per_run = {lam: [statistics.fmean(x) for name, _, _, x in runs if name == lam] for lam in ("beta", "sk")}
    assert per_run["sk"] == pytest.approx([0.44, 0.37, 0.41])
    for lam, s in per_run.items():
        assert numbers(rows[f"lam={lam}"][STRENGTH]) == pytest.approx([statistics.mean(s), statistics.stdev(s)],
                                                                      abs=6e-5)
    assert rows["lam=distance"][STRENGTH] == "—"
    assert "Beta(1, 1) gives ¼" in md.read_text()
    assert (tmp_path / "out" / "figures" / "lam_strength.png").stat().st_size > 5000
    assert "(figures/lam_strength.png)" in md.read_text()


def test_records_without_strength_still_report(tmp_path):
    write_fake_runs(tmp_path / "runs", [(lam, s, 0.9 - s / 100, None) for lam in ("beta", "none") for s in range(2)])
    md, table = write_report(tmp_path / "runs", out=tmp_path / "out")
    rows = md_table(md.read_text())
    assert len(rows) == 2 and all(r[STRENGTH] == "—" for r in rows)
    assert f"| {STRENGTH} |" in table
    assert not (tmp_path / "out" / "figures" / "lam_strength.png").exists()  # nothing to draw, no empty picture


def test_runs_validated_only_at_the_end_draw_the_training_loss_per_epoch(tmp_path):
    # trainer.val_every=0: one validation row per run, no curve of it; before, the figure showed one dot
    for i, (lam, seed) in enumerate((lam, seed) for lam in ("beta", "none") for seed in range(2)):
        (tmp_path / "runs" / str(i)).mkdir(parents=True)
        config = {"seed": seed, "lam": {"name": lam}, "data": {"name": "digits"}, "model": {"name": "mlp"}}
        rows = [{"epoch": e, "train_loss": 2.0 / e} for e in (1, 2, 3)]
        rows[-1].update(val_acc=0.8, test_acc=0.8 + seed / 100)
        (tmp_path / "runs" / str(i) / "summary.json").write_text(json.dumps(
            {"status": "completed", "config": config, "final": {"test_acc": rows[-1]["test_acc"]}}))
        (tmp_path / "runs" / str(i) / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    md, _ = write_report(tmp_path / "runs", out=tmp_path / "out")
    assert "training loss (mixed batches) per epoch" in md.read_text()
    assert "validation accuracy per epoch" not in md.read_text()


def test_adaptive_ece_and_ood_columns_appear_where_the_runs_recorded_them(tmp_path):
    finals = {("beta", 0): (0.90, 0.03, 0.95, 0.20), ("beta", 1): (0.91, 0.05, 0.93, 0.30),
              ("none", 0): (0.88, 0.07, 0.90, 0.40), ("none", 1): (0.89, 0.09, 0.86, 0.50)}
    for i, ((lam, seed), (acc, aece, auroc, fpr)) in enumerate(finals.items()):
        (tmp_path / "runs" / str(i)).mkdir(parents=True)
        config = {"seed": seed, "lam": {"name": lam}, "data": {"name": "digits"}, "model": {"name": "mlp"}}
        final = {"test_acc": acc, "test_aece": aece, "test_ood_auroc": auroc, "test_ood_fpr95": fpr}
        (tmp_path / "runs" / str(i) / "summary.json").write_text(json.dumps({"status": "completed", "config": config,
                                                                            "final": final}))
        (tmp_path / "runs" / str(i) / "metrics.jsonl").write_text(json.dumps({"epoch": 1, **final}) + "\n")
    md, _ = write_report(tmp_path / "runs", out=tmp_path / "out")
    rows = {r["configuration"]: r for r in md_table(md.read_text())}
    assert numbers(rows["lam=beta"]["adaptive ECE"])[0] == pytest.approx(0.04)
    assert numbers(rows["lam=none"]["OOD AUROC"])[0] == pytest.approx(0.88)
    assert numbers(rows["lam=none"]["OOD FPR@95"])[0] == pytest.approx(0.45)


def test_robustness_table_gives_hendrycks_mce_against_plain_training(tmp_path):
    # "late": tuned Beta with mixing switched off for the last quarter, a control of beta (issue 26): its own
    # key (trainer.mix_until) aside, it has plain training's other keys, so it gets an mCE and a "vs none" too
    g = np.random.default_rng(0)
    acc = {(lam, seed): {c: list(g.uniform(0.4, 0.9, 5)) for c in ("gaussian_noise", "fog", "jpeg")}
           for lam in ("none", "beta", "late") for seed in (0, 1)}
    test_acc = {("none", 0): 0.80, ("none", 1): 0.82, ("beta", 0): 0.85, ("beta", 1): 0.86, ("late", 0): 0.84,
                ("late", 1): 0.87}
    for i, ((lam, seed), table) in enumerate(acc.items()):
        (tmp_path / "runs" / str(i)).mkdir(parents=True)
        config = {"seed": seed, "lam": {"name": lam}, "data": {"name": "digits"}, "model": {"name": "mlp"},
                  "trainer": {"mix_until": 1.0}}
        if lam == "late":
            config.update(lam={"name": "beta"}, trainer={"mix_until": 0.75},
                          study={"control_of": {"name": "beta"}, "control_kind": "stop_late"})
        mean_acc = float(np.mean([v for per in table.values() for v in per]))
        final = {"test_acc": test_acc[(lam, seed)], "test_corruption_acc": mean_acc, "test_corruption_ece": 0.1}
        corruptions = {c: [{"severity": k + 1, "acc": a, "nll": 1.0, "ece": 0.1} for k, a in enumerate(per)]
                       for c, per in table.items()}
        (tmp_path / "runs" / str(i) / "summary.json").write_text(json.dumps(
            {"status": "completed", "config": config, "final": final, "corruptions": corruptions}))
        (tmp_path / "runs" / str(i) / "metrics.jsonl").write_text(json.dumps({"epoch": 1, **final}) + "\n")
    md, _ = write_report(tmp_path / "runs", out=tmp_path / "out")
    text = md.read_text()
    rows = {r["configuration"]: r for r in md_table(text.split("## Robustness")[1], "configuration")}

    def err(lam, c):  # seed-averaged error per severity
        return np.mean([1 - np.array(acc[(lam, s)][c]) for s in (0, 1)], axis=0)

    for lam, label in (("beta", "lam=beta"), ("late", "lam=beta [mixing off late control of lam=beta]")):
        want = np.mean([err(lam, c).sum() / err("none", c).sum() for c in ("gaussian_noise", "fog", "jpeg")])
        assert float(rows[label]["mCE vs none"]) == pytest.approx(want, abs=6e-4)
    assert float(rows["lam=none"]["mCE vs none"]) == pytest.approx(1.0)
    # the control against plain training, and against the arm it controls exactly once (one test for Holm)
    comps = compare(group_runs(load_runs(tmp_path / "runs")), "test_acc", "beta", primary=True)
    late = "lam=beta [mixing off late control of lam=beta]"
    vs_none = [r for r in comps if (r["label"], r["ref_label"]) == (late, "lam=none")]
    assert len(vs_none) == 1 and vs_none[0]["diff"] == pytest.approx(np.mean([0.84 - 0.80, 0.87 - 0.82]))
    assert len([r for r in comps if {r["label"], r["ref_label"]} == {late, "lam=beta"}]) == 1
    assert (tmp_path / "out" / "figures" / "corruptions.png").stat().st_size > 5000


def test_single_run_dir_and_missing_dir(sweep, tmp_path):
    md, _ = write_report(first_run(sweep), out=tmp_path)
    assert "1 run: 1 completed" in md.read_text()
    r = subprocess.run([sys.executable, "-m", "mixlab.report", str(tmp_path / "nope")], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "expected a sweep or run directory" in r.stderr


@pytest.fixture(scope="module")
def moons(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("moons")
    for i, lam in enumerate(("beta", "distance")):
        train(compose_cfg("data=moons", "data.train_subset=256", "model=mlp", "model.hidden=[16]", "device=cpu",
                          "trainer.epochs=2", "trainer.progress=false", f"lambda={lam}"), d / str(i))
    return d


def test_moons_decision_boundaries_and_missing_none_baseline(moons, tmp_path):
    md, _ = write_report(moons, out=tmp_path)
    text = md.read_text()
    assert (tmp_path / "figures" / "decision_boundaries.png").stat().st_size > 5000
    assert (tmp_path / "figures" / "lam_distance.png").exists()
    assert not (tmp_path / "figures" / "mixed_examples.png").exists()  # 2-D points are no images
    rows = {r["configuration"]: r for r in md_table(text)}
    assert "vs none" not in rows["lam=distance"]  # no none runs: no column of "no matching reference"
    assert rows["lam=distance"]["vs beta"] == "not enough seeds"  # n=1: no crash, no claim


def test_wandb_table_and_figures_are_logged_and_a_failure_is_a_warning(moons, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    shutil.copytree(moons, runs)
    s = json.loads((runs / "0" / "summary.json").read_text())
    s["config"]["logger"] = {"name": "wandb", "project": "p", "entity": None, "mode": "offline"}
    s["config"]["study"]["run"] = {"name": "s1", "plan": "abc123", "phase": "comparison", "arm": "beta"}
    (runs / "0" / "summary.json").write_text(json.dumps(s))
    calls = []
    monkeypatch.setattr(mixlab.run.loggers, "log_report", lambda out, **kw: calls.append((out, kw)))
    write_report(runs, out=tmp_path / "a")
    (out, kw), = calls
    assert out == tmp_path / "a" and kw["mode"] == "offline" and kw["project"] == "p"
    assert kw["tags"] == ["study:s1", "plan:abc123"] and kw["tables"]["report"][0][0] == "configuration"
    assert sorted(kw["images"]) == sorted(f"figures/{p.stem}" for p in (tmp_path / "a" / "figures").glob("*.png"))
    assert kw["images"] and all(p.exists() for p in kw["images"].values())

    def broken(**kw):
        raise RuntimeError("no network")

    monkeypatch.undo()  # the real log_report, with a W&B that cannot start
    monkeypatch.setattr(mixlab.run.loggers, "WandbLogger", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        md, _ = write_report(runs, out=tmp_path / "b")
    assert md.exists() and any("W&B report failed" in str(w.message) for w in caught)


def test_wandb_logger_mirrors_both_lam_histograms(tmp_path, monkeypatch):
    logged = []

    class Run:
        def log(self, data, step):
            logged.append((data, step))

    class Histogram:
        def __init__(self, np_histogram):
            self.counts, self.edges = np_histogram

    fake = type(sys)("wandb")
    fake.init, fake.Histogram = (lambda **kw: Run()), Histogram
    monkeypatch.setitem(sys.modules, "wandb", fake)
    logger = mixlab.run.loggers.WandbLogger(run_dir=tmp_path, config={}, mode="offline")
    logger.log({"lam_mean": 0.5, "lam_hist": [1, 0, 0, 3], "lam_strength": 0.1, "lam_strength_hist": [3, 0, 1, 0]},
               step=2)
    [(data, step)] = logged
    assert step == 2 and data["lam_mean"] == 0.5 and data["lam_strength"] == 0.1
    assert (data["lam_hist"].counts, data["lam_hist"].edges) == ([1, 0, 0, 3], [0, 0.25, 0.5, 0.75, 1])
    h = data["lam_strength_hist"]
    assert (h.counts, h.edges) == ([3, 0, 1, 0], [0, 0.125, 0.25, 0.375, 0.5])  # min(λ, 1 − λ) lives in [0, ½]


def test_regression_reports_mse_without_calibration(tmp_path):
    for i, lam in enumerate(("none", "beta")):
        train(compose_cfg("data=diabetes", "model=mlp", "model.hidden=[16]", "device=cpu", "trainer.epochs=1",
                          "trainer.progress=false", f"lambda={lam}"), tmp_path / "runs" / str(i))
    md, table = write_report(tmp_path / "runs", out=tmp_path / "out")
    assert "| configuration | n (completed/launched) | test MSE mean ± std | 95% CI | test MAE |" in table
    assert "ECE" not in md.read_text()
    assert not (tmp_path / "out" / "figures" / "reliability.png").exists()


def test_unknown_metric_is_an_error_that_lists_the_choices(sweep, tmp_path):
    with pytest.raises(ValueError, match=r"--metric='acc': expected one of \["):
        write_report(sweep, out=tmp_path, metric="acc")


# ----------------------------------------------------------------------------- the package's import graph


def _imports_of(path: Path, name: str, modules: set[str]) -> set[str]:
    """The mixlab modules that the module ``name`` (file ``path``) imports anywhere in its text: at the top, in a
    function (lazily) or under ``if TYPE_CHECKING`` alike, since each ties the two modules together."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from . import x, from .x import y, from ..x import y
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            # `from pkg import sub` imports the submodule pkg.sub; `from pkg.mod import obj` the module pkg.mod
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:  # mixlab.report.Config -> mixlab.report
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def test_mixlab_import_graph_has_no_cycle_and_points_down_the_layers():
    """No module of the package imports itself back through others (report and figures once did, via the types
    they share; those now live in mixlab.study.runs, below both). The layers point down: study -> run ->
    tasks/models/data -> engine, and the engine imports nothing else of mixlab. Holds for every module added later."""
    files = {}
    for path in sorted((ROOT / "mixlab").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {name: _imports_of(path, name, set(files)) for name, path in files.items()}
    state: dict[str, str] = {}  # depth-first search: "open" while on the stack, "done" after

    def visit(name: str, stack: list[str]) -> None:
        state[name] = "open"
        for dep in sorted(graph[name]):
            if state.get(dep) == "open":
                cycle = stack[stack.index(dep):] + [name, dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, stack + [name])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert "mixlab.study.runs" in graph["mixlab.study.figures"] and "mixlab.study.report" not in graph["mixlab.study.figures"]
    rank = {"engine": 0, "data": 1, "models": 1, "tasks": 1, "run": 2, "study": 3}
    layer = {name: name.split(".")[1] for name in graph if name.count(".") >= 1 and name.split(".")[1] in rank}
    for name, deps in graph.items():
        for dep in deps:
            if name in layer and dep in layer and layer[name] != layer[dep]:
                assert rank[layer[dep]] < rank[layer[name]], f"{name} imports {dep}: an arrow up the layers"
    assert all(dep.startswith("mixlab.engine") for name in graph if layer.get(name) == "engine" for dep in graph[name])


@pytest.mark.parametrize("name", ["report_sweep", "protocol_sweep"])
def test_a_committed_sweep_regenerates_its_report_byte_for_byte(name, tmp_path, monkeypatch):
    # Auditable results: the records alone (summary.json + metrics.jsonl, no checkpoints) give back the
    # committed report.md exactly, from the command its README states. report_sweep: untuned records
    # from before study.*, tuning and temperature scaling; protocol_sweep: tune -> tuned sweep -> controls.
    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    fixture = Path("tests/fixtures") / name
    assert {p.name for p in (fixture / "records").rglob("*") if p.is_file()} == {"summary.json", "metrics.jsonl"}
    from mixlab.study.report import main as report_main

    assert report_main([str(fixture / "records"), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "report.md").read_text() == (fixture / "report.md").read_text()


def test_a_note_is_set_off_right_after_the_title_and_without_it_nothing_changes(tmp_path, monkeypatch):
    # --note TEXT: one line, a blockquote right after the title of report.md and report.html (a superseded
    # report says so from the generator, so a byte-for-byte regeneration keeps it); without it, not a byte moves.
    import html

    from mixlab.study.report import main as report_main

    monkeypatch.chdir(ROOT)
    fixture = Path("tests/fixtures/report_sweep")
    note = "Superseded by docs/results/fashion_1k: <no validation split> & no tuning"
    assert report_main([str(fixture / "records"), "--out", str(tmp_path / "plain")]) == 0
    assert report_main([str(fixture / "records"), "--out", str(tmp_path / "noted"), "--note", note]) == 0
    plain = {s: (tmp_path / "plain" / f"report.{s}").read_text().splitlines(keepends=True) for s in ("md", "html")}
    noted = {s: (tmp_path / "noted" / f"report.{s}").read_text().splitlines(keepends=True) for s in ("md", "html")}
    assert "".join(plain["md"]) == (fixture / "report.md").read_text()  # without --note: the committed report
    assert plain["md"][0].startswith("# mixlab report: ") and plain["md"][1] == "\n"
    assert noted["md"] == plain["md"][:2] + [f"> {note}\n", "\n"] + plain["md"][2:]
    assert plain["html"][1].startswith("<h1>mixlab report: ")
    assert noted["html"] == plain["html"][:2] + [f"<blockquote>{html.escape(note)}</blockquote>\n"] + plain["html"][2:]
    # more than one line (or nothing) is refused in one line, before anything is written
    for bad in ("first line\nsecond line", " "):
        assert report_main([str(fixture / "records"), "--out", str(tmp_path / "bad"), "--note", bad]) == 2
        assert not (tmp_path / "bad").exists()


def test_a_superseded_report_without_records_says_so_right_after_its_title(monkeypatch):
    # docs/results/fashion_mnist_cpu has no records, so it cannot be regenerated with --note; its notice was
    # inserted by hand, and is held here to the form --note writes, in both files, with a README beside it.
    import html

    from mixlab.study.report import _html, _md

    monkeypatch.chdir(ROOT)
    old = [d for d in sorted(Path("docs/results").iterdir())
           if (d / "report.md").exists() and not (d / "records").is_dir()]
    assert old, "no superseded report left: drop this test"
    for d in old:
        md = (d / "report.md").read_text().splitlines()
        title, note = md[0][2:], md[2][2:]
        assert md[0].startswith("# ") and md[2].startswith("> Superseded by docs/results/"), d
        assert "\n".join(md[:3]) + "\n" == _md([("h1", title), ("note", note)]) and md[3] == "", d
        page = (d / "report.html").read_text().splitlines()
        assert page[1:3] == _html([("h1", title), ("note", note)], title).splitlines()[1:3], d
        assert f"<blockquote>{html.escape(note)}</blockquote>" == page[2]
        assert (d / "README.md").read_text().startswith(f"# {d.name} "), d


def test_holm_runs_within_the_declared_primary_family_only(tmp_path):
    # The fixture's records: none, beta, distance × 3 seeds. Primary: each policy vs beta on test accuracy.
    from mixlab.study.report import compare, declared
    from mixlab.study.stats import holm

    runs = load_runs(Path(__file__).resolve().parent / "fixtures" / "report_sweep" / "records")
    assert declared(runs) == ("beta", "test_acc")  # records without study.* fall back to the defaults
    rows = compare(group_runs(runs), "test_acc", "beta", primary=True)
    primary = [r for r in rows if r["family"] == "primary"]
    # each *dynamic* policy against beta: none (no mixing) and none-vs-beta are exploratory
    assert [r["label"] for r in primary] == ["lam=distance"] and {r["ref"] for r in primary} == {"beta"}
    assert primary[0]["p_adj"] == primary[0]["p"]  # a family of one: Holm leaves p as it is (m = 1, not 3)
    assert any(r["label"] == "lam=none" and r["ref"] == "beta" and r["family"] == "exploratory" for r in rows)
    exploratory = [r for r in rows if r["family"] == "exploratory"]
    assert [r["p_adj"] for r in exploratory] == holm([r["p"] for r in exploratory])
    assert all(r["family"] == "exploratory" for r in compare(group_runs(runs), "test_ece", "beta", primary=False))
    # runs that declare different primary comparisons cannot share one report without --baseline/--metric
    for i, r in enumerate(runs[:2]):
        r.summary.setdefault("config", {})["study"] = {"reference": ["beta", "none"][i], "metric": "test_acc"}
    with pytest.raises(ValueError, match="declare different primary comparisons"):
        declared(runs)


def test_a_run_still_running_declares_no_primary_comparison(tmp_path):
    # Before: a run folder without summary.json (running, or killed early) counted as declaring the defaults
    # (beta, test_acc), so a regression sweep in progress "declared different primary comparisons".
    from mixlab.study.report import declared

    write_fake_runs(tmp_path / "runs", [(lam, s, 0.3, None) for lam in ("beta", "distance") for s in range(2)])
    for f in (tmp_path / "runs").rglob("summary.json"):
        summary = json.loads(f.read_text())
        summary["config"]["study"] = {"reference": "beta", "metric": "test_mse"}
        f.write_text(json.dumps(summary))
    (tmp_path / "runs" / "running" / ".hydra").mkdir(parents=True)
    runs = load_runs(tmp_path / "runs")
    assert any(r.summary.get("status") == "unknown" for r in runs)
    assert declared(runs) == ("beta", "test_mse")
    from mixlab.study.controls import main as controls_main

    (tmp_path / "runs" / "0" / "summary.json").write_text(json.dumps({"status": "completed", "config": {
        "seed": 0, "lam": {"name": "beta"}, "study": {"metric": "test_acc"}}, "final": {"test_acc": 0.3}}))
    assert controls_main([str(tmp_path / "runs"), "--dry-run"]) == 2  # one line, no traceback


def test_a_reference_policy_under_its_own_pairing_is_compared_with_it_under_random_pairing(tmp_path):
    # C-Mixup is beta under label_kernel pairing: it is compared, seed by seed, with beta under random pairing
    # (and with none), while distance under random pairing keeps beta+random as its only reference.
    accs = {"beta+random": [0.90, 0.91, 0.92, 0.93], "beta+label_kernel": [0.92, 0.94, 0.93, 0.96],
            "none+random": [0.85, 0.86, 0.88, 0.87], "distance+random": [0.90, 0.92, 0.91, 0.94]}
    write_fake_runs(tmp_path / "runs", [(arm, s, a, None) for arm, v in accs.items() for s, a in enumerate(v)])
    configs = group_runs(load_runs(tmp_path / "runs"))
    rows = compare(configs, "test_acc", "beta", primary=True)
    cmix = [r for r in rows if r["label"] == "lam=beta pairing=label_kernel"]
    assert {r["ref_label"] for r in cmix} == {"lam=beta pairing=random", "lam=none pairing=random"}
    vs_beta = next(r for r in cmix if r["ref"] == "beta")
    d = np.subtract(accs["beta+label_kernel"], accs["beta+random"])
    assert vs_beta["diff"] == pytest.approx(d.mean())
    assert vs_beta["p"] == pytest.approx(sps.ttest_rel(accs["beta+label_kernel"], accs["beta+random"]).pvalue)
    assert vs_beta["family"] == "exploratory"  # a pairing, not a dynamic λ: outside the declared primary family
    dist = [r for r in rows if r["label"] == "lam=distance pairing=random" and r["ref"] == "beta"]
    assert [r["ref_label"] for r in dist] == ["lam=beta pairing=random"] and dist[0]["family"] == "primary"
    md, _ = write_report(tmp_path / "runs", out=tmp_path / "out")
    table = {r["configuration"]: r for r in md_table(md.read_text())}
    assert table["lam=beta pairing=random"]["vs beta"] == "(reference)"
    assert table["lam=beta pairing=label_kernel"]["vs beta"].startswith(vs_beta["verdict"])
    # none's "vs beta" is none against beta under random pairing alone, not C-Mixup's comparison read backwards
    from mixlab.study.report import FLIP

    direct = next(r for r in rows if (r["label"], r["ref_label"]) == ("lam=none pairing=random", "lam=beta pairing=random"))
    said = direct["verdict"] + (f" (Δ {direct['diff']:+.4f})" if direct["verdict"] in FLIP else "")
    assert table["lam=none pairing=random"]["vs beta"] == said


def test_a_mixer_of_its_own_is_compared_with_the_reference_under_input_mixing(tmp_path):
    # CutMix is Beta λ under another mixer: compared with tuned mixup (input mixing, the same other keys); a
    # dynamic λ under CutMix is compared with Beta under CutMix, where that ran
    accs = {"beta": [0.90, 0.91, 0.92], "beta@cutmix": [0.92, 0.92, 0.95], "schedule@cutmix": [0.93, 0.92, 0.96]}
    write_fake_runs(tmp_path / "runs", [(arm, s, a, [0.2, 0.2]) for arm, v in accs.items() for s, a in enumerate(v)])
    rows = compare(group_runs(load_runs(tmp_path / "runs")), "test_acc", "beta", primary=True)
    vs_beta = {r["label"]: r for r in rows if r["ref"] == "beta"}
    assert vs_beta["lam=beta mixer=cutmix"]["ref_label"] == "lam=beta mixer=input"
    assert vs_beta["lam=beta mixer=cutmix"]["diff"] == pytest.approx(np.mean([0.02, 0.01, 0.03]))
    assert vs_beta["lam=schedule mixer=cutmix"]["ref_label"] == "lam=beta mixer=cutmix"
    assert vs_beta["lam=schedule mixer=cutmix"]["diff"] == pytest.approx(np.mean([0.01, 0.0, 0.01]))
    # the plan names each of these comparisons in its family, and the report finds each one in its table
    from mixlab.study.plan import make_plan
    from mixlab.study.plan_report import planned_family

    plan = make_plan(compose_cfg("experiment=digits_study", "study.arms=[beta,beta@cutmix,schedule@cutmix]",
                                 "study.go=always", "study.controls={schedule@cutmix:[]}"), [])
    family = planned_family(plan, group_runs(load_runs(tmp_path / "runs")), "test_acc")
    assert [(f["text"], f["key"]) for f in family] == [
        ("beta@cutmix vs beta on test_acc", ("lam=beta mixer=cutmix", "lam=beta mixer=input")),
        ("schedule@cutmix vs beta@cutmix on test_acc", ("lam=schedule mixer=cutmix", "lam=beta mixer=cutmix"))]


def test_a_pairing_of_its_own_gets_a_random_pairing_control_of_its_strength(tmp_path):
    # C-Mixup can beat mixup by mixing less; its control is fixed Beta of its strength under random pairing.
    from mixlab.study.controls import plan

    accs = {"beta+random": [0.90, 0.91, 0.92], "beta+label_kernel": [0.93, 0.95, 0.94], "none+random": [0.88, 0.9, 0.89]}
    strength = {"beta+random": 0.14, "beta+label_kernel": 0.04, "none+random": 0.0}
    write_fake_runs(tmp_path / "runs", [(arm, s, a, [strength[arm]] * 2) for arm, v in accs.items() for s, a in enumerate(v)])
    for f in (tmp_path / "runs").rglob("summary.json"):  # C-Mixup's pairing has a knob; the records say it
        summary = json.loads(f.read_text())
        if summary["config"]["pairing"]["name"] == "label_kernel":
            summary["config"]["pairing"]["sigma"] = 0.7
            f.write_text(json.dumps(summary))
    todo, _ = plan(tmp_path / "runs", beating=True)
    assert [(j["seed"], j["strength"]) for j in todo] == [(0, 0.04), (1, 0.04), (2, 0.04)]
    for j, acc in zip(todo, (0.92, 0.935, 0.93), strict=True):
        assert j["config"]["pairing"] == {"name": "random"}
        assert j["config"]["study"]["control_of_pairing"] == {"name": "label_kernel", "sigma": 0.7}
        j["dir"].mkdir()
        (j["dir"] / "summary.json").write_text(json.dumps({"status": "completed", "config": j["config"],
                                                            "final": {"test_acc": acc}}))
        (j["dir"] / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "test_acc": acc, "lam_strength": 0.04}) + "\n")
    rows = compare(group_runs(load_runs(tmp_path / "runs")), "test_acc", "beta", primary=True)
    matched = [r for r in rows if r["ref"] == "matched"]
    assert [r["label"] for r in matched] == ["lam=beta pairing=label_kernel"]
    assert matched[0]["diff"] == pytest.approx(np.mean(np.subtract([0.93, 0.95, 0.94], [0.92, 0.935, 0.93])))
    assert matched[0]["family"] == "exploratory"  # a pairing, not a dynamic λ: not in the declared primary family


def test_every_committed_result_regenerates_from_its_records_or_is_marked_superseded(tmp_path, monkeypatch):
    # docs/results/<name>/report.md comes with records/ (summary.json + metrics.jsonl per run) from which
    # `python3 -m mixlab.report docs/results/<name>/records --out docs/results/<name>` wrote it, run from the
    # repository root; a report without records may stay only as a superseded record, said so in the index.
    # (A study still under way, e.g. with its tuning records only, has no report.md yet.)
    from mixlab.study.report import main as report_main

    monkeypatch.chdir(ROOT)
    results = Path("docs/results")
    index = (results / "README.md").read_text()
    for d in sorted(p for p in results.iterdir() if p.is_dir() and (p / "report.md").exists()):
        if (d / "records").is_dir():
            assert report_main([str(d / "records"), "--out", str(tmp_path / d.name)]) == 0
            assert (tmp_path / d.name / "report.md").read_text() == (d / "report.md").read_text(), d
        else:
            assert re.search(rf"^## {re.escape(d.name)} .*\(SUPERSEDED", index, re.M), f"{d}: no records/"


def test_every_committed_study_regenerates_its_report_and_the_side_by_side_from_its_records(tmp_path, monkeypatch):
    # A study committed by scripts/publish_study.py: docs/results/<name>/<study>/ holds plan.yaml, tuning.json,
    # compare/ (the records) and report/, written from the copy run from the repository root; studies side by side
    # (python -m mixlab.study.sizes) write <name>/sizes.md from the same folders, in the order it names them.
    from mixlab.study.report import main as report_main
    from mixlab.study.sizes import main as sizes_main

    monkeypatch.chdir(ROOT)
    # a study of its own (docs/results/<study>/, as fashion_mixers) or one of several (docs/results/<name>/<study>/)
    plans = [*Path("docs/results").glob("*/plan.yaml"), *Path("docs/results").glob("*/*/plan.yaml")]
    studies = sorted(p.parent for p in plans if (p.parent / "report" / "report.md").is_file())
    for d in studies:
        out = tmp_path / d.parent.name / d.name
        assert report_main([str(d / "compare"), "--out", str(out)]) == 0
        assert (out / "report.md").read_text() == (d / "report" / "report.md").read_text(), d
    for top in sorted({d.parent for d in studies}):
        if (top / "sizes.md").is_file():
            named = re.search(r"python -m mixlab\.study\.sizes (.+?) --out OUT", (top / "sizes.md").read_text())[1]
            assert sizes_main([*named.split(), "--out", str(tmp_path / top.name)]) == 0
            assert (tmp_path / top.name / "sizes.md").read_text() == (top / "sizes.md").read_text(), top


def test_no_committed_record_names_a_path_of_the_machine_it_ran_on():
    """Records that travel (issue 24): no string in a committed record, and no run-folder name, is an
    absolute path. Before: rcf_small's and scenes_small's tuned= and folder names held /work/rcf/... ."""
    import yaml

    def strings(node):
        if isinstance(node, dict):
            for v in node.values():
                yield from strings(v)
        elif isinstance(node, list):
            for v in node:
                yield from strings(v)
        elif isinstance(node, str):
            yield node

    found = []
    for f in sorted((ROOT / "docs" / "results").rglob("*")):
        rel = f.relative_to(ROOT)
        if "%2F" in f.name and re.search(r"=%2F", f.name):
            found.append(str(rel))
        if f.is_file() and f.suffix in (".json", ".yaml"):
            load = json.loads if f.suffix == ".json" else yaml.safe_load
            found += [f"{rel}: {s}" for s in strings(load(f.read_text())) if re.search(r"(^|[=\s'\"])/[a-z]", s)]
        elif f.is_file() and f.suffix in (".md", ".html"):
            found += [f"{rel}: {m}" for m in re.findall(r"[=\s'\"(]/(?:work|tmp|root|home)/\S*", f.read_text())]
    assert not found, found[:10]
