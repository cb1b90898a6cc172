"""What data a run saw, and from where: the Debian package of a data set's files (mixlab.data.provenance),
and scripts/fingerprint_records.py, which gave the committed studies' records their fingerprints later."""
from __future__ import annotations

import gzip
import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mixlab.data import load_dataset, provenance
from mixlab.run.train import train

from .test_config import compose_cfg
from .test_data import HAVE_DEBIAN_FMNIST, needs_debian, write_tiny_fashion

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="no dpkg-query (not a Debian system)")


def _load_script():
    spec = importlib.util.spec_from_file_location("fingerprint_records", ROOT / "scripts" / "fingerprint_records.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def fresh_dpkg_answers():
    """dpkg's answers are cached per process; each test asks afresh (and leaves no answer of its own behind)."""
    for cached in (provenance._owner, provenance._installed_version, provenance._unpacked_version):
        cached.cache_clear()
    yield
    for cached in (provenance._owner, provenance._installed_version, provenance._unpacked_version):
        cached.cache_clear()


def dpkg_version(package: str) -> str:
    return subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True,
                          check=True).stdout


# --------------------------------------------------------------------------- the Debian package of a file


@needs_dpkg
def test_a_file_dpkg_installed_names_its_package_and_the_installed_version(tmp_path):
    dpkg_query = Path(shutil.which("dpkg-query")).resolve()  # dpkg's own program: certainly installed here
    assert provenance.debian_package([dpkg_query]) == {"name": "dpkg", "version": dpkg_version("dpkg")}
    mine = tmp_path / "train-images-idx3-ubyte.gz"
    mine.write_bytes(b"not from a package")
    assert provenance.debian_package([mine]) is None  # a file of no package
    assert provenance.debian_package([tmp_path / "absent"]) is None  # no such file
    assert provenance.debian_package([dpkg_query, mine]) is None  # only some of the files are the package's
    assert provenance.debian_package([]) is None


def test_without_dpkg_there_is_no_package_and_no_error(monkeypatch):
    monkeypatch.setattr(provenance.shutil, "which", lambda name: None)
    assert provenance.debian_package(["/usr/bin/dpkg"]) is None


def test_files_of_a_dpkg_x_tree_of_the_declared_package_carry_its_changelogs_version(tmp_path):
    # What `apt-get download r-cran-janeaustenr && dpkg -x r-cran-janeaustenr_*.deb TREE` leaves (scripts/setup.sh)
    doc = tmp_path / "tree" / "usr" / "share" / "doc" / "r-cran-janeaustenr"
    doc.mkdir(parents=True)
    with gzip.open(doc / "changelog.Debian.gz", "wt") as f:
        f.write("r-cran-janeaustenr (1.0.0-1) unstable; urgency=medium\n\n  * New upstream version\n")
    data = tmp_path / "tree" / "usr" / "lib" / "R" / "site-library" / "janeaustenr" / "data"
    data.mkdir(parents=True)
    files = [data / "Rdata.rdb", data / "Rdata.rdx"]
    for f in files:
        f.write_bytes(b"R")
    assert provenance.debian_package(files, name="r-cran-janeaustenr") == {
        "name": "r-cran-janeaustenr", "version": "1.0.0-1", "unpacked": True}
    assert provenance.debian_package(files) is None  # no package declared: dpkg's database alone decides
    assert provenance.debian_package(files, name="dataset-fashion-mnist") is None  # another package's tree
    loose = tmp_path / "tree" / "Rdata.rdb"  # in the tree's folder but not below its usr/
    loose.write_bytes(b"R")
    assert provenance.debian_package([loose], name="r-cran-janeaustenr") is None


def test_a_loader_that_declares_no_source_records_no_package():
    assert "package" not in load_dataset("digits").summary()


# --------------------------------------------------------------------------- a run records it


def _fashion_run(tmp_path: Path, *overrides: str) -> dict:
    cfg = compose_cfg("data=fashion_mnist", "data.train_subset=40", "data.val_size=20", "data.batch_size=20",
                      "data.download=false", "model=cnn", "model.width=4", "device=cpu", "trainer.epochs=1",
                      "trainer.progress=false", "optim=sgd", *overrides)
    train(cfg, tmp_path / "run")
    return json.loads((tmp_path / "run" / "summary.json").read_text())


def test_a_run_on_fashion_mnist_files_of_its_own_records_no_package(tmp_path):
    write_tiny_fashion(tmp_path / "fashion", n_train=80, n_test=10)
    dataset = _fashion_run(tmp_path, f"data.root={tmp_path / 'fashion'}")["dataset"]
    assert dataset["n_train"] == 40 and set(dataset["fingerprint"]) == {"train", "val", "test"}
    assert "package" not in dataset  # files a user made, not Debian's


@needs_debian
@needs_dpkg
def test_a_run_on_debians_fashion_mnist_records_the_package_and_its_version(tmp_path):
    dataset = _fashion_run(tmp_path)["dataset"]
    assert list(dataset)[-2:] == ["fingerprint", "package"]  # beside the fingerprints
    assert dataset["package"] == {"name": "dataset-fashion-mnist", "version": dpkg_version("dataset-fashion-mnist")}


# --------------------------------------------------------------------------- scripts/fingerprint_records.py


def _tiny_run(tmp_path: Path) -> Path:
    """A finished run on made-up Fashion-MNIST files, its summary as the run wrote it, less its fingerprints."""
    write_tiny_fashion(tmp_path / "fashion", n_train=80, n_test=10)
    _fashion_run(tmp_path, f"data.root={tmp_path / 'fashion'}")
    return tmp_path / "run"


