"""Tests of mixlab.data: loaders, idx parsing, normalisation, subsets and batch iteration.

All offline: Fashion-MNIST comes from Debian's package (skipped where absent) or from tiny
idx files written here; CIFAR from tiny pickles in torchvision's on-disk layout.
"""
from __future__ import annotations

import gzip
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mixlab.data import base as B
from mixlab.data import images as D
from mixlab.data import DATASETS, Batches, Dataset, crop_and_flip, eval_batches, load_dataset, read_idx


def without_fingerprint(summary: dict) -> dict:
    """A data set's summary less its split fingerprints (16 hex digits each; their values: the tests below)."""
    fp = summary.pop("fingerprint")
    assert set(fp) == {"train", "val", "test"} and all(v is None or re.fullmatch(r"[0-9a-f]{16}", v) for v in fp.values())
    return summary

HAVE_DEBIAN_FMNIST = all(
    (D.DEBIAN_FASHION_MNIST_DIR / f"{stem}.gz").is_file() for stem in D.FASHION_MNIST_FILES.values()
)
ROOT = Path(__file__).resolve().parent.parent
needs_debian = pytest.mark.skipif(not HAVE_DEBIAN_FMNIST, reason="apt-get install dataset-fashion-mnist")


# --------------------------------------------------------------------------- helpers


def write_idx(path: Path, array: np.ndarray, *, type_code: int = 0x08, magic: int | None = None) -> Path:
    """Write ``array`` as an idx file (gzipped if the name ends in .gz)."""
    dtype = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[type_code]
    if magic is None:
        magic = (type_code << 8) | array.ndim
    payload = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += np.ascontiguousarray(array, dtype=dtype).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path


def write_tiny_fashion(
    directory: Path, *, n_train: int = 5, n_test: int = 3, gz: bool = False, seed: int = 0
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for key, stem in D.FASHION_MNIST_FILES.items():
        write_idx(directory / (stem + (".gz" if gz else "")), arrays[key])
    return arrays


def unnormalise(ds: Dataset, x: torch.Tensor) -> torch.Tensor:
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return x.double() * torch.tensor(ds.std, dtype=torch.float64).view(shape) + torch.tensor(
        ds.mean, dtype=torch.float64
    ).view(shape)


def image_dataset(n: int = 37, c: int = 3, h: int = 6, w: int = 5, *, seed: int = 0) -> Dataset:
    """A synthetic image data set; continuous random pixels so no image equals its mirror or shift."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, c, h, w, generator=g) + 0.5  # strictly positive: zero padding is recognisable
    y = torch.arange(n) % 4
    return Dataset("synthetic", "classification", x, y, x[:3], y[:3], 4, (0.0,) * c, (1.0,) * c)


def shifted(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Reference in float64: out[:, i, j] = img[:, i+dy, j+dx], zero where that is outside."""
    img = img.double()
    _, H, W = img.shape
    out = torch.zeros_like(img)
    for i in range(H):
        for j in range(W):
            if 0 <= i + dy < H and 0 <= j + dx < W:
                out[:, i, j] = img[:, i + dy, j + dx]
    return out


# --------------------------------------------------------------------------- registry / API


def test_registered_names_are_exactly_these() -> None:
    assert DATASETS.names() == sorted(["fashion_mnist", "digits", "cifar10", "cifar100", "diabetes", "moons", "austen",
                                       "ag_news", "sst2", "trec", "fashion_scenes", "coco", "rcf_mnist"])


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"'mnist'.*fashion_mnist"):
        load_dataset("mnist")


# --------------------------------------------------------------------------- Fashion-MNIST (real)


@pytest.fixture(scope="module")
def fmnist() -> Dataset:
    if not HAVE_DEBIAN_FMNIST:
        pytest.skip("apt-get install dataset-fashion-mnist")
    return load_dataset("fashion_mnist", download=False)


