"""λ policies: the mixing coefficient of each pair.

A policy is called as ``policy(x, partner, features=None, index=None, progress=None,
generator=None)`` and returns ``lam: Tensor[B]`` (float32, on ``x.device``, values in
[0, 1]); ``lam[i]`` is the weight of sample ``i`` itself and ``1 - lam[i]`` that of its
partner. Policies that learn from training get the loss through ``observe(loss, index)``,
called explicitly by the training loop (see ``Mix.observe``). Nothing here reads the config.
"""
from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from .pairing import METRICS, SPACES, _check_choice, _rand, _space, batch_distance_scale, pair_distance
from .registry import Registry, is_number

LAMBDAS: Registry = Registry("lambda")


def beta_icdf(u: Tensor, a: Tensor | float, *, grid: int = 1024) -> Tensor:
    """Inverse CDF of the symmetric Beta(a, a) distribution at ``u``, elementwise, on the device.

    torch has no incomplete beta function, and a host call to scipy would sync the GPU, so the
    CDF is integrated numerically per element on a grid in which the integrand is bounded:
    on [0, 1/2] substitute t = s^(1/p) with p = min(a, 1), which turns
    ``t^(a-1) (1-t)^(a-1) dt`` into ``(1/p) s^(a/p - 1) (1 - s^(1/p))^(a-1) ds`` (no
    singularity at 0 even for a < 1), integrate with the trapezoid rule, invert by linear
    interpolation, and use symmetry F(1 - t) = 1 - F(t) for the upper half. Accurate to
    ~2e-5 against ``scipy.special.betaincinv`` for a in [0.01, 1000] (tests/test_lam.py). A scalar
    ``a`` builds one table for all of ``u``; a tensor ``a`` one table per element.

    Args:
        u: probabilities in [0, 1], any shape.
        a: the shape parameter (> 0), a float or a tensor broadcastable to ``u``.
    Returns:
        a float32 tensor of ``u``'s shape with values in [0, 1].
    """
    u64 = u.double()
    t = beta_icdf_lower(torch.minimum(u64, 1.0 - u64), a)
    return torch.where(u64 > 0.5, 1.0 - t, t).float()


def beta_icdf_lower(q: Tensor, a: Tensor | float, *, grid: int = 1024) -> Tensor:
    """The lower half of :func:`beta_icdf`: F⁻¹(q) for ``q`` in [0, ½], in float64, in [0, ½].

    Working with the lower tail keeps the digits that ``1 - t`` would lose: a Beta(0.1, 0.1)
    draw within 1e-9 of 1 is exactly 1.0 in float32, but its distance to 1 is a perfectly good
    float64. Warping a draw again (SK-Mixup) must start from that distance, not from 1.0.
    """
    q = q.double()
    shape = q.shape
    if isinstance(a, (int, float)):  # one shared table (1, grid), cached: no rebuild per batch
        (s, c, p, e), q = _scalar_table(float(a), grid, str(q.device)), q.reshape(1, -1)
    else:
        a64 = a.to(device=q.device, dtype=torch.float64)
        if a64.numel() == 1:
            a64, q = a64.reshape(1), q.reshape(1, -1)
        else:  # a table per element (n, grid)
            a64, q = a64.expand(shape).reshape(-1), q.reshape(-1, 1)
        s, c, p, e = _table(a64, grid)
    q = q.pow(1.0 / e)
    k = torch.searchsorted(c, q).clamp(1, grid - 1)
    c0, c1 = c.gather(1, k - 1), c.gather(1, k)
    s0, s1 = s.gather(1, k - 1), s.gather(1, k)
    s_q = s0 + (s1 - s0) * ((q - c0) / (c1 - c0).clamp_min(1e-300))
    return s_q.pow(1.0 / p).reshape(shape)


