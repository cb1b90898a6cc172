"""A small data set in COCO's format (tests/test_detection.py, test_config.py, test_fuzz_config.py): PNG
images of different sizes, each with bright rectangles the annotations box."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torchvision.io import write_png


def write_coco(folder: Path, n_train: int = 12, n_test: int = 4, seed: int = 0) -> Path:
    """``folder`` with annotations/instances_{train,test}.json and train/, test/ PNGs; categories 3 and 7
    (so the loader must map ids to 0 and 1), one crowd annotation; returns ``folder``."""
    g = torch.Generator().manual_seed(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        images, annotations = [], []
        (folder / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            h, w = 60 + 20 * (i % 3), 80 + 10 * (i % 4)
            image = torch.zeros(3, h, w, dtype=torch.uint8)
            for k in range(1 + i % 2):
                x, y = int(torch.randint(0, w - 30, (1,), generator=g)), int(torch.randint(0, h - 30, (1,), generator=g))
                image[:, y:y + 20, x:x + 25] = 200
                annotations.append({"id": len(annotations) + 1, "image_id": 100 + i, "category_id": (3, 7)[k],
                                    "bbox": [x, y, 25, 20], "area": 500, "iscrowd": 0})
            if i == 0:
                annotations.append({"id": len(annotations) + 1, "image_id": 100, "category_id": 3,
                                    "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 1})
            write_png(image, str(folder / split / f"im{i}.png"))
            images.append({"id": 100 + i, "file_name": f"im{i}.png", "width": w, "height": h})
        (folder / "annotations").mkdir(exist_ok=True)
        (folder / "annotations" / f"instances_{split}.json").write_text(json.dumps(
            {"images": images, "annotations": annotations,
             "categories": [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}]}))
    return folder
