"""Text data sets: Jane Austen's six novels (``data=austen``), labelled by novel, and the Hugging Face
sets ``ag_news``, ``sst2`` and ``trec`` (:func:`hf_text`).

The novels come from Debian's ``r-cran-janeaustenr`` (R's lazy-load database ``data/Rdata.rdb`` +
``Rdata.rdx``), read without R: the ``.rdx`` is a gzip'd R serialisation listing each object's
offset and length in the ``.rdb``; each object there is a 4-byte big-endian uncompressed length and
a zlib stream holding an R serialisation, which the PyPI package ``rdata`` parses. Each novel is a
character vector, a line of text per element.

Preparation (:func:`austen`), in this order, so nothing about the validation or test passages
reaches training:

1. Each novel is cut into chapters at its ``CHAPTER n`` / ``Chapter n`` headings (front matter,
   the headings themselves, whose style differs per novel, and end matter such as "VOLUME II",
   "THE END" or Northanger Abbey's note on the text are dropped).
2. Whole chapters are held out: per novel, a ``split_seed`` shuffle of its chapters sends the
   first fifth to the test split and then as many more as give the novel its share of
   ``val_size`` passages to validation. Adjacent passages share names, scenes and style, so a
   random passage-level split would put near-copies of test passages in training.
3. The vocabulary (``vocab_size`` words, by frequency, ties by word) is counted on the training
   chapters only; other words become ``<unk>`` (id 1); id 0 is padding.
4. Each chapter's tokens (lower-cased words, numbers and punctuation marks) are cut into
   consecutive passages of ``seq_len`` tokens; a final piece of at least half that length is kept,
   padded with 0 (the models mask padding).

The result is a :class:`~mixlab.data.base.Dataset` whose inputs are token ids ``(N, seq_len)``
int64, with ``vocab_size`` set; text models embed them, and mixing happens on the embeddings.
"""
from __future__ import annotations

import bz2
import lzma
import re
import struct
import warnings
import zlib
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import torch

from . import base
from .base import (DATASETS, DataFileError, DataNotFoundError, Dataset, balanced_subset, check_int, read_nonempty,
                   stratified_split)
from .provenance import Source

# R object name in Rdata.rdx -> the novel's title, in publication order (janeaustenr's order).
BOOKS: dict[str, str] = {
    "sensesensibility": "Sense & Sensibility",
    "prideprejudice": "Pride & Prejudice",
    "mansfieldpark": "Mansfield Park",
    "emma": "Emma",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}
_SUBDIR = Path("janeaustenr", "data")
# Where an installed janeaustenr keeps its data (Debian's package: the first).
AUSTEN_LOCATIONS: tuple[Path, ...] = (Path("/usr/lib/R/site-library") / _SUBDIR,
                                      Path("/usr/local/lib/R/site-library") / _SUBDIR,
                                      Path("/usr/lib/R/library") / _SUBDIR)
_LIB_DIRS = ("usr/lib/R/site-library", "usr/local/lib/R/site-library", "usr/lib/R/library", "site-library",
             "library", "")
HOW_TO_GET = ("get it with `apt-get install r-cran-janeaustenr`, or without R: `apt-get download "
              "r-cran-janeaustenr && dpkg -x r-cran-janeaustenr_*.deb ~/.cache/mixlab/janeaustenr` (or any "
              "<root>, then data.root=<root>); scripts/setup.sh does this where apt is available")
_HEADING = re.compile(r"^(?:CHAPTER|Chapter) (?:[0-9]+|[IVXLC]+)\s*$")
_END_MATTER = re.compile(r"^\s*(?:VOLUME [IVX]+|THE END|FINIS|Finis)\.?\s*$")
_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)*|[0-9]+|[^\sa-z0-9]")
PAD, UNK = 0, 1
TEST_SHARE = 0.2  # of each novel's chapters


# ----------------------------------------------------------------------------- reading the files