def beta_cdf_lower(t: Tensor, a: Tensor | float, *, grid: int = 1024) -> Tensor:
    """The CDF F(t) of the symmetric Beta(a, a) at ``t`` in [0, ½], elementwise, in float64, in [0, ½].

    The forward twin of :func:`beta_icdf_lower`, read off the same table: the grid ``s`` (with
    t = s^(1/p)) and ``F^(1/e)`` on it, interpolated linearly in s at s = t^p. Near t = 0,
    F ~ C·t^a = C·s^(a/p), so F^(1/e) (e = a/p) is linear in s there. Against
    ``scipy.stats.beta.cdf``, for a in [0.01, 1000]: absolute error below 2e-5, and for a <= 1
    (where F is steep at the ends) relative error below 1e-5 down to t = 1e-300, so a Beta(0.01, 0.01)
    draw 1e-40 from an end keeps its digits (tests/test_fidelity_lam.py). For t > ½ use symmetry,
    F(1 − t) = 1 − F(t).
    """
    t = t.double()
    shape = t.shape
    if isinstance(a, (int, float)):
        (s, c, p, e), t = _scalar_table(float(a), grid, str(t.device)), t.reshape(1, -1)
    else:
        a64 = a.to(device=t.device, dtype=torch.float64)
        if a64.numel() == 1:
            a64, t = a64.reshape(1), t.reshape(1, -1)
        else:
            a64, t = a64.expand(shape).reshape(-1), t.reshape(-1, 1)
        s, c, p, e = _table(a64, grid)
    s_t = t.clamp(0.0, 0.5).pow(p)
    k = torch.searchsorted(s, s_t.contiguous()).clamp(1, grid - 1)
    c0, c1 = c.gather(1, k - 1), c.gather(1, k)
    s0, s1 = s.gather(1, k - 1), s.gather(1, k)
    c_t = c0 + (c1 - c0) * ((s_t - s0) / (s1 - s0).clamp_min(1e-300)).clamp(0.0, 1.0)
    return c_t.pow(e).clamp(0.0, 0.5).reshape(shape)


