"""Running an experiment: config validation (``config``), the training loop (``train``), run records
and checkpoints (``records``), torchrun processes (``distributed``), loggers, optimisers and the
command line's checks (``cli``). Imports the engine, data, models and tasks; never the study.
"""
