"""The README's extension and library examples, run exactly as written (code blocks read from README.md)."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"
FAST = ["data=digits", "data.train_subset=256", "data.batch_size=32", "model=mlp", "model.hidden=[32]",
        "device=cpu", "trainer.epochs=2", "trainer.progress=false"]


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def block_named(first_line: str) -> str:
    """The fenced block whose first line is ``first_line`` (a comment naming the file)."""
    hits = [b for b in blocks("python") if b.splitlines()[0] == first_line]
    assert len(hits) == 1, f"README has {len(hits)} blocks starting {first_line!r}"
    return hits[0]


def test_the_readme_plugin_example_runs_from_a_users_folder(tmp_path):
    (tmp_path / "my_conf" / "lambda").mkdir(parents=True)
    (tmp_path / "my_policies.py").write_text(block_named("# my_policies.py"))
    (tmp_path / "my_conf" / "lambda" / "fade.yaml").write_text(next(b for b in blocks("yaml") if "name: fade" in b))
    command = next(line for b in blocks("bash") for line in b.splitlines() if "plugins=[my_policies]" in line)
    args = shlex.split(command.split("#")[0])
    assert args[:3] == ["python3", "-m", "mixlab"]
    r = subprocess.run([sys.executable, *args[1:], *FAST, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["config"]["lam"] == {"name": "fade", "start": 0.4}
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # λ = 1 − 0.4·(1 − t): epoch 1 spans t in [0, ½), epoch 2 [½, 1); every λ is in the matching range
    assert 0.6 - 1e-6 <= rows[0]["lam_min"] < rows[0]["lam_max"] <= 0.8 + 1e-6
    assert 0.8 - 1e-6 <= rows[1]["lam_min"] < rows[1]["lam_max"] <= 1.0
    # a bad option of the user's policy is one line naming it, like mixlab's own
    bad = subprocess.run([sys.executable, *args[1:], "lam.start=0.9", *FAST, f"hydra.run.dir={tmp_path / 'bad'}"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "lam.start=0.9: expected a number in [0, 0.5]" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_a_plugin_that_cannot_be_imported_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mixlab", "plugins=[no_such_module_here]", *FAST,
                        f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "plugins=['no_such_module_here']: importing 'no_such_module_here' failed (ModuleNotFoundError" in r.stderr


def test_the_readme_library_example_runs_with_a_dataloader(capsys):
    code = next(b for b in blocks("python") if "class WithIndex(Dataset)" in b)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    mix = scope["mix"]
    # every sample's index reached the per-sample loss state through the DataLoader (3 epochs of 512)
    seen = mix.lam_policy.seen
    assert seen.shape == (512,) and not bool(seen.isnan().any()) and bool((seen >= 0).all())
    lam = mix.last.lam
    assert lam.shape == mix.last.partner.shape and bool(((lam > 0) & (lam < 1)).all())
    assert "tensor(" in capsys.readouterr().out


def test_the_registries_and_base_classes_are_importable_from_mixlab():
    import mixlab
    from mixlab import DATASETS, LAMBDAS, MIXERS, MODELS, PAIRINGS, Dataset, Mixer, MixModel, Pairing, Policy

    assert {"beta", "distance"} <= set(LAMBDAS.names()) and "random" in PAIRINGS.names()
    assert "input" in MIXERS.names() and "digits" in DATASETS.names() and "cnn" in MODELS.names()
    assert isinstance(PAIRINGS.build("random"), Pairing) and isinstance(MIXERS.build("cutmix"), Mixer)
    assert isinstance(LAMBDAS.build("beta"), Policy)
    assert isinstance(MODELS.build("mlp", in_shape=(4,), num_classes=2), MixModel)
    assert Dataset.__module__ == "mixlab.data.base" and set(mixlab.__all__) >= {"Policy", "Pairing", "Mixer"}
    assert isinstance(torch.zeros(1), torch.Tensor)


def test_every_difference_with_its_interval_in_the_evidence_section_is_a_committed_reports():
    # "+0.26 pp, [+0.06, +0.45]" in README's evidence section must be a paired comparison of some committed
    # report (docs/results/**/report.md: its Δ mean and 95% CI, as fractions, either way round), to the
    # printed precision; the reports themselves regenerate from their records (tests/test_report.py)
    text = README.read_text()
    evidence = text[text.index("## What the evidence says so far"):text.index("\n## ", text.index("## What the evidence says so far") + 1)]
    num = r"([+\-−]?\d+\.\d+)"
    said = [tuple(float(x.replace("−", "-")) for x in m)
            for m in re.findall(num + r" pp(?:(?!\d\.\d)[^\[\]]){0,40}\[" + num + r", " + num + r"\]", evidence)]
    assert len(said) >= 10, said  # the section's differences are found at all
    reported = set()
    for report in README.parent.glob("docs/results/**/report.md"):
        for line in report.read_text().splitlines():
            cells = [c.strip() for c in line.strip("|").split("|")] if line.startswith("|") else []
            for before, cell in zip(cells, cells[1:]):
                ci = re.fullmatch(r"\[(-?\d+\.\d+), (-?\d+\.\d+)\]", cell)
                if ci and re.fullmatch(r"-?\d+\.\d+", before):
                    d, lo, hi = (100 * float(x) for x in (before, ci[1], ci[2]))
                    reported |= {(d, lo, hi), (-d, -hi, -lo)}
    unknown = [s for s in said if not any(all(abs(a - b) <= 0.0051 for a, b in zip(s, r)) for r in reported)]
    assert not unknown, f"README differences in no committed report: {unknown}"
