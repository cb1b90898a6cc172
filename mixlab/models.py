"""Classifiers with named mix points for input and manifold mixup.

Every model is a :class:`MixModel`: a stack of ``blocks``, a ``pool`` that turns the last
hidden state into a ``(B, embed_dim)`` embedding, and a linear ``classifier``. Mix point
``k = 0`` is the input and ``k = i`` is the output of block ``i``; the training loop picks a
``k`` in ``0 .. num_mix_points - 1`` uniformly and hands a ``mix`` function that rewrites the
hidden state there (``h -> lam * h + (1 - lam) * h[perm]`` or anything else of the same shape).

Every hidden point (``k >= 1``) has at least one ReLU between it and the input, so mixing
there is not input mixup in disguise: were block 1 a bare conv, mixing its output would
equal mixing the input. The residual nets follow manifold mixup (Verma et al. 2019), which
draws the input, the output of residual stage 1 or that of stage 2 with equal probability:
their stem conv is part of block 1, and ``k`` in ``{0, 1, 2}`` is exactly that choice.

Builders are registered in :data:`MODELS` under ``mlp``, ``cnn``, ``preact_resnet18`` and
``wrn``; each takes keyword-only ``in_shape`` (``(C, H, W)`` for images, ``(D,)`` for tabular
data), ``num_classes`` and its own options, so ``MODELS.build`` can reject misspelled ones.
"""
from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence

from torch import Tensor, nn
from torch.nn import functional as F

from mixlab.registry import Registry, is_number

__all__ = [
    "MODELS",
    "MixModel",
    "MLP",
    "SimpleCNN",
    "PreActBlock",
    "PreActResNet18",
    "WideResNet",
    "build_model",
]

MODELS: Registry[MixModel] = Registry("model")

MixFn = Callable[[Tensor], Tensor]


# --------------------------------------------------------------------------- validation
# Upper bounds on sizes: far above any published setting, they turn a typo (an extra zero or
# three) into a one-line error instead of an out-of-memory crash while allocating the weights.
MAX_WIDTH, MAX_WIDEN, MAX_HIDDEN, MAX_DEPTH = 1024, 64, 65536, 1000


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # True as a width is a config mistake


def _check_positive_int(option: str, value: object, at_most: int | None = None) -> int:
    if not _is_int(value) or value < 1 or (at_most is not None and value > at_most):
        allowed = "an integer >= 1" if at_most is None else f"an integer in 1..{at_most}"
        raise ValueError(f"{option}={value!r}: expected {allowed}")
    return value


def _check_dropout(option: str, value: object) -> float:
    if not (is_number(value) and 0.0 <= value < 1.0):
        raise ValueError(f"{option}={value!r}: expected a number in [0, 1)")
    return float(value)


def _check_in_shape(value: object) -> tuple[int, ...]:
    # Any non-string sequence: YAML configs hand over lists (or OmegaConf ListConfigs).
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
        raise ValueError(f"in_shape must be a non-empty tuple of positive ints, got {value!r}")
    for dim in value:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"in_shape must be a non-empty tuple of positive ints, got {value!r}")
    return tuple(value)


def _check_image_shape(model: str, in_shape: tuple[int, ...], *, min_size: int = 1) -> tuple[int, int, int]:
    if len(in_shape) != 3:
        raise ValueError(
            f"{model} needs an image in_shape (C, H, W), got in_shape={in_shape!r}; "
            "use 'mlp' for tabular data"
        )
    channels, height, width = in_shape
    if height < min_size or width < min_size:
        raise ValueError(
            f"{model} needs images of at least {min_size}x{min_size}, got in_shape={in_shape!r}"
        )
    return channels, height, width


