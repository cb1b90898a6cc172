"""Optimisers and per-step learning-rate schedules (linear warm-up, then cosine, step or constant)."""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch

from ..engine.registry import Registry, is_number

OPTIMIZERS: Registry = Registry("optim")
SCHEDULES = ("cosine", "step", "constant")


@OPTIMIZERS.register("sgd")
def sgd(params: Iterable, *, lr: float = 0.05, momentum: float = 0.9, nesterov: bool = True,
        weight_decay: float = 5e-4) -> torch.optim.Optimizer:
    if nesterov and momentum <= 0:
        raise ValueError(f"optim.momentum={momentum!r}: expected a number in (0, 1) with optim.nesterov=true")
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)


@OPTIMIZERS.register("adamw")
def adamw(params: Iterable, *, lr: float = 2e-3, betas: Sequence[float] = (0.9, 0.999),
          weight_decay: float = 0.05) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)


def lr_factor(step: int, *, total: int, warmup: int, schedule: str, milestones: Sequence[float] = (),
              gamma: float = 0.1) -> float:
    """Multiplier of the peak learning rate at optimiser step ``step`` (0-based) of ``total``.

    Linear warm-up over ``warmup`` steps from 1/warmup to 1, then ``cosine`` decay to 0 at
    ``total``, ``step`` decay by ``gamma`` at each milestone (fractions of ``total``), or ``constant``.
    """
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if schedule == "step":
        return gamma ** sum(step >= m * total for m in milestones)
    return 1.0


def build_optimizer(name: str, params: Iterable, *, steps_per_epoch: int, epochs: int, schedule: str = "cosine",
                    warmup_epochs: float = 0.0, milestones: Sequence[float] = (0.5, 0.75), gamma: float = 0.1,
                    **options: object) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """The optimiser registered as ``name`` and a LambdaLR stepped once per optimiser step."""
    if schedule not in SCHEDULES:
        raise ValueError(f"optim.schedule={schedule!r}: expected one of {list(SCHEDULES)}")
    # A warm-up longer than training never reaches the peak rate; 1e300 epochs would overflow round().
    if not (is_number(warmup_epochs) and 0 <= warmup_epochs <= epochs):
        raise ValueError(f"optim.warmup_epochs={warmup_epochs!r}: expected a number in [0, {epochs}] (trainer.epochs)")
    optimizer = OPTIMIZERS.build(name, params=params, **options)
    total, warmup = steps_per_epoch * epochs, round(warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total=total, warmup=warmup, schedule=schedule,
                                       milestones=milestones, gamma=gamma))
    return optimizer, scheduler
