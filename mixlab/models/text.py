"""Text classifiers over token ids, mixed on their embeddings (token ids cannot be blended).

The stem, :class:`TokenEmbedding`, maps ids ``(B, L)`` to ``(B, L, D + 1)``: D embedding channels
(0 at padding) and, last, the padding mask m (1 for a token, 0 for padding; id 0 is padding). Mix
point 0 is its output, so ``mixer=input`` blends the embedded sequences (wordMixup, Guo et al. 2019,
"Augmenting Data with Mixup for Sentence Classification") and the mask channel with them, which then
holds m̃ = λ·m_i + (1 − λ)·m_j. Later points are the models' hidden states (``mixer=manifold``:
senMixup mixes the pooled sentence embedding of :class:`TextCNN`; TMix, Chen et al. 2020, "MixText",
ACL, a hidden layer of :class:`TextTransformer`), which carry the mask channel along too.

Padding under mixing. Both papers pad every sequence to one fixed length and blend all positions,
padding included, with nothing masked (Guo et al. zero-pad and pool over every position; the TMix
code, GT-SALT/MixText ``code/mixtext.py``, calls its encoder without an attention mask, so padding is
attended and averaged). They are silent on what a padding mask should do in a blend; mixlab masks
padding (a passage's logits do not depend on how much padding follows it; the stem multiplies the
embeddings by m, so padding embeds to 0 whatever row 0 of the table holds) and ``mask_mix`` says how
the blended mask m̃ is read:

- ``soft`` (the default): m̃ weights every position, so the blend is continuous in λ and λ = 1 is
  the sample alone, bit for bit. Attention adds log m̃ to each key's score (a position of weight w
  counts w times; log 0 = −inf: a position neither sequence has is not attended), the mean over
  tokens is weighted by m̃, and TextCNN's max over time takes the max of m̃ × activation. A
  transformer layer sets its outputs where the mask is 0 to 0, so a sequence's padded positions are
  0 at every mix point and a blend takes nothing from them (at a position only the partner has,
  the blend is (1 − λ) × the partner's state, with weight 1 − λ).
- ``union`` (runs recorded before ``model.mask_mix`` existed): a position counts fully where either
  sequence has a token, m̃ > 0 (the OR of the masks), and a transformer layer's outputs at padded
  positions are blended as they are. A partner of weight 1e-6 then adds its extra positions at full
  strength, so logits jump as λ leaves 1 while the recorded mixing strength is ≈ 0 (untrained, default
  sizes, 64 tokens, λ = 1 − 1e-6: a transformer's by 0.2–0.3 mixed at the embeddings, 0.07–0.09 at
  layer 1; textcnn's by 0.01–0.02; ``tests/test_text_masks.py``).

On an unmixed batch (evaluation, ``lambda=none``) both forms give the same logits (textcnn bit for
bit, the transformer up to rounding): they differ only where two sequences of different padding
are blended.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
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


MASK_MIXES = ("soft", "union")


def _check_mask_mix(value: object) -> bool:
    """``mask_mix`` -> whether it is ``soft``; anything but ``soft | union`` is a one-line error."""
    if not isinstance(value, str) or value not in MASK_MIXES:
        raise ValueError(f"mask_mix={value!r}: expected {' | '.join(MASK_MIXES)}")
    return value == "soft"


def _mask(h: Tensor) -> Tensor:
    """``union``: the (B, L) mask of a stem output (or a blend of two): a position is kept if either
    sequence had a token there."""
    return h[..., -1] > 0


def _weights(h: Tensor, soft: bool) -> Tensor:
    """The (B, L) weight of each position: ``soft``, the blended mask m̃ itself; ``union``, 1 where m̃ > 0.
    Detached: the mask is data, not something to learn (and log 0's gradient would be NaN)."""
    m = h[..., -1].detach()
    return m if soft else (m > 0).to(h.dtype)


class TokenEmbedding(nn.Module):
    """``(B, L)`` int64 ids -> ``(B, L, dim + 1)``: the embeddings times the mask (padding embeds to 0,
    whatever row 0 of the table holds) and the mask."""

    def __init__(self, vocab_size: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=0)
        nn.init.normal_(self.embedding.weight, std=dim ** -0.5)
        with torch.no_grad():
            self.embedding.weight[0].zero_()

    def forward(self, ids: Tensor) -> Tensor:
        mask = (ids != 0).to(self.embedding.weight.dtype).unsqueeze(-1)
        return torch.cat([self.embedding(ids) * mask, mask], dim=-1)


class _ConvMaxPool(nn.Module):
    """Kim (2014): 1-D convolutions of several widths over the embeddings, ReLU, max over time ->
    ``(B, len(widths) * filters)``. A window counts as its last position does (padding trails, so a
    passage's kept windows hold its tokens only): ``soft``, the max of m̃ × activation (activations are
    ≥ 0, so weight 0 never wins and an all-padding row gives 0); ``union``, the max over the positions
    with m̃ > 0 (0 for a row with none)."""

    def __init__(self, dim: int, widths: Sequence[int], filters: int, soft: bool) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(dim, filters, w, padding=w - 1) for w in widths)
        self.soft = soft

    def forward(self, h: Tensor) -> Tensor:
        emb, length = h[..., :-1].transpose(1, 2), h.shape[1]  # (B, D, L)
        windows = [torch.relu(conv(emb))[..., :length] for conv in self.convs]  # (B, F, L): the one ending at each
        if self.soft:
            weight = _weights(h, True).unsqueeze(1).to(windows[0].dtype)  # (B, 1, L)
            return torch.cat([(z * weight).amax(-1) for z in windows], dim=1)
        pooled = []
        for z in windows:
            z = z.masked_fill(~_mask(h).unsqueeze(1), float("-inf")).amax(-1)
            pooled.append(torch.where(torch.isfinite(z), z, torch.zeros_like(z)))  # an all-padding row: 0
        return torch.cat(pooled, dim=1)


