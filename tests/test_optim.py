"""Learning-rate schedules against their formulas, and the optimisers' options."""
from __future__ import annotations

import math

import pytest
import torch

from mixlab.run.optim import build_optimizer, lr_factor


def lrs(schedule: str, *, warmup_epochs: float = 0.0, epochs: int = 4, steps: int = 10, **kw) -> list[float]:
    params = [torch.nn.Parameter(torch.zeros(1))]
    opt, sched = build_optimizer("sgd", params, steps_per_epoch=steps, epochs=epochs, schedule=schedule,
                                 warmup_epochs=warmup_epochs, lr=0.1, **kw)
    out = []
    for _ in range(steps * epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_with_warmup_follows_the_formula():
    got = lrs("cosine", warmup_epochs=1.0)
    total, warmup = 40, 10
    want = [0.1 * ((s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup))))
            for s in range(total)]
    assert got == pytest.approx(want, rel=1e-12)
    assert max(got) == pytest.approx(0.1) and got[-1] < 0.001


def test_step_schedule_decays_at_milestones():
    got = lrs("step", milestones=[0.5, 0.75], gamma=0.1)
    assert got[:20] == pytest.approx([0.1] * 20) and got[20:30] == pytest.approx([0.01] * 10)
    assert got[30:] == pytest.approx([0.001] * 10)


def test_constant_and_fractional_warmup():
    assert lrs("constant") == pytest.approx([0.1] * 40)
    assert lr_factor(0, total=40, warmup=5, schedule="constant") == pytest.approx(0.2)


def test_bad_schedule_and_nesterov_without_momentum_are_rejected():
    params = [torch.nn.Parameter(torch.zeros(1))]
    with pytest.raises(ValueError, match="optim.schedule='linear'"):
        build_optimizer("sgd", params, steps_per_epoch=1, epochs=1, schedule="linear")
    with pytest.raises(ValueError, match="optim.momentum=0.0"):
        build_optimizer("sgd", params, steps_per_epoch=1, epochs=1, momentum=0.0, nesterov=True)


def test_adamw_takes_its_options():
    params = [torch.nn.Parameter(torch.zeros(1))]
    opt, _ = build_optimizer("adamw", params, steps_per_epoch=1, epochs=1, lr=3e-4, betas=[0.8, 0.9],
                             weight_decay=0.01)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["betas"] == (0.8, 0.9) and opt.param_groups[0]["weight_decay"] == 0.01
