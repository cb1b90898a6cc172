"""A multilayer perceptron for flat (tabular) inputs, with a mix point after each hidden layer."""
from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from .base import MAX_HIDDEN, MODELS, MixModel, _check_dropout, _check_in_shape, _is_int


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


@MODELS.register("mlp")
def mlp(
    *, in_shape: tuple[int, ...], num_classes: int, hidden: Sequence[int] = (512, 256), dropout: float = 0.0
) -> MixModel:
    """MLP on flattened input; see :class:`MLP`."""
    return MLP(in_shape=in_shape, num_classes=num_classes, hidden=hidden, dropout=dropout)
