"""Tests of the mixing engine (mixlab.mixing) and of ``Mix`` composing pairing × λ × mixer.

* exactness of ``mix_inputs`` / ``mix_targets`` against a float64 reference (hypothesis),
  λ = 1 and λ = 0 bit-exact, dtypes kept, batch sizes 1, 2, odd and large;
* agreement with timm's ``Mixup`` (batch and elem modes) and torchvision's ``v2.MixUp``;
* no host-device synchronisation anywhere in a ``Mix`` call (a dispatch-mode detector);
* CutMix's applied λ measured from the output; the registries' error messages.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from mixlab import LAMBDAS, MIXERS, PAIRINGS, Mix, mix_inputs, mix_targets
from mixlab.engine.registry import Registry

FLOAT_DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
LOW_PRECISION = [torch.bfloat16, torch.float16]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
C = 5  # classes in the toy batches


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ref_mix(t: torch.Tensor, partner: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """The definition, in float64: λ_i t_i + (1 − λ_i) t_partner(i)."""
    t64, lam64 = t.double(), lam.double().view(-1, *([1] * (t.dim() - 1)))
    return lam64 * t64 + (1.0 - lam64) * t64[partner]


def ref_targets(y: torch.Tensor, partner, lam, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    one_hot = torch.zeros(y.shape[0], num_classes, dtype=torch.float64)
    one_hot[torch.arange(y.shape[0]), y] = 1.0
    return ref_mix(one_hot * (1 - smoothing) + smoothing / num_classes, partner, lam)


def atol_for(dtype: torch.dtype, scale: float) -> float:
    """Round-off allowance: λ itself is rounded to x's dtype (|Δλ| ≤ eps/2), plus the output rounding."""
    eps = torch.finfo(dtype).eps
    return (2 * eps if dtype in LOW_PRECISION else 8 * eps) * max(scale, 1e-30)


def toy_batch(b: int, *, dtype=torch.float32, seed: int = 0, device: str = "cpu"):
    g = gen(seed)
    x = torch.rand(b, 3, 6, 6, generator=g).to(device=device, dtype=dtype)
    y = torch.randint(0, C, (b,), generator=g).to(device)
    return x, y


MIX_OPTIONS = {  # per-policy options for end-to-end runs (others: defaults)
    "loss": {"per_sample": True, "num_samples": 4096},
}


def make_mix(lam: str, pairing: str = "random", mixer: str = "input", **kw) -> Mix:
    mix = Mix(lam=lam, pairing=pairing, mixer=mixer, num_classes=C, lam_kwargs=MIX_OPTIONS.get(lam),
              generator=gen(1), **kw)
    if lam == "loss":
        mix.observe(torch.tensor([1.0, 2.0, 0.5]), torch.tensor([0, 1, 2]))
    return mix


def needs_of(mix: Mix, x, y) -> dict:
    """What ``mix``'s mixer reads besides the batch (``Mixer.needs``), as the training step would give it."""
    given = {"input_grad": lambda: torch.randn(x.shape, generator=gen(5)).to(x), "targets": lambda: mix.clean_targets(y)}
    return {need: given[need]() for need in mix.needs}


# A learned mixer (AutoMix's Mix Block) needs a model attached first; tests/test_mixblock.py covers it
BARE = [n for n in MIXERS.names() if not hasattr(MIXERS.get(n), "attach")]


def run_mix(mix: Mix, x, y, *, observe: bool = True):
    b = x.shape[0]
    index = torch.arange(b, device=x.device)
    features = torch.randn(b, 8, generator=gen(3)).to(x.device)
    x_mix, y_mix = mix(x, y, features=features, index=index, progress=0.3, **needs_of(mix, x, y))
    if observe:
        mix.observe(torch.rand(b, generator=gen(4)).to(x.device), index)
    return x_mix, y_mix


# --------------------------------------------------------------------------- exactness: mix_inputs