# --------------------------------------------------------------------------- base class
class MixModel(nn.Module):
    """A stack of blocks, then pooling to an embedding, then a linear head.

    Manifold mixup mixes the hidden state at one *mix point*: ``k = 0`` is the input and
    ``k = i`` the output of block ``i``. Valid points are ``0 .. num_mix_points - 1``; the
    last block's output is never one (mixing right before the pool is mixing embeddings,
    which the loop can do itself, and deep points hurt in the manifold mixup paper).

    A hidden point must not be a linear (or affine) function of the input: mixing commutes
    with such a map, so the point would be input mixup again while counting as manifold
    mixup. Subclasses therefore put a non-linearity in every block up to the last mix point
    (a lone stem conv is folded into the block that follows it).

    Shapes: ``x`` is ``(B, *in_shape)``; :meth:`embed` gives ``(B, embed_dim)``;
    :meth:`head` and :meth:`forward` give ``(B, num_classes)`` logits.

    Subclasses only build ``blocks`` and ``pool`` and pass them here; the mixing walk, the
    head and the weight initialisation live here once.
    """

    blocks: nn.ModuleList
    pool: nn.Module
    classifier: nn.Linear
    in_shape: tuple[int, ...]
    num_classes: int
    embed_dim: int
    num_mix_points: int

    def __init__(
        self,
        *,
        in_shape: tuple[int, ...],
        num_classes: int,
        blocks: Sequence[nn.Module],
        pool: nn.Module,
        embed_dim: int,
        num_mix_points: int | None = None,
    ) -> None:
        super().__init__()
        self.in_shape = _check_in_shape(in_shape)
        self.num_classes = _check_positive_int("num_classes", num_classes)
        self.embed_dim = _check_positive_int("embed_dim", embed_dim)
        if len(blocks) == 0:
            raise ValueError("a MixModel needs at least one block, got blocks=[]")
        self.blocks = nn.ModuleList(blocks)
        self.pool = pool
        self.classifier = nn.Linear(embed_dim, num_classes)
        # Default: the input plus every block output but the last.
        default = len(self.blocks)
        if num_mix_points is None:
            num_mix_points = default
        valid = isinstance(num_mix_points, int) and not isinstance(num_mix_points, bool)
        if not valid or not 1 <= num_mix_points <= default:
            raise ValueError(f"num_mix_points must be an int in 1..{default}, got {num_mix_points!r}")
        self.num_mix_points = num_mix_points
        self._init_weights()

    # ----------------------------------------------------------------------- init
    def _init_weights(self) -> None:
        # Kaiming (He) init keeps activation variance constant through ReLU stacks, which is
        # what lets the deep residual nets train from step one at the usual learning rates.
        # Biases start at zero so that the initial function only depends on the weights.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear) and module is not self.classifier:
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        # The head keeps PyTorch's default (small, fan-in scaled uniform) weights: no ReLU
        # follows it, and He-scaled logits would start the softmax needlessly confident.
        nn.init.zeros_(self.classifier.bias)

    # ----------------------------------------------------------------------- mixing
    def _check_mix(self, mix_at: object, mix: MixFn | None) -> int | None:
        if mix_at is None:
            # The contract only applies ``mix`` at a point; a mix without a point is a no-op.
            return None
        if isinstance(mix_at, bool):
            raise ValueError(f"mix_at must be an int in 0..{self.num_mix_points - 1} or None, got {mix_at!r}")
        try:
            # operator.index accepts int, numpy ints and 0-d integer tensors, rejects floats.
            k = operator.index(mix_at)  # type: ignore[arg-type]
        except TypeError:
            raise ValueError(
                f"mix_at must be an int in 0..{self.num_mix_points - 1} or None, got {mix_at!r}"
            ) from None
        if not 0 <= k < self.num_mix_points:
            raise ValueError(
                f"mix_at={k} is out of range for {type(self).__name__}: allowed 0..{self.num_mix_points - 1} "
                f"(0 = input, i = output of block i)"
            )
        if mix is None:
            raise ValueError(f"mix_at={k} was given without a mix function; pass mix=callable(h) -> h")
        return k

    @staticmethod
    def _apply_mix(mix: MixFn, h: Tensor, k: int) -> Tensor:
        out = mix(h)
        if not isinstance(out, Tensor) or out.shape != h.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"mix at mix_at={k} must return a tensor of shape {tuple(h.shape)}, got {got}")
        return out

    def embed(self, x: Tensor, *, mix_at: int | None = None, mix: MixFn | None = None) -> Tensor:
        """``(B, *in_shape) -> (B, embed_dim)`` penultimate embedding.

        If ``mix_at`` is not None, ``h = mix(h)`` replaces the hidden state at that mix point
        (``0`` = the input itself, ``i`` = output of block ``i``); ``mix`` must keep the shape.
        """
        k = self._check_mix(mix_at, mix)
        h = x
        if k == 0:
            h = self._apply_mix(mix, h, 0)  # type: ignore[arg-type]
        for i, block in enumerate(self.blocks, start=1):
            h = block(h)
            if k == i:
                h = self._apply_mix(mix, h, i)  # type: ignore[arg-type]
        return self.pool(h)

    def head(self, emb: Tensor) -> Tensor:
        """``(B, embed_dim) -> (B, num_classes)`` logits."""
        return self.classifier(emb)

    def forward(self, x: Tensor, *, mix_at: int | None = None, mix: MixFn | None = None) -> Tensor:
        """``(B, *in_shape) -> (B, num_classes)`` logits; ``= head(embed(x, mix_at=, mix=))``."""
        return self.head(self.embed(x, mix_at=mix_at, mix=mix))

    def extra_repr(self) -> str:
        return (
            f"in_shape={self.in_shape}, num_classes={self.num_classes}, "
            f"embed_dim={self.embed_dim}, num_mix_points={self.num_mix_points}"
        )


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


