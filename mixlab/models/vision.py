"""Image classifiers: a small conv net, pre-activation ResNet-18 and WideResNet, with mix points after
each stage (the residual nets' stem folded into stage 1, as manifold mixup draws its points)."""
from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from .base import (MAX_DEPTH, MAX_WIDEN, MAX_WIDTH, MODELS, MixModel, _check_dropout, _check_image_shape,
                   _check_in_shape, _check_positive_int, _is_int)


# --------------------------------------------------------------------------- building blocks
def _conv3x3(in_ch: int, out_ch: int, *, stride: int = 1) -> nn.Conv2d:
    # No bias: every conv here is followed by BatchNorm (directly or after the residual add
    # and the next block's pre-activation BN), which would cancel it and leave it untrained.
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv_bn_relu(in_ch: int, out_ch: int) -> list[nn.Module]:
    return [_conv3x3(in_ch, out_ch), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016): ``BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3`` + skip.

    ``(B, in_ch, H, W) -> (B, out_ch, ceil(H / stride), ceil(W / stride))``. When the shape
    changes the skip is a 1x1 strided conv of the *pre-activated* input, as in the paper,
    so that the identity path of the unchanged blocks stays free of BN and ReLU.
    ``dropout`` between the convs is the WideResNet variant (Zagoruyko & Komodakis 2016).
    """

    def __init__(self, in_ch: int, out_ch: int, *, stride: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = _conv3x3(in_ch, out_ch, stride=stride)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = _conv3x3(out_ch, out_ch)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        # Not in-place: x may be a mixed hidden state whose autograd history we must keep.
        a = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(a)
        out = self.conv1(a)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + skip


def _preact_stage(in_ch: int, out_ch: int, *, num_blocks: int, stride: int, dropout: float = 0.0) -> nn.Sequential:
    layers = [PreActBlock(in_ch, out_ch, stride=stride, dropout=dropout)]
    layers += [PreActBlock(out_ch, out_ch, dropout=dropout) for _ in range(num_blocks - 1)]
    return nn.Sequential(*layers)


def _preact_pool(channels: int) -> nn.Sequential:
    # Pre-activation nets end on a bare residual sum, so the final BN-ReLU belongs here.
    return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1))


class SimpleCNN(MixModel):
    """Small fast VGG-style net for 1- or 3-channel images of at least 8x8.

    Three blocks ``(conv3x3-BN-ReLU) x 2 - maxpool2`` of widths ``w, 2w, 4w`` halve the
    resolution each (28 -> 14 -> 7 -> 3, 32 -> 16 -> 8 -> 4, 8 -> 4 -> 2 -> 1), then global
    average pooling gives the ``(B, 4w)`` embedding. Mix points: input, block 1, block 2.

    ``width = 24`` is the CPU sweet spot: Fashion-MNIST reaches ~91% test accuracy after two
    AdamW epochs at ~1 min per epoch on 2 cores, while ``width = 32`` costs about 2.5x the
    time for little gain (measured on a 2-core AVX2 EPYC; the 64/128-channel convs dominate).
    """

    def __init__(self, *, in_shape: tuple[int, ...], num_classes: int, width: int = 24) -> None:
        in_shape = _check_in_shape(in_shape)
        channels, _, _ = _check_image_shape("cnn", in_shape, min_size=8)
        width = _check_positive_int("width", width, MAX_WIDTH)
        widths = (width, 2 * width, 4 * width)
        blocks: list[nn.Module] = []
        prev = channels
        for w in widths:
            blocks.append(nn.Sequential(*_conv_bn_relu(prev, w), *_conv_bn_relu(w, w), nn.MaxPool2d(2)))
            prev = w
        pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        super().__init__(in_shape=in_shape, num_classes=num_classes, blocks=blocks, pool=pool, embed_dim=prev)


class PreActResNet18(MixModel):
    """CIFAR-style pre-activation ResNet-18 (He et al. 2016), as used by manifold mixup.

    3x3 stem conv (no maxpool), four stages of two :class:`PreActBlock` with widths
    ``w, 2w, 4w, 8w`` and strides 1, 2, 2, 2, final BN-ReLU, global average pool:
    ``(B, C, H, W) -> (B, 8w)``; 11.17M parameters at ``w = 64`` with 10 classes.
    Blocks are ``[stem + stage1, stage2, stage3, stage4]``; mix points are 0 = input,
    1 = stage1, 2 = stage2, i.e. Verma et al.'s (2019) input, layer 1 and layer 2, drawn
    with equal probability by the loop. Both hidden points lie past the stages' ReLUs; the
    stem alone is a bias-free conv, whose output mixes exactly like the input.
    """

    def __init__(self, *, in_shape: tuple[int, ...], num_classes: int, width: int = 64) -> None:
        in_shape = _check_in_shape(in_shape)
        channels, _, _ = _check_image_shape("preact_resnet18", in_shape)
        width = _check_positive_int("width", width, MAX_WIDTH)
        widths = (width, 2 * width, 4 * width, 8 * width)
        stem = _conv3x3(channels, width)
        blocks: list[nn.Module] = []
        prev = width
        for w, stride in zip(widths, (1, 2, 2, 2), strict=True):
            blocks.append(_preact_stage(prev, w, num_blocks=2, stride=stride))
            prev = w
        # The stem is linear: as a block of its own it would be a mix point equal to the input.
        blocks[0] = nn.Sequential(stem, blocks[0])
        super().__init__(
            in_shape=in_shape,
            num_classes=num_classes,
            blocks=blocks,
            pool=_preact_pool(prev),
            embed_dim=prev,
            num_mix_points=3,
        )


class WideResNet(MixModel):
    """WideResNet-``depth``-``widen`` (Zagoruyko & Komodakis 2016) with pre-activation blocks.

    3x3 stem conv to 16 channels, three groups of ``(depth - 4) / 6`` wide blocks with widths
    ``16k, 32k, 64k`` and strides 1, 2, 2, final BN-ReLU, global average pool:
    ``(B, C, H, W) -> (B, 64k)``; WRN-28-10 has 36.5M parameters. Blocks are
    ``[stem + group1, group2, group3]``; mix points are 0 = input, 1 = group1, 2 = group2,
    i.e. Verma et al.'s (2019) input, layer 1 and layer 2 with equal probability. Both
    hidden points lie past the groups' ReLUs (the bias-free stem alone is linear).
    """

    def __init__(
        self,
        *,
        in_shape: tuple[int, ...],
        num_classes: int,
        depth: int = 16,
        widen: int = 4,
        dropout: float = 0.0,
    ) -> None:
        in_shape = _check_in_shape(in_shape)
        channels, _, _ = _check_image_shape("wrn", in_shape)
        if not _is_int(depth) or not 10 <= depth <= MAX_DEPTH or (depth - 4) % 6 != 0:
            raise ValueError(f"depth={depth!r}: expected an integer in 10..{MAX_DEPTH} with (depth - 4) % 6 == 0 "
                             "(16, 22, 28, 40, ...)")
        widen = _check_positive_int("widen", widen, MAX_WIDEN)
        dropout = _check_dropout("dropout", dropout)
        per_group = (depth - 4) // 6
        stem = _conv3x3(channels, 16)
        blocks: list[nn.Module] = []
        prev = 16
        for w, stride in zip((16 * widen, 32 * widen, 64 * widen), (1, 2, 2), strict=True):
            blocks.append(_preact_stage(prev, w, num_blocks=per_group, stride=stride, dropout=dropout))
            prev = w
        # The stem is linear: as a block of its own it would be a mix point equal to the input.
        blocks[0] = nn.Sequential(stem, blocks[0])
        super().__init__(
            in_shape=in_shape, num_classes=num_classes, blocks=blocks, pool=_preact_pool(prev), embed_dim=prev
        )


@MODELS.register("cnn")
def cnn(*, in_shape: tuple[int, ...], num_classes: int, width: int = 24) -> MixModel:
    """Small fast conv net; see :class:`SimpleCNN`."""
    return SimpleCNN(in_shape=in_shape, num_classes=num_classes, width=width)


@MODELS.register("preact_resnet18")
def preact_resnet18(*, in_shape: tuple[int, ...], num_classes: int, width: int = 64) -> MixModel:
    """CIFAR pre-activation ResNet-18; see :class:`PreActResNet18`."""
    return PreActResNet18(in_shape=in_shape, num_classes=num_classes, width=width)


@MODELS.register("wrn")
def wrn(
    *, in_shape: tuple[int, ...], num_classes: int, depth: int = 16, widen: int = 4, dropout: float = 0.0
) -> MixModel:
    """WideResNet-depth-widen; see :class:`WideResNet`."""
    return WideResNet(in_shape=in_shape, num_classes=num_classes, depth=depth, widen=widen, dropout=dropout)
