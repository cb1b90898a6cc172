"""Detection (issue 15): box mixing, FCOS's box-weighted loss against torchvision and float64 references,
COCO AP against the published 101-point definition, the scene data set and whole runs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models.detection.fcos import FCOSHead

from mixlab.data import load_dataset
from mixlab.data.base import DataFileError, DataNotFoundError
from mixlab.data.scenes import scene_splits
from mixlab.engine.mixing import Mix, mix_box_targets
from mixlab.models import build_model
from mixlab.models.detection import LOSSES
from mixlab.run.config import ConfigError
from mixlab.run.train import train
from mixlab.study.report import write_report
from mixlab.tasks.metrics import detection_metrics

from .test_config import compose_cfg
from .test_report import md_table, numbers
from .coco_files import write_coco
from .fashion_items import items, write_items

# ----------------------------------------------------------------------------- box targets


def test_a_blend_keeps_both_images_boxes_weighted_by_their_shares():
    y = torch.tensor([[[1, 2, 3, 4, 0], [-1, -1, -1, -1, -1]], [[5, 6, 7, 8, 3], [9, 9, 12, 12, 4]]]).float()
    out = mix_box_targets(y, torch.tensor([1, 0]), torch.tensor([0.7, 1.0]))
    assert out.shape == (2, 4, 6)
    torch.testing.assert_close(out[0], torch.tensor([[1, 2, 3, 4, 0, 0.7], [-1, -1, -1, -1, -1, 0],
                                                     [5, 6, 7, 8, 3, 0.3], [9, 9, 12, 12, 4, 0.3]]))
    assert out[1, :2, 5].tolist() == [1.0, 1.0] and out[1, 2, 5] == 0.0  # λ = 1: the partner's boxes weigh 0
    with pytest.raises(ValueError, match=r"box targets should be \(B, K, 5\) float"):
        mix_box_targets(y[..., :4], torch.tensor([1, 0]), torch.tensor([0.7, 1.0]))


def test_mix_with_boxes_mixes_images_and_boxes_with_the_same_lambda():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(6, 1, 8, 8, generator=g), torch.tensor([[[0, 0, 4, 4, 1]]]).float().repeat(6, 1, 1)
    mix = Mix(lam="beta", boxes=True, generator=g)
    x_mix, y_mix = mix(x, y)
    lam, partner = mix.last.lam, mix.last.partner
    torch.testing.assert_close(x_mix, lam.view(-1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1)) * x[partner])
    torch.testing.assert_close(y_mix[:, 0, 5], lam)
    torch.testing.assert_close(y_mix[:, 1, 5], 1 - lam)
    assert mix.target_entropy() is None  # no class distribution to take the entropy of
    with pytest.raises(ValueError, match="boxes=True"):
        Mix(boxes=True, num_classes=10)


# ----------------------------------------------------------------------------- the weighted FCOS loss


def _inputs(det, x: torch.Tensor, y: torch.Tensor) -> tuple:
    """What FCOS hands its head's loss: targets, head outputs, anchors, matched indices (captured)."""
    seen = {}
    real = det.fcos.head.compute_loss

    def capture(targets, head_outputs, anchors, matched_idxs):
        seen.update(targets=targets, head_outputs=head_outputs, anchors=anchors, matched=matched_idxs)
        return real(targets, head_outputs, anchors, matched_idxs)

    det.fcos.head.compute_loss = capture
    try:
        out = det(x, y)
    finally:
        del det.fcos.head.compute_loss
    return out, seen


def _scenes(seed: int = 0, b: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 1, 64, 64, generator=g)
    y = torch.full((b, 3, 5), -1.0)
    for i in range(b):
        for k in range(1 + i % 3):
            x0, y0 = torch.randint(0, 30, (2,), generator=g).tolist()
            w, h = torch.randint(12, 34, (2,), generator=g).tolist()
            y[i, k] = torch.tensor([x0, y0, x0 + w, y0 + h, (i + k) % 10], dtype=torch.float)
    return x, y


