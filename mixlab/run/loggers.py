"""Experiment loggers. The run records on disk are the source of truth; these only mirror them.

A W&B failure (no network, no key, an exception inside ``wandb``) never fails a run: it is
turned into one warning and the logger goes quiet.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from torch import Tensor

from ..engine.registry import Registry

LOGGERS: Registry = Registry("logger")


@LOGGERS.register("none")
class NoLogger:
    def __init__(self, *, run_dir: Path, config: dict, group: str | None = None, job_type: str | None = None) -> None:
        pass

    def log(self, row: dict, *, step: int) -> None:
        pass

    def log_images(self, key: str, images: Tensor, *, step: int) -> None:
        pass

    def log_table(self, key: str, columns: list[str], rows: list[list]) -> None:
        pass

    def finish(self, summary: dict | None = None) -> None:
        pass


WANDB_MODES = ("auto", "online", "offline", "disabled")
# What a W&B call may raise without failing the run: any error, and SystemExit (a library that
# gives up by calling sys.exit). Not KeyboardInterrupt: Ctrl-C still stops the run.
_WANDB_ERRORS = (Exception, SystemExit)


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


@LOGGERS.register("wandb")
class WandbLogger(NoLogger):
    """Weights & Biases. ``mode='auto'``: online with an API key, else offline into
    ``<run_dir>/wandb`` (upload later with ``wandb sync <run_dir>/wandb/offline-run-*``).
    Runs are grouped by their overrides minus the seed, so a sweep's seeds fold together; a study's
    runs by arm, with the phase as job type (``train._logger_options``). ``run_name``: the run's name
    in W&B (None: its folder's)."""

    def __init__(self, *, run_dir: Path, config: dict, group: str | None = None, job_type: str | None = None,
                 project: str = "mixlab", entity: str | None = None, mode: str = "auto",
                 tags: list[str] | tuple = (), images: bool = True, run_name: str | None = None) -> None:
        if mode not in WANDB_MODES:
            raise ValueError(f"logger.mode={mode!r}: expected one of {list(WANDB_MODES)}")
        self.images, self.run = images, None
        mode = ("online" if _has_wandb_key() else "offline") if mode == "auto" else mode
        try:
            import wandb

            self.wandb = wandb
            self.run = wandb.init(project=project, entity=entity, mode=mode, dir=str(run_dir), config=config,
                                  group=group, job_type=job_type, tags=list(tags), name=run_name or run_dir.name,
                                  reinit="finish_previous")
        except _WANDB_ERRORS as e:  # W&B must never fail a run
            self._fail("init", e)

    def _fail(self, what: str, e: BaseException, *, quiet: bool = True) -> None:
        warnings.warn(f"W&B {what} failed ({type(e).__name__}: {e}); continuing with local records only",
                      stacklevel=3)
        if quiet:
            self.run = None

    def _call(self, what: str, fn: Any, *args: Any, quiet: bool = True, **kwargs: Any) -> None:
        if self.run is None:
            return
        try:
            fn(*args, **kwargs)
        except _WANDB_ERRORS as e:
            self._fail(what, e, quiet=quiet)

    def log(self, row: dict, *, step: int) -> None:
        def _log() -> None:
            data = {k: v for k, v in row.items() if not isinstance(v, list)}
            # λ over [0, 1]; the mixing strength min(λ, 1 − λ) over [0, ½]
            for key, top in (("lam_hist", 1.0), ("lam_strength_hist", 0.5)):
                if row.get(key):
                    counts = row[key]
                    edges = [top * i / len(counts) for i in range(len(counts) + 1)]
                    data[key] = self.wandb.Histogram(np_histogram=(counts, edges))
            self.run.log(data, step=step)

        self._call("log", _log)

    def log_images(self, key: str, images: Tensor, *, step: int) -> None:
        if self.images:
            self._call("log", lambda: self.run.log({key: self.wandb.Image(images.float().cpu())}, step=step))

    def log_table(self, key: str, columns: list[str], rows: list[list]) -> None:
        self._call("log", lambda: self.run.log({key: self.wandb.Table(columns=columns, data=rows)}))

    def finish(self, summary: dict | None = None) -> None:
        if summary:  # a failed summary upload still lets finish() flush what was logged
            self._call("summary", lambda: self.run.summary.update(summary), quiet=False)
        self._call("finish", lambda: self.run.finish())
        self.run = None


def log_report(out: Path, *, config: dict, tables: dict[str, tuple[list[str], list[list]]], images: dict[str, Path],
               group: str = "report", job_type: str = "report", tags: list[str] | tuple = (), project: str = "mixlab",
               entity: str | None = None, mode: str = "auto") -> None:
    """A study's report as one W&B run, its files under ``out``: each table (columns, rows) and each
    figure (a PNG) under its key, in one step. Named after the study (``<study>/report`` -> ``<study>``).
    A failure is one warning, never an exception: the report on disk is what counts."""
    out = Path(out)
    name = out.parent.name if out.name == "report" else out.name
    try:
        out.mkdir(parents=True, exist_ok=True)  # wandb.init falls back to a temporary folder without one
        logger = WandbLogger(run_dir=out, config=config, group=group, job_type=job_type, project=project,
                             entity=entity, mode=mode, tags=tags, run_name=name)
    except _WANDB_ERRORS as e:  # a bad mode, an unwritable folder: said, as any other W&B failure
        warnings.warn(f"W&B report failed ({type(e).__name__}: {e}); the report's files are written", stacklevel=2)
        return

    def _log() -> None:
        data = {key: logger.wandb.Table(columns=columns, data=rows) for key, (columns, rows) in tables.items()}
        logger.run.log({**data, **{key: logger.wandb.Image(str(path)) for key, path in images.items()}})

    logger._call("log", _log)  # one call: a failure is one warning, and the logger goes quiet
    logger.finish()