def _without_fingerprint(run: Path) -> tuple[dict, str]:
    """Delete the run's fingerprints from its summary.json (as a run made before them wrote it)."""
    path = run / "summary.json"
    summary = json.loads(path.read_text())
    fingerprint = summary["dataset"].pop("fingerprint")
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return fingerprint, path.read_text()


def test_the_script_gives_a_run_its_fingerprints_back_and_changes_nothing_else(tmp_path, capsys):
    run = _tiny_run(tmp_path)
    made_at_run_time = json.loads((run / "summary.json").read_text())
    fingerprint, before = _without_fingerprint(run)
    capsys.readouterr()  # the run's own epoch lines
    assert _load_script().main([str(tmp_path)]) == 0
    text = (run / "summary.json").read_text()
    after = json.loads(text)
    assert after["dataset"]["fingerprint"] == fingerprint
    stamp = after["dataset"]["fingerprinted_later"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d by scripts/fingerprint_records\.py", stamp)
    assert "package" not in after["dataset"]  # made-up files: no Debian package
    # byte for byte what the run wrote, with only the stamp added after the fingerprints (keys in their order)
    made_at_run_time["dataset"]["fingerprinted_later"] = stamp
    assert text == json.dumps(made_at_run_time, indent=2) + "\n" != before
    assert capsys.readouterr().out.splitlines() == [f"{tmp_path}: 1 fingerprinted, 0 already fingerprinted, "
                                                    "0 left as they were"]
    # a second pass leaves it alone: it has its fingerprints now
    text = (run / "summary.json").read_text()
    assert _load_script().main([str(tmp_path)]) == 0 and (run / "summary.json").read_text() == text


def test_a_run_whose_recorded_sizes_differ_from_the_rebuilt_data_is_left_as_it_is(tmp_path, capsys):
    run = _tiny_run(tmp_path)
    path = run / "summary.json"
    summary = json.loads(path.read_text())
    del summary["dataset"]["fingerprint"]
    summary["dataset"]["n_train"] = 41  # the data the run saw are not the data this config gives now
    path.write_text(json.dumps(summary, indent=2) + "\n")
    before = path.read_bytes()
    capsys.readouterr()
    assert _load_script().main([str(tmp_path)]) == 0
    assert path.read_bytes() == before
    lines = [line for line in capsys.readouterr().out.splitlines() if str(run) in line]
    assert lines == [f"{run}: left as it is: the rebuilt data no longer match the record (n_train=41 recorded, "
                     "40 rebuilt)"]


def test_a_run_whose_data_are_not_here_is_left_as_it_is(tmp_path, capsys):
    run = _tiny_run(tmp_path)
    _without_fingerprint(run)
    before = (run / "summary.json").read_bytes()
    shutil.rmtree(tmp_path / "fashion")
    capsys.readouterr()
    assert _load_script().main([str(tmp_path)]) == 0
    assert (run / "summary.json").read_bytes() == before
    (line,) = [line for line in capsys.readouterr().out.splitlines() if str(run) in line]
    assert line == f"{run}: left as it is: its data.root={tmp_path / 'fashion'} is not here"


def test_a_run_whose_data_cannot_be_found_is_left_as_it_is(tmp_path, capsys, monkeypatch):
    import mixlab.data.base as base
    import mixlab.data.images as images

    run = _tiny_run(tmp_path)
    path = run / "summary.json"
    summary = json.loads(path.read_text())
    del summary["dataset"]["fingerprint"]
    summary["config"]["data"]["root"] = None  # Fashion-MNIST from wherever it is installed: nowhere, here
    path.write_text(json.dumps(summary, indent=2) + "\n")
    before = path.read_bytes()
    monkeypatch.setattr(images, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    monkeypatch.setattr(base, "DEFAULT_ROOT", tmp_path / "no-cache")
    capsys.readouterr()
    assert _load_script().main([str(tmp_path)]) == 0
    assert path.read_bytes() == before
    (line,) = [line for line in capsys.readouterr().out.splitlines() if str(run) in line]
    assert line.startswith(f"{run}: left as it is: its data cannot be rebuilt here (DataNotFoundError: Fashion-MNIST "
                           "not found")


# --------------------------------------------------------------------------- the committed studies


def not_fingerprintable() -> set[str]:
    """The studies docs/results/README.md's fingerprint section lists as not fingerprintable (its bullets
    under "Could not be fingerprinted", each starting with the study's folder name in backticks)."""
    text = (RESULTS / "README.md").read_text()
    section = re.search(r"^## Fingerprints recomputed later\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert section, "docs/results/README.md: no '## Fingerprints recomputed later' section"
    listed = re.search(r"^Could not be fingerprinted.*?\n((?:- .*\n(?:  .*\n)*)*)", section.group(1), re.M)
    return set(re.findall(r"^- `([^`]+)`", listed.group(1), re.M)) if listed else set()


def test_every_committed_run_records_its_data_or_is_listed_as_not_fingerprintable():
    exempt = not_fingerprintable()
    missing = []
    for path in sorted(RESULTS.rglob("summary.json")):
        study = path.relative_to(RESULTS).parts[0]
        dataset = json.loads(path.read_text()).get("dataset") or {}
        fingerprint = dataset.get("fingerprint")
        if fingerprint is None:
            if study not in exempt:
                missing.append(str(path.relative_to(ROOT)))
            continue
        assert set(fingerprint) == {"train", "val", "test"}, path
        assert all(v is None or re.fullmatch(r"[0-9a-f]{16}", v) for v in fingerprint.values()), path
    assert not missing, f"{len(missing)} committed runs without dataset.fingerprint, e.g. {missing[:3]}"