def test_with_unit_weights_the_per_image_losses_average_to_torchvisions_batch_loss():
    torch.manual_seed(0)
    det = build_model("fcos", in_shape=(1, 64, 64), num_classes=10).train()
    x, y = _scenes()
    out, seen = _inputs(det, x, y)
    theirs = FCOSHead.compute_loss(det.fcos.head, seen["targets"], seen["head_outputs"], seen["anchors"], seen["matched"])
    assert out.shape == (4, 3)
    for j, k in enumerate(LOSSES):
        torch.testing.assert_close(out[:, j].mean(), theirs[k], rtol=1e-5, atol=1e-6)
    assert sum(int((m >= 0).sum()) for m in seen["matched"]) > 10  # the boxes did claim locations


def _reference(seen: dict, b: int) -> torch.Tensor:
    """Per image: Σ over locations of (its box's weight, 1 for background) × (focal loss + GIoU loss +
    centre-ness BCE), in float64, from the published formulas; × B / (foreground locations in the batch)."""
    ho = {k: v.double() for k, v in seen["head_outputs"].items()}
    per_image, fg_total = [], 0
    for i, (t, m) in enumerate(zip(seen["targets"], seen["matched"], strict=True)):
        fg = m >= 0
        fg_total += int(fg.sum())
        w = torch.where(fg, t["weights"].double()[m.clamp(min=0)], torch.ones_like(m, dtype=torch.float64))
        logits = ho["cls_logits"][i]
        onehot = torch.zeros_like(logits)
        onehot[fg, t["labels"][m[fg]]] = 1.0
        p = logits.sigmoid()
        ce = torch.nn.functional.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
        p_t = p * onehot + (1 - p) * (1 - onehot)
        focal = (0.25 * onehot + 0.75 * (1 - onehot)) * ce * (1 - p_t) ** 2  # Lin et al. 2017, α = .25, γ = 2
        anchors = seen["anchors"][i].double()
        centre, size = (anchors[:, :2] + anchors[:, 2:]) / 2, anchors[:, 2:] - anchors[:, :2]
        reg = ho["bbox_regression"][i]  # FCOS's (normalised) l, t, r, b distances, in anchor sizes
        pred = torch.cat([centre - reg[:, :2] * size, centre + reg[:, 2:] * size], 1)
        gt = t["boxes"].double()[m.clamp(min=0)]
        lt, rb = torch.maximum(pred[:, :2], gt[:, :2]), torch.minimum(pred[:, 2:], gt[:, 2:])
        inter = (rb - lt).clamp(min=0).prod(1)
        union = (pred[:, 2:] - pred[:, :2]).prod(1) + (gt[:, 2:] - gt[:, :2]).prod(1) - inter
        hull = (torch.maximum(pred[:, 2:], gt[:, 2:]) - torch.minimum(pred[:, :2], gt[:, :2])).prod(1)
        giou = inter / union - (hull - union) / hull  # Rezatofighi et al. 2019
        ltrb = torch.cat([centre - gt[:, :2], gt[:, 2:] - centre], 1)
        ctr = torch.sqrt((torch.minimum(ltrb[:, 0], ltrb[:, 2]) / torch.maximum(ltrb[:, 0], ltrb[:, 2]))
                         * (torch.minimum(ltrb[:, 1], ltrb[:, 3]) / torch.maximum(ltrb[:, 1], ltrb[:, 3])))
        bce = torch.nn.functional.binary_cross_entropy_with_logits(ho["bbox_ctrness"][i, :, 0], ctr, reduction="none")
        per_image.append(torch.stack([(w * focal.sum(1)).sum(), (w * (1 - giou))[fg].sum(), (w * bce)[fg].sum()]))
    return torch.stack(per_image) * b / max(1, fg_total)


def test_the_weighted_loss_equals_a_float64_per_location_reference():
    torch.manual_seed(1)
    det = build_model("fcos", in_shape=(1, 64, 64), num_classes=10).train()
    x, y = _scenes(seed=1)
    lam, partner = torch.tensor([0.8, 0.35, 0.6, 0.5]), torch.tensor([1, 2, 3, 0])
    y_mix = mix_box_targets(y, partner, lam)
    out, seen = _inputs(det, lam.view(-1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1)) * x[partner], y_mix)
    assert {round(v, 4) for t in seen["targets"] for v in t["weights"].tolist()} >= {0.8, 0.2, 0.35, 0.65}
    torch.testing.assert_close(out.double(), _reference(seen, 4), rtol=2e-4, atol=1e-5)
    # and the weights matter: all-ones weights give another loss
    ones = torch.cat([y_mix[..., :5], (y_mix[..., 4:5] >= 0).float()], 2)
    assert not torch.allclose(det(x, ones), out)


