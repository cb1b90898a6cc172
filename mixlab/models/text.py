"""Text classifiers over token ids, mixed on their embeddings (token ids cannot be blended).

The stem, :class:`TokenEmbedding`, maps ids ``(B, L)`` to ``(B, L, D + 1)``: D embedding channels
and, last, the padding mask (1 for a token, 0 for padding; id 0 is padding). Mix point 0 is its
output, so ``mixer=input`` blends the embedded sequences (wordMixup, Guo et al. 2019) and the mask
channel with them: a blend of a token and padding has mask λ or 1 − λ, above 0, so the mixed
sequence keeps every position either sequence had (the masks are OR-ed, neither is truncated);
a position padded in both stays 0. Later points are the models' hidden states (``mixer=manifold``:
senMixup mixes the pooled sentence embedding of :class:`TextCNN`; TMix, Chen et al. 2020, a hidden
layer of :class:`TextTransformer`), which carry the mask channel along too.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .base import MAX_DEPTH, MAX_HIDDEN, MAX_WIDTH, MODELS, MixModel, _check_dropout, _check_positive_int, _is_int

MAX_VOCAB, MAX_SEQ = 10_000_000, 100_000


def _text_shape(model: str, in_shape: tuple[int, ...], vocab_size: object) -> int:
    if vocab_size is None:
        raise ValueError(f"model={model} reads token ids; expected a text data set (e.g. data=austen), got inputs of "
                         f"shape {tuple(in_shape)}")
    _check_positive_int("vocab_size", vocab_size, MAX_VOCAB)
    if len(in_shape) != 1:
        raise ValueError(f"model={model} reads token sequences (L,), got in_shape={tuple(in_shape)!r}")
    return _check_positive_int("sequence length", in_shape[0], MAX_SEQ)


def _mask(h: Tensor) -> Tensor:
    """The (B, L) mask of a stem output (or a blend of two): a position is kept if either sequence had a
    token there."""
    return h[..., -1] > 0


class TokenEmbedding(nn.Module):
    """``(B, L)`` int64 ids -> ``(B, L, dim + 1)``: the embeddings (padding embeds to 0) and the mask."""

    def __init__(self, vocab_size: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=0)
        nn.init.normal_(self.embedding.weight, std=dim ** -0.5)
        with torch.no_grad():
            self.embedding.weight[0].zero_()

    def forward(self, ids: Tensor) -> Tensor:
        mask = (ids != 0).to(self.embedding.weight.dtype).unsqueeze(-1)
        return torch.cat([self.embedding(ids), mask], dim=-1)


class _ConvMaxPool(nn.Module):
    """Kim (2014): 1-D convolutions of several widths over the embeddings, ReLU, max over the positions
    the mask keeps (a window is kept where its first position is) -> ``(B, len(widths) * filters)``."""

    def __init__(self, dim: int, widths: Sequence[int], filters: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(dim, filters, w, padding=w - 1) for w in widths)

    def forward(self, h: Tensor) -> Tensor:
        emb, keep = h[..., :-1].transpose(1, 2), _mask(h)  # (B, D, L), (B, L)
        pooled = []
        for conv in self.convs:
            z = torch.relu(conv(emb))[..., : keep.shape[1]]  # (B, F, L): window starting at each position
            z = z.masked_fill(~keep.unsqueeze(1), float("-inf")).amax(-1)
            pooled.append(torch.where(torch.isfinite(z), z, torch.zeros_like(z)))  # an all-padding row: 0
        return torch.cat(pooled, dim=1)


class TextCNN(MixModel):
    """Kim (2014)'s CNN for sentence classification: token embeddings, convolutions of widths
    ``widths`` (``filters`` each), ReLU, max over time, dropout, linear.

    Blocks: ``[conv + max-pool, dropout]``; mix points: 0 = the embedded sequence (wordMixup), 1 = the
    pooled sentence embedding (senMixup, Guo et al. 2019), reached by ``mixer=manifold``."""

    def __init__(self, *, in_shape: tuple[int, ...], num_classes: int, vocab_size: int, dim: int = 128,
                 widths: Sequence[int] = (3, 4, 5), filters: int = 100, dropout: float = 0.5) -> None:
        _text_shape("textcnn", in_shape, vocab_size)
        dim = _check_positive_int("dim", dim, MAX_WIDTH)
        filters = _check_positive_int("filters", filters, MAX_HIDDEN)
        if not widths or not all(_is_int(w) and 1 <= w <= 32 for w in widths):
            raise ValueError(f"widths={list(widths)!r}: expected a non-empty list of integers in 1..32")
        dropout = _check_dropout("dropout", dropout)
        super().__init__(in_shape=in_shape, num_classes=num_classes,
                         blocks=[_ConvMaxPool(dim, widths, filters), nn.Dropout(dropout)], pool=nn.Identity(),
                         embed_dim=len(widths) * filters, stem=TokenEmbedding(vocab_size, dim))


@MODELS.register("textcnn")
def textcnn(*, in_shape: tuple[int, ...], num_classes: int, vocab_size: int | None = None, dim: int = 128,
            widths: Sequence[int] = (3, 4, 5), filters: int = 100, dropout: float = 0.5) -> MixModel:
    """Kim's TextCNN; see :class:`TextCNN` (``vocab_size`` comes from the data set)."""
    return TextCNN(in_shape=in_shape, num_classes=num_classes, vocab_size=vocab_size, dim=dim, widths=widths,
                   filters=filters, dropout=dropout)


