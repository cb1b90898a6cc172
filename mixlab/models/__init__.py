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
from . import detection, tabular, text, vision  # noqa: F401 - registers their builders
from .base import MODELS, MixModel, build_model
from .tabular import MLP
from .text import TextCNN, TextTransformer, TokenEmbedding
from .vision import PreActBlock, PreActResNet18, SimpleCNN, WideResNet

__all__ = ["MODELS", "MixModel", "MLP", "SimpleCNN", "PreActBlock", "PreActResNet18", "TextCNN", "TextTransformer", "TokenEmbedding",
           "WideResNet", "build_model"]
