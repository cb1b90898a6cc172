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
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml
from hydra.core.plugins import Plugins
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from ..run.config import ConfigError, flatten, job_dir, tuning_settings
from ..run.records import atomic_write, atomic_write_json, read_json
from .plan import differences_line, make_plan, register, row_overrides
from .queue import POLL_S, Item, Queue, open_storage
from .runs import arm_name

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
        self.storage: Any = None
        self.job_idx = 0
        self.ran: dict[str, int] = {}  # items this process ran, by phase

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
                self._check(self.base + row_overrides(row))
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
        lower = self._lower()
        seeds = plan["tuning"]["seeds"]
        work = []
        for row in plan["arms"]:
            arm = row["arm"]
            dists = {k: _distribution(spec) for k, spec in row["space"].items()}
            items = [Item(f"trial_{k}", params={p: v for p, v in params.items() if _within(dists[p], v)},
                          attrs={"k": k, "drawn": params}, distributions=dists)
                     for k, params in enumerate(self._trial_params(row))]

            def jobs_of(it: Item, arm: str = arm, row: dict = row) -> list[list[str]]:
                return [self.base + row_overrides(row) + [f"{p}={v!r}" for p, v in it.attrs["drawn"].items()]
                        + ["eval.test=false", "eval.corruptions=false", "eval.ood=null", f"seed={s}",
                           self._study_run("tuning", arm),
                           _subdir(f"tuning/{arm}/{it.key}/seed={s}")] for s in seeds]

            def finish(queue: Queue, it: Item, row: dict = row) -> None:
                r = self._trial_row(row, it.attrs["k"], it.attrs["drawn"])
                queue.finish(it, r["objective"], values=r["values"], objectives=r["objectives"],
                             objective_key=r["objective_key"])

            work.append((row, items, jobs_of, finish))
        # every arm's open trials first, then wait for those other processes hold: a copy of the command that
        # finds an arm's last trials taken goes on to the next arm instead of idling until they finish
        for wait in (False, True):
            for row, items, jobs_of, finish in work:
                self._work(row["arm"], items, jobs_of, finish,
                           f"tuning {row['arm']}: {len(items)} trial(s) x {len(seeds)} seed(s)",
                           direction="minimize" if lower else "maximize", wait=wait)
        for row, items, _, _ in work:
            arm = row["arm"]
            rows = [self._trial_row(row, it.attrs["k"], it.attrs["drawn"]) for it in items]
            scored = [r for r in rows if r["objective"] is not None]
            if not scored:
                raise SystemExit(f"mixlab: error: study arm {arm}: no trial completed; see {self.folder / 'tuning' / arm}")
            best = min(scored, key=lambda r: (r["objective"] if lower else -r["objective"], r["trial"]))
            chosen[arm], tuned[arm] = best["trial"], best["values"]
            log += rows
        settings = {r["arm"]: self._settings(r["arm"]) for r in plan["arms"]}  # "settings": the first arm's (older readers)
        out = {"lambdas": [r["arm"] for r in plan["arms"]], "trials": max(r["trials"] for r in plan["arms"]),
               "seed": plan["tuning"]["search_seed"], "tuning_seeds": seeds, "overrides": self.base,
               "spaces": {r["arm"]: r["space"] for r in plan["arms"]}, "chosen": chosen, "trials_run": log,
               "plan": plan["hash"], "settings": settings[plan["arms"][0]["arm"]], "settings_by_arm": settings}
        atomic_write_json(self.folder / "tuning.json", out)
        atomic_write(self.folder / TUNED, lambda f: f.write(yaml.safe_dump(tuned, sort_keys=False).encode()))
        return out

    def _settings(self, arm: str) -> dict:
        """What an arm's tuning results depend on (``tuning_settings``: its mixer and its own settings among them),
        from its first trial's record: a ``tuned=`` run under other settings is refused unless it says
        ``tuned_transfer=true``."""
        seed = self.plan["tuning"]["seeds"][0]
        summary = read_json(self.folder / "tuning" / arm / "trial_0" / f"seed={seed}" / "summary.json") or {}
        return tuning_settings(summary["config"]) if summary.get("config") else {}

    def _trial_row(self, row: dict, k: int, params: dict) -> dict:
        """Trial ``k`` of an arm as its runs' records say: its values (defaults included), each seed's
        validation objective and their mean (None unless every seed's run completed)."""
        seeds, arm = self.plan["tuning"]["seeds"], row["arm"]
        runs = [read_json(self.folder / "tuning" / arm / f"trial_{k}" / f"seed={s}" / "summary.json") or {}
                for s in seeds]
        objectives = [r.get("objective") if r.get("status") == "completed" else None for r in runs]
        ok = all(o is not None and math.isfinite(o) for o in objectives)
        key = next((r.get("objective_key") for r in runs if r.get("objective_key")), None)
        config = next((r["config"] for r in runs if r.get("config")), None)
        values = {p: flatten(config)[p] for p in row["space"]} if config else params
        return {"lambda": arm, "trial": k, "params": params, "values": values, "objectives": objectives,
                "objective": math.fsum(objectives) / len(objectives) if ok else None, "objective_key": key,
                "status": "completed" if ok else "failed"}

    def go(self, tuning: dict) -> bool:
        """Phase 2: the declared go/no-go rule on validation; a no-go is written to go.json and said."""
        rule, ref = self.plan["decisions"]["go"], self.plan["evaluation"]["reference"]
        if rule == "always":
            return True
        score = {r["lambda"]: r["objective"] for r in tuning["trials_run"] if r["trial"] == tuning["chosen"][r["lambda"]]}
        lower = self._lower()
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
        jobs = {}
        for row in self.plan["arms"]:
            for s in self.plan["evaluation"]["seeds"]:
                own = row_overrides(row) + [f"seed={s}"]
                jobs[job_dir(own)] = self.base + own + [f"tuned={tuned}", self._study_run("comparison", row["arm"]),
                                                        _subdir(f"compare/{job_dir(own)}")]
        self._runs("comparison", jobs, f"comparison: {len(self.plan['arms'])} arm(s) x "
                   f"{len(self.plan['evaluation']['seeds'])} seed(s)")

    def controls(self) -> None:
        """Phase 4: each planned control (``plan.yaml``'s ``controls``), whatever its arm's results: a
        strength-matched Beta from the training-time strength of the arm's comparison runs; the arm itself
        with its clock reversed or its mixing off late, from its tuned values, seed by seed."""
        from .controls import plan as control_plan

        planned = [(c["of"], c.get("kind", "strength"), c) for c in self.plan["controls"]]
        rows = {r["arm"]: r for r in self.plan["arms"]}
        jobs: dict[str, list[str]] = {}
        strength = {arm for arm, kind, _ in planned if kind == "strength"}
        if strength:
            todo, skipped = control_plan(self.folder / "compare")
            for job in todo:
                config = job["config"]
                of = config["study"]["control_of"]["name"]
                pairing = (config["study"].get("control_of_pairing") or {}).get("name", "random")
                mixer = (config.get("mixer") or {}).get("name", "input")  # the control keeps its arm's mixer
                arm = arm_name(of, pairing, mixer)
                if arm not in strength:
                    continue
                extra = [f"+study.control_of={_literal(config['study']['control_of'])}", "+study.control_kind=strength"]
                extra += [f"mixer={mixer}"] * (mixer != "input")
                # the arm's own settings but its λ policy's (and its pairing's, where the control pairs at random)
                extra += [o for o in rows[arm].get("overrides") or []
                          if not o.startswith("lam.") and not (o.startswith("pairing.") and pairing != "random")]
                if config["study"].get("control_of_pairing"):
                    extra += ["pairing=random",
                              f"+study.control_of_pairing={_literal(config['study']['control_of_pairing'])}"]
                name = Path(job["dir"]).name
                jobs[name] = self.base + ["lambda=beta", f"lam.strength={job['strength']}", f"seed={job['seed']}",
                                          *extra, self._study_run("control", arm), _subdir(f"compare/{name}")]
            for line in skipped:
                say(f"no control for {line}")
        tuned = os.path.relpath(self.folder / TUNED)
        for arm, kind, control in planned:
            if kind == "strength":
                continue
            change = ["trainer.reverse_time=true"] if kind == "reversed" else [f"trainer.mix_until={control['mix_until']!r}"]
            for s in self.plan["evaluation"]["seeds"]:
                own = row_overrides(rows[arm]) + [f"seed={s}"]
                ran = read_json(self.folder / "compare" / job_dir(own) / "summary.json") or {}
                if ran.get("status") != "completed":
                    say(f"no {kind} control of {arm} at seed {s}: its comparison run did not complete")
                    continue
                name = job_dir(own + change)
                # the arm's tuned values under the control's change (recorded in tuning.transferred)
                jobs[name] = self.base + own + change + [
                    f"tuned={tuned}", "tuned_transfer=true", f"+study.control_of={_literal(ran['config']['lam'])}",
                    f"+study.control_kind={kind}", self._study_run("control", arm), _subdir(f"compare/{name}")]
        self._runs("controls", jobs, f"controls: {len(jobs)} run(s)")

    def report(self) -> None:
        """Phase 5: the report, written by one process."""
        from .report import main as report_main

        def write(queue: Queue, it: Item) -> None:
            status = report_main([str(self.folder / "compare"), "--out", str(self.folder / "report")])
            queue.finish(it, 1.0 if status == 0 else None)
            if status != 0:  # its one line (runs that saw different data ...) is above
                sys.exit(status)

        self._work("report", [Item("report")], lambda it: [], write, "report")
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

    def _work(self, phase: str, items: list[Item], jobs_of: Callable[[Item], list[list[str]]],
              finish: Callable[[Queue, Item], None], what: str, direction: str = "maximize", wait: bool = True) -> None:
        """Claim the phase's items from the study's storage, a few at a time, run their jobs and record
        them, until no item is left to any process (waiting for those another process holds; without
        ``wait``, until none is left to claim)."""
        if self.storage is None:
            self.storage = open_storage(self.plan_storage())
        stale_after_s = self._stale_after_s()
        queue = Queue(self.storage, f"{self.folder.name}/{phase}", self.plan["hash"], items, direction=direction,
                      stale_after_s=stale_after_s)
        queue.retry_failed(lambda key: all(self._completed(j) for j in jobs_of(queue.items[key])))
        per_item = max(1, max((len(jobs_of(it)) for it in items), default=1))
        batch = max(1, -(-self._parallel() // per_item))
        ran, told = [], False
        while True:
            self._stop_if_asked()
            mine = queue.claim(batch)
            for line in queue.taken_over:
                say(f"{what}: took over {line}")
            queue.taken_over.clear()
            if mine:
                jobs = [j for it in mine for j in jobs_of(it)]
                if jobs:
                    with queue.holding(mine):
                        self._launch(jobs, f"{what}: {', '.join(it.key for it in mine)}")
                for it in mine:
                    finish(queue, it)
                ran += [it.key for it in mine]
                continue
            others = queue.others()
            if not others or not wait:
                break
            if not told:
                say(f"{what}: waiting for {len(others)} item(s) another process holds: {'; '.join(others[:3])}"
                    + ("" if stale_after_s is None else f" (one on another host is taken over after "
                                                         f"{stale_after_s:g} s without a beat)"))
                told = True
            time.sleep(POLL_S)
        self.ran[phase] = self.ran.get(phase, 0) + len(ran)
        if wait and self.ran[phase] < len(items):
            say(f"{what}: this process ran {self.ran[phase]} of {len(items)} item(s)")

    def _runs(self, phase: str, jobs: dict[str, list[str]], what: str) -> None:
        """A phase of one job per item (the comparison, the controls)."""
        def finish(queue: Queue, it: Item) -> None:
            queue.finish(it, 1.0 if self._completed(jobs[it.key]) else None)

        self._work(phase, [Item(k) for k in jobs], lambda it: [jobs[it.key]], finish, what)

    def _completed(self, job: list[str]) -> bool:
        return (read_json(self._folder_of(job) / "summary.json") or {}).get("status") == "completed"

    def _parallel(self) -> int:
        """How many jobs the launcher runs at once (joblib's n_jobs, submitit's array_parallelism)."""
        launcher = self.config.hydra.launcher
        n = OmegaConf.select(launcher, "n_jobs") or OmegaConf.select(launcher, "array_parallelism") or 1
        return os.cpu_count() or 1 if int(n) < 0 else int(n)

    def _study_run(self, phase: str, arm: str) -> str:
        """The override that tells a job which study, plan, phase and arm it belongs to (W&B groups by it)."""
        run = {"name": self.folder.name, "plan": self.plan["hash"], "phase": phase, "arm": arm}
        return f"+study.run={_literal(run)}"

    def _lower(self) -> bool:
        """Whether the study's metric is better lower (MSE, MAE): the tuning objective is then too."""
        return str(self.plan["evaluation"]["metric"]).endswith(("mse", "mae"))

    def _stop_if_asked(self) -> None:
        from ..run.cli import interrupted
        from ..run.train import Interrupted, hold_signals

        flag = hold_signals()
        if flag["signal"] is not None:
            e = Interrupted(f"{flag['signal']} between the study's jobs", flag["signal"])
            sys.exit(interrupted(e, os.path.abspath(self.folder), multirun=True))

    def _launch(self, jobs: list[list[str]], what: str) -> None:
        """Hand the jobs whose run has not completed yet to the launcher (a re-run reads the others back)."""
        todo = [job for job in jobs if not self._completed(job)]
        say(f"{what}: {len(jobs)} job(s)" + (f", {len(jobs) - len(todo)} completed before" if len(todo) < len(jobs)
                                             else ""))
        if todo:
            self.launcher.launch(todo, initial_job_idx=self.job_idx)
            self.job_idx += len(todo)
            self._conf_unchanged()  # an edit during these jobs: their records say what they ran; nothing more runs

    def _conf_unchanged(self) -> None:
        """Hydra composes every job from the config files as they are on disk *now*: one edited under a running
        study would change its later runs unseen. After each launch (the start checked the plan) the base config is
        composed again and must still make the plan in force; otherwise the study stops here, in one line, before
        running anything more."""
        plan = make_plan(self._compose(self.base), self.base)
        if plan["hash"] != self.plan["hash"]:
            print(f"mixlab: error: {self.folder / 'plan.yaml'}: the config files changed under the running study "
                  f"({differences_line(self.plan, plan)}); its later runs would differ from its plan: expected the "
                  "files as they were when it started (run a study from a checkout nobody edits, e.g. a git "
                  "worktree), then the same command resumes", file=sys.stderr)
            sys.exit(2)

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

    def _stale_after_s(self) -> float | None:
        value = OmegaConf.select(self.config, "study.stale_after_s", default=600)  # checked with the config
        return None if value is None else float(value)

    def plan_storage(self) -> str:
        url = OmegaConf.select(self.config, "study.storage")
        return url or f"sqlite:///{self.folder / 'optuna.db'}"


def _subdir(path: str) -> str:
    """The override that puts a job's records at ``DIR/path``."""
    from ..run.cli import _hydra_value

    return f"hydra.sweep.subdir={_hydra_value(path)}"


def say(line: str) -> None:
    print(f"mixlab.study: {line}", file=sys.stderr, flush=True)
