"""Text: the Austen corpus reader (real files where setup.sh fetched them; synthetic R lazy-load files
always), its chapter-level splits and training-only vocabulary, TextCNN's masks, and text runs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mixlab.data import load_dataset
from mixlab.data.base import DataFileError
from mixlab.data.text import BOOKS, chapters, find_austen, read_austen, tokens
from mixlab.engine.mixing import mix_inputs
from mixlab.models import build_model
from mixlab.run.train import train

from .corpus import LETTERS, write_corpus
from .test_config import compose_cfg

rdata = pytest.importorskip("rdata")
REAL = find_austen(None)
needs_real = pytest.mark.skipif(REAL is None, reason="janeaustenr's files not found: scripts/setup.sh fetches them "
                                                     "with apt (apt-get download r-cran-janeaustenr)")
TITLES = list(BOOKS.values())


# ----------------------------------------------------------------------------- a synthetic corpus (tests/corpus.py)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("austen"))


def _marker_chapters(ds, x: torch.Tensor) -> set[tuple[int, int]]:
    words = {ds.vocab[i] for i in x.flatten().tolist()}
    return {(LETTERS.index(w[1]), LETTERS.index(w[3])) for w in words if len(w) == 4 and w[0] == "q" and w[2] == "z"}


def test_splits_are_whole_chapters_and_the_vocabulary_is_the_training_chapters(corpus):
    ds = load_dataset("austen", root=str(corpus), val_size=60, split_seed=3, seq_len=8, vocab_size=1000)
    assert ds.classes == tuple(TITLES) and ds.num_classes == 6 and ds.x_train.dtype == torch.int64
    train_chapters = _marker_chapters(ds, ds.x_train)
    # every chapter's marker is in the vocabulary only if the chapter trains; held-out ones read <unk>
    assert _marker_chapters(ds, ds.x_val) == set() and _marker_chapters(ds, ds.x_test) == set()
    for b in range(6):
        mine = {c for bb, c in train_chapters if bb == b}
        # a fifth of the 10 chapters (2) to test, then whole chapters until the novel's 10 validation passages
        # (each chapter: 5 lines of 8 tokens = 5 passages of 8), so 2 more: 6 train on
        assert len(mine) == 6, (b, mine)
    assert torch.bincount(ds.y_val).tolist() == [10] * 6 and torch.bincount(ds.y_test).tolist() == [10] * 6
    assert "<unk>" == ds.vocab[1] and "<pad>" == ds.vocab[0] and len(ds.vocab) == ds.vocab_size
    # the headings (whose style tells the novel) and end matter are gone
    assert not {"chapter", "end", "novel"} & set(ds.vocab)
    # another split seed holds out other chapters; the same one the same
    other = load_dataset("austen", root=str(corpus), val_size=60, split_seed=4, seq_len=8, vocab_size=1000)
    again = load_dataset("austen", root=str(corpus), val_size=60, split_seed=3, seq_len=8, vocab_size=1000)
    assert _marker_chapters(other, other.x_train) != train_chapters
    assert torch.equal(again.x_train, ds.x_train) and torch.equal(again.x_test, ds.x_test)


def test_a_capped_vocabulary_keeps_the_most_frequent_training_words(corpus):
    ds = load_dataset("austen", root=str(corpus), val_size=0, split_seed=0, seq_len=8, vocab_size=6)
    assert ds.vocab[2:] == ("common", ".", "and", "the")  # 3 per line, then 1 each; ties by the word
    assert ds.x_val is None and int((ds.x_train == 1).sum()) > 0


def test_train_subset_is_class_balanced_and_bad_options_are_one_line(corpus):
    ds = load_dataset("austen", root=str(corpus), val_size=0, split_seed=0, seq_len=8, train_subset=12)
    assert torch.bincount(ds.y_train).tolist() == [2] * 6
    with pytest.raises(ValueError, match=r"^data.seq_len=4: expected an integer >= 8$"):
        load_dataset("austen", root=str(corpus), seq_len=4)
    with pytest.raises(ValueError, match="larger than the 240 training passages"):
        load_dataset("austen", root=str(corpus), seq_len=8, train_subset=10_000)


def test_tokens_and_chapters():
    assert tokens(["It is a truth, universally", "acknowledged! Don't 1811"]) == \
        ["it", "is", "a", "truth", ",", "universally", "acknowledged", "!", "don't", "1811"]
    lines = ["Title", "CHAPTER I", "one", "VOLUME II", "Chapter 2", "two", "THE END", "A NOTE ON THE TEXT", "note"]
    assert chapters(lines) == [["one"], ["two"]]


@pytest.mark.parametrize("damage", ["truncated rdb", "garbage rdx", "missing rdb", "empty rdx"])
def test_a_damaged_file_is_one_line_naming_it(corpus, tmp_path, damage):
    import shutil

    d = shutil.copytree(find_austen(str(corpus)), tmp_path / "data")
    rdb, rdx = d / "Rdata.rdb", d / "Rdata.rdx"
    if damage == "truncated rdb":
        rdb.write_bytes(rdb.read_bytes()[:-50])
    elif damage == "garbage rdx":
        rdx.write_bytes(b"\x1f\x8b this is not gzip")
    elif damage == "missing rdb":
        rdb.unlink()
    else:
        rdx.write_bytes(b"")
    with pytest.raises((DataFileError, FileNotFoundError)) as e:
        read_austen(d)
    msg = str(e.value)
    assert "\n" not in msg and str(rdb if "rdb" in damage else rdx) in msg, msg


def test_no_corpus_is_one_line_through_the_cli(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mixlab", "data=austen", f"data.root={tmp_path}", "model=textcnn",
                        f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "HOME": str(tmp_path)})
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert err[-1].startswith("mixlab: error: data=austen: janeaustenr's Rdata.rdb/Rdata.rdx not found in")
    assert "apt-get download r-cran-janeaustenr" in err[-1]


# ----------------------------------------------------------------------------- the real corpus


@needs_real
def test_the_six_real_novels_and_their_chapters():
    books = read_austen(REAL)
    assert list(books) == TITLES
    assert [len(chapters(b)) for b in books.values()] == [50, 61, 48, 55, 31, 24]
    opening = " ".join(chapters(books["Pride & Prejudice"])[0])
    assert "It is a truth universally acknowledged" in opening


@needs_real
def test_the_real_data_set_is_split_by_chapters():
    ds = load_dataset("austen", val_size=600, split_seed=0, seq_len=64, vocab_size=10000)
    assert ds.num_classes == 6 and ds.x_train.shape[1] == 64 and ds.vocab_size == 10000
    assert ds.n_val >= 600 and ds.n_test > 1000 and ds.n_train > 8000
    assert float((ds.x_test == 1).float().mean()) < 0.03  # few unknown words in held-out chapters


# ----------------------------------------------------------------------------- TextCNN and mixing


def test_padding_never_changes_transformer_logits():
    torch.manual_seed(0)
    model = build_model("transformer", in_shape=(16,), num_classes=3, vocab_size=50, dim=8, heads=2, ff=16,
                        dropout=0.0).eval()
    ids = torch.randint(2, 50, (2, 7))
    padded = torch.cat([ids, torch.zeros(2, 9, dtype=torch.int64)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(padded), model(ids), rtol=0, atol=1e-5)
        assert torch.isfinite(model(torch.zeros(2, 16, dtype=torch.int64))).all()  # nothing but padding


def test_padding_never_changes_textcnn_logits():
    # masked max-over-time: windows that start on padding are left out, so a passage padded to 16 gives
    # the logits of the same passage alone (without the mask, relu(bias) of padded windows can win the max)
    torch.manual_seed(0)
    model = build_model("textcnn", in_shape=(16,), num_classes=3, vocab_size=50, dim=8, filters=4, dropout=0.0)
    with torch.no_grad():
        for conv in model.blocks[0].convs:
            conv.bias.fill_(5.0)  # padded windows would score relu(5) = 5 and win every max
    model.eval()
    ids = torch.randint(2, 50, (2, 7))
    padded = torch.cat([ids, torch.zeros(2, 9, dtype=torch.int64)], dim=1)
    torch.testing.assert_close(model(padded), model(ids), rtol=0, atol=1e-6)


def test_mixed_masks_keep_every_position_either_sequence_had():
    stem = build_model("textcnn", in_shape=(6,), num_classes=2, vocab_size=20, dim=4).stem
    a = torch.tensor([[5, 6, 7, 0, 0, 0], [3, 3, 3, 3, 3, 0]])
    h = stem(a)
    mixed = mix_inputs(h, torch.tensor([1, 0]), torch.tensor([0.7, 1.0]))
    assert (mixed[0, :, -1] > 0).tolist() == [True] * 5 + [False]  # OR of the two masks
    assert torch.equal(mixed[1], h[1])  # λ = 1: the sequence alone, its own mask


FAST = ("data=austen", "data.seq_len=8", "data.val_size=30", "model=textcnn", "model.dim=16", "model.filters=8",
        "trainer.epochs=2", "trainer.progress=false", "device=cpu", "data.batch_size=32")


@pytest.mark.parametrize("extra", [("lambda=beta",), ("lambda=distance",), ("lambda=distance", "lam.space=feature"),
                                   ("mixer=manifold", "lambda=beta"), ("lambda=loss", "lam.per_sample=true"),
                                   ("pairing=nearest", "lambda=sk"),
                                   ("model=transformer", "mixer=manifold", "lambda=distance")])
def test_text_runs_train_and_record(corpus, extra, tmp_path):
    base = [o for o in FAST if not (o.startswith("model.") and any(x.startswith("model=") for x in extra))]
    acc = train(compose_cfg(*base, f"data.root={corpus}", *extra), tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert summary["status"] == "completed" and summary["dataset"]["name"] == "austen"
    assert acc == rows[-1]["val_acc"] and 0 < rows[-1]["lam_strength"] <= 0.5
    assert summary["final"]["test_acc"] is not None and summary["final"]["temperature"] > 0
    if "lam.space=feature" not in extra and "mixer=manifold" not in extra and "lambda=distance" in extra:
        # λ = e^(−d) with d measured between the embedded sequences (mix point 0), over the batch's mean
        d, lam = torch.tensor(summary["lam_vs_distance"]["distance"]), torch.tensor(summary["lam_vs_distance"]["lam"])
        torch.testing.assert_close(lam, torch.exp(-d), rtol=1e-5, atol=1e-6)


def test_text_pair_distance_is_measured_between_the_embedded_sequences(corpus, tmp_path, monkeypatch):
    # before: between the token ids (a number per vocabulary index, meaningless as a distance)
    import mixlab.run.train as train_module
    seen, real = [], train_module.pair_distance
    def spy(a, b, *metric):
        if not metric:  # the step's record (λ against distance passes its metric)
            seen.append((a, b))
        return real(a, b, *metric)

    monkeypatch.setattr(train_module, "pair_distance", spy)
    train(compose_cfg(*FAST, f"data.root={corpus}", "lambda=beta", "trainer.epochs=1"), tmp_path / "run")
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    a, b = seen[0]
    assert a.is_floating_point() and a.dim() == 3 and a.shape[2] == 16 + 1  # (B, tokens, model.dim + the mask)
    n = sum(x.shape[0] for x, _ in seen)
    mean = sum(float(torch.linalg.vector_norm((x - y).flatten(1).double(), dim=1).sum()) for x, y in seen) / n
    assert rows[0]["pair_distance"] == pytest.approx(mean, rel=1e-5)


def test_text_runs_learn_on_the_synthetic_corpus(corpus, tmp_path):
    # the novels differ by one word per line ("word<b>"), which the held-out chapters share: easy to learn
    acc = train(compose_cfg(*FAST, f"data.root={corpus}", "lambda=none", "trainer.epochs=6"), tmp_path / "run")
    assert acc > 0.6


@pytest.mark.parametrize("overrides,message", [
    (("mixer=cutmix",), "mixer=cutmix: needs images, but model=textcnn embeds token ids"),
    (("model=mlp",), "model=mlp: reads numbers, but data=austen gives token ids"),
])
def test_text_misconfigurations_are_one_line(corpus, tmp_path, overrides, message):
    from mixlab.run.config import ConfigError

    base = [o for o in FAST if not (o.startswith("model.") and any(x.startswith("model=") for x in overrides))]
    with pytest.raises(ConfigError, match=message):
        train(compose_cfg(*base, f"data.root={corpus}", *overrides), tmp_path / "run")


def test_a_text_model_on_images_is_one_line(tmp_path):
    from mixlab.run.config import ConfigError

    with pytest.raises(ConfigError, match=r"model=textcnn reads token ids; expected a text data set"):
        train(compose_cfg("data=digits", "model=textcnn", "device=cpu", "trainer.progress=false"), tmp_path / "r")


def test_the_transformer_keeps_attention_initialisation_and_trains_with_sgd():
    # MixModel's He init (for ReLU stacks) once reached the attention and feed-forward weights too: the
    # untrained loss was 3.0 on 10 classes (ln 10 = 2.30) and SGD at lr 0.05 diverged within 10 steps.
    torch.manual_seed(0)
    model = build_model("transformer", in_shape=(64,), num_classes=10, vocab_size=10000)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(2, 10000, (64, 64), generator=g), torch.randint(0, 10, (64,), generator=g)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    assert abs(loss.item() - np.log(10)) < 0.25
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    for _ in range(10):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.isfinite(loss) and loss.item() < 5
