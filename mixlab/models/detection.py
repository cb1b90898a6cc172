"""Detectors: torchvision's FCOS with a box-weighted loss, for mixup on detection (issue 15).

Mixup for detection (Zhang et al. 2019) blends two images and keeps the boxes of both, each box's
loss weighted by its own image's share (λ or 1 − λ). torchvision's FCOS sums its losses over the
batch, so :class:`WeightedFCOSHead` reaches the weights in by *calling* torchvision's own loss:
per image, the locations are split by the weight of the box they are matched to (background
locations weigh 1), ``FCOSHead.compute_loss`` runs on each group, its per-foreground
normalisation is undone and the group's sum is weighted. Every term of that loss (sigmoid focal
loss, GIoU loss, centre-ness BCE) is a sum over locations, so the split is exact; with all weights
1 the mean over images equals torchvision's batch loss (tests/test_detection.py checks both,
against per-location float64 references). Each image's loss is normalised by the batch's
foreground count over the batch size, so the per-image losses average to torchvision's.

Backbones: ``small`` (the CPU default: three stride-2 stages after a stride-2 stem, an FPN over
strides 4, 8 and 16, ``channels`` wide; ~0.5 M parameters with the defaults) and ``resnet18``
(torchvision's ResNet-18 FPN, levels at strides 4 to 32, ``pretrained=true`` loads ImageNet weights
for users who can download them). Anchor sizes follow the strides (4·2^k), so FCOS's scale ranges
put objects of up to 32 px on the first level, 32–64 px on the second, and so on.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead
from torchvision.ops import FeaturePyramidNetwork

from ..engine.registry import is_number
from .base import MAX_WIDTH, MODELS, _check_image_shape, _check_positive_int

LOSSES = ("classification", "bbox_regression", "bbox_ctrness")


class WeightedFCOSHead(FCOSHead):
    """FCOS's head whose loss weighs each location by the ``weights`` of the box it is matched to
    (``targets[i]["weights"]``, default 1; background locations 1) and returns it per image:
    ``{"classification": (B,), "bbox_regression": (B,), "bbox_ctrness": (B,)}``."""

    def compute_loss(self, targets: list[dict[str, Tensor]], head_outputs: dict[str, Tensor], anchors: list[Tensor],
                     matched_idxs: list[Tensor]) -> dict[str, Tensor]:
        per_image = []
        for i, (target, matched) in enumerate(zip(targets, matched_idxs, strict=True)):
            weights = target.get("weights")
            location_weight = torch.ones(matched.shape, device=matched.device)
            if weights is not None and weights.numel():
                location_weight = torch.where(matched >= 0, weights.float()[matched.clamp(min=0)], location_weight)
            sums = []
            for w in torch.unique(location_weight).tolist():
                group = location_weight == w
                part = super().compute_loss([target], {k: v[i:i + 1, group] for k, v in head_outputs.items()},
                                            [anchors[i][group]], [matched[group]])
                foreground = int((matched[group] >= 0).sum())
                sums.append(w * max(1, foreground) * torch.stack([part[k] for k in LOSSES]))
            per_image.append(torch.stack(sums).sum(0))
        foreground = sum(int((m >= 0).sum()) for m in matched_idxs)
        losses = torch.stack(per_image) * (len(targets) / max(1, foreground))
        return {k: losses[:, j] for j, k in enumerate(LOSSES)}


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallBackbone(nn.Module):
    """A stride-2 stem, three stride-2 stages (strides 4, 8, 16) and an FPN over them, ``out_channels``
    wide: an ``OrderedDict`` of three maps, as torchvision's detectors expect."""

    def __init__(self, in_channels: int, width: int = 32, out_channels: int = 64) -> None:
        super().__init__()
        widths = (2 * width, 3 * width, 4 * width)
        self.stem = _conv(in_channels, width, 2)
        self.stages = nn.ModuleList([nn.Sequential(_conv(width, widths[0], 2), _conv(widths[0], widths[0], 1)),
                                     _conv(widths[0], widths[1], 2), _conv(widths[1], widths[2], 2)])
        self.fpn = FeaturePyramidNetwork(list(widths), out_channels)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        h, maps = self.stem(x), OrderedDict()
        for k, stage in enumerate(self.stages):
            h = stage(h)
            maps[str(k)] = h
        return self.fpn(maps)


def _resnet18_backbone(in_channels: int, pretrained: bool) -> nn.Module:
    from torchvision.models import ResNet18_Weights
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=ResNet18_Weights.DEFAULT if pretrained else None,
                                   trainable_layers=5, returned_layers=[1, 2, 3])
    if in_channels != 3:  # grey canvases: the stem reads the channel(s) it is given
        old = backbone.body.conv1
        conv = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
        with torch.no_grad():  # pretrained RGB filters summed over colour: the grey image's response
            conv.weight.copy_(old.weight.sum(1, keepdim=True).expand(-1, in_channels, -1, -1) / in_channels)
        backbone.body.conv1 = conv
    return backbone