class _EncoderLayer(nn.Module):
    """One pre-norm transformer encoder layer on ``(B, L, D + 1)`` (the mask channel last, passed on as it
    is); the first layer adds the learned positions. Padding is masked out of attention; a row with no
    token at all attends to its first position, so it stays finite."""

    own_init = True  # PyTorch's initialisation of attention and feed-forward weights, not MixModel's He init

    def __init__(self, dim: int, heads: int, ff: int, dropout: float, positions: int | None) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(dim, heads, ff, dropout, activation="gelu", batch_first=True,
                                                norm_first=True)
        self.positions = None if positions is None else nn.Parameter(torch.randn(positions, dim) * dim ** -0.5)

    def forward(self, h: Tensor) -> Tensor:
        x, mask = h[..., :-1], h[..., -1:]
        if self.positions is not None:  # the same for both sequences of a blend: mixing before or after is alike
            x = x + self.positions[: x.shape[1]]
        pad = ~_mask(h)
        pad[:, 0] &= pad.any(1) & ~pad.all(1)  # an all-padding row keeps position 0
        return torch.cat([self.layer(x, src_key_padding_mask=pad), mask], dim=-1)


class _MaskedMean(nn.Module):
    """``(B, L, D + 1) -> (B, D)``: the mean over the positions the mask keeps (0 for a row with none)."""

    def forward(self, h: Tensor) -> Tensor:
        keep = _mask(h).unsqueeze(-1).to(h.dtype)
        return (h[..., :-1] * keep).sum(1) / keep.sum(1).clamp_min(1.0)


class TextTransformer(MixModel):
    """A small transformer encoder: token embeddings, learned positions, ``layers`` pre-norm encoder
    layers (``heads`` heads, feed-forward width ``ff``, GELU), mean over the tokens, linear.

    Blocks: one per layer; mix points: 0 = the embedded sequence, k = the output of layer k (k <
    ``layers``), as TMix (Chen et al. 2020) mixes hidden layers of an encoder."""

    def __init__(self, *, in_shape: tuple[int, ...], num_classes: int, vocab_size: int, dim: int = 128,
                 layers: int = 2, heads: int = 4, ff: int = 256, dropout: float = 0.1) -> None:
        length = _text_shape("transformer", in_shape, vocab_size)
        dim = _check_positive_int("dim", dim, MAX_WIDTH)
        layers = _check_positive_int("layers", layers, MAX_DEPTH)
        heads = _check_positive_int("heads", heads, MAX_WIDTH)
        if dim % heads:
            raise ValueError(f"heads={heads!r}: expected a divisor of dim={dim}")
        ff = _check_positive_int("ff", ff, MAX_HIDDEN)
        dropout = _check_dropout("dropout", dropout)
        blocks = [_EncoderLayer(dim, heads, ff, dropout, length if i == 0 else None) for i in range(layers)]
        super().__init__(in_shape=in_shape, num_classes=num_classes, blocks=blocks, pool=_MaskedMean(),
                         embed_dim=dim, num_mix_points=layers, stem=TokenEmbedding(vocab_size, dim))


@MODELS.register("transformer")
def transformer(*, in_shape: tuple[int, ...], num_classes: int, vocab_size: int | None = None, dim: int = 128,
                layers: int = 2, heads: int = 4, ff: int = 256, dropout: float = 0.1) -> MixModel:
    """A small transformer encoder; see :class:`TextTransformer` (``vocab_size`` comes from the data set)."""
    return TextTransformer(in_shape=in_shape, num_classes=num_classes, vocab_size=vocab_size, dim=dim, layers=layers,
                           heads=heads, ff=ff, dropout=dropout)
