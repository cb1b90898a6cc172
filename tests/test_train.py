"""Smoke tier: ``train(cfg)`` in-process on tiny real data, and ``python -m mixlab -m`` once."""
from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import mixlab.run.train as train_module
from mixlab.engine.lam import LAMBDAS
from mixlab.engine.mixing import MIXERS
from mixlab.engine.pairing import PAIRINGS
from mixlab.run.config import ConfigError
from mixlab.run.distributed import Dist
from mixlab.models import build_model
from mixlab.data import dataset_from_config
from mixlab.run.records import load_checkpoint
from mixlab.run.train import Diverged, train

from .test_config import compose_cfg

FAST = ("data=digits", "data.train_subset=256", "data.batch_size=32", "model=mlp", "model.hidden=[32]",
        "device=cpu", "trainer.epochs=2", "trainer.progress=false", "optim=sgd")
TEST_FIELDS = {"test_acc", "test_nll", "test_ece", "test_brier"}
EPOCH_FIELDS = {"epoch", "train_loss", "val_acc", "val_nll", "val_ece", "val_brier", "lam_mean", "lam_std",
                "lam_min", "lam_max", "lam_hist", "lam_strength", "lam_strength_std", "lam_strength_hist", "pair_same_class", "pair_distance", "lr", "seconds",
                "images_per_second"}
TIMING = {"seconds", "train_seconds", "images_per_second"}


def run(tmp_path: Path, *overrides: str, name: str = "run") -> tuple[float, list[dict], dict]:
    other_model = any(o.startswith("model=") for o in overrides)
    base = [o for o in FAST if not (other_model and o.startswith("model."))]  # mlp's options don't fit a cnn
    out = train(compose_cfg(*base, *overrides), tmp_path / name)
    rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return out, rows, json.loads((tmp_path / name / "summary.json").read_text())


def without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.mark.parametrize("lam", LAMBDAS.names())
def test_every_lambda_policy_trains_and_records(lam, tmp_path):
    acc, rows, summary = run(tmp_path, f"lambda={lam}")
    assert summary["status"] == "completed" and "error" not in summary
    assert len(rows) == 2 and EPOCH_FIELDS <= set(rows[0]) and EPOCH_FIELDS | TEST_FIELDS <= set(rows[1])
    assert not TEST_FIELDS & set(rows[0])  # the test set is read once, after the last epoch
    assert acc == rows[-1]["val_acc"] == summary["final_val"]["val_acc"] == summary["objective"]
    assert summary["objective_key"] == "val_acc" and summary["final"]["test_acc"] == rows[-1]["test_acc"]
    # above chance (0.1) after 16 SGD steps on 256 images; the strongest mixing (loss's first λ ≈ 0.3) learns slowest
    assert acc > 0.15 and rows[-1]["test_acc"] > 0.15
    lam_mean = rows[0]["lam_mean"]
    assert 0.0 <= rows[0]["lam_min"] <= lam_mean <= rows[0]["lam_max"] <= 1.0
    assert sum(rows[0]["lam_hist"]) == 256
    if lam == "none":
        assert lam_mean == 1.0 and rows[0]["lam_std"] == 0.0 and rows[0]["pair_distance"] == 0.0
    if lam == "constant":  # the sample keeps 0.8, its partner 0.2 (seed 002's setting)
        assert rows[0]["lam_mean"] == pytest.approx(0.8) and rows[0]["lam_std"] < 1e-6
        # 0.2 for every row but a row paired with itself (random pairing draws a few), which is not mixed
        self_pairs = (1 - rows[0]["lam_strength"] / 0.2) * 256
        assert self_pairs == pytest.approx(round(self_pairs), abs=1e-3) and 0 <= round(self_pairs) <= 32
    if lam == "automix":  # the sample's own weight 1 − ½(1 − ε)/(1 + ε) ∈ [½, 1]
        assert rows[0]["lam_min"] >= 0.5
    if lam == "loss":  # a uniform predictor's loss before any feedback: the first batch is mixed too
        assert rows[0]["lam_max"] < 1.0
    for key in ("status", "final", "median_last10_acc", "dataset", "epochs", "wall_seconds", "images_per_second",
                "config", "git", "versions"):
        assert key in summary, key
    fingerprint = summary["dataset"].pop("fingerprint")
    assert summary["dataset"] == {"name": "digits", "n_train": 256, "n_val": 300, "n_test": 360, "num_classes": 10,
                                  "task": "classification"}
    assert fingerprint == dataset_from_config(summary["config"]["data"], seed=summary["config"]["seed"]).summary()[
        "fingerprint"]  # what the run saw, rebuilt from its record
    assert summary["config"]["lam"]["name"] == lam and summary["versions"]["torch"] == torch.__version__


