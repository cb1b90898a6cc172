"""mixlab.data.hf (ag_news, sst2, trec through Hugging Face datasets) with no network: local files in the
formats datasets loads, fakes of the Hub, and the real library offline; then the data sets as runs see them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

datasets = pytest.importorskip("datasets")
import mixlab.data.hf as hf_text  # noqa: E402
from mixlab.data.hf import SPECS, HFTextError, TextData, load_hf_text  # noqa: E402

N_TRAIN, N_TEST = 20, 8


# --------------------------------------------------------------------------- helpers


def rows(name: str, n: int, split: str) -> list[dict]:
    spec = SPECS[name]
    k = len(spec.classes)
    return [{spec.text_column: f"{name} {split} text {i}, with comma", spec.label_column: i % k} for i in range(n)]


def write(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = path.suffix
    if ext == ".csv":
        import csv

        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(records[0]))
            w.writeheader()
            w.writerows(records)
    elif ext == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif ext == ".parquet":
        datasets.Dataset.from_list(records).to_parquet(str(path))
    else:
        raise ValueError(ext)
    return path


def write_split_files(root: Path, name: str, ext: str = ".csv", test_stem: str = "test") -> Path:
    folder = root / name
    write(folder / f"train{ext}", rows(name, N_TRAIN, "train"))
    write(folder / f"{test_stem}{ext}", rows(name, N_TEST, "test"))
    return folder


def assert_one_line(err: BaseException, *needles: str) -> str:
    msg = str(err)
    assert "\n" not in msg and "\r" not in msg, msg
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"
    return msg


def class_label(name: str):
    return datasets.ClassLabel(names=list(SPECS[name].classes))


def fake_dataset_dict(text_col: str, label_col: str, classes, splits: dict[str, int], extra=None):
    feats = {text_col: datasets.Value("string"), label_col: datasets.ClassLabel(names=list(classes))}
    feats.update({k: datasets.Value("int64") for k in (extra or {})})
    out = {}
    for split, n in splits.items():
        data = {text_col: [f"{split} {i}" for i in range(n)],
                label_col: [(-1 if split == "test" and text_col == "sentence" else i % len(classes)) for i in range(n)]}
        for k in extra or {}:
            data[k] = list(range(n))
        out[split] = datasets.Dataset.from_dict(data, features=datasets.Features(feats))
    return datasets.DatasetDict(out)


def write_hub_style_cache(root: Path, hub_id: str, text_col: str, label_col: str, classes, splits) -> Path:
    """Write the cache layout a real Hub download leaves in cache_dir:
    <root>/<ns>___<name>/default/0.0.0/<hash>/{<name>-<split>.arrow, dataset_info.json}.
    Built with the library's own Parquet builder; only naming is adjusted."""
    from datasets.packaged_modules.parquet.parquet import Parquet

    src = root.parent / (root.name + "_src")
    feats = datasets.Features({text_col: datasets.Value("string"), label_col: datasets.ClassLabel(names=list(classes))})
    files = {}
    for split, n in splits.items():
        files[split] = str(src / f"{split}.parquet")
        src.mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_dict(
            {text_col: [f"cached {split} {i}" for i in range(n)], label_col: [i % len(classes) for i in range(n)]},
            features=feats,
        ).to_parquet(files[split])
    with hf_text._forced_offline():
        b = Parquet(cache_dir=str(root), hash="0123456789abcdef", data_files=files, features=feats)
        b.repo_id = hub_id
        b.dataset_name = b.info.dataset_name = hub_id.split("/")[-1]
        b.config_id = "default"
        b._cache_dir = b._build_cache_dir()
        b.download_and_prepare()
    return Path(b.cache_dir)


# --------------------------------------------------------------------------- local files


