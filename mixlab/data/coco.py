"""``data=coco``: any detection data set in COCO's format, for users with real data (Penn-Fudan, a COCO
subset, their own).

Layout (each path relative to ``data.root``): ``data.train_annotations`` and ``data.test_annotations``,
COCO annotation files (``images`` with ``id``, ``file_name``, ``width``, ``height``; ``annotations``
with ``image_id``, ``category_id``, ``bbox`` = [x, y, width, height] in pixels, optional ``iscrowd``;
``categories`` with ``id``, ``name``), whose ``file_name`` are relative to ``data.train_images`` and
``data.test_images``. Images are decoded by torchvision, converted to ``data.channels`` (1 or 3), and
placed on a common ``data.canvas`` × ``data.canvas`` canvas: scaled so the longer side fits, at the
top left, the rest black; boxes scaled alike (crowd annotations, and boxes under a pixel after scaling,
are dropped). Classes are the training file's categories in id order. The validation split is
``data.val_size`` training images drawn with ``data.split_seed``; ``train_subset`` keeps that many of
the rest, drawn with the run's subset seed. Everything is read into memory: meant for data sets of
thousands of images, not all of COCO.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import DATASETS, DataFileError, DataNotFoundError, Dataset, check_int


def _read_annotations(path: Path, key: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataNotFoundError(f"{path}: no such file; expected a COCO annotation file ({key})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataFileError(f"{path}: not valid JSON ({type(e).__name__}: {e})") from None
    except OSError as e:
        raise DataFileError(f"{path}: cannot be read ({type(e).__name__}: {e.strerror or e})") from None
    for field in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or not isinstance(data.get(field), list):
            raise DataFileError(f"{path}: not COCO detection annotations; expected a '{field}' list")
    return data


def _canvas_image(path: Path, channels: int, canvas: int) -> tuple[Tensor, float]:
    """The image at ``path`` on the canvas (uint8 (channels, canvas, canvas)) and the scale applied."""
    from torchvision.io import ImageReadMode, decode_image

    try:
        data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
    except FileNotFoundError:
        raise DataNotFoundError(f"{path}: no such file (an image the annotations name)") from None
    except OSError as e:
        raise DataFileError(f"{path}: cannot be read ({type(e).__name__}: {e.strerror or e})") from None
    try:
        image = decode_image(data, mode=ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB)
    except RuntimeError as e:
        raise DataFileError(f"{path}: not an image torchvision can decode ({' '.join(str(e).split())[:120]})") from None
    h, w = image.shape[1:]
    scale = canvas / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    resized = F.interpolate(image[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    out = torch.zeros(channels, canvas, canvas, dtype=torch.uint8)
    out[:, :size[0], :size[1]] = resized[0].round().clamp(0, 255).to(torch.uint8)
    return out, scale


def _split(path: Path, images_dir: Path, key: str, categories: dict[int, int] | None, channels: int,
           canvas: int) -> tuple[Tensor, list[Tensor], dict[int, int], list[str]]:
    """A split's canvases (N, C, S, S) uint8, per image its (k, 5) boxes+labels, the category map and names."""
    data = _read_annotations(path, key)
    names = []
    if categories is None:
        cats = sorted(data["categories"], key=lambda c: c.get("id", 0) if isinstance(c, dict) else 0)
        if not cats or not all(isinstance(c, dict) and isinstance(c.get("id"), int) for c in cats):
            raise DataFileError(f"{path}: 'categories' must be a non-empty list of {{'id': int, 'name': str}}")
        categories = {c["id"]: k for k, c in enumerate(cats)}
        names = [str(c.get("name", c["id"])) for c in cats]
    rows: dict[int, list[list[float]]] = {}
    index: dict[int, int] = {}
    images, scales = [], []
    for k, entry in enumerate(data["images"]):
        if not (isinstance(entry, dict) and isinstance(entry.get("id"), int) and isinstance(entry.get("file_name"), str)):
            raise DataFileError(f"{path}: images[{k}] needs an integer 'id' and a 'file_name'")
        image, scale = _canvas_image(images_dir / entry["file_name"], channels, canvas)
        index[entry["id"]] = k
        images.append(image)
        scales.append(scale)
        rows[k] = []
    for k, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or ann.get("image_id") not in index:
            raise DataFileError(f"{path}: annotations[{k}] names image_id "
                                f"{ann.get('image_id') if isinstance(ann, dict) else None!r}, not in 'images'")
        if ann.get("iscrowd", 0):
            continue
        cat, box = ann.get("category_id"), ann.get("bbox")
        if cat not in categories:
            raise DataFileError(f"{path}: annotations[{k}] has category_id {cat!r}; expected one of the training "
                                f"file's {sorted(categories)}")
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            raise DataFileError(f"{path}: annotations[{k}] has bbox {box!r}; expected [x, y, width, height]")
        i = index[ann["image_id"]]
        s = scales[i]
        x0, y0 = max(0.0, box[0] * s), max(0.0, box[1] * s)
        x1, y1 = min(float(canvas), (box[0] + box[2]) * s), min(float(canvas), (box[1] + box[3]) * s)
        if x1 - x0 >= 1 and y1 - y0 >= 1:
            rows[i].append([x0, y0, x1, y1, float(categories[cat])])
    if not images:
        raise DataFileError(f"{path}: 'images' is empty; expected at least one image")
    return torch.stack(images), [torch.tensor(rows[i], dtype=torch.float32).view(-1, 5) for i in range(len(images))], categories, names