def _table(a64: Tensor, grid: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Grid ``s`` (n, grid), transformed CDF ``F^(1/e)`` on it, and the exponents p, e (n, 1)."""
    p = a64.clamp(max=1.0)[:, None]
    # Grid denser towards s = 2^-p, where (1 - s^(1/p)) turns quickly for small a, and towards
    # s = 0, where the integrand ~ s^(a-1) has an unbounded slope for 1 < a < 2 (the trapezoid
    # rule on a uniform first cell was off by up to 5e-4 in t there).
    t = torch.linspace(0.0, 1.0, grid, dtype=torch.float64, device=a64.device)
    s = 0.5**p * (0.5 - 0.5 * torch.cos(math.pi * t))
    # log-integrand minus its row maximum: no underflow for large a; xlogy gives 0·log 0 = 0.
    log_h = torch.xlogy(a64[:, None] / p - 1.0, s) + torch.xlogy(a64[:, None] - 1.0, 1.0 - s.pow(1.0 / p))
    h = (log_h - log_h.amax(1, keepdim=True)).exp()
    area = (h[:, 1:] + h[:, :-1]) * 0.5 * s.diff(dim=1)
    c = torch.cat([torch.zeros_like(h[:, :1]), area.cumsum(1)], 1)
    c = c * (0.5 / c[:, -1:])  # F on the grid; F(1/2) = 1/2 by symmetry
    # F ~ s^e near 0 with e = a/p = max(a, 1): interpolate s linearly in F^(1/e), not F.
    e = a64[:, None] / p
    return s, c.pow(1.0 / e), p, e


@functools.lru_cache(maxsize=64)
def _scalar_table(a: float, grid: int, device: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _table(torch.tensor([a], dtype=torch.float64, device=device), grid)


def sample_beta(b: int, alpha: float, *, per_sample: bool, generator: torch.Generator | None,
                device: torch.device) -> Tensor:
    """(B,) draws of Beta(α, α): B independent ones, or one shared by the batch."""
    u = _rand((b if per_sample else 1,), generator, device)
    return beta_icdf(u, alpha).expand(b).contiguous()


def beta_strength(alpha: float) -> float:
    """The mean mixing strength E[min(λ, 1 − λ)] of λ ~ Beta(α, α): ½ − 1/(α·4^α·B(α, α)).

    (The mean absolute deviation of a symmetric Beta from ½ is 1/(α·4^α·B(α, α)); strength is ½
    minus it.) 0 as α → 0 (λ at 0 or 1: no mixing), ¼ at α = 1 (uniform), → ½ as α → ∞."""
    a = float(alpha)
    return 0.5 - math.exp(-(math.log(a) + a * math.log(4.0) + 2.0 * math.lgamma(a) - math.lgamma(2.0 * a)))


STRENGTH_RANGE = (0.01, 0.49)  # inside what α in [0.01, 1000] can reach (0.0068 .. 0.4911)


def beta_alpha_for_strength(strength: float) -> float:
    """The α* with ``beta_strength(α*) = strength``: Beta(α*, α*) mixes, on average, exactly as strongly
    as a policy of measured strength ``strength`` (a strength-matched control). Bisection in log α
    (the strength increases with α), to a relative 1e-12."""
    lo_s, hi_s = STRENGTH_RANGE
    if not (is_number(strength) and lo_s <= strength <= hi_s):
        raise ValueError(f"strength={strength!r}: expected a number in [{lo_s}, {hi_s}] (E[min(λ, 1 − λ)]; "
                         "Beta(1, 1) has 0.25)")
    lo, hi = math.log(0.01), math.log(1000.0)
    while hi - lo > 1e-12:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if beta_strength(math.exp(mid)) < strength else (lo, mid)
    return math.exp(0.5 * (lo + hi))


def unmixed_self_pairs(lam: Tensor, partner: Tensor, own: Tensor | None = None) -> Tensor:
    """λ as applied: 1 where a sample is its own partner, ``lam`` elsewhere, (B,).

    x_i blended with itself is x_i whatever λ_i, so a self-pair made no blend and its strength
    min(λ, 1 − λ) is 0. ``random`` and ``label_kernel`` pairings draw self-pairs (C-Mixup weighs the
    sample itself highest), and counting them at the drawn λ overstated the strength the training loop
    records. ``own``: what ``partner`` holds for "itself" at each row, by default the row's position
    (its position in the gathered batch under ``pairing_scope=global``; its dataset index where
    partners are dataset indices)."""
    own = torch.arange(lam.shape[0], device=partner.device) if own is None else own
    return torch.where(partner == own.to(partner.device), torch.ones_like(lam), lam)


def _check_positive(name: str, value: float) -> float:
    if not (is_number(value) and value > 0):
        raise ValueError(f"{name}={value!r}: expected a finite number > 0")
    return float(value)


def _check_alpha(name: str, value: float) -> float:
    # The range in which beta_icdf is accurate (tests/test_lam.py); at alpha = 1e-20 it returns NaN.
    if not (is_number(value) and 0.01 <= value <= 1000):
        raise ValueError(f"{name}={value!r}: expected a number in [0.01, 1000]")
    return float(value)


def reads_time(policy: object) -> bool:
    """Whether a λ policy (a registered name, a class or an instance) depends on the training time (its
    ``reads_time``): only such a policy has a clock to reverse."""
    cls = LAMBDAS.get(policy) if isinstance(policy, str) else policy if isinstance(policy, type) else type(policy)
    return bool(getattr(cls, "reads_time", False))


def timed_policies() -> list[str]:
    """The registered λ policies that depend on the training time (for the messages that name them)."""
    return [n for n in LAMBDAS.names() if reads_time(n)]


class Policy:
    """Base class: stateless by default. ``observe`` and ``setup`` are no-ops unless overridden.

    ``dynamic``: whether λ depends on the pair, the model's state or the training time (True, the
    default, for a new policy) rather than being a fixed draw or value; ``python -m mixlab.controls``
    adds a strength-matched Beta control next to each dynamic policy of a comparison.

    ``reads_pair``: whether the draw looks at the partner (its input, features or distance to the sample).
    Read from the class's own body only (``mixing.reads_pair``): a policy that does not say is taken to
    read it, a subclass included, and cannot run with partners drawn from outside the batch.

    ``reads_time``: whether the draw depends on ``progress`` (the fraction of training done); only such a
    policy can run with its clock reversed (``Mix(reverse_time=True)``, the time-reversal control).
    """

    dynamic = True
    reads_pair = True
    reads_time = False

    def __call__(self, x: Tensor, partner: Tensor, *, features: Tensor | None = None, index: Tensor | None = None,
                 progress: float | None = None, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    def observe(self, loss: Tensor, index: Tensor | None = None, *, target_entropy: Tensor | None = None) -> None:
        """Training feedback: the loss of the latest mixed batch, per sample (B,) or its mean (), and
        the entropy of each mixed target (B,) where the targets are class distributions (else None)."""

    def setup(self, *, num_samples: int | None = None, num_classes: int | None = None) -> None:
        """Tell the policy the training-set size (for per-sample state) and the number of classes
        (None for regression)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@LAMBDAS.register("none")