@st.composite
def mixing_cases(draw):
    b = draw(st.integers(1, 33))
    trailing = tuple(draw(st.lists(st.integers(1, 5), min_size=0, max_size=3)))
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    seed = draw(st.integers(0, 2**31 - 1))
    g = gen(seed)
    scale = draw(st.sampled_from([1.0, 255.0, 1e-3]))
    x = (torch.randn((b,) + trailing, generator=g, dtype=torch.float64) * scale).to(dtype)
    permutation = draw(st.booleans())
    partner = torch.randperm(b, generator=g) if permutation else torch.randint(0, b, (b,), generator=g)
    lam = torch.rand(b, generator=g)
    lam[torch.rand(b, generator=g) < 0.2] = 0.0
    lam[torch.rand(b, generator=g) < 0.2] = 1.0
    return x, partner, lam


@settings(max_examples=60, deadline=None)
@given(case=mixing_cases())
def test_mix_inputs_matches_float64_reference(case):
    x, partner, lam = case
    out = mix_inputs(x, partner, lam)
    assert out.dtype == x.dtype and out.shape == x.shape and out.device == x.device
    ref = ref_mix(x, partner, lam)
    scale = float(x.double().abs().max()) if x.numel() else 1.0
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=atol_for(x.dtype, scale))
    # λ = 1 rows are x_i and λ = 0 rows are x_partner(i), bit for bit.
    ones, zeros = lam == 1, lam == 0
    assert torch.equal(out[ones], x[ones])
    assert torch.equal(out[zeros], x[partner][zeros])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("b", [1, 2, 7, 1024])
def test_lambda_one_is_identity_and_zero_is_partner_bitwise(b, dtype):
    x = (torch.randn(b, 3, 8, 8, generator=gen(b)) * 100).to(dtype)
    x[0, 0, 0, 0] = torch.finfo(dtype).max  # extreme values too: no a + 0·(b − a) overflow games
    x[-1, 0, 0, 1] = torch.finfo(dtype).tiny
    perm = torch.randperm(b, generator=gen(b + 1))
    assert torch.equal(mix_inputs(x, perm, torch.ones(b)), x)
    assert torch.equal(mix_inputs(x, perm, torch.zeros(b)), x[perm])
    for name in BARE:  # every mixer is the identity at λ = 1
        mixer = MIXERS.build(name)
        side = {need: torch.randn(x.shape, generator=gen(5)).to(x) for need in getattr(mixer, "needs", ())}
        out, applied = mixer(x, perm, torch.ones(b), generator=gen(), **side)
        assert torch.equal(out, x) and torch.equal(applied, torch.ones(b))


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("mixer", ["input", "manifold", "cutmix"])
def test_low_precision_dtype_kept_through_mix(dtype, mixer):
    x, y = toy_batch(8, dtype=dtype)
    for lam in ("beta", "distance", "sk"):
        x_mix, y_mix = Mix(lam=lam, pairing="random", mixer=mixer, num_classes=C, generator=gen())(x, y)
        assert x_mix.dtype == dtype and x_mix.shape == x.shape
        assert y_mix.dtype == torch.float32
        torch.testing.assert_close(y_mix.sum(1), torch.ones(8), rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_rows_are_mixed_with_the_float32_lambda_the_targets_use(dtype):
    # Manifold mixup under autocast mixes bf16 hidden states; λ rounded to bf16 (off by up to 0.2%)
    # made the blend and the float32 targets disagree. Now the blend is the float64 λ·x_i + (1 − λ)·x_j
    # rounded once: within half an ulp of the output dtype (plus float32 arithmetic), for every element.
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(512, 64, generator=g) * 3).to(dtype)
    partner = torch.randperm(512, generator=g)
    lam = torch.rand(512, generator=g)
    out = mix_inputs(x, partner, lam)
    assert out.dtype == dtype
    x64, l64 = x.double(), lam.double()[:, None]
    ref = l64 * x64 + (1 - l64) * x64[partner]
    ulp = torch.finfo(dtype).eps * torch.exp2(torch.floor(torch.log2(ref.abs().clamp_min(torch.finfo(dtype).tiny))))
    err = (out.double() - ref).abs()
    assert bool((err <= 0.505 * ulp).all()), float((err / ulp).max())  # float32 arithmetic, then one rounding


def test_pairing_and_lambda_ignore_the_callers_autocast():
    g = torch.Generator().manual_seed(1)
    feats = torch.relu(torch.randn(128, 64, generator=g) @ torch.randn(64, 256, generator=g)) + 3.0
    y = torch.randint(0, 10, (128,), generator=g)
    results = []
    for enabled in (False, True):
        mix = Mix(lam="distance", pairing="nearest", num_classes=10, generator=torch.Generator().manual_seed(2))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            mix(feats, y)
        results.append((mix.last.partner, mix.last.lam))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


