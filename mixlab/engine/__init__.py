"""The engine: pairing strategies, λ policies and mixers behind registries, composed by ``Mix``.

Pure tensors: it imports nothing else of mixlab (``tests/test_report.py`` checks the import graph),
so it can be used on its own, in any training loop (README: "Use the engine in your own loop").
"""
from . import masks  # noqa: E402,F401 - registers the mask mixers (fmix, resizemix, ...) into mixing.MIXERS
from . import puzzle  # noqa: E402,F401 - registers puzzlemix (PyMaxflow is imported only when one is built)
from . import mixblock  # noqa: E402,F401 - registers mixblock (AutoMix's Mix Block, a learned mixer)
