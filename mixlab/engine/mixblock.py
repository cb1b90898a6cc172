"""AutoMix's Mix Block (Liu et al., ECCV 2022, "AutoMix: Unveiling the Power of Mixup for Stronger Classifiers"):
a small cross-attention network that learns, beside the classifier, where each blend takes sample i's own pixels
and where its partner's. Registered as ``mixer=mixblock``.

Not ``lambda=automix``: that name is seed 002's λ formula, λ = ½(1 − ε)/(1 + ε), a λ policy. The Mix Block is a
mixer: it takes λ from any policy and learns the mask that realises it.

It is a *learned* mixer (``Mixer``'s lifecycle, relayed by ``Mix``): ``attach(model)`` keeps a momentum copy of the
classifier and builds the block and its own optimiser, each call trains the block one step and returns a blend
made with the block's mask (detached), ``after_step(model)`` moves the momentum copy towards the classifier, and
``state_dict``/``load_state_dict`` carry all three through a checkpoint. It ``reads_time``: ``Mix`` hands it the
training clock (``progress`` ∈ [0, 1]), on which its lr and its momentum follow the official schedules.

The engine imports nothing else of mixlab: the model is used only through the MixModel contract (``in_shape``,
``num_mix_points``, ``embed(x, mix_at=k, mix=f)``, ``mixes_inside``), so any image model that follows it works.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .masks import _check_images
from .mixing import MIXERS, Mixer
from .registry import is_number

REDUCTION = 2  # query/key channels: C // 2 (the official PixelMixBlock's default reduction)
INIT_STD = 0.01  # the block's 1×1 convs start as N(0, 0.01²) weights and zero biases (official init)
SGD_MOMENTUM = 0.9  # the block's SGD momentum in the official configs (CIFAR-100 and ImageNet ResNets)


def cosine(t: float, start: float, end: float) -> float:
    """From ``start`` at t = 0 to ``end`` at t = 1 along a half cosine: end + (start − end)·(1 + cos πt)/2 (mmcv's
    ``CosineAnnealing`` lr policy, the official configs' ``lr_config``; and the momentum's rise, ``momentum_at``)."""
    return end + (start - end) * (1.0 + math.cos(math.pi * t)) / 2.0


def momentum_at(t: float, base: float, end: float, start_at: float) -> float:
    """The momentum copy's EMA coefficient at training fraction ``t`` (OpenMixup's ``CosineScheduleHook`` with
    ``adjust_scope=[start_at, 1]``, ``warming_up='constant'``): ``base`` before ``start_at``, then
    end − (end − base)·(1 + cos πt)/2, with t the fraction of the *whole* run (so the curve starts just above
    ``base`` at ``start_at``, as the hook's does), reaching ``end`` at t = 1."""
    return base if t < start_at else cosine(t, base, end)


class _Reached(Exception):
    """Raised by the capture function once the mix point is reached: the rest of the forward is not needed."""


def features_at(model: nn.Module, x: Tensor, k: int) -> Tensor:
    """The hidden state of a MixModel at mix point ``k`` (0 = the input, i = block i's output), through
    ``embed(x, mix_at=k, mix=f)``; the forward stops there."""
    box: dict[str, Tensor] = {}

    def grab(h: Tensor) -> Tensor:
        box["h"] = h
        raise _Reached

    try:
        model.embed(x, mix_at=k, mix=grab)
    except _Reached:
        return box["h"]
    raise ValueError(f"{type(model).__name__}.embed(x, mix_at={k}, mix=f) never called f; expected a model that "
                     "follows the MixModel contract")


class MixBlockLayers(nn.Module):
    """The Mix Block of AutoMix's §3 on feature maps ``z`` (B, C, h, w) of a batch, for pairs (i, partner(i)):

    * λ embedding: a constant channel λ_i is appended to ``z_i`` and 1 − λ_i to ``z_j`` (j = partner(i)), giving
      ``z_i^λ`` and ``z_j^λ`` (C + 1 channels; the official code's ``lam_concat``);
    * cross-attention: one 1×1 conv ``W_q`` (C + 1 → C // 2) embeds both, ``q = W_q z_i^λ`` and ``k = W_q z_j^λ``,
      and ``P = softmax_over_j(qᵀk / √(C // 2))`` (hw × hw) says which positions of j each position of i attends to;
    * mask: a 1×1 conv ``W_v`` (C + 1 → 1) scores j's positions, ``v = W_v z_j^λ``; ``P v`` (h × w) is the logit of
      the partner's share at each position, upsampled (nearest) to the image size H × W, through a sigmoid;
      the own share is ``M_i = 1 − σ(U(P v))`` (the official ``mask_mode='none_v_'``).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.inner = max(channels // REDUCTION, 1)
        self.query = nn.Conv2d(channels + 1, self.inner, kernel_size=1)
        self.value = nn.Conv2d(channels + 1, 1, kernel_size=1)
        for conv in (self.query, self.value):
            nn.init.normal_(conv.weight, std=INIT_STD)
            nn.init.zeros_(conv.bias)

    def forward(self, z: Tensor, partner: Tensor, lam: Tensor, size: tuple[int, int]) -> Tensor:
        """``M`` (B, 1, H, W): each blend's own share per pixel, in (0, 1), with gradient into the block."""
        b, _, h, w = z.shape
        lam_map = lam.to(z.dtype).view(b, 1, 1, 1).expand(b, 1, h, w)
        z_i = torch.cat([z, lam_map], 1)
        z_j = torch.cat([z.index_select(0, partner), 1.0 - lam_map], 1)
        q = self.query(z_i).flatten(2)  # (B, r, hw)
        k = self.query(z_j).flatten(2)  # (B, r, hw)
        attention = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(self.inner), dim=-1)  # (B, hw_i, hw_j)
        v = self.value(z_j).flatten(2).transpose(1, 2)  # (B, hw_j, 1)
        logit = (attention @ v).view(b, 1, h, w)  # the partner's share, before the sigmoid
        return torch.sigmoid(-F.interpolate(logit, size=size, mode="nearest"))  # 1 − σ(·): the own share