@pytest.mark.parametrize("pairing", PAIRINGS.names())
def test_every_pairing_trains(pairing, tmp_path):
    _, rows, summary = run(tmp_path, f"pairing={pairing}", "trainer.epochs=1")
    assert summary["status"] == "completed"
    same = rows[0]["pair_same_class"]
    if pairing == "same_class":
        # 1.0 but for the documented fallback of a class's only member in a batch: with 10 balanced classes
        # and batches of 32, 32·(9/10)^31 ≈ 1.2 such samples a batch, so ≈ 0.96 on average
        assert same > 0.9
    if pairing == "cross_class":
        assert same == 0.0


@pytest.mark.parametrize("mixer", MIXERS.names())
def test_every_mixer_trains_on_images(mixer, tmp_path):
    _, rows, summary = run(tmp_path, f"mixer={mixer}", "model=cnn", "model.width=8", "trainer.epochs=1")
    assert summary["status"] == "completed" and 0 < rows[0]["lam_mean"] < 1


def _spy_policy(monkeypatch, name: str) -> list[dict]:
    """Record what the λ policy ``name`` is called with and what it returns, step by step."""
    cls, calls = type(LAMBDAS.build(name)), []
    real = cls.__call__

    def spy(self, x, partner, **kw):
        lam = real(self, x, partner, **kw)
        calls.append({"x": x.detach().clone(), "partner": partner.clone(), "features": kw.get("features"), "lam": lam})
        return lam

    monkeypatch.setattr(cls, "__call__", spy)
    return calls