def _has_data(d: Path) -> bool:
    return (d / "Rdata.rdx").is_file() and (d / "Rdata.rdb").is_file()


def _below(folder: Path) -> Path | None:
    if _has_data(folder):
        return folder
    if folder.is_dir():
        for lib in _LIB_DIRS:
            if _has_data(folder / lib / _SUBDIR):
                return folder / lib / _SUBDIR
        hits = sorted(p.parent for p in folder.rglob("janeaustenr/data/Rdata.rdx") if _has_data(p.parent))
        if hits:
            return hits[0]
    return None


def austen_places(root: str | Path | None) -> list[Path]:
    """Where :func:`find_austen` looks, in order: ``data.root`` (with data.root=null: the default
    cache's ``janeaustenr`` folder, where ``scripts/setup.sh`` puts the package's files), then the
    system locations (:data:`AUSTEN_LOCATIONS`)."""
    first = Path(root).expanduser() if root is not None else base.DEFAULT_ROOT / "janeaustenr"
    return [first, *AUSTEN_LOCATIONS]


def find_austen(root: str | Path | None) -> Path | None:
    """The folder holding janeaustenr's ``Rdata.rdb`` + ``Rdata.rdx``: in each of :func:`austen_places`,
    the folder itself, the usual library folders below it (a ``dpkg -x`` target), or any
    ``janeaustenr/data`` below it; None where there is none."""
    return next((hit for place in austen_places(root) if (hit := _below(place)) is not None), None)


def _one_line(text: object, limit: int = 200) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _parse_r(data: bytes, path: Path, what: str) -> tuple[Any, Any]:
    try:
        import rdata
    except ImportError:
        raise DataNotFoundError(f"{path}: reading it needs the rdata package; expected `pip install rdata` "
                                "(or mixlab[text])") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Unknown file type: assumed RDS"
            parsed = rdata.parser.parse_data(data, extension=".rds")
            return parsed, rdata.conversion.convert(parsed)
    except MemoryError:
        raise DataFileError(f"{path}: {what} is not a valid R serialisation (corrupted)") from None
    except Exception as e:  # noqa: BLE001 - rdata raises many types on bad input; each becomes one line
        raise DataFileError(f"{path}: {what} is not a valid R serialisation ({type(e).__name__}: "
                            f"{_one_line(e)})") from None


def _read_index(rdx: Path) -> tuple[dict[str, tuple[int, int]], int]:
    data = read_nonempty(rdx, "R's lazy-load index")
    _, index = _parse_r(data, rdx, "the lazy-load index")
    try:
        table = {str(k): (int(v[0]), int(v[1])) for k, v in index["variables"].items()}
        compressed = index.get("compressed", [True])[0]
        compressed = 1 if compressed is True else int(compressed)
    except Exception as e:  # noqa: BLE001 - any shape but the expected one is a broken index
        raise DataFileError(f"{rdx}: not a lazy-load index (expected a list with 'variables' of (offset, length) "
                            f"pairs; {type(e).__name__}: {_one_line(e)})") from None
    return table, compressed


def _unwrap(blob: bytes, compressed: int, rdb: Path, name: str) -> bytes:
    """R's lazy-load wrapper: a 4-byte big-endian uncompressed length, then the compressed stream
    (with a type byte first for compressed = 2 or 3: Z zlib, 2 bzip2, X xz, 0 stored)."""
    if len(blob) < 5:
        raise DataFileError(f"{rdb}: object '{name}' is truncated ({len(blob)} bytes)")
    (size,) = struct.unpack(">I", blob[:4])
    body, kind = blob[4:], "Z"
    if compressed in (2, 3):
        kind, body = chr(body[0]), body[1:]
    try:
        if compressed == 0 or kind == "0":
            raw = bytes(body)
        elif kind == "Z":
            z = zlib.decompressobj()
            raw = z.decompress(body)
            if not z.eof:
                raise ValueError("the zlib stream is incomplete")
        elif kind == "2":
            raw = bz2.decompress(body)
        elif kind == "X":
            raw = lzma.decompress(body)
        else:
            raise ValueError(f"unknown compression type byte {kind!r}")
    except (zlib.error, OSError, EOFError, lzma.LZMAError, ValueError) as e:
        raise DataFileError(f"{rdb}: object '{name}' is truncated or corrupted ({_one_line(e)})") from None
    if len(raw) != size:
        raise DataFileError(f"{rdb}: object '{name}' is corrupted (its header says {size} bytes, it holds {len(raw)})")
    return raw