@MODELS.register("fcos")
class FCOSDetector(nn.Module):
    """torchvision's FCOS on ``(B, C, S, S)`` canvases with :class:`WeightedFCOSHead`.

    ``forward(x, targets)`` in training mode returns the per-image losses (B, 3) against padded
    targets (B, K, 6) ``(x0, y0, x1, y1, label, weight)`` (``mix_box_targets``; (B, K, 5) counts as
    weight 1), dropping padding (label < 0) and boxes of weight 0; in eval mode, torchvision's
    detections (a list of ``{"boxes", "scores", "labels"}``). ``embed(x)``: the coarsest FPN map,
    averaged over space, for feature-space pairing and λ. Inputs are normalised by the data set,
    so FCOS's own transform is the identity (mean 0, std 1, no resizing)."""

    mixes_inside = False
    detects = True  # trains on boxes (data with task "detection")

    def __init__(self, *, in_shape: tuple[int, ...], num_classes: int, backbone: str = "small", width: int = 32,
                 channels: int = 64, head_convs: int = 2, pretrained: bool = False, score_thresh: float = 0.05,
                 detections_per_img: int = 100) -> None:
        super().__init__()
        c, h, w = _check_image_shape("fcos", in_shape, min_size=32)
        if h != w:
            raise ValueError(f"fcos needs square canvases, got in_shape={in_shape!r}")
        num_classes = _check_positive_int("num_classes", num_classes)
        if not (isinstance(channels, int) and not isinstance(channels, bool) and 32 <= channels <= 4096
                and channels % 32 == 0):
            raise ValueError(f"channels={channels!r}: expected a multiple of 32 in 32..4096 (FCOS's head normalises "
                             "in 32 groups)")
        if not isinstance(pretrained, bool):
            raise ValueError(f"pretrained={pretrained!r}: expected true or false")
        if not (is_number(score_thresh) and 0.0 <= score_thresh <= 1.0):
            raise ValueError(f"score_thresh={score_thresh!r}: expected a number in [0, 1]")
        detections_per_img = _check_positive_int("detections_per_img", detections_per_img, 100_000)
        head_convs = _check_positive_int("head_convs", head_convs, 16)
        if backbone == "small":
            if pretrained:
                raise ValueError("pretrained=True: backbone=small has no pretrained weights; expected "
                                 "backbone=resnet18 (ImageNet weights, downloaded) or pretrained=False")
            net = SmallBackbone(c, _check_positive_int("width", width, MAX_WIDTH), channels)
            levels = 3
        elif backbone == "resnet18":
            net, levels = _resnet18_backbone(c, pretrained), 4  # strides 4, 8, 16 and the FPN's pooled 32
        else:
            raise ValueError(f"backbone={backbone!r}: expected one of ['resnet18', 'small']")
        sizes = tuple((4 * 2 ** k,) for k in range(levels))
        head = WeightedFCOSHead(net.out_channels, 1, num_classes, num_convs=head_convs)
        self.fcos = FCOS(net, num_classes, min_size=h, max_size=h, image_mean=[0.0] * c, image_std=[1.0] * c,
                         anchor_generator=AnchorGenerator(sizes, ((1.0,),) * levels), head=head,
                         score_thresh=float(score_thresh), detections_per_img=detections_per_img)
        self.in_shape, self.num_classes, self.embed_dim = (c, h, w), num_classes, net.out_channels

    @staticmethod
    def targets(y: Tensor) -> list[dict[str, Tensor]]:
        """Padded targets (B, K, 5 or 6) as torchvision's list of per-image dicts (boxes, labels, weights)."""
        out = []
        for rows in y:
            weight = rows[:, 5] if rows.shape[1] > 5 else torch.ones_like(rows[:, 0])
            keep = (rows[:, 4] >= 0) & (weight > 0)
            out.append({"boxes": rows[keep, :4].float(), "labels": rows[keep, 4].long(), "weights": weight[keep].float()})
        return out

    def forward(self, x: Tensor, targets: Tensor | None = None) -> Tensor | list[dict[str, Tensor]]:
        if self.training:
            if targets is None:
                raise ValueError("fcos in training mode needs targets (B, K, 5 or 6)")
            losses = self.fcos(list(x), self.targets(targets))
            return torch.stack([losses[k] for k in LOSSES], 1)
        return self.fcos(list(x))

    def embed(self, x: Tensor) -> Tensor:
        return list(self.fcos.backbone(x).values())[-1].mean((2, 3))
