"""Evaluation metrics: accuracy, NLL, calibration (ECE, Brier), regression errors, λ statistics.

Everything is computed on the input's device in float32 (logits may be bf16/fp16) and read
back to the host in a single transfer at the end of each public function that returns Python
numbers. :class:`Accumulator` lets a training loop sum per-batch values on the device and pay
for one transfer per epoch instead of one per batch.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Accumulator",
    "classification_metrics",
    "detection_metrics",
    "ood_metrics",
    "lam_stats",
    "median_last",
    "regression_metrics",
    "fit_temperature",
    "reliability",
    "temperature_scaled",
]


# ----------------------------------------------------------------------------- validation


def _check_classification_inputs(logits: Tensor, labels: Tensor, n_bins: int) -> None:
    if logits.dim() != 2:
        raise ValueError(f"logits: expected shape (N, C), got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits: expected a floating dtype, got {logits.dtype}")
    n, c = logits.shape
    if n == 0 or c == 0:
        raise ValueError(f"logits: expected N >= 1 samples and C >= 1 classes, got shape {tuple(logits.shape)}")
    if labels.shape != (n,):
        raise ValueError(f"labels: expected shape ({n},) of class indices, got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels: expected an integer dtype (class indices), got {labels.dtype}")
    if labels.device != logits.device:
        raise ValueError(f"labels: expected device {logits.device} (same as logits), got {labels.device}")
    if not isinstance(n_bins, int) or isinstance(n_bins, bool) or n_bins < 1:
        raise ValueError(f"n_bins: expected a positive int, got {n_bins!r}")


# ----------------------------------------------------------------------------- calibration


def _confidence_and_correct(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Softmax probabilities (N, C), confidence = max_c p_c (N,), and correctness 0/1 (N,), all float32.

    The prediction is the argmax of the same probabilities the confidence comes from, so a
    sample's confidence and correctness always refer to one predicted class.
    """
    probs = torch.softmax(logits.float(), dim=1)
    conf, pred = probs.max(dim=1)
    correct = (pred == labels).float()
    return probs, conf, correct


def _bin_sums(conf: Tensor, correct: Tensor, n_bins: int) -> Tensor:
    """Per-bin sums over equal-width confidence bins: (n_bins, 3) with columns [count, Σconf, Σcorrect].

    Bin b is (b/n_bins, (b+1)/n_bins]; a confidence of exactly 0 goes to bin 0 (Guo et al. 2017).
    """
    # Interior edges only: bucketize(right=False) returns i with edges[i-1] < x <= edges[i],
    # which is exactly the right-closed bin index, and maps x <= 1/n_bins (including 0) to 0
    # and x > (n_bins-1)/n_bins (including 1) to n_bins-1 without any clamping.
    edges = torch.linspace(0.0, 1.0, n_bins + 1, device=conf.device, dtype=conf.dtype)[1:-1]
    idx = torch.bucketize(conf, edges, right=False)
    # A one-hot matmul instead of index_add_/bincount: deterministic on every device
    # (atomics-based scatters are not, and bincount with weights refuses deterministic mode).
    onehot = F.one_hot(idx, n_bins).to(conf.dtype)  # (N, n_bins)
    values = torch.stack([torch.ones_like(conf), conf, correct], dim=1)  # (N, 3)
    return onehot.T @ values


def _ece_from_sums(sums: Tensor, n: int) -> Tensor:
    """ECE = Σ_b |B_b|/N · |acc(B_b) − conf(B_b)| = Σ_b |Σcorrect_b − Σconf_b| / N (empty bins add 0)."""
    return (sums[:, 2] - sums[:, 1]).abs().sum() / n