def _world() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@MIXERS.register("mixblock")
class MixBlock(nn.Module, Mixer):
    """AutoMix's Mix Block as a mixlab mixer (Liu et al., ECCV 2022). Not ``lambda=automix`` (seed 002's λ
    formula ½(1 − ε)/(1 + ε)): this learns the *mask* for whatever λ the policy draws.

    ``attach(model)`` (once, before training): a momentum copy of the model (``requires_grad=False``, never
    trained by gradient), the Mix Block (``MixBlockLayers``) for the channels of the feature map at mix point
    ``stage``, and the block's own SGD (``lr``, momentum 0.9, ``weight_decay``).

    Each call, with ``targets`` (B, C) each sample's own target:

    1. ``z`` = the momentum copy's features at ``stage`` for the batch (no gradient); the block gives the own-share
       mask ``M`` (B, 1, H, W) for each pair (i, partner(i)) with its λ_i;
    2. the block's update (the momentum pipeline's generation step): the blend ``x̃ = M⊙x_i + (1 − M)⊙x_partner``
       (gradient into the block) is classified by the momentum copy; its loss is the soft cross-entropy against
       ``λ̂_i·t_i + (1 − λ̂_i)·t_partner`` with ``λ̂_i = mean(M_i)`` (the blend's exact own share, detached: the
       block cannot lower the loss by relabelling) plus ``lam_loss · max(|mean(M_i) − λ_i| − lam_loss_margin, 0)``
       (the λ loss, mean over the batch); one step of the block's optimiser;
    3. the classifier's blend: the same mask, **detached** (the classifier trains on it), except that a row with
       min(λ_i, 1 − λ_i) <= ``mixup_margin`` gets the uniform mask λ_i (input mixup, as the official code does at
       extreme λ; λ = 1 returns ``x_i`` and λ = 0 ``x_partner`` bit for bit). Returns ``(x̃, λ_applied)`` with
       ``λ_applied_i = mean(M_i)``, the exact own share; ``self.last_mask`` holds that mask (B, 1, H, W) and
       ``self.last_loss`` the block's loss before its step.

    ``after_step(model)``: ``θ_k ← m·θ_k + (1 − m)·θ_q`` for every parameter of the momentum copy (``m`` =
    ``momentum_at(progress)`` of the last call); its buffers (BatchNorm's statistics) follow its own forwards, as
    in the official code. Under several processes (torch.distributed) the block starts from rank 0's weights and its gradients are averaged,
    so every process keeps the same block.

    Options (defaults and sources):

    * ``stage`` (null): the mix point whose output the block reads (0 = the input, k = block k's output); null
      picks the deepest mix point that is a feature map (C, h, w): the cnn's block 2 (7×7 at 28 px, 8×8 at 32 px,
      the size of the official CIFAR ResNet-18's stage 3, ``mask_layer=2``);
    * ``lr`` (0.1), ``lr_min`` (0.05) and ``weight_decay`` (1e-4): the official ResNet configs' SGD (lr 0.1,
      momentum 0.9, wd 1e-4), annealed by cosine from ``lr`` to ``lr_min`` over training (the CIFAR-100 ResNet-18
      config ``r18_l2_a2_near_lam_cat_L1_01_mlr5e_2``: ``min_lr=0.05``); ``lr_min: null`` holds ``lr`` constant;
    * ``momentum`` (0.999), ``momentum_end`` (0.999999) and ``momentum_from`` (0.1): the momentum copy's EMA
      coefficient, ``momentum`` for the first ``momentum_from`` of training, then raised by cosine to
      ``momentum_end`` (the same config's ``CosineScheduleHook``: ``end_momentum=0.999999``,
      ``adjust_scope=[0.1, 1.0]``, ``warming_up='constant'``; ImageNet configs end at 0.99999);
      ``momentum_end: null`` holds ``momentum`` constant. Called without ``progress`` (outside a training
      loop), the block uses the start values ``lr`` and ``momentum``;
    * ``lam_loss`` (0.1) and ``lam_loss_margin`` (0.1): the λ loss's weight and dead zone (official ``mask_loss``
      and ``mask_loss_margin``, L1 mode; ImageNet runs anneal the weight to 0);
    * ``mixup_margin`` (0.08): the official ``lam_margin``.

    Departures from the paper and its official code: the block is trained on the very pairs and λ the classifier
    trains on (officially a second pairing and λ are drawn for it), λ is per sample (officially one per batch, and
    the λ loss compares the batch's mean mask with it), the block's soft target uses the mask's mean λ̂ (officially
    the drawn λ, which the λ loss keeps within the margin of λ̂), the lr anneals at every step (mmcv's policy
    steps per epoch) and the λ-loss weight is constant (ImageNet runs anneal it). The classifier's clean one-hot
    loss that AutoMix adds to its mixup loss is the training loop's business, not a mixer's, and is not added.
    """

    needs = ("targets",)
    needs_images = True
    reads_time = True  # Mix hands it progress= (the training clock) for its lr and momentum schedules

    def __init__(self, *, stage: int | None = None, lr: float = 0.1, lr_min: float | None = 0.05,
                 weight_decay: float = 1e-4, momentum: float = 0.999, momentum_end: float | None = 0.999999,
                 momentum_from: float = 0.1, lam_loss: float = 0.1, lam_loss_margin: float = 0.1,
                 mixup_margin: float = 0.08) -> None:
        super().__init__()
        if stage is not None and not (isinstance(stage, int) and not isinstance(stage, bool) and stage >= 0):
            raise ValueError(f"stage={stage!r}: expected null (the deepest mix point with a feature map) or an "
                             "integer >= 0 (a mix point of the model: 0 = the input, k = block k's output)")
        for key, value, ok, allowed in (
                ("lr", lr, lambda v: v > 0, "a number > 0"),
                ("weight_decay", weight_decay, lambda v: v >= 0, "a number >= 0"),
                ("momentum", momentum, lambda v: 0 <= v <= 1, "a number in [0, 1] (1: the copy never moves)"),
                ("momentum_from", momentum_from, lambda v: 0 <= v <= 1, "a fraction of training in [0, 1]"),
                ("lam_loss", lam_loss, lambda v: v >= 0, "a number >= 0"),
                ("lam_loss_margin", lam_loss_margin, lambda v: 0 <= v < 1, "a number in [0, 1)"),
                ("mixup_margin", mixup_margin, lambda v: 0 <= v <= 0.5, "a number in [0, 0.5]")):
            if not (is_number(value) and ok(value)):
                raise ValueError(f"{key}={value!r}: expected {allowed}")
        if lr_min is not None and not (is_number(lr_min) and 0 <= lr_min <= lr):
            raise ValueError(f"lr_min={lr_min!r}: expected a number in [0, lr={lr}] (the lr at the end of training), "
                             "or null for a constant lr")
        if momentum_end is not None and not (is_number(momentum_end) and momentum <= momentum_end <= 1):
            raise ValueError(f"momentum_end={momentum_end!r}: expected a number in [momentum={momentum}, 1] (the "
                             "momentum copy's EMA coefficient at the end of training), or null for a constant one")
        self.stage = stage
        self.lr, self.weight_decay, self.momentum = float(lr), float(weight_decay), float(momentum)
        self.lr_min = self.lr if lr_min is None else float(lr_min)
        self.momentum_end = self.momentum if momentum_end is None else float(momentum_end)
        self.momentum_from = float(momentum_from)
        self.progress: float | None = None  # the training clock of the last call (None: the start values)
        self.lam_loss, self.lam_loss_margin = float(lam_loss), float(lam_loss_margin)
        self.mixup_margin = float(mixup_margin)
        self.block: MixBlockLayers | None = None
        self.momentum_model: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.stage_used: int | None = None  # the mix point read, once attached
        self.refused: str | None = None  # why attach built nothing (a model the training loop refuses next)
        self.updates = 0  # the block's optimiser steps
        self.ema_steps = 0  # after_step calls
        self.last_mask: Tensor | None = None
        self.last_loss: Tensor | None = None

    # ------------------------------------------------------------------ lifecycle
    def attach(self, model: nn.Module) -> None:
        """Keep a momentum copy of ``model`` and build the block for its feature map at ``stage``.

        Token-id and flat-input models get nothing (``refused``): the training loop refuses ``needs_images``
        mixers for them in one line right after ``attach``. An out-of-range or flat ``stage`` is one line."""
        self.block = self.momentum_model = self.optimizer = self.stage_used = None
        self.refused, self.updates, self.ema_steps = None, 0, 0
        name = type(model).__name__
        in_shape = tuple(getattr(model, "in_shape", ()) or ())
        if getattr(model, "mixes_inside", False) or len(in_shape) != 3 or not hasattr(model, "embed"):
            self.refused = (f"mixer 'mixblock' needs an image model (inputs (C, H, W), mix points through embed), "
                            f"but {name} has in_shape={in_shape} and mixes_inside="
                            f"{bool(getattr(model, 'mixes_inside', False))}")
            return
        copy_ = copy.deepcopy(model).requires_grad_(False)
        shapes = self._probe(copy_, in_shape)
        maps = [k for k, s in enumerate(shapes) if len(s) == 3]
        points = len(shapes)
        if self.stage is None:
            if not maps:
                raise ValueError(f"stage=None: {name} has no mix point with a feature map (C, h, w) (its points give "
                                 f"{shapes}); expected an image model whose mix points are feature maps")
            stage = maps[-1]
        elif self.stage >= points:
            raise ValueError(f"stage={self.stage}: out of range for {name}, whose mix points are 0..{points - 1}; "
                             f"expected null or one of {maps} (0 = the input, k = block k's output)")
        elif self.stage not in maps:
            raise ValueError(f"stage={self.stage}: {name}'s mix point {self.stage} has shape "
                             f"{tuple(shapes[self.stage])}, not a feature map (C, h, w); expected null or one of {maps}")
        else:
            stage = self.stage
        param = next(model.parameters())
        self.block = MixBlockLayers(shapes[stage][0]).to(param.device)
        if _world() > 1:  # every process starts from rank 0's block
            for p in self.block.parameters():
                torch.distributed.broadcast(p.data, 0)
        self.optimizer = torch.optim.SGD(self.block.parameters(), lr=self.lr, momentum=SGD_MOMENTUM,
                                         weight_decay=self.weight_decay)
        self.momentum_model = copy_.train()
        self.stage_used = stage

    @staticmethod
    def _probe(model: nn.Module, in_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        """The shape (without the batch) of each mix point's output, from a batch of two zero images in eval mode
        (BatchNorm's statistics untouched)."""
        param = next(model.parameters())
        x = torch.zeros(2, *in_shape, device=param.device, dtype=param.dtype)
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                return [tuple(features_at(model, x, k).shape[1:]) for k in range(int(model.num_mix_points))]
        finally:
            model.train(was)

    def after_step(self, model: nn.Module) -> None:
        """The momentum copy's update after each optimiser step of ``model``: θ_k ← m·θ_k + (1 − m)·θ_q."""
        copy_ = self._attached()
        ks = list(copy_.parameters())
        qs = [p.detach() for p in model.parameters()]
        if len(ks) != len(qs):
            raise ValueError(f"after_step: model has {len(qs)} parameters, its momentum copy {len(ks)}; expected the "
                             "model given to attach")
        m = self.momentum_now()
        with torch.no_grad():
            torch._foreach_mul_(ks, m)
            torch._foreach_add_(ks, qs, alpha=1.0 - m)
        self.ema_steps += 1

    def momentum_now(self) -> float:
        """The EMA coefficient at the clock of the last call (``momentum`` before any, or without a clock)."""
        t = self.progress
        return self.momentum if t is None else momentum_at(t, self.momentum, self.momentum_end, self.momentum_from)

    def lr_now(self) -> float:
        """The block's lr at the clock of the last call (``lr`` before any, or without a clock)."""
        return self.lr if self.progress is None else cosine(self.progress, self.lr, self.lr_min)

    def state_dict(self, *args, **kwargs) -> dict:  # noqa: ARG002 - the mixer's own checkpoint format
        """The block's weights, its optimiser, the momentum copy and the counters (empty before ``attach``)."""
        if self.block is None:
            return {}
        return {"stage": self.stage_used, "block": self.block.state_dict(), "optimizer": self.optimizer.state_dict(),
                "momentum_model": self.momentum_model.state_dict(), "updates": self.updates,
                "ema_steps": self.ema_steps}

    def load_state_dict(self, state: dict, *args, **kwargs) -> None:  # noqa: ARG002
        """Restore what ``state_dict`` saved, after ``attach`` (a resumed run attaches, then loads)."""
        if not state:
            return
        if self.block is None:
            raise ValueError("mixer 'mixblock': load_state_dict needs Mix.attach(model) first (the momentum copy and "
                             "the block are built there; the training loop attaches before it resumes)")
        if state.get("stage") != self.stage_used:
            raise ValueError(f"mixer 'mixblock': the state was saved reading mix point stage={state.get('stage')}, "
                             f"this block reads stage={self.stage_used}; expected the same stage")
        self.block.load_state_dict(state["block"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.momentum_model.load_state_dict(state["momentum_model"])
        self.updates, self.ema_steps = int(state["updates"]), int(state["ema_steps"])

    def _attached(self) -> nn.Module:
        if self.momentum_model is None:
            raise ValueError(self.refused or "mixer 'mixblock' has no model: it needs Mix.attach(model) before its "
                                             "first call (the training loop attaches it after building the model)")
        return self.momentum_model

    # ------------------------------------------------------------------ the call
    def mask(self, x: Tensor, partner: Tensor, lam: Tensor) -> Tensor:
        """The block's own-share mask (B, 1, H, W) float32 for the pairs, from the momentum copy's features (no
        gradient into the copy; gradient into the block)."""
        copy_ = self._attached()
        param = next(copy_.parameters())
        with torch.no_grad():
            z = features_at(copy_, x.detach().to(param.dtype), self.stage_used)
        with torch.autocast(x.device.type, enabled=False):  # attention and sigmoid in float32 (as the official code)
            return self.block(z.float(), partner, lam.float(), (x.shape[-2], x.shape[-1]))

    def forward(self, x: Tensor, partner: Tensor, lam: Tensor, *, generator: torch.Generator | None = None,
                targets: Tensor | None = None, progress: float | None = None) -> tuple[Tensor, Tensor]:
        _check_images("mixblock", x, partner, lam)
        if progress is not None and not (is_number(progress) and 0 <= progress <= 1):
            raise ValueError(f"progress={progress!r}: mixer 'mixblock' expected the fraction of training done, in "
                             "[0, 1]")
        self.progress = None if progress is None else float(progress)
        copy_ = self._attached()
        b = x.shape[0]
        if targets is None or targets.dim() != 2 or targets.shape[0] != b or not targets.is_floating_point():
            got = None if targets is None else f"{targets.dtype} {tuple(targets.shape)}"
            raise ValueError(f"targets={got}: mixer 'mixblock' needs each sample's own target, expected a floating "
                             f"tensor of shape ({b}, C)")
        partner = partner.to(x.device)
        lam = lam.to(device=x.device, dtype=torch.float32)
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        xw = x.detach().to(work)
        xp = xw.index_select(0, partner)
        copy_.train()
        with torch.enable_grad():
            m = self.mask(x, partner, lam)
            blend = torch.lerp(xp, xw, m.to(work))  # M⊙x_i + (1 − M)⊙x_partner, gradient into M
            logits = copy_(blend.to(next(copy_.parameters()).dtype)).float()
            share = m.mean((1, 2, 3))  # (B,) λ̂: the blend's own share
            t = targets.detach().float()
            soft = torch.lerp(t.index_select(0, partner), t, share.detach()[:, None])
            ce = -(soft * torch.log_softmax(logits, 1)).sum(1).mean()
            lam_term = ((share - lam).abs() - self.lam_loss_margin).clamp_min(0.0).mean()
            loss = ce + self.lam_loss * lam_term
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        world = _world()
        if world > 1:  # the block's gradient over every process's pairs: all keep the same block
            for p in self.block.parameters():
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad.div_(world)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_now()
        self.optimizer.step()
        self.updates += 1
        self.last_loss = loss.detach()
        # the classifier's blend: the mask as it was computed, detached; input mixup at extreme λ
        own = m.detach()
        edge = (torch.minimum(lam, 1.0 - lam) <= self.mixup_margin).view(b, 1, 1, 1)
        own = torch.where(edge, lam.view(b, 1, 1, 1).expand_as(own), own)
        self.last_mask = own
        out = torch.lerp(xp, xw, own.to(work)).to(x.dtype)
        applied = torch.where(edge.view(b), lam, own.double().mean((1, 2, 3)).float())
        return out, applied