def _as_lines(parsed: Any, converted: Any, rdb: Path, name: str) -> list[str]:
    import numpy as np
    from rdata.parser import RObjectType

    if parsed.object.info.type is not RObjectType.STR:
        raise DataFileError(f"{rdb}: object '{name}' is not a character vector (R type "
                            f"{parsed.object.info.type.name}); expected a novel's lines")
    lines = np.asarray(converted, dtype=object).reshape(-1).tolist()
    if any(x is None or not isinstance(x, str) for x in lines):
        raise DataFileError(f"{rdb}: object '{name}' holds NA or non-string values; expected a novel's lines")
    return [str(x) for x in lines]


def read_austen(data_dir: str | Path) -> dict[str, list[str]]:
    """The six novels in ``data_dir`` (``Rdata.rdx`` + ``Rdata.rdb``): title -> its lines, in publication
    order. A missing file is a ``DataNotFoundError``, a truncated or corrupted one a ``DataFileError``:
    one line naming the file."""
    data_dir = Path(data_dir)
    rdx, rdb = data_dir / "Rdata.rdx", data_dir / "Rdata.rdb"
    missing = [p.name for p in (rdx, rdb) if not p.is_file()]
    if missing:
        raise DataNotFoundError(f"{' and '.join(str(data_dir / m) for m in missing)}: no such file; {HOW_TO_GET}")
    table, compressed = _read_index(rdx)
    absent = [n for n in BOOKS if n not in table]
    if absent:
        raise DataFileError(f"{rdx}: the index lacks {', '.join(absent)} (it has {', '.join(sorted(table)) or 'none'})")
    try:
        size = rdb.stat().st_size
        for name in BOOKS:  # every object inside the file before the slow part
            off, length = table[name]
            if off < 0 or length < 0 or off + length > size:
                raise DataFileError(f"{rdb}: object '{name}' at bytes {off}..{off + length} lies beyond the end of "
                                    f"the file ({size} bytes): a truncated .rdb or another package's .rdx")
        books = {}
        with rdb.open("rb") as f:
            for name, title in BOOKS.items():
                off, length = table[name]
                f.seek(off)
                raw = _unwrap(f.read(length), compressed, rdb, name)
                books[title] = _as_lines(*_parse_r(raw, rdb, f"object '{name}'"), rdb, name)
    except OSError as e:
        raise DataFileError(f"{rdb}: cannot be read ({_one_line(e.strerror or e)})") from None
    return books


def chapters(lines: list[str]) -> list[list[str]]:
    """A novel's chapters: the lines after each ``CHAPTER n`` heading (arabic or roman numerals), without
    the heading, the front matter before the first one, volume markers and end matter ("THE END",
    "FINIS", Northanger Abbey's "A NOTE ON THE TEXT" and what follows it)."""
    out: list[list[str]] = []
    for line in lines:
        if line.strip() == "A NOTE ON THE TEXT":
            break
        if _HEADING.match(line):
            out.append([])
        elif out and not _END_MATTER.match(line):
            out[-1].append(line)
    return out


def tokens(lines: list[str]) -> list[str]:
    """Lower-cased words (with inner apostrophes), numbers and single punctuation marks."""
    return _TOKEN.findall(" ".join(lines).lower())


