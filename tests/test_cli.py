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
from mixlab.run.config import job_dir

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
    """The first sentence of the comment block at the top of an option's file (its lines joined)."""
    block = []
    for line in path.read_text().splitlines():
        if line.startswith("#") and "@package" not in line:
            block.append(line.lstrip("#").strip())
        elif block or (line.strip() and not line.startswith("#")):
            break
    return re.split(r"(?<=[.!?]) (?=[A-Z])", " ".join(block))[0] if block else None


def sections(text: str) -> dict[str, list[str]]:
    """``group:`` headings of the help's group section -> their indented option lines."""
    out: dict[str, list[str]] = {}
    group = None
    for line in text.split("== Config groups", 1)[1].split("\n== ", 1)[0].splitlines()[1:]:
        if re.fullmatch(r"[\w/]+:", line):
            group = line[:-1]
            out[group] = []
        elif re.match(r"  \S", line) and group:
            out[group].append(line)
        elif line.startswith("   ") and group:  # a description wrapped onto the next line
            out[group][-1] += " " + line.strip()
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


# ----------------------------------------------------------------------------- refused commands write nothing (issue 23)

@pytest.mark.parametrize("args", [  # refused by: the value rules, a component, loading the data, building the run
    ("lam.alpha=-1",), ("tuned=nowhere/tuned.yaml",), ("data.val_size=100000",),
    ("data=moons", "model=mlp", "eval.corruptions=true"),
])
def test_an_invalid_value_is_one_line_and_leaves_no_folder(args, tmp_path):
    """Before: 8 of 15 such commands left outputs/<date>/<time>/ with a failed summary.json."""
    r = run_cli(*FAST, *args, cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("mixlab: error: "), r.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []


def test_a_bad_value_anywhere_in_a_sweep_is_refused_before_any_job(tmp_path):
    """Before: the first job failed, the second ran, the sweep exited 0 and the report labelled both rows
    '(reference)'."""
    r = run_cli("-m", *FAST, "trainer.epochs=1", "lam.alpha=1.0,abc", "hydra.sweep.dir=sweep", cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
    assert "lam.alpha='abc': expected a number" in lines[0] and "job 2 of 2" in lines[0], lines[0]
    assert list(tmp_path.iterdir()) == []
    # an experiment's own sweep (hydra.sweeper.params) is checked the same way, every job of it
    r = run_cli("experiment=fashion_1k", "trainer.epochs=0", cwd=tmp_path)
    assert r.returncode == 2 and "trainer.epochs=0: expected an integer >= 1 (job 1 of 56" in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_refused_run_leaves_the_folders_hydra_record_alone(tmp_path):
    """Before: .hydra/overrides.yaml and config.yaml said lambda=loss while summary.json said distance."""
    assert run_cli(*FAST, "trainer.epochs=1", "lambda=distance", "hydra.run.dir=run", cwd=tmp_path).returncode == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "run" / ".hydra").iterdir()}
    r = run_cli(*FAST, "trainer.epochs=1", "lambda=loss", "hydra.run.dir=run", cwd=tmp_path)
    assert r.returncode == 2 and "holds a run of another configuration" in r.stderr, r.stderr[-2000:]
    assert {p.name: p.read_bytes() for p in (tmp_path / "run" / ".hydra").iterdir()} == before
    assert "- lambda=distance" in before["overrides.yaml"].decode()


def test_a_second_launch_into_a_sweep_folder_keeps_the_first_launchs_record(tmp_path):
    """Before: the second launch overwrote multirun.yaml; a resume (the same command) keeps one record."""
    sweep = ("-m", *FAST, "trainer.epochs=1", "hydra.sweep.dir=sweep")
    assert run_cli(*sweep, "lambda=none", cwd=tmp_path).returncode == 0
    first = (tmp_path / "sweep" / "multirun.yaml").read_text()
    assert run_cli(*sweep, "lambda=none", cwd=tmp_path).returncode == 0
    assert not (tmp_path / "sweep" / "multirun.1.yaml").exists()
    assert run_cli(*sweep, "lambda=beta", cwd=tmp_path).returncode == 0
    assert (tmp_path / "sweep" / "multirun.1.yaml").read_text() == first and "- lambda=none" in first
    assert "- lambda=beta" in (tmp_path / "sweep" / "multirun.yaml").read_text()


