"""Issue 16 in whole runs: data=rcf_mnist and C-Mixup's label-kernel pairing; eval.ood."""
from __future__ import annotations

import json
import re

import pytest
import torch

from mixlab.data import load_dataset
from mixlab.data.images import RCF_ANGLES, rcf_mnist
from mixlab.run.train import train

from .fashion_items import write_items
from .test_config import compose_cfg


@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory):
    return write_items(tmp_path_factory.mktemp("fashion"), n_train=240, n_test=60)


def test_rcf_mnist_rotates_each_image_by_the_angle_its_target_says(fashion_root):
    from mixlab.data.images import fashion_mnist

    x, _, xt, _, _, _ = fashion_mnist(root=str(fashion_root), download=False)
    xr, y, xtr, yt, num_classes, task = rcf_mnist(root=str(fashion_root), download=False)
    assert task == "regression" and num_classes == 1 and y.shape == (240,) and yt.shape == (60,)
    steps = y * RCF_ANGLES
    assert torch.equal(steps, steps.round()) and 0 <= float(y.min()) and float(y.max()) < 1
    assert len(set(steps.tolist())) > 30  # drawn per image, not one angle for all
    for k in range(4):  # a quarter turn (counter-clockwise) is exact: the same pixels, moved
        rows = (steps == k * RCF_ANGLES // 4).nonzero().squeeze(1)
        for i in rows.tolist():
            torch.testing.assert_close(xr[i], torch.rot90(x[i], k, dims=(1, 2)), atol=1e-5, rtol=0)
    # other angles keep the ink's total roughly (bilinear, corners cut where the item reaches them)
    ink = x.flatten(1).sum(1)
    assert float(((xr.flatten(1).sum(1) - ink).abs() / ink).median()) < 0.05


@pytest.mark.parametrize("lam", [("lambda=distance",), ("lambda=loss", "lam.per_sample=true")])
def test_rcf_mnist_trains_with_the_label_kernel_and_a_dynamic_lambda(fashion_root, lam, tmp_path):
    cfg = compose_cfg("data=rcf_mnist", f"data.root={fashion_root}", "data.val_size=40", "data.batch_size=32",
                      "model=cnn", "model.width=8", "pairing=label_kernel", "pairing.sigma=0.5", *lam,
                      "trainer.epochs=2", "trainer.progress=false", "device=cpu")
    out = train(cfg, tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["objective_key"] == "val_mse" and out > 0
    assert {"test_mse", "test_mae"} <= set(summary["final"]) and summary["dataset"]["task"] == "regression"
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert 0 < rows[-1]["lam_strength"] <= 0.5  # the dynamic λ mixed (loss: from the MSE itself, no entropy)


def test_eval_ood_records_auroc_against_digits_and_refuses_text(fashion_root, tmp_path):
    from mixlab.data.ood import ood_inputs
    from mixlab.run.config import ConfigError
    from mixlab.tasks.metrics import ood_metrics

    cfg = compose_cfg("data=fashion_mnist", f"data.root={fashion_root}", "data.val_size=40", "data.download=false",
                      "model=cnn", "model.width=8", "eval.ood=digits", "trainer.epochs=1", "trainer.progress=false",
                      "device=cpu")
    train(cfg, tmp_path / "run")
    final = json.loads((tmp_path / "run" / "summary.json").read_text())["final"]
    # recomputed from the checkpoint: the test set's and the digits' logits through the saved model
    from mixlab.models import build_model
    from mixlab.run.records import load_checkpoint

    ds = load_dataset("fashion_mnist", root=str(fashion_root), val_size=40, download=False)
    model = build_model("cnn", in_shape=ds.input_shape, num_classes=10, width=8)
    model.load_state_dict(load_checkpoint(tmp_path / "run" / "last.pt")["model"])
    model.eval()
    with torch.no_grad():
        want = ood_metrics(model(ds.x_test), model(ood_inputs("digits", ds)))
    assert final["test_ood_auroc"] == pytest.approx(want["auroc"], abs=1e-5)
    assert final["test_ood_fpr95"] == pytest.approx(want["fpr95"], abs=1e-5)
    with pytest.raises(ConfigError, match=r"eval.ood='digits': needs an image classifier's data, but data=austen is text"):
        from .test_config import text_base
        train(compose_cfg(*text_base(tmp_path), "model=textcnn", "eval.ood=digits"), tmp_path / "text")
    # one check for both image-only evaluations; a tabular classifier is named as what it is not
    for data, what in (("moons", "not images"), ("diabetes", "regression")):
        for setting, expected in (("eval.corruptions=true", "eval.corruptions=True"), ("eval.ood=digits", "eval.ood='digits'")):
            with pytest.raises(ConfigError, match=re.escape(f"{expected}: needs an image classifier's data, but "
                                                            f"data={data} is {what}; expected ")):
                train(compose_cfg(f"data={data}", "model=mlp", "trainer.epochs=1", setting), tmp_path / data / setting)


def test_eval_corruptions_records_every_corruption_and_severity(fashion_root, tmp_path):
    from mixlab.data.corruptions import CORRUPTIONS, corrupt
    from mixlab.models import build_model
    from mixlab.run.records import load_checkpoint
    from mixlab.tasks.metrics import classification_metrics

    cfg = compose_cfg("data=fashion_mnist", f"data.root={fashion_root}", "data.val_size=40", "data.download=false",
                      "model=cnn", "model.width=8", "eval.corruptions=true", "eval.corruption_samples=24",
                      "trainer.epochs=1", "trainer.progress=false", "device=cpu")
    train(cfg, tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    table = summary["corruptions"]
    assert summary["corruption_form"] == "mnist_c"  # eval.corruption_form=auto on grey images
    assert list(table) == list(CORRUPTIONS) and all([r["severity"] for r in v] == [1, 2, 3, 4, 5] for v in table.values())
    accs = [r["acc"] for v in table.values() for r in v]
    assert summary["final"]["test_corruption_acc"] == pytest.approx(sum(accs) / 60)
    assert list((fashion_root / "corruptions" / "fashion_mnist").glob("*.pt"))  # cached under data.root
    # recomputed: the saved model on the corruption made anew from the clean test images
    ds = load_dataset("fashion_mnist", root=str(fashion_root), val_size=40, download=False)
    model = build_model("cnn", in_shape=ds.input_shape, num_classes=10, width=8)
    model.load_state_dict(load_checkpoint(tmp_path / "run" / "last.pt")["model"])
    model.eval()
    clean = (ds.x_test[:24] * ds.std[0] + ds.mean[0]).clamp(0, 1)
    x = ((corrupt(clean, "motion_blur", 4) * 255).round() / 255 - ds.mean[0]) / ds.std[0]
    with torch.no_grad():
        m = classification_metrics(model(x), ds.y_test[:24])
    assert table["motion_blur"][3]["acc"] == pytest.approx(m["acc"]) and table["motion_blur"][3]["nll"] == pytest.approx(
        m["nll"], rel=1e-4)