def test_boxes_of_weight_zero_are_not_targets():
    det = build_model("fcos", in_shape=(1, 64, 64), num_classes=10)
    y = torch.tensor([[[1, 2, 30, 40, 3, 1.0], [5, 5, 20, 20, 4, 0.0], [-1, -1, -1, -1, -1, 0.0]]])
    (t,) = det.targets(y)
    assert t["boxes"].tolist() == [[1, 2, 30, 40]] and t["labels"].tolist() == [3] and t["weights"].tolist() == [1.0]


def test_fcos_options_are_one_line():
    with pytest.raises(ValueError, match=r"backbone='vgg': expected one of \['resnet18', 'small'\]"):
        build_model("fcos", in_shape=(1, 64, 64), num_classes=10, backbone="vgg")
    with pytest.raises(ValueError, match=r"channels=48: expected a multiple of 32"):
        build_model("fcos", in_shape=(1, 64, 64), num_classes=10, channels=48)
    with pytest.raises(ValueError, match="backbone=small has no pretrained weights"):
        build_model("fcos", in_shape=(1, 64, 64), num_classes=10, pretrained=True)
    det = build_model("fcos", in_shape=(1, 64, 64), num_classes=3, backbone="resnet18")
    assert det.embed(torch.randn(2, 1, 64, 64)).shape == (2, 256)


# ----------------------------------------------------------------------------- COCO AP