class NoMix(Policy):
    """λ = 1: no mixing, the ERM baseline."""

    reads_pair = False  # its draw never looks at the partner

    dynamic = False

    def __call__(self, x, partner, **_: object) -> Tensor:
        return torch.ones(x.shape[0], device=x.device)


@LAMBDAS.register("constant")
class Constant(Policy):
    """λ = ``value`` for every pair: each sample keeps weight ``value``, its partner 1 − ``value``.

    Seed 002 trains with 0.2 given to the *partner* (x̂_i = 0.8·x_i + 0.2·x_j), which is
    ``value=0.8`` here (the default): mixlab's λ is always the sample's own weight.
    """

    reads_pair = False  # its draw never looks at the partner

    dynamic = False

    def __init__(self, *, value: float = 0.8) -> None:
        if not (is_number(value) and 0.0 <= value <= 1.0):
            raise ValueError(f"value={value!r}: expected a number in [0, 1]")
        self.value = float(value)

    def __call__(self, x, partner, **_: object) -> Tensor:
        return torch.full((x.shape[0],), self.value, device=x.device)


@LAMBDAS.register("beta")
class Beta(Policy):
    """Classic mixup (Zhang et al. 2018): λ ~ Beta(α, α), one per batch or one per sample.

    ``strength=s`` sets α instead, to the α* whose mean strength E[min(λ, 1 − λ)] is s
    (:func:`beta_alpha_for_strength`): fixed mixup as strong, on average, as a dynamic policy
    that measured s, so a comparison can separate "dynamic" from "how much".
    """

    reads_pair = False  # its draw never looks at the partner

    dynamic = False

    def __init__(self, *, alpha: float = 1.0, per_sample: bool = True, strength: float | None = None) -> None:
        self.alpha = _check_alpha("alpha", alpha) if strength is None else beta_alpha_for_strength(strength)
        self.strength = None if strength is None else float(strength)
        self.per_sample = bool(per_sample)

    def __call__(self, x, partner, *, generator=None, **_: object) -> Tensor:
        return sample_beta(x.shape[0], self.alpha, per_sample=self.per_sample, generator=generator, device=x.device)


