"""``hydra/sweeper=study``: a whole study through Hydra's launcher (``python -m mixlab.study DIR``).

Phases, each a batch of jobs handed to the configured launcher (``hydra/launcher=``: in-process by
default, ``joblib`` for several at once, ``submitit_slurm`` on a cluster, ``submitit_local``):

1. **tuning** on validation: each arm's trials (Optuna: a seeded ``RandomSampler``, trial 0 the arm's
   defaults; ``study.sampler=tpe`` for TPE), each trial one run per tuning seed with ``eval.test=false``,
   scored by the mean validation objective; the best trial per arm (ties: the lower trial number) goes
   to ``DIR/tuned.yaml``, every trial to ``DIR/tuning.json`` and the Optuna storage (``DIR/optuna.db``).
2. **go/no-go** on validation (``study.go``): the tuned reference must beat ``none``, else the study
   stops there and says so.
3. **comparison**: every arm with its tuned values over the evaluation seeds (``DIR/compare/``).
4. **controls**: each dynamic arm's pre-registered control, whatever its results: fixed Beta of its
   training-time mixing strength, on the same seeds (beside the comparison runs).
5. **report**: ``python -m mixlab.report DIR/compare --out DIR/report``.

Every job's folder is fixed by what it runs, so re-running the same command resumes: completed runs are
read back, interrupted ones resume from their checkpoints, and Optuna records each trial once.
"""
from __future__ import annotations

import math
import os
import shlex
import sys
import zlib
from pathlib import Path
from typing import Any, Sequence

import yaml
from hydra.core.plugins import Plugins
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from ..run.config import ConfigError, flatten, job_dir
from ..run.records import atomic_write, atomic_write_json, read_json
from .plan import make_plan, register
from .tune import arm_overrides

TUNED = "tuned.yaml"


def _distribution(spec: dict) -> Any:
    import optuna

    if "choices" in spec:
        return optuna.distributions.CategoricalDistribution(spec["choices"])
    return optuna.distributions.FloatDistribution(spec["low"], spec["high"], log=bool(spec.get("log")))


def _within(dist: Any, value: Any) -> bool:
    """Whether ``value`` lies in an Optuna distribution (a trial's defaults may lie outside the search space:
    then Optuna records them as the trial's attributes only)."""
    if hasattr(dist, "choices"):
        return value in dist.choices
    return isinstance(value, (int, float)) and dist.low <= value <= dist.high