def test_a_sweep_with_a_failed_job_says_so_in_its_exit_status(tmp_path):
    """A job refused at run time (its folder holds another configuration) does not sink the others, and the
    sweep ends with exit 1 and a line naming it. Before: exit 0."""
    sweep = ("-m", *FAST, "trainer.epochs=1", "hydra.sweep.dir=sweep", "lambda=none,beta")
    clash = tmp_path / "sweep" / job_dir(["lambda=none", *FAST, "trainer.epochs=1"])
    assert run_cli(*FAST, "trainer.epochs=1", "lambda=constant", f"hydra.run.dir='{clash}'", cwd=tmp_path).returncode == 0
    r = run_cli(*sweep, cwd=tmp_path)
    assert r.returncode == 1 and "1 job(s) of the sweep did not complete" in r.stderr, r.stderr[-2000:]
    assert len(list((tmp_path / "sweep").glob("lambda=beta*/summary.json"))) == 1


OWN_DATA = '''
from sklearn.datasets import load_wine
from mixlab import DATASETS


@DATASETS.register("wine")
def wine(*, root=None, download=False):
    x, y = load_wine(return_X_y=True)  # numpy arrays, as scikit-learn returns them
    return x[::2], y[::2], x[1::2], y[1::2], 3, "classification"


@DATASETS.register("listed")
def listed(*, root=None, download=False):
    return [[0.0, 1.0]], [0], [[1.0, 0.0]], [1], 2, "classification"
'''


def test_your_own_data_needs_only_a_name_and_may_be_numpy(tmp_path):
    """Before: a data YAML with only name: was "ConfigAttributeError: Key 'batch_size' is not in struct", and
    numpy arrays "'numpy.ndarray' object has no attribute 'dim'"."""
    (tmp_path / "my_conf" / "data").mkdir(parents=True)
    (tmp_path / "my_data.py").write_text(OWN_DATA)
    for name in ("wine", "listed"):
        (tmp_path / "my_conf" / "data" / f"{name}.yaml").write_text(f"name: {name}\n")
    env = {**ENV, "PYTHONPATH": os.pathsep.join([ENV["PYTHONPATH"], str(tmp_path)])}
    common = ["plugins=[my_data]", "hydra.searchpath=[file://my_conf]", "model=mlp", "device=cpu",
              "trainer.progress=false", "trainer.epochs=1"]
    r = subprocess.run(mixlab(*common, "data=wine", "hydra.run.dir=wine"), cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((tmp_path / "wine" / "summary.json").read_text())
    assert summary["dataset"]["n_train"] == 89 and summary["config"]["data"]["batch_size"] == 128
    r = subprocess.run(mixlab(*common, "data=listed", "hydra.run.dir=listed"), cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and lines == ["mixlab: error: data: data loader 'listed' returned x_train as a list; "
                                           "expected a numpy array or a torch tensor"], r.stderr[-2000:]
    assert not (tmp_path / "listed").exists()


def test_a_data_set_that_is_not_there_points_to_the_near_ones_and_to_your_own_data():
    """Before: data=mnist suggested only rcf_mnist (a regression task) and data=wine got no pointer."""
    with pytest.raises(UsageError) as e:
        check_args(["data=mnist"], CONF)
    assert "fashion_mnist (Fashion-MNIST" in str(e.value) and "rcf_mnist (Regression" in str(e.value)
    with pytest.raises(UsageError) as e:
        check_args(["data=wine"], CONF)
    assert "A data set of your own: README, 'Your own data'" in str(e.value)


def test_help_descriptions_are_whole_sentences_and_keys_say_what_they_take(tmp_path):
    """Before: descriptions stopped at the end of the YAML's first comment line ("... mixup"); no allowed
    values, no glossary."""
    r = run_cli("--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    text = re.sub(r"\n +(?=[^ ])", " ", r.stdout.split("== Config groups", 1)[1].split("\n== ", 1)[0])
    assert "40 epochs, mixup the only augmentation), every policy tuned with the same budget on a 5 000-image " \
           "validation split." in text
    for line in text.splitlines()[1:]:
        if line.startswith("  ") and len(line.split()) > 2:
            assert line.rstrip()[-1] in ".)]'" or line.count("(") == line.count(")"), line
    keys = r.stdout.split("== Checked keys", 1)[1].split("\n== ", 1)[0]
    assert re.search(r"^  trainer\.amp +auto \| true \| false$", keys, re.M)
    assert re.search(r"^  eval\.ood +null or digits", keys, re.M)
    words = r.stdout.split("== Words ==", 1)[1]
    for term in ("seed 000, seed 002", "mixing strength", "primary family", "control", "validation split"):
        assert term in words, term