@LAMBDAS.register("automix")
class AutoMix(Policy):
    """Seed 002's AutoMixup: the partner gets λ_seed = ½·(1 − ε)/(1 + ε), ε ~ U(0, 1) per sample,
    and the sample itself keeps 1 − λ_seed (x̂_i = (1 − λ_seed)·x_i + λ_seed·x_j).

    mixlab's λ is the sample's own weight, so this returns λ = 1 − ½(1 − ε)/(1 + ε) ∈ [½, 1],
    E[λ] = 1 − (ln 2 − ½) = 1.5 − ln 2 ≈ 0.807: every sample dominates the example it leads.
    Under a permutation pairing the two conventions give the same blends in distribution; under
    ``nearest``, ``offset``, ``same_class`` and other pairings that are not, only this one keeps
    every sample dominant in its own mixed example.
    """

    reads_pair = False  # its draw never looks at the partner

    def __call__(self, x, partner, *, generator=None, **_: object) -> Tensor:
        eps = _rand((x.shape[0],), generator, x.device)
        return 1.0 - 0.5 * (1.0 - eps) / (1.0 + eps)


@LAMBDAS.register("distance")
class Distance(Policy):
    """Seed 000 §3.1/§4.1: λ = f(d(x_i, x_partner(i))), decreasing in the pair distance.

    Maps (with temperature τ): ``exp``: λ = e^(−d/τ) (the seed's example at τ = 1);
    ``inverse``: λ = 1/(1 + d/τ); ``gaussian``: λ = e^(−(d/τ)²).
    d is measured by ``metric`` in input space or, with ``space='feature'``, in the feature
    space the training loop passes (the model's penultimate embedding, or the hidden state
    at the mixing layer for manifold mixup).

    ``normalize`` divides d by the ``mean`` (default) or ``median`` distance over *all* pairs of
    the batch (:func:`~mixlab.engine.pairing.batch_distance_scale`), so d ≈ 1 for a typical pair
    whatever the data's scale, while what the pairing chose still shows: ``pairing=nearest``
    gives d < 1 (λ large, little mixing), ``farthest`` d > 1. (Dividing by the chosen pairs' own
    mean would normalise both to ≈ 1 and erase the pairing.) ``normalize='none'`` is the seed's literal form;
    on images it is degenerate: raw Euclidean distances between Fashion-MNIST images are
    ~20 (normalised pixels), e^(−20) ≈ 2e-9, so λ ≈ 0 and every sample is replaced by its
    partner with the partner's label: no interpolation happens at all.
    """

    def __init__(self, *, metric: str = "euclidean", map: str = "exp", temperature: float = 1.0,
                 normalize: str = "mean", space: str = "input") -> None:
        self.metric = _check_choice("metric", metric, METRICS)
        self.map = _check_choice("map", map, ("exp", "inverse", "gaussian"))
        self.temperature = _check_positive("temperature", temperature)
        self.normalize = _check_choice("normalize", normalize, ("mean", "median", "none"))
        self.space = _check_choice("space", space, SPACES)

    def __call__(self, x, partner, *, features=None, **_: object) -> Tensor:
        z = _space(x, features, self.space, "lambda 'distance'")
        d = pair_distance(z, z.index_select(0, partner), self.metric)
        if self.normalize != "none":
            d = d / batch_distance_scale(z, self.metric, self.normalize).clamp_min(1e-12)
        d = d / self.temperature
        if self.map == "exp":
            return torch.exp(-d)
        if self.map == "inverse":
            return 1.0 / (1.0 + d)
        return torch.exp(-d.square())


SK_WARPS = ("inverse_cdf", "cdf")  # lam.warp of sk; conf/lambda/sk.yaml, config.RULES