class TextCNN(MixModel):
    """Kim (2014)'s CNN for sentence classification: token embeddings, convolutions of widths
    ``widths`` (``filters`` each), ReLU, max over time, dropout, linear.

    Blocks: ``[conv + max-pool, dropout]``; mix points: 0 = the embedded sequence (wordMixup), 1 = the
    pooled sentence embedding (senMixup, Guo et al. 2019), reached by ``mixer=manifold``. ``mask_mix``
    (``soft | union``) says how the max over time reads a blended mask (see the module's docstring);
    the sentence embedding has no positions, so it only matters at point 0."""

    def __init__(self, *, in_shape: tuple[int, ...], num_classes: int, vocab_size: int, dim: int = 128,
                 widths: Sequence[int] = (3, 4, 5), filters: int = 100, dropout: float = 0.5,
                 mask_mix: str = "soft") -> None:
        _text_shape("textcnn", in_shape, vocab_size)
        soft = _check_mask_mix(mask_mix)
        dim = _check_positive_int("dim", dim, MAX_WIDTH)
        filters = _check_positive_int("filters", filters, MAX_HIDDEN)
        if not widths or not all(_is_int(w) and 1 <= w <= 32 for w in widths):
            raise ValueError(f"widths={list(widths)!r}: expected a non-empty list of integers in 1..32")
        dropout = _check_dropout("dropout", dropout)
        super().__init__(in_shape=in_shape, num_classes=num_classes,
                         blocks=[_ConvMaxPool(dim, widths, filters, soft), nn.Dropout(dropout)], pool=nn.Identity(),
                         embed_dim=len(widths) * filters, stem=TokenEmbedding(vocab_size, dim))


@MODELS.register("textcnn")
def textcnn(*, in_shape: tuple[int, ...], num_classes: int, vocab_size: int | None = None, dim: int = 128,
            widths: Sequence[int] = (3, 4, 5), filters: int = 100, dropout: float = 0.5,
            mask_mix: str = "soft") -> MixModel:
    """Kim's TextCNN; see :class:`TextCNN` (``vocab_size`` comes from the data set)."""
    return TextCNN(in_shape=in_shape, num_classes=num_classes, vocab_size=vocab_size, dim=dim, widths=widths,
                   filters=filters, dropout=dropout, mask_mix=mask_mix)