def _padded(boxes: list[Tensor], k: int) -> Tensor:
    out = torch.full((len(boxes), k, 5), -1.0)
    for i, b in enumerate(boxes):
        out[i, :b.shape[0]] = b
    return out


def _check(key: str, value: object, allowed: tuple | None = None) -> None:
    if allowed is not None and value not in allowed:
        raise ValueError(f"data.{key}={value!r}: expected one of {list(allowed)}")
    if allowed is None and not (isinstance(value, str) and value):
        raise ValueError(f"data.{key}={value!r}: expected a path relative to data.root")


@DATASETS.register("coco")
def coco(*, root: str | None, download: bool, val_size: int, split_seed: int, train_subset: int | None, seed: int,
         device: str | torch.device, canvas: int = 128, channels: int = 3,
         train_annotations: str = "annotations/instances_train.json", train_images: str = "train",
         test_annotations: str = "annotations/instances_test.json", test_images: str = "test",
         **_: object) -> Dataset:
    """``data=coco`` (see the module's docstring)."""
    if root is None:
        raise DataNotFoundError("data=coco: data.root=null; expected the folder holding the annotation files "
                                "and image folders (data.train_annotations, data.train_images, ...)")
    _check("channels", channels, (1, 3))
    for key, value in (("train_annotations", train_annotations), ("train_images", train_images),
                       ("test_annotations", test_annotations), ("test_images", test_images)):
        _check(key, value)
    check_int("data.canvas", canvas, 64, 1024)
    base = Path(root).expanduser()
    x_train, b_train, categories, names = _split(base / train_annotations, base / train_images, "data.train_annotations",
                                                 None, channels, canvas)
    x_test, b_test, _, _ = _split(base / test_annotations, base / test_images, "data.test_annotations", categories,
                                  channels, canvas)
    n = x_train.shape[0]
    if val_size >= n:
        raise ValueError(f"data.val_size={val_size}: not smaller than the {n} training images of data=coco; "
                         f"expected an integer in 0..{n - 1}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    held, pool = perm[:val_size].sort().values, perm[val_size:].sort().values
    if train_subset is not None:
        if train_subset > pool.numel():
            raise ValueError(f"data.train_subset={train_subset}: larger than the {pool.numel()} training images left "
                             f"after data.val_size={val_size}; expected null or an integer in 1..{pool.numel()}")
        keep = torch.randperm(pool.numel(), generator=torch.Generator().manual_seed(seed))[:train_subset]
        pool = pool[keep.sort().values]
    k = max(1, max((b.shape[0] for b in b_train + b_test), default=1))
    y_all, y_test = _padded(b_train, k), _padded(b_test, k)
    x = x_train[pool].float().div_(255)
    mean = x.mean((0, 2, 3))
    std = x.std((0, 2, 3)).clamp(min=1e-6)

    def inputs(images: Tensor) -> Tensor:
        return ((images.float().div_(255) - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)).to(device).contiguous()

    return Dataset(name="coco", task="detection", x_train=inputs(x_train[pool]), y_train=y_all[pool].to(device),
                   x_test=inputs(x_test), y_test=y_test.to(device), num_classes=len(categories),
                   mean=tuple(mean.tolist()), std=tuple(std.tolist()),
                   x_val=inputs(x_train[held]) if val_size else None, y_val=y_all[held].to(device) if val_size else None,
                   classes=tuple(names))


coco.prepares_dataset = True