@pytest.mark.parametrize("name", ["ag_news", "sst2", "trec"])
def test_local_csv_each_dataset(tmp_path, name):
    folder = write_split_files(tmp_path, name)
    d = load_hf_text(name, root=str(tmp_path), download=False)
    spec = SPECS[name]
    assert isinstance(d, TextData)
    assert d.classes == list(spec.classes)
    assert d["classes"] == d.classes and d["train"] is d.train and d["test"] is d.test
    texts, labels = d.train
    assert texts == [r[spec.text_column] for r in rows(name, N_TRAIN, "train")]
    assert labels == [i % len(spec.classes) for i in range(N_TRAIN)]
    assert all(type(x) is int for x in labels + d.test[1])
    assert len(d.test[0]) == len(d.test[1]) == N_TEST
    assert d.source == f"local:{folder}"
    assert d.files == {"train": str(folder / "train.csv"), "test": str(folder / "test.csv")}


@pytest.mark.parametrize("ext", [".jsonl", ".parquet"])
def test_local_other_formats(tmp_path, ext):
    write_split_files(tmp_path, "trec", ext)
    d = load_hf_text("trec", root=tmp_path, download=False)
    assert d.train[0][3] == "trec train text 3, with comma"
    assert d.train[1][:7] == [0, 1, 2, 3, 4, 5, 0]
    assert d.classes == ["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"]


def test_local_parquet_with_classlabel_uses_its_names(tmp_path):
    feats = datasets.Features({"text": datasets.Value("string"), "label": class_label("ag_news")})
    (tmp_path / "ag_news").mkdir()
    for split, n in (("train", 5), ("test", 3)):
        ds = datasets.Dataset.from_dict({"text": ["x"] * n, "label": [3] * n}, features=feats)
        ds.to_parquet(str(tmp_path / "ag_news" / f"{split}.parquet"))
    d = load_hf_text("ag_news", root=tmp_path, download=False)
    assert d.classes == ["World", "Sports", "Business", "Sci/Tech"] and d.train[1] == [3] * 5


def test_local_string_labels_are_mapped(tmp_path):
    write(tmp_path / "sst2" / "train.csv", [{"sentence": "good", "label": "positive"}, {"sentence": "bad", "label": "Negative"}])
    write(tmp_path / "sst2" / "test.jsonl", [{"sentence": "ok", "label": 1}])  # formats may differ per split
    d = load_hf_text("sst2", root=tmp_path, download=True)  # local files win; no network
    assert d.train == (["good", "bad"], [1, 0]) and d.test == (["ok"], [1])


def test_local_sst2_validation_file_serves_as_test(tmp_path):
    folder = write_split_files(tmp_path, "sst2", test_stem="validation")
    d = load_hf_text("stanfordnlp/sst2", root=tmp_path, download=False)
    assert d.test_split == "validation" and d.files["test"] == str(folder / "validation.csv")
    assert len(d.test[0]) == N_TEST


def test_local_files_never_touch_the_network(tmp_path, monkeypatch):
    """Local loads run under forced offline mode: any HTTP attempt would raise."""
    import huggingface_hub.constants as hconst

    seen = []
    real = datasets.load_dataset

    def spy(*a, **k):
        seen.append((datasets.config.HF_HUB_OFFLINE, hconst.HF_HUB_OFFLINE))
        return real(*a, **k)

    monkeypatch.setattr(datasets, "load_dataset", spy)
    write_split_files(tmp_path, "ag_news")
    load_hf_text("ag_news", root=tmp_path, download=True)
    assert seen == [(True, True), (True, True)]
    assert datasets.config.HF_HUB_OFFLINE is False or os.environ.get("HF_HUB_OFFLINE")  # restored


# --------------------------------------------------------------------------- local files: errors


def test_missing_test_file_is_one_line_naming_it(tmp_path):
    write(tmp_path / "ag_news" / "train.csv", rows("ag_news", 20, "train"))
    with pytest.raises(HFTextError) as ei:
        load_hf_text("ag_news", root=tmp_path, download=False)
    assert_one_line(ei.value, "data=ag_news", "no test file", str(tmp_path / "ag_news"), "test.csv", "train.csv")


def test_missing_train_file(tmp_path):
    write(tmp_path / "trec" / "test.jsonl", rows("trec", 5, "test"))
    with pytest.raises(HFTextError) as ei:
        load_hf_text("trec", root=tmp_path, download=False)
    assert_one_line(ei.value, "data=trec", "no train file", "train.parquet")


def _garble(tmp_path: Path, fname: str, content: bytes | str) -> Path:
    folder = write_split_files(tmp_path, "ag_news", Path(fname).suffix)
    p = folder / fname
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    return p


