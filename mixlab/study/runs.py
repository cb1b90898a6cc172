"""Run records as the report reads them, and the metric vocabulary its text and figures share.

The bottom of the report: ``report`` (reading, grouping, numbers, the document) and ``figures``
(one function per picture) both import this module, and it imports neither, so the two never
import each other. ``Run`` is one run directory's ``summary.json`` and ``metrics.jsonl``;
``Config`` is the runs (all seeds, all statuses) that share a method-defining config.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..run.config import fingerprint

# Metrics where a smaller value is the better one (the rest: higher is better).
LOWER_IS_BETTER = ({f"{split}_{m}" for split in ("test", "val") for m in ("nll", "ece", "aece", "brier", "mse", "mae")}
                   | {"test_nll_ts", "test_ece_ts", "test_brier_ts", "test_ood_fpr95"})
FIXED_LAM = {"none", "constant", "beta"}  # λ policies that are not dynamic, for records without lam_dynamic
# Metric key -> its name in headings, columns and axis labels; also the --metric choices.
NAMES = {"test_acc": "test accuracy", "test_ece": "ECE", "test_nll": "NLL", "test_brier": "Brier",
         "test_mse": "test MSE", "test_mae": "test MAE", "median_last10_acc": "median last-10 acc",
         "test_aece": "adaptive ECE", "test_ood_auroc": "OOD AUROC", "test_ood_fpr95": "OOD FPR@95",
         "test_map": "test mAP@[.5:.95]", "test_map50": "test mAP@.5", "test_map75": "test mAP@.75",
         "val_map": "validation mAP@[.5:.95]", "val_map50": "validation mAP@.5",
         "val_acc": "validation accuracy", "val_ece": "validation ECE", "val_nll": "validation NLL",
         "val_brier": "validation Brier", "val_mse": "validation MSE", "val_mae": "validation MAE",
         # calibration after temperature scaling, T fitted on the validation split (Guo et al. 2017)
         "test_nll_ts": "NLL (T-scaled)", "test_ece_ts": "ECE (T-scaled)", "test_brier_ts": "Brier (T-scaled)"}


def bounded(metric: str) -> bool:
    """Whether ``metric`` is a score in [0, 1] where higher is better (accuracy, mAP, AUROC): its differences
    read in points, and it has a ceiling (two configurations both at 1 cannot be told apart)."""
    return metric in NAMES and metric not in LOWER_IS_BETTER


def arm_name(policy: object, pairing: object, mixer: object = None) -> str:
    """A study arm's name (``plan.yaml``): ``schedule``; ``beta+label_kernel`` under a pairing of its own;
    ``beta@cutmix`` under a mixer other than input mixing."""
    name = str(policy) if pairing in (None, "random") else f"{policy}+{pairing}"
    return name if mixer in (None, "input") else f"{name}@{mixer}"


def fmt(x: float | None, nd: int = 4) -> str:
    """``x`` with ``nd`` decimals; "—" for a missing or non-finite value."""
    return "—" if x is None or not math.isfinite(x) else f"{x:.{nd}f}"


@dataclass
class Run:
    path: Path
    summary: dict
    rows: list[dict]
    label: str = "(no config)"

    @property
    def status(self) -> str:
        return str(self.summary.get("status", "unknown"))

    @property
    def config(self) -> dict:
        return self.summary.get("config") or {}

    @property
    def seed(self) -> object:
        return self.config.get("seed")

    @property
    def arm(self) -> str | None:
        """The study arm this run ran (its λ policy, and its pairing where not random); None without a config."""
        lam = self.config.get("lam")
        return arm_name(lam.get("name"), (self.config.get("pairing") or {}).get("name"),
                        (self.config.get("mixer") or {}).get("name")) if lam else None

    @property
    def control_of(self) -> str | None:
        """The arm whose strength this run matches (``study.control_of``, with ``study.control_of_pairing``);
        None for a run that is no control."""
        study = self.config.get("study") or {}
        of = study.get("control_of")
        return arm_name(of.get("name"), (study.get("control_of_pairing") or {}).get("name"),
                        (self.config.get("mixer") or {}).get("name")) \
            if isinstance(of, dict) else None

    @property
    def control_kind(self) -> str | None:
        """Which control this run is (``study.control_kind``; a record without it: ``strength``, the only kind
        there was); None for a run that is no control."""
        return ((self.config.get("study") or {}).get("control_kind") or "strength") if self.control_of else None

    @property
    def fingerprints(self) -> dict | None:
        """``{"train": hash, "val": hash or None, "test": hash}``: what data the run saw; None in older records."""
        fp = (self.summary.get("dataset") or {}).get("fingerprint")
        return fp if isinstance(fp, dict) else None

    def value(self, metric: str) -> float | None:
        """Final value of ``metric`` (from ``final``, or ``final_val`` for val_*, else the summary's top
        level, e.g. median_last10_acc)."""
        final = self.summary.get("final_val" if metric.startswith("val_") else "final") or {}
        v = final.get(metric, self.summary.get(metric))
        return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None

    def epoch_mean(self, key: str) -> float | None:
        """Mean of ``key`` over the epochs of metrics.jsonl that recorded it (e.g. lam_strength), else None."""
        v = [float(x) for row in self.rows if isinstance(x := row.get(key), (int, float)) and math.isfinite(x)]
        return sum(v) / len(v) if v else None


@dataclass
class Config:
    """One configuration: the runs (all statuses, all seeds) sharing a method-defining config."""

    label: str
    flat: dict
    runs: list[Run] = field(default_factory=list)

    @property
    def done(self) -> list[Run]:
        return [r for r in self.runs if r.status == "completed"]

    def values(self, metric: str) -> dict[object, float]:
        return {r.seed: v for r in self.done if (v := r.value(metric)) is not None}

    @property
    def lam(self) -> str | None:
        return self.flat.get("lam.name")

    @property
    def arm(self) -> str:
        """The study arm these runs ran (``schedule``, ``beta+label_kernel``)."""
        return arm_name(self.lam, self.pairing, self.flat.get("mixer.name"))

    @property
    def pairing(self) -> str:
        """The pairing's name (records that predate the key: random, classic mixup's)."""
        return self.flat.get("pairing.name", "random")

    @property
    def mixer(self) -> str:
        """The mixer's name (records that predate the key: input, classic mixup's)."""
        return self.flat.get("mixer.name", "input")

    @property
    def control_of(self) -> dict | None:
        """The lam config this configuration is the strength-matched Beta control of
        (``study.control_of``, written by ``python -m mixlab.controls``), else None."""
        return next((m for r in self.runs if isinstance(m := (r.config.get("study") or {}).get("control_of"), dict)),
                    None)

    @property
    def control_kind(self) -> str | None:
        """Which control these runs are (``CONTROL_KINDS``); None for a configuration that is no control."""
        return next((k for r in self.runs if (k := r.control_kind)), None)

    @property
    def dynamic(self) -> bool:
        """Whether the λ policy is dynamic (``Policy.dynamic``, recorded as ``lam_dynamic``; older records:
        every policy but none, constant and beta)."""
        said = [r.summary["lam_dynamic"] for r in self.runs if isinstance(r.summary.get("lam_dynamic"), bool)]
        return said[0] if said else self.lam not in FIXED_LAM

    def lam_options(self) -> dict:
        """This configuration's ``lam.*`` keys, flat (``{"lam.name": "distance", "lam.temperature": 0.5, ...}``)."""
        return {k: v for k, v in self.flat.items() if k.startswith("lam.")}


