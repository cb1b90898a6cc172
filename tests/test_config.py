"""Config tier: the real conf/ composed through Hydra's compose API."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from mixlab.run.config import ConfigError, validate
from mixlab.data import DATASETS
from mixlab.engine.lam import LAMBDAS
from mixlab.run.loggers import LOGGERS
from mixlab.engine.mixing import MIXERS
from mixlab.models import MODELS
from mixlab.run.optim import OPTIMIZERS
from mixlab.engine.pairing import PAIRINGS
from mixlab.run.train import build

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
GROUPS = {"data": DATASETS, "model": MODELS, "pairing": PAIRINGS, "lambda": LAMBDAS, "mixer": MIXERS,
          "optim": OPTIMIZERS, "logger": LOGGERS}
KEY = {"lambda": "lam"}  # where a group's node lands in the composed config


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def options_of(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_registry_names_equal_config_files(group):
    assert options_of(group) == GROUPS[group].names()


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_each_file_names_its_registry_entry(group):
    for option in options_of(group):
        cfg = compose_cfg(f"{group}={option}")
        assert cfg[KEY.get(group, group)].name == option


def test_lambda_files_use_the_lam_package():
    for path in (CONF / "lambda").glob("*.yaml"):
        assert path.read_text().startswith("# @package lam\n"), path


def test_lambda_override_lands_at_lam():
    cfg = compose_cfg("lambda=distance", "lam.temperature=0.5")
    assert cfg.lam.name == "distance" and cfg.lam.temperature == 0.5 and "lambda" not in cfg


def test_stable_keys_exist_with_defaults():
    cfg = compose_cfg()
    assert cfg.seed == 0 and cfg.device == "auto" and cfg.trainer.epochs >= 1
    assert cfg.data.name == "fashion_mnist" and cfg.data.batch_size >= 1 and cfg.data.train_subset is None
    assert cfg.experiment is None if "experiment" in cfg else True


TINY = ("data=digits", "data.train_subset=64", "model=mlp", "device=cpu")
TEXT_OPTIONS = {("model", "textcnn"), ("model", "transformer")}  # options that need text data


def text_base(folder: Path) -> tuple[str, ...]:
    """TINY's counterpart for text: the synthetic Austen corpus written into ``folder``."""
    from .corpus import write_corpus

    root = write_corpus(folder / "austen") if not (folder / "austen").exists() else folder / "austen"
    return ("data=austen", f"data.root={root}", "data.seq_len=8", "data.val_size=30", "device=cpu")


DETECTION_OPTIONS = {("model", "fcos")}  # options that need boxes


def scenes_base(folder: Path) -> tuple[str, ...]:
    """TINY's counterpart for detection: small scenes of the made-up items of tests/fashion_items.py."""
    from .fashion_items import write_items

    root = folder / "fashion" if (folder / "fashion").exists() else write_items(folder / "fashion")
    return ("data=fashion_scenes", f"data.root={root}", "data.canvas=64", "data.train_scenes=16",
            "data.test_scenes=8", "data.val_size=8", "data.held_out_objects=50", "device=cpu")


def coco_base(folder: Path) -> tuple[str, ...]:
    """A small COCO-format data set (tests/coco_files.py) as data=coco."""
    from .coco_files import write_coco

    root = folder / "coco" if (folder / "coco").exists() else write_coco(folder / "coco")
    return ("data=coco", f"data.root={root}", "data.canvas=64", "data.val_size=2", "device=cpu")


@pytest.mark.parametrize("group,option", [(g, o) for g in sorted(GROUPS) if g != "data" for o in options_of(g)])
def test_every_option_of_every_group_builds(group, option, tmp_path):
    overrides = [*TINY, f"{group}={option}"]
    if (group, option) in TEXT_OPTIONS:  # a text model needs token ids: the synthetic corpus of tests/corpus.py
        overrides = [*text_base(tmp_path), f"{group}={option}"]
    if (group, option) in DETECTION_OPTIONS:  # a detector needs boxes
        overrides = [*scenes_base(tmp_path), f"{group}={option}"]
    if group == "logger" and option == "wandb":
        overrides.append("logger.mode=disabled")
    cfg = compose_cfg(*overrides)
    validate(cfg)
    parts = build(cfg)
    assert parts.ds.name == ("austen" if (group, option) in TEXT_OPTIONS else
                             "fashion_scenes" if (group, option) in DETECTION_OPTIONS else "digits")
    assert parts.batches.batch_size == cfg.data.batch_size
    if group == "lambda":
        assert type(parts.mix.lam_policy) is LAMBDAS.get(option)
    if group == "pairing":
        assert type(parts.mix.pairing) is PAIRINGS.get(option)