def classification_metrics(logits: Tensor, labels: Tensor, *, n_bins: int = 15) -> dict[str, float]:
    """Top-1 accuracy, mean NLL, expected calibration error and multi-class Brier score.

    Shapes: ``logits`` (N, C) any floating dtype, ``labels`` (N,) integer class indices in [0, C).
    With p = softmax(logits) computed in float32:

    - ``acc``   = 1/N Σ_i [argmax_c p_ic = y_i]                          in [0, 1]
    - ``nll``   = −1/N Σ_i log p_{i,y_i}                                 (= F.cross_entropy)
    - ``ece``   = Σ_b |B_b|/N · |acc(B_b) − conf(B_b)|, conf_i = max_c p_ic, ``n_bins``
      equal-width bins (0, 1/n_bins], …, ((n_bins−1)/n_bins, 1]; conf 0 goes to the first bin
    - ``brier`` = 1/N Σ_i Σ_c (p_ic − [c = y_i])²                         in [0, 2]
    - ``aece``  = the same sum over ``n_bins`` *equal-mass* bins instead (adaptive ECE, Nixon et al.
      2019, "Measuring Calibration in Deep Learning": confidence ranges that each hold N/n_bins
      predictions); robust to the pile-up of confidences near 1. The ranges are cut where
      ``numpy.array_split`` cuts the sorted confidences (the first N mod n_bins bins one sample
      larger) and are right-closed, so equal confidences share one bin, the one their run starts
      in (a bin after it may be left empty): the value depends on the (conf, correct) pairs only,
      never on the order of the rows

    One device-to-host transfer at the end.
    """
    _check_classification_inputs(logits, labels, n_bins)
    n = logits.shape[0]
    probs, conf, correct = _confidence_and_correct(logits, labels)
    acc = correct.mean()
    nll = F.cross_entropy(logits.float(), labels.long())
    ece = _ece_from_sums(_bin_sums(conf, correct, n_bins), n)
    aece = _ece_from_sums(_equal_mass_sums(conf, correct, n_bins), n)
    onehot = F.one_hot(labels.long(), probs.shape[1]).to(probs.dtype)
    brier = (probs - onehot).pow(2).sum(dim=1).mean()
    acc_, nll_, ece_, brier_, aece_ = torch.stack([v.double() for v in (acc, nll, ece, brier, aece)]).tolist()
    return {"acc": acc_, "nll": nll_, "ece": ece_, "brier": brier_, "aece": aece_}


