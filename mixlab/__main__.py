"""``python -m mixlab [group=option ...] [key=value ...]`` — one run; add ``-m`` for a sweep.

Several processes (DDP): ``torchrun --standalone --nproc_per_node=N -m mixlab ...``.
``python -m mixlab --help`` lists the groups, their options and the stable keys (``mixlab/run/cli.py``).
Exit status: 0 done, 2 a user error (one line, ``mixlab: error: ...``), 130/143 stopped by
SIGINT/SIGTERM (the command that resumes is printed).
"""
from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from .run.cli import USAGE, UsageError, check_args, interrupted
from .run.config import CONF_DIR, ConfigError
from .run.train import Diverged, Interrupted, train

CONF = str(CONF_DIR)


@hydra.main(version_base="1.3", config_path=CONF, config_name="config")
def main(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    try:
        return train(cfg, hc.runtime.output_dir)  # under torchrun, every process uses rank 0's
    except (Interrupted, KeyboardInterrupt) as e:  # pre-emption stops the whole sweep; the printed command resumes it
        multirun = hc.mode == RunMode.MULTIRUN
        sys.exit(interrupted(e, os.path.abspath(hc.sweep.dir) if multirun else hc.runtime.output_dir, multirun))
    except (ConfigError, Diverged) as e:
        print(f"mixlab: error: {e}", file=sys.stderr)
    except Exception as e:  # noqa: BLE001 - recorded in summary.json; one bad job must not sink a sweep
        if hc.mode != RunMode.MULTIRUN:
            raise
        print(f"mixlab: error: {type(e).__name__}: {e} (recorded in {hc.runtime.output_dir}/summary.json)",
              file=sys.stderr)
    if hc.mode != RunMode.MULTIRUN:
        sys.exit(2)
    return float("nan")


def _other_ranks_write_nothing() -> None:
    """Under torchrun every process composes the config, but only rank 0's Hydra writes directories,
    files and logs: the others' Hydra works in a private temporary directory, removed at exit
    (their ``${now:...}`` could be a second later than rank 0's)."""
    rank = int(os.environ.get("RANK", "0"))
    if rank > 0:
        tmp = tempfile.mkdtemp(prefix=f"mixlab-rank{rank}-")
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
        sys.argv += [f"hydra.run.dir={tmp}", f"hydra.sweep.dir={tmp}", "hydra.output_subdir=null",
                     "hydra/job_logging=none", "hydra/hydra_logging=none"]


if __name__ == "__main__":
    try:  # before Hydra: a misspelled key or option is one line and exit 2, like a bad value
        check_args(sys.argv[1:], CONF)
    except UsageError as e:
        print(f"mixlab: error: {e}", file=sys.stderr)
        sys.exit(USAGE)
    _other_ranks_write_nothing()
    main()
