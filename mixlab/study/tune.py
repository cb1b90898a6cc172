"""``python -m mixlab.tune --lambdas beta,distance --trials 8 --out DIR [key=value ...]``: equal-budget
random search of each λ policy's hyperparameters on the validation split.

Every policy gets the same number of trials (trial 0: the config's defaults; the others drawn from
its search space in ``conf/search_spaces.yaml`` with a seeded generator), each a full run whose
records go to ``DIR/<policy>/trial_<k>``; a trial's score is its run's ``objective``, the final
validation metric (the test set is never read for selection). ``DIR/tuned.yaml`` gets each policy's
best hyperparameters and ``DIR/tuning.json`` every trial and the settings they ran under; a comparison
then runs with ``tuned=DIR/tuned.yaml``, so it uses exactly what tuning chose (under other settings only
with ``tuned_transfer=true``). (hydra-optuna-sweeper pins optuna<3; a seeded random search with
DomainBed's protocol needs nothing beyond numpy.)
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..run.config import CONF_DIR, ConfigError, flatten, pairing_spaces, search_spaces, tuning_settings
from ..run.records import atomic_write, atomic_write_json
from .pool import run_all


def sample(space: dict[str, dict], rng: np.random.Generator) -> dict[str, Any]:
    """One draw from ``space``: uniform, log-uniform or a choice per key, in the space's key order."""
    out: dict[str, Any] = {}
    for key, spec in space.items():
        if "choices" in spec:
            out[key] = spec["choices"][int(rng.integers(len(spec["choices"])))]
        elif spec.get("log"):
            out[key] = float(math.exp(rng.uniform(math.log(spec["low"]), math.log(spec["high"]))))
        else:
            out[key] = float(rng.uniform(spec["low"], spec["high"]))
    return out


def arm_mixer(arm: str) -> str:
    """The mixer an arm names after ``@`` (``beta@cutmix``, ``schedule+nearest@fmix``); ``input`` where it names none."""
    return arm.partition("@")[2] or "input"


def arm_parts(arm: str) -> tuple[str, str]:
    """``beta+label_kernel`` -> (``beta``, ``label_kernel``); ``schedule`` -> (``schedule``, ``random``); a mixer
    after ``@`` aside (``arm_mixer``)."""
    policy, _, pairing = arm.partition("@")[0].partition("+")
    return policy, pairing or "random"


def arm_overrides(arm: str) -> list[str]:
    """``beta`` -> ``[lambda=beta]``; ``beta+label_kernel`` -> ``[lambda=beta, pairing=label_kernel]``;
    ``beta@cutmix`` -> ``[lambda=beta, mixer=cutmix]``."""
    policy, pairing = arm_parts(arm)
    return ([f"lambda={policy}"] + [f"pairing={pairing}"] * ("+" in arm)
            + [f"mixer={arm_mixer(arm)}"] * ("@" in arm))


def arm_space(arm: str) -> dict[str, dict]:
    """The search space of a tuning arm: its λ policy's, and its pairing's where the arm names one
    (``beta+label_kernel``: Beta's α and the kernel's σ together); the mixer's options are not searched."""
    from ..engine.mixing import MIXERS
    from ..engine.pairing import PAIRINGS

    if "@" in arm and arm_mixer(arm) not in MIXERS.names():
        raise ConfigError(f"--lambdas: {arm!r} names mixer {arm_mixer(arm)!r}; expected one of {sorted(MIXERS.names())}")
    policy, plus, pairing = arm.partition("@")[0].partition("+")
    spaces = search_spaces()
    if policy not in spaces:
        raise ConfigError(f"--lambdas: {policy!r} has no search space; expected names from {sorted(spaces)} "
                          "(conf/search_spaces.yaml), optionally +pairing (beta+label_kernel)")
    if plus and pairing not in PAIRINGS.names():
        raise ConfigError(f"--lambdas: {arm!r} names pairing {pairing!r}; expected one of {sorted(PAIRINGS.names())}")
    if plus and not spaces[policy]:
        raise ConfigError(f"--lambdas: {arm!r}: lambda={policy} has nothing to tune and no pairing changes that; "
                          f"expected {policy} alone")
    return {**spaces[policy], **pairing_spaces().get(pairing, {})}


def trials_for(policy: str, space: dict, trials: int, seed: int) -> list[dict[str, Any]]:
    """The hyperparameters of each trial: the defaults first, then seeded draws (per policy, so adding
    a policy to a study does not change another's trials)."""
    if not space:
        return [{}]
    rng = np.random.default_rng([seed, zlib.crc32(policy.encode())])
    return [{}] + [sample(space, rng) for _ in range(trials - 1)]


def _better(a: float | None, b: float | None, higher: bool) -> bool:
    if a is None or not math.isfinite(a):
        return False
    return b is None or (a > b if higher else a < b)