def test_ap_follows_cocos_101_point_definition():
    boxes = torch.tensor([[10.0, 10, 30, 30], [50, 50, 70, 80]])
    y = torch.tensor([[[10, 10, 30, 30, 0], [50, 50, 70, 80, 0]]]).float()
    perfect = [{"boxes": boxes, "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([0, 0])}]
    assert detection_metrics(perfect, y)["map"] == pytest.approx(1.0)
    # one exact hit (score .9) above a false positive (.8), the second box missed: recall reaches ½ at
    # precision 1, so 51 of COCO's 101 recall points (0, .01, ..., .5) have precision 1: AP = 51/101
    half = [{"boxes": torch.tensor([[10.0, 10, 30, 30], [80, 0, 95, 10]]), "scores": torch.tensor([0.9, 0.8]),
             "labels": torch.tensor([0, 0])}]
    m = detection_metrics(half, y)
    assert m["map"] == pytest.approx(51 / 101, abs=1e-6) and m["map50"] == pytest.approx(51 / 101, abs=1e-6)
    assert m["map_per_class"] == pytest.approx([51 / 101], abs=1e-6)


# ----------------------------------------------------------------------------- scenes


def test_scene_splits_keep_validation_and_test_items_out_of_training():
    (xtr, ytr), (xte, yte) = items(200, 0), items(50, 1)
    kw = dict(train_scenes=40, val_scenes=20, test_scenes=20, held_out_objects=60, split_seed=3, canvas=64)
    s = scene_splits(xtr, ytr, xte, yte, **kw)
    used = {k: set(v.sources[v.sources >= 0].tolist()) for k, v in s.items()}
    assert used["train"] and used["val"] and not used["train"] & used["val"]
    held = set(torch.randperm(200, generator=torch.Generator().manual_seed(3))[:60].tolist())
    assert used["val"] <= held and not used["train"] & held
    assert used["test"] <= set(range(50))
    for v in s.values():  # each box is its item's ink, labels the item's class
        ok = v.labels >= 0
        assert torch.equal(v.labels[ok], (v.sources[ok] % 10))
        assert ((v.boxes[ok][:, 2:] - v.boxes[ok][:, :2]) > 0).all() and (v.boxes[ok] <= 64).all()
    again = scene_splits(xtr, ytr, xte, yte, **kw)
    assert all(torch.equal(s[k].images, again[k].images) for k in s)  # deterministic from split_seed


@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory) -> Path:
    return write_items(tmp_path_factory.mktemp("fashion"))


SCENES = ("data=fashion_scenes", "data.canvas=64", "data.train_scenes=48", "data.test_scenes=16", "data.val_size=16",
          "data.held_out_objects=100", "data.batch_size=16", "model=fcos", "model.width=8", "model.channels=32",
          "model.head_convs=1", "trainer.epochs=2", "trainer.progress=false", "device=cpu")


def test_the_scene_data_set_from_fashion_mnist_files(fashion_root):
    ds = load_dataset("fashion_scenes", root=str(fashion_root), val_size=16, canvas=64, train_scenes=48,
                      test_scenes=16, held_out_objects=100, train_subset=32)
    assert ds.task == "detection" and ds.num_classes == 10 and ds.input_shape == (1, 64, 64)
    assert (ds.n_train, ds.n_val, ds.n_test) == (32, 16, 16) and ds.y_train.shape == (32, 5, 5)
    assert abs(float(ds.x_train.mean())) < 1e-4 and abs(float(ds.x_train.std()) - 1) < 1e-3
    with pytest.raises(ValueError, match=r"data.canvas=32: expected an integer in 64..1024"):
        load_dataset("fashion_scenes", root=str(fashion_root), canvas=32)


@pytest.mark.parametrize("extra", [("lambda=beta",), ("lambda=distance", "lam.space=feature"),
                                   ("lambda=loss", "lam.per_sample=true")])
def test_detection_runs_train_evaluate_and_record_map(fashion_root, extra, tmp_path):
    out = train(compose_cfg(*SCENES, f"data.root={fashion_root}", *extra), tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert summary["status"] == "completed" and summary["objective_key"] == "val_map"
    assert out == rows[-1]["val_map"] and 0 <= out <= 1
    assert {"test_map", "test_map50", "test_map75", "test_map_per_class"} <= set(summary["final"])
    assert rows[1]["train_loss"] < rows[0]["train_loss"] and 0 < rows[0]["lam_strength"] <= 0.5
    # the blends are drawn with their boxes: each image's own (red) and its partner's (blue); the scenes are grey
    from PIL import Image

    from mixlab.run.train import BOX_COLOURS

    rgb = np.asarray(Image.open(tmp_path / "run" / "mixed_examples.png").convert("RGB")).reshape(-1, 3)
    for colour in BOX_COLOURS:
        want = [int(colour[i:i + 2], 16) for i in (1, 3, 5)]
        assert (rgb == want).all(1).sum() > 20, colour


@pytest.mark.parametrize("overrides,message", [
    (("mixer=cutmix",), "mixer.name='cutmix': not supported for detection; expected input"),
    (("data.hflip=true",), "data.hflip=True: not supported for detection; expected false"),
    (("model=cnn",), "model=cnn: not a detector, but data=fashion_scenes has boxes; expected model=fcos"),
])
def test_detection_misconfigurations_are_one_line(fashion_root, overrides, message, tmp_path):
    cfg = compose_cfg(*[o for o in SCENES if not (o.startswith("model.") and "model=cnn" in overrides)],
                      f"data.root={fashion_root}", *overrides)
    with pytest.raises(ConfigError) as e:
        train(cfg, tmp_path / "run")
    assert str(e.value) == message or message in str(e.value)


def test_a_detector_on_class_labels_is_one_line(tmp_path):
    cfg = compose_cfg("data=digits", "model=fcos", "device=cpu", "trainer.epochs=1")
    with pytest.raises(ConfigError, match="model=fcos: a detector, but data=digits is classification"):
        train(cfg, tmp_path / "run")


def test_the_report_compares_detection_runs_on_map(fashion_root, tmp_path):
    maps = {}
    for lam in ("none", "beta"):
        for seed in (0, 1):
            d = tmp_path / "sweep" / f"{lam}-{seed}"
            train(compose_cfg(*SCENES, f"data.root={fashion_root}", f"lambda={lam}", f"seed={seed}",
                              "trainer.epochs=1"), d)
            maps.setdefault(lam, []).append(json.loads((d / "summary.json").read_text())["final"]["test_map"])
    md, _ = write_report(tmp_path / "sweep", out=tmp_path / "out")
    text = md.read_text()
    rows = {r["configuration"]: r for r in md_table(text)}
    for lam, values in maps.items():
        assert numbers(rows[f"lam={lam}"]["test mAP@[.5:.95] mean ± std"])[0] == pytest.approx(
            sum(values) / 2, abs=6e-5)
    assert "test mAP@.5" in text and "ECE" not in text.split("## Figures")[0]


# ----------------------------------------------------------------------------- COCO format


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    return write_coco(tmp_path_factory.mktemp("coco"))


def test_coco_images_go_on_one_canvas_with_their_boxes_scaled_and_categories_in_id_order(coco_root):
    ds = load_dataset("coco", root=str(coco_root), val_size=0, canvas=64)
    ann = json.loads((coco_root / "annotations" / "instances_train.json").read_text())
    assert ds.classes == ("three", "seven") and ds.num_classes == 2 and ds.input_shape == (3, 64, 64)
    sizes = {im["id"]: (im["height"], im["width"]) for im in ann["images"]}
    for i, im in enumerate(ann["images"]):
        scale = 64 / max(sizes[im["id"]])
        want = sorted([a["bbox"][0] * scale, a["bbox"][1] * scale, (a["bbox"][0] + a["bbox"][2]) * scale,
                       (a["bbox"][1] + a["bbox"][3]) * scale, {3: 0, 7: 1}[a["category_id"]]]
                      for a in ann["annotations"] if a["image_id"] == im["id"] and not a["iscrowd"])
        got = sorted(r for r in ds.y_train[i].tolist() if r[4] >= 0)
        assert len(got) == len(want) and all(g == pytest.approx(w, abs=1e-4) for g, w in zip(got, want))
        pixels = ds.x_train[i] * torch.tensor(ds.std).view(-1, 1, 1) + torch.tensor(ds.mean).view(-1, 1, 1)
        for x0, y0, x1, y1, _ in got:  # the rectangle (200/255) is inside its box, scaled with the image
            inner = pixels[:, round(y0) + 2:round(y1) - 2, round(x0) + 2:round(x1) - 2]
            assert float(inner.mean()) == pytest.approx(200 / 255, abs=0.03)
        h, w = (round(s * 64 / max(sizes[im["id"]])) for s in sizes[im["id"]])
        padding = torch.cat([pixels[:, h:, :].flatten(), pixels[:, :, w:].flatten(), torch.zeros(1)])
        assert float(padding.abs().max()) < 1e-5  # the rest of the canvas is black


@pytest.mark.parametrize("damage,error,message", [
    (lambda d: (d / "annotations" / "instances_test.json").unlink(), DataNotFoundError, "instances_test.json: no such file"),
    (lambda d: (d / "annotations" / "instances_train.json").write_text("{"), DataFileError, "instances_train.json: not valid JSON"),
    (lambda d: (d / "train" / "im3.png").unlink(), DataNotFoundError, "im3.png: no such file"),
    (lambda d: (d / "train" / "im3.png").write_bytes(b"not a png"), DataFileError, "im3.png: not an image torchvision can decode"),
])
def test_damaged_coco_files_are_one_line_naming_them(tmp_path, damage, error, message):
    root = write_coco(tmp_path / "coco")
    damage(root)
    with pytest.raises(error) as e:
        load_dataset("coco", root=str(root), canvas=64)
    assert message in str(e.value) and "\n" not in str(e.value) and str(e.value).startswith(str(root))


def test_a_detector_trains_on_coco_files(coco_root, tmp_path):
    cfg = compose_cfg("data=coco", f"data.root={coco_root}", "data.canvas=64", "data.val_size=2", "data.batch_size=4",
                      "model=fcos", "model.width=8", "model.channels=32", "model.head_convs=1", "lambda=beta",
                      "trainer.epochs=1", "trainer.progress=false", "device=cpu")
    out = train(cfg, tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["dataset"]["name"] == "coco" and 0 <= out <= 1
    assert summary["dataset"]["n_train"] == 10 and len(summary["final"]["test_map_per_class"]) == 2
