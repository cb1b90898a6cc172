"""``python -m mixlab [group=option ...] [key=value ...]`` — one run; add ``-m`` for a sweep.

Several processes (DDP): ``torchrun --standalone --nproc_per_node=N -m mixlab ...``.
``python -m mixlab --help`` lists the groups, their options and the stable keys (``mixlab/run/cli.py``).
Exit status: 0 done, 2 a user error (one line, ``mixlab: error: ...``, written before anything is:
every job of a sweep is checked before the first starts), 1 a sweep some of whose jobs failed,
130/143 stopped by SIGINT/SIGTERM (the command that resumes is printed; a sweep stops too).
"""
from __future__ import annotations

import atexit
import copy
import os
import shutil
import sys
import tempfile
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from .run.cli import USAGE, UsageError, check_args, check_jobs, interrupted, keep_earlier_launch
from .run.config import CONF_DIR, ConfigError
from .run.records import atomic_write_bytes
from .run.train import Diverged, Interrupted, hold_signals, train

CONF = str(CONF_DIR)
FAILED: list[str] = []  # this process's sweep jobs that ended without a result: the sweep's exit status says so


@hydra.main(version_base="1.3", config_path=CONF, config_name="config")
def main(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    stop = hold_signals()  # from the first job on, a stop between two jobs is kept for the next one to read
    composed = copy.deepcopy(cfg)  # .hydra/config.yaml: the config as composed (train applies tuned= to cfg)
    out = hc.runtime.output_dir
    try:
        result = train(cfg, out, on_start=lambda run_dir: _save_hydra(run_dir, composed),
                       folder_key="hydra.sweep.dir" if multirun else "hydra.run.dir")
        if stop["signal"] is not None:  # after the run's last record: it is complete; a sweep stops here
            e = Interrupted(f"{stop['signal']} as {out} completed (its records are whole)", stop["signal"])
            sys.exit(interrupted(e, os.path.abspath(hc.sweep.dir), multirun, resumable=multirun))
        return result
    except (Interrupted, KeyboardInterrupt) as e:  # pre-emption stops the whole sweep; the printed command resumes it
        _remove_if_empty(out)
        sys.exit(interrupted(e, os.path.abspath(hc.sweep.dir) if multirun else out, multirun))
    except (ConfigError, Diverged) as e:
        print(f"mixlab: error: {e}", file=sys.stderr)
    except Exception as e:  # noqa: BLE001 - recorded in summary.json; one bad job must not sink a sweep
        if not multirun:
            raise
        print(f"mixlab: error: {type(e).__name__}: {e} (recorded in {out}/summary.json)", file=sys.stderr)
    _remove_if_empty(out)  # refused: the folder Hydra made for it holds nothing
    if not multirun:
        sys.exit(2)
    FAILED.append(out)
    return float("nan")


def _save_hydra(run_dir: Path, composed: DictConfig) -> None:
    """Hydra's ``.hydra/`` (config.yaml, hydra.yaml, overrides.yaml), written once the folder is this
    run's and its configuration has passed every check (``hydra.output_subdir: null`` stops Hydra from
    writing it before: a refused command would rewrite another run's record)."""
    hydra_cfg = OmegaConf.create(OmegaConf.to_container(HydraConfig.instance().cfg))
    hydra_cfg.hydra.output_subdir = ".hydra"  # where it is, as Hydra would have recorded it
    for name, node in (("config.yaml", composed), ("hydra.yaml", hydra_cfg),
                       ("overrides.yaml", hydra_cfg.hydra.overrides.task)):
        atomic_write_bytes(Path(run_dir) / ".hydra" / name, OmegaConf.to_yaml(node).encode())


def _remove_if_empty(folder: str) -> None:
    """Remove ``folder`` and the folders above it that it leaves empty, up to the working directory
    (``outputs/<date>/<time>`` made for a refused run); a folder holding anything stays."""
    try:
        path, here = Path(folder).absolute(), Path.cwd()
    except FileNotFoundError:  # the working directory is gone (removed by another process): nothing to tidy
        return
    for p in [path, *path.parents]:
        if p == here or (p != path and here not in p.parents):
            return
        if not p.exists():  # train removed the run folder itself
            continue
        try:
            p.rmdir()
        except OSError:
            return


def _other_ranks_write_nothing() -> None:
    """Under torchrun every process composes the config, but only rank 0's Hydra writes directories,
    files and logs: the others' Hydra works in a private temporary directory, removed at exit
    (their ``${now:...}`` could be a second later than rank 0's)."""
    rank = int(os.environ.get("RANK", "0"))
    if rank > 0:
        tmp = tempfile.mkdtemp(prefix=f"mixlab-rank{rank}-")
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
        sys.argv += [f"hydra.run.dir={tmp}", f"hydra.sweep.dir={tmp}", "hydra/job_logging=none",
                     "hydra/hydra_logging=none"]


def cli() -> None:
    """``python -m mixlab``: check every job before Hydra writes anything, then run."""
    hold_signals()  # a Ctrl-C while Hydra starts up is kept too, not a traceback
    try:  # a misspelled key or option, a bad value in any job of a sweep: one line and exit 2
        check_args(sys.argv[1:], CONF)
        multirun = check_jobs(sys.argv[1:], CONF)
    except UsageError as e:
        print(f"mixlab: error: {e}", file=sys.stderr)
        sys.exit(USAGE)
    if multirun:
        keep_earlier_launch(sys.argv[1:], CONF)
    _other_ranks_write_nothing()
    try:
        main()
    except KeyboardInterrupt as e:  # a second Ctrl-C outside a run (between jobs, while Hydra starts)
        sys.exit(interrupted(e, os.path.abspath(os.curdir), multirun=False, resumable=False))
    if FAILED:
        print(f"mixlab: {len(FAILED)} job(s) of the sweep did not complete (each said why above): "
              f"{', '.join(os.path.relpath(f) for f in FAILED[:5])}{' ...' if len(FAILED) > 5 else ''}",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    cli()
