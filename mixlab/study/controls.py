"""``python -m mixlab.controls SWEEP_DIR [--dry-run] [--jobs N] [--only-beating]``: add a strength-matched fixed-mixup control
next to every dynamic λ policy of a comparison.

A dynamic policy can beat Beta(1, 1) just by mixing more or less. For each configuration of the
sweep whose λ policy is dynamic (``Policy.dynamic``: distance, loss, sk, automix, schedule, and new
policies unless they say otherwise), its measured mixing strength s is the mean over its completed
runs of each run's mean over epochs of min(λ, 1 − λ) (``lam_strength``), rounded to 4 decimals. Its
control is ``lambda=beta lam.strength=s``: Beta(α*, α*) with E[min(λ, 1 − λ)] = ½ − 1/(α*·4^α*·B(α*, α*))
= s, solved for α* (``lam.beta_alpha_for_strength``). Every other key, and each seed, is the policy's
own (so the control is paired with it seed by seed); the control's records go beside the policy's,
with ``study.control_of`` = the policy's lam config, and the report compares each dynamic policy
with fixed mixup of the same strength. Re-running skips completed controls. ``--only-beating``
restricts the controls to the dynamic policies that beat the declared reference on the declared metric
(mean over shared seeds): a control explains a gain, and a policy without one has none to explain.
It is exploratory only: it chooses by the metric the runs recorded (the test set, for a comparison), so
the controls it leaves out depend on test results; ``python -m mixlab.study`` gives every dynamic arm its
control, whatever its results.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import sys
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from ..engine.lam import LAMBDAS, STRENGTH_RANGE
from ..run.config import CONF_DIR, ConfigError, _under, import_plugins, job_dir
from .pool import run_all
from .report import declared, group_runs, load_runs
from .runs import references
from .runs import LOWER_IS_BETTER, Config, Run

ROUND = 4  # decimals of the matched strength: a readable, stable folder name and label


def _is_dynamic(c: Config) -> bool:
    import_plugins(next((r.config.get("plugins") for r in c.runs if r.config.get("plugins")), None))
    if c.lam not in LAMBDAS:
        raise ConfigError(f"lam.name={c.lam!r} (in {c.runs[0].path}): not a registered λ policy; expected one of "
                          f"{LAMBDAS.names()} or plugins= that registers it")
    return bool(getattr(LAMBDAS.get(c.lam), "dynamic", True))


def _random_pairing(resolved: dict) -> bool:
    return (resolved.get("pairing") or {}).get("name", "random") == "random"


def control_config(resolved: dict, strength: float) -> dict:
    """The control of one run: its resolved config with lam = Beta at ``strength`` (beta's defaults
    otherwise), no tuned file, and ``study.control_of`` = the run's lam config. A run under a pairing of
    its own (C-Mixup) is controlled under random pairing, with ``study.control_of_pairing`` = its pairing:
    the control separates what the pairing does from mixing less or more."""
    cfg = copy.deepcopy(resolved)
    beta = yaml.safe_load((CONF_DIR / "lambda" / "beta.yaml").read_text(encoding="utf-8"))
    cfg["lam"] = {**beta, "strength": strength}
    cfg["tuned"] = None
    cfg.setdefault("study", {})["control_of"] = copy.deepcopy(resolved["lam"])
    if not _random_pairing(resolved):
        cfg["pairing"] = yaml.safe_load((CONF_DIR / "pairing" / "random.yaml").read_text(encoding="utf-8"))
        cfg["study"]["control_of_pairing"] = copy.deepcopy(resolved["pairing"])
    return cfg


def control_dir(run: Run, strength: float) -> Path:
    """Beside the run: its Hydra overrides with the λ policy replaced (``lambda=beta,lam.strength=s,...``),
    plus which policy it matches; without Hydra overrides, the seed stands for them."""
    overrides_file = run.path / ".hydra" / "overrides.yaml"
    if overrides_file.exists():
        kept = [o for o in yaml.safe_load(overrides_file.read_text(encoding="utf-8")) or []
                if not _under(o.lstrip("+~").split("=", 1)[0], ("lambda", "lam", "tuned", "pairing"))]
    else:
        kept = [f"seed={run.seed}"]
    # the policy's lam config names it; under a pairing of its own, its pairing config too
    said = run.config["lam"] if _random_pairing(run.config) else {"lam": run.config["lam"], "pairing": run.config["pairing"]}
    tag = hashlib.sha1(json.dumps(said, sort_keys=True).encode()).hexdigest()[:6]
    name = job_dir(["lambda=beta", f"lam.strength={strength}", *kept])
    return run.path.parent / f"{name},matched_to={run.config['lam']['name']}-{tag}"


def _gain(c: Config, configs: list[Config], reference: str, metric: str) -> float | None:
    """Mean over the seeds both ran of ``c``'s ``metric`` minus the reference policy's (same non-λ keys),
    signed so that > 0 is better for ``c``; None without such a reference or shared seeds."""
    ref = next(iter(references(c, reference, configs)), None)
    if ref is None:
        return None
    ours, theirs = c.values(metric), ref.values(metric)
    seeds = [s for s in ours if s in theirs]
    if not seeds:
        return None
    d = math.fsum(ours[s] - theirs[s] for s in seeds) / len(seeds)
    return -d if metric in LOWER_IS_BETTER else d


def plan(sweep: str | Path, beating: bool = False) -> tuple[list[dict], list[str]]:
    """The controls ``sweep`` needs (``{"policy", "strength", "seed", "dir", "config"}``, one per launched
    run of each dynamic policy; with ``beating``, only of those whose mean over shared seeds of the declared
    ``study.metric`` beats the declared ``study.reference``) and a line for each dynamic policy that gets none."""
    todo, skipped = [], []
    runs = load_runs(sweep)
    configs = group_runs(runs)
    reference, metric = declared(runs)
    for c in configs:
        # dynamic λ policies, and the reference policy under a pairing of its own (C-Mixup): either can win by
        # mixing more or less than the reference
        own_pairing = c.lam == reference and c.pairing != "random"
        if c.control_of is not None or not c.lam or not (own_pairing or _is_dynamic(c)):
            continue
        gain = _gain(c, configs, reference, metric) if beating else None
        if beating and (gain is None or gain <= 0):
            skipped.append(f"{c.label}: " + (f"no {reference} runs with the same other keys and seeds to compare with"
                                             if gain is None else f"does not beat {reference} on {metric} "
                                             f"(mean paired difference {-gain if metric in LOWER_IS_BETTER else gain:+.4f})"))
            continue
        strengths = [r.epoch_mean("lam_strength") for r in c.done]
        if not strengths:
            skipped.append(f"{c.label}: no completed run to measure its strength")
            continue
        if any(v is None for v in strengths):
            skipped.append(f"{c.label}: its records predate lam_strength (re-run it with this mixlab)")
            continue
        s = round(math.fsum(strengths) / len(strengths), ROUND)
        lo, hi = STRENGTH_RANGE
        if not lo <= s <= hi:
            skipped.append(f"{c.label}: measured strength {s} is outside [{lo}, {hi}], where a Beta(α, α) can match it")
            continue
        for r in c.runs:
            if r.config:
                todo.append({"policy": c.label, "strength": s, "seed": r.seed, "dir": control_dir(r, s),
                             "config": control_config(r.config, s)})
    return todo, skipped


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mixlab.controls", description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep", help="the comparison's sweep directory (its runs' records are read, controls written there)")
    ap.add_argument("--dry-run", action="store_true", help="list the controls and their folders, run nothing")
    ap.add_argument("--only-beating", action="store_true",
                    help="exploratory: controls only for the dynamic policies whose mean (over shared seeds) of "
                         "the declared study.metric beats the declared study.reference (a choice made on test "
                         "results); the others get a line saying so")
    ap.add_argument("--jobs", type=int, default=1, help="controls run at once, each in its own process with its "
                                                       "share of the CPU threads (the records do not depend on it)")
    args = ap.parse_args(argv)
    try:
        if args.jobs < 1:
            raise ConfigError(f"--jobs={args.jobs}: expected an integer >= 1")
        if not Path(args.sweep).is_dir():
            raise ConfigError(f"{args.sweep}: expected a sweep directory with run records, got no such directory")
        if args.only_beating:
            print("mixlab.controls: --only-beating is exploratory: which policies get a control is chosen on the "
                  "runs' recorded metric (test); a pre-registered study gives every dynamic policy its control",
                  file=sys.stderr)
        todo, skipped = plan(args.sweep, beating=args.only_beating)
    except (ConfigError, ValueError) as e:  # ValueError: the runs declare different primary comparisons
        print(f"mixlab.controls: error: {e}", file=sys.stderr)
        return 2
    for line in skipped:
        print(f"mixlab.controls: no control for {line}", file=sys.stderr)
    if not todo:
        print("mixlab.controls: nothing to add " + ("(every candidate is listed above)" if skipped else
                                                   "(no dynamic policy with completed runs)"), file=sys.stderr)
        return 0
    calls = [(f"[{k}/{len(todo)}] {job['policy']} seed {job['seed']}: lambda=beta lam.strength={job['strength']} "
              f"-> {job['dir']}", job["config"], str(job["dir"])) for k, job in enumerate(todo, 1)]
    if args.dry_run:
        for line, _, _ in calls:
            print(f"mixlab.controls: {line}", file=sys.stderr)
        return 0
    try:
        failed = sum(run_all(_control, calls, args.jobs))
    except ConfigError as e:
        print(f"mixlab.controls: error: {e}", file=sys.stderr)
        return 2
    print(f"mixlab.controls: {len(todo) - failed} of {len(todo)} controls done; compare: python -m mixlab.report "
          f"{args.sweep}", file=sys.stderr)
    return 1 if failed else 0


def _control(line: str, config: dict, run_dir: str) -> bool:
    """Run one control; True if it failed (recorded as failed in its summary.json; the others still run)."""
    from ..run.train import train

    print(f"mixlab.controls: {line}", file=sys.stderr, flush=True)
    try:
        train(OmegaConf.create(config), run_dir)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001
        print(f"mixlab.controls: {run_dir} failed ({type(e).__name__}: {e})", file=sys.stderr)
        return True
    return False


if __name__ == "__main__":
    sys.exit(main())
