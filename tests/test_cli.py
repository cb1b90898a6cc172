"""The command line: one-line user errors (exit 2), the command that resumes after Ctrl-C, mixlab's --help."""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from mixlab.__main__ import CONF
from mixlab.run.cli import UsageError, check_args, resume_command

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
FAST = ["data=digits", "data.train_subset=256", "data.batch_size=32", "model=mlp", "model.hidden=[32]", "device=cpu",
        "optim=sgd", "trainer.progress=false"]


def mixlab(*args: str) -> list[str]:
    return [sys.executable, "-m", "mixlab", *args]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(mixlab(*args), cwd=cwd, capture_output=True, text=True, timeout=300, env=ENV)


# ----------------------------------------------------------------------------- misspelled keys and options

@pytest.mark.parametrize("args,expected", [
    (["lam.temprature=0.5"],
     "lam.temprature: no such key for lambda=beta; did you mean lam.temperature (lambda=distance, lambda=loss)?"),
    (["lambda=distance", "lam.temprature=0.5"],
     "lam.temprature: no such key for lambda=distance; did you mean lam.temperature?"),
    (["lam.temperature=0.5"], "lam.temperature: no such key for lambda=beta; lambda=distance and lambda=loss have it"),
    (["lambda=distnace"], "lambda=distnace: no such option; did you mean distance? Available options: automix, beta"),
    (["-m", "lambda=beta,sk,distanse"], "lambda=distanse: no such option; did you mean distance?"),
    (["experiment=digits_quik"], "experiment=digits_quik: no such option; did you mean digits_quick?"),
    (["lamda=beta"], "lamda: no such key; did you mean lambda?"),
    (["lambda.alpha=2"], "lambda.alpha: no such key; did you mean lam.alpha? (lambda options land at lam)"),
    (["trainer.epoch=3"], "trainer.epoch: no such key; did you mean trainer.epochs?"),
    (["data=digits", "data.batchsize=3"], "data.batchsize: no such key for data=digits; did you mean data.batch_size?"),
    (["experiment=digits_quick", "model.widht=8"], "model.widht: no such key for model=cnn; did you mean model.width?"),
    (["~lam.alhpa"], "lam.alhpa: no such key for lambda=beta; did you mean lam.alpha?"),
    (["lam.alpha=[1"], "lam.alpha=[1: no viable alternative"),
])
def test_misspellings_are_named_with_the_closest_valid_names(args, expected):
    with pytest.raises(UsageError) as err:
        check_args(args, CONF)
    assert str(err.value).startswith(expected) and "\n" not in str(err.value), str(err.value)