class _EncoderLayer(nn.Module):
    """One pre-norm transformer encoder layer on ``(B, L, D + 1)`` (the mask channel last, passed on as it
    is); the first layer adds the learned positions. ``soft``: each key's score gets log m̃ added (padding
    is not attended, a blended position by its weight) and the outputs where m̃ = 0 are set to 0, so a
    later blend takes nothing from a sequence's padding; ``union``: keys with m̃ = 0 are masked, outputs
    kept. A row with no token at all attends to its first position, so it stays finite."""

    own_init = True  # PyTorch's initialisation of attention and feed-forward weights, not MixModel's He init

    def __init__(self, dim: int, heads: int, ff: int, dropout: float, positions: int | None, soft: bool) -> None:
        super().__init__()
        self.soft = soft
        self.layer = nn.TransformerEncoderLayer(dim, heads, ff, dropout, activation="gelu", batch_first=True,
                                                norm_first=True)
        self.positions = None if positions is None else nn.Parameter(torch.randn(positions, dim) * dim ** -0.5)

    def forward(self, h: Tensor) -> Tensor:
        x, mask = h[..., :-1], h[..., -1:]
        if self.positions is not None:  # the same for both sequences of a blend: mixing before or after is alike
            x = x + self.positions[: x.shape[1]]
        if not self.soft:
            pad = ~_mask(h)
            pad[:, 0] &= pad.any(1) & ~pad.all(1)  # an all-padding row keeps position 0
            return torch.cat([self.layer(x, src_key_padding_mask=pad), mask], dim=-1)
        w = _weights(h, True)
        # The first position's weight is at least what the row lacks of one whole token: 1 for a row with
        # no token (it attends there, as union does), ≈ 1 for one blended with a sliver of a partner's
        # tokens (so that, too, is continuous in λ); any row with a token's weight in all is left as it is.
        first = torch.maximum(w[:, :1], 1.0 - w.sum(1, keepdim=True))
        out = self._weighted(x, torch.cat([first, w[:, 1:]], 1).log())
        return torch.cat([out.masked_fill(mask == 0, 0.0), mask], dim=-1)

    def _weighted(self, x: Tensor, bias: Tensor) -> Tensor:
        """``self.layer`` (pre-norm) with ``bias`` (B, L) added to every query's score of each key. Written
        out with its own modules: PyTorch's inference fast path (eval, no grad) reads a float key-padding
        mask as a boolean one (any value but 0 masks the key), which would weigh 1e-3 as 0."""
        layer, attn = self.layer, self.layer.self_attn
        b, length, d = x.shape
        qkv = F.linear(layer.norm1(x), attn.in_proj_weight, attn.in_proj_bias)
        q, k, v = qkv.view(b, length, 3, attn.num_heads, d // attn.num_heads).permute(2, 0, 3, 1, 4)  # (B, H, L, d)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias[:, None, None, :].to(q.dtype),
                                           dropout_p=attn.dropout if self.training else 0.0)
        x = x + layer.dropout1(attn.out_proj(a.transpose(1, 2).reshape(b, length, d)))
        return x + layer.dropout2(layer.linear2(layer.dropout(layer.activation(layer.linear1(layer.norm2(x))))))


class _MaskedMean(nn.Module):
    """``(B, L, D + 1) -> (B, D)``: the mean over the positions, weighted by m̃ (``soft``) or by m̃ > 0
    (``union``), divided by the total weight or 1 if that is less (0 for a row with none)."""

    def __init__(self, soft: bool) -> None:
        super().__init__()
        self.soft = soft

    def forward(self, h: Tensor) -> Tensor:
        keep = _weights(h, self.soft).unsqueeze(-1)
        return (h[..., :-1] * keep).sum(1) / keep.sum(1).clamp_min(1.0)


class TextTransformer(MixModel):
    """A small transformer encoder: token embeddings, learned positions, ``layers`` pre-norm encoder
    layers (``heads`` heads, feed-forward width ``ff``, GELU), mean over the tokens, linear.

    Blocks: one per layer; mix points: 0 = the embedded sequence, k = the output of layer k (k <
    ``layers``), as TMix (Chen et al. 2020) mixes hidden layers of an encoder. ``mask_mix`` (``soft |
    union``) says how attention, the mean and a blend read the padding (see the module's docstring)."""

    def __init__(self, *, in_shape: tuple[int, ...], num_classes: int, vocab_size: int, dim: int = 128,
                 layers: int = 2, heads: int = 4, ff: int = 256, dropout: float = 0.1,
                 mask_mix: str = "soft") -> None:
        length = _text_shape("transformer", in_shape, vocab_size)
        dim = _check_positive_int("dim", dim, MAX_WIDTH)
        layers = _check_positive_int("layers", layers, MAX_DEPTH)
        heads = _check_positive_int("heads", heads, MAX_WIDTH)
        if dim % heads:
            raise ValueError(f"heads={heads!r}: expected a divisor of dim={dim}")
        ff = _check_positive_int("ff", ff, MAX_HIDDEN)
        dropout = _check_dropout("dropout", dropout)
        soft = _check_mask_mix(mask_mix)
        blocks = [_EncoderLayer(dim, heads, ff, dropout, length if i == 0 else None, soft) for i in range(layers)]
        super().__init__(in_shape=in_shape, num_classes=num_classes, blocks=blocks, pool=_MaskedMean(soft),
                         embed_dim=dim, num_mix_points=layers, stem=TokenEmbedding(vocab_size, dim))


@MODELS.register("transformer")
def transformer(*, in_shape: tuple[int, ...], num_classes: int, vocab_size: int | None = None, dim: int = 128,
                layers: int = 2, heads: int = 4, ff: int = 256, dropout: float = 0.1,
                mask_mix: str = "soft") -> MixModel:
    """A small transformer encoder; see :class:`TextTransformer` (``vocab_size`` comes from the data set)."""
    return TextTransformer(in_shape=in_shape, num_classes=num_classes, vocab_size=vocab_size, dim=dim, layers=layers,
                           heads=heads, ff=ff, dropout=dropout, mask_mix=mask_mix)
