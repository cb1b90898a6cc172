"""Detection scenes composed of real Fashion-MNIST objects (``fashion_scenes``; issue 15's data).

No detection data set can be fetched here, so scenes are built: each grey canvas holds 1 to
``max_objects`` Fashion-MNIST items, each resized by a random scale and pasted (pixel-wise maximum, on
a black background) at a random position, with the tight box of its visible ink and its class.
A synthetic composition of real objects, not a benchmark of record.

Determinism and leakage: :func:`compose_scenes` draws everything from its ``generator``; the caller
gives it disjoint object pools per split (training scenes from the training split's objects,
validation and test scenes from held-out objects only), and each scene records which objects it
used (``sources``), so the disjointness is checkable.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

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
