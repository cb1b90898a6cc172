"""Contract tests for mixlab.models: every registered model, small inputs, CPU only.

Parametrised over ``MODELS.names()`` so that a newly registered model is held to the same
contract the training loop relies on (mix points, embed/head split, gradients, formats).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from mixlab.models import MODELS, MixModel, build_model

# Digits-like, Fashion-MNIST-like and CIFAR-like images; tabular only for models that take it.
IMAGE_SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
TABULAR_SHAPE = (2,)
TABULAR_MODELS = {"mlp"}
# Text models read token ids (B, L): 16 tokens of a 50-word vocabulary, padded at the end.
TEXT_SHAPE, VOCAB = (16,), 50
TEXT_MODELS = {"textcnn", "transformer"}
DETECTORS = {"fcos"}  # not MixModels (no classifier, no mix points): tests/test_detection.py holds them
MIX_MODELS = [n for n in MODELS.names() if n not in DETECTORS]

# Narrow variants keep the file fast; a model missing here is tested at its defaults.
SMALL_OPTIONS: dict[str, dict[str, object]] = {
    "mlp": {"hidden": (32, 16, 8)},
    "cnn": {"width": 8},
    "preact_resnet18": {"width": 8},
    "wrn": {"depth": 10, "widen": 2},
    "textcnn": {"dim": 8, "filters": 4},
    "transformer": {"dim": 8, "heads": 2, "ff": 16, "layers": 2},
}
NUM_CLASSES = 5
BATCH = 4


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These tensors are tiny: with several threads, OpenMP synchronisation dominates, and
    # on a shared 2-core machine it degrades ~10x. One thread keeps the file fast and stable.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _cases() -> list[tuple[str, tuple[int, ...]]]:
    cases = []
    for name in MIX_MODELS:
        shapes = [TEXT_SHAPE] if name in TEXT_MODELS else IMAGE_SHAPES + ([TABULAR_SHAPE] if name in TABULAR_MODELS else [])
        cases += [(name, shape) for shape in shapes]
    return cases


CASES = _cases()
CASE_IDS = [f"{name}-{'x'.join(map(str, shape))}" for name, shape in CASES]
IMAGE_CASES = [(n, s) for n, s in CASES if len(s) == 3]
IMAGE_IDS = [f"{name}-{'x'.join(map(str, shape))}" for name, shape in IMAGE_CASES]


def _small(name: str, in_shape: tuple[int, ...], *, seed: int = 0) -> MixModel:
    torch.manual_seed(seed)
    text = {"vocab_size": VOCAB} if name in TEXT_MODELS else {}
    return build_model(name, in_shape=in_shape, num_classes=NUM_CLASSES, **SMALL_OPTIONS.get(name, {}), **text)


def _shape(name: str) -> tuple[int, ...]:
    """A small input shape the model takes: token sequences for text models, 8x8 images for the rest."""
    return TEXT_SHAPE if name in TEXT_MODELS else (1, 8, 8)


def _input(in_shape: tuple[int, ...], *, batch: int = BATCH, seed: int = 1) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    if in_shape == TEXT_SHAPE:  # token ids, each row padded (id 0) after a different length
        ids = torch.randint(2, VOCAB, (batch, *in_shape), generator=gen)
        return ids * (torch.arange(in_shape[0]) < torch.arange(batch).unsqueeze(1) % in_shape[0] + 4)
    return torch.randn(batch, *in_shape, generator=gen)


def test_required_models_are_registered() -> None:
    assert {"mlp", "cnn", "preact_resnet18", "wrn"} <= set(MODELS.names())


@pytest.mark.parametrize(("name", "in_shape"), CASES, ids=CASE_IDS)
def test_shapes_and_attributes(name: str, in_shape: tuple[int, ...]) -> None:
    model = _small(name, in_shape).eval()
    assert isinstance(model, MixModel)
    assert model.num_classes == NUM_CLASSES
    assert model.in_shape == tuple(in_shape)
    # Valid points are the input plus block outputs, never the last block's output.
    assert 1 <= model.num_mix_points <= len(model.blocks)
    x = _input(in_shape)
    with torch.no_grad():
        emb = model.embed(x)
        logits = model(x)
    assert emb.shape == (BATCH, model.embed_dim)
    assert logits.shape == (BATCH, NUM_CLASSES)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(("name", "in_shape"), CASES, ids=CASE_IDS)
def test_default_options_build_and_run(name: str, in_shape: tuple[int, ...]) -> None:
    text = {"vocab_size": VOCAB} if name in TEXT_MODELS else {}
    model = build_model(name, in_shape=in_shape, num_classes=NUM_CLASSES, **text).eval()
    with torch.no_grad():
        logits = model(_input(in_shape, batch=2))
    assert logits.shape == (2, NUM_CLASSES)


@pytest.mark.parametrize(("name", "in_shape"), CASES, ids=CASE_IDS)
def test_forward_is_head_of_embed(name: str, in_shape: tuple[int, ...]) -> None:
    model = _small(name, in_shape).eval()
    x = _input(in_shape)
    with torch.no_grad():
        assert torch.equal(model(x), model.head(model.embed(x)))


@pytest.mark.parametrize(("name", "in_shape"), CASES, ids=CASE_IDS)
def test_identity_mix_at_every_point_is_exact(name: str, in_shape: tuple[int, ...]) -> None:
    model = _small(name, in_shape).eval()
    x = _input(in_shape)
    with torch.no_grad():
        plain = model(x)
        for k in range(model.num_mix_points):
            calls: list[torch.Size] = []

            def identity(h: Tensor, calls: list[torch.Size] = calls) -> Tensor:
                calls.append(h.shape)
                return h

            assert torch.equal(model(x, mix_at=k, mix=identity), plain), f"mix_at={k}"
            assert len(calls) == 1, f"mix must run exactly once at mix_at={k}, ran {len(calls)} times"


@pytest.mark.parametrize(("name", "in_shape"), CASES, ids=CASE_IDS)
def test_mix_sees_the_output_of_block_k(name: str, in_shape: tuple[int, ...]) -> None:
    # Point k is the input (k = 0) or the output of block k: check against a manual walk.
    model = _small(name, in_shape).eval()
    x = _input(in_shape)
    with torch.no_grad():
        expected = x if model.stem is None else model.stem(x)  # text: point 0 is the embedded sequence
        for k in range(model.num_mix_points):
            if k > 0:
                expected = model.blocks[k - 1](expected)
            seen: list[Tensor] = []

            def record(h: Tensor, seen: list[Tensor] = seen) -> Tensor:
                seen.append(h.clone())
                return h

            model.embed(x, mix_at=k, mix=record)
            assert torch.equal(seen[0], expected), f"mix_at={k} did not see the output of block {k}"


@pytest.mark.parametrize(("name", "in_shape"), CASES, ids=CASE_IDS)
def test_flip_mix_equals_flipped_input(name: str, in_shape: tuple[int, ...]) -> None:
    # In eval mode every sample is processed independently, so permuting the batch at any
    # point must equal permuting the input; at point 0 this is the spec's exact check.
    model = _small(name, in_shape).eval()
    x = _input(in_shape)
    with torch.no_grad():
        expected = model(x.flip(0))
        for k in range(model.num_mix_points):
            got = model(x, mix_at=k, mix=lambda h: h.flip(0))
            torch.testing.assert_close(got, expected, msg=lambda m, k=k: f"mix_at={k}: {m}")


@pytest.mark.parametrize(("name", "in_shape"), CASES, ids=CASE_IDS)
def test_mixing_changes_the_output(name: str, in_shape: tuple[int, ...]) -> None:
    model = _small(name, in_shape).eval()
    x = _input(in_shape)
    with torch.no_grad():
        plain = model(x)
        for k in range(model.num_mix_points):
            mixed = model(x, mix_at=k, mix=lambda h: 0.5 * h + 0.5 * h.flip(0))
            assert not torch.allclose(mixed, plain), f"mix at mix_at={k} had no effect"


@pytest.mark.parametrize(("name", "in_shape"), CASES, ids=CASE_IDS)
def test_hidden_mix_points_are_not_input_mixup(name: str, in_shape: tuple[int, ...]) -> None:
    # A hidden point that is a linear function of the input (a bare stem conv) mixes exactly
    # like the input: manifold mixup there is input mixup in disguise. In float64 the two
    # agree to ~1e-15, so anything above 1e-6 of the logits' scale is a genuine difference.
    model = _small(name, in_shape).double().eval()
    x = _input(in_shape)
    x = x if x.dtype == torch.int64 else x.double()  # token ids stay ids

    def mix(h: Tensor) -> Tensor:
        return 0.7 * h + 0.3 * h.flip(0)

    with torch.no_grad():
        input_mixed = model(x, mix_at=0, mix=mix)
        scale = input_mixed.abs().max().item()
        for k in range(1, model.num_mix_points):
            delta = (model(x, mix_at=k, mix=mix) - input_mixed).abs().max().item()
            assert delta > 1e-6 * scale, f"mix_at={k} equals input mixup: max |dlogits| {delta:.1e}, scale {scale:.1e}"


@pytest.mark.parametrize(("name", "hidden_channels"), [("preact_resnet18", (8, 16)), ("wrn", (32, 64))])
def test_residual_mix_points_are_verma_layers(name: str, hidden_channels: tuple[int, int]) -> None:
    # Verma et al. (2019) mix at the input, after residual stage 1 or after stage 2: the
    # hidden points are the stage outputs (stage width, stride 1 then 2), never the stem.
    model = _small(name, (3, 32, 32)).eval()
    assert model.num_mix_points == 3
    expected = [(BATCH, 3, 32, 32), (BATCH, hidden_channels[0], 32, 32), (BATCH, hidden_channels[1], 16, 16)]
    with torch.no_grad():
        for k, shape in enumerate(expected):
            seen: list[torch.Size] = []
            model(_input((3, 32, 32)), mix_at=k, mix=lambda h, seen=seen: seen.append(h.shape) or h)
            assert seen == [shape], f"mix_at={k}"


@pytest.mark.parametrize(("name", "in_shape"), CASES, ids=CASE_IDS)
def test_gradients_reach_every_parameter(name: str, in_shape: tuple[int, ...]) -> None:
    model = _small(name, in_shape).train()
    x = _input(in_shape)
    y = torch.arange(BATCH) % NUM_CLASSES
    loss = nn.functional.cross_entropy(model(x, mix_at=0, mix=lambda h: 0.7 * h + 0.3 * h.flip(0)), y)
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"parameters without gradient: {dead}"


@pytest.mark.parametrize("name", MIX_MODELS)
def test_invalid_mix_at_is_rejected(name: str) -> None:
    model = _small(name, _shape(name))
    x = _input(_shape(name))
    for bad in (-1, model.num_mix_points, 99):
        with pytest.raises(ValueError, match=rf"mix_at={bad}\b"):
            model(x, mix_at=bad, mix=lambda h: h)
    for bad in (1.0, "1", True):
        with pytest.raises(ValueError, match=repr(bad).replace(".", r"\.")):
            model(x, mix_at=bad, mix=lambda h: h)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"mix_at=0 .*without a mix"):
        model(x, mix_at=0)
    with pytest.raises(ValueError, match=r"mix_at=0 .*without a mix"):
        model.embed(x, mix_at=0, mix=None)


@pytest.mark.parametrize("name", MIX_MODELS)
def test_mix_that_changes_shape_is_rejected(name: str) -> None:
    model = _small(name, _shape(name))
    with pytest.raises(ValueError, match="shape"):
        model(_input(_shape(name)), mix_at=0, mix=lambda h: h[:2])


@pytest.mark.parametrize("name", MIX_MODELS)
def test_integer_like_mix_at_is_accepted(name: str) -> None:
    # The loop may sample k with numpy or torch; both must work like a plain int.
    model = _small(name, _shape(name)).eval()
    x = _input(_shape(name))
    with torch.no_grad():
        plain = model(x)
        for k in (np.int64(0), torch.tensor(0)):
            assert torch.equal(model(x, mix_at=k, mix=lambda h: h), plain)  # type: ignore[arg-type]
        # A mix without a point is not applied (the contract keys on mix_at).
        assert torch.equal(model(x, mix=lambda h: h.flip(0)), plain)


@pytest.mark.parametrize("name", sorted(set(MIX_MODELS) - TABULAR_MODELS - TEXT_MODELS))
@pytest.mark.parametrize("in_shape", [(2,), (28, 28), (1, 3, 32, 32)])
def test_conv_models_reject_non_image_shapes(name: str, in_shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"in_shape=" + repr(in_shape).replace("(", r"\(").replace(")", r"\)")):
        build_model(name, in_shape=in_shape, num_classes=NUM_CLASSES)


def test_cnn_rejects_images_smaller_than_8() -> None:
    with pytest.raises(ValueError, match=r"\(1, 7, 8\)"):
        build_model("cnn", in_shape=(1, 7, 8), num_classes=NUM_CLASSES)


@pytest.mark.parametrize("depth", [4, 15, 20, 30, 0])
def test_wrn_rejects_bad_depth(depth: int) -> None:
    with pytest.raises(ValueError, match=rf"^depth={depth}: expected"):
        build_model("wrn", in_shape=(3, 32, 32), num_classes=10, depth=depth)


@pytest.mark.parametrize(
    ("name", "options", "value"),
    [
        ("mlp", {"hidden": ()}, "()"),
        ("mlp", {"hidden": (32, 0)}, "(32, 0)"),
        ("mlp", {"dropout": 1.0}, "1.0"),
        ("cnn", {"width": 0}, "0"),
        ("preact_resnet18", {"width": -1}, "-1"),
        ("wrn", {"widen": 0}, "0"),
        ("wrn", {"dropout": -0.1}, "-0.1"),
    ],
)
def test_bad_options_are_rejected(name: str, options: dict[str, object], value: str) -> None:
    option = next(iter(options))
    with pytest.raises(ValueError) as info:
        build_model(name, in_shape=(1, 28, 28), num_classes=NUM_CLASSES, **options)
    assert option in str(info.value) and value in str(info.value)


def test_bad_num_classes_and_unknown_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="^num_classes=0: expected"):
        build_model("mlp", in_shape=(2,), num_classes=0)
    with pytest.raises(ValueError, match="'resnet50'"):
        build_model("resnet50", in_shape=(3, 32, 32), num_classes=10)
    with pytest.raises(ValueError, match="'widht'"):
        build_model("cnn", in_shape=(3, 32, 32), num_classes=10, widht=8)


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_published_parameter_counts() -> None:
    preact = build_model("preact_resnet18", in_shape=(3, 32, 32), num_classes=10)
    assert abs(_num_params(preact) - 11.17e6) <= 0.05e6, _num_params(preact)
    wide = build_model("wrn", in_shape=(3, 32, 32), num_classes=10, depth=28, widen=10)
    assert abs(_num_params(wide) - 36.5e6) <= 0.1e6, _num_params(wide)
    assert wide.embed_dim == 640 and preact.embed_dim == 512
    # Stem folded into stage 1: blocks [stem + stage1, stage2, ...], points input, stage1, stage2.
    assert preact.num_mix_points == 3 and len(preact.blocks) == 4
    assert wide.num_mix_points == 3 and len(wide.blocks) == 3


def test_mlp_mix_points_are_input_and_inner_hidden_layers() -> None:
    model = build_model("mlp", in_shape=(2,), num_classes=3, hidden=(16, 8, 4))
    assert len(model.blocks) == 3 and model.num_mix_points == 3 and model.embed_dim == 4


@pytest.mark.parametrize(("name", "in_shape"), IMAGE_CASES, ids=IMAGE_IDS)
def test_channels_last_matches_contiguous(name: str, in_shape: tuple[int, ...]) -> None:
    model = _small(name, in_shape).eval()
    x = _input(in_shape)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(model(x_cl), expected, rtol=1e-5, atol=1e-5)
        model = model.to(memory_format=torch.channels_last)
        torch.testing.assert_close(model(x_cl), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model(x_cl, mix_at=0, mix=lambda h: h), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("name", "in_shape"), CASES, ids=CASE_IDS)
def test_bf16_autocast_forward_and_backward(name: str, in_shape: tuple[int, ...]) -> None:
    model = _small(name, in_shape).train()
    x = _input(in_shape)
    y = torch.arange(BATCH) % NUM_CLASSES
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x, mix_at=model.num_mix_points - 1, mix=lambda h: 0.5 * h + 0.5 * h.flip(0))
        loss = nn.functional.cross_entropy(logits.float(), y)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", MIX_MODELS)
def test_same_seed_same_init(name: str) -> None:
    a, b, c = (_small(name, _shape(name), seed=s) for s in (7, 7, 8))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize(
    ("name", "in_shape", "options"),
    [("mlp", (2, 4, 4), {"hidden": (64, 64)}), ("cnn", (1, 8, 8), {"width": 8})],
)
def test_overfits_random_labels(name: str, in_shape: tuple[int, ...], options: dict[str, object]) -> None:
    # Memorising 64 random labels proves every part of the model can learn, not just the head.
    torch.manual_seed(0)
    model = build_model(name, in_shape=in_shape, num_classes=10, **options)
    x = _input(in_shape, batch=64, seed=3)
    y = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    accuracy = 0.0
    for step in range(1, 401):
        model.train()
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0:
            # Eval mode: the memorisation must survive BatchNorm's running statistics.
            model.eval()
            with torch.no_grad():
                accuracy = (model(x).argmax(1) == y).float().mean().item()
            if accuracy == 1.0:
                break
    assert accuracy == 1.0, f"{name} reached only {accuracy:.1%} train accuracy after {step} steps"