def _literal(value: Any) -> str:
    """``value`` in Hydra's override grammar (a dict for ``study.control_of={...}``)."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_literal(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


class Study:
    """The phases of a study as batches of Hydra jobs (see the module's docstring), behind Hydra's
    ``hydra_plugins.mixlab_study.StudySweeper`` (the basic sweeper's ``params`` and ``max_batch_size``,
    which experiment files set, are ignored there: the plan says what runs)."""

    def __init__(self) -> None:
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher: Any = None
        self.job_idx = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    # ------------------------------------------------------------------------- the phases

    def sweep(self, arguments: list[str]) -> Any:
        self.folder = Path(str(self.config.hydra.sweep.dir))
        self.base = [a for a in arguments if not a.startswith("hydra.")]
        cfg = self._compose(self.base)
        try:
            plan = make_plan(cfg, self.base)
            for row in plan["arms"]:  # every arm's config is checked before anything is written
                self._check(self.base + arm_overrides(row["arm"]))
            command = shlex.join(["python", "-m", "mixlab.study", str(self.folder), *self.base])
            self.folder.mkdir(parents=True, exist_ok=True)
            self.plan, self.deviations = register(self.folder, plan, command)
        except ConfigError as e:
            print(f"mixlab: error: {e}", file=sys.stderr)
            sys.exit(2)
        say(f"plan {self.folder / 'plan.yaml'} (hash {self.plan['hash']}): arms {', '.join(r['arm'] for r in self.plan['arms'])}")
        tuning = self.tune()
        if not self.go(tuning):
            return []
        self.compare()
        self.controls()
        self.report()
        return []

    def tune(self) -> dict:
        """Phase 1: every arm's trials; writes tuned.yaml and tuning.json; returns tuning.json's content."""
        plan, log, tuned, chosen = self.plan, [], {}, {}
        for row in plan["arms"]:
            arm, seeds = row["arm"], plan["tuning"]["seeds"]
            trials = self._trial_params(row)
            jobs = [self.base + arm_overrides(arm) + [f"{k}={v!r}" for k, v in params.items()]
                    + ["eval.test=false", f"seed={s}", _subdir(f"tuning/{arm}/trial_{k}/seed={s}")]
                    for k, params in enumerate(trials) for s in seeds]
            self._launch(jobs, f"tuning {arm}: {len(trials)} trial(s) x {len(seeds)} seed(s)")
            rows = []
            for k, params in enumerate(trials):
                runs = [read_json(self.folder / "tuning" / arm / f"trial_{k}" / f"seed={s}" / "summary.json") or {}
                        for s in seeds]
                objectives = [r.get("objective") if r.get("status") == "completed" else None for r in runs]
                ok = all(o is not None and math.isfinite(o) for o in objectives)
                objective_key = next((r.get("objective_key") for r in runs if r.get("objective_key")), None)
                # the values the runs used, defaults included, from their record
                values = {k2: flatten(runs[0]["config"])[k2] for k2 in row["space"]} if runs[0].get("config") else params
                rows.append({"lambda": arm, "trial": k, "params": params, "values": values, "objectives": objectives,
                             "objective": math.fsum(objectives) / len(objectives) if ok else None,
                             "objective_key": objective_key, "status": "completed" if ok else "failed"})
            self._record_optuna(row, rows)
            lower = str(rows[0]["objective_key"] or "").endswith(("mse", "mae"))
            scored = [r for r in rows if r["objective"] is not None]
            if not scored:
                raise SystemExit(f"mixlab: error: study arm {arm}: no trial completed; see {self.folder / 'tuning' / arm}")
            best = min(scored, key=lambda r: (r["objective"] if lower else -r["objective"], r["trial"]))
            chosen[arm], tuned[arm] = best["trial"], best["values"]
            log += rows
        out = {"lambdas": [r["arm"] for r in plan["arms"]], "trials": max(r["trials"] for r in plan["arms"]),
               "seed": plan["tuning"]["search_seed"], "tuning_seeds": plan["tuning"]["seeds"], "overrides": self.base,
               "spaces": {r["arm"]: r["space"] for r in plan["arms"]}, "chosen": chosen, "trials_run": log,
               "plan": plan["hash"]}
        atomic_write_json(self.folder / "tuning.json", out)
        atomic_write(self.folder / TUNED, lambda f: f.write(yaml.safe_dump(tuned, sort_keys=False).encode()))
        return out

    def go(self, tuning: dict) -> bool:
        """Phase 2: the declared go/no-go rule on validation; a no-go is written to go.json and said."""
        rule, ref = self.plan["decisions"]["go"], self.plan["evaluation"]["reference"]
        if rule == "always":
            return True
        score = {r["lambda"]: r["objective"] for r in tuning["trials_run"] if r["trial"] == tuning["chosen"][r["lambda"]]}
        lower = str(tuning["trials_run"][0]["objective_key"] or "").endswith(("mse", "mae"))
        go = score[ref] < score["none"] if lower else score[ref] > score["none"]
        verdict = {"rule": rule, "go": go, "validation": {ref: score[ref], "none": score["none"]},
                   "objective_key": tuning["trials_run"][0]["objective_key"]}
        atomic_write_json(self.folder / "go.json", verdict)
        if not go:
            say(f"no-go: tuned {ref} ({score[ref]:.4f}) does not beat none ({score['none']:.4f}) on validation; "
                "the comparison is not run (plan.yaml's rule): mixing does not help in this regime")
        return go

    def compare(self) -> None:
        """Phase 3: every arm, tuned, over the evaluation seeds."""
        tuned = os.path.relpath(self.folder / TUNED)
        jobs = []
        for row in self.plan["arms"]:
            for s in self.plan["evaluation"]["seeds"]:
                own = arm_overrides(row["arm"]) + [f"seed={s}"]
                jobs.append(self.base + own + [f"tuned={tuned}", _subdir(f"compare/{job_dir(own)}")])
        self._launch(jobs, f"comparison: {len(self.plan['arms'])} arm(s) x {len(self.plan['evaluation']['seeds'])} seed(s)")

    def controls(self) -> None:
        """Phase 4: each planned control, from the training-time strength of its arm's comparison runs."""
        from .controls import plan as control_plan

        wanted = {c["of"] for c in self.plan["controls"]}
        todo, skipped = control_plan(self.folder / "compare")
        jobs = []
        for job in todo:
            config = job["config"]
            of = config["study"]["control_of"]["name"]
            pairing = (config["study"].get("control_of_pairing") or {}).get("name", "random")
            if (of if pairing == "random" else f"{of}+{pairing}") not in wanted:
                continue
            extra = [f"+study.control_of={_literal(config['study']['control_of'])}"]
            if config["study"].get("control_of_pairing"):
                extra += ["pairing=random", f"+study.control_of_pairing={_literal(config['study']['control_of_pairing'])}"]
            jobs.append(self.base + ["lambda=beta", f"lam.strength={job['strength']}", f"seed={job['seed']}", *extra,
                                     _subdir(f"compare/{Path(job['dir']).name}")])
        for line in skipped:
            say(f"no control for {line}")
        self._launch(jobs, f"controls: {len(jobs)} run(s)")

    def report(self) -> None:
        from .report import main as report_main

        report_main([str(self.folder / "compare"), "--out", str(self.folder / "report")])
        say(f"report: {self.folder / 'report' / 'report.md'}")

    # ------------------------------------------------------------------------- helpers

    def _compose(self, overrides: Sequence[str]) -> DictConfig:
        """The task config of a job with ``overrides`` (Hydra's own node left out)."""
        cfg = OmegaConf.to_container(self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides)))
        cfg.pop("hydra", None)
        return OmegaConf.create(cfg)

    def _check(self, overrides: list[str]) -> None:
        from ..run.config import apply_strength
        from ..run.train import check

        cfg = self._compose(overrides)
        apply_strength(cfg)
        check(cfg)

    def _launch(self, jobs: list[list[str]], what: str) -> None:
        """Hand the jobs whose run has not completed yet to the launcher (a re-run reads the others back)."""
        todo = [job for job in jobs if (read_json(self._folder_of(job) / "summary.json") or {}).get("status")
                != "completed"]
        say(f"{what}: {len(jobs)} job(s)" + (f", {len(jobs) - len(todo)} completed before" if len(todo) < len(jobs)
                                             else ""))
        if todo:
            self.launcher.launch(todo, initial_job_idx=self.job_idx)
            self.job_idx += len(todo)

    def _folder_of(self, job: list[str]) -> Path:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        sub = next(o for o in OverridesParser.create().parse_overrides(job) if o.key_or_group == "hydra.sweep.subdir")
        return self.folder / str(sub.value())

    def _trial_params(self, row: dict) -> list[dict]:
        """Trial k's hyperparameters: trial 0 the arm's defaults, the rest drawn by Optuna's seeded sampler
        (the same draws on every machine and every re-run)."""
        if not row["space"]:
            return [{}]
        import numpy as np
        import optuna

        seed = int(np.random.SeedSequence([self.plan["tuning"]["search_seed"], zlib.crc32(row["arm"].encode())])
                   .generate_state(1)[0])
        if self.plan["tuning"]["sampler"] == "tpe":
            sampler: Any = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(1, row["trials"] // 2))
        else:
            sampler = optuna.samplers.RandomSampler(seed=seed)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        draws = optuna.create_study(sampler=sampler)  # in memory: only the draws
        dists = {k: _distribution(spec) for k, spec in row["space"].items()}
        return [{}] + [draws.ask(dists).params for _ in range(row["trials"] - 1)]

    def _record_optuna(self, row: dict, rows: list[dict]) -> None:
        """Each trial of the arm into the Optuna storage once (``optuna-dashboard`` reads it)."""
        import optuna

        storage = self.plan_storage()
        lower = str(rows[0]["objective_key"] or "").endswith(("mse", "mae"))
        study = optuna.create_study(study_name=row["arm"], storage=storage, load_if_exists=True,
                                    direction="minimize" if lower else "maximize")
        have = {t.user_attrs.get("k") for t in study.get_trials(deepcopy=False)}
        dists = {k: _distribution(spec) for k, spec in row["space"].items()}
        for r in rows:
            if r["trial"] in have:
                continue
            inside = {k: v for k, v in (r["values"] or {}).items() if k in dists and _within(dists[k], v)}
            state = optuna.trial.TrialState.COMPLETE if r["objective"] is not None else optuna.trial.TrialState.FAIL
            study.add_trial(optuna.trial.create_trial(
                params=inside, distributions={k: dists[k] for k in inside}, value=r["objective"], state=state,
                user_attrs={"k": r["trial"], "values": r["values"], "objectives": r["objectives"],
                            "objective_key": r["objective_key"]}))

    def plan_storage(self) -> str:
        url = OmegaConf.select(self.config, "study.storage")
        return url or f"sqlite:///{self.folder / 'optuna.db'}"


def _subdir(path: str) -> str:
    """The override that puts a job's records at ``DIR/path``."""
    from ..run.cli import _hydra_value

    return f"hydra.sweep.subdir={_hydra_value(path)}"


def say(line: str) -> None:
    print(f"mixlab.study: {line}", file=sys.stderr, flush=True)