@needs_debian
def test_fashion_mnist_real_files(fmnist: Dataset) -> None:
    summary = fmnist.summary()
    package = summary.pop("package", None)  # Debian's files: the package and its version (tests/test_fingerprints.py)
    assert package is None and shutil.which("dpkg-query") is None or package["name"] == "dataset-fashion-mnist"
    assert without_fingerprint(summary) == {
        "name": "fashion_mnist", "n_train": 60000, "n_val": 0, "n_test": 10000, "num_classes": 10, "task": "classification"
    }
    assert fmnist.input_shape == (1, 28, 28) and fmnist.x_train.dtype == torch.float32
    assert torch.equal(fmnist.y_train.bincount(minlength=10), torch.full((10,), 6000))
    assert torch.equal(fmnist.y_test.bincount(minlength=10), torch.full((10,), 1000))
    # The published Fashion-MNIST pixel statistics (of x/255).
    assert fmnist.mean[0] == pytest.approx(0.2860, abs=1e-4)
    assert fmnist.std[0] == pytest.approx(0.3530, abs=1e-4)
    raw = unnormalise(fmnist, fmnist.x_train[:2000])
    assert raw.min() == pytest.approx(0.0, abs=1e-5) and raw.max() == pytest.approx(1.0, abs=1e-5)
    # Pixels are k/255: un-normalising must land on that grid.
    assert torch.allclose(raw * 255, (raw * 255).round(), atol=1e-3)


@needs_debian
def test_fashion_mnist_train_split_is_standardised(fmnist: Dataset) -> None:
    x = fmnist.x_train.double()
    assert x.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert x.std(correction=0).item() == pytest.approx(1.0, abs=1e-5)


# --------------------------------------------------------------------------- idx parser


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    ("type_code", "array"),
    [
        (0x08, np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4) * 10),
        (0x0C, np.array([[-(2**31), 2**31 - 1, 258], [0, -1, 65536]], dtype=np.int32)),
        (0x0D, np.array([1.5, -2.25, 3e7], dtype=np.float32)),
    ],
)
def test_read_idx_round_trips_exact_values(tmp_path: Path, suffix: str, type_code: int, array: np.ndarray) -> None:
    path = write_idx(tmp_path / f"a-idx{suffix}", array, type_code=type_code)
    got = read_idx(path)
    assert got.shape == array.shape
    np.testing.assert_array_equal(got, array)  # big-endian multi-byte values decoded correctly


def test_read_idx_truncated_names_file(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "imgs-idx3-ubyte", np.zeros((4, 28, 28), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"imgs-idx3-ubyte.*truncated"):
        read_idx(path)


def test_read_idx_trailing_bytes_names_file(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "x-idx1-ubyte", np.zeros(4, dtype=np.uint8))
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ValueError, match=r"x-idx1-ubyte.*trailing"):
        read_idx(path)


def test_read_idx_bad_magic_names_file(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "bad-idx", np.zeros((2, 28, 28), dtype=np.uint8), magic=0x12340803)
    with pytest.raises(ValueError, match=r"bad-idx.*bad magic number 0x12340803"):
        read_idx(path)
    # A well-formed idx1 file where an idx3 image file is expected.
    labels = write_idx(tmp_path / "labels-idx1", np.zeros(3, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"labels-idx1.*0x00000801.*expected 0x00000803"):
        read_idx(labels, expected_magic=0x00000803)


def test_read_idx_corrupt_gzip_names_file(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "z-idx1-ubyte.gz", np.arange(1000, dtype=np.uint8) % 7)
    path.write_bytes(path.read_bytes()[:20])  # cut the deflate stream short
    with pytest.raises(ValueError, match=r"z-idx1-ubyte\.gz.*gzip"):
        read_idx(path)


def test_fashion_label_out_of_range_names_file(tmp_path: Path) -> None:
    write_tiny_fashion(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([3, 10, 1], dtype=np.uint8))
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.*label 10 .*0\.\.9"):
        load_dataset("fashion_mnist", root=str(tmp_path), download=False)


def test_fashion_label_count_mismatch_names_file(tmp_path: Path) -> None:
    write_tiny_fashion(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([1, 2], dtype=np.uint8))
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte.*2 labels.*5 images"):
        load_dataset("fashion_mnist", root=str(tmp_path), download=False)


# --------------------------------------------------------------------------- Fashion-MNIST resolution


@pytest.mark.parametrize("layout", ["", "fashion-mnist", "FashionMNIST/raw"])
@pytest.mark.parametrize("gz", [False, True])
def test_root_override_takes_precedence(tmp_path: Path, layout: str, gz: bool) -> None:
    # The Debian directory (60000 examples where installed) must lose to data.root.
    arrays = write_tiny_fashion(tmp_path / layout, gz=gz)
    ds = load_dataset("fashion_mnist", root=str(tmp_path), download=False)
    assert (ds.n_train, ds.n_test) == (5, 3)
    assert torch.equal(ds.y_train, torch.from_numpy(arrays["train_labels"]).long())
    expected = torch.from_numpy(arrays["test_images"]).double().unsqueeze(1) / 255
    assert torch.allclose(unnormalise(ds, ds.x_test), expected, atol=1e-5)


def test_root_without_files_falls_back_to_debian(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    debian = tmp_path / "debian"
    write_tiny_fashion(debian, n_train=7, gz=True)
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST_DIR", debian)
    ds = load_dataset("fashion_mnist", root=str(tmp_path / "empty"), download=False)
    assert ds.n_train == 7


def test_fashion_missing_everywhere_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "nowhere")
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((1, 28, 28), dtype=np.uint8))  # 1 of 4 files
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("fashion_mnist", root=str(tmp_path), download=False)
    msg = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "data.root=" in msg and "data.download=true" in msg


