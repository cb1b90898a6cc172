"""The mix-point contract every model follows (:class:`MixModel`), the :data:`MODELS` registry,
:func:`build_model`, and the option checks the families share. The package's docstring
(``mixlab.models``) describes the contract.
"""
from __future__ import annotations

import operator
from collections.abc import Callable, Sequence

from torch import Tensor, nn

from ..engine.registry import Registry, is_number


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
    head and the weight initialisation live here once. A ``stem`` (text: the token embedding)
    runs before mix point 0, which is then its output: token ids cannot be blended, so the
    loop mixes text inside the model (``mixes_inside``), at the embeddings for ``mixer=input``.
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
        stem: nn.Module | None = None,
    ) -> None:
        super().__init__()
        # A stem turns inputs that cannot be blended (token ids) into ones that can (embeddings):
        # mix point 0 is then its output, and the loop mixes there instead of mixing x itself.
        self.stem = stem
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
        # A block with ``own_init = True`` (the transformer's layers, whose attention and feed-forward
        # weights PyTorch initialises for attention, not for ReLU stacks) keeps its own.
        own = {id(m) for block in self.modules() if getattr(block, "own_init", False) for m in block.modules()}
        for module in self.modules():
            if id(module) in own:
                continue
            if isinstance(module, (nn.Conv1d, nn.Conv2d)):
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
        h = x if self.stem is None else self.stem(x)
        if k == 0:
            h = self._apply_mix(mix, h, 0)  # type: ignore[arg-type]
        for i, block in enumerate(self.blocks, start=1):
            h = block(h)
            if k == i:
                h = self._apply_mix(mix, h, i)  # type: ignore[arg-type]
        return self.pool(h)

    @property
    def mixes_inside(self) -> bool:
        """Whether inputs are mixed after the stem (text), not by the loop before the forward."""
        return self.stem is not None

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


def build_model(name: str, *, in_shape: tuple[int, ...], num_classes: int, **options: object) -> MixModel:
    """Build the registered model ``name``; unknown names or options raise ``ValueError``."""
    return MODELS.build(name, in_shape=in_shape, num_classes=num_classes, **options)