def test_mix_inputs_gradients():
    # Manifold mixup backpropagates through the mix: d/dx and d/dλ of the definition.
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    lam = torch.rand(6, dtype=torch.float64, requires_grad=True)
    partner = torch.tensor([1, 1, 0, 5, 2, 3])  # not a permutation: row 1 feeds two rows
    assert torch.autograd.gradcheck(lambda x, lam: mix_inputs(x, partner, lam), (x, lam))
    h = torch.randn(8, 3, 4, 4, requires_grad=True)
    x_mix, y_mix = Mix(lam="distance", pairing="nearest", mixer="manifold", num_classes=C, generator=gen())(
        h, torch.arange(8) % C)
    (x_mix.square().sum() + y_mix.sum()).backward()
    assert h.grad is not None and bool(torch.isfinite(h.grad).all())


def test_mix_inputs_rejects_bad_arguments():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="partner"):
        mix_inputs(x, torch.arange(4, dtype=torch.int32), torch.ones(4))
    with pytest.raises(ValueError, match="partner"):
        mix_inputs(x, torch.arange(3), torch.ones(4))
    with pytest.raises(ValueError, match="lam"):
        mix_inputs(x, torch.arange(4), torch.ones(4, 1))
    with pytest.raises(ValueError, match="lam"):
        mix_inputs(x, torch.arange(4), torch.ones(4, dtype=torch.long))
    with pytest.raises(ValueError, match="batch"):
        mix_inputs(torch.tensor(1.0), torch.arange(1), torch.ones(1))


# --------------------------------------------------------------------------- exactness: mix_targets


@settings(max_examples=50, deadline=None)
@given(b=st.integers(1, 40), classes=st.integers(1, 12), seed=st.integers(0, 2**31 - 1),
       smoothing=st.one_of(st.just(0.0), st.just(0.1), st.floats(0.0, 0.95)))
def test_class_targets_sum_to_one_and_match_reference(b, classes, seed, smoothing):
    g = gen(seed)
    y = torch.randint(0, classes, (b,), generator=g)
    partner = torch.randint(0, b, (b,), generator=g)
    lam = torch.rand(b, generator=g)
    out = mix_targets(y, partner, lam, classes, smoothing)
    assert out.shape == (b, classes) and out.dtype == torch.float32
    torch.testing.assert_close(out.sum(1), torch.ones(b), rtol=0, atol=1e-6)
    torch.testing.assert_close(out.double(), ref_targets(y, partner, lam, classes, smoothing), rtol=0, atol=1e-6)
    assert bool((out >= 0).all())
    # Soft (B, C) targets go through the same arithmetic: the one-hot input gives the same answer.
    soft = torch.nn.functional.one_hot(y, classes).float()
    torch.testing.assert_close(mix_targets(soft, partner, lam, smoothing=smoothing), out, rtol=0, atol=1e-6)


def test_class_targets_at_lambda_one_are_exactly_one_hot():
    y = torch.tensor([0, 3, 2, 2])
    out = mix_targets(y, torch.tensor([1, 0, 3, 2]), torch.ones(4), 4)
    assert torch.equal(out, torch.eye(4)[y])
    smoothed = mix_targets(y, torch.tensor([1, 0, 3, 2]), torch.ones(4), 4, smoothing=0.2)
    torch.testing.assert_close(smoothed, torch.eye(4)[y] * 0.8 + 0.05)


@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 40), k=st.one_of(st.none(), st.integers(1, 6)),
       dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**31 - 1))
def test_regression_targets_mix_linearly(b, k, dtype, seed):
    g = gen(seed)
    y = (torch.randn((b,) if k is None else (b, k), generator=g, dtype=torch.float64) * 10).to(dtype)
    partner = torch.randint(0, b, (b,), generator=g)
    lam = torch.rand(b, generator=g)
    out = mix_targets(y, partner, lam)
    assert out.shape == y.shape and out.dtype == dtype
    torch.testing.assert_close(out.double(), ref_mix(y, partner, lam), rtol=0,
                               atol=atol_for(dtype, float(y.abs().max())))


