"""A mixer declares what it reads besides the batch (``Mixer.needs``) and the training step provides it; the
loop never branches on a mixer's name (issue 27). Known need: the clean loss's input gradient (PuzzleMix)."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from mixlab import MIXERS, Mix
from mixlab.engine.mixing import Mixer
from mixlab.run.config import ConfigError
from mixlab.run.train import _input_grad
from mixlab.tasks import TASKS

from .test_train import run


def test_the_input_gradient_is_the_clean_losss_and_leaves_the_weights_gradients_alone():
    # float64 reference: for logits z = W x + b and cross-entropy against one-hot y, dL/dx = Wᵀ (softmax(z) − y)
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 4).double()
    x, y = torch.randn(5, 6, dtype=torch.float64), torch.tensor([0, 3, 1, 1, 2])
    p = SimpleNamespace(mix=Mix(lam="beta", num_classes=4), task=TASKS.build("classification"), forward=model)
    grad = _input_grad(p, x, y)
    onehot = torch.nn.functional.one_hot(y, 4).double()
    expected = (torch.softmax(x @ model.weight.T + model.bias, 1) - onehot) @ model.weight
    # the task computes its loss in float32 (as under autocast): agreement to float32's precision
    assert torch.allclose(grad, expected.detach(), rtol=1e-6, atol=1e-7)
    assert not torch.allclose(grad, -expected.detach(), rtol=1e-6, atol=1e-7)
    assert model.weight.grad is None and model.bias.grad is None and not x.requires_grad


class Spy(Mixer):
    """Records what it was given; mixes nothing."""
    needs = ("input_grad",)
    seen: list = []

    def __call__(self, x, partner, lam, *, generator=None, input_grad=None):
        Spy.seen.append((x.detach().clone(), input_grad))
        return x, torch.ones_like(lam)


def registered(name: str, cls):
    """``cls`` registered as mixer ``name`` for one test, its class-level log emptied."""
    MIXERS.register(name)(cls)
    getattr(cls, "seen", getattr(cls, "log", None)).clear()
    yield cls
    MIXERS._entries.pop(name, None)


@pytest.fixture
def spy():
    yield from registered("spy_needs", Spy)


def test_the_training_step_gives_a_mixer_what_it_needs(spy, tmp_path):
    run(tmp_path, "mixer=input", "mixer.name=spy_needs", "trainer.epochs=1")
    assert spy.seen and all(g is not None and g.shape == x.shape and g.abs().sum() > 0 for x, g in spy.seen)


def test_mix_refuses_a_call_without_what_its_mixer_needs(spy):
    mix = Mix(lam="beta", num_classes=3, mixer="spy_needs")
    x, y = torch.randn(4, 1, 5, 5), torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match=r"needs \['input_grad'\]"):
        mix(x, y)
    mix(x, y, input_grad=torch.zeros_like(x))
    assert Mix(lam="none", num_classes=3, mixer="spy_needs").needs == ()  # nothing mixed: nothing needed


def test_a_mixer_that_reads_its_batch_cannot_take_partners_from_elsewhere(spy):
    with pytest.raises(ValueError, match="expected partners from the batch"):
        Mix(lam="beta", num_classes=3, mixer="spy_needs", pairing="label_kernel", pairing_kwargs={"partners": "set"})


def test_a_need_the_step_does_not_provide_is_one_line(spy, tmp_path, monkeypatch):
    monkeypatch.setattr(Spy, "needs", ("teacher_logits",))
    with pytest.raises(ConfigError) as e:
        run(tmp_path, "mixer=input", "mixer.name=spy_needs", "trainer.epochs=1")
    assert str(e.value).startswith("mixer=spy_needs: needs ['teacher_logits'], which the training step does not")


class Learned(torch.nn.Module, Mixer):
    """A toy learned mixer: a momentum copy of the model (attach / after_step), a weight of its own, state in
    the checkpoint; it blends nothing and reads the targets (each sample's own)."""
    needs = ("targets",)
    log: dict = {}

    def __init__(self):
        torch.nn.Module.__init__(self)
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def attach(self, model):
        Learned.log["attached"] = Learned.log.get("attached", 0) + 1
        self.__dict__["momentum"] = copy.deepcopy(model)  # not a submodule: the toy checkpoints its own state only

    def after_step(self, model):
        self.steps += 1
        with torch.no_grad():
            for a, b in zip(self.momentum.parameters(), model.parameters(), strict=True):
                a.mul_(0.5).add_(b, alpha=0.5)

    def forward(self, x, partner, lam, *, generator=None, targets=None):
        Learned.log.setdefault("targets", []).append(targets)
        return x, torch.ones_like(lam)


@pytest.fixture
def learned():
    yield from registered("learned_spy", Learned)


def test_a_learned_mixer_meets_its_model_once_updates_after_every_step_and_is_checkpointed(learned, tmp_path):
    run(tmp_path, "mixer=input", "mixer.name=learned_spy", "trainer.epochs=2", "data.train_subset=96")
    assert learned.log["attached"] == 1
    steps = 2 * 3  # 96 images in batches of 32, two epochs
    assert len(learned.log["targets"]) == steps
    assert all(t.shape == (32, 10) and torch.equal(t.sum(1), torch.ones(32)) for t in learned.log["targets"])
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert int(ckpt["mix"]["mixer"]["steps"]) == steps and "w" in ckpt["mix"]["mixer"]
    mix = Mix(lam="beta", num_classes=10, mixer="learned_spy")
    mix.load_state_dict(ckpt["mix"])  # a resumed run continues the mixer where it was
    assert int(mix.mixer.steps) == steps