@pytest.mark.parametrize(
    "fname, content, needles",
    [
        ("test.csv", "foo,bar\n1,2\n", ["missing column(s) text, label", "found: foo, bar"]),
        ("test.csv", "", ["cannot read as csv", "EmptyDataError"]),
        ("test.csv", 'text,label\n"a,1\n"b",2,3,4\n', ["non-text value"]),
        ("test.csv", "text,label\nhello,\nworld,1\n", ["row 0", "label is empty"]),
        ("test.csv", "text,label\nhello,7\n", ["label 7 is outside 0..3"]),
        ("test.csv", "text,label\nhello,Cooking\n", ["'Cooking' is neither an integer nor one of"]),
        ("test.csv", "text,label\nhello,-1\n", ["label -1 means unlabelled"]),
        ("test.csv", "text,label\n,1\n", ["non-text value", "row 0"]),
        ("train.jsonl", '{"text": "a", "label": 1}\n{"text": broken\n', ["cannot read as json", "ValueError"]),
        ("train.parquet", b"PAR1 definitely not parquet", ["cannot read as parquet", "ArrowInvalid"]),
    ],
)
def test_garbled_files_give_one_line_naming_file(tmp_path, fname, content, needles):
    p = _garble(tmp_path, fname, content)
    with pytest.raises(HFTextError) as ei:
        load_hf_text("ag_news", root=tmp_path, download=False)
    assert_one_line(ei.value, "data=ag_news", str(p), *needles)
    # a traceback shows only our line: no chained "During handling..." section
    assert ei.value.__cause__ is None and (ei.value.__suppress_context__ or ei.value.__context__ is None)


def test_sst2_unlabelled_test_hint(tmp_path):
    write(tmp_path / "sst2" / "train.csv", rows("sst2", 4, "train"))
    write(tmp_path / "sst2" / "test.csv", [{"sentence": "?", "label": -1}])
    with pytest.raises(HFTextError) as ei:
        load_hf_text("sst2", root=tmp_path, download=False)
    assert_one_line(ei.value, "label -1", "use its validation split as test")


def test_unknown_name(tmp_path):
    with pytest.raises(HFTextError) as ei:
        load_hf_text("imdb", root=tmp_path, download=True)
    assert_one_line(ei.value, "data=imdb", "unknown", "ag_news")


# --------------------------------------------------------------------------- hub path with a fake load_dataset


class FakeHub:
    def __init__(self, dd=None, exc=None):
        self.calls, self.dd, self.exc = [], dd, exc

    def __call__(self, path, name=None, **kw):
        import huggingface_hub.constants as hconst

        self.calls.append(dict(path=path, name=name, offline=(datasets.config.HF_HUB_OFFLINE, hconst.HF_HUB_OFFLINE), **kw))
        exc = self.exc.pop(0) if isinstance(self.exc, list) and self.exc else (None if isinstance(self.exc, list) else self.exc)
        if exc is not None:
            raise exc
        return self.dd


@pytest.fixture
def online(monkeypatch):
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_text, "hub_unreachable", lambda *a, **k: None)  # as if the Hub answered (no network here)