def _distance_lambda(z: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
    """lambda=distance's defaults in float64: e^(−d/d̄), d̄ the mean Euclidean distance over all pairs."""
    from scipy.spatial.distance import pdist

    z64 = z.flatten(1).double()
    d = (z64 - z64[partner]).norm(dim=1)
    return torch.exp(-d / float(pdist(z64.numpy()).mean()))


def test_manifold_with_feature_space_distance(tmp_path, monkeypatch):
    # The features must be the hidden state being mixed, and λ must be computed from them.
    calls = _spy_policy(monkeypatch, "distance")
    held = []
    real_mix = train_module.Mix.__call__
    monkeypatch.setattr(train_module.Mix, "__call__", lambda self, h, y, **kw: held.append(h.detach().clone())
                        or real_mix(self, h, y, **kw))
    _, rows, summary = run(tmp_path, "mixer=manifold", "lambda=distance", "lam.space=feature", "model=cnn",
                           "model.width=8", "trainer.epochs=1")
    assert summary["status"] == "completed" and len(calls) == len(held) == 8
    hidden = 0
    for c, h in zip(calls, held):
        torch.testing.assert_close(c["features"], h.flatten(1).float())
        torch.testing.assert_close(c["lam"].double(), _distance_lambda(h, c["partner"]), rtol=1e-4, atol=1e-6)
        hidden += h.shape[1:] != (1, 8, 8)
    assert hidden > 0  # some steps mixed a hidden state, not the input


def test_feature_space_lambda_with_input_mixer(tmp_path, monkeypatch):
    # trainer.features=forward: the features are the clean batch's penultimate embedding, not the input.
    calls = _spy_policy(monkeypatch, "distance")
    embedded = []
    real = train_module._clean_features
    monkeypatch.setattr(train_module, "_clean_features", lambda p, x: embedded.append(real(p, x)) or embedded[-1])
    _, rows, summary = run(tmp_path, "lambda=distance", "lam.space=feature", "trainer.epochs=1")
    assert summary["status"] == "completed" and len(calls) == len(embedded) == 8
    for c, e in zip(calls, embedded):
        assert c["features"] is not None and c["features"].shape == (32, 32)  # model.hidden=[32]
        torch.testing.assert_close(c["features"], e)
        torch.testing.assert_close(c["lam"].double(), _distance_lambda(e, c["partner"]), rtol=1e-4, atol=1e-6)
        assert not torch.allclose(c["lam"].double(), _distance_lambda(c["x"], c["partner"]), atol=1e-3)


@pytest.mark.parametrize("source", ["forward", "cache"])
def test_feature_cache_skips_the_extra_forward_after_epoch_1(source, tmp_path, monkeypatch):
    real, rows_seen = train_module._clean_features, []
    monkeypatch.setattr(train_module, "_clean_features", lambda p, x: rows_seen.append(x.shape[0]) or real(p, x))
    _, rows, summary = run(tmp_path, "lambda=distance", "lam.space=feature", f"trainer.features={source}")
    assert summary["status"] == "completed" and rows[1]["lam_std"] > 0
    if source == "forward":  # every step of both epochs: 2 × 256 clean rows
        assert sum(rows_seen) == 512 and "feature_cache_topped_up" not in rows[1]
    else:  # epoch 1 fills the bank; epoch 2 forwards only the rows no blend refreshed, and says how many
        topped_up = [r["feature_cache_topped_up"] for r in rows]
        assert sum(rows_seen) == 256 + round(256 * topped_up[1]) and topped_up[0] == 0.0 < 1.0
        assert topped_up[1] < 0.5  # most rows come from the training forward itself


def _bank(n: int = 6) -> tuple[torch.nn.Module, "train_module.FeatureBank", torch.Tensor]:
    model = build_model("mlp", in_shape=(5,), num_classes=3, hidden=[4])
    bank = train_module.FeatureBank(model, n, torch.device("cpu"), Dist())
    caught = model.embed(torch.randn(3, 5))
    model.head(caught)  # the hook keeps the input of the head of the latest forward
    assert torch.equal(bank.caught, caught.detach())
    return model, bank, caught.detach()


def test_feature_bank_write_keeps_the_rows_not_kept():
    _, bank, caught = _bank()
    bank.write(torch.tensor([4, 0, 2]), caught, torch.tensor([True, False, True]), epoch=3)
    expected = torch.zeros(6, 4)
    expected[4], expected[2] = caught[0], caught[2]
    assert torch.equal(bank.rows, expected)
    assert bank.epoch.tolist() == [0, 0, 3, 0, 3, 0]
    assert torch.equal(bank.read(torch.tensor([2, 4])), expected[[2, 4]])


def test_feature_bank_refresh_gives_each_blend_to_the_sample_that_dominates_it():
    # Blends at positions 0, 1, 2 of samples 10, 11, 12 (dataset indices 4, 0, 2):
    # blend 0 = 0.9·s0 + 0.1·s1, blend 1 = 0.3·s1 + 0.7·s2, blend 2 = 0.2·s2 + 0.8·s0.
    # s0 dominates blends 0 (0.9) and 2 (0.8): the heavier one wins; s1 dominates none; s2 blend 1.
    _, bank, caught = _bank()
    bank.refresh(torch.tensor([4, 0, 2]), torch.tensor([0.9, 0.3, 0.2]), torch.tensor([1, 2, 0]), epoch=2)
    expected = torch.zeros(6, 4)
    expected[4], expected[2] = caught[0], caught[1]
    assert torch.equal(bank.rows, expected)
    assert bank.epoch.tolist() == [0, 0, 2, 0, 2, 0]  # dataset row 0 (sample s1) waits for the top-up
    # own blends only (pairing_scope=global): λ >= ½ alone counts
    _, bank, caught = _bank()
    bank.refresh(torch.tensor([4, 0, 2]), torch.tensor([0.9, 0.3, 0.5]), None, epoch=2)
    assert bank.epoch.tolist() == [0, 0, 2, 0, 2, 0] and torch.equal(bank.rows[2], caught[2])


@pytest.mark.parametrize("lam, pairing", [("automix", "nearest"), ("constant", "nearest"), ("beta", "nearest"),
                                          ("distance", "nearest"), ("distance", "random"), ("sk", "random")])
def test_feature_cache_is_at_most_one_epoch_stale_for_every_row(lam, pairing, tmp_path, monkeypatch):
    # Staleness measured, not the write mechanics: snapshot the bank after every epoch; a row that
    # nothing rewrote during an epoch is bit-identical to the previous snapshot (the model moved).
    # Before the fix no row changed after epoch 1 under automix or constant.
    snapshots = []
    real_epoch = train_module.train_epoch

    def spy(p, epoch, *args, **kwargs):
        out = real_epoch(p, epoch, *args, **kwargs)
        snapshots.append(p.bank.rows.clone())
        assert bool((p.bank.epoch == epoch).all())
        return out

    monkeypatch.setattr(train_module, "train_epoch", spy)
    spaces = (["lam.space=feature"] if lam in ("distance", "sk") else []) + \
        (["pairing.space=feature"] if pairing == "nearest" else [])
    _, rows, summary = run(tmp_path, f"lambda={lam}", f"pairing={pairing}", *spaces, "trainer.features=cache",
                           "trainer.epochs=3")
    assert summary["status"] == "completed" and len(snapshots) == 3
    for e in (1, 2):
        unchanged = (snapshots[e] == snapshots[e - 1]).all(1)
        assert int(unchanged.sum()) == 0, f"epoch {e + 1}: {int(unchanged.sum())}/256 rows not refreshed"


def test_compiled_model_trains_evaluates_and_feeds_the_feature_cache(tmp_path):
    _, eager, _ = run(tmp_path, "lambda=distance", "lam.space=feature", "trainer.features=cache", name="eager")
    _, compiled, summary = run(tmp_path, "lambda=distance", "lam.space=feature", "trainer.features=cache",
                               "trainer.compile=true", name="compiled")
    assert summary["status"] == "completed"
    # Same computation, other kernels: equal up to float rounding, including epoch 2's cached features.
    for a, b in zip(eager, compiled):
        assert b["val_acc"] == pytest.approx(a["val_acc"], abs=0.02)
        assert b["lam_mean"] == pytest.approx(a["lam_mean"], rel=1e-3)


def test_a_gpu_index_the_machine_lacks_is_a_config_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert train_module.resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ConfigError, match=r"^device='cuda:2': this machine has 2 GPU\(s\); expected .*cuda:0\.\.1$"):
        train_module.resolve_device("cuda:2")