# ----------------------------------------------------------------------------- the data set


def _passages(toks: list[int], seq_len: int) -> list[list[int]]:
    """Consecutive pieces of ``seq_len`` tokens; a last piece of at least half that, padded with 0."""
    out = [toks[i:i + seq_len] for i in range(0, len(toks), seq_len)]
    if out and len(out[-1]) < seq_len:
        if len(out[-1]) >= seq_len // 2:
            out[-1] = out[-1] + [PAD] * (seq_len - len(out[-1]))
        else:
            out.pop()
    return out


def _fitted(toks: list[int], seq_len: int) -> list[list[int]]:
    """One sequence: the first ``seq_len`` tokens, padded with 0 to that length."""
    return [toks[:seq_len] + [PAD] * max(0, seq_len - len(toks))]


def _encoded(name: str, split: dict[str, list[tuple[int, list[str]]]], *, cut: bool, seq_len: int, vocab_size: int,
             val_size: int, train_subset: int | None, seed: int, device: str | torch.device,
             classes: tuple[str, ...]) -> Dataset:
    """The Dataset of ``split`` (``train``/``val``/``test`` -> (label, tokens) units: chapters, or texts):
    a vocabulary of the ``vocab_size`` − 2 most frequent training words (ties by the word; 0 padding,
    1 ``<unk>``), units cut into passages (``cut``) or fitted to ``seq_len``, a class-balanced
    ``train_subset`` drawn with ``seed``."""
    counts = Counter(t for _, toks in split["train"] for t in toks)
    words = sorted(counts, key=lambda w: (-counts[w], w))[: vocab_size - 2]
    ids = {w: i + 2 for i, w in enumerate(words)}
    shape = _passages if cut else _fitted

    def encode(part: str) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for label, toks in split[part]:
            for p in shape([ids.get(t, UNK) for t in toks], seq_len):
                xs.append(p)
                ys.append(label)
        return torch.tensor(xs, dtype=torch.int64).view(-1, seq_len), torch.tensor(ys, dtype=torch.int64)

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (encode(p) for p in ("train", "val", "test"))
    if train_subset is not None:
        if train_subset > len(y_train):
            raise ValueError(f"data.train_subset={train_subset}: larger than the {len(y_train)} training "
                             f"{'passages' if cut else 'texts'} of {name!r} (data.seq_len={seq_len}); expected null or "
                             f"an integer in 1..{len(y_train)}")
        keep = balanced_subset(y_train, train_subset, generator=torch.Generator().manual_seed(seed))
        x_train, y_train = x_train[keep], y_train[keep]
    device = torch.device(device)
    return Dataset(name=name, task="classification", x_train=x_train.to(device), y_train=y_train.to(device),
                   x_test=x_test.to(device), y_test=y_test.to(device), num_classes=len(classes), mean=(), std=(),
                   x_val=x_val.to(device) if val_size else None, y_val=y_val.to(device) if val_size else None,
                   vocab_size=len(ids) + 2, vocab=("<pad>", "<unk>", *words), classes=tuple(classes))