# --------------------------------------------------------------------------- train_subset


@pytest.fixture(scope="module")
def digits_raw() -> tuple:
    return DATASETS.get("digits")(root=None, download=False)


def test_train_subset_is_a_seeded_class_balanced_draw(digits_raw: tuple) -> None:
    # Reference: 10 per class drawn with torch.randperm within each class, the classes in order,
    # from a generator seeded with the run seed (mixlab.data.balanced_subset's documented procedure).
    x_raw, y_raw = digits_raw[0], digits_raw[1]
    ds = load_dataset("digits", train_subset=100, seed=3)
    g = torch.Generator().manual_seed(3)
    members = [(y_raw == c).nonzero().flatten() for c in range(10)]
    keep = torch.cat([m[torch.randperm(m.numel(), generator=g)[:10]] for m in members]).sort().values
    assert torch.equal(ds.y_train, y_raw[keep]) and torch.bincount(ds.y_train).tolist() == [10] * 10
    assert torch.allclose(unnormalise(ds, ds.x_train), x_raw[keep].double(), atol=1e-5)
    assert ds.n_test == 360  # the test split is never subset


def test_train_subset_deterministic_per_seed() -> None:
    a = load_dataset("digits", train_subset=50, seed=1)
    b = load_dataset("digits", train_subset=50, seed=1)
    c = load_dataset("digits", train_subset=50, seed=2)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.y_train, c.y_train)


def test_train_subset_too_large_names_both_numbers() -> None:
    with pytest.raises(ValueError, match=r"data\.train_subset=5000.*1437"):
        load_dataset("digits", train_subset=5000)
    assert load_dataset("digits", train_subset=1437).n_train == 1437


@pytest.mark.parametrize("bad", [-3, 0, True, 2.5, "10"])
def test_train_subset_invalid_values(bad: object) -> None:
    with pytest.raises(ValueError, match=r"data\.train_subset=.*expected null or an integer >= 1"):
        load_dataset("digits", train_subset=bad)  # type: ignore[arg-type]


def test_train_subset_error_message_format() -> None:
    with pytest.raises(ValueError) as info:
        load_dataset("moons", train_subset=-3)
    assert str(info.value) == "data.train_subset=-3: expected null or an integer >= 1"


# --------------------------------------------------------------------------- normalisation


def test_image_normalisation_uses_train_statistics(digits_raw: tuple) -> None:
    ds = load_dataset("digits")
    x = ds.x_train.double()
    assert x.mean(dim=(0, 2, 3)).abs().max() < 1e-5
    assert (x.std(dim=(0, 2, 3), correction=0) - 1).abs().max() < 1e-5
    # The test split is mapped with the train statistics, not its own.
    expected = (digits_raw[2].double() - ds.mean[0]) / ds.std[0]
    assert torch.allclose(ds.x_test.double(), expected, atol=1e-5)
    assert abs(ds.x_test.double().mean().item()) > 1e-4