@pytest.mark.parametrize(
    "name, hub_id, config, text_col, label_col, splits, test_split",
    [
        ("ag_news", "fancyzhx/ag_news", None, "text", "label", {"train": 6, "test": 3}, "test"),
        ("fancyzhx/ag_news", "fancyzhx/ag_news", None, "text", "label", {"train": 6, "test": 3}, "test"),
        ("sst2", "stanfordnlp/sst2", None, "sentence", "label", {"train": 6, "validation": 4, "test": 5}, "validation"),
        ("glue/sst2", "nyu-mll/glue", "sst2", "sentence", "label", {"train": 6, "validation": 4, "test": 5}, "validation"),
        ("trec", "CogComp/trec", None, "text", "coarse_label", {"train": 6, "test": 3}, "test"),
    ],
)
def test_hub_path_when_no_local_files(tmp_path, monkeypatch, online, name, hub_id, config, text_col, label_col, splits, test_split):
    spec = hf_text.resolve_name(name)
    extra = {"idx": 0} if text_col == "sentence" else ({"fine_label": 0} if label_col == "coarse_label" else None)
    fake = FakeHub(fake_dataset_dict(text_col, label_col, spec.classes, splits, extra))
    monkeypatch.setattr(datasets, "load_dataset", fake)
    (tmp_path / "unrelated").mkdir()
    d = load_hf_text(name, root=tmp_path, download=True)
    (call,) = fake.calls
    assert call["path"] == hub_id and call["name"] == config
    assert call["cache_dir"] == str(tmp_path)
    assert call["download_config"].cache_dir == str(tmp_path / "downloads")
    assert call["offline"] == (False, False)  # download=True and no offline env: network allowed
    assert "revision" not in call
    assert d.source == "hub:" + hub_id + (f":{config}" if config else "")
    assert d.test_split == test_split
    assert d.train == ([f"train {i}" for i in range(6)], [i % len(spec.classes) for i in range(6)])
    assert d.test[0] == [f"{test_split} {i}" for i in range(splits[test_split])]
    assert -1 not in d.test[1]  # sst2's unlabelled hub test split is not used
    assert d.classes == list(spec.classes)


def test_hub_download_false_forces_offline(tmp_path, monkeypatch, online):
    fake = FakeHub(fake_dataset_dict("text", "label", SPECS["ag_news"].classes, {"train": 2, "test": 2}))
    monkeypatch.setattr(datasets, "load_dataset", fake)
    load_hf_text("ag_news", root=tmp_path, download=False)
    assert fake.calls[0]["offline"] == (True, True)
    assert datasets.config.HF_HUB_OFFLINE is False  # restored afterwards


def test_offline_env_set_after_import_is_respected(tmp_path, monkeypatch, online):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    fake = FakeHub(fake_dataset_dict("text", "label", SPECS["ag_news"].classes, {"train": 2, "test": 2}))
    monkeypatch.setattr(datasets, "load_dataset", fake)
    load_hf_text("ag_news", root=tmp_path, download=True)
    assert fake.calls[0]["offline"] == (True, True)


def test_local_files_take_precedence_over_hub(tmp_path, monkeypatch, online):
    write_split_files(tmp_path, "trec")
    real = datasets.load_dataset
    paths = []
    monkeypatch.setattr(datasets, "load_dataset", lambda p, *a, **k: (paths.append(p), real(p, *a, **k))[1])
    load_hf_text("trec", root=tmp_path, download=True)
    assert paths == ["csv", "csv"]


def test_trec_script_repo_falls_back_to_parquet_export(tmp_path, monkeypatch, online):
    dd = fake_dataset_dict("text", "coarse_label", SPECS["trec"].classes, {"train": 3, "test": 2})
    fake = FakeHub(dd, exc=[RuntimeError("Dataset scripts are no longer supported, but found trec.py")])
    monkeypatch.setattr(datasets, "load_dataset", fake)
    d = load_hf_text("trec", root=tmp_path, download=True)
    assert [c.get("revision") for c in fake.calls] == [None, "refs/convert/parquet"]
    assert d.train[1] == [0, 1, 2]


@pytest.mark.parametrize(
    "exc, needles",
    [
        (ConnectionError("Couldn't reach 'fancyzhx/ag_news' on the Hub (LocalEntryNotFoundError)"),
         ["cannot reach the Hugging Face Hub", "ConnectionError", "fancyzhx___ag_news"]),
        (datasets.exceptions.DatasetNotFoundError("Dataset 'fancyzhx/ag_news' doesn't exist on the Hub\nor cannot be accessed."),
         ["not found on the Hub", "DatasetNotFoundError"]),
        (ValueError("something\nmulti\nline"), ["failed", "ValueError: something"]),
    ],
)
def test_hub_errors_become_one_line(tmp_path, monkeypatch, online, exc, needles):
    monkeypatch.setattr(datasets, "load_dataset", FakeHub(exc=exc))
    with pytest.raises(HFTextError) as ei:
        load_hf_text("ag_news", root=tmp_path, download=True)
    assert_one_line(ei.value, "data=ag_news", *needles)
    assert ei.value.original is exc