# ----------------------------------------------------------------------------- grouping and wording shared by the reports

FLIP = {"better": "worse", "worse": "better"}
# The controls a study can declare for an arm (``study.controls``): what each changes beyond the arm's λ config
# (the keys its runs differ in from the arm's, besides ``lam.*``) and how the report names it.
CONTROL_KINDS = {
    "strength": {"keys": (), "name": "strength-matched Beta"},   # fixed Beta of the arm's mean mixing strength
    "reversed": {"keys": ("trainer.reverse_time",), "name": "time-reversed"},  # the arm with its clock reversed
    "stop_late": {"keys": ("trainer.mix_until",), "name": "mixing off late"},  # the arm, unmixed at the end
}
TUNED_KEYS = ("tuned", "tuned_transfer")  # where a run's λ values came from: not what defines its method


def _short(v: object) -> object:
    """A float with more than 6 significant digits (a solved α*, a sampled τ) at 6, for labels."""
    return float(f"{v:.6g}") if isinstance(v, float) and len(repr(v)) > 8 else v


def matched_policy(control: Config, configs: list[Config]) -> Config | None:
    """The configuration ``control`` is the control of: its lam config is the control's ``study.control_of``
    and every other key is the same, but those the control's kind changes (``CONTROL_KINDS``)."""
    def recorded(group: str, node: dict) -> dict:  # as a run's config reads, keys it predates at their old values
        return {k: v for k, v in fingerprint({group: node}).items() if k.startswith(f"{group}.")}

    want = recorded("lam", control.control_of or {})
    pairing = next((p for r in control.runs if isinstance(p := (r.config.get("study") or {}).get("control_of_pairing"),
                                                          dict)), None)

    def same_rest(c: Config) -> bool:  # under random pairing, a control of a method with its own pairing
        if pairing is None:
            return less_kind(control, non_lam(c)) == less_kind(control, non_lam(control))
        return without_pairing(c) == without_pairing(control) and \
            {k: v for k, v in c.flat.items() if k.startswith("pairing.")} == recorded("pairing", pairing)
    return next((c for c in configs if c.control_of is None and c.lam_options() == want and same_rest(c)), None)