def test_mix_targets_rejects_bad_arguments():
    p, lam = torch.arange(3), torch.ones(3)
    with pytest.raises(ValueError, match="num_classes"):
        mix_targets(torch.tensor([0, 1, 2]), p, lam)
    with pytest.raises(ValueError, match=r"1\.0"):
        mix_targets(torch.tensor([0, 1, 2]), p, lam, 3, smoothing=1.0)
    with pytest.raises(ValueError, match="regression"):
        mix_targets(torch.randn(3), p, lam, smoothing=0.1)
    with pytest.raises(ValueError, match=r"\(B,\)"):
        mix_targets(torch.zeros(3, 2, dtype=torch.long), p, lam, 3)


# --------------------------------------------------------------------------- Mix end to end


def check_mix_output(mix: Mix, x, y, x_mix, y_mix):
    b = x.shape[0]
    assert x_mix.shape == x.shape and x_mix.dtype == x.dtype and x_mix.device == x.device
    assert y_mix.shape == (b, C) and y_mix.dtype == torch.float32
    torch.testing.assert_close(y_mix.sum(1), torch.ones(b, device=x.device), rtol=0, atol=1e-6)
    partner, lam = mix.last.partner, mix.last.lam
    assert partner.shape == (b,) and partner.dtype == torch.int64 and partner.device == x.device
    assert bool(((partner >= 0) & (partner < b)).all())
    assert lam.shape == (b,) and lam.dtype == torch.float32 and lam.device == x.device
    assert bool(((lam >= 0) & (lam <= 1)).all())
    # The recorded (partner, λ) are exactly what was applied, to inputs and targets.
    assert torch.equal(y_mix, mix_targets(y, partner, lam, C, mix.smoothing))
    if isinstance(mix.mixer, MIXERS.get("input")):
        assert torch.equal(x_mix, mix_inputs(x, partner, lam))


@pytest.mark.parametrize("b", [1, 2, 7, 1024])
@pytest.mark.parametrize("lam", LAMBDAS.names())
def test_mix_every_policy_end_to_end(lam, b):
    x, y = toy_batch(b)
    mix = make_mix(lam)
    check_mix_output(mix, x, y, *run_mix(mix, x, y))


@pytest.mark.parametrize("b", [1, 2, 7, 1024])
@pytest.mark.parametrize("pairing", PAIRINGS.names())
def test_mix_every_pairing_end_to_end(pairing, b):
    x, y = toy_batch(b)
    mix = make_mix("beta", pairing)
    check_mix_output(mix, x, y, *run_mix(mix, x, y))


@pytest.mark.parametrize("mixer", BARE)
def test_mix_every_mixer_with_smoothing(mixer):
    x, y = toy_batch(16)
    mix = make_mix("beta", "random", mixer, smoothing=0.1)
    check_mix_output(mix, x, y, *run_mix(mix, x, y))


def test_mix_none_is_a_no_op():
    x, y = toy_batch(6)
    mix = Mix(lam="none", pairing="optimal", num_classes=C)
    x_mix, y_mix = mix(x, y)
    assert x_mix is x
    assert torch.equal(y_mix, torch.eye(C)[y])
    assert torch.equal(mix.last.partner, torch.arange(6)) and torch.equal(mix.last.lam, torch.ones(6))


