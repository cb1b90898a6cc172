"""What a task means to the training loop: how targets are mixed, the per-sample loss, the metrics.

A data set names its task (``Dataset.task``); the loop builds it from :data:`TASKS` and asks it,
instead of branching on the task's name, so a new task (detection, ...) adds a class here and no
``if task == ...`` in the loop.

- ``classification``: targets are class indices, mixed as class distributions (one-hot, then
  blended; label smoothing applies); loss = soft-target cross-entropy; metrics = accuracy, NLL,
  ECE, Brier and the reliability bins (``metrics.classification_metrics``).
- ``regression``: targets are values, blended as they are; loss = squared error; metrics = MSE, MAE.
- ``detection``: targets are boxes (B, K, 5), a blend keeps both images' boxes weighted λ / 1 − λ
  (``mix_box_targets``); the model computes its own per-image loss from them (``forward`` hands the
  targets in); metrics = COCO mAP@[.5:.95], mAP@.5, mAP@.75 and per-class AP (torchmetrics).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..engine.registry import Registry
from .metrics import classification_metrics, detection_metrics, regression_metrics, reliability

__all__ = ["TASKS", "Classification", "Detection", "Regression", "Task"]


class Task:
    """Base class. ``has_classes``: targets are class labels (class-aware pairings apply, smoothing
    applies, the mixed target is a distribution over ``num_classes``)."""

    has_classes = False
    mixes_boxes = False  # targets are boxes, mixed by weight (detection)

    def forward(self, model: torch.nn.Module, x: Tensor, target: Tensor) -> Tensor:
        """The training forward of a (mixed) batch: the model's output, which ``loss_per_sample`` scores."""
        return model(x)

    def join(self, outs: list) -> object:
        """The evaluation outputs of a split's batches as one (``metrics`` reads it)."""
        return torch.cat([o.float() for o in outs])

    def loss_per_sample(self, out: Tensor, target: Tensor) -> Tensor:
        """The loss of each sample against its (mixed) target, (B,), in float32."""
        raise NotImplementedError

    def correct(self, out: Tensor, target: Tensor) -> Tensor:
        """How many of the batch's predictions agree with the dominant part of their mixed target (a
        0-d tensor on the device; 0 where the task has no classes)."""
        return out.new_zeros((), dtype=torch.float32)

    def metrics(self, out: Tensor, y: Tensor, split: str) -> dict:
        """The evaluation metrics of outputs ``out`` against labels ``y`` on ``split``, keys prefixed
        ``<split>_``; classification adds ``reliability`` (bins) and ``logits`` (for calibration)."""
        raise NotImplementedError


TASKS: Registry[Task] = Registry("task")


@TASKS.register("classification")
class Classification(Task):
    has_classes = True

    def loss_per_sample(self, out: Tensor, target: Tensor) -> Tensor:
        return -(target * F.log_softmax(out.float(), dim=1)).sum(1)

    def correct(self, out: Tensor, target: Tensor) -> Tensor:
        return (out.argmax(1) == target.argmax(1)).sum()

    def metrics(self, out: Tensor, y: Tensor, split: str) -> dict:
        m = classification_metrics(out, y)
        return {f"{split}_acc": m["acc"], f"{split}_nll": m["nll"], f"{split}_ece": m["ece"],
                f"{split}_aece": m["aece"], f"{split}_brier": m["brier"], "reliability": reliability(out, y),
                "logits": out}


@TASKS.register("regression")
class Regression(Task):
    def loss_per_sample(self, out: Tensor, target: Tensor) -> Tensor:
        out = out.float()
        return (out.squeeze(1) - target.float()).square() if target.dim() == 1 else (out - target).square().mean(1)

    def metrics(self, out: Tensor, y: Tensor, split: str) -> dict:
        m = regression_metrics(out.squeeze(1), y)
        return {f"{split}_acc": None, f"{split}_nll": None, f"{split}_ece": None, f"{split}_brier": None,
                f"{split}_mse": m["mse"], f"{split}_mae": m["mae"]}


@TASKS.register("detection")
class Detection(Task):
    """Boxes: the detector scores its own (weighted) per-image loss against the mixed boxes, which
    ``forward`` hands it; outputs in evaluation are torchvision's detections, one dict per image."""

    mixes_boxes = True

    def forward(self, model: torch.nn.Module, x: Tensor, target: Tensor) -> Tensor:
        return model(x, target)

    def join(self, outs: list) -> list:
        return [d for batch in outs for d in batch]

    def loss_per_sample(self, out: Tensor, target: Tensor) -> Tensor:
        return out.float().sum(1)  # the detector's loss terms of each image (classification, box, centre-ness)

    def metrics(self, out: list, y: Tensor, split: str) -> dict:
        m = detection_metrics(out, y)
        return {f"{split}_{k}": v for k, v in m.items()}