@LAMBDAS.register("sk")
class SimilarityKernel(Policy):
    """SK-Mixup (Bouniot et al., "Tailoring Mixup to Data for Calibration", ICLR 2025).

    d̃_i = d_i / d̄ with d̄ the mean distance over all pairs of the batch;
    τ_i = τ_max · exp(−(d̃_i − 1) / (2 τ_std²)), and λ'_i ~ Beta(α, α) warped by τ_i. ``warp``:

    - ``inverse_cdf`` (default): λ_i = F⁻¹_{Beta(τ_i, τ_i)}(λ'_i). The form of the authors' published
      configurations: every ``sk_mixup.yaml`` of their official code (github.com/qbouniot/sim_kernel_mixup,
      ``classification/experiments/classification/*/configs/*/sk_mixup.yaml``) sets
      ``warping: inverse_beta_cdf``, i.e. ``KernelMixup.__call__`` in
      ``classification/torch_uncertainty/transforms/mixup.py`` with ``scipy.stats.beta.ppf`` at
      ``sim_gauss_kernel(d / d.mean(), inverse_cdf=True)``. For α = 1, λ_i ~ Beta(τ_i, τ_i) exactly.
    - ``cdf``: λ_i = F_{Beta(w_i, w_i)}(λ'_i) with w_i = 1/τ_i: ``KernelMixup``'s own default
      (``warping="beta_cdf"``) in that file, and the only form of torch-uncertainty
      (0.13.0, ``torch_uncertainty/transforms/mixup.py``, ``WarpingMixup.forward`` with ``sim_gauss_kernel``
      and ``beta_warping``; ``mixtype="kernel_warping"``). torch-uncertainty normalises the distance
      inside its kernel as τ_max·exp(−(d − 1)/(2τ_std²·d̄)), which is this τ_i only where d̄ = 1;
      elsewhere it is τ_i·exp(−(1 − 1/d̄)/(2τ_std²)), i.e. τ_max scaled by about e^(−1/(2τ_std²))
      (0.14 at τ_std = ½) for raw squared distances (d̄ ≫ 1). mixlab uses the authors' d̃ in both forms.

    Both send similar pairs (small d̃, large τ, small w) towards λ = ½ (strong mixing) and distant ones
    towards 0 or 1, and both leave λ' alone where τ_i = 1. They differ in how far: at the defaults, on
    standardised digits in batches of 128, the inverse form's mean strength is 1.7% below the CDF form's
    under random pairing and 12% below under ``pairing=farthest`` (d̃ > 1; tests/test_fidelity_lam.py).
    τ (inverse) and w (cdf) are clipped to [0.01, 1000], where ``beta_icdf`` and
    :func:`beta_cdf_lower` are accurate. The reference code divides by the mean of the chosen pairs'
    distances, which equals the all-pairs mean in expectation under its random permutation and, unlike
    it, keeps the meaning of d̃ under distance-based pairings.

    The base draw λ' is warped through its distance to the nearer end (float64), never through
    a float32 value: λ' = 1 − 1e-9 rounds to 1.0 in float32, and ω_τ(1.0) = 1 where
    ω_τ(1 − 1e-9) ≈ 1 − 1e-3 for τ = 3 — a pile of unmixed draws at exactly λ = 1, none at 0.
    """

    def __init__(self, *, alpha: float = 1.0, tau_max: float = 1.0, tau_std: float = 0.5,
                 metric: str = "sqeuclidean", space: str = "input", warp: str = "inverse_cdf") -> None:
        self.alpha = _check_alpha("alpha", alpha)
        self.tau_max = _check_positive("tau_max", tau_max)
        self.tau_std = _check_positive("tau_std", tau_std)
        self.metric = _check_choice("metric", metric, METRICS)
        self.space = _check_choice("space", space, SPACES)
        self.warp = _check_choice("warp", warp, SK_WARPS)

    def kernel(self, d: Tensor, scale: Tensor | float | None = None) -> Tensor:
        """τ_max · exp(−(d̃ − 1)/(2 τ_std²)) of each pair, unclipped, with d̃ = d / ``scale`` (by default
        the mean of ``d`` itself, the paper's choice)."""
        d_norm = d / (d.mean() if scale is None else torch.as_tensor(scale, device=d.device)).clamp_min(1e-12)
        return self.tau_max * torch.exp(-(d_norm - 1.0) / (2.0 * self.tau_std**2))

    def tau(self, d: Tensor, scale: Tensor | float | None = None) -> Tensor:
        """The warping parameter τ_i of each pair from its raw distance d_i (B,): the kernel, clipped."""
        return self.kernel(d, scale).clamp(0.01, 1000.0)

    def __call__(self, x, partner, *, features=None, generator=None, **_: object) -> Tensor:
        z = _space(x, features, self.space, "lambda 'sk'")
        d, scale = pair_distance(z, z.index_select(0, partner), self.metric), batch_distance_scale(z, self.metric, "mean")
        u = _rand((x.shape[0],), generator, x.device).double()
        # λ' = t or 1 − t with t = F⁻¹_α(min(u, 1 − u)) ≤ ½; both warps are odd about ½: ω(1 − t) = 1 − ω(t).
        t = beta_icdf_lower(torch.minimum(u, 1.0 - u), self.alpha)
        if self.warp == "inverse_cdf":
            warped = beta_icdf_lower(t, self.tau(d, scale))
        else:
            warped = beta_cdf_lower(t, (1.0 / self.kernel(d, scale).double()).clamp(0.01, 1000.0))
        return torch.where(u > 0.5, 1.0 - warped, warped).float()


