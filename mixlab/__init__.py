"""mixlab: mixup with dynamic mixing coefficients.

The engine is three swappable parts behind registries — a pairing strategy (``PAIRINGS``),
a λ policy (``LAMBDAS``) and a mixer (``MIXERS``) — composed by ``Mix``.
"""
from .lam import LAMBDAS, beta_icdf
from .mixing import MIXERS, Mix, Mixed, mix_inputs, mix_targets
from .pairing import PAIRINGS

__version__ = "0.1.0"
__all__ = ["LAMBDAS", "MIXERS", "PAIRINGS", "Mix", "Mixed", "beta_icdf", "mix_inputs", "mix_targets"]