def test_hub_wrong_class_count(tmp_path, monkeypatch, online):
    dd = fake_dataset_dict("text", "label", ["a", "b"], {"train": 2, "test": 2})
    monkeypatch.setattr(datasets, "load_dataset", FakeHub(dd))
    with pytest.raises(HFTextError) as ei:
        load_hf_text("ag_news", root=tmp_path, download=True)
    assert_one_line(ei.value, "2 classes", "expected 4")


def test_hub_missing_split(tmp_path, monkeypatch, online):
    dd = fake_dataset_dict("sentence", "label", SPECS["sst2"].classes, {"train": 2, "test": 2})
    monkeypatch.setattr(datasets, "load_dataset", FakeHub(dd))
    with pytest.raises(HFTextError) as ei:
        load_hf_text("sst2", root=tmp_path, download=True)
    assert_one_line(ei.value, "split validation is missing", "train, test")


# --------------------------------------------------------------------------- the REAL library, offline


@pytest.mark.parametrize("name", ["ag_news", "sst2", "glue/sst2", "trec"])
def test_real_library_download_false_empty_root(tmp_path, online, name):
    """download=False: real load_dataset must fail fast (no network retries,
    which take ~24 s here) and the loader must turn that into one line."""
    t0 = time.perf_counter()
    with pytest.raises(HFTextError) as ei:
        load_hf_text(name, root=tmp_path / "cache", download=False)
    elapsed = time.perf_counter() - t0
    spec = hf_text.resolve_name(name)
    msg = assert_one_line(ei.value, f"data={spec.name}: not in {tmp_path / 'cache'}", "data.download=false",
                          "run once with network", spec.cache_folder, "OfflineModeIsEnabled")
    assert isinstance(ei.value.original, ConnectionError), msg
    assert elapsed < 10, elapsed


def test_real_library_offline_env_after_import(tmp_path, monkeypatch, online):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(HFTextError) as ei:
        load_hf_text("ag_news", root=tmp_path, download=True)
    assert_one_line(ei.value, "offline (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set)", "fancyzhx___ag_news")
    assert time.perf_counter() - t0 < 10


def test_real_library_reads_hub_style_cache_without_network(tmp_path, online):
    root = tmp_path / "cache"
    cache = write_hub_style_cache(root, "fancyzhx/ag_news", "text", "label", SPECS["ag_news"].classes, {"train": 7, "test": 3})
    assert cache == root / "fancyzhx___ag_news" / "default" / "0.0.0" / "0123456789abcdef"
    d = load_hf_text("ag_news", root=root, download=False)
    assert d.source == "hub:fancyzhx/ag_news"
    assert d.train == ([f"cached train {i}" for i in range(7)], [i % 4 for i in range(7)])
    assert d.test[0] == ["cached test 0", "cached test 1", "cached test 2"]
    assert d.classes == ["World", "Sports", "Business", "Sci/Tech"]


def test_real_library_cache_keyed_by_hub_id(tmp_path, online):
    """A cache written for one id (e.g. 'nyu-mll/glue') is not found under another ('stanfordnlp/sst2')."""
    root = tmp_path / "cache"
    write_hub_style_cache(root, "stanfordnlp/sst2", "sentence", "label", SPECS["sst2"].classes, {"train": 3, "validation": 2})
    assert load_hf_text("sst2", root=root, download=False).test_split == "validation"
    with pytest.raises(HFTextError) as ei:
        load_hf_text("glue/sst2", root=root, download=False)
    assert_one_line(ei.value, "nyu-mll___glue")


@pytest.mark.parametrize("mode", ["config_folder_renamed", "arrow_truncated", "info_json_garbled", "arrow_missing"])
def test_real_library_garbled_cache_is_one_line(tmp_path, online, mode):
    root = tmp_path / "cache"
    cache = write_hub_style_cache(root, "fancyzhx/ag_news", "text", "label", SPECS["ag_news"].classes, {"train": 3, "test": 2})
    if mode == "config_folder_renamed":  # library raises a two-line ValueError
        cache.parent.parent.rename(cache.parent.parent.with_name("default-123"))
    elif mode == "arrow_truncated":
        f = cache / "ag_news-train.arrow"
        f.write_bytes(f.read_bytes()[:100])
    elif mode == "info_json_garbled":
        (cache / "dataset_info.json").write_text("{oops")
    else:
        (cache / "ag_news-test.arrow").unlink()
    with pytest.raises(HFTextError) as ei:
        load_hf_text("ag_news", root=root, download=False)
    assert_one_line(ei.value, "data=ag_news: cache", str(root / "fancyzhx___ag_news"), "unusable offline",
                    "data.download=true")


