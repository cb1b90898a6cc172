"""What every data set shares: the ``Dataset`` on the training device, ``load_dataset`` (validation
split, subset, normalisation), batching, splits, and the one-line file errors. The package's
docstring (``mixlab.data``) says why there is no ``DataLoader``; the loaders live in one module per
modality beside this one.
"""
from __future__ import annotations

import hashlib
import http.client
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..engine.registry import Registry
from .provenance import source_package

RawData = tuple[Tensor, Tensor, Tensor, Tensor, int, str]

DATASETS: Registry[RawData] = Registry("data")

TASKS = ("classification", "regression")

# Rows per float64 chunk when computing normalisation statistics (bounds the temporary copy).
_STATS_CHUNK = 4096

# Where downloads go when no data.root is given. A module attribute (not a constant folded
# into the functions) so tests can point it at an empty directory.
DEFAULT_ROOT: Path = Path("~/.cache/mixlab").expanduser()

# Fixed seed of the train/test splits of digits and diabetes and of the moons sample:
# the split is part of the data set's definition, so it must not move with the run seed.
SPLIT_SEED = 0


# --------------------------------------------------------------------------- the data set


@dataclass
class Dataset:
    """A normalised train/test pair, all tensors on one device.

    Shapes: ``x_*`` is (N, C, H, W) for images and (N, D) for tabular data, float32, normalised
    with the per-channel (images) or per-feature (tabular) ``mean``/``std`` of the train split.
    ``y_*`` is (N,) int64 class ids for classification, (N,) float32 standardised targets for
    regression (``y_mean``/``y_std`` undo that).
    """

    name: str
    task: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # Regression targets are standardised; these undo it (identity for classification).
    y_mean: float = 0.0
    y_std: float = 1.0
    # The validation split, held out of the training set (empty with val_size=0).
    x_val: Tensor | None = None
    y_val: Tensor | None = None
    # Text: inputs are token ids (N, L) int64, 0 = padding, ids below vocab_size (None: not text).
    vocab_size: int | None = None
    vocab: tuple[str, ...] | None = None  # text: the word of each id (0 "<pad>", 1 "<unk>")
    classes: tuple[str, ...] | None = None  # class names, where the data set has them
    # What the run saw, split by split: a hash of each split's inputs and targets (``fingerprint``)
    fingerprints: dict[str, str | None] | None = None
    # The Debian package its files came from, {"name", "version"} (``provenance.debian_package``); None: none known
    package: dict[str, object] | None = None

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.x_test.shape[0])

    @property
    def n_val(self) -> int:
        return 0 if self.x_val is None else int(self.x_val.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, without the batch dimension: (C, H, W) or (D,)."""
        return tuple(int(s) for s in self.x_train.shape[1:])

    @property
    def is_image(self) -> bool:
        return self.x_train.dim() == 4

    @property
    def is_text(self) -> bool:
        return self.vocab_size is not None

    def _channel_stats(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """``mean`` and ``std`` as (1, C, 1, 1) float32 tensors on ``device``."""
        return tuple(torch.tensor(v, dtype=torch.float32, device=device).view(1, -1, 1, 1) for v in (self.mean, self.std))

    def normalise(self, x: Tensor) -> Tensor:
        """Images in [0, 1], (N, C, H, W), as this data set's inputs: (x − mean) / std per channel."""
        mean, std = self._channel_stats(x.device)
        return (x.float() - mean) / std

    def unnormalise(self, x: Tensor) -> Tensor:
        """This data set's image inputs back in [0, 1] (clamped), (N, C, H, W)."""
        mean, std = self._channel_stats(x.device)
        return (x.float() * std + mean).clamp(0, 1)

    def require_image_classifier(self, setting: str, expected: str) -> None:
        """ValueError naming ``setting`` unless this is image classification (what an evaluation on
        corrupted images or an image OOD set needs)."""
        if not self.is_image or self.task != "classification":
            what = "text" if self.is_text else self.task if self.task != "classification" else "not images"
            raise ValueError(f"{setting}: needs an image classifier's data, but data={self.name} is {what}; "
                             f"expected {expected}")

    def summary(self) -> dict:
        return {
            "name": self.name,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "n_test": self.n_test,
            "num_classes": self.num_classes,
            "task": self.task,
            "fingerprint": self.fingerprints or {
                split: fingerprint(x, y) for split, x, y in (("train", self.x_train, self.y_train),
                                                             ("val", self.x_val, self.y_val),
                                                             ("test", self.x_test, self.y_test))},
            **({"package": self.package} if self.package is not None else {}),
        }


def fingerprint(x: Tensor | None, y: Tensor | None) -> str | None:
    """A split's fingerprint: the first 16 hex digits of SHA-256 over its inputs' and targets' shapes,
    dtypes and bytes, in order (None for an absent split). Two runs saw the same examples in the same
    order exactly when their fingerprints agree; ``load_dataset`` takes it of the loader's raw arrays
    (before normalisation, so a CPU and a GPU run of one data set agree); a loader that prepares its own
    ``Dataset`` (text, scenes, COCO) gets it of the tensors it made."""
    if x is None or y is None:
        return None
    h = hashlib.sha256()
    for t in (x, y):
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)}{t.dtype};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def load_dataset(
    name: str,
    *,
    root: str | None = None,
    train_subset: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    download: bool = True,
    val_size: int = 0,
    split_seed: int = SPLIT_SEED,
    **options: Any,
) -> Dataset:
    """Load the registered data set ``name``, normalised and on ``device``.

    ``val_size=V`` holds V examples of the training split out as the validation split:
    stratified by class (random for regression), drawn with ``split_seed`` so that every run,
    whatever its seed, is selected on the same examples; never taken from the test split.
    ``train_subset=N`` then keeps N of the remaining training examples, class-balanced (as
    equal a count per class as the pool allows; random for regression), drawn with ``seed``
    (None keeps all). Normalisation statistics come from the kept training examples only, so
    nothing about the validation or test split, or the dropped examples, leaks into the inputs.

    A loader with ``prepares_dataset = True`` (text: splits by chapter, a vocabulary from the
    training split) makes the ``Dataset`` itself from all of these and its own ``options``
    (``data.seq_len``, ...); the others return raw tensors and take no options.
    """
    loader = DATASETS.get(name)
    _check_subset(train_subset)
    if getattr(loader, "prepares_dataset", False):
        ds = loader(root=root, download=download, train_subset=train_subset, seed=seed, device=device,
                    val_size=val_size, split_seed=split_seed, **options)
        ds.package = source_package(loader, root)
        return ds
    if options:
        raise ValueError(f"data.{next(iter(options))}={next(iter(options.values()))!r}: data={name!r} has no such "
                         "option; expected it only with a data set that reads it (text: seq_len, vocab_size)")
    for key, value in (("data.seed", seed), ("data.split_seed", split_seed), ("data.val_size", val_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{key}={value!r}: expected an integer >= 0")
    device = torch.device(device)

    x_train, y_train, x_test, y_test, num_classes, task = _as_tensors(name, loader(root=root, download=download))
    _check_raw(name, x_train, y_train, x_test, y_test, num_classes, task)
    classification = task == "classification"

    n = x_train.shape[0]
    if val_size >= n:
        raise ValueError(f"data.val_size={val_size}: not smaller than the {n} training examples of {name!r}; "
                         f"expected an integer in 0..{n - 1}")
    x_val = y_val = None
    if val_size:
        split = torch.Generator().manual_seed(split_seed)
        if classification:
            pool, held = stratified_split(y_train, n_test=val_size, generator=split)
        else:
            perm = torch.randperm(n, generator=split)
            pool, held = perm[val_size:].sort().values, perm[:val_size].sort().values
        x_val, y_val, x_train, y_train = x_train[held], y_train[held], x_train[pool], y_train[pool]

    if train_subset is not None:
        n = x_train.shape[0]
        if train_subset > n:
            raise ValueError(
                f"data.train_subset={train_subset}: larger than the {n} training examples of "
                f"{name!r} left after data.val_size={val_size}; expected null or an integer in 1..{n}"
            )
        g = torch.Generator().manual_seed(seed)
        keep = balanced_subset(y_train, train_subset, generator=g) if classification else \
            torch.randperm(n, generator=g)[:train_subset]
        x_train, y_train = x_train[keep], y_train[keep]

    fingerprints = {"train": fingerprint(x_train, y_train), "val": fingerprint(x_val, y_val),
                    "test": fingerprint(x_test, y_test)}
    # Move before normalising: the arithmetic is then done where it is cheapest.
    x_train = x_train.to(device=device, dtype=torch.float32)
    x_test = x_test.to(device=device, dtype=torch.float32)
    mean, std = _input_stats(x_train)
    shape = (1, -1) + (1,) * (x_train.dim() - 2)  # broadcast over channels (or features)

    def inputs(x: Tensor) -> Tensor:
        return (x.to(device=device, dtype=torch.float32) - mean.view(shape)) / std.view(shape)

    x_train, x_test = inputs(x_train), inputs(x_test)
    x_val = None if x_val is None else inputs(x_val).contiguous()

    y_mean, y_std = 0.0, 1.0
    if task == "regression":
        y_mean = float(y_train.double().mean())
        y_std = _safe_std(float(y_train.double().std(correction=0)))

    def targets(y: Tensor) -> Tensor:
        if task == "regression":
            return ((y.to(device=device, dtype=torch.float32) - y_mean) / y_std).contiguous()
        return y.to(device=device, dtype=torch.int64).contiguous()

    y_train, y_test = targets(y_train), targets(y_test)
    y_val = None if y_val is None else targets(y_val)

    return Dataset(
        name=name,
        task=task,
        x_train=x_train.contiguous(),
        y_train=y_train.contiguous(),
        x_test=x_test.contiguous(),
        y_test=y_test.contiguous(),
        num_classes=int(num_classes),
        mean=tuple(float(m) for m in mean.tolist()),
        std=tuple(float(s) for s in std.tolist()),
        y_mean=y_mean,
        y_std=y_std,
        x_val=x_val,
        y_val=y_val,
        fingerprints=fingerprints,
        package=source_package(loader, root),
    )


def dataset_from_config(data: Mapping[str, Any], *, seed: int, device: str | torch.device = "cpu") -> Dataset:
    """The data set a run with this ``data`` config node and run ``seed`` trained on, exactly (the
    training loop and the report's figures both build it here, so they cannot drift apart)."""
    split_seed = data.get("split_seed", SPLIT_SEED)
    options = {k: data[k] for k in data if k not in COMMON_KEYS}
    return load_dataset(data["name"], root=data.get("root"), train_subset=data.get("train_subset"),
                        seed=seed if data.get("subset_per_seed", False) else split_seed,
                        val_size=data.get("val_size", 0), split_seed=split_seed, device=device,
                        download=data.get("download", False), **options)


# The data config keys every data set has (the loop's and load_dataset's); any other is the data set's own.
def check_int(key: str, value: object, low: int, high: int | None = None) -> int:
    """``value`` if it is an integer in ``low``.. (``high``), else ValueError naming ``key``, the value and the range."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        allowed = f"an integer >= {low}" if high is None else f"an integer in {low}..{high}"
        raise ValueError(f"{key}={value!r}: expected {allowed}")
    return value


COMMON_KEYS = ("name", "root", "download", "batch_size", "train_subset", "val_size", "split_seed", "subset_per_seed",
               "crop_padding", "hflip")


def _check_subset(train_subset: int | None) -> None:
    # bool is an int subclass; `train_subset=true` is a config mistake, not "1 example".
    if train_subset is None:
        return
    if isinstance(train_subset, bool) or not isinstance(train_subset, int) or train_subset < 1:
        raise ValueError(f"data.train_subset={train_subset!r}: expected null or an integer >= 1")


def _as_tensors(name: str, out: object) -> tuple:
    """A loader's ``(x_train, y_train, x_test, y_test, num_classes, task)`` with numpy arrays (what
    scikit-learn returns) as tensors; anything else is one line naming the loader and what it returned."""
    want = "a tuple (x_train, y_train, x_test, y_test, num_classes, task)"
    if not isinstance(out, (tuple, list)) or len(out) != 6:
        got = f"a {type(out).__name__} of {len(out)}" if isinstance(out, (tuple, list)) else f"a {type(out).__name__}"
        raise ValueError(f"data loader {name!r} returned {got}; expected {want}")
    *arrays, num_classes, task = out
    tensors = []
    for label, a in zip(("x_train", "y_train", "x_test", "y_test"), arrays):
        if isinstance(a, np.ndarray):
            try:
                a = torch.from_numpy(np.ascontiguousarray(a))
            except TypeError:
                raise ValueError(f"data loader {name!r} returned {label} as a numpy array of dtype {a.dtype}; "
                                 "expected numbers (a numeric numpy array or a torch tensor)") from None
        elif not isinstance(a, Tensor):
            raise ValueError(f"data loader {name!r} returned {label} as a {type(a).__name__}; expected a numpy "
                             "array or a torch tensor")
        tensors.append(a)
    if isinstance(num_classes, np.integer):
        num_classes = int(num_classes)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"data loader {name!r} returned num_classes={num_classes!r}; expected an integer >= 0 "
                         "(0 for regression)")
    return (*tensors, num_classes, task)


def _check_raw(
    name: str, x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, num_classes: int, task: str
) -> None:
    """Catch a loader that breaks the contract here, not as a shape error deep in training."""
    if task not in TASKS:
        raise ValueError(f"data loader {name!r} returned task={task!r}; expected one of {list(TASKS)}")
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if x.dim() not in (2, 4) or y.dim() != 1 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"data loader {name!r}: {split} split has x of shape {tuple(x.shape)} and y of shape "
                f"{tuple(y.shape)}; expected x (N,D) or (N,C,H,W) and y (N,) with the same N"
            )
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(
            f"data loader {name!r}: train inputs {tuple(x_train.shape[1:])} and test inputs "
            f"{tuple(x_test.shape[1:])} differ in shape"
        )
    if task == "classification":
        for split, y in (("train", y_train), ("test", y_test)):
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
                raise ValueError(
                    f"data loader {name!r}: {split} labels span {int(y.min())}..{int(y.max())}; "
                    f"expected 0..{num_classes - 1}"
                )


def _safe_std(std: float) -> float:
    # A constant feature would otherwise turn into NaNs; leaving it unscaled keeps it at 0.
    return std if std > 0.0 else 1.0


def _input_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel (N,C,H,W) or per-feature (N,D) mean and population std, each shape (C,)/(D,)."""
    dims = (0,) if x.dim() == 2 else (0, 2, 3)
    count = x.numel() // x.shape[1]
    # float64 so a 150M-element reduction keeps its low digits, but in row chunks so CIFAR does
    # not need a 1.2 GB float64 copy; two passes (mean, then squared deviations) for stability.
    chunks = x.split(_STATS_CHUNK)
    mean = sum(c.double().sum(dim=dims) for c in chunks) / count
    shape = (1, -1) + (1,) * (x.dim() - 2)
    var = sum((c.double() - mean.view(shape)).square().sum(dim=dims) for c in chunks) / count
    std = var.sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))
    return mean.float(), std.float()