@pytest.mark.parametrize("option", options_of("experiment"))
def test_every_experiment_composes_and_passes_validation(option):
    # the committed studies' configs (fashion_1k, austen_small, ...) must stay runnable as they are named
    cfg = compose_cfg(f"experiment={option}")
    validate(cfg)
    assert cfg.trainer.epochs >= 1 and cfg.lam.name in LAMBDAS.names()


@pytest.mark.parametrize("option", ["digits", "diabetes", "moons"])
def test_bundled_data_options_build(option):
    overrides = [f"data={option}", "model=mlp", "device=cpu"]
    if option == "diabetes":
        overrides.append("lambda=beta")
    parts = build(compose_cfg(*overrides))
    assert parts.ds.name == option


@pytest.mark.parametrize("override,key", [
    ("lam.alpha=0", "lam.alpha"),
    ("lam.alpha=-1", "lam.alpha"),
    ("data.batch_size=0", "data.batch_size"),
    ("optim.lr=-0.1", "optim.lr"),
    ("trainer.epochs=0", "trainer.epochs"),
    ("device=tpu", "device"),
    ("data.train_subset=-3", "data.train_subset"),
    ("seed=-1", "seed"),
])
def test_invalid_values_raise_one_line_naming_the_key(override, key):
    cfg = compose_cfg(*TINY, override)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
        build(cfg)
    msg = str(err.value)
    assert msg.startswith(f"{key}=") and "expected" in msg and "\n" not in msg


@pytest.mark.parametrize("override,key", [
    ("lambda=distance", "lam.temperature"),
    ("lambda=sk", "lam.tau_std"),
])
def test_invalid_temperatures_raise(override, key):
    cfg = compose_cfg(*TINY, override, f"{key}=0")
    with pytest.raises(ConfigError, match=rf"^{key}=0"):
        build(cfg)


@pytest.mark.parametrize("override", ["+data.batchsize=64", "+trainer.epoch=3"])
def test_an_added_key_nothing_reads_is_an_error(override):
    key = override[1:].split("=")[0]
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}=.*unknown key; expected one of \["):
        validate(compose_cfg(*TINY, override))


def test_misspelled_component_option_is_named():
    cfg = compose_cfg(*TINY, "+lam.alpah=2")
    with pytest.raises(ConfigError, match=r"^lam: .*alpah"):
        build(cfg)


@pytest.mark.parametrize("node", ["lam", "pairing", "mixer", "model", "optim", "logger", "data"])
def test_a_target_import_path_is_never_instantiated(node, monkeypatch):
    """Components come from the registries only: a Hydra ``_target_`` smuggled onto the command line is
    an unknown option, never an import path that gets called."""
    import builtins

    called = []
    monkeypatch.setattr(builtins, "breakpoint", lambda *a, **k: called.append(1))
    cfg = compose_cfg(*TINY, f"+{node}._target_=builtins.breakpoint")
    with pytest.raises(ConfigError, match=rf"^{node}\b.*_target_"):
        validate(cfg)
        build(cfg)
        from mixlab.run.loggers import LOGGERS as loggers  # built last, in train()
        from mixlab.run.config import component_errors, options

        with component_errors("logger"):
            loggers.build(cfg.logger.name, run_dir=Path("."), config={}, **options(cfg.logger))
    assert not called


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # This checkout first on the path: `python -m mixlab` from another directory must not depend on
    # where (or whether) the package was installed.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "mixlab", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.mark.parametrize("override,expected", [
    ("lam.alpha=-1", "lam.alpha=-1"),
    ("device=tpu", "device='tpu': expected auto | cpu | cuda | cuda:N"),
    ("trainer.epochs=0", "trainer.epochs=0: expected an integer >= 1"),
])
def test_cli_rejects_bad_values_in_one_line_without_traceback(override, expected, tmp_path):
    r = run_cli(*TINY, override, f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert r.returncode != 0
    assert expected in r.stderr and "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, r.stderr


def test_cli_unknown_group_option_keeps_hydras_listing(tmp_path):
    r = run_cli("lambda=distanse", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert r.returncode != 0
    assert "distanse" in r.stderr and "Available options" in r.stderr and "distance" in r.stderr
