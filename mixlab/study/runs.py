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
    def pairing(self) -> str:
        """The pairing's name (records that predate the key: random, classic mixup's)."""
        return self.flat.get("pairing.name", "random")

    @property
    def control_of(self) -> dict | None:
        """The lam config this configuration is the strength-matched Beta control of
        (``study.control_of``, written by ``python -m mixlab.controls``), else None."""
        return next((m for r in self.runs if isinstance(m := (r.config.get("study") or {}).get("control_of"), dict)),
                    None)

    @property
    def dynamic(self) -> bool:
        """Whether the λ policy is dynamic (``Policy.dynamic``, recorded as ``lam_dynamic``; older records:
        every policy but none, constant and beta)."""
        said = [r.summary["lam_dynamic"] for r in self.runs if isinstance(r.summary.get("lam_dynamic"), bool)]
        return said[0] if said else self.lam not in FIXED_LAM

    def lam_options(self) -> dict:
        """This configuration's ``lam.*`` keys, flat (``{"lam.name": "distance", "lam.temperature": 0.5, ...}``)."""
        return {k: v for k, v in self.flat.items() if k.startswith("lam.")}