def test_regression_on_diabetes(tmp_path):
    mse, rows, summary = run(tmp_path, "data=diabetes", "data.train_subset=null", "lambda=constant")
    assert summary["status"] == "completed" and summary["dataset"]["task"] == "regression"
    assert rows[-1]["test_acc"] is None and mse == rows[-1]["val_mse"] == summary["objective"]
    # It must beat predicting the training mean, measured on the same test set (not the nominal 1.0).
    from mixlab.data import load_dataset
    ds = load_dataset("diabetes", root=None, train_subset=None, seed=0, device=torch.device("cpu"), download=False)
    mean_guess = float((ds.y_test - ds.y_train.mean()).square().mean())
    assert rows[-1]["test_mse"] < 0.8 * mean_guess, (rows[-1]["test_mse"], mean_guess)


def test_same_seed_same_metrics_and_other_seed_differs(tmp_path):
    _, a, _ = run(tmp_path, "lambda=distance", name="a")
    _, b, _ = run(tmp_path, "lambda=distance", name="b")
    _, c, _ = run(tmp_path, "lambda=distance", "seed=1", name="c")
    assert without_timing(a) == without_timing(b) != without_timing(c)


@pytest.mark.parametrize("extra", [("lambda=loss", "lam.per_sample=true", "model.dropout=0.2"),
                                   ("mixer=manifold", "model=cnn", "model.width=8", "lambda=beta"),
                                   ("lambda=distance", "lam.space=feature", "trainer.features=cache")])
def test_resume_after_interruption_gives_identical_metrics(extra, tmp_path, monkeypatch):
    overrides = (*extra, "trainer.epochs=3")
    _, uninterrupted, _ = run(tmp_path, *overrides, name="full")

    real_evaluate, calls = train_module.evaluate, []

    def dies_in_epoch_2(p, *args, **kw):
        calls.append(1)
        if len(calls) == 2:  # epoch 1's validation, then epoch 2's (the test set waits for epoch 3)
            raise KeyboardInterrupt  # a kill after epoch 2's training, before its checkpoint
        return real_evaluate(p, *args, **kw)

    monkeypatch.setattr(train_module, "evaluate", dies_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, *overrides, name="resumed")
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["epoch"] == 1
    monkeypatch.setattr(train_module, "evaluate", real_evaluate)
    _, resumed, summary = run(tmp_path, *overrides, name="resumed")
    assert summary["status"] == "completed"
    assert without_timing(resumed) == without_timing(uninterrupted)


