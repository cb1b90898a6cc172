"""Mixing: deterministic given (partner, lam); the randomness lives in pairing and λ.

    x̃_i = λ_i · x_i + (1 − λ_i) · x_partner(i)
    ỹ_i = λ_i · y_i + (1 − λ_i) · y_partner(i)

``Mix`` composes a pairing strategy, a λ policy and a mixer chosen by registry name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .lam import LAMBDAS, NoMix, Policy, reads_time, timed_policies
from .pairing import PAIRINGS, _check_choice, _rand, float32_region
from .registry import Registry

MIXERS: Registry = Registry("mixer")

def reads_pair(policy: object) -> bool:
    """Whether a λ policy (or its class) reads the pair: ``reads_pair`` as its own class declares it (not
    inherited: a subclass may read what its parent did not), True where it does not say (the safe guess)."""
    cls = policy if isinstance(policy, type) else type(policy)
    return bool(vars(cls).get("reads_pair", True))


def _check_pair_args(x: Tensor, partner: Tensor, lam: Tensor, what: str) -> None:
    b = x.shape[0] if x.dim() else 0
    if b < 1:
        raise ValueError(f"{what} should have a batch dimension of size >= 1, but got shape {tuple(x.shape)}")
    if partner.shape != (b,) or partner.dtype != torch.long:
        raise ValueError(f"partner should be a LongTensor of shape ({b},), but got {partner.dtype} {tuple(partner.shape)}")
    if lam.shape != (b,) or not lam.is_floating_point():
        raise ValueError(f"lam should be a floating tensor of shape ({b},), but got {lam.dtype} {tuple(lam.shape)}")


def _lerp_rows(t: Tensor, partner: Tensor, lam: Tensor) -> Tensor:
    # lerp(a, b, w) = a + w (b − a), computed as b − (b − a)(1 − w) for w ≥ ½, so λ = 1 returns
    # x_i bit-exactly and λ = 0 returns x_partner(i) bit-exactly.
    # In place on the gathered copy: the same kernel and bits as torch.lerp(gathered, t, w), one
    # (B, ...) allocation fewer (~35% faster on CPU at 512×3×32×32; autograd handles the in-place op).
    # bf16/fp16 rows are mixed in float32 with the float32 λ and rounded once at the end, so the
    # blend uses exactly the λ the targets use (λ rounded to bf16 is off by up to 0.2%).
    low = t.dtype in (torch.bfloat16, torch.float16)
    src = t.float() if low else t
    w = lam.to(device=t.device, dtype=src.dtype).view(-1, *([1] * (t.dim() - 1)))
    out = src.index_select(0, partner.to(t.device)).lerp_(src, w)
    return out.to(t.dtype) if low else out


def mix_inputs(x: Tensor, partner: Tensor, lam: Tensor) -> Tensor:
    """Input mixup: ``x̃_i = λ_i·x_i + (1 − λ_i)·x_partner(i)``.

    Args:
        x: (B, ...) any trailing shape, any floating dtype (float32, bf16, fp16 kept).
        partner: (B,) int64 indices into the batch (need not be a permutation).
        lam: (B,) coefficients in [0, 1] (values are not checked: that would sync a GPU).
    Returns:
        (B, ...) tensor of ``x``'s dtype and device. λ = 1 is the identity, exactly. bf16/fp16 rows
        are mixed in float32 and rounded once, so the blend's weights are exactly ``lam``.
    """
    _check_pair_args(x, partner, lam, "x")
    return _lerp_rows(x, partner, lam)


def mix_targets(y: Tensor, partner: Tensor, lam: Tensor, num_classes: int | None = None,
                smoothing: float = 0.0) -> Tensor:
    """Soft targets ``ỹ_i = λ_i·y_i + (1 − λ_i)·y_partner(i)``.

    Args:
        y: class indices (B,) int64 (``num_classes`` required), soft or one-hot targets (B, C)
            float, or regression targets (B,) / (B, k) float (mixed linearly, as in seed 002's
            MSE regression).
        partner, lam: as in ``mix_inputs``.
        smoothing: label smoothing ε for class targets: one-hot ``1 − ε + ε/C`` on the class and
            ``ε/C`` elsewhere (timm's convention), applied before mixing. Not for regression.
    Returns:
        (B, C) float32 for class indices; ``y``'s shape and dtype otherwise.
    """
    _check_pair_args(y, partner, lam, "y")
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing={smoothing!r}: expected a number in [0, 1)")
    if not y.is_floating_point():
        if y.dim() != 1:
            raise ValueError(f"class-index targets should have shape (B,), but got {tuple(y.shape)}")
        if num_classes is None or num_classes < 1:
            raise ValueError(f"num_classes={num_classes!r}: class-index targets need num_classes >= 1")
        # scatter, not F.one_hot: on CPU one_hot validates with min()/max().item() (a sync that
        # tests/test_mixing.py's detector would flag); scatter_ bounds-checks inside the kernel.
        y = torch.zeros(y.shape[0], num_classes, device=y.device).scatter_(1, y.long()[:, None], 1.0)
    elif smoothing and y.dim() != 2:
        raise ValueError(f"smoothing={smoothing} needs class targets (B,) or (B, C); got {tuple(y.shape)} (regression?)")
    if smoothing:
        y = y * (1.0 - smoothing) + smoothing / y.shape[1]
    return _lerp_rows(y, partner, lam)


class Mixer:
    """Base class of mixers: ``mixer(x, partner, lam, *, generator=None) -> (x_mixed, lam_applied)``.

    Deterministic given ``(partner, lam)`` (randomness of its own, like CutMix's box, only from
    ``generator``); returns the λ it actually applied, which the targets use. Register with
    ``@MIXERS.register("name")``. A mixer that only handles images (B, C, H, W) sets ``needs_images = True``
    (CutMix and the mask mixers of ``mixlab.engine.masks``); the training loop then refuses it for token
    ids and flat inputs in one line, before training.

    ``needs``: what else the mixer reads, each given to it as a keyword argument of the same name by whoever
    calls ``Mix`` (the training step computes it; it never branches on a mixer's name). Known needs:
    ``"input_grad"``: the gradient of the batch's clean loss (each sample against its own target) with respect
    to the input, (B, ...) like ``x``: one more forward and backward pass per step, for saliency (PuzzleMix);
    ``"targets"``: each sample's own target, as the mixed ones are made ((B, C) for classes), for a mixer
    that trains on its blends.

    A *learned* mixer (a mask generator trained beside the classifier, AutoMix's Mix Block) also defines
    ``attach(model)`` (called once before training: it may keep a momentum copy of the model and its own
    optimiser), ``after_step(model)`` (after each optimiser step of the model) and ``state_dict`` /
    ``load_state_dict`` (saved in the run's checkpoint, so a resumed run continues it); ``Mix`` relays them.
    A mixer with ``reads_time = True`` is also handed ``progress=`` (the fraction of training done), for
    schedules of its own (the Mix Block's lr and momentum).
    """

    needs: tuple[str, ...] = ()

    def __call__(self, x: Tensor, partner: Tensor, lam: Tensor, *,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


@MIXERS.register("input")
class InputMixer(Mixer):
    """Mixup on the inputs (Zhang et al. 2018). Returns ``(x̃, λ)`` with λ unchanged."""

    def __call__(self, x: Tensor, partner: Tensor, lam: Tensor, *,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        return mix_inputs(x, partner, lam), lam


@MIXERS.register("manifold")
class ManifoldMixer(InputMixer):
    """Manifold mixup (Verma et al. 2019): the same arithmetic, applied by the training loop to
    the hidden state at a randomly chosen block (``MixModel.embed(x, mix_at=k, mix=...)``)."""


@MIXERS.register("cutmix")
class CutMix(Mixer):
    """CutMix (Yun et al. 2019), one box per sample: the box, of area ≈ (1 − λ_i)·H·W at a uniform
    random centre and clipped to the image, is filled from the partner. The clipped box's area sets
    the λ actually applied, ``λ_i = 1 − area_i / (H·W)``, which is returned and used for the targets.

    Shape contract: x is (B, C, H, W).
    """

    needs_images = True  # the training loop refuses it where the inputs are not (B, C, H, W) images

    def __call__(self, x: Tensor, partner: Tensor, lam: Tensor, *,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        if x.dim() != 4:
            raise ValueError(f"mixer 'cutmix' needs images (B, C, H, W), but got shape {tuple(x.shape)}")
        _check_pair_args(x, partner, lam, "x")
        b, _, h, w = x.shape
        cut = (1.0 - lam.float()).clamp(0, 1).sqrt()  # side ratio
        centre = _rand((2, b), generator, x.device) * torch.tensor([[h], [w]], device=x.device)
        half_h, half_w = cut * h / 2, cut * w / 2
        y0, y1 = (centre[0] - half_h).round().clamp(0, h), (centre[0] + half_h).round().clamp(0, h)
        x0, x1 = (centre[1] - half_w).round().clamp(0, w), (centre[1] + half_w).round().clamp(0, w)
        rows = torch.arange(h, device=x.device)
        cols = torch.arange(w, device=x.device)
        in_r = (rows >= y0[:, None]) & (rows < y1[:, None])  # (B, H)
        in_c = (cols >= x0[:, None]) & (cols < x1[:, None])  # (B, W)
        box = (in_r[:, :, None] & in_c[:, None, :])[:, None]  # (B, 1, H, W)
        applied = 1.0 - in_r.sum(1) * in_c.sum(1) / float(h * w)
        return torch.where(box, x.index_select(0, partner), x), applied.float()


def mix_box_targets(y: Tensor, partner: Tensor, lam: Tensor) -> Tensor:
    """Detection targets of blended images (Zhang et al. 2019, mixup for detection): each blend keeps
    the boxes of *both* images, every box weighted by its own image's share.

    Args:
        y: (B, K, 5) float, per image up to K boxes ``(x0, y0, x1, y1, label)``, padded with label -1.
        partner, lam: as in ``mix_inputs`` (λ_i is image i's own weight).
    Returns:
        (B, 2K, 6) float32: image i's boxes with weight λ_i, then its partner's with weight 1 − λ_i,
        as ``(x0, y0, x1, y1, label, weight)``; padding keeps label -1 and weight 0. A box of weight 0
        (λ = 1: the partner's) is not a target (the detection loss drops it before matching).
    """
    _check_pair_args(y, partner, lam, "y")
    if y.dim() != 3 or y.shape[2] != 5 or not y.is_floating_point():
        raise ValueError(f"box targets should be (B, K, 5) float (x0, y0, x1, y1, label), got {y.dtype} {tuple(y.shape)}")
    lam = lam.to(device=y.device, dtype=torch.float32)
    own = torch.cat([y.float(), lam[:, None, None].expand(-1, y.shape[1], 1)], 2)
    other = torch.cat([y.float().index_select(0, partner.to(y.device)), (1.0 - lam)[:, None, None].expand(-1, y.shape[1], 1)], 2)
    out = torch.cat([own, other], 1)
    return torch.where(out[..., 4:5] >= 0, out, torch.tensor([-1.0, -1.0, -1.0, -1.0, -1.0, 0.0], device=y.device))


@dataclass(frozen=True)
class Mixed:
    """What the latest ``Mix`` call did: each sample's partner and the λ actually applied."""

    partner: Tensor  # (B,) int64, into the batch, or into ``pool`` when that is set
    lam: Tensor  # (B,) float32
    # the (x, y) ``partner`` indexes: scope='global', the gathered batch; a set-level pairing, the training set
    pool: tuple[Tensor, Tensor] | None = None
    target: Tensor | None = None  # the mixed targets ỹ the call returned
    own: Tensor | None = None  # (B,) what ``partner`` holds where a row drew itself (None: the row's position)
    from_set: bool = False  # ``pool`` is the training set (partners are dataset indices), not a batch


class Mix:
    """Pairing × λ policy × mixer, by registry name: ``x_mix, y_mix = mix(x, y)``.

    Example::

        mix = Mix(lam="distance", pairing="random", num_classes=10, lam_kwargs={"temperature": 0.5})
        for x, y, index in batches:
            x_mix, y_mix = mix(x, y, index=index, progress=epoch / epochs)
            loss = soft_cross_entropy(model(x_mix), y_mix)        # per-sample (B,)
            mix.observe(loss.detach(), index)                     # feedback for λ = g(L) policies
            loss.mean().backward()

    Feedback and side information are explicit arguments, never flags flipped by the loop:
    ``features=`` (B, D) for feature-space pairings and policies, ``index=`` dataset indices for
    per-sample state, ``progress=`` ∈ [0, 1] for schedules, ``observe(loss, index)`` for the loss.
    ``mix.last`` holds the latest ``Mixed(partner, lam)``. With ``lam='none'`` the inputs come back
    unchanged (and the targets one-hot), without pairing work.

    Several processes (DDP): ``gather(t)`` returns every process's ``t`` (equal shapes)
    concatenated along dim 0 in rank order, and ``rank`` is this process's. ``observe`` then
    feeds the λ policy the losses of all processes, so its state is the same everywhere. With
    ``scope='local'`` each process pairs within its own batch, drawing from its own
    ``generator``. With ``scope='global'`` pairing and λ are drawn over the gathered global
    batch with ``shared_generator``, which must be in the same state on every process (so all
    draw the same global pairing), and each process mixes its own rows with partners from any
    process; ``mix.last.partner`` then indexes ``mix.last.pool``. No gradient flows into the
    gathered rows: right for input mixup and CutMix, not for manifold mixup (hidden states).

    A pairing that draws partners from the whole training set (``needs_train_set``: ``label_kernel`` with
    ``partners='set'``, C-Mixup's official form) needs ``setup(num_samples=N, train_set=(x_train, y_train))``
    and ``index=`` on every call: partner j is a dataset index, its row ``x_train[j]`` is fetched as the set
    holds it, and ``mix.last`` records ``pool=(x_train, y_train)`` and ``own=index`` (j equal to a row's own
    index is a self-pair). Only λ policies that do not read the pair run with it (``reads_pair``), and
    neither ``scope='global'`` nor mixing hidden states (the set holds inputs) does.

    Two switches on the clock, for controls that ask whether *when* a policy mixes matters: ``mix_until=f``
    turns mixing off (λ = 1 for every row: each sample is its own blend, its target its own label) from
    ``progress`` f on, whatever the policy drew (the draws still happen, so the random streams stay those of
    the run without it); ``reverse_time=True`` hands the policy ``1 − progress`` (a schedule then runs from
    its end value back to its start; only a policy that ``reads_time``). Both need ``progress=``.
    """

    def __init__(self, lam: str = "beta", pairing: str = "random", mixer: str = "input", *,
                 num_classes: int | None = None, lam_kwargs: dict | None = None, pairing_kwargs: dict | None = None,
                 mixer_kwargs: dict | None = None, smoothing: float = 0.0,
                 generator: torch.Generator | None = None, gather: Callable[[Tensor], Tensor] | None = None,
                 rank: int = 0, scope: str = "local", shared_generator: torch.Generator | None = None,
                 boxes: bool = False, mix_until: float = 1.0, reverse_time: bool = False) -> None:
        self.lam_policy = LAMBDAS.build(lam, **(lam_kwargs or {}))
        if not (isinstance(mix_until, (int, float)) and 0.0 < mix_until <= 1.0):
            raise ValueError(f"mix_until={mix_until!r}: expected a number in (0, 1] (the fraction of training "
                             "after which mixing is off; 1: mix throughout)")
        if reverse_time and not reads_time(self.lam_policy):
            raise ValueError(f"reverse_time=True: lambda={lam} does not depend on the training time, so it has no "
                             f"clock to reverse; expected a policy that does ({', '.join(timed_policies())})")
        self.mix_until, self.reverse_time = float(mix_until), bool(reverse_time)
        self.pairing = PAIRINGS.build(pairing, **(pairing_kwargs or {}))
        self.mixer = MIXERS.build(mixer, **(mixer_kwargs or {}))
        self.num_classes, self.smoothing, self.generator = num_classes, smoothing, generator
        if boxes and (num_classes is not None or smoothing):
            raise ValueError("boxes=True: detection targets are boxes, mixed by weight; num_classes and smoothing do not apply")
        self.boxes = boxes  # targets are (B, K, 5) boxes, mixed by mix_box_targets
        _check_choice("scope", scope, ("local", "global"))
        if scope == "global" and (gather is None or shared_generator is None):
            raise ValueError("scope='global' needs gather= (all processes' rows) and shared_generator=")
        self.gather, self.rank, self.scope, self.shared_generator = gather, rank, scope, shared_generator
        if self.needs_train_set and reads_pair(self.lam_policy):
            blind = ", ".join(n for n in LAMBDAS.names() if not reads_pair(LAMBDAS.get(n)))
            raise ValueError(f"lambda={lam}: reads the pair, but pairing={pairing} draws partners from the training "
                             f"set (partners=set), not the batch the policy sees; expected a λ policy that does not "
                             f"read the pair ({blind}) or partners=batch")
        if self.needs_train_set and scope == "global":
            raise ValueError(f"scope='global': not supported with pairing={pairing}, which draws partners from the "
                             "training set (partners=set), not the gathered batch; expected local")
        if getattr(self.mixer, "needs", ()) and (self.needs_train_set or scope == "global"):
            raise ValueError(f"mixer={mixer}: reads {list(self.mixer.needs)} of the batch it mixes, but its partners "
                             f"come from {'the training set' if self.needs_train_set else 'other processes'}; "
                             "expected partners from the batch (pairing.partners=batch, trainer.pairing_scope=local)")
        self.train_set: tuple[Tensor, Tensor] | None = None
        self.last: Mixed | None = None

    @property
    def needs_train_set(self) -> bool:
        """Whether the pairing draws partners from the training set (``setup`` then needs ``train_set``)."""
        return bool(getattr(self.pairing, "needs_train_set", False))

    def sample(self, x: Tensor, y: Tensor | None = None, *, features: Tensor | None = None,
               index: Tensor | None = None, progress: float | None = None,
               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw ``(partner, lam)`` for a batch, without mixing anything (from ``generator``, by
        default the one ``Mix`` was built with). ``partner`` indexes the batch, or the training set
        (dataset indices) where the pairing draws from it (``needs_train_set``)."""
        if isinstance(self.lam_policy, NoMix):
            b = x.shape[0]
            return torch.arange(b, device=x.device), torch.ones(b, device=x.device)
        # Pairing and λ are sampling decisions, not part of the model: no gradient flows through
        # them (under manifold mixup x is a hidden state, and d/dx √0 at a self-pair is NaN).
        g, x = (self.generator if generator is None else generator), x.detach()
        features = None if features is None else features.detach()
        with float32_region(x.device):  # distances, assignments and λ in float32 under any autocast
            if self.needs_train_set:
                partner = self.pairing.draw_from_set(y, self._train_set(y)[1], generator=g)
            else:
                partner = self.pairing(x, y, features=features, generator=g)
            if (self.reverse_time or self.mix_until < 1.0) and progress is None:
                raise ValueError("mix_until/reverse_time: the clock switches need progress= (the fraction of "
                                 "training done) on every call; got None")
            clock = 1.0 - progress if self.reverse_time else progress
            lam = self.lam_policy(x, partner, features=features, index=index, progress=clock, generator=g)
            if progress is not None and progress >= self.mix_until:
                lam = torch.ones_like(lam)  # mixing off: every row its own blend
        return partner, lam

    @property
    def needs(self) -> tuple[str, ...]:
        """What the mixer reads besides the batch (``Mixer.needs``); none when nothing is mixed."""
        return () if isinstance(self.lam_policy, NoMix) else tuple(getattr(self.mixer, "needs", ()))

    def __call__(self, x: Tensor, y: Tensor, *, features: Tensor | None = None, index: Tensor | None = None,
                 progress: float | None = None, **side: Tensor) -> tuple[Tensor, Tensor]:
        missing = [k for k in self.needs if k not in side]
        if missing or set(side) - set(self.needs):
            raise ValueError(f"mixer {type(self.mixer).__name__} needs {list(self.needs)} as keyword arguments of Mix, "
                             f"got {sorted(side)}")
        if self.scope == "global" and not isinstance(self.lam_policy, NoMix):
            return self._mix_global(x, y, features=features, index=index, progress=progress)
        if self.needs_train_set and not isinstance(self.lam_policy, NoMix):
            return self._mix_from_set(x, y, features=features, index=index, progress=progress)
        partner, lam = self.sample(x, y, features=features, index=index, progress=progress)
        x_mix, lam = (x, lam) if isinstance(self.lam_policy, NoMix) else \
            self.mixer(x, partner, lam, generator=self.generator, **side, **self._clock(progress))
        y_mix = self._mix_targets(y, partner, lam)
        self.last = Mixed(partner, lam, target=y_mix)
        return x_mix, y_mix

    def _mix_global(self, x: Tensor, y: Tensor, *, features: Tensor | None, index: Tensor | None,
                    progress: float | None) -> tuple[Tensor, Tensor]:
        gather, b = self.gather, x.shape[0]
        xs, ys = gather(x.detach()), gather(y)
        fs = None if features is None else gather(features.detach())
        idx = None if index is None else gather(index)
        partner_all, lam_all = self.sample(xs, ys, features=fs, index=idx, progress=progress,
                                           generator=self.shared_generator)
        mine = slice(self.rank * b, (self.rank + 1) * b)
        partner, lam = partner_all[mine], lam_all[mine]
        x_mix, y_mix, lam = self._mix_with_rows(x, y, xs.index_select(0, partner), ys.index_select(0, partner), lam,
                                                progress)
        own = torch.arange(b, device=partner.device) + self.rank * b  # this process's rows in the gathered batch
        self.last = Mixed(partner, lam, pool=(xs, ys), target=y_mix, own=own)
        return x_mix, y_mix

    def _mix_from_set(self, x: Tensor, y: Tensor, *, features: Tensor | None, index: Tensor | None,
                      progress: float | None) -> tuple[Tensor, Tensor]:
        if index is None:
            raise ValueError(f"pairing {type(self.pairing).__name__} draws partners from the training set: Mix "
                             "needs index=(B,), the batch's dataset indices (a partner equal to one is a self-pair); "
                             "got None")
        train_x, train_y = self._train_set(y)
        partner, lam = self.sample(x, y, features=features, index=index, progress=progress)
        # The partners' rows as the training set holds them: a batch's augmentation (if any) is not applied to them.
        xp = train_x.index_select(0, partner.to(train_x.device)).to(device=x.device, dtype=x.dtype)
        yp = train_y.index_select(0, partner.to(train_y.device)).to(y.device)
        x_mix, y_mix, lam = self._mix_with_rows(x, y, xp, yp, lam, progress)
        self.last = Mixed(partner, lam, pool=(train_x, train_y), target=y_mix, own=index, from_set=True)
        return x_mix, y_mix

    def _clock(self, progress: float | None) -> dict:
        """``progress=`` for a mixer that ``reads_time`` (a learned mixer's own schedules): the training clock as
        it is, not the one the clock switches (mix_until, reverse_time) hand the λ policy."""
        return {"progress": progress} if getattr(self.mixer, "reads_time", False) else {}

    def _mix_with_rows(self, x: Tensor, y: Tensor, xp: Tensor, yp: Tensor,
                       lam: Tensor, progress: float | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Mix each row i with the partner row ``xp[i]``, ``yp[i]`` (rows from outside the batch): returns
        ``(x_mix, y_mix, lam_applied)``. Mixes [own rows; partner rows] with partner i -> B + i (the second
        half with itself, λ = 1) and keeps the first half: any mixer works unchanged and the own rows keep
        their gradient."""
        b = x.shape[0]
        rows = torch.arange(b, 2 * b, device=x.device).repeat(2)
        x_mix, lam2 = self.mixer(torch.cat([x, xp]), rows, torch.cat([lam, torch.ones_like(lam)]),
                                 generator=self.generator, **self._clock(progress))
        y_mix = self._mix_targets(torch.cat([y, yp]), rows, lam2)[:b]
        return x_mix[:b], y_mix, lam2[:b]

    def _train_set(self, y: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.train_set is None or y is None:
            raise ValueError(f"pairing {type(self.pairing).__name__} draws partners from the training set: it needs "
                             "Mix.setup(train_set=(x_train, y_train)) and the batch's targets y; got "
                             f"train_set={'given' if self.train_set is not None else 'None'}, "
                             f"y={'given' if y is not None else 'None'}")
        return self.train_set

    def clean_targets(self, y: Tensor) -> Tensor:
        """Each sample's own target, as the mixed ones are made (one-hot with the label smoothing; boxes at weight 1)."""
        b = y.shape[0]
        return self._mix_targets(y, torch.arange(b, device=y.device), torch.ones(b, device=y.device))

    def _mix_targets(self, y: Tensor, partner: Tensor, lam: Tensor) -> Tensor:
        return mix_box_targets(y, partner, lam) if self.boxes else mix_targets(y, partner, lam, self.num_classes,
                                                                                self.smoothing)

    def target_entropy(self) -> Tensor | None:
        """H(ỹ_i) (B,) of the latest mixed class targets, in nats (None for regression: ``num_classes``
        unset). The smallest cross-entropy any prediction can reach on that target."""
        if self.num_classes is None or self.last is None or self.last.target is None:
            return None
        t = self.last.target.detach().float()
        return -torch.xlogy(t, t).sum(1)

    def observe(self, loss: Tensor, index: Tensor | None = None) -> None:
        """Feed the latest training loss (per sample (B,) or its mean) to the λ policy, with the
        entropy of the targets this ``Mix`` last returned (policies that learn from the loss use
        the excess over it)."""
        if type(self.lam_policy).observe is Policy.observe:
            return
        entropy = self.target_entropy()
        if entropy is not None and loss.dim() == 0:
            entropy = entropy.mean()
        if self.gather is not None:
            loss = self.gather(loss.detach().reshape(-1))
            index = None if index is None else self.gather(index)
            entropy = None if entropy is None else self.gather(entropy.reshape(-1))
        self.lam_policy.observe(loss, index, target_entropy=entropy)

    def setup(self, *, num_samples: int, train_set: tuple[Tensor, Tensor] | None = None) -> None:
        """Tell the λ policy the training-set size (per-sample state is allocated once) and the
        number of classes this ``Mix`` was built with; and, for a pairing that draws partners from the
        training set (``needs_train_set``), give that set: ``train_set=(x_train, y_train)``, the N rows a
        batch's ``index`` points into, inputs in the representation the batches have (not copied)."""
        if self.needs_train_set:
            if train_set is None:
                raise ValueError(f"pairing {type(self.pairing).__name__} draws partners from the training set: setup "
                                 "needs train_set=(x_train, y_train); got None")
            tx, ty = train_set
            if tx.shape[:1] != (num_samples,) or ty.shape[:1] != (num_samples,):
                raise ValueError(f"train_set should hold num_samples={num_samples} inputs and targets, but got shapes "
                                 f"{tuple(tx.shape)} and {tuple(ty.shape)}")
            self.train_set = (tx, ty)
        self.lam_policy.setup(num_samples=num_samples, num_classes=self.num_classes)

    def attach(self, model: torch.nn.Module) -> None:
        """Give a learned mixer (one with ``attach``: a mask generator trained beside the classifier) the model
        it serves, once, before training; a mixer without it needs nothing."""
        if hasattr(self.mixer, "attach"):
            self.mixer.attach(model)

    def after_step(self, model: torch.nn.Module) -> None:
        """After each optimiser step of ``model``: a learned mixer's own update (a momentum copy of the model)."""
        if hasattr(self.mixer, "after_step"):
            self.mixer.after_step(model)

    def state_dict(self) -> dict:
        state = {"lam": self.lam_policy.state_dict()}
        if hasattr(self.mixer, "state_dict"):  # a learned mixer: its weights, its optimiser, its momentum copy
            state["mixer"] = self.mixer.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.lam_policy.load_state_dict(state["lam"])
        if hasattr(self.mixer, "load_state_dict") and "mixer" in state:
            self.mixer.load_state_dict(state["mixer"])