def _trial(overrides: list[str], run_dir: str) -> float | None:
    """One trial: compose the config from ``overrides`` and train it into ``run_dir``; a failed run is
    recorded as failed in its summary.json and scores nothing."""
    from hydra import compose, initialize_config_dir

    from ..run.train import Interrupted, train

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    try:
        return train(cfg, run_dir, folder_key="--out")
    except (ConfigError, Interrupted):
        raise
    except Exception as e:  # noqa: BLE001 - the run recorded it; the other trials go on
        print(f"mixlab.tune: {run_dir} failed ({type(e).__name__}: {e})", file=sys.stderr)
        return None


def _settings(trial_dir: Path) -> dict:
    """What the chosen values hold for (``tuning_settings``), from a trial's recorded config: every trial ran
    under the same ones, and ``tuned=`` refuses a run under others unless ``tuned_transfer=true``."""
    return tuning_settings(json.loads((trial_dir / "summary.json").read_text())["config"])


def tune(lambdas: list[str], trials: int, out: str | Path, overrides: list[str], *, seed: int = 0,
         jobs: int = 1) -> dict:
    """Run every trial of every policy (skipping completed ones on a re-run; ``jobs`` at a time, each
    with its share of the CPU threads) and write tuned.yaml."""
    out = Path(out)
    spaces = {arm: arm_space(arm) for arm in lambdas}
    if trials < 1:
        raise ConfigError(f"--trials={trials}: expected an integer >= 1")
    if jobs < 1:
        raise ConfigError(f"--jobs={jobs}: expected an integer >= 1")
    work = [(policy, k, params) for policy in lambdas
            for k, params in enumerate(trials_for(policy, spaces[policy], trials, seed))]
    # a trial never reads the test set (eval.test=false): selection sees validation only
    args = [(["eval.test=false", *overrides, *arm_overrides(policy), *(f"{key}={v!r}" for key, v in params.items())],
             str(out / policy / f"trial_{k}")) for policy, k, params in work]
    objectives = run_all(_trial, args, jobs)
    log, tuned, chosen_trial = [], {}, {}
    for policy in lambdas:
        best, chosen = None, None
        for (p, k, params), objective in zip(work, objectives, strict=True):
            if p != policy:
                continue
            summary = json.loads((out / policy / f"trial_{k}" / "summary.json").read_text())
            higher = not str(summary.get("objective_key") or "val_acc").endswith(("mse", "mae"))
            log.append({"lambda": policy, "trial": k, "params": params, "objective": objective,
                        "objective_key": summary.get("objective_key"), "status": summary.get("status")})
            if _better(objective, best, higher):  # the values the run used, defaults included, from its record
                best, chosen = objective, {key: flatten(summary["config"])[key] for key in spaces[policy]}
                chosen_trial[policy] = k
        if chosen is None:
            raise ConfigError(f"lambda={policy}: no trial completed with a finite objective; see {out / policy}")
        tuned[policy] = chosen
    settings = {p: _settings(out / p / "trial_0") for p in lambdas}  # "settings": the first's (older readers)
    atomic_write_json(out / "tuning.json", {"lambdas": lambdas, "trials": trials, "seed": seed,
                                           "overrides": overrides, "spaces": {p: spaces[p] for p in lambdas},
                                           "chosen": chosen_trial, "trials_run": log,
                                           "settings": settings[lambdas[0]], "settings_by_arm": settings})
    atomic_write(out / "tuned.yaml", lambda f: f.write(yaml.safe_dump(tuned, sort_keys=False).encode()))
    return tuned


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mixlab.tune", description=__doc__.split("\n\n")[0])
    ap.add_argument("--lambdas", required=True, help="comma-separated λ policies, e.g. beta,distance,sk; "
                    "policy+pairing tunes under that pairing, with its knobs too (beta+label_kernel: C-Mixup)")
    ap.add_argument("--trials", type=int, default=8, help="trials per policy (the same for every policy)")
    ap.add_argument("--seed", type=int, default=0, help="seeds the search (not the runs: set seed= for that)")
    ap.add_argument("--jobs", type=int, default=1, help="trials run at once, each in its own process with its "
                                                       "share of the CPU threads (the choice does not depend on it)")
    ap.add_argument("--out", required=True, help="where the trials' records, tuning.json and tuned.yaml go")
    ap.add_argument("overrides", nargs="*", help="config overrides shared by every trial (data=..., trainer.epochs=...)")
    args = ap.parse_args(argv)
    try:
        tuned = tune([p for p in args.lambdas.split(",") if p], args.trials, args.out, args.overrides, seed=args.seed,
                     jobs=args.jobs)
    except ConfigError as e:
        print(f"mixlab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mixlab.tune: interrupted; the same command resumes (completed trials are kept, the rest resume "
              "from their checkpoints)", file=sys.stderr)
        return 130
    print(yaml.safe_dump(tuned, sort_keys=False), end="")
    print(f"mixlab: wrote {Path(args.out) / 'tuned.yaml'}; compare with tuned={Path(args.out) / 'tuned.yaml'}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