def _equal_mass_sums(conf: Tensor, correct: Tensor, n_bins: int) -> Tensor:
    """Per equal-mass bin: (count, Σ conf, Σ correct). A sample's bin is the one ``numpy.array_split`` gives
    the place where its run of equal confidences starts in the sorted confidences: ties never straddle two
    bins. Summed in the order of the (conf, correct) pairs, so that no order of the rows changes a bit."""
    n = conf.shape[0]
    by_correct = torch.sort(correct, stable=True).indices
    order = by_correct[torch.sort(conf[by_correct], stable=True).indices]  # by (conf, correct)
    conf, correct = conf[order], correct[order]
    first = torch.searchsorted(conf, conf)  # where each sample's run of equal confidences starts
    q, r = divmod(n, n_bins)
    big = r * (q + 1)  # the first r bins hold q + 1 places, the rest q
    bins = torch.where(first < big, first // (q + 1), r + (first - big) // max(q, 1))
    stacked = torch.stack([torch.ones_like(conf), conf, correct], 1).double()
    return F.one_hot(bins, n_bins).double().T @ stacked  # deterministic on every device, as _bin_sums


def reliability(logits: Tensor, labels: Tensor, *, n_bins: int = 15) -> dict[str, list[float]]:
    """Per-bin data for a reliability diagram, with the same bins as the ECE of :func:`classification_metrics`.

    Shapes: ``logits`` (N, C), ``labels`` (N,). Returns lists of length ``n_bins``:
    ``confidence`` (mean max-probability in the bin), ``accuracy`` (fraction correct in the bin)
    and ``count`` (number of samples in the bin, as float). Empty bins have NaN confidence and
    accuracy (a mean of nothing) and count 0, so a plot skips them instead of drawing a fake 0.
    """
    _check_classification_inputs(logits, labels, n_bins)
    _, conf, correct = _confidence_and_correct(logits, labels)
    sums = _bin_sums(conf, correct, n_bins)
    count = sums[:, 0]
    # 0/0 -> NaN for empty bins, which is the honest value of an undefined mean.
    mean_conf = sums[:, 1] / count
    mean_acc = sums[:, 2] / count
    c, a, k = torch.stack([mean_conf, mean_acc, count]).tolist()
    return {"confidence": c, "accuracy": a, "count": k}


TEMPERATURE_RANGE = (1e-2, 1e2)  # fitted temperatures are clamped here (a separable set wants T → 0)


def fit_temperature(logits: Tensor, labels: Tensor, *, steps: int = 60) -> float:
    """The temperature T > 0 that minimises the NLL of softmax(logits / T) on (``logits``, ``labels``)
    (Guo et al. 2017: fitted on the validation split, then applied to the test logits).

    With β = 1/T the NLL f(β) = 1/N Σ_i [logsumexp_c(β·z_ic) − β·z_{i,y_i}] is convex, and
    f'(β) = 1/N Σ_i (E_{softmax(βz_i)}[z_i] − z_{i,y_i}) is increasing, so its root is found by
    bisection on log β over ``TEMPERATURE_RANGE``, in float64, to a relative 1e-12 or so. Where
    the root lies outside the range (f' of one sign throughout, e.g. every sample already right
    with a margin), T is the end of the range the NLL decreases towards.
    """
    _check_classification_inputs(logits, labels, 1)
    z = logits.detach().to(torch.float64 if logits.device.type != "mps" else torch.float32)
    zy = z.gather(1, labels.long().view(-1, 1)).squeeze(1)

    def slope(log_beta: float) -> float:
        p = torch.softmax(z * math.exp(log_beta), dim=1)
        return float(((p * z).sum(1) - zy).mean())

    lo, hi = -math.log(TEMPERATURE_RANGE[1]), -math.log(TEMPERATURE_RANGE[0])  # log β bounds
    if slope(lo) >= 0:
        return TEMPERATURE_RANGE[1]
    if slope(hi) <= 0:
        return TEMPERATURE_RANGE[0]
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if slope(mid) < 0 else (lo, mid)
    return math.exp(-0.5 * (lo + hi))


def temperature_scaled(val_logits: Tensor, val_labels: Tensor, logits: Tensor, labels: Tensor, *,
                       n_bins: int = 15) -> dict:
    """Calibration after temperature scaling: T fitted on (``val_logits``, ``val_labels``) by
    :func:`fit_temperature`, then NLL, ECE, Brier and the reliability bins of softmax(``logits`` / T).
    Accuracy is not repeated: dividing by T > 0 keeps every argmax."""
    t = fit_temperature(val_logits, val_labels)
    scaled = logits.float() / t
    m = classification_metrics(scaled, labels, n_bins=n_bins)
    return {"temperature": t, "nll": m["nll"], "ece": m["ece"], "brier": m["brier"],
            "reliability": reliability(scaled, labels, n_bins=n_bins)}


# ----------------------------------------------------------------------------- regression


def _as_column_vector(x: Tensor, name: str) -> Tensor:
    if x.dim() == 2 and x.shape[1] == 1:
        return x[:, 0]
    if x.dim() == 1:
        return x
    raise ValueError(f"{name}: expected shape (N,) or (N, 1), got {tuple(x.shape)}")


def regression_metrics(pred: Tensor, target: Tensor) -> dict[str, float]:
    """Mean squared and mean absolute error of a scalar regression.

    Shapes: ``pred`` and ``target`` each (N,) or (N, 1), N >= 1, same N (any mix of the two forms).
    ``mse`` = 1/N Σ (pred_i − target_i)², ``mae`` = 1/N Σ |pred_i − target_i|, in float32,
    one device-to-host transfer.
    """
    p = _as_column_vector(pred, "pred")
    t = _as_column_vector(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"target: expected {p.shape[0]} values to match pred, got {t.shape[0]}")
    if p.shape[0] == 0:
        raise ValueError("pred: expected N >= 1 values, got 0")
    if p.device != t.device:
        raise ValueError(f"target: expected device {p.device} (same as pred), got {t.device}")
    err = p.float() - t.float()
    mse, mae = torch.stack([err.pow(2).mean(), err.abs().mean()]).tolist()
    return {"mse": mse, "mae": mae}


# ----------------------------------------------------------------------------- accumulation


class Accumulator:
    """Running means of named quantities, summed on the device, read to the host once.

    ``add(name, value, count)`` takes either a scalar that is the mean of ``count`` items
    (``count`` defaults to 1; e.g. a batch's mean loss with ``count=batch_size``) or a tensor of
    per-item values (``count`` must then be omitted and is the number of elements). It only
    queues device ops, so a training loop never waits on the device. :meth:`mean` returns
    ``{name: Σ value·count / Σ count}`` with a single transfer for all names (NaN for a
    total count of 0).

    Python numbers (a value or a count) stay on the host and enter device arithmetic as
    scalar arguments: turning them into device tensors would be a blocking host-to-device
    copy per batch. Device sums are float64 where the device supports it (float32 on MPS) so
    that an epoch of small per-batch terms does not lose digits. All tensors of one
    accumulator must be on one device.
    """

    def __init__(self) -> None:
        self._sums: dict[str, Tensor | float] = {}
        self._counts: dict[str, Tensor | float] = {}
        self._device: torch.device | None = None

    def _to_device_float(self, name: str, t: Tensor) -> Tensor:
        if self._device is None:
            self._device = t.device
        elif t.device != self._device:
            raise ValueError(f"{name}: expected a tensor on {self._device} (this accumulator's device), got {t.device}")
        dtype = torch.float32 if t.device.type == "mps" else torch.float64
        return t.detach().to(dtype)

    def add(self, name: str, value: Tensor | float, count: Tensor | float | None = None) -> None:
        """Add ``value`` (scalar mean of ``count`` items, or per-item tensor) to the running sum of ``name``."""
        total: Tensor | float
        n: Tensor | float
        if isinstance(value, Tensor) and value.numel() != 1:
            if value.numel() == 0:
                raise ValueError(f"{name}: expected a non-empty tensor, got shape {tuple(value.shape)}")
            if count is not None:
                raise ValueError(
                    f"{name}: a per-item tensor ({value.numel()} values) carries its own count; "
                    f"expected count=None, got {count!r}"
                )
            total = self._to_device_float(name, value).sum()
            n = float(value.numel())
        else:
            v: Tensor | float
            v = self._to_device_float(name, value).reshape(()) if isinstance(value, Tensor) else float(value)
            if count is None:
                n = 1.0
            elif isinstance(count, Tensor):
                if count.numel() != 1:
                    raise ValueError(f"{name}: expected a scalar count, got shape {tuple(count.shape)}")
                n = self._to_device_float(name, count).reshape(())
            else:
                n = float(count)
            total = v * n
        if name in self._sums:
            self._sums[name] = self._sums[name] + total
            self._counts[name] = self._counts[name] + n
        else:
            self._sums[name] = total
            self._counts[name] = n

    def mean(self) -> dict[str, float]:
        """``{name: Σ value·count / Σ count}`` for every name added, in (at most) one host transfer."""
        out: dict[str, float] = {}
        on_device: dict[str, Tensor] = {}
        for name, s in self._sums.items():
            c = self._counts[name]
            if isinstance(s, Tensor) or isinstance(c, Tensor):
                on_device[name] = s / c  # 0/0 -> NaN on the device: a mean over nothing
            else:
                out[name] = s / c if c != 0 else math.nan
        if on_device:
            values = torch.stack(list(on_device.values())).tolist()
            out.update(zip(on_device, values, strict=True))
        # Report in insertion order regardless of where each sum lived.
        return {name: out[name] for name in self._sums}

    def reset(self) -> None:
        """Forget all sums (e.g. at the start of an epoch); the device is chosen again by the next add."""
        self._sums.clear()
        self._counts.clear()
        self._device = None

    def __contains__(self, name: object) -> bool:
        return name in self._sums

    def __len__(self) -> int:
        return len(self._sums)


# ----------------------------------------------------------------------------- λ statistics


def _hist(x: Tensor, edges: Tensor) -> Tensor:
    """Counts of ``x`` in the bins between ``edges`` (float, on the device), np.histogram's convention:
    each bin [lo, hi) except the last, [lo, hi]; values outside [edges[0], edges[-1]] are not counted."""
    bins = edges.numel() - 1
    # bucketize(right=True) gives i with edges[i-1] <= x < edges[i]; x == edges[-1] lands past the
    # end and is folded into the last bin, which is closed on the right.
    idx = (torch.bucketize(x, edges, right=True) - 1).clamp(0, bins - 1)
    inside = ((x >= edges[0]) & (x <= edges[-1])).to(x.dtype)
    return F.one_hot(idx, bins).to(x.dtype).T @ inside


def lam_stats(lam: Tensor, *, bins: int = 20) -> dict[str, float | list[int]]:
    """Summary of mixing coefficients λ (e.g. all λ drawn in an epoch, concatenated).

    ``lam``: any shape with >= 1 element (flattened). Returns ``lam_mean``, ``lam_std``
    (population std, ddof = 0, like ``np.std``), ``lam_min``, ``lam_max`` as floats and
    ``lam_hist``: counts in ``bins`` equal-width bins over [0, 1], each [lo, hi) except the
    last, which is [lo, 1] — the convention of ``np.histogram(lam, bins, range=(0, 1))``;
    values outside [0, 1] are not counted (but show in min/max).

    The mixing strength s = min(λ, 1 − λ): under a symmetric pairing λ and 1 − λ make the same
    blends, so s is what a policy controls (0 = no mixing, ½ = an even blend; Beta(1, 1) gives
    E[s] = ¼). ``lam_strength`` and ``lam_strength_std`` are its mean and population std, and
    ``lam_strength_hist`` its counts in ``bins`` bins over [0, ½] with the same convention
    (``np.histogram(s, bins, range=(0, 0.5))``). One host transfer for everything.
    """
    if not isinstance(bins, int) or isinstance(bins, bool) or bins < 1:
        raise ValueError(f"bins: expected a positive int, got {bins!r}")
    if not isinstance(lam, Tensor):
        raise ValueError(f"lam: expected a Tensor, got {type(lam).__name__}")
    if lam.numel() == 0:
        raise ValueError(f"lam: expected at least one value, got shape {tuple(lam.shape)}")
    dtype = torch.float32 if lam.device.type == "mps" else torch.float64
    x = lam.detach().reshape(-1).to(dtype)
    s = torch.minimum(x, 1 - x)
    edges = torch.linspace(0.0, 1.0, bins + 1, device=x.device, dtype=dtype)
    stats = torch.stack([x.mean(), x.std(correction=0), x.min(), x.max(), s.mean(), s.std(correction=0)])
    # edges / 2 is exact: the strength bins are the λ bins halved, as np.histogram(range=(0, 0.5)) makes them
    flat = torch.cat([stats, _hist(x, edges), _hist(s, edges / 2)]).tolist()
    mean, std, lo, hi, s_mean, s_std = flat[:6]
    return {
        "lam_mean": mean,
        "lam_std": std,
        "lam_min": lo,
        "lam_max": hi,
        "lam_hist": [int(round(v)) for v in flat[6:6 + bins]],
        "lam_strength": s_mean,
        "lam_strength_std": s_std,
        "lam_strength_hist": [int(round(v)) for v in flat[6 + bins:]],
    }


# ----------------------------------------------------------------------------- reporting


def median_last(values: Sequence[float], k: int = 10) -> float:
    """Median of the last ``k`` values (all of them if fewer than ``k``).

    OpenMixup's reporting protocol: the median of the last 10 epochs' test accuracy, which is
    less noisy than the final epoch and not optimistically selected like the best epoch.
    An even number of values gives the mean of the two middle ones.
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k: expected a positive int, got {k!r}")
    if len(values) == 0:
        raise ValueError("values: expected at least one value, got an empty sequence")
    tail = [float(v) for v in list(values)[-k:]]
    if any(math.isnan(v) for v in tail):
        # statistics.median sorts, and NaN breaks sorting silently; a NaN result is honest.
        return math.nan
    return float(statistics.median(tail))


def detection_metrics(detections: list[dict[str, Tensor]], y: Tensor) -> dict:
    """COCO-style box AP of ``detections`` (torchvision's per-image dicts) against padded targets
    ``y`` (N, K, 5) ``(x0, y0, x1, y1, label)`` (label -1: padding), by torchmetrics'
    ``MeanAveragePrecision`` (pycocotools backend): ``map`` (AP@[.5:.95]), ``map50``, ``map75`` and
    ``map_per_class`` (AP@[.5:.95] per class id, -1 for a class absent from the targets)."""
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=True)
    targets = []
    for rows in y:
        keep = rows[:, 4] >= 0
        targets.append({"boxes": rows[keep, :4].float().cpu(), "labels": rows[keep, 4].long().cpu()})
    metric.update([{k: d[k].detach().float().cpu() if k != "labels" else d[k].cpu() for k in ("boxes", "scores", "labels")}
                   for d in detections], targets)
    r = metric.compute()
    per_class = {int(c): float(v) for c, v in zip(r["classes"].reshape(-1).tolist(), r["map_per_class"].reshape(-1).tolist())}
    num_classes = int(y[..., 4].max().item()) + 1 if y.numel() else 0
    return {"map": float(r["map"]), "map50": float(r["map_50"]), "map75": float(r["map_75"]),
            "map_per_class": [per_class.get(c, -1.0) for c in range(num_classes)]}


def ood_metrics(logits_in: Tensor, logits_out: Tensor) -> dict[str, float]:
    """Out-of-distribution detection by the maximum softmax probability (Hendrycks & Gimpel 2017), the
    in-distribution inputs the positives: ``auroc`` (torchmetrics' binary AUROC; ties count ½) and
    ``fpr95``, the share of OOD inputs scored at or above the highest threshold that keeps 95% of the
    in-distribution ones (the false-positive rate at 95% true-positive rate, read off the ROC curve)."""
    from torchmetrics.functional.classification import binary_auroc, binary_roc

    msp = torch.cat([logits_in.float().softmax(1).amax(1), logits_out.float().softmax(1).amax(1)]).cpu()
    target = torch.cat([torch.ones(logits_in.shape[0]), torch.zeros(logits_out.shape[0])]).long()
    fpr, tpr, _ = binary_roc(msp, target)
    at = int(torch.searchsorted(tpr.contiguous(), torch.tensor(0.95)))
    return {"auroc": float(binary_auroc(msp, target)), "fpr95": float(fpr[min(at, fpr.numel() - 1)])}
