"""fashion_scenes' building block: detection scenes composed of real objects, with tight boxes."""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_iou as tv_box_iou

from mixlab.data.scenes import box_iou, compose_scenes


def pool(n: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Objects like Fashion-MNIST's: ink on a black 28x28 background, somewhere inside it."""
    g = torch.Generator().manual_seed(seed)
    objects = torch.zeros(n, 28, 28, dtype=torch.uint8)
    for i in range(n):
        y0, x0 = torch.randint(0, 10, (2,), generator=g).tolist()
        h, w = torch.randint(6, 18, (2,), generator=g).tolist()
        objects[i, y0:y0 + h, x0:x0 + w] = torch.randint(40, 256, (h, w), generator=g, dtype=torch.int32).to(torch.uint8)
    return objects, torch.arange(n) % 10


def test_scenes_are_a_function_of_the_generator():
    objects, labels = pool()
    a, b, c = (compose_scenes(objects, labels, 12, generator=torch.Generator().manual_seed(s)) for s in (1, 1, 2))
    assert torch.equal(a.images, b.images) and torch.equal(a.boxes, b.boxes) and torch.equal(a.sources, b.sources)
    assert not torch.equal(a.images, c.images)


def test_a_lone_object_gets_the_tight_box_of_its_ink_and_its_own_label():
    objects, labels = pool()
    s = compose_scenes(objects, labels, 30, generator=torch.Generator().manual_seed(3), max_objects=1)
    assert (s.counts == 1).all()
    for i in range(30):
        ys, xs = (s.images[i, 0] > 0).nonzero(as_tuple=True)
        assert s.boxes[i, 0].tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
        assert s.labels[i, 0] == labels[s.sources[i, 0]]


def test_every_box_lies_in_the_canvas_touches_ink_on_all_sides_and_overlaps_little():
    objects, labels = pool()
    s = compose_scenes(objects, labels, 40, generator=torch.Generator().manual_seed(4), canvas=96, max_iou=0.3)
    assert s.counts.min() >= 1 and s.counts.max() <= 5 and s.images.shape == (40, 1, 96, 96)
    assert len(set(s.counts.tolist())) > 2  # counts vary
    for i in range(40):
        k = int(s.counts[i])
        b = s.boxes[i, :k]
        assert (b[:, :2] >= 0).all() and (b[:, 2:] <= 96).all() and (b[:, 2:] > b[:, :2]).all()
        assert (s.labels[i, k:] == -1).all() and (s.boxes[i, k:] == -1).all()
        if k > 1:
            iou = box_iou(b, b) - torch.eye(k)
            assert iou.max() <= 0.3 + 1e-6
        img = s.images[i, 0]
        for x0, y0, x1, y1 in b.long().tolist():  # ink on each edge of the box: nothing looser
            assert img[y0, x0:x1].max() > 0 and img[y1 - 1, x0:x1].max() > 0
            assert img[y0:y1, x0].max() > 0 and img[y0:y1, x1 - 1].max() > 0


def test_scenes_use_only_the_pool_they_are_given():
    objects, labels = pool(40)
    s = compose_scenes(objects[20:], labels[20:], 20, generator=torch.Generator().manual_seed(5))
    used = s.sources[s.sources >= 0]
    assert used.max() < 20 and (s.labels[s.labels >= 0] == labels[20:][used]).all()


def test_box_iou_matches_torchvision():
    g = torch.Generator().manual_seed(6)
    a = torch.randint(0, 50, (7, 2), generator=g).float()
    a = torch.cat([a, a + torch.randint(1, 30, (7, 2), generator=g)], 1)
    b = torch.cat([a[:4] + 3, a[:4] + 9], 1)[:, [0, 1, 6, 7]]
    torch.testing.assert_close(box_iou(a, b), tv_box_iou(a, b))


def test_objects_that_cannot_fit_are_one_line():
    objects, labels = pool()
    with pytest.raises(ValueError, match=r"^scale=\(1.0, 4.0\): expected .* inside canvas=96$"):
        compose_scenes(objects, labels, 1, generator=torch.Generator(), scale=(1.0, 4.0))