# --------------------------------------------------------------------------- models
class MLP(MixModel):
    """Multi-layer perceptron on flattened input.

    ``(B, *in_shape) -> (B, hidden[-1])`` embedding; blocks are ``Linear-ReLU(-Dropout)``,
    one per entry of ``hidden`` (the first also flattens). Mix points: the input and every
    hidden block output except the last (which *is* the embedding).
    """

    def __init__(
        self,
        *,
        in_shape: tuple[int, ...],
        num_classes: int,
        hidden: Sequence[int] = (512, 256),
        dropout: float = 0.0,
    ) -> None:
        in_shape = _check_in_shape(in_shape)
        is_list = not isinstance(hidden, (str, bytes)) and isinstance(hidden, Sequence) and len(hidden) > 0
        if not is_list or not all(_is_int(w) and 1 <= w <= MAX_HIDDEN for w in hidden):
            raise ValueError(f"hidden={hidden!r}: expected a non-empty list of integers in 1..{MAX_HIDDEN}")
        dropout = _check_dropout("dropout", dropout)
        blocks: list[nn.Module] = []
        prev = math.prod(in_shape)
        for i, width in enumerate(hidden):
            layers: list[nn.Module] = [nn.Flatten(1)] if i == 0 else []
            layers += [nn.Linear(prev, width), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            blocks.append(nn.Sequential(*layers))
            prev = width
        super().__init__(
            in_shape=in_shape, num_classes=num_classes, blocks=blocks, pool=nn.Identity(), embed_dim=prev
        )


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


# --------------------------------------------------------------------------- registry
@MODELS.register("mlp")
def mlp(
    *, in_shape: tuple[int, ...], num_classes: int, hidden: Sequence[int] = (512, 256), dropout: float = 0.0
) -> MixModel:
    """MLP on flattened input; see :class:`MLP`."""
    return MLP(in_shape=in_shape, num_classes=num_classes, hidden=hidden, dropout=dropout)


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


def build_model(name: str, *, in_shape: tuple[int, ...], num_classes: int, **options: object) -> MixModel:
    """Build the registered model ``name``; unknown names or options raise ``ValueError``."""
    return MODELS.build(name, in_shape=in_shape, num_classes=num_classes, **options)
