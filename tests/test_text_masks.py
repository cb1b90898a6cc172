"""Text blends are continuous in λ: at λ = 1 a passage is itself, bit for bit, and a partner of weight ε
moves the logits by O(ε), whatever padding the two passages have.

The reference is the blend of wordMixup (Guo et al. 2019) and TMix (Chen et al. 2020) at a mix point,
h̃ = λ·h_i + (1 − λ)·h_j, which is linear in λ. Both papers pad to one fixed length and mask nothing;
mixlab masks padding, and ``model.mask_mix=soft`` weights each position of a blend by its blended mask
m̃ = λ·m_i + (1 − λ)·m_j. ``union`` (the form before, kept for old records) keeps a position at full
strength where either passage has a token, so logits jump as λ leaves 1. Models run in float64.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mixlab.engine.mixing import mix_inputs
from mixlab.models import build_model
from mixlab.run.config import RULES, ConfigError, _resolved, apply_tuned, fingerprint, tuning_settings

from .test_config import compose_cfg

L = 12
LENGTHS = (12, 7, 3, 9, 0, 12)  # a full passage, padded ones, one of padding only (an empty text)
PARTNER = torch.tensor([1, 2, 3, 4, 5, 0])  # every partner has another length
SMALL = {"textcnn": {"dim": 8, "widths": [2, 3], "filters": 4},
         "transformer": {"dim": 8, "heads": 2, "ff": 16, "layers": 2}}
POINTS = [("textcnn", 0), ("textcnn", 1), ("transformer", 0), ("transformer", 1)]  # every mix point of each


def ids(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(2, 50, (len(LENGTHS), L), generator=g)
    return x.masked_fill(torch.arange(L) >= torch.tensor(LENGTHS)[:, None], 0)


def model(name: str, seed: int = 0, **options):
    torch.manual_seed(seed)
    m = build_model(name, in_shape=(L,), num_classes=3, vocab_size=50, dropout=0.0, **SMALL[name], **options)
    return m.double().eval()


def mixed(m, x: torch.Tensor, k: int, lam: float | torch.Tensor, seen: list | None = None) -> torch.Tensor:
    """The logits of ``x`` blended with ``x[PARTNER]`` at mix point ``k`` (``seen`` gets what went in and out)."""
    lam = torch.full((x.shape[0],), lam, dtype=torch.float64) if isinstance(lam, float) else lam

    def mix(h: torch.Tensor) -> torch.Tensor:
        out = mix_inputs(h, PARTNER, lam)
        if seen is not None:
            seen.append((h, out))
        return out

    with torch.no_grad():
        return m(x, mix_at=k, mix=mix)


@pytest.mark.parametrize("name,k", POINTS)
def test_lambda_one_is_the_passage_alone_bit_for_bit(name, k):
    m, x = model(name), ids()
    with torch.no_grad():
        alone = m(x)
    assert torch.equal(mixed(m, x, k, 1.0), alone)


@pytest.mark.parametrize("name,k", POINTS)
def test_a_partner_of_weight_eps_moves_the_logits_by_order_eps(name, k):
    # before: the partner's extra positions counted in full at any λ < 1, so the logits moved by the same
    # finite amount at ε = 1e-6 as at 1e-4 (a jump); now the move scales with ε
    m, x = model(name), ids()
    at_one = mixed(m, x, k, 1.0)
    move = {eps: float((mixed(m, x, k, 1.0 - eps) - at_one).abs().max()) for eps in (1e-6, 1e-4)}
    assert move[1e-4] > 0  # the partner does count
    assert move[1e-6] <= 2e-2 * move[1e-4], move  # linear in ε: 1e-2 of the move at 1e-4 (2x slack)
    assert move[1e-6] <= 2 * 1e-6 * (move[1e-4] / 1e-4), move  # within the derivative scale, C = 2 |f'|


@pytest.mark.parametrize("name,k", POINTS)
def test_padding_never_enters_a_blend(name, k):
    # the pad token's embedding (row 0) filled with garbage: a padded position must still embed to 0, each
    # passage's padded positions must be 0 in what is blended, a position padded in both must stay 0, and
    # the logits of a blend must not change
    lam = torch.linspace(0.2, 0.9, len(LENGTHS), dtype=torch.float64)
    clean, dirty, x = model(name), model(name), ids()
    with torch.no_grad():
        dirty.stem.embedding.weight[0].normal_(0.0, 10.0)
    seen: list = []
    logits = mixed(dirty, x, k, lam, seen)
    assert torch.equal(logits, mixed(clean, x, k, lam))
    (h, out), = seen
    if h.dim() == 3:  # a sequence (the pooled sentence embedding of textcnn has no positions)
        assert not h[..., :-1][h[..., -1] == 0].any()  # a passage's own padding: 0
        assert not out[..., :-1][out[..., -1] == 0].any()  # padded in both: 0


@pytest.mark.parametrize("name", ["textcnn", "transformer"])
def test_both_forms_agree_on_unmixed_passages(name):
    # evaluation and lambda=none never blend: the form only matters where two paddings are blended
    x = ids()
    with torch.no_grad():
        soft, union = model(name, mask_mix="soft")(x), model(name, mask_mix="union")(x)
    if name == "textcnn":
        assert torch.equal(soft, union)
    else:
        torch.testing.assert_close(soft, union, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["textcnn", "transformer"])
def test_union_is_the_old_form_that_jumps(name):
    m, x = model(name, mask_mix="union"), ids()
    at_one = mixed(m, x, 0, 1.0)
    move = {eps: float((mixed(m, x, 0, 1.0 - eps) - at_one).abs().max()) for eps in (1e-6, 1e-4)}
    assert move[1e-6] > 1e-3 and move[1e-6] == pytest.approx(move[1e-4], rel=0.05), move


def test_training_on_padded_blends_gives_finite_gradients():
    # log m̃ is −inf where both passages pad; the mask is data (detached), so no NaN reaches a weight
    for name, k in POINTS:
        torch.manual_seed(0)
        m = build_model(name, in_shape=(L,), num_classes=3, vocab_size=50, **SMALL[name]).train()
        lam = torch.linspace(0.1, 1.0, len(LENGTHS))
        m(ids(), mix_at=k, mix=lambda h: mix_inputs(h, PARTNER, lam)).square().sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None), (name, k)


def test_mask_mix_is_checked_and_old_records_read_as_union():
    from mixlab.models.text import MASK_MIXES

    with pytest.raises(ValueError, match=r"^mask_mix='or': expected soft \| union$"):
        build_model("textcnn", in_shape=(L,), num_classes=3, vocab_size=50, mask_mix="or")
    assert RULES["model.mask_mix"][0] == " | ".join(MASK_MIXES)  # the config's early check names the same forms
    # the committed text study ran before the option: its records read as the OR of the masks
    records = Path(__file__).resolve().parents[1] / "docs" / "results" / "austen_small" / "records"
    config = json.loads(next(records.glob("*/summary.json")).read_text())["config"]
    assert "mask_mix" not in config["model"] and fingerprint(config)["model.mask_mix"] == "union"
    assert fingerprint({**config, "model": {**config["model"], "mask_mix": "soft"}})["model.mask_mix"] == "soft"
    assert "model.mask_mix" not in fingerprint({**config, "model": {"name": "cnn"}})  # images have no such option


@pytest.mark.parametrize("model_option,transferred", [("model=mlp", []),
                                                       ("model=textcnn", ["model.mask_mix: 'union' -> 'soft'"])])
def test_a_tuning_made_before_mask_mix_reads_as_union(tmp_path, model_option, transferred):
    # tuning.json's settings from before the key: an image run's are the same settings as today's (the key
    # means nothing there); a text run's were the OR of the masks, so today's soft default is another setting
    cfg = compose_cfg("data=digits", model_option, "lambda=beta", f"tuned={tmp_path / 'tuned.yaml'}")
    settings = {k: v for k, v in tuning_settings(_resolved(cfg)).items() if k != "model.mask_mix"}
    (tmp_path / "tuning.json").write_text(json.dumps({"settings": settings, "trials_run": [], "chosen": {}}))
    (tmp_path / "tuned.yaml").write_text("beta:\n  lam.alpha: 0.5\n")
    if transferred:
        with pytest.raises(ConfigError, match=r"made under other settings \(model.mask_mix: 'union' -> 'soft'\)"):
            apply_tuned(cfg)
        cfg.tuned_transfer = True
    assert apply_tuned(cfg)["transferred"] == transferred