def test_tabular_normalisation_per_feature() -> None:
    ds = load_dataset("moons")
    assert len(ds.mean) == 2 and ds.mean[0] != pytest.approx(ds.mean[1])
    assert torch.allclose(ds.x_train.double().mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(ds.x_train.double().std(0, correction=0), torch.ones(2, dtype=torch.float64), atol=1e-5)


def test_regression_targets_standardised_with_train_stats() -> None:
    raw = DATASETS.get("diabetes")(root=None, download=False)
    ds = load_dataset("diabetes")
    assert ds.y_train.dtype == torch.float32
    assert ds.y_train.double().mean().item() == pytest.approx(0.0, abs=1e-5)
    assert ds.y_train.double().std(correction=0).item() == pytest.approx(1.0, abs=1e-5)
    assert torch.allclose(ds.y_test.double() * ds.y_std + ds.y_mean, raw[3].double(), atol=1e-3)
    assert torch.allclose(ds.x_train.double().std(0, correction=0), torch.ones(10, dtype=torch.float64), atol=1e-5)


# --------------------------------------------------------------------------- bundled data sets


def test_digits_split() -> None:
    ds = load_dataset("digits")
    assert without_fingerprint(ds.summary()) == {"name": "digits", "n_train": 1437, "n_val": 0, "n_test": 360, "num_classes": 10, "task": "classification"}
    assert ds.input_shape == (1, 8, 8) and ds.y_train.dtype == torch.int64
    # Stratified: each class is ~20% test (counts 174..183 per class in the full set).
    assert ds.y_test.bincount(minlength=10).min() >= 34 and ds.y_test.bincount(minlength=10).max() <= 38
    raw = unnormalise(ds, ds.x_train)
    assert torch.allclose(raw * 16, (raw * 16).round(), atol=1e-4)  # values k/16
    assert raw.min().item() == pytest.approx(0.0, abs=1e-5) and raw.max().item() == pytest.approx(1.0, abs=1e-5)
    # The split does not move with the run seed; train and test are disjoint.
    train, test = B.stratified_split(torch.arange(1797) % 10, n_test=360, generator=torch.Generator().manual_seed(0))
    assert torch.cat([train, test]).sort().values.equal(torch.arange(1797))
    assert torch.equal(load_dataset("digits", seed=5).y_test, ds.y_test)


def test_diabetes_sizes() -> None:
    ds = load_dataset("diabetes")
    assert without_fingerprint(ds.summary()) == {"name": "diabetes", "n_train": 353, "n_val": 0, "n_test": 89, "num_classes": 1, "task": "regression"}
    assert ds.input_shape == (10,)


def test_moons_sizes_and_balance() -> None:
    ds = load_dataset("moons")
    assert without_fingerprint(ds.summary()) == {"name": "moons", "n_train": 2000, "n_val": 0, "n_test": 1000, "num_classes": 2, "task": "classification"}
    assert torch.equal(ds.y_train.bincount(), torch.tensor([1000, 1000]))
    assert not torch.equal(ds.x_train[:1000], ds.x_test)  # an independent test sample
    assert torch.equal(load_dataset("moons").x_train, ds.x_train)  # fixed sample


# --------------------------------------------------------------------------- CIFAR (tiny on-disk copies)


def _pickle(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def test_cifar10_tiny_copy(tmp_path: Path, no_md5: None) -> None:
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    batches = []
    for i in range(1, 6):
        data = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
        labels = [(2 * i) % 10, (2 * i + 1) % 10]
        batches.append((data, labels))
        _pickle(folder / f"data_batch_{i}", {"data": data, "labels": labels})
    test_data = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    _pickle(folder / "test_batch", {"data": test_data, "labels": [9, 0, 4]})
    _pickle(folder / "batches.meta", {"label_names": [f"c{k}" for k in range(10)]})

    ds = load_dataset("cifar10", root=str(tmp_path), download=False)
    assert (ds.n_train, ds.n_test, ds.num_classes, ds.input_shape) == (10, 3, 10, (3, 32, 32))
    assert ds.y_train.tolist() == [lab for _, ls in batches for lab in ls]
    assert ds.y_test.tolist() == [9, 0, 4]
    # Rows are R plane, G plane, B plane of 32x32 each -> (N,3,32,32) unchanged in CHW order.
    expected = torch.from_numpy(np.concatenate([d for d, _ in batches])).double().view(10, 3, 32, 32) / 255
    assert torch.allclose(unnormalise(ds, ds.x_train), expected, atol=1e-5)
    assert len(ds.mean) == 3 and ds.mean[0] != pytest.approx(ds.mean[1], abs=1e-9)


def test_cifar100_tiny_copy(tmp_path: Path, no_md5: None) -> None:
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    train_data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
    test_data = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
    _pickle(folder / "train", {"data": train_data, "fine_labels": [99, 0, 57, 3], "coarse_labels": [1, 2, 3, 4]})
    _pickle(folder / "test", {"data": test_data, "fine_labels": [42, 7], "coarse_labels": [0, 0]})
    _pickle(folder / "meta", {"fine_label_names": [f"f{k}" for k in range(100)]})

    ds = load_dataset("cifar100", root=str(tmp_path), download=False)
    assert (ds.n_train, ds.n_test, ds.num_classes) == (4, 2, 100)
    assert ds.y_train.tolist() == [99, 0, 57, 3] and ds.y_test.tolist() == [42, 7]
    expected = torch.from_numpy(test_data).double().view(2, 3, 32, 32) / 255
    assert torch.allclose(unnormalise(ds, ds.x_test), expected, atol=1e-5)


# --------------------------------------------------------------------------- missing data: one line, never the network

CIFARS = {"cifar10": ("CIFAR-10", "cifar-10-batches-py", "cifar-10-python.tar.gz",
                      ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                       "batches.meta"]),
          "cifar100": ("CIFAR-100", "cifar-100-python", "cifar-100-python.tar.gz", ["train", "test", "meta"])}


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """No network: every urlopen (torchvision downloads through urllib) raises URLError; returns the URLs tried."""
    import urllib.error
    import urllib.request

    tried: list[str] = []

    def urlopen(url, *args, **kwargs):
        tried.append(getattr(url, "full_url", url))
        raise urllib.error.URLError("[Errno -2] Name or service not known (test: no network)")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return tried


def assert_one_line_says_how(msg: str, *parts: str) -> None:
    assert "\n" not in msg and "data.root" in msg and "data.download=true" in msg, msg
    for part in parts:
        assert part in msg, (part, msg)


@pytest.mark.parametrize("name", CIFARS)
@pytest.mark.parametrize("download", [True, False])
def test_cifar_missing_is_one_line_naming_files_root_and_remedy(
    tmp_path: Path, offline: list[str], name: str, download: bool
) -> None:
    title, folder, archive, files = CIFARS[name]
    with pytest.raises(D.DataNotFoundError) as info:
        load_dataset(name, root=str(tmp_path), download=download)
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)  # the CLI's one line
    msg = str(info.value)
    assert msg.startswith(f"{title} not found: {tmp_path / folder} lacks {files}"), msg
    assert_one_line_says_how(msg, f"there is no {tmp_path / archive}", f"data.root={tmp_path}", f"Put {archive}",
                             f"its extracted {folder}/")
    if download:  # the download was tried, failed, and says why
        assert offline and all(archive in url for url in offline)
        assert f"downloading https://www.cs.toronto.edu/~kriz/{archive} failed (URLError: " in msg
    else:  # data.download=false never touches the network
        assert offline == [] and "downloading" not in msg


