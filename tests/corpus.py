"""A synthetic janeaustenr: six short novels written as R's lazy-load database (``Rdata.rdb`` +
``Rdata.rdx``, as makeLazyLoadDB writes them, through rdata's writer), so that text tests need no
download. Each chapter's lines carry a marker word naming the chapter, and each novel a word of its own."""
from __future__ import annotations

import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np

from mixlab.data.text import BOOKS

def _serialise(obj) -> bytes:
    import rdata

    with tempfile.TemporaryDirectory() as t:
        rdata.write_rds(Path(t) / "x.rds", obj, compression=None)
        return (Path(t) / "x.rds").read_bytes()


def make_db(d: Path, objects: dict) -> Path:
    """R's lazy-load database as makeLazyLoadDB writes it: Rdata.rdb (per object a 4-byte big-endian
    uncompressed length and a zlib stream of its serialisation) and Rdata.rdx (a gzip'd index)."""
    import rdata

    d.mkdir(parents=True, exist_ok=True)
    blobs, index, off = [], {}, 0
    for name, obj in objects.items():
        raw = _serialise(obj)
        blob = struct.pack(">I", len(raw)) + zlib.compress(raw)
        index[name] = np.array([off, len(blob)], dtype=np.int32)
        blobs.append(blob)
        off += len(blob)
    (d / "Rdata.rdb").write_bytes(b"".join(blobs))
    rdata.write_rds(d / "Rdata.rdx", {"variables": index, "references": {}, "compressed": np.array([True])},
                    compression="gzip")
    return d


LETTERS = "abcdefghijklmnop"


def novel(book: int, n_chapters: int = 10, lines_per_chapter: int = 5) -> np.ndarray:
    """A title page, then chapters of 8-token lines, each carrying the chapter's marker word
    ``q<book>z<chapter>`` (letters) and the novel's word ``word<book>``."""
    lines = ["A NOVEL", "", "by nobody"]
    for c in range(n_chapters):
        lines += [f"CHAPTER {c + 1}" if book % 2 else f"Chapter {'IVX'[c % 3]}", ""]
        lines += [f"the q{LETTERS[book]}z{LETTERS[c]} and common common common word{LETTERS[book]}."] * lines_per_chapter
    return np.array(lines + ["THE END"])


def write_corpus(root: Path) -> Path:
    """The six synthetic novels under ``root`` in the layout ``dpkg -x`` gives; returns ``root``."""
    make_db(root / "usr/lib/R/site-library/janeaustenr/data", {name: novel(i) for i, name in enumerate(BOOKS)})
    return root