@LAMBDAS.register("loss")
class Loss(Policy):
    """Seed 000 §3.2/§4.2: λ = g(L) from the model's training loss, smaller while the loss is high.

    ``map='inverse'``: g(L) = 1/(1 + L/τ) (the seed's, τ = 1); ``map='exp'``: g(L) = e^(−L/τ).

    ``signal`` is what L measures. ``excess`` (default): the cross-entropy minus the entropy of
    the mixed target, CE(ỹ, p) − H(ỹ) = KL(ỹ ‖ p), which is 0 for a perfect fit, so λ can
    approach 1 as the model learns. ``ce``: the seed's literal mixed cross-entropy, which can
    never fall below H(ỹ): even a perfect predictor of a Beta(1, 1)-mixed target leaves
    E[H(ỹ)] = ½ nat, so λ = 1/(1 + L) stays below ≈ 0.67 and in practice locks near the
    strongest mixing. For regression (no classes) the two are the same (the mixed target is
    exact, the squared error's floor is 0). ``Mix.observe`` supplies H(ỹ) of the batch it mixed.

    L is an exponential moving average of the batch signal (``momentum``), or with
    ``per_sample=True`` the last value observed for each sample by its dataset index (samples
    not yet seen use the moving average). This costs no extra forward pass: the loop passes
    the per-sample losses it already computed to ``observe``. Before anything is observed,
    L = ``init_loss``, by default that of a uniform predictor: ln C for C classes (told by
    ``setup(num_classes=C)``), 1 otherwise (the squared error of predicting the mean of
    standardised regression targets).
    """

    reads_pair = False  # its draw never looks at the partner

    def __init__(self, *, map: str = "inverse", temperature: float = 1.0, momentum: float = 0.9,
                 per_sample: bool = False, signal: str = "excess", init_loss: float | None = None,
                 num_samples: int | None = None, num_classes: int | None = None) -> None:
        self.map = _check_choice("map", map, ("inverse", "exp"))
        self.temperature = _check_positive("temperature", temperature)
        if not (is_number(momentum) and 0.0 <= momentum < 1.0):
            raise ValueError(f"momentum={momentum!r}: expected a number in [0, 1)")
        if init_loss is not None and not (is_number(init_loss) and init_loss >= 0):
            raise ValueError(f"init_loss={init_loss!r}: expected null (a uniform predictor's loss) or a number >= 0")
        self.signal = _check_choice("signal", signal, ("excess", "ce"))
        self.momentum, self.per_sample = float(momentum), bool(per_sample)
        self.init_loss = None if init_loss is None else float(init_loss)
        self.prior = 1.0 if self.init_loss is None else self.init_loss
        self.ema: Tensor | None = None
        self.seen: Tensor | None = None  # (N,) last signal per sample, NaN where unseen
        self.setup(num_samples=num_samples, num_classes=num_classes)

    def setup(self, *, num_samples: int | None = None, num_classes: int | None = None) -> None:
        if self.per_sample and num_samples is not None:
            self.seen = torch.full((int(num_samples),), float("nan"))
        if self.init_loss is None and num_classes is not None:
            self.prior = math.log(num_classes) if num_classes > 1 else 1.0

    def g(self, loss: Tensor) -> Tensor:
        L = loss / self.temperature
        return 1.0 / (1.0 + L) if self.map == "inverse" else torch.exp(-L)

    def _current(self, device: torch.device) -> Tensor:
        return self.ema.to(device) if self.ema is not None else torch.tensor(self.prior, device=device)

    def __call__(self, x, partner, *, index=None, **_: object) -> Tensor:
        b, L = x.shape[0], self._current(x.device)
        if not self.per_sample:
            return self.g(L).expand(b).float().contiguous()
        if index is None or self.seen is None:
            raise ValueError("lambda 'loss' with per_sample=True needs index=(B,) dataset indices and "
                             "Mix.setup(num_samples=N) (or num_samples=N); got "
                             f"index={'None' if index is None else 'given'}, num_samples={'set' if self.seen is not None else 'None'}")
        self.seen = self.seen.to(x.device)
        last = self.seen[index]
        return self.g(torch.where(last.isnan(), L, last)).float()

    def observe(self, loss: Tensor, index: Tensor | None = None, *, target_entropy: Tensor | None = None) -> None:
        loss = loss.detach().float()
        if self.signal == "excess" and target_entropy is not None:
            # KL(ỹ ‖ p) >= 0; the clamp removes float rounding that would give λ > 1.
            loss = (loss - target_entropy.detach().float().to(loss.device)).clamp_min(0.0)
        mean = loss.mean()
        self.ema = mean if self.ema is None else self.momentum * self.ema.to(mean.device) + (1 - self.momentum) * mean
        if self.per_sample and index is not None and loss.dim() == 1 and self.seen is not None:
            self.seen = self.seen.to(loss.device)
            self.seen[index] = loss

    def state_dict(self) -> dict:
        return {"ema": self.ema, "seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        self.ema, self.seen = state.get("ema"), state.get("seen")


@LAMBDAS.register("schedule")
class Schedule(Policy):
    """Dynamic by time: λ ~ Beta(α(t), α(t)) with α annealed over training progress t ∈ [0, 1].

    α(t) = α_start + (α_end − α_start)·r(t), r linear (r = t) or cosine (r = (1 − cos πt)/2).
    The default goes from strong mixing (α = 1, λ uniform) to weak (α = 0.1, λ near 0 or 1),
    separating "dynamic by time" from "dynamic by pair" in sweeps. ``progress`` must be passed.
    """

    reads_pair = False  # its draw never looks at the partner
    reads_time = True

    def __init__(self, *, alpha_start: float = 1.0, alpha_end: float = 0.1, shape: str = "linear",
                 per_sample: bool = True) -> None:
        self.alpha_start = _check_alpha("alpha_start", alpha_start)
        self.alpha_end = _check_alpha("alpha_end", alpha_end)
        self.shape = _check_choice("shape", shape, ("linear", "cosine"))
        self.per_sample = bool(per_sample)

    def alpha(self, progress: float) -> float:
        if not (isinstance(progress, (int, float)) and 0.0 <= progress <= 1.0):
            raise ValueError(f"progress={progress!r}: expected a number in [0, 1] (fraction of training done)")
        r = progress if self.shape == "linear" else 0.5 * (1.0 - math.cos(math.pi * progress))
        return self.alpha_start + (self.alpha_end - self.alpha_start) * r

    def __call__(self, x, partner, *, progress=None, generator=None, **_: object) -> Tensor:
        return sample_beta(x.shape[0], self.alpha(progress), per_sample=self.per_sample, generator=generator,
                           device=x.device)
