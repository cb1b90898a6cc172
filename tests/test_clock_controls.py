"""The controls that ask whether *when* a policy mixes matters (issue 26): mixing switched off late
(``trainer.mix_until``) and a policy's clock reversed (``trainer.reverse_time``), each for any λ policy
that can take it, and a study that declares them per arm (``study.controls``)."""
from __future__ import annotations

import math

import pytest
import torch

from mixlab import Mix
from mixlab.run.config import ConfigError
from mixlab.run.train import check
from mixlab.study.plan import make_plan

from .test_config import compose_cfg
from .test_train import run


def draws(mix: Mix, progress: float, seed: int = 0, b: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    x, y = torch.randn(b, 1, 6, 6, generator=g), torch.randint(10, (b,), generator=g)
    mix.generator = torch.Generator().manual_seed(seed)
    x_mix, y_mix = mix(x, y, progress=progress)
    return x, x_mix, y_mix


@pytest.mark.parametrize("lam", ["beta", "schedule", "distance", "loss"])
def test_mixing_off_late_is_the_run_without_it_before_and_no_blend_after(lam):
    plain, late = Mix(lam=lam, num_classes=10), Mix(lam=lam, num_classes=10, mix_until=0.75)
    for t in (0.0, 0.3, 0.7499):  # before: bitwise the run without the switch
        _, a, ya = draws(plain, t)
        _, b, yb = draws(late, t)
        assert torch.equal(a, b) and torch.equal(ya, yb)
    for t in (0.75, 0.9, 1.0):  # from f on: every sample its own blend, its target its own one-hot label
        x, b, yb = draws(late, t)
        assert torch.equal(b, x)
        assert torch.equal(late.last.lam, torch.ones_like(late.last.lam))
        assert torch.equal(yb.sum(1), torch.ones(64)) and set(yb.flatten().tolist()) <= {0.0, 1.0}
        # the draws still happened: the generator stands where the run without the switch leaves it
        draws(plain, t)
        assert torch.equal(plain.generator.get_state(), late.generator.get_state())


def alpha_reference(start: float, end: float, shape: str, t: float) -> float:
    """α(t) of a schedule, float64, from its definition (linear r = t; cosine r = (1 − cos πt)/2)."""
    r = t if shape == "linear" else (1 - math.cos(math.pi * t)) / 2
    return start + (end - start) * r


@pytest.mark.parametrize("shape", ["linear", "cosine"])
def test_a_reversed_clock_runs_the_schedule_from_its_end_to_its_start(shape, monkeypatch):
    seen = []
    from mixlab.engine import lam as lam_module

    real = lam_module.sample_beta

    def spy(b, alpha, **kw):
        seen.append(alpha)
        return real(b, alpha, **kw)

    monkeypatch.setattr(lam_module, "sample_beta", spy)
    mix = Mix(lam="schedule", num_classes=10, lam_kwargs={"alpha_start": 1.64, "alpha_end": 0.15, "shape": shape},
              reverse_time=True)
    for t in (0.0, 0.25, 0.6, 1.0):
        draws(mix, t)
        # α_end → α_start: the schedule with its ends swapped, at the same time
        assert seen[-1] == pytest.approx(alpha_reference(0.15, 1.64, shape, t), abs=1e-12)


@pytest.mark.parametrize("bad, message", [
    ({"mix_until": 0.0}, "mix_until=0.0: expected a number in (0, 1]"),
    ({"mix_until": 1.5}, "mix_until=1.5: expected a number in (0, 1]"),
    ({"reverse_time": True, "lam": "beta"}, "reverse_time=True: lambda=beta does not depend on the training time"),
])
def test_clock_switches_that_cannot_apply_are_refused(bad, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Mix(**{"lam": "schedule", **bad})


def test_the_switches_need_the_time():
    with pytest.raises(ValueError, match="need progress="):
        Mix(lam="beta", mix_until=0.5)(torch.randn(4, 3), torch.arange(4) % 2)


@pytest.mark.parametrize("overrides, key", [
    (["lambda=loss", "trainer.reverse_time=true"], "trainer.reverse_time=true: lambda=loss does not depend"),
    (["trainer.mix_until=0"], "trainer.mix_until=0: expected a number in (0, 1]"),
    (["trainer.mix_until=true"], "trainer.mix_until=True: expected a number in (0, 1]"),
])
def test_a_config_that_cannot_take_a_switch_is_one_line(overrides, key):
    with pytest.raises(ConfigError) as e:
        check(compose_cfg(*overrides))
    assert len(str(e.value).splitlines()) == 1 and str(e.value).startswith(key)


def test_a_run_that_stops_mixing_late_is_its_plain_run_until_then(tmp_path):
    _, plain, _ = run(tmp_path, "lambda=beta", "trainer.epochs=4", "trainer.val_every=0", name="plain")
    _, late, summary = run(tmp_path, "lambda=beta", "trainer.epochs=4", "trainer.val_every=0",
                           "trainer.mix_until=0.5", name="late")
    for a, b in zip(plain[:2], late[:2], strict=True):  # the first half: the same run, bitwise
        assert a["train_loss"] == b["train_loss"] and a["lam_strength"] == b["lam_strength"] > 0
    assert [r["lam_strength"] for r in late[2:]] == [0.0, 0.0]  # the second half: no blend at all
    assert [r["lam_mean"] for r in late[2:]] == [1.0, 1.0]
    assert summary["config"]["trainer"]["mix_until"] == 0.5


STUDY = ("experiment=digits_study", "study.arms=[none,beta,schedule,loss]")


def test_a_plan_declares_each_arms_controls_and_the_family_that_tests_them():
    plan = make_plan(compose_cfg(*STUDY, "study.controls={schedule:[strength,reversed],loss:[strength],"
                                          "beta:[stop_late]}", "study.stop_late_at=0.75"), [])
    assert [(c["of"], c["kind"]) for c in plan["controls"]] == [
        ("beta", "stop_late"), ("schedule", "strength"), ("schedule", "reversed"), ("loss", "strength")]
    assert next(c for c in plan["controls"] if c["kind"] == "stop_late")["mix_until"] == 0.75
    assert plan["primary_family"] == [
        "schedule vs beta on test_acc", "schedule vs its strength control on test_acc",
        "schedule vs its reversed control on test_acc", "loss vs beta on test_acc",
        "loss vs its strength control on test_acc",
        "schedule vs beta's stop_late control on test_acc", "loss vs beta's stop_late control on test_acc"]


def test_without_declared_controls_each_dynamic_arm_gets_its_strength_control():
    plan = make_plan(compose_cfg(*STUDY), [])
    assert [(c["of"], c["kind"]) for c in plan["controls"]] == [("schedule", "strength"), ("loss", "strength")]


@pytest.mark.parametrize("controls, message", [
    ("{sk:[strength]}", "study.controls: names ['sk'], not in study.arms"),
    ("{loss:[reversed]}", "study.controls.loss=[reversed]: reversed needs a λ policy that depends on the training"),
])
def test_controls_a_study_cannot_run_are_one_line(controls, message):
    with pytest.raises(ConfigError) as e:
        make_plan(compose_cfg(*STUDY, f"study.controls={controls}"), [])
    assert len(str(e.value).splitlines()) == 1 and str(e.value).startswith(message)


def test_an_unknown_control_is_refused_by_the_config():
    from mixlab.run.config import validate

    with pytest.raises(ConfigError, match=r"^study.controls="):
        validate(compose_cfg(*STUDY, "study.controls={schedule:[later]}"))


def test_an_arm_may_name_its_mixer_after_an_at_sign():
    from mixlab.study.tune import arm_overrides

    assert arm_overrides("schedule+nearest@fmix") == ["lambda=schedule", "pairing=nearest", "mixer=fmix"]
    assert arm_overrides("beta@cutmix") == ["lambda=beta", "mixer=cutmix"] and arm_overrides("beta") == ["lambda=beta"]
    plan = make_plan(compose_cfg(*STUDY[:1], "study.arms=[none,beta,beta@cutmix,schedule@fmix]"), [])
    rows = {r["arm"]: r for r in plan["arms"]}
    assert rows["beta@cutmix"]["mixer"] == "cutmix" and rows["beta@cutmix"]["space"] == rows["beta"]["space"]
    assert "mixer" not in rows["beta"] and rows["schedule@fmix"]["lambda"] == "schedule"
    with pytest.raises(ConfigError, match="names mixer 'fmx'; expected one of"):
        make_plan(compose_cfg(*STUDY[:1], "study.arms=[none,beta,beta@fmx]"), [])


def test_a_mixer_of_its_own_is_in_the_family_against_the_reference_under_its_mixer():
    # CutMix claims to beat mixup (beta under input mixing); schedule under CutMix claims to beat Beta under CutMix,
    # which is what the report compares it with; a fixed λ under a mixer gets no strength control (it would be
    # itself), a dynamic one does and keeps its mixer
    plan = make_plan(compose_cfg(*STUDY[:1], "study.arms=[none,beta,beta@cutmix,schedule@cutmix,schedule@fmix]"), [])
    assert plan["primary_family"] == [
        "beta@cutmix vs beta on test_acc", "schedule@cutmix vs beta@cutmix on test_acc",
        "schedule@cutmix vs its strength control on test_acc", "schedule@fmix vs beta on test_acc",
        "schedule@fmix vs its strength control on test_acc"]
    assert [(c["of"], c["kind"]) for c in plan["controls"]] == [("schedule@cutmix", "strength"),
                                                                ("schedule@fmix", "strength")]
    declared = make_plan(compose_cfg(*STUDY[:1], "study.arms=[none,beta,beta@cutmix,schedule@cutmix]",
                                     "study.controls={schedule@cutmix:[]}"), [])
    assert declared["controls"] == [] and declared["primary_family"] == [
        "beta@cutmix vs beta on test_acc", "schedule@cutmix vs beta@cutmix on test_acc"]
