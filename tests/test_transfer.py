"""tuned= under other settings: a tuned.yaml applies as it is only to a run under the settings its trials ran
under (tuning.json's "settings"); tuned_transfer=true uses it anyway, and the run's records say so."""
from __future__ import annotations

import json
import re

import pytest
import yaml

from mixlab.run.config import ConfigError, apply_tuned
from mixlab.study.tune import main as tune_main

from .test_config import compose_cfg, run_cli

TINY = ["data=digits", "data.train_subset=64", "model=mlp", "model.hidden=[8]", "device=cpu",
        "trainer.progress=false"]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A real tuning of beta (one trial: its defaults) under trainer.epochs=2."""
    out = tmp_path_factory.mktemp("tuning")
    assert tune_main(["--lambdas", "beta", "--trials", "1", "--out", str(out), *TINY, "trainer.epochs=2"]) == 0
    return out / "tuned.yaml"


def run_cfg(tuned_yaml, *overrides):
    return compose_cfg(*TINY, "lambda=beta", f"tuned={tuned_yaml}", *overrides)


def test_tuning_json_records_the_settings_its_trials_ran_under(tuned):
    from mixlab.run.config import tuning_settings

    settings = json.loads((tuned.parent / "tuning.json").read_text())["settings"]
    trial = json.loads((tuned.parent / "beta" / "trial_0" / "summary.json").read_text())["config"]
    assert settings == tuning_settings(trial)
    assert settings["trainer.epochs"] == 2 and settings["data.name"] == "digits" and settings["model.name"] == "mlp"
    # what a run using the result may change: the tuned values, the seed, where they came from, the evaluations
    assert not [k for k in settings if re.match(r"(lam|pairing|eval)\.|seed$|tuned", k)], sorted(settings)


def test_other_settings_are_refused_in_one_line(tuned):
    with pytest.raises(ConfigError) as e:
        apply_tuned(run_cfg(tuned, "trainer.epochs=3"))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"tuned={str(tuned)!r}: made under other settings")
    assert "(trainer.epochs: 2 -> 3)" in msg and msg.endswith("or tuned_transfer=true to use it anyway")


def test_at_most_three_differences_are_named(tuned):
    with pytest.raises(ConfigError) as e:
        apply_tuned(run_cfg(tuned, "trainer.epochs=3", "smoothing=0.1", "data.batch_size=16", "optim.lr=0.01"))
    said = re.search(r"\((.*)\); expected", str(e.value)).group(1).split("; ")
    assert len(said) == 4 and said[-1] == "and 1 more", said
    # a bad tuned_transfer is named as such, not taken for false
    with pytest.raises(ConfigError, match=r"^tuned_transfer='yes': expected true \| false$"):
        apply_tuned(run_cfg(tuned, "trainer.epochs=3", "tuned_transfer=yes"))


def test_tuned_transfer_applies_the_values_and_the_run_records_what_changed(tuned, tmp_path):
    from mixlab.run.train import train

    alpha = yaml.safe_load(tuned.read_text())["beta"]["lam.alpha"]
    train(run_cfg(tuned, "trainer.epochs=3", "tuned_transfer=true", "lam.alpha=3.0"), tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["config"]["lam"]["alpha"] == pytest.approx(alpha) != 3.0
    assert summary["config"]["tuned_transfer"] is True
    assert summary["tuning"]["transferred"] == ["trainer.epochs: 2 -> 3"]


def test_the_same_settings_apply_with_nothing_transferred(tuned):
    # this run reads the test set and seeds otherwise (trials: eval.test=false): not a difference of settings
    cfg = run_cfg(tuned, "trainer.epochs=2", "seed=7", "lam.alpha=3.0")
    record = apply_tuned(cfg)
    assert record["transferred"] == [] and cfg.lam.alpha == pytest.approx(record["chosen"]["lam.alpha"]) != 3.0
    assert cfg.eval.test is True


def test_a_tuning_json_without_settings_is_applied_with_transfer_unknown(tuned, tmp_path):
    # the committed studies' tuning.json predate the record; a hand-written tuned.yaml has no tuning.json at all
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "tuned.yaml").write_text(tuned.read_text())
    log = json.loads((tuned.parent / "tuning.json").read_text())
    del log["settings"], log["settings_by_arm"]
    (tmp_path / "old" / "tuning.json").write_text(json.dumps(log))
    (tmp_path / "hand").mkdir()
    (tmp_path / "hand" / "tuned.yaml").write_text("beta:\n  lam.alpha: 0.7\n")
    for folder, trials in (("old", 1), ("hand", None)):
        record = apply_tuned(run_cfg(tmp_path / folder / "tuned.yaml", "trainer.epochs=3"))
        assert record["transferred"] is None and record["trials"] == trials


def test_the_command_line_refuses_before_writing_anything(tuned, tmp_path):
    folder = tmp_path / "run"
    r = run_cli(*TINY, "trainer.epochs=3", "lambda=beta", f"tuned={tuned}", f"hydra.run.dir={folder}", cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    said = f"mixlab: error: tuned={str(tuned)!r}: made under other settings (trainer.epochs: 2 -> 3)"
    assert r.stderr.startswith(said), r.stderr
    assert not folder.exists() and not (tmp_path / "outputs").exists()


def test_an_arm_under_a_mixer_gets_its_own_tuned_values_and_settings(tmp_path):
    """A study tunes beta@cutmix apart from beta (its own α, under its own mixer): before, a comparison run of
    beta@cutmix looked up the entry of beta, tuned under input mixing, and was refused as made under other
    settings (mixer.name: 'input' -> 'cutmix'); a run under a mixer with no entry of its own still takes the
    policy's, transferred."""
    out = tmp_path / "tuning"
    assert tune_main(["--lambdas", "beta,beta@cutmix", "--trials", "2", "--out", str(out), *TINY,
                      "trainer.epochs=1"]) == 0
    tuned = yaml.safe_load((out / "tuned.yaml").read_text())
    log = json.loads((out / "tuning.json").read_text())
    assert log["settings_by_arm"]["beta@cutmix"]["mixer.name"] == "cutmix"
    assert log["settings_by_arm"]["beta"]["mixer.name"] == "input"
    for mixer, arm in (("input", "beta"), ("cutmix", "beta@cutmix")):
        cfg = run_cfg(out / "tuned.yaml", "trainer.epochs=1", f"mixer={mixer}", "lam.alpha=3.0")
        record = apply_tuned(cfg)
        assert record["lambda"] == arm and record["transferred"] == []
        assert cfg.lam.alpha == pytest.approx(tuned[arm]["lam.alpha"])
    with pytest.raises(ConfigError, match=r"made under other settings \(.*mixer\.name: 'input' -> 'fmix'\)"):
        apply_tuned(run_cfg(out / "tuned.yaml", "trainer.epochs=1", "mixer=fmix"))
    record = apply_tuned(run_cfg(out / "tuned.yaml", "trainer.epochs=1", "mixer=fmix", "tuned_transfer=true"))
    assert record["lambda"] == "beta" and "mixer.name: 'input' -> 'fmix'" in record["transferred"]


@pytest.mark.parametrize("overrides, looked", [
    ((), "lambda=beta; "),
    (("mixer=cutmix",), "lambda=beta (nor beta@cutmix); "),
    (("mixer=cutmix", "pairing=nearest"), "lambda=beta (nor beta+nearest@cutmix, beta+nearest); "),
])
def test_a_tuned_file_without_the_arm_names_every_entry_looked_for(tmp_path, overrides, looked):
    (tmp_path / "tuned.yaml").write_text("schedule:\n  lam.alpha_start: 0.3\n")
    with pytest.raises(ConfigError) as e:
        apply_tuned(run_cfg(tmp_path / "tuned.yaml", *overrides))
    assert str(e.value) == (f"tuned={str(tmp_path / 'tuned.yaml')!r}: has no entry for {looked}"
                            "expected one of ['schedule']")