def austen(*, root: str | None, val_size: int, split_seed: int, train_subset: int | None, seed: int,
           device: str | torch.device, seq_len: int = 64, vocab_size: int = 10000, **_: object) -> Dataset:
    """``data=austen``: passages of ``seq_len`` tokens labelled by novel (6 classes), split by whole
    chapters (see the module's docstring); ``train_subset`` keeps that many training passages,
    class-balanced, drawn with ``seed``."""
    seq_len, vocab_size = check_int("data.seq_len", seq_len, 8), check_int("data.vocab_size", vocab_size, 3)
    check_int("data.val_size", val_size, 0)
    folder = find_austen(root)
    if folder is None:
        raise DataNotFoundError(f"data=austen: janeaustenr's Rdata.rdb/Rdata.rdx not found in "
                                f"{', '.join(map(str, austen_places(root)))}; {HOW_TO_GET}")
    books = read_austen(folder)
    g = torch.Generator().manual_seed(split_seed)
    split: dict[str, list[tuple[int, list[str]]]] = {"train": [], "val": [], "test": []}
    per_book_val = val_size / len(books)
    for label, lines in enumerate(books.values()):
        chs = [tokens(c) for c in chapters(lines)]
        order = torch.randperm(len(chs), generator=g).tolist()
        n_test = max(1, round(TEST_SHARE * len(chs)))
        val_passages = 0
        for rank, i in enumerate(order):
            if rank < n_test:
                part = "test"
            elif val_passages < per_book_val and rank < len(order) - 1:  # at least one chapter stays to train on
                part, val_passages = "val", val_passages + len(chs[i]) // seq_len
            else:
                part = "train"
            split[part].append((label, chs[i]))
    return _encoded("austen", split, cut=True, seq_len=seq_len, vocab_size=vocab_size, val_size=val_size,
                    train_subset=train_subset, seed=seed, device=device, classes=tuple(books))


def hf_text(name: str) -> Callable[..., Dataset]:
    """``data=ag_news | sst2 | trec``: each text fitted to ``seq_len`` tokens (truncated, or padded with
    0), through Hugging Face ``datasets`` (:mod:`mixlab.data.hf`: local files under ``data.root/<name>``,
    else the Hub's copy cached under ``data.root``, default ``~/.cache/mixlab/huggingface``). Texts are
    independent sentences or news items, so the validation split is a stratified random draw from the
    training split (``split_seed``); the vocabulary is counted on what is left to train on."""
    def load(*, root: str | None, download: bool, val_size: int, split_seed: int, train_subset: int | None,
             seed: int, device: str | torch.device, seq_len: int = 64, vocab_size: int = 20000,
             **_: object) -> Dataset:
        from .hf import load_hf_text

        seq_len, vocab_size = check_int("data.seq_len", seq_len, 8), check_int("data.vocab_size", vocab_size, 3)
        data = load_hf_text(name, root=root if root is not None else base.DEFAULT_ROOT / "huggingface",
                            download=download)
        texts, labels = data.train
        if val_size >= len(labels):
            raise ValueError(f"data.val_size={val_size}: not smaller than the {len(labels)} training texts of "
                             f"{name!r}; expected an integer in 0..{len(labels) - 1}")
        y = torch.tensor(labels, dtype=torch.int64)
        if val_size:
            pool, held = stratified_split(y, n_test=val_size, generator=torch.Generator().manual_seed(split_seed))
        else:
            pool, held = torch.arange(len(labels)), torch.zeros(0, dtype=torch.int64)
        split = {"train": [(labels[i], tokens([texts[i]])) for i in pool.tolist()],
                 "val": [(labels[i], tokens([texts[i]])) for i in held.tolist()],
                 "test": [(lab, tokens([t])) for t, lab in zip(*data.test, strict=True)]}
        return _encoded(name, split, cut=False, seq_len=seq_len, vocab_size=vocab_size, val_size=val_size,
                        train_subset=train_subset, seed=seed, device=device, classes=tuple(data.classes))

    load.prepares_dataset = True  # type: ignore[attr-defined]
    load.__name__ = load.__qualname__ = name
    return load


for _name in ("ag_news", "sst2", "trec"):
    DATASETS.register(_name)(hf_text(_name))


austen.prepares_dataset = True  # type: ignore[attr-defined] - load_dataset hands it the whole data config


def _austen_sources(root: str | None) -> list[Path] | None:
    folder = find_austen(root)
    return None if folder is None else [folder / "Rdata.rdb", folder / "Rdata.rdx"]


austen.source = Source(_austen_sources, debian_package="r-cran-janeaustenr")  # type: ignore[attr-defined]
DATASETS.register("austen")(austen)