def test_mix_regression_targets():
    x = torch.randn(10, 4)
    y = torch.randn(10, 2)
    mix = Mix(lam="automix", pairing="offset", generator=gen())
    x_mix, y_mix = mix(x, y)
    torch.testing.assert_close(y_mix.double(), ref_mix(y, mix.last.partner, mix.last.lam), rtol=0, atol=1e-6)
    torch.testing.assert_close(x_mix.double(), ref_mix(x, mix.last.partner, mix.last.lam), rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- oracles: timm, torchvision


def _timm_mixup(**kw):
    timm_mixup = pytest.importorskip("timm.data.mixup")
    return timm_mixup.Mixup(mixup_alpha=1.0, cutmix_alpha=0.0, num_classes=10, **kw)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_timm_batch_mode(seed, smoothing):
    mixer = _timm_mixup(mode="batch", label_smoothing=smoothing)
    x = torch.rand(8, 3, 7, 7, generator=gen(seed))
    y = torch.randint(0, 10, (8,), generator=gen(seed + 100))
    np.random.seed(seed)
    lam_timm, use_cutmix = mixer._params_per_batch()  # the λ timm is about to draw
    assert not use_cutmix
    np.random.seed(seed)
    x_timm, y_timm = mixer(x.clone(), y)  # timm mixes in place: give it a copy

    partner = PAIRINGS.build("flip")(x)
    lam = torch.full((8,), lam_timm)
    torch.testing.assert_close(mix_inputs(x, partner, lam), x_timm, rtol=0, atol=1e-6)
    torch.testing.assert_close(mix_targets(y, partner, lam, 10, smoothing), y_timm, rtol=0, atol=1e-6)
    # The same through Mix, with timm's λ as a constant policy.
    mix = Mix(lam="constant", pairing="flip", num_classes=10, smoothing=smoothing, lam_kwargs={"value": lam_timm})
    x_mix, y_mix = mix(x, y)
    torch.testing.assert_close(x_mix, x_timm, rtol=0, atol=1e-6)
    torch.testing.assert_close(y_mix, y_timm, rtol=0, atol=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("seed", [0, 1])
def test_agrees_with_timm_elem_mode(seed, smoothing):
    mixer = _timm_mixup(mode="elem", label_smoothing=smoothing)
    x = torch.rand(12, 3, 5, 5, generator=gen(seed))
    y = torch.randint(0, 10, (12,), generator=gen(seed + 100))
    np.random.seed(seed)
    lam_np, use_cutmix = mixer._params_per_elem(12)  # per-sample λ, drawn with np.random
    assert not use_cutmix.any() and len(set(lam_np.tolist())) == 12
    np.random.seed(seed)
    x_timm, y_timm = mixer(x.clone(), y)

    partner = PAIRINGS.build("flip")(x)
    lam = torch.from_numpy(lam_np)
    torch.testing.assert_close(mix_inputs(x, partner, lam), x_timm, rtol=0, atol=1e-6)
    torch.testing.assert_close(mix_targets(y, partner, lam, 10, smoothing), y_timm, rtol=0, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_torchvision_v2_mixup(seed):
    v2 = pytest.importorskip("torchvision.transforms.v2")
    tv = v2.MixUp(alpha=1.0, num_classes=10)
    drawn = []
    sample = tv._dist.sample

    def recording_sample(*args, **kwargs):
        value = sample(*args, **kwargs)
        drawn.append(float(value))
        return value

    tv._dist.sample = recording_sample  # capture the λ torchvision draws
    x = torch.rand(6, 3, 5, 5, generator=gen(seed))
    y = torch.randint(0, 10, (6,), generator=gen(seed + 100))
    torch.manual_seed(seed)
    x_tv, y_tv = tv(x, y)
    assert len(drawn) == 1

    partner = PAIRINGS.build("roll")(x)
    lam = torch.full((6,), drawn[0])
    torch.testing.assert_close(mix_inputs(x, partner, lam), x_tv, rtol=0, atol=1e-6)
    torch.testing.assert_close(mix_targets(y, partner, lam, 10), y_tv, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- CutMix


@pytest.mark.parametrize("b", [1, 2, 7, 64])
@pytest.mark.parametrize("seed", [0, 1])
def test_cutmix_applied_lambda_is_measured_box_area(b, seed):
    h, w = 12, 20
    x = torch.arange(1, b + 1, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 2, h, w).contiguous()
    y = torch.arange(b) % C
    mix = Mix(lam="beta", pairing="offset", mixer="cutmix", num_classes=C, generator=gen(seed))
    x_mix, y_mix = mix(x, y)
    partner, applied = mix.last.partner, mix.last.lam
    # What the policy asked for: the same draws again, without the mixer.
    same_partner, requested = Mix(lam="beta", pairing="offset", num_classes=C, generator=gen(seed)).sample(x, y)
    assert torch.equal(same_partner, partner)
    from_partner = x_mix == x[partner]  # x and x[partner] differ everywhere (offset never self-pairs)
    if b == 1:
        assert torch.equal(x_mix, x)
        return
    assert bool((from_partner | (x_mix == x)).all())
    mask = from_partner[:, 0]
    assert torch.equal(mask, from_partner[:, 1])  # the same box in every channel
    area = mask.flatten(1).sum(1).double()
    torch.testing.assert_close(applied.double(), 1 - area / (h * w), rtol=0, atol=1e-6)
    rows, cols = mask.any(2), mask.any(1)
    assert torch.equal(mask, rows[:, :, None] & cols[:, None, :])  # a rectangle
    cut = (1 - requested).sqrt()
    assert bool((area <= (cut * h + 1) * (cut * w + 1) + 1e-6).all())  # never bigger than asked (+ rounding)
    assert torch.equal(y_mix, mix_targets(y, partner, applied, C))  # targets use the applied λ


def test_cutmix_box_is_unclipped_in_expectation_away_from_borders():
    # A small box (λ = 0.96) is rarely clipped: the mean applied λ is close to the requested one.
    x = torch.arange(1, 257, dtype=torch.float32).view(256, 1, 1, 1).expand(256, 1, 64, 64)
    partner = torch.arange(256).roll(1)
    _, applied = MIXERS.build("cutmix")(x, partner, torch.full((256,), 0.96), generator=gen(3))
    assert abs(float(applied.mean()) - 0.96) < 0.01


def test_cutmix_needs_images():
    with pytest.raises(ValueError, match="cutmix"):
        MIXERS.build("cutmix")(torch.randn(4, 5), torch.arange(4), torch.ones(4))


# --------------------------------------------------------------------------- no host-device syncs


SYNC_OPS = {"aten::_local_scalar_dense", "aten::item", "aten::nonzero", "aten::masked_select", "aten::equal",
            "aten::is_nonzero"}

BOOL_INDEXING_OPS = {"aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"}

class HostSync(AssertionError):
    pass


class SyncDetector(TorchDispatchMode):
    """Records every aten op; collects those that force the host to wait for the device.

    ``.item()``/``bool()``/``int()``/``float()`` reach ``_local_scalar_dense``; data-dependent
    shapes (``nonzero``, boolean-mask indexing, ``masked_select``, ``unique*``) and ``equal``
    must read the result on the host; a copy from a device tensor to the CPU waits for it.
    Runs on the CPU too: the ops are the same whatever the device.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        self.ops.append(name)
        if name in SYNC_OPS or name.startswith(("aten::unique", "aten::_unique")):
            self.syncs.append(name)
        elif name in BOOL_INDEXING_OPS and any(
                isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in (args[1] or ())):
            self.syncs.append(f"{name} (boolean mask)")  # x[mask] = x[mask.nonzero()]: output shape from data
        elif name == "aten::_to_copy" and args[0].device.type != "cpu" and kwargs.get("device") == torch.device("cpu"):
            self.syncs.append(f"{name} (device to host)")
        elif name == "aten::copy_" and args[0].device.type == "cpu" and args[1].device.type != "cpu":
            self.syncs.append(f"{name} (device to host)")
        return func(*args, **kwargs)


def find_syncs(fn, monkeypatch) -> list[str]:
    """Run ``fn`` and return the host syncs it caused (empty list: none)."""
    found: list[str] = []

    def forbid(method: str):
        def raiser(self, *args, **kwargs):
            found.append(f"Tensor.{method}()")
            raise HostSync(f"Tensor.{method}() in the hot path")
        return raiser

    detector = SyncDetector()
    with monkeypatch.context() as m:
        for method in ("item", "tolist", "numpy"):
            m.setattr(torch.Tensor, method, forbid(method))
        try:
            with detector:
                fn()
        except HostSync:
            pass
    return found + detector.syncs


@pytest.mark.parametrize("culprit", [
    lambda x: x.sum().item(),
    lambda x: float(x.mean()),
    lambda x: int(x.argmax()),
    lambda x: bool((x > 0).any()),
    lambda x: 1 if x.max() > 0 else 0,
    lambda x: x.nonzero(),
    lambda x: x[x > 0],
    lambda x: x.clone().__setitem__(x > 0, 0.0),
    lambda x: torch.masked_select(x, x > 0),
    lambda x: torch.unique(x),
    lambda x: torch.equal(x, x),
    lambda x: x.tolist(),
    lambda x: x.numpy(),
    lambda x: np.asarray(x),
])
def test_sync_detector_flags_known_syncs(culprit, monkeypatch):
    x = torch.randn(6)
    assert find_syncs(lambda: culprit(x), monkeypatch)


def test_sync_detector_passes_clean_code(monkeypatch):
    x = torch.randn(6, 3)
    assert find_syncs(lambda: (x * 2 + 1).softmax(1).argmax(1), monkeypatch) == []


def _assert_sync_behaviour(mix: Mix, x, y, monkeypatch):
    syncs = find_syncs(lambda: run_mix(mix, x, y), monkeypatch)
    declared = [part for part in (mix.pairing, mix.lam_policy, mix.mixer) if getattr(part, "host_sync", False)]
    if declared:  # exempt, but the detector must see it (else it proves nothing)
        assert syncs, f"{declared} declare host_sync but the detector saw none"
    else:
        assert syncs == [], f"host sync in the hot path: {syncs}"


SYNC_PAIRINGS = ["random", "offset", "same_class", "nearest"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pairing", SYNC_PAIRINGS)
@pytest.mark.parametrize("lam", LAMBDAS.names())
def test_no_host_sync_every_policy(lam, pairing, device, monkeypatch):
    x, y = toy_batch(16, device=device)
    _assert_sync_behaviour(make_mix(lam, pairing), x, y, monkeypatch)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pairing", PAIRINGS.names())
def test_no_host_sync_every_pairing(pairing, device, monkeypatch):
    x, y = toy_batch(16, device=device)
    _assert_sync_behaviour(make_mix("beta", pairing), x, y, monkeypatch)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mixer", BARE)
@pytest.mark.parametrize("lam", ["beta", "sk", "loss"])
def test_no_host_sync_every_mixer(mixer, lam, device, monkeypatch):
    x, y = toy_batch(16, device=device)
    _assert_sync_behaviour(make_mix(lam, "random", mixer, smoothing=0.1), x, y, monkeypatch)


def test_optimal_is_flagged_by_the_detector(monkeypatch):
    assert getattr(PAIRINGS.build("optimal"), "host_sync", False) is True
    x, y = toy_batch(8)
    assert find_syncs(lambda: run_mix(make_mix("beta", "optimal"), x, y), monkeypatch)


# --------------------------------------------------------------------------- registries


@pytest.mark.parametrize("registry", [PAIRINGS, LAMBDAS, MIXERS], ids=lambda r: r.kind)
def test_unknown_name_lists_the_valid_ones(registry):
    with pytest.raises(ValueError) as info:
        registry.get("no-such-thing")
    message = str(info.value)
    assert "no-such-thing" in message
    assert all(name in message for name in registry.names())


def test_mix_with_unknown_names_fails_listing_choices():
    with pytest.raises(ValueError, match="automix"):
        Mix(lam="betta")
    with pytest.raises(ValueError, match="same_class"):
        Mix(pairing="nearest_class")
    with pytest.raises(ValueError, match="cutmix"):
        Mix(mixer="cutmix2")


def test_duplicate_registration_is_an_error():
    before = PAIRINGS.get("random")
    with pytest.raises(ValueError, match="already registered"):
        PAIRINGS.register("random")(object)
    assert PAIRINGS.get("random") is before
    reg = Registry("thing")
    reg.register("a")(lambda: 1)
    with pytest.raises(ValueError, match="'a'"):
        reg.register("a")(lambda: 2)
    assert reg.build("a") == 1


def test_misspelled_constructor_option_is_named():
    with pytest.raises(ValueError, match="alpah"):
        Mix(lam="beta", lam_kwargs={"alpah": 0.4})
    with pytest.raises(ValueError, match="metric"):
        Mix(pairing="random", pairing_kwargs={"metric": "cosine"})  # random takes no options
    with pytest.raises(ValueError, match="box"):
        Mix(mixer="cutmix", mixer_kwargs={"box": 2})


def test_every_mixer_returns_float32_lambda_in_range():
    x, _ = toy_batch(9)
    lam = torch.rand(9, generator=gen())
    for name in BARE:
        mixer = MIXERS.build(name)
        side = {need: torch.randn(x.shape, generator=gen(5)) for need in getattr(mixer, "needs", ())}
        out, applied = mixer(x, torch.randperm(9, generator=gen(1)), lam, generator=gen(2), **side)
        assert out.shape == x.shape and out.dtype == x.dtype
        assert applied.shape == (9,) and applied.dtype == torch.float32
        assert bool(((applied >= 0) & (applied <= 1)).all())
        assert math.isfinite(float(applied.sum()))