# --------------------------------------------------------------------------- batches


class Batches:
    """Iterates over the training split in shuffled mini-batches, all on the data's device.

    Yields ``(x, y, index)``: ``x`` (B, *input_shape), ``y`` (B,), ``index`` the int64 (B,)
    positions in ``ds.x_train`` of the batch's samples. Every epoch (each ``iter``) draws a new
    permutation from ``generator``, so the same generator state gives identical batches.

    Augmentation (image data only): a random crop of the zero-padded image (``crop_padding``
    pixels each side, an independent offset per sample) and, with ``hflip``, a horizontal
    flip of each sample with probability 0.5. The last batch may be smaller unless
    ``drop_last``.

    Several processes (``world_size`` > 1, this one being ``rank``): ``batch_size`` is the
    global batch, and each process gets its contiguous ``batch_size // world_size`` rows of it
    (``batch_size`` must divide evenly). Every process must pass a generator in the same state:
    all draw the same permutation and the augmentation of the whole global batch, so they stay
    in step and their batches are disjoint. The permutation is padded by wrapping around to a
    multiple of ``world_size`` (as ``DistributedSampler`` does), so every process gets the same
    number of rows at each step, the short last batch included.
    """

    def __init__(
        self,
        ds: Dataset,
        *,
        batch_size: int,
        generator: torch.Generator,
        crop_padding: int = 0,
        hflip: bool = False,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        _check_batch_size(batch_size)
        if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
            raise ValueError(f"rank={rank!r}, world_size={world_size!r}: expected 0 <= rank < world_size")
        if batch_size % world_size:
            raise ValueError(f"batch_size={batch_size}: expected a multiple of the {world_size} processes "
                             "(it is the global batch, split evenly between them)")
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"generator={generator!r}: expected a torch.Generator")
        if isinstance(crop_padding, bool) or not isinstance(crop_padding, int) or crop_padding < 0:
            raise ValueError(f"crop_padding={crop_padding!r}: expected an integer >= 0")
        if not isinstance(hflip, bool):
            raise ValueError(f"hflip={hflip!r}: expected true or false")
        if ds.x_train.dim() == 4 and crop_padding > min(ds.input_shape[1:]):
            side = min(ds.input_shape[1:])  # a wider pad only crops more of the padding itself
            raise ValueError(f"crop_padding={crop_padding}: expected an integer in 0..{side} "
                             f"(at most the {ds.input_shape[1]}x{ds.input_shape[2]} image's side)")
        if ds.x_train.dim() != 4 and (crop_padding or hflip):
            raise ValueError(
                f"crop_padding={crop_padding}, hflip={hflip}: augmentation needs image inputs "
                f"(N,C,H,W), but {ds.name!r} has inputs of shape {ds.input_shape}; "
                "expected crop_padding=0 and hflip=false"
            )
        self.ds = ds
        self.batch_size = batch_size
        self.generator = generator
        self.crop_padding = crop_padding
        self.hflip = hflip
        self.drop_last = drop_last
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        n = self.ds.n_train
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        x_all, y_all = self.ds.x_train, self.ds.y_train
        device = x_all.device
        n, bs = self.ds.n_train, self.batch_size
        # Draw on the generator's device (a CPU generator cannot sample CUDA tensors), then move.
        order = torch.randperm(n, generator=self.generator, device=self.generator.device).to(device)
        w = self.world_size
        if w > 1 and not self.drop_last and n % w:
            order = torch.cat([order, order.repeat(w)[: w - n % w]])  # wrap around: equal shares
        for b in range(len(self)):
            index = order[b * bs : (b + 1) * bs]
            mine = slice(self.rank * len(index) // w, (self.rank + 1) * len(index) // w)
            x = x_all[index[mine]]
            if self.crop_padding or self.hflip:
                x = self._augment(x, len(index), mine)
            yield x, y_all[index[mine]], index[mine]

    def _augment(self, x: Tensor, total: int, mine: slice) -> Tensor:
        # Draws for the whole global batch (``total`` rows), of which this process uses its own:
        # the shared generator stays in step across processes.
        g, p = self.generator, self.crop_padding
        offsets = torch.randint(0, 2 * p + 1, (total, 2), generator=g, device=g.device)[mine].to(x.device)
        if self.hflip:
            flip = (torch.rand(total, generator=g, device=g.device)[mine] < 0.5).to(x.device)
        else:
            flip = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        return crop_and_flip(x, offsets=offsets, flip=flip, padding=p)


def crop_and_flip(x: Tensor, *, offsets: Tensor, flip: Tensor, padding: int) -> Tensor:
    """Per-sample crop of the zero-padded batch, then per-sample horizontal flip, in one gather.

    ``x`` (B, C, H, W); ``offsets`` (B, 2) int, the (row, col) of each crop's top-left corner in
    the padded image, each in 0..2*padding (``padding`` means no shift); ``flip`` (B,) bool.
    Returns (B, C, H, W) with ``out[b, :, i, j] = x[b, :, i + dy, j + dx]`` (zero outside),
    where ``(dy, dx) = offsets[b] - padding``, mirrored left-right where ``flip[b]``.
    """
    B, C, H, W = x.shape
    Wp = W + 2 * padding
    padded = F.pad(x, (padding, padding, padding, padding)) if padding else x
    rows = offsets[:, 0:1] + torch.arange(H, device=x.device)  # (B, H)
    cols = torch.arange(W, device=x.device).expand(B, W)
    # Flipping after the crop is reading the crop's columns right to left: fold it into the
    # gather instead of a second pass over the batch.
    cols = torch.where(flip[:, None], (W - 1) - cols, cols) + offsets[:, 1:2]  # (B, W)
    flat = (rows[:, :, None] * Wp + cols[:, None, :]).view(B, 1, H * W).expand(B, C, H * W)
    return padded.flatten(2).gather(2, flat).view(B, C, H, W)


def eval_batches(x: Tensor, y: Tensor, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Sequential (x[i:i+bs], y[i:i+bs]) slices, no shuffle and no augmentation; last may be short."""
    _check_batch_size(batch_size)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"eval_batches: x has {x.shape[0]} rows but y has {y.shape[0]}")
    for start in range(0, x.shape[0], batch_size):
        yield x[start : start + batch_size], y[start : start + batch_size]


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: expected an integer >= 1")


# --------------------------------------------------------------------------- file errors


class DataFileError(ValueError):
    """A data set file that is unreadable or not what its format says. The message is one line
    that starts with the file's path and says what is wrong with it."""


class DataNotFoundError(FileNotFoundError, DataFileError):
    """A data set (or one of its files) is not where it was looked for. Both a FileNotFoundError and,
    like every bad-data error here, a ValueError: the CLI reports it as one line, not a traceback."""


# What a failed download raises: no network is a URLError (an OSError), a dropped connection an
# OSError or an http.client.HTTPException, torchvision's own checks (md5 after the download, every
# mirror failed, too many redirects) a RuntimeError.
_DOWNLOAD_ERRORS = (OSError, RuntimeError, http.client.HTTPException)


def read_nonempty(path: Path, expected: str) -> bytes:
    """The bytes of the file at ``path``; unreadable or empty is a one-line ``DataFileError`` naming it
    and saying what was ``expected`` there."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataFileError(f"{path}: cannot be read ({type(e).__name__}: {e.strerror or e})") from None
    if not raw:
        raise DataFileError(f"{path}: empty file (0 bytes); expected {expected}")
    return raw


def _one_line(e: BaseException, limit: int = 300) -> str:
    """``Type: message`` on one line (torchvision's messages span several), at most ``limit`` characters."""
    text = f"{type(e).__name__}: {' '.join(str(e).split())}".rstrip(": ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _try_download(what: str, fetch: Callable[[], object]) -> str | None:
    """Run ``fetch``; None when it worked, else one line saying why ``what`` could not be downloaded."""
    try:
        fetch()
    except _DOWNLOAD_ERRORS as e:
        return f"downloading {what} failed ({_one_line(e)})"
    return None


def _root_text(root: str | None) -> str:
    """How the message names the directory searched: the ``data.root`` key and its value."""
    return f"data.root={root}" if root is not None else f"data.root=null, so {DEFAULT_ROOT}"


# --------------------------------------------------------------------------- bundled / synthetic


def stratified_split(y: Tensor, *, n_test: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Split positions 0..N-1 into sorted (train, test) index tensors with ``n_test`` test items.

    Each class gets its proportional share of the test set (largest remainder rounding, ties
    to the smaller class id), drawn at random within the class.
    """
    n = y.shape[0]
    classes, counts = torch.unique(y, return_counts=True)
    quota = counts.double() * n_test / n
    share = quota.floor().long()
    left = n_test - int(share.sum())
    # stable sort: equal remainders are served in class order, so the split is deterministic.
    order = torch.sort(quota - share, descending=True, stable=True).indices
    share[order[:left]] += 1
    test_parts = []
    for c, k in zip(classes.tolist(), share.tolist()):
        members = (y == c).nonzero().flatten()
        test_parts.append(members[torch.randperm(members.numel(), generator=generator)[:k]])
    is_test = torch.zeros(n, dtype=torch.bool)
    is_test[torch.cat(test_parts)] = True
    return (~is_test).nonzero().flatten(), is_test.nonzero().flatten()


def balanced_subset(y: Tensor, n: int, *, generator: torch.Generator) -> Tensor:
    """``n`` sorted positions of ``y``, as equal a count per class as the classes allow.

    Water-filling: every class gets ⌊n / C⌋ (a class with fewer members gives all it has, and
    the shortfall is shared out again); the last few go to classes in a seeded random order.
    Members are drawn at random within each class.
    """
    classes, counts = torch.unique(y, return_counts=True)
    take = torch.zeros_like(counts)
    left = n
    while left > 0:
        room = counts - take
        open_ = (room > 0).nonzero().flatten()
        each = left // open_.numel()
        if each == 0:  # fewer left than open classes: one more each for a random few
            lucky = open_[torch.randperm(open_.numel(), generator=generator)[:left]]
            take[lucky] += 1
            break
        add = torch.minimum(room[open_], torch.tensor(each))
        take[open_] += add
        left -= int(add.sum())
    parts = [(y == c).nonzero().flatten() for c in classes.tolist()]
    picked = [m[torch.randperm(m.numel(), generator=generator)[:k]] for m, k in zip(parts, take.tolist())]
    return torch.cat(picked).sort().values