def test_kill_between_record_and_checkpoint_loses_nothing(tmp_path, monkeypatch):
    overrides = ("lambda=loss", "lam.per_sample=true", "trainer.epochs=3")
    _, uninterrupted, _ = run(tmp_path, *overrides, name="full")
    real_save, saves = train_module.save_checkpoint, []

    def dies_before_epoch_2_checkpoint(path, state):
        saves.append(state["epoch"])
        if state["epoch"] == 2:
            raise KeyboardInterrupt  # epoch 2's row is written, its checkpoint is not
        real_save(path, state)

    monkeypatch.setattr(train_module, "save_checkpoint", dies_before_epoch_2_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, *overrides, name="killed")
    assert len((tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()) == 2
    monkeypatch.setattr(train_module, "save_checkpoint", real_save)
    _, resumed, summary = run(tmp_path, *overrides, name="killed")
    assert summary["status"] == "completed"
    assert without_timing(resumed) == without_timing(uninterrupted)


def test_rerun_of_a_completed_run_does_no_work(tmp_path, monkeypatch):
    _, first, _ = run(tmp_path)
    monkeypatch.setattr(train_module, "train_epoch", lambda *a, **k: pytest.fail("trained again"))
    _, again, summary = run(tmp_path)
    assert summary["status"] == "completed" and again == first


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def test_a_completed_run_folder_is_never_relabelled(tmp_path, monkeypatch):
    # Before: re-running in a completed run's folder with another lambda "resumed" from its last.pt
    # and was "completed" in seconds, labelled beta with the none run's numbers.
    run(tmp_path, "lambda=none")
    before = _files(tmp_path / "run")
    monkeypatch.setattr(train_module, "train_epoch", lambda *a, **k: pytest.fail("trained in a foreign folder"))
    with pytest.raises(ConfigError, match=r"run holds a run of another configuration \(summary.json: "
                                          r"lam.alpha: '\(absent\)' -> 1.0; lam.name: 'none' -> 'beta'"):
        run(tmp_path, "lambda=beta")
    assert _files(tmp_path / "run") == before  # nothing written


def test_a_run_refused_before_training_does_not_block_its_corrected_command(tmp_path):
    # Before: the refused run's summary.json (status failed, no epoch) kept the folder for its configuration.
    with pytest.raises(ConfigError, match="eval.corruptions=True: needs an image classifier's data"):
        run(tmp_path, "data=moons", "eval.corruptions=true")
    assert not (tmp_path / "run").exists()  # refused before the first step: nothing written, no folder
    _, rows, summary = run(tmp_path, "data=moons")
    assert summary["status"] == "completed" and summary["config"]["eval"]["corruptions"] is False and rows


def test_an_interrupted_run_folder_resumes_only_the_same_configuration(tmp_path, monkeypatch):
    run(tmp_path, "lambda=beta", "trainer.epochs=3")
    (tmp_path / "run" / "summary.json").unlink()  # as after a SIGKILL before the first summary was written
    before = _files(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"\(last.pt: seed: 0 -> 1\)"):
        run(tmp_path, "lambda=beta", "trainer.epochs=3", "seed=1")
    assert _files(tmp_path / "run") == before
    # the same configuration, with other volatile keys (progress, log interval, device), resumes
    monkeypatch.setattr(train_module, "train_epoch", lambda *a, **k: pytest.fail("trained again"))
    _, rows, summary = run(tmp_path, "lambda=beta", "trainer.epochs=3", "trainer.log_every=7", "trainer.progress=true")
    assert summary["status"] == "completed" and len(rows) == 3


def test_a_record_older_than_a_key_matches_that_keys_old_behaviour_only(tmp_path, monkeypatch):
    # trainer.val_every and eval.ood came after the first committed records: a sweep made before them is
    # extended (its completed runs skipped) by the same config, but not by one that sets them otherwise
    run(tmp_path, "lambda=beta")
    summary_file = tmp_path / "run" / "summary.json"
    old = json.loads(summary_file.read_text())
    old["config"]["trainer"].pop("val_every")
    old["config"].pop("eval")
    summary_file.write_text(json.dumps(old))
    monkeypatch.setattr(train_module, "train_epoch", lambda *a, **k: pytest.fail("trained again"))
    _, _, summary = run(tmp_path, "lambda=beta")
    assert summary["status"] == "completed"
    summary_file.write_text(json.dumps(old))
    with pytest.raises(ConfigError, match=r"trainer.val_every: 1 -> 0"):  # absent reads as the old behaviour, 1
        run(tmp_path, "lambda=beta", "trainer.val_every=0")


def test_a_checkpoint_without_its_configuration_is_not_resumed(tmp_path):
    run(tmp_path, "trainer.epochs=3")
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    del ckpt["config"]
    torch.save(ckpt, tmp_path / "run" / "last.pt")
    (tmp_path / "run" / "summary.json").unlink()
    with pytest.raises(ConfigError, match="last.pt records no configuration"):
        run(tmp_path, "trainer.epochs=3")


def test_cli_refuses_a_foreign_run_folder_in_one_line(tmp_path):
    base = [sys.executable, "-m", "mixlab", *FAST, "trainer.epochs=1", f"hydra.run.dir={tmp_path / 'r'}"]
    assert subprocess.run([*base, "lambda=none"], capture_output=True, text=True, timeout=300).returncode == 0
    r = subprocess.run([*base, "lambda=beta"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("mixlab: error:")]
    assert len(lines) == 1 and str(tmp_path / "r") in lines[0] and "lam.name: 'none' -> 'beta'" in lines[0]
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["config"]["lam"]["name"] == "none"


def test_divergence_is_recorded_and_the_last_good_checkpoint_kept(tmp_path, monkeypatch):
    _, good, _ = run(tmp_path, "trainer.log_every=1", name="good")
    real_step = train_module.loss_per_sample

    def nan_in_epoch_2_step_3(out, target, task, calls=[]):  # noqa: B006 - a call counter
        calls.append(1)
        loss = real_step(out, target, task)
        return loss * float("nan") if len(calls) == 8 + 3 else loss  # 8 steps an epoch

    monkeypatch.setattr(train_module, "loss_per_sample", nan_in_epoch_2_step_3)
    with pytest.raises(Diverged, match=r"^training loss is nan at epoch 2, step 3$"):
        run(tmp_path, "trainer.log_every=1")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged_at"] == {"epoch": 2, "step": 3}
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["epoch"] == 1  # the last good checkpoint, intact and loadable
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert without_timing(rows) == without_timing(good[:1])


def test_wandb_offline_writes_a_local_run(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    _, _, summary = run(tmp_path, "logger=wandb", "trainer.epochs=1", "model=cnn", "model.width=8")
    assert summary["status"] == "completed"
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))


def test_wandb_failure_never_fails_a_run(tmp_path, monkeypatch):
    import wandb

    def broken_init(**kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(wandb, "init", broken_init)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, _, summary = run(tmp_path, "logger=wandb", "logger.mode=online", "trainer.epochs=1")
    assert summary["status"] == "completed"
    assert any("W&B init failed" in str(w.message) for w in caught)


def test_cli_multirun_over_lambda_policies(tmp_path):
    policies = ["none", "beta", "distance", "loss"]
    cmd = [sys.executable, "-m", "mixlab", "-m", *FAST, "trainer.epochs=1", f"lambda={','.join(policies)}",
           f"hydra.sweep.dir={tmp_path}"]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    summaries = {json.loads(p.read_text())["config"]["lam"]["name"]: json.loads(p.read_text())
                 for p in tmp_path.glob("*/summary.json")}
    assert sorted(summaries) == sorted(policies)
    assert all(s["status"] == "completed" and math.isfinite(s["final"]["test_acc"]) for s in summaries.values())
    for name, s in summaries.items():  # each job's folder is named by its overrides, lambda=<its policy> among them
        assert f"lambda={name}" in _folder_of(tmp_path, s).split(",")


def _folder_of(sweep: Path, summary: dict) -> str:
    return next(p.parent.name for p in sweep.glob("*/summary.json") if json.loads(p.read_text()) == summary)


def test_sigterm_records_interrupted_and_rerun_resumes_to_identical_metrics(tmp_path):
    overrides = [*FAST, "trainer.epochs=40", "data.train_subset=128"]
    cmd = [sys.executable, "-m", "mixlab", *overrides, f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143 and "interrupted: SIGTERM" in err and "Traceback" not in err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "SIGTERM" in summary["error"]
    done = load_checkpoint(tmp_path / "run" / "last.pt")["epoch"]
    assert 2 <= done < 40 and len(metrics.read_text().splitlines()) == done

    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and f"resuming after epoch {done}" in r.stderr
    _, uninterrupted, _ = run(tmp_path, "trainer.epochs=40", "data.train_subset=128", name="full")
    resumed = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert without_timing(resumed) == without_timing(uninterrupted)


# --------------------------------------------------------------------------- no host syncs in a step

STEP_CASES = ([f"lambda={n}" for n in LAMBDAS.names()] +
              [f"pairing={n}" for n in PAIRINGS.names() if n != "optimal"] +
              ["pairing=optimal pairing.solver=sinkhorn", "lambda=loss lam.per_sample=true",
               "lambda=distance lam.space=feature trainer.features=cache", "mixer=cutmix model=cnn model.width=8"])


@pytest.mark.parametrize("case", STEP_CASES)
def test_training_steps_never_wait_for_the_device(case, monkeypatch):
    """Every step of an epoch runs without a host sync; the first one is the read at the end of the
    epoch (``log_every`` larger than the epoch). The exact ``optimal`` solver syncs by design."""
    from .test_mixing import find_syncs

    overrides = [o for o in FAST if not ("model=cnn" in case and o.startswith("model."))] + case.split()
    p = train_module.build(compose_cfg(*overrides))
    steps = len(p.batches)
    train_module.train_epoch(p, 1, 2, log_every=10**9, bar=None)  # epoch 1 fills a feature cache
    syncs = find_syncs(lambda: train_module.train_epoch(p, 2, 2, log_every=10**9, bar=None), monkeypatch)
    assert syncs == ["Tensor.tolist()"]  # the end-of-epoch read, raised by the detector after the last step
    assert p.scheduler.last_epoch == 2 * steps


def test_progress_bars_only_on_a_terminal_and_epoch_lines_on_stdout(tmp_path):
    import os
    import pty

    cmd = [sys.executable, "-m", "mixlab", *[o for o in FAST if o != "trainer.progress=false"], "trainer.progress=true",
           "trainer.log_every=1"]
    # stderr redirected (a file, a pipe, SLURM's log): no bar, no cursor escapes; epoch lines on stdout
    r = subprocess.run([*cmd, f"hydra.run.dir={tmp_path / 'piped'}"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "\r" not in r.stderr and "\x1b[" not in r.stderr and "it/s" not in r.stderr
    assert [line.split()[1] for line in r.stdout.splitlines() if line.startswith("epoch ")] == ["1/2", "2/2"]
    log = tmp_path / "piped" / "mixlab.log"  # created only when something is logged
    assert not log.exists() or log.stat().st_size < 4000
    # stderr a terminal: the bars are drawn there, the epoch lines still go to stdout
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty is 0 columns wide
    p = subprocess.Popen([*cmd, f"hydra.run.dir={tmp_path / 'tty'}"], stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    drawn = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        drawn += chunk
    out, _ = p.communicate(timeout=300)
    os.close(master)
    assert p.returncode == 0 and b"epochs:" in drawn and b"it/s]" in drawn
    assert sum(line.startswith("epoch ") for line in out.splitlines()) == 2


def test_test_every_gives_test_curves_and_val_size_zero_falls_back_to_the_test_objective(tmp_path):
    _, rows, summary = run(tmp_path, "trainer.test_every=1", "trainer.epochs=3", name="curves")
    assert all(r["test_acc"] is not None and r["val_acc"] is not None for r in rows)
    assert summary["median_last10_acc"] is None  # three test evaluations: no "median of the last 10"
    assert summary["objective"] == rows[-1]["val_acc"] and summary["objective_key"] == "val_acc"
    _, rows, summary = run(tmp_path, "data.val_size=0", name="noval")
    assert "val_acc" not in rows[-1] and summary["dataset"]["n_val"] == 0 and summary["final_val"] == {}
    assert summary["objective"] == rows[-1]["test_acc"] and summary["objective_key"] == "test_acc"


@pytest.mark.parametrize("lam", ["beta", "loss"])  # loss: λ read from the training losses, which must not move
def test_val_every_reads_validation_less_often_and_leaves_training_as_it_was(lam, tmp_path):
    _, every, _ = run(tmp_path, f"lambda={lam}", "trainer.epochs=5", name="every")
    _, sparse, summary = run(tmp_path, f"lambda={lam}", "trainer.epochs=5", "trainer.val_every=2", name="sparse")
    assert [r["epoch"] for r in sparse if "val_acc" in r] == [2, 4, 5]  # every 2nd epoch and after the last
    _, last, last_summary = run(tmp_path, f"lambda={lam}", "trainer.epochs=5", "trainer.val_every=0", name="last")
    assert [r["epoch"] for r in last if "val_acc" in r] == [5]
    # evaluation draws no random numbers and updates nothing: the same training, row for row
    train_keys = ("train_loss", "lam_mean", "lam_std", "lam_strength", "pair_distance")
    for rows in (sparse, last):
        assert [[r[k] for k in train_keys] for r in rows] == [[r[k] for k in train_keys] for r in every]
        assert {k: v for k, v in rows[-1].items() if k not in TIMING} == \
            {k: v for k, v in every[-1].items() if k not in TIMING}
    assert last_summary["objective"] == every[-1]["val_acc"] and last_summary["objective_key"] == "val_acc"
    assert summary["final_val"] == last_summary["final_val"]


@pytest.mark.parametrize("extra", [(), ("lam.space=feature",), ("mixer=manifold", "model=cnn", "model.width=8")])
def test_lam_against_distance_is_recorded_as_the_policy_saw_it(extra, tmp_path):
    # Before: 80 pairs of the 16-image leftover batch against the raw input distance, under an axis that
    # said "normalised". Now: the first (full) batch, the distance in the policy's own space and metric
    # over its batch statistic, so that for lambda=distance (exp map, τ = 1) λ = e^(−d) pair by pair.
    _, _, summary = run(tmp_path, "lambda=distance", "data.train_subset=240", *extra)  # 240 = 7 × 32 + 16
    pairs = summary["lam_vs_distance"]
    assert pairs["batch"] == 32 and len(pairs["distance"]) == 32 and pairs["normalize"] == "mean"
    d, lam = torch.tensor(pairs["distance"]), torch.tensor(pairs["lam"])
    torch.testing.assert_close(lam, torch.exp(-d), rtol=1e-5, atol=1e-6)
    assert 0.3 < float(d.mean()) < 1.7  # normalised: a typical pair near 1, not the raw scale


def test_calibration_after_temperature_scaling_fits_t_on_validation_and_scales_the_test_logits(tmp_path):
    from scipy.optimize import minimize_scalar
    from scipy.special import logsumexp

    _, rows, summary = run(tmp_path, "lambda=beta")
    assert "temperature" not in rows[0]  # epoch 1 has no test evaluation to calibrate
    final = summary["final"]
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    p = train_module.build(compose_cfg(*FAST, "lambda=beta"))
    p.model.load_state_dict(ckpt["model"])
    p.model.eval()
    with torch.no_grad():
        z_val, z_test = (p.eval_forward(x).double().numpy() for x in (p.ds.x_val, p.ds.x_test))
    y_val, y_test = p.ds.y_val.numpy(), p.ds.y_test.numpy()

    def nll(z, y, t):
        return float(np.mean(logsumexp(z / t, axis=1) - z[np.arange(len(y)), y] / t))

    t_val = math.exp(minimize_scalar(lambda lt: nll(z_val, y_val, math.exp(lt)), bounds=(-4.6, 4.6),
                                     method="bounded", options={"xatol": 1e-10}).x)
    t_test = math.exp(minimize_scalar(lambda lt: nll(z_test, y_test, math.exp(lt)), bounds=(-4.6, 4.6),
                                      method="bounded", options={"xatol": 1e-10}).x)
    assert final["temperature"] == pytest.approx(t_val, rel=1e-4) != pytest.approx(t_test, rel=1e-3)
    assert final["test_nll_ts"] == pytest.approx(nll(z_test, y_test, t_val), abs=1e-4)
    assert final["test_nll"] == pytest.approx(nll(z_test, y_test, 1.0), abs=1e-4)
    assert sum(summary["reliability_ts"]["count"]) == len(y_test)
