"""Detection scenes composed of real Fashion-MNIST objects (``fashion_scenes``; issue 15's data).

No detection data set can be fetched here, so scenes are built: each grey canvas holds 1 to
``max_objects`` Fashion-MNIST items, each resized by a random scale and pasted (pixel-wise maximum, on
a black background) at a random position, with the tight box of its visible ink and its class.
A synthetic composition of real objects, not a benchmark of record.

Determinism and leakage: :func:`compose_scenes` draws everything from its ``generator``; the caller
gives it disjoint object pools per split (training scenes from the training split's objects,
validation and test scenes from held-out objects only), and each scene records which objects it
used (``sources``), so the disjointness is checkable.

``data=fashion_scenes`` (:func:`fashion_scenes`): Fashion-MNIST's training split is cut in two with
``data.split_seed`` — ``held_out_objects`` items for the validation scenes, the rest for the training
scenes — and the test scenes use the test split's items; the scenes themselves are drawn from
``split_seed`` too, so every run seed sees the same scenes (``train_subset`` keeps that many of the
training scenes, drawn with the run's subset seed).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import DATASETS, Dataset, check_int
from .images import FASHION_MNIST_SOURCE

INK = 0  # a pixel above this is part of an object (Fashion-MNIST's background is exactly 0)


@dataclass
class Scenes:
    """``n`` scenes: ``images`` (n, 1, S, S) uint8; per scene up to K objects, padded with -1:
    ``boxes`` (n, K, 4) float32 ``(x0, y0, x1, y1)`` in pixels, the half-open extent of the object's
    ink (x1 − x0 is its width), ``labels`` (n, K) int64 and ``sources`` (n, K) int64, the index of
    the object in the pool it came from."""

    images: Tensor
    boxes: Tensor
    labels: Tensor
    sources: Tensor

    @property
    def counts(self) -> Tensor:
        return (self.labels >= 0).sum(1)


def _ink_box(obj: Tensor) -> tuple[int, int, int, int] | None:
    """The half-open extent (x0, y0, x1, y1) of the pixels above INK in a (h, w) image; None if blank."""
    ys, xs = (obj > INK).nonzero(as_tuple=True)
    if ys.numel() == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of every box in ``a`` (N, 4) against every box in ``b`` (M, 4), half-open pixel boxes."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda t: (t[:, 2:] - t[:, :2]).prod(-1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def compose_scenes(objects: Tensor, labels: Tensor, n: int, *, generator: torch.Generator, canvas: int = 96,
                   max_objects: int = 5, scale: tuple[float, float] = (0.75, 2.0), max_iou: float = 0.3,
                   tries: int = 20) -> Scenes:
    """``n`` scenes of ``canvas`` × ``canvas`` from the pool ``objects`` (N, 28, 28) uint8 with ``labels``
    (N,). Per scene: a count uniform in 1..``max_objects``; per object: a pool index uniform over the
    pool, a scale uniform in ``scale`` (its side round(28 · s), bilinear), a position uniform over the
    places where it fits; a placement whose box overlaps an earlier one by IoU > ``max_iou`` is redrawn
    (up to ``tries`` times, then that object is left out). Boxes are the ink's tight extent."""
    if objects.dim() != 3 or objects.dtype != torch.uint8 or labels.shape != objects.shape[:1]:
        raise ValueError(f"objects: expected (N, H, W) uint8 with labels (N,), got {tuple(objects.shape)} "
                         f"{objects.dtype} and {tuple(labels.shape)}")
    lo, hi = scale
    if not (0 < lo <= hi and round(objects.shape[1] * hi) <= canvas):
        raise ValueError(f"scale={scale!r}: expected 0 < low <= high with the largest object "
                         f"({round(objects.shape[1] * hi)} px) inside canvas={canvas}")
    images = torch.zeros(n, 1, canvas, canvas, dtype=torch.uint8)
    boxes = torch.full((n, max_objects, 4), -1.0)
    out_labels = torch.full((n, max_objects), -1, dtype=torch.int64)
    sources = torch.full((n, max_objects), -1, dtype=torch.int64)

    def uniform() -> float:
        return float(torch.rand((), generator=generator))

    for i in range(n):
        count = 1 + int(torch.randint(max_objects, (), generator=generator))
        placed = 0
        for _ in range(count):
            src = int(torch.randint(objects.shape[0], (), generator=generator))
            side = round(objects.shape[1] * (lo + (hi - lo) * uniform()))
            obj = F.interpolate(objects[src][None, None].float(), size=(side, side), mode="bilinear",
                                align_corners=False).round().clamp(0, 255).to(torch.uint8)[0, 0]
            ink = _ink_box(obj)
            if ink is None:
                continue
            for _ in range(tries):
                x, y = int(torch.randint(canvas - side + 1, (), generator=generator)), \
                    int(torch.randint(canvas - side + 1, (), generator=generator))
                box = torch.tensor([[x + ink[0], y + ink[1], x + ink[2], y + ink[3]]], dtype=torch.float32)
                if placed == 0 or float(box_iou(box, boxes[i, :placed]).max()) <= max_iou:
                    break
            else:
                continue
            region = images[i, 0, y:y + side, x:x + side]
            torch.maximum(region, obj, out=region)
            boxes[i, placed], out_labels[i, placed], sources[i, placed] = box[0], labels[src], src
            placed += 1
    return Scenes(images, boxes, out_labels, sources)


