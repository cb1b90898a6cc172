"""A study's pre-registration: ``plan.yaml``, written before its first run and held to on every re-run.

The plan is made from the composed config's ``study`` block and the command's overrides alone (no run
record is read): every arm with its search space and budget, the tuning and evaluation seeds, the
primary family, each dynamic arm's control, the decision rules. Its ``hash`` covers all of that;
``git`` (the commit it was first made under) is recorded but not hashed, so a study may resume under
later code, and the report lists that as a deviation. A different plan for an existing folder is
refused in one line naming what changed.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from ..engine.lam import reads_time
from ..run.config import ConfigError, fingerprint, flatten, import_plugins
from ..run.records import atomic_write_bytes, loaded_git
from .runs import arm_name
from .tune import arm_mixer, arm_overrides, arm_parts, arm_space

PLAN = "plan.yaml"
FIXED_FOR_ALL = ("data.", "eval.", "study.", "hydra.", "trainer.epochs")  # what no arm may set for itself
HASHED = ("overrides", "arms", "tuning", "evaluation", "primary_family", "controls", "decisions", "config")


CONTROL_TEXT = {
    "strength": "fixed Beta of the arm's training-time mixing strength (the mean over its comparison runs of each "
                "run's mean min(λ, 1−λ)), under random pairing, on the same evaluation seeds",
    "reversed": "the arm with its tuned values and its clock reversed (trainer.reverse_time=true: a schedule runs "
                "from its end value back to its start), on the same evaluation seeds",
    "stop_late": "the arm with its tuned values and mixing switched off from {at:g} of training on "
                 "(trainer.mix_until={at:g}), on the same evaluation seeds",
}


def is_dynamic(policy: str) -> bool:
    from ..engine.lam import LAMBDAS

    return bool(getattr(LAMBDAS.get(policy), "dynamic", True))


def make_plan(cfg: DictConfig, overrides: list[str]) -> dict[str, Any]:
    """The plan of the study ``cfg`` (composed with ``overrides``) declares; ``ConfigError`` for a study
    that cannot be run as declared (no arms, a reference that is no arm, seeds shared by tuning and evaluation)."""
    s = cfg.study
    import_plugins(cfg.get("plugins"))
    arms = list(s.arms)
    if not arms:
        raise ConfigError("study.arms=[]: expected the arms to compare, e.g. study.arms=[none,beta,schedule,loss]")
    if len(set(arms)) != len(arms):
        raise ConfigError(f"study.arms={arms}: expected each arm once")
    if s.reference not in arms:
        raise ConfigError(f"study.reference={s.reference!r}: not one of study.arms={arms}; expected the tuned "
                          "fixed policy every dynamic arm is compared with")
    shared = sorted(set(s.tuning_seeds) & set(s.eval_seeds))
    if shared:
        raise ConfigError(f"study.eval_seeds={list(s.eval_seeds)}: share {shared} with study.tuning_seeds; "
                          "expected disjoint seeds (a comparison run must not be a tuning run)")
    if s.go == "reference_beats_none" and "none" not in arms:
        raise ConfigError(f"study.go=reference_beats_none: needs the arm none in study.arms={arms}; expected it "
                          "added, or study.go=always")
    declared = dict(s.get("controls") or {})
    unknown = sorted(set(declared) - set(arms))
    if unknown:
        raise ConfigError(f"study.controls: names {unknown}, not in study.arms={arms}; expected controls of the arms")
    own = {arm: list(v) for arm, v in (s.get("arm_overrides") or {}).items()}
    unknown = sorted(set(own) - set(arms))
    if unknown:
        raise ConfigError(f"study.arm_overrides: names {unknown}, not in study.arms={arms}; expected settings of the arms")
    rows, family, controls = [], [], []
    stop_at = float(s.get("stop_late_at", 0.75))
    primary = s.matched == "primary"
    for arm in arms:
        policy, pairing = arm_parts(arm)
        space = arm_space(arm)
        dynamic = is_dynamic(policy)
        for setting in own.get(arm, []):
            key = setting.partition("=")[0]
            if key in space or key.startswith(FIXED_FOR_ALL):
                raise ConfigError(f"study.arm_overrides.{arm}: {setting!r} sets "
                                  + (f"{key}, which the arm tunes" if key in space else
                                     f"{key}, which every arm shares (the paired comparison needs the same data, "
                                     "evaluation and study)")
                                  + "; expected settings of the arm's own method (mixer.*, pairing.*, lam.*, model.*, ...)")
        rows.append({"arm": arm, "lambda": policy, "pairing": pairing, **({"mixer": arm_mixer(arm)} if "@" in arm else {}),
                     "dynamic": dynamic, "space": space, "trials": int(s.trials) if space else 1,
                     # only where declared: the plans of studies without them (and their hashes) read as before
                     **({"overrides": own[arm]} if own.get(arm) else {})})
    names = [r["arm"] for r in rows]
    for row in rows:
        arm, policy, dynamic = row["arm"], row["lambda"], row["dynamic"]
        # a dynamic arm, or the reference under a pairing (C-Mixup) or a mixer (CutMix) of its own, claims to beat
        # the reference: under the same pairing and mixer where that arm ran (what the report compares it with)
        own = row["pairing"] != "random" or "mixer" in row
        claims = (dynamic or (policy == s.reference and own)) and arm != s.reference
        ref = arm_name(s.reference, row["pairing"], row.get("mixer"))
        ref = ref if ref in names and ref != arm else s.reference
        # a fixed λ under a mixer of its own mixes as strongly as its tuned α says: its strength control would be
        # itself, so it gets none unless declared; a pairing changes the blend's strength (C-Mixup), so it does
        matched = dynamic or (policy == s.reference and row["pairing"] != "random")
        kinds = list(declared.get(arm, ["strength"] if claims and matched else []))
        if "reversed" in kinds and not reads_time(policy):
            raise ConfigError(f"study.controls.{arm}=[{', '.join(kinds)}]: reversed needs a λ policy that depends "
                              f"on the training time, and lambda={policy} does not; expected strength or stop_late")
        for kind in kinds:
            controls.append({"of": arm, "kind": kind, "control": CONTROL_TEXT[kind].format(at=stop_at),
                             **({"mix_until": stop_at} if kind == "stop_late" else {})})
        if claims:
            family.append(f"{arm} vs {ref} on {s.metric}")
            if primary:
                family += [f"{arm} vs its {kind} control on {s.metric}" for kind in kinds]
    # the reference's own controls (fixed mixup switched off late, ...) are other fixed recipes: every arm that
    # claims to beat the reference is compared with each of them too
    for kind in declared.get(s.reference, []) if primary else []:
        family += [f"{r['arm']} vs {s.reference}'s {kind} control on {s.metric}" for r in rows
                   if f"{r['arm']} vs {s.reference} on {s.metric}" in family]
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved.pop("hydra", None)
    base = {k: v for k, v in fingerprint(resolved).items() if not k.startswith(("lam.", "pairing.", "seed", "tuned"))}
    plan = {
        "overrides": list(overrides),
        "arms": rows,
        "tuning": {"sampler": s.sampler, "search_seed": int(s.search_seed), "seeds": list(s.tuning_seeds),
                   "score": "the mean over the tuning seeds of each run's final validation objective; the test "
                            "set is never read (eval.test=false)",
                   "ties": "the lower trial number wins (trial 0: the arm's defaults)"},
        "evaluation": {"seeds": list(s.eval_seeds), "reference": s.reference, "metric": s.metric},
        "primary_family": family,
        "controls": controls,
        "decisions": {"go": s.go, "correction": "Holm over the primary family", "alpha": 0.05,
                      "matched": s.matched},
        "config": base,
    }
    plan["hash"] = plan_hash(plan)
    return plan


def plan_hash(plan: dict) -> str:
    body = json.dumps({k: plan.get(k) for k in HASHED}, sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def differences(old: dict, new: dict) -> list[str]:
    """``key: old -> new`` for every hashed entry (flattened, each arm by its name) that differs."""
    def flat(plan: dict) -> dict:
        body = {k: plan.get(k) for k in HASHED}
        body["arms"] = {row.get("arm"): row for row in body.get("arms") or []}
        return flatten(body)

    a, b = flat(old), flat(new)
    return [f"{k}: {a.get(k, '(absent)')!r} -> {b.get(k, '(absent)')!r}" for k in sorted(a.keys() | b.keys())
            if a.get(k, "(absent)") != b.get(k, "(absent)")]


def differences_line(old: dict, new: dict) -> str:
    """The first three ``differences`` of two plans, in one line (and how many more)."""
    diff = differences(old, new)
    return "; ".join(diff[:3]) + (f"; and {len(diff) - 3} more" if len(diff) > 3 else "")


def register(folder: Path, plan: dict, command: str) -> tuple[dict, list[str]]:
    """Write ``folder/plan.yaml`` (the first time), or check that the one there is this plan. Returns
    the plan in force and its deviations (a resume under another commit). ``ConfigError`` for another plan."""
    path = folder / PLAN
    git = loaded_git()
    if path.exists():
        old = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if old.get("hash") != plan["hash"]:
            raise ConfigError(f"{path}: the study there was planned otherwise ({differences_line(old, plan)}); a "
                              "study folder holds one plan: expected the same command, or a new folder")
        deviations = list(old.get("deviations") or [])
        if git.get("commit") and git.get("commit") != (old.get("git") or {}).get("commit"):
            line = f"resumed under commit {git['commit'][:12]} (planned under {str((old.get('git') or {}).get('commit'))[:12]})"
            if line not in deviations:
                deviations.append(line)
                old["deviations"] = deviations
                atomic_write_bytes(path, yaml.safe_dump(old, sort_keys=False, allow_unicode=True).encode())
        return old, deviations
    plan = {"study": folder.name, "command": command, "git": git, **plan, "deviations": []}
    atomic_write_bytes(path, yaml.safe_dump(plan, sort_keys=False, allow_unicode=True).encode())
    return plan, []


def row_overrides(row: dict) -> list[str]:
    """The overrides of every run of a plan's arm: its name's (``lambda=``, ``pairing=``, ``mixer=``), then its
    declared ``study.arm_overrides``."""
    return arm_overrides(row["arm"]) + list(row.get("overrides") or [])
