"""Studying runs: seed statistics (``stats``), equal-budget tuning (``tune``), strength-matched controls
(``controls``), and the report with its figures (``report``, ``figures``, ``runs``). The report reads
run records only; tuning and controls launch runs through ``mixlab.run``.
"""