def test_cifar_partly_missing_names_what_is_absent(tmp_path: Path, offline: list[str]) -> None:
    _pickle(tmp_path / "cifar-100-python" / "train", {"data": np.zeros((1, 3072), np.uint8), "fine_labels": [0]})
    with pytest.raises(D.DataNotFoundError, match=r"cifar-100-python lacks \['test', 'meta'\]"):
        load_dataset("cifar100", root=str(tmp_path), download=False)


def test_cifar_missing_without_root_names_the_default(tmp_path: Path, offline: list[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(B, "DEFAULT_ROOT", tmp_path / "cache")
    with pytest.raises(D.DataNotFoundError) as info:
        load_dataset("cifar10", download=True)
    assert_one_line_says_how(str(info.value), f"data.root=null, so {tmp_path / 'cache'}",
                             str(tmp_path / "cache" / "cifar-10-batches-py"))


def _tiny_cifar100_tarball(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    for split, n in (("train", 4), ("test", 2)):
        _pickle(src / "cifar-100-python" / split, {"data": np.full((n, 3072), 7, np.uint8), "fine_labels": [5] * n})
    _pickle(src / "cifar-100-python" / "meta", {"fine_label_names": [f"f{k}" for k in range(100)]})
    archive = tmp_path / "root" / "cifar-100-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-100-python", arcname="cifar-100-python")
    return archive


@pytest.mark.parametrize("download", [False, True])
def test_cifar_archive_in_root_is_extracted(tmp_path: Path, no_md5: None, offline: list[str], download: bool) -> None:
    archive = _tiny_cifar100_tarball(tmp_path)
    ds = load_dataset("cifar100", root=str(archive.parent), download=download)
    assert (ds.n_train, ds.n_test) == (4, 2) and (archive.parent / "cifar-100-python" / "meta").is_file()


def test_cifar_broken_archive_is_one_line_naming_it(tmp_path: Path, offline: list[str]) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(b"not a tarball")
    with pytest.raises(D.DataNotFoundError) as info:
        load_dataset("cifar10", root=str(tmp_path), download=False)
    assert_one_line_says_how(str(info.value), f"{archive} cannot be extracted (ReadError: ")


def test_fashion_mnist_failed_download_is_one_line(tmp_path: Path, offline: list[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "nowhere")
    with pytest.raises(D.DataNotFoundError) as info:
        load_dataset("fashion_mnist", root=str(tmp_path / "root"), download=True)
    assert offline  # tried, and failed
    assert_one_line_says_how(str(info.value), "Fashion-MNIST not found: looked for train-images-idx3-ubyte[.gz]",
                             f"data.root={tmp_path / 'root'}",
                             f"downloading Fashion-MNIST into {tmp_path / 'root' / 'FashionMNIST' / 'raw'} failed",
                             "apt-get install dataset-fashion-mnist")


@pytest.mark.parametrize("download", ["true", "false"])
def test_cli_missing_cifar_is_one_line_exit_2(tmp_path: Path, download: str) -> None:
    """The issue: no network and no files printed a 78-line traceback ending in URLError."""
    # Every HTTP(S) request goes to a proxy on a closed local port: refused at once, never the internet.
    env = {**os.environ, "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
           "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "NO_PROXY": "", "no_proxy": ""}
    root = tmp_path / "empty"
    root.mkdir()
    r = subprocess.run([sys.executable, "-m", "mixlab", "data=cifar10", f"data.root={root}",
                        f"data.download={download}", "device=cpu", "trainer.epochs=1", "trainer.progress=false",
                        f"hydra.run.dir={tmp_path / 'run'}"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    lines = r.stderr.splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr + r.stdout, r.stderr
    assert lines[0].startswith("mixlab: error: data: CIFAR-10 not found: ") and f"data.root={root}" in lines[0]
    assert "cifar-10-python.tar.gz" in lines[0] and "data.download=true" in lines[0]
    assert ("failed (URLError: " in lines[0]) == (download == "true")
    assert sorted(p.name for p in root.iterdir()) == []  # nothing half-downloaded left behind


# --------------------------------------------------------------------------- Batches


def _epoch(batches: Batches) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    return [tuple(t.clone() for t in b) for b in batches]  # type: ignore[misc]


def test_batches_cover_each_index_once_and_match_data() -> None:
    ds = image_dataset(37)
    batches = Batches(ds, batch_size=10, generator=torch.Generator().manual_seed(0))
    assert len(batches) == 4
    for _ in range(2):
        epoch = _epoch(batches)
        assert [b[0].shape[0] for b in epoch] == [10, 10, 10, 7]
        index = torch.cat([b[2] for b in epoch])
        assert index.dtype == torch.int64
        assert torch.equal(index.sort().values, torch.arange(37))
        assert not torch.equal(index, torch.arange(37))  # shuffled
        for x, y, idx in epoch:
            assert torch.equal(x, ds.x_train[idx]) and torch.equal(y, ds.y_train[idx])


def test_batches_epochs_differ_and_generator_reproduces() -> None:
    ds = image_dataset(37)
    kw = dict(batch_size=8, crop_padding=2, hflip=True)
    a = Batches(ds, generator=torch.Generator().manual_seed(7), **kw)
    b = Batches(ds, generator=torch.Generator().manual_seed(7), **kw)
    c = Batches(ds, generator=torch.Generator().manual_seed(8), **kw)
    a1, a2, b1, b2 = _epoch(a), _epoch(a), _epoch(b), _epoch(b)
    for ea, eb in ((a1, b1), (a2, b2)):
        assert all(torch.equal(s, t) for ba, bb in zip(ea, eb) for s, t in zip(ba, bb))
    assert not torch.equal(a1[0][2], a2[0][2])  # a new permutation per epoch
    assert not torch.equal(_epoch(c)[0][2], a1[0][2])


def test_batch_size_one_and_drop_last() -> None:
    ds = image_dataset(5)
    ones = _epoch(Batches(ds, batch_size=1, generator=torch.Generator().manual_seed(0), crop_padding=1, hflip=True))
    assert len(ones) == 5 and all(x.shape == (1, 3, 6, 5) for x, _, _ in ones)
    dropped = Batches(ds, batch_size=2, generator=torch.Generator().manual_seed(0), drop_last=True)
    epoch = _epoch(dropped)
    assert len(dropped) == 2 and [x.shape[0] for x, _, _ in epoch] == [2, 2]
    assert len(Batches(ds, batch_size=8, generator=torch.Generator(), drop_last=True)) == 0


@pytest.mark.parametrize("padding", [1, 2])
def test_crop_and_flip_matches_float64_reference(padding: int) -> None:
    ds = image_dataset(1)
    img = ds.x_train[0]
    span = range(2 * padding + 1)
    offsets = torch.tensor([[oy, ox] for oy in span for ox in span])  # every possible offset
    B = offsets.shape[0]
    x = img.expand(B, *img.shape).double()  # float64 in, float64 out
    for flip_value in (False, True):
        flip = torch.full((B,), flip_value)
        out = crop_and_flip(x, offsets=offsets, flip=flip, padding=padding)
        assert out.dtype == torch.float64
        for b, (oy, ox) in enumerate(offsets.tolist()):
            ref = shifted(img, oy - padding, ox - padding)
            if flip_value:
                ref = ref.flip(-1)
            assert torch.equal(out[b], ref), (oy, ox, flip_value)


def _candidates(img: torch.Tensor, padding: int, flips: bool) -> dict[tuple[int, int, bool], torch.Tensor]:
    span = range(-padding, padding + 1)
    cands = {}
    for dy in span:
        for dx in span:
            ref = shifted(img, dy, dx).float()
            cands[(dy, dx, False)] = ref
            if flips:
                cands[(dy, dx, True)] = ref.flip(-1)
    return cands


def _identify(x: torch.Tensor, cands: dict) -> tuple[int, int, bool]:
    matches = [k for k, ref in cands.items() if torch.equal(x, ref)]
    assert len(matches) == 1, f"sample matches {len(matches)} candidate transforms"
    return matches[0]


def test_batches_random_crop_gives_per_sample_shifts() -> None:
    ds = image_dataset(40)
    batches = Batches(ds, batch_size=40, generator=torch.Generator().manual_seed(1), crop_padding=2)
    x, _, idx = next(iter(batches))
    assert x.dtype == ds.x_train.dtype and x.device == ds.x_train.device
    shifts = [_identify(x[b], _candidates(ds.x_train[i], 2, flips=False)) for b, i in enumerate(idx.tolist())]
    assert len(set(shifts)) > 5  # offsets are drawn per sample, not per batch
    assert {s[0] for s in shifts} == set(range(-2, 3))


def test_batches_hflip_flips_about_half_exactly() -> None:
    ds = image_dataset(64)
    batches = Batches(ds, batch_size=32, generator=torch.Generator().manual_seed(2), hflip=True)
    flipped = []
    for x, _, idx in batches:
        for b, i in enumerate(idx.tolist()):
            orig = ds.x_train[i]
            is_orig, is_flip = torch.equal(x[b], orig), torch.equal(x[b], orig.flip(-1))
            assert is_orig != is_flip  # exactly one of the two, never anything else
            flipped.append(is_flip)
    assert 16 <= sum(flipped) <= 48  # p = 0.5 over 64 samples


def test_batches_crop_and_flip_together() -> None:
    ds = image_dataset(30)
    x, _, idx = next(iter(Batches(ds, batch_size=30, generator=torch.Generator().manual_seed(3), crop_padding=1, hflip=True)))
    kinds = [_identify(x[b], _candidates(ds.x_train[i], 1, flips=True)) for b, i in enumerate(idx.tolist())]
    assert {k[2] for k in kinds} == {False, True}


def test_batches_tabular_rejects_augmentation() -> None:
    ds = load_dataset("moons")
    with pytest.raises(ValueError, match=r"crop_padding=4.*\(2,\)"):
        Batches(ds, batch_size=4, generator=torch.Generator(), crop_padding=4)
    with pytest.raises(ValueError, match=r"hflip=True"):
        Batches(ds, batch_size=4, generator=torch.Generator(), hflip=True)
    x, y, idx = next(iter(Batches(ds, batch_size=7, generator=torch.Generator().manual_seed(0))))
    assert torch.equal(x, ds.x_train[idx]) and y.dtype == torch.int64


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [({"batch_size": 0}, r"batch_size=0"), ({"batch_size": 4, "crop_padding": -1}, r"crop_padding=-1")],
)
def test_batches_invalid_options(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        Batches(image_dataset(4), generator=torch.Generator(), **kwargs)


def test_eval_batches_sequential() -> None:
    x, y = torch.arange(23.0).view(23, 1), torch.arange(23)
    parts = list(eval_batches(x, y, 5))
    assert [p[0].shape[0] for p in parts] == [5, 5, 5, 5, 3]
    assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)
    with pytest.raises(ValueError, match="batch_size=0"):
        list(eval_batches(x, y, 0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_data_with_cpu_generator_matches_cpu() -> None:
    # A CPU generator drives CUDA data: draws happen on the CPU and are moved, so the batches
    # are the same as for CPU data with an equally seeded generator.
    cpu = load_dataset("digits", device="cpu")
    gpu = load_dataset("digits", device="cuda")
    assert gpu.x_train.is_cuda and gpu.y_train.is_cuda
    kw = dict(batch_size=33, crop_padding=2, hflip=True)
    for (xc, yc, ic), (xg, yg, ig) in zip(
        Batches(cpu, generator=torch.Generator().manual_seed(0), **kw),
        Batches(gpu, generator=torch.Generator().manual_seed(0), **kw),
    ):
        assert xg.is_cuda and ig.is_cuda
        assert torch.equal(ic, ig.cpu()) and torch.equal(yc, yg.cpu())
        assert torch.allclose(xc, xg.cpu(), atol=1e-6)
    # A CUDA generator works too.
    x, _, idx = next(iter(Batches(gpu, generator=torch.Generator(device="cuda").manual_seed(0), **kw)))
    assert x.is_cuda and idx.is_cuda and x.shape == (33, 1, 8, 8)


# --------------------------------------------------------------------------- validation split


def _rows(x: torch.Tensor) -> set[tuple[float, ...]]:
    return {tuple(r) for r in x.flatten(1).tolist()}


def test_validation_split_is_held_out_stratified_and_the_same_for_every_seed():
    ds = load_dataset("moons", val_size=400, seed=3)
    assert (ds.n_train, ds.n_val, ds.n_test) == (1600, 400, 1000)
    # disjoint: no point is in two splits (moons' points are continuous, so equal rows are the same point)
    assert not _rows(ds.x_val) & _rows(ds.x_train) and not _rows(ds.x_val) & _rows(ds.x_test)
    full = load_dataset("moons")
    # stratified: each class's share of the validation split is its share of the training split (±1)
    counts = torch.bincount(full.y_train).double()
    assert (torch.bincount(ds.y_val).double() - counts * 400 / counts.sum()).abs().max() <= 1
    # the same examples whatever the run seed; another split_seed gives another split
    assert torch.equal(load_dataset("moons", val_size=400, seed=9).x_val, ds.x_val)
    assert not torch.equal(load_dataset("moons", val_size=400, split_seed=1).x_val, ds.x_val)


def test_train_subset_is_class_balanced_and_drawn_from_what_validation_left():
    ds = load_dataset("digits", val_size=300, train_subset=105, seed=4)
    assert torch.bincount(ds.y_train, minlength=10).tolist().count(10) == 5  # 105 = 10 each + 5 classes one more
    assert set(torch.bincount(ds.y_train, minlength=10).tolist()) == {10, 11}
    other = load_dataset("digits", val_size=300, train_subset=105, seed=5)
    raw = lambda d, x: x * torch.tensor(d.std).view(1, -1, 1, 1) + torch.tensor(d.mean).view(1, -1, 1, 1)  # noqa: E731
    # the same validation examples (normalised with each run's own training statistics), another subset
    assert torch.equal(other.y_val, ds.y_val) and torch.allclose(raw(other, other.x_val), raw(ds, ds.x_val), atol=1e-5)
    assert not torch.allclose(raw(other, other.x_train), raw(ds, ds.x_train), atol=1e-5)


def test_a_validation_split_too_large_is_one_line():
    with pytest.raises(ValueError, match=r"^data.val_size=1437: not smaller than the 1437 training examples"):
        load_dataset("digits", val_size=1437)
    with pytest.raises(ValueError, match=r"left after data.val_size=1000"):
        load_dataset("digits", val_size=1000, train_subset=500)


# ----------------------------------------------------------------------------- what a run saw (issue 24)

def _sha16(*tensors: torch.Tensor) -> str:
    import hashlib

    h = hashlib.sha256()
    for t in tensors:
        a = t.cpu().contiguous().numpy()
        h.update(f"{tuple(a.shape)}{t.dtype};".encode() + a.tobytes())
    return h.hexdigest()[:16]


def test_fingerprints_are_hashes_of_the_raw_splits_and_tell_subsets_apart():
    x_train, y_train, x_test, y_test, _, _ = DATASETS.get("digits")(root=None, download=False)
    whole = load_dataset("digits").summary()["fingerprint"]
    assert whole == {"train": _sha16(x_train, y_train), "val": None, "test": _sha16(x_test, y_test)}
    a = load_dataset("digits", val_size=300, train_subset=200, seed=0).summary()["fingerprint"]
    b = load_dataset("digits", val_size=300, train_subset=200, seed=1).summary()["fingerprint"]
    assert a["train"] != b["train"] and a["val"] == b["val"] and a["test"] == b["test"] == whole["test"]
    assert load_dataset("digits", val_size=300, train_subset=200, seed=0).summary()["fingerprint"] == a
