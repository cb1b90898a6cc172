"""Image data sets: Fashion-MNIST (idx files: Debian's package, a folder of your own, or a download)
and CIFAR-10/100 (the published pickled batches, read by an unpickler that only rebuilds arrays).

Each loader returns raw uint8-range CPU tensors (N, C, H, W); ``base.load_dataset`` does the rest.
"""
from __future__ import annotations

import gzip
import io
import math
import pickle
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from . import base
from .base import (DATASETS, SPLIT_SEED, DataFileError, DataNotFoundError, RawData, _one_line, _root_text, _try_download,
                   read_nonempty)
from .provenance import Source

# Debian's `dataset-fashion-mnist` package installs the four gzipped idx files here.
DEBIAN_FASHION_MNIST_DIR: Path = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


# --------------------------------------------------------------------------- idx files

# idx type byte -> big-endian numpy dtype (the format stores everything most significant first).
_IDX_DTYPES: dict[int, str] = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path, *, expected_magic: int | None = None) -> np.ndarray:
    """Parse an idx file (plain or ``.gz``) into an array of the shape its header declares.

    The magic number is two zero bytes, a type byte and the number of dimensions; then one
    big-endian uint32 per dimension, then the data. Any mismatch (empty file, unknown type, wrong
    ``expected_magic``, truncated or over-long data, broken gzip) is a :class:`DataFileError`
    (a ValueError) naming ``path``.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if not raw:
        what = "empty file" if path.suffix != ".gz" or path.stat().st_size == 0 else "empty after gunzip"
        raise DataFileError(f"{path}: {what} (0 bytes); expected an idx file")
    if len(raw) < 4:
        raise DataFileError(f"{path}: truncated: {len(raw)} bytes, too short for the 4-byte idx magic number")
    (magic,) = struct.unpack(">I", raw[:4])
    if expected_magic is not None and magic != expected_magic:
        raise DataFileError(f"{path}: bad magic number 0x{magic:08x}; expected 0x{expected_magic:08x}")
    zero, type_code, ndim = magic >> 16, (magic >> 8) & 0xFF, magic & 0xFF
    if zero != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise DataFileError(
            f"{path}: bad magic number 0x{magic:08x}; expected 0x0000TTDD with type TT in "
            f"{[hex(t) for t in _IDX_DTYPES]} and DD >= 1 dimensions"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataFileError(
            f"{path}: truncated: header declares {ndim} dimensions but the file has {len(raw)} bytes"
        )
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = math.prod(dims) * dtype.itemsize
    got = len(raw) - header
    if got != expected:
        what = "truncated" if got < expected else "has trailing bytes"
        raise DataFileError(
            f"{path}: {what}: header declares shape {dims} ({expected} data bytes) but {got} bytes follow"
        )
    # Native byte order so torch.from_numpy accepts it.
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix != ".gz":
            return path.read_bytes()
        with gzip.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise DataNotFoundError(f"{path}: no such file") from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataFileError(f"{path}: not a valid gzip file ({type(e).__name__}: {e})") from None
    except OSError as e:  # a directory, no permission, an I/O error
        raise DataFileError(f"{path}: cannot be read ({type(e).__name__}: {e.strerror or e})") from None


# --------------------------------------------------------------------------- Fashion-MNIST


def _fashion_candidates(root: str | None) -> list[Path]:
    """Directories searched in order: data.root (three layouts), then the Debian package."""
    dirs: list[Path] = []
    if root is not None:
        r = Path(root).expanduser()
        dirs += [r, r / "fashion-mnist", r / "FashionMNIST" / "raw"]
    dirs.append(DEBIAN_FASHION_MNIST_DIR)
    return dirs


def _fashion_files_in(d: Path) -> tuple[dict[str, Path], list[str]]:
    """The idx files present in ``d`` (plain or .gz) by key, and the stems of those absent."""
    found: dict[str, Path] = {}
    absent: list[str] = []
    for key, stem in FASHION_MNIST_FILES.items():
        for candidate in (d / stem, d / f"{stem}.gz"):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            absent.append(stem)
    return found, absent


def find_fashion_mnist(root: str | None) -> dict[str, Path] | None:
    """The four idx files from the first directory holding all of them (plain or .gz), else None."""
    for d in _fashion_candidates(root):
        found, absent = _fashion_files_in(d)
        if not absent:
            return found
    return None


def _incomplete_root(root: str | None) -> tuple[Path, list[str]] | None:
    """The first data.root layout that holds some of the four files but not all: (directory, absent stems)."""
    for d in _fashion_candidates(root)[:-1]:
        found, absent = _fashion_files_in(d)
        if found and absent:
            return d, absent
    return None


def _read_fashion_split(images_path: Path, labels_path: Path) -> tuple[Tensor, Tensor]:
    """(N,1,28,28) float32 in [0,1] and (N,) int64 labels in 0..9, checked for consistency."""
    images = read_idx(images_path, expected_magic=0x00000803)  # uint8, 3 dimensions
    labels = read_idx(labels_path, expected_magic=0x00000801)  # uint8, 1 dimension
    if images.shape[1:] != (28, 28):
        raise DataFileError(
            f"{images_path}: images are {images.shape[1]}x{images.shape[2]}; expected 28x28"
        )
    if images.shape[0] != labels.shape[0]:
        raise DataFileError(
            f"{labels_path}: {labels.shape[0]} labels but {images_path} has {images.shape[0]} images"
        )
    if labels.size and int(labels.max()) > 9:
        bad = int(np.argmax(labels > 9))
        raise DataFileError(f"{labels_path}: label {int(labels[bad])} at position {bad} is out of range 0..9")
    x = torch.from_numpy(images).unsqueeze(1).float().div_(255.0)
    return x, torch.from_numpy(labels).long()


@DATASETS.register("fashion_mnist")
def fashion_mnist(*, root: str | None = None, download: bool = True) -> RawData:
    """Fashion-MNIST, 60000 train / 10000 test 28x28 grey images, 10 classes.

    Found in data.root (plain, ``fashion-mnist/`` or torchvision's ``FashionMNIST/raw/``
    layout), else in Debian's ``dataset-fashion-mnist``, else downloaded by torchvision.
    A data.root that holds some of the four files but not all is an error naming the missing
    ones (without data.download), never a silent switch to another copy.
    """
    how = (f"Get it with one of: `apt-get install dataset-fashion-mnist` (installs to {DEBIAN_FASHION_MNIST_DIR}); "
           "or data.root=DIR where DIR holds the four idx files; "
           "or data.download=true with internet access (torchvision downloads them).")
    files = find_fashion_mnist(root)
    incomplete = _incomplete_root(root)
    if incomplete is not None and (files is None or files["train_images"].parent == DEBIAN_FASHION_MNIST_DIR):
        if not download:
            d, absent = incomplete
            raise DataNotFoundError(
                f"{d / absent[0]}[.gz]: no such file: data.root={root} holds only part of Fashion-MNIST "
                f"({d} lacks {', '.join(f'{a}[.gz]' for a in absent)}). {how}"
            )
        files = None  # let torchvision fill data.root in
    failed = None
    if files is None and download:
        from torchvision.datasets import FashionMNIST

        target = Path(root).expanduser() if root is not None else base.DEFAULT_ROOT

        def fetch() -> None:
            FashionMNIST(str(target), train=True, download=True)
            FashionMNIST(str(target), train=False, download=True)

        failed = _try_download(f"Fashion-MNIST into {target / 'FashionMNIST' / 'raw'}", fetch)
        if failed is None:
            files = find_fashion_mnist(str(target))
    if files is None:
        searched = ", ".join(str(d) for d in _fashion_candidates(root))
        names = ", ".join(f"{s}[.gz]" for s in FASHION_MNIST_FILES.values())
        part = _incomplete_root(root)
        lacks = f"; {part[0]} lacks {', '.join(f'{a}[.gz]' for a in part[1])}" if part else ""
        raise DataNotFoundError(
            f"Fashion-MNIST not found: looked for {names} in {searched} (data.root="
            f"{'null' if root is None else root}){lacks}{'; ' + failed if failed else ''}. {how}"
        )
    x_train, y_train = _read_fashion_split(files["train_images"], files["train_labels"])
    x_test, y_test = _read_fashion_split(files["test_images"], files["test_labels"])
    return x_train, y_train, x_test, y_test, 10, "classification"


def _fashion_sources(root: str | None) -> list[Path] | None:
    files = find_fashion_mnist(root)
    return None if files is None else list(files.values())


# The files read (the first folder holding all four): recorded with their package where Debian's installed them.
FASHION_MNIST_SOURCE = Source(_fashion_sources, debian_package="dataset-fashion-mnist")
fashion_mnist.source = FASHION_MNIST_SOURCE  # type: ignore[attr-defined]


RCF_ANGLES = 60  # RCF-MNIST's rotations: 0°, 6°, ..., 354°


@DATASETS.register("rcf_mnist")
def rcf_mnist(*, root: str | None = None, download: bool = True) -> RawData:
    """Regression on Fashion-MNIST in the spirit of RCF-MNIST (Yao et al. 2022, C-Mixup): every image
    rotated (about its centre, bilinear, corners cut, background black) by one of 60 angles 0°, 6°, ...,
    354°, drawn per image from a fixed seed (the same for every run); the target is the angle over 360,
    in [0, 1). Unlike the original, no colour: RCF-MNIST also tints each item red-to-blue by its angle
    (a spurious correlation that 10% of the training images, and its test split, break), which tests
    robustness to a shortcut rather than regression as such. A symmetric item (a bag half a turn round)
    is ambiguous, as in the original."""
    from torchvision.transforms.v2 import functional as TF

    x_train, _, x_test, _, _, _ = fashion_mnist(root=root, download=download)
    out = []
    for k, x in enumerate((x_train, x_test)):
        angle = torch.randint(RCF_ANGLES, (x.shape[0],), generator=torch.Generator().manual_seed(SPLIT_SEED + k))
        rotated = torch.empty_like(x)
        for a in range(RCF_ANGLES):
            rows = (angle == a).nonzero().squeeze(1)
            if rows.numel():
                rotated[rows] = TF.rotate(x[rows], 360.0 * a / RCF_ANGLES, interpolation=TF.InterpolationMode.BILINEAR)
        out += [rotated, angle.float() / RCF_ANGLES]
    return out[0], out[1], out[2], out[3], 1, "regression"


rcf_mnist.source = FASHION_MNIST_SOURCE  # type: ignore[attr-defined] - rotated Fashion-MNIST items


# --------------------------------------------------------------------------- CIFAR


class _SafeUnpickler(pickle.Unpickler):
    """CIFAR's batches are pickles of a dict of bytes, lists and numpy arrays. A pickle can name
    any callable to run on load; this one only lets through what rebuilds numpy arrays."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct")}

    def __init__(self, path: Path, raw: bytes) -> None:
        super().__init__(io.BytesIO(raw), encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise DataFileError(f"{self.path}: refuses to load {module}.{name}: a CIFAR batch holds only "
                                "a dict of bytes, lists and numpy arrays")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One pickled CIFAR batch: ``data`` uint8 (N, 3072) (a 3x32x32 image per row), labels (N,) in
    0..num_classes-1. Anything else is a :class:`DataFileError` naming ``path``."""
    raw = read_nonempty(path, "a pickled CIFAR batch")
    try:
        entry = _SafeUnpickler(path, raw).load()
    except DataFileError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated or garbage bytes raise any of several types
        raise DataFileError(
            f"{path}: not a readable CIFAR batch, truncated or corrupted ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(entry, dict) or "data" not in entry or label_key not in entry:
        got = sorted(map(str, entry)) if isinstance(entry, dict) else type(entry).__name__
        raise DataFileError(f"{path}: expected a dict with keys 'data' and {label_key!r}, got {got}")
    data, labels = np.asarray(entry["data"]), np.asarray(entry[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataFileError(
            f"{path}: 'data' is {data.dtype} of shape {data.shape}; expected uint8 (N, 3072), one 3x32x32 image a row"
        )
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise DataFileError(f"{path}: {labels.size} labels of shape {labels.shape} for {data.shape[0]} images")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise DataFileError(f"{path}: labels are {labels.dtype}; expected integers")
    out = (labels < 0) | (labels >= num_classes)
    if out.any():
        bad = int(np.argmax(out))
        raise DataFileError(
            f"{path}: label {int(labels[bad])} at position {bad} is out of range 0..{num_classes - 1}"
        )
    return data, labels.astype(np.int64)


def _cifar(cls_name: str, *, root: str | None, download: bool) -> RawData:
    import torchvision.datasets as tvd
    import torchvision.datasets.cifar as tv_cifar
    from torchvision.datasets.utils import download_and_extract_archive

    cls = getattr(tvd, cls_name)
    target = Path(root).expanduser() if root is not None else base.DEFAULT_ROOT
    folder = target / cls.base_folder
    meta = (cls.meta["filename"], cls.meta["md5"])
    needed = [*cls.train_list, *cls.test_list, meta]
    missing = [f for f, _ in needed if not (folder / f).is_file()]

    def intact(name: str, md5: str) -> bool:
        # Looked up on torchvision's module at call time, as torchvision's own classes do.
        return tv_cifar.check_integrity(str(folder / name), md5)

    problems: list[str] = []
    if download and (missing or not all(intact(f, md5) for f, md5 in needed)):
        # Fetches the archive (checking its md5; an intact one already in data.root is not fetched
        # again) and re-extracts it over a missing or corrupted copy.
        failed = _try_download(cls.url, lambda: download_and_extract_archive(
            cls.url, str(target), filename=cls.filename, md5=cls.tgz_md5))
        problems += [failed] if failed else []
        missing = [f for f, _ in needed if not (folder / f).is_file()]
    archive = target / cls.filename
    if missing and archive.is_file():
        # The archive put in data.root by hand (data.download=false), or left by a failed download.
        try:
            _extract_tar(archive, target)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
            problems.append(f"{archive} cannot be extracted ({_one_line(e)})")
        missing = [f for f, _ in needed if not (folder / f).is_file()]
    if missing:
        # torchvision would say only "not found or corrupted" (or fail on the network with a
        # traceback); say what was looked for where, and how to get it, in one line.
        title = cls_name.replace("CIFAR", "CIFAR-")
        no_archive = "" if archive.is_file() else f" and there is no {archive}"
        raise DataNotFoundError(
            f"{title} not found: {folder} lacks {missing}{no_archive} ({_root_text(root)})"
            + "".join(f"; {p}" for p in problems)
            + f". Put {cls.filename} (from {cls.url}) or its extracted {cls.base_folder}/ under data.root, "
            "or set data.download=true with internet access (torchvision downloads it there)."
        )
    num_classes = 10 if cls_name == "CIFAR10" else 100
    label_key = "labels" if cls_name == "CIFAR10" else "fine_labels"
    splits = []
    for files in (cls.train_list, cls.test_list):
        parts = [_read_cifar_batch(folder / f, label_key, num_classes) for f, _ in files]
        # Rows are the R, G and B planes of 32x32 each: (N, 3, 32, 32) as they stand, in [0, 1].
        x = torch.from_numpy(np.concatenate([d for d, _ in parts])).view(-1, 3, 32, 32).float().div_(255.0)
        splits += [x, torch.from_numpy(np.concatenate([lab for _, lab in parts]))]
    # Structure first (the more telling message), then the published checksums: a file can parse
    # and still not be the real one.
    for name, md5 in needed:
        if not intact(name, md5):
            raise DataFileError(
                f"{folder / name}: corrupted or not the published file (md5 differs from {md5}); "
                f"re-extract {cls.filename}, or delete {folder} and set data.download=true"
            )
    return splits[0], splits[1], splits[2], splits[3], num_classes, "classification"


def _extract_tar(archive: Path, target: Path) -> None:
    """Unpack ``archive`` into ``target``; with the "data" filter where Python has it, so no member
    can land outside ``target`` or be a device file or an absolute link."""
    with tarfile.open(archive, "r:*") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(target, filter="data")
        else:  # Python < 3.10.12: what torchvision itself does
            tar.extractall(target)


@DATASETS.register("cifar10")
def cifar10(*, root: str | None = None, download: bool = True) -> RawData:
    """CIFAR-10 via torchvision: 50000 train / 10000 test 3x32x32 images, 10 classes.

    Read from ``cifar-10-batches-py/`` in data.root (default ``~/.cache/mixlab``); else extracted
    there from ``cifar-10-python.tar.gz`` in data.root; else (data.download) downloaded there.
    """
    return _cifar("CIFAR10", root=root, download=download)


@DATASETS.register("cifar100")
def cifar100(*, root: str | None = None, download: bool = True) -> RawData:
    """CIFAR-100 (fine labels) via torchvision: 50000 train / 10000 test 3x32x32, 100 classes.

    Like :func:`cifar10`, with ``cifar-100-python/`` and ``cifar-100-python.tar.gz``.
    """
    return _cifar("CIFAR100", root=root, download=download)