@pytest.mark.parametrize("args", [
    [],
    [*FAST, "lambda=distance", "lam.temperature=0.5", "seed=3"],
    ["-m", "lambda=beta,sk", "lam.alpha=0.2,0.4", "seed=range(3)", "optim.lr=1e12,0.01"],
    ["-m", "lambda=glob(*)", "lam.name=beta"],
    ["experiment=digits_quick", "lambda=distance", "model.width=8", "trainer.epochs=1"],
    ["experiment=fixed_vs_dynamic", "data=fashion_mnist"],
    ["experiment=null", "+lam.extra=1", "lam.extra=2", "++trainer.new=3", "~lam.alpha", "optim.betas.0=0.8"],
    ["hydra.run.dir=/tmp/x", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.job.chdir=false"],
    ["--cfg", "job", "--resolve", "lambda=sk", "lam.tau_std=0.3"],
    ["--help", "lambda=distance"],
    ["--no-such-flag"],  # Hydra's argument parser reports it
])
def test_valid_commands_are_left_to_hydra(args):
    check_args(args, CONF)


def test_user_config_folders_add_options(tmp_path):
    (tmp_path / "lambda").mkdir()
    (tmp_path / "lambda" / "mine.yaml").write_text("# @package lam\n# my policy\nname: beta\nalpha: 2.0\nmine: 1\n")
    with pytest.raises(UsageError, match=r"^lambda=mine: no such option"):
        check_args(["lambda=mine"], CONF)
    for where in ([f"hydra.searchpath=[file://{tmp_path}]"], ["--config-dir", str(tmp_path)]):
        check_args([*where, "lambda=mine", "lam.mine=2"], CONF)
        with pytest.raises(UsageError, match=r"^lambda=mien: no such option; did you mean mine\?"):
            check_args([*where, "lambda=beta,mien", "-m"], CONF)
        with pytest.raises(UsageError, match=r"^lam.mien: no such key for lambda=mine; did you mean lam.mine\?"):
            check_args([*where, "lambda=mine", "lam.mien=2"], CONF)


@pytest.mark.parametrize("args,expected", [
    (["lam.temprature=0.5"], "lam.temprature: no such key for lambda=beta; did you mean lam.temperature"),
    (["lambda=distnace"], "lambda=distnace: no such option; did you mean distance?"),
])
def test_cli_reports_a_misspelling_in_one_line_and_exits_2(args, expected, tmp_path):
    """Before: Hydra's several lines ("Could not override ...", "Key 'temprature' is not in struct",
    "Set the environment variable HYDRA_FULL_ERROR=1 ...") and exit status 1."""
    r = run_cli(*args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith(f"mixlab: error: {expected}") and len(r.stderr.splitlines()) == 1, r.stderr
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- interrupted runs

def test_resume_command_replaces_the_folder_and_quotes():
    argv = ["-m", "lambda=none,beta", "hydra.sweep.dir=old", "model.hidden=[32]"]
    tokens = shlex.split(resume_command(argv, "/data/a b,c's", multirun=True))
    assert tokens[1:] == ["-m", "mixlab", "-m", "lambda=none,beta", "model.hidden=[32]",
                          "hydra.sweep.dir='/data/a b,c\\'s'"]
    override = OverridesParser.create().parse_overrides([tokens[-1]])[0]
    assert override.value() == "/data/a b,c's" and not override.is_sweep_override()
    tokens = shlex.split(resume_command(["+hydra.run.dir=x", "seed=1"], os.path.join(os.getcwd(), "outputs/d/t"),
                                        multirun=False))
    assert tokens[1:] == ["-m", "mixlab", "seed=1", "hydra.run.dir=outputs/d/t"]


def test_ctrl_c_prints_the_command_that_resumes_and_exits_130(tmp_path):
    """With the default timestamped run folder, re-running the same command would start afresh
    elsewhere: the printed command names this run's folder. Before: exit 143 and "re-run the same command"."""
    proc = subprocess.Popen(mixlab(*FAST, "trainer.epochs=20"), cwd=tmp_path, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.read_text() for p in tmp_path.glob("outputs/*/*/metrics.jsonl")):
        time.sleep(0.05)  # the first epoch's record (its line is printed right after)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted: SIGINT" in err and "Traceback" not in err, err
    (run_dir,) = tmp_path.glob("outputs/*/*")
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"
    done = len((run_dir / "metrics.jsonl").read_text().splitlines())

    line = next(line for line in err.splitlines() if line.startswith("mixlab: to resume"))
    tokens = shlex.split(line.split(": ", 2)[2])
    assert tokens[1:3] == ["-m", "mixlab"] and tokens[3:-1] == [*FAST, "trainer.epochs=20"]
    assert tokens[-1] == f"hydra.run.dir={run_dir.relative_to(tmp_path)}"
    time.sleep(1.1)  # a new run would get a new timestamped folder
    r = subprocess.run([sys.executable, *tokens[1:]], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and f"resuming after epoch {done}" in r.stderr, r.stderr[-2000:]
    assert list(tmp_path.glob("outputs/*/*")) == [run_dir]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 20


# ----------------------------------------------------------------------------- --help

def first_comment(path: Path) -> str | None:
    for line in path.read_text().splitlines():
        if line.startswith("#") and "@package" not in line:
            return line.lstrip("#").strip().rstrip(":,;")
        if line.strip() and not line.startswith("#"):
            return None
    return None


def sections(text: str) -> dict[str, list[str]]:
    """``group:`` headings of the help's group section -> their indented option lines."""
    out: dict[str, list[str]] = {}
    group = None
    for line in text.split("== Config groups", 1)[1].split("\n== ", 1)[0].splitlines()[1:]:
        if re.fullmatch(r"[\w/]+:", line):
            group = line[:-1]
            out[group] = []
        elif line.startswith("  ") and group:
            out[group].append(line)
    return out


def test_help_describes_every_option_of_every_group(tmp_path):
    """Before: Hydra's stock page, "lambda: automix, beta, ..." without descriptions."""
    r = run_cli("--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    listed = sections(r.stdout)
    on_disk = {d.name: sorted(d.glob("*.yaml")) for d in Path(CONF).iterdir() if d.is_dir() and any(d.glob("*.yaml"))}
    assert sorted(listed) == sorted(on_disk)
    for group, files in on_disk.items():
        names = [line.split()[0] for line in listed[group]]
        assert names == [f.stem for f in files], group
        for line, f in zip(listed[group], files):
            description = first_comment(f)
            assert line.endswith(description) if description else len(line.split()) > 1, line
    for key in ("seed", "device", "trainer.epochs", "data.batch_size", "data.train_subset", "data.root",
                "hydra.run.dir", "hydra.sweep.dir", "metrics.jsonl", "summary.json", "last.pt",
                "outputs/<date>/<time>/", "python3 -m mixlab.report <sweep dir>", "lambda=distance --help"):
        assert key in r.stdout, key
    assert "Powered by Hydra" not in r.stdout


def test_help_for_a_choice_shows_its_keys(tmp_path):
    r = run_cli("lambda=distance", "--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert re.search(r"^  distance +\* ", r.stdout, re.M)  # this command's choice is marked
    lam = r.stdout.split("\nlam:\n", 1)[1]
    assert "  name: distance" in lam and "  temperature: 1.0" in lam