SUBPROCESS = textwrap.dedent(
    """
    import sys, time, json
    t0 = time.perf_counter()
    from mixlab.data.hf import load_hf_text, HFTextError
    out = {{}}
    for name in ("ag_news", "sst2", "trec"):
        try:
            load_hf_text(name, root={root!r}, download=True)
            out[name] = "LOADED"
        except HFTextError as e:
            out[name] = [str(e), type(e.original).__name__]
    out["elapsed"] = time.perf_counter() - t0
    print(json.dumps(out))
    """
)


def test_real_library_env_offline_in_fresh_process(tmp_path):
    """HF_DATASETS_OFFLINE=1 + HF_HUB_OFFLINE=1 set before import (the normal
    way), empty root, download=True: one line per data set, quickly, and
    nothing written to $HOME (~/.cache)."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "XDG_CACHE"))}
    env.update(HOME=str(home), HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_HUB_ETAG_TIMEOUT="3",
               HF_HUB_DOWNLOAD_TIMEOUT="3", HF_UPDATE_DOWNLOAD_COUNTS="0")
    code = SUBPROCESS.format(root=str(tmp_path / "cache"))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in ("ag_news", "sst2", "trec"):
        msg, orig = out[name]
        assert "\n" not in msg and msg.startswith(f"data={name}: not in {tmp_path / 'cache'} and offline"), msg
        assert orig == "ConnectionError"
    assert out["elapsed"] < 15 and wall < 30, (out["elapsed"], wall)
    assert "Traceback" not in proc.stderr
    assert list(home.rglob("*")) == [], list(home.rglob("*"))


# --------------------------------------------------------------------------- as runs see them


def test_load_dataset_fits_texts_holds_out_validation_and_counts_words_on_training_only(tmp_path):
    from mixlab.data import load_dataset

    def word(i: int) -> str:  # a word of letters only, one per row
        return "item" + "".join(chr(97 + int(d)) for d in str(i))

    folder = tmp_path / "trec"
    write(folder / "train.csv", [{"text": f"what is {word(i)} ?", "coarse_label": i % 6} for i in range(60)])
    write(folder / "test.csv", [{"text": f"who wrote unseen{word(i)} in the long question that goes on and on ?",
                                 "coarse_label": i % 6} for i in range(12)])
    ds = load_dataset("trec", root=str(tmp_path), download=False, val_size=12, split_seed=0, seq_len=8,
                      vocab_size=1000)
    assert ds.classes == ("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM") and ds.num_classes == 6
    assert (ds.n_train, ds.n_val, ds.n_test) == (48, 12, 12) and torch.bincount(ds.y_val).tolist() == [2] * 6
    assert ds.x_test.shape == (12, 8) and ds.x_train.dtype == torch.int64
    # test texts: cut to 8 tokens, their own words <unk>; train texts: 4 tokens, then padding
    assert ds.vocab[ds.x_test[0, 0]] == "<unk>" and ds.vocab[ds.x_test[0, 2]] == "<unk>"
    assert int((ds.x_test == 0).sum()) == 0
    assert (ds.x_train[:, 4:] == 0).all() and not (ds.x_train[:, :4] == 0).any()
    # the validation texts' own words (item<i> of the held-out rows) are not in the vocabulary
    held = {ds.vocab[i] for i in ds.x_val.flatten().tolist()}
    assert "<unk>" in held and not any(w.startswith("item") for w in held)


def test_an_hf_set_missing_offline_is_one_line_through_the_cli(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mixlab", "data=ag_news", f"data.root={tmp_path}", "data.download=false",
                        "model=textcnn", f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"mixlab: error: data=ag_news: not in {tmp_path} and data.download=false"), last
