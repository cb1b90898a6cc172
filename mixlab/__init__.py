"""mixlab: mixup with dynamic mixing coefficients.

The engine is three swappable parts behind registries — a pairing strategy (``PAIRINGS``),
a λ policy (``LAMBDAS``) and a mixer (``MIXERS``) — composed by ``Mix``. Data sets
(``DATASETS``) and models (``MODELS``) are registries too: a module of your own that registers
into them, named in the config key ``plugins``, extends ``python -m mixlab`` without editing mixlab.
"""
from .data import DATASETS, Dataset
from .engine.lam import LAMBDAS, Policy, beta_icdf
from .engine.mixing import MIXERS, Mix, Mixed, Mixer, mix_inputs, mix_targets
from .engine.pairing import PAIRINGS, Pairing
from .engine.registry import Registry
from .models import MODELS, MixModel

__version__ = "0.1.0"
__all__ = ["DATASETS", "LAMBDAS", "MIXERS", "MODELS", "PAIRINGS", "Dataset", "Mix", "MixModel", "Mixed", "Mixer",
           "Pairing", "Policy", "Registry", "beta_icdf", "mix_inputs", "mix_targets"]