def scene_splits(x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, *, train_scenes: int,
                 val_scenes: int, test_scenes: int, held_out_objects: int, split_seed: int, canvas: int = 96,
                 max_objects: int = 5) -> dict[str, Scenes]:
    """The ``train``/``val``/``test`` scenes from Fashion-MNIST's splits ((N, 28, 28) uint8 items and
    labels): training scenes from the training items not held out, validation scenes from the
    ``held_out_objects`` held out (drawn with ``split_seed``), test scenes from the test items.
    ``sources`` index the split the item came from (Fashion-MNIST's train or test split)."""
    g = torch.Generator().manual_seed(split_seed)
    perm = torch.randperm(x_train.shape[0], generator=g)
    held, pool = perm[:held_out_objects], perm[held_out_objects:]
    out = {}
    for k, (name, n, items) in enumerate((("train", train_scenes, pool), ("val", val_scenes, held),
                                          ("test", test_scenes, torch.arange(x_test.shape[0])))):
        xs, ys = (x_test, y_test) if name == "test" else (x_train, y_train)
        scenes = compose_scenes(xs[items], ys[items], n, canvas=canvas, max_objects=max_objects,
                                generator=torch.Generator().manual_seed(split_seed * 3 + k + 1))
        scenes.sources = torch.where(scenes.sources >= 0, items[scenes.sources.clamp(min=0)], -1)
        out[name] = scenes
    return out


@DATASETS.register("fashion_scenes")
def fashion_scenes(*, root: str | None, download: bool, val_size: int, split_seed: int, train_subset: int | None,
                   seed: int, device: str | torch.device, canvas: int = 96, max_objects: int = 5,
                   train_scenes: int = 2000, test_scenes: int = 1000, held_out_objects: int = 10000,
                   **_: object) -> Dataset:
    """``data=fashion_scenes``: detection scenes of real Fashion-MNIST items (see the module's docstring);
    ``val_size`` validation scenes. A synthetic composition, not a benchmark of record."""
    from .images import fashion_mnist

    canvas, max_objects = check_int("data.canvas", canvas, 64, 1024), check_int("data.max_objects", max_objects, 1, 50)
    train_scenes = check_int("data.train_scenes", train_scenes, 1)
    test_scenes = check_int("data.test_scenes", test_scenes, 1)
    held_out_objects = check_int("data.held_out_objects", held_out_objects, 1, 59999)
    check_int("data.val_size", val_size, 0)
    x_train, y_train, x_test, y_test, num_classes, _task = fashion_mnist(root=root, download=download)
    items = [(x.mul(255).round().to(torch.uint8)[:, 0], y) for x, y in ((x_train, y_train), (x_test, y_test))]
    if held_out_objects >= items[0][0].shape[0]:
        raise ValueError(f"data.held_out_objects={held_out_objects}: not smaller than the {items[0][0].shape[0]} "
                         "training items; expected fewer, so that training scenes have items of their own")
    splits = scene_splits(*items[0], *items[1], train_scenes=train_scenes, val_scenes=val_size, test_scenes=test_scenes,
                          held_out_objects=held_out_objects, split_seed=split_seed, canvas=canvas,
                          max_objects=max_objects)
    train = splits["train"]
    keep = torch.arange(train_scenes)
    if train_subset is not None:
        if train_subset > train_scenes:
            raise ValueError(f"data.train_subset={train_subset}: larger than data.train_scenes={train_scenes}; "
                             f"expected null or an integer in 1..{train_scenes}")
        keep = torch.randperm(train_scenes, generator=torch.Generator().manual_seed(seed))[:train_subset].sort().values
    x = train.images[keep].float().div_(255)
    mean, std = float(x.mean()), float(x.std())

    def inputs(s: Scenes, rows: Tensor | None = None) -> Tensor:
        images = s.images if rows is None else s.images[rows]
        return ((images.float().div_(255) - mean) / std).to(device).contiguous()

    def targets(s: Scenes, rows: Tensor | None = None) -> Tensor:
        y = torch.cat([s.boxes, s.labels[..., None].float()], 2)
        return (y if rows is None else y[rows]).to(device).contiguous()

    val = splits["val"] if val_size else None
    return Dataset(name="fashion_scenes", task="detection", x_train=inputs(train, keep), y_train=targets(train, keep),
                   x_test=inputs(splits["test"]), y_test=targets(splits["test"]), num_classes=num_classes,
                   mean=(mean,), std=(std,), x_val=None if val is None else inputs(val),
                   y_val=None if val is None else targets(val),
                   classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                            "Ankle boot"))


fashion_scenes.prepares_dataset = True
fashion_scenes.source = FASHION_MNIST_SOURCE  # type: ignore[attr-defined] - scenes of Fashion-MNIST items
