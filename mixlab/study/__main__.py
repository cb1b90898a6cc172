"""``python -m mixlab.study DIR [overrides]``: a whole study as one pre-registered command.

The study is declared in the config's ``study`` block (arms, budget, seeds, reference, metric, go/no-go
rule; ``experiment=digits_study`` is a small one). ``DIR/plan.yaml`` is written before the first run and
held to by every re-run of the same command, which resumes where it stopped. Runs go through Hydra's
launcher: add ``hydra/launcher=joblib hydra.launcher.n_jobs=2`` for two at a time, or
``hydra/launcher=submitit_slurm`` on a cluster. Phases: ``mixlab/study/sweeper.py``.
"""
from __future__ import annotations

import sys

from ..run.cli import _hydra_value

USAGE = "usage: python -m mixlab.study DIR [key=value ...] (e.g. python -m mixlab.study runs/digits experiment=digits_study)"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip() + "\n\n" + USAGE, file=sys.stderr if not argv else sys.stdout)
        sys.exit(0 if argv else 2)
    if argv[0].startswith("-") or "=" in argv[0]:
        print(f"mixlab: error: {argv[0]}: expected the study's folder first; {USAGE}", file=sys.stderr)
        sys.exit(2)
    from ..__main__ import cli

    sys.argv = ["mixlab", "-m", "hydra/sweeper=study", f"hydra.sweep.dir={_hydra_value(argv[0])}", *argv[1:]]
    cli()


if __name__ == "__main__":
    main()