def non_lam(c: Config) -> dict:
    """The keys that are not the λ policy's: ``lam.*``, and ``tuned``/``tuned_transfer`` (where the lam values
    came from)."""
    return {k: v for k, v in c.flat.items() if not k.startswith("lam.") and k not in TUNED_KEYS}


def less_kind(c: Config, keys: dict) -> dict:
    """``keys`` without those ``c``'s control kind changes in the arm it controls (``CONTROL_KINDS``: a
    time-reversed control's ``trainer.reverse_time``); all of them for a strength control or no control."""
    own = CONTROL_KINDS.get(c.control_kind or "strength", {"keys": ()})["keys"] if c.control_of is not None else ()
    return {k: v for k, v in keys.items() if k not in own}


def references(c: Config, ref: str, configs: list[Config]) -> list[Config]:
    """The configurations of policy ``ref`` that ``c`` is compared with: those with the same non-λ keys (a
    control's own keys aside: fixed mixup switched off late is compared with fixed mixup and with none); where
    ``c`` runs under a pairing or a mixer of its own and none does (C-Mixup: beta under ``label_kernel``; CutMix:
    beta under ``mixer=cutmix``), ``ref`` under random pairing and input mixing with the same other keys. A
    reference is not compared with its own policy's configurations under the same keys."""
    refs = [b for b in configs if b.lam == ref and b.control_of is None]
    same = [] if c.lam == ref and c.control_of is None else \
        [b for b in refs if less_kind(c, non_lam(b)) == less_kind(c, non_lam(c))]
    if same or (c.pairing == "random" and c.mixer == "input"):
        return same
    return [b for b in refs if b.pairing == "random" and b.mixer == "input"
            and less_kind(c, without_method(b)) == less_kind(c, without_method(c))]


def without_pairing(c: Config) -> dict:
    return {k: v for k, v in non_lam(c).items() if not k.startswith("pairing.")}


def without_method(c: Config) -> dict:
    """``non_lam`` less the pairing's and the mixer's keys: what a method of its own shares with the reference."""
    return {k: v for k, v in non_lam(c).items() if not k.startswith(("pairing.", "mixer."))}


def ceiling_text(row: dict) -> str:
    """What a comparison at the ceiling (``row["ceiling"]``) does not show, in every report that has one."""
    a, b = row["ceiling"]
    return (f"{row['label']} vs {row['ref_label']} on {NAMES.get(row['metric'], row['metric'])}: {a:.3f} vs {b:.3f} "
            "is no evidence of equality: the test cannot tell these apart")


def _space_text(space: dict) -> str:
    def one(key: str, spec: dict) -> str:
        if "choices" in spec:
            return f"{key} ∈ {{{', '.join(map(str, spec['choices']))}}}"
        return f"{key} ∈ [{spec['low']:g}, {spec['high']:g}]" + (" log-uniform" if spec.get("log") else " uniform")
    return "; ".join(one(k, v) for k, v in (space or {}).items()) or "nothing to tune"


def _finite(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
