"""Text classification sets through Hugging Face ``datasets``: ``ag_news``, ``sst2``, ``trec``.

``load_hf_text(name, *, root, download)`` returns a :class:`TextData` (``train``/``test`` as (texts,
integer labels), ``classes``), from, in this order:

1. Local files ``<root>/<name>/train.{csv,jsonl,json,parquet}`` and ``test.{...}`` (sst2 also takes
   ``validation.{...}``) with the data set's own columns (:data:`SPECS`), read with
   ``datasets.load_dataset("csv" | "json" | "parquet", data_files=...)``: the formats ``datasets``
   loads locally, so data of your own in those columns works too. No network is used.
2. The Hugging Face Hub, cached under ``root`` (``cache_dir=root``). With ``download=False``, or
   offline (``HF_DATASETS_OFFLINE=1`` / ``HF_HUB_OFFLINE=1``, honoured even when set after ``datasets``
   was imported), only the cache is read and the network is never touched. Otherwise a TCP connection to
   the Hub (or to the proxy that would carry the request) is tried first, for at most
   ``PROBE_TIMEOUT_S``: if none opens, the cache is read as if offline, and without one the error comes
   at once, instead of after huggingface_hub's five retries (~25 s, a warning line each).

sst2's Hub test split is unlabelled (label -1), so its validation split serves as the test split;
trec uses the 6 coarse labels. Every failure is an :class:`HFTextError` whose message is one line
starting ``data=<name>:``, naming what is missing or garbled and what to do; the library's own
exception is kept in ``.original``. Written against datasets 5.2 / huggingface_hub 2.4. Not
thread-safe: offline mode is forced by setting the libraries' module globals while a load runs.
"""
from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from .base import DataFileError

__all__ = ["HFTextError", "HubSpec", "SPECS", "TextData", "hub_unreachable", "load_hf_text", "resolve_name"]

_TRUE = {"1", "ON", "YES", "TRUE"}
# seconds for the Hub's TCP connection: offline, it fails in ms (no route, no name); 5 s spares slow links
PROBE_TIMEOUT_S = 5.0
_SCRIPT_ERROR = "Dataset scripts are no longer supported"
# Accepted local file formats, in lookup order: extension -> datasets builder.
LOCAL_FORMATS = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


class HFTextError(DataFileError):
    """One-line error; the library's exception (if any) is in ``.original``."""

    def __init__(self, message: str, original: Optional[BaseException] = None):
        super().__init__(_one_line(message))
        self.original = original


@dataclass(frozen=True)
class HubSpec:
    """How one data set looks on the Hub and in local files."""

    name: str
    hub_id: str
    hub_config: Optional[str]
    text_column: str
    label_column: str
    classes: tuple[str, ...]
    train_split: str = "train"
    test_split: str = "test"  # split of the *Hub* data set served as "test"
    # Hub revision to retry with if the repo still holds a loading script
    # (datasets >= 4 refuses scripts; the Hub keeps a parquet export there).
    script_fallback_revision: Optional[str] = None

    @property
    def source(self) -> str:
        return f"hub:{self.hub_id}" + (f":{self.hub_config}" if self.hub_config else "")

    @property
    def cache_folder(self) -> str:
        """Folder ``datasets`` creates under cache_dir for this hub id."""
        return self.hub_id.replace("/", "___")


_AG = ("World", "Sports", "Business", "Sci/Tech")
_SST = ("negative", "positive")
_TREC = ("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM")

SPECS: dict[str, HubSpec] = {
    "ag_news": HubSpec("ag_news", "fancyzhx/ag_news", None, "text", "label", _AG),
    # The Hub's sst2 test split is unlabelled (label == -1): use validation.
    "sst2": HubSpec("sst2", "stanfordnlp/sst2", None, "sentence", "label", _SST, test_split="validation"),
    "trec": HubSpec(
        "trec", "CogComp/trec", None, "text", "coarse_label", _TREC,
        script_fallback_revision="refs/convert/parquet",
    ),
}

# Other spellings -> (canonical name, spec). "glue/sst2" reads GLUE's copy.
_ALIASES: dict[str, HubSpec] = {
    "ag_news": SPECS["ag_news"],
    "fancyzhx/ag_news": SPECS["ag_news"],
    "sst2": SPECS["sst2"],
    "stanfordnlp/sst2": SPECS["sst2"],
    "glue/sst2": HubSpec("sst2", "nyu-mll/glue", "sst2", "sentence", "label", _SST, test_split="validation"),
    "nyu-mll/glue/sst2": HubSpec("sst2", "nyu-mll/glue", "sst2", "sentence", "label", _SST, test_split="validation"),
    "trec": SPECS["trec"],
    "cogcomp/trec": SPECS["trec"],
}


def resolve_name(name: str) -> HubSpec:
    spec = _ALIASES.get(name.strip().lower().replace(":", "/"))
    if spec is None:
        raise HFTextError(f"data={name}: unknown text data set; known: {', '.join(sorted(_ALIASES))}")
    return spec


@dataclass(frozen=True)
class TextData:
    name: str
    train: tuple[list[str], list[int]]
    test: tuple[list[str], list[int]]
    classes: list[str]
    source: str
    test_split: str = "test"
    files: dict[str, str] = field(default_factory=dict)  # split -> local file, if local

    def __getitem__(self, key: str) -> Any:
        if key not in ("train", "test", "classes"):
            raise KeyError(key)
        return getattr(self, key)

    def keys(self) -> list[str]:
        return ["train", "test", "classes"]


# --------------------------------------------------------------------------- helpers


def _one_line(text: str) -> str:
    return re.sub(r"\s*[\r\n]+\s*", " | ", str(text)).strip(" |")


def _first_line(text: str) -> str:
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return ""


def _describe(exc: BaseException) -> str:
    """``Type: message`` of the innermost informative exception in the chain."""
    chain, seen = [exc], {id(exc)}
    cur: Optional[BaseException] = exc
    while cur is not None:
        cur = cur.__cause__ or (None if cur.__suppress_context__ else cur.__context__)
        if cur is None or id(cur) in seen:
            break
        seen.add(id(cur))
        chain.append(cur)
    generic = {"An error occurred while generating the dataset", ""}
    for e in reversed(chain):  # innermost first
        msg = _one_line(str(e))
        if msg not in generic:
            return f"{type(e).__name__}: {msg[:300]}" + ("..." if len(msg) > 300 else "")
    return type(exc).__name__


def _env_offline() -> bool:
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in _TRUE:
            return True
    try:  # value the libraries read from the environment at import time
        import datasets.config as dconfig

        return bool(dconfig.HF_HUB_OFFLINE)
    except Exception:
        return False


def hub_unreachable(timeout: float = PROBE_TIMEOUT_S) -> Optional[str]:
    """Why the Hugging Face Hub (``HF_ENDPOINT``) cannot be reached from here, as ``host:port: reason``, or
    None when a TCP connection opens to it, or to the proxy (``HTTPS_PROXY``/``ALL_PROXY``, unless
    ``NO_PROXY`` exempts the Hub) that would carry the request, within ``timeout`` seconds (the name lookup
    included, which sockets do not time: it runs in a thread of its own)."""
    from urllib.parse import urlsplit
    from urllib.request import getproxies, proxy_bypass

    import datasets.config as dconfig

    hub = urlsplit(dconfig.HF_ENDPOINT)
    host, port = hub.hostname or "", hub.port or (443 if hub.scheme == "https" else 80)
    proxies = getproxies()
    proxy = proxies.get(hub.scheme) or proxies.get("all")
    if proxy and not proxy_bypass(host):
        via = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = via.hostname or "", via.port or (443 if via.scheme == "https" else 80)
    answer: list[Optional[str]] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            answer.append(None)
        except OSError as e:
            answer.append(f"{host}:{port}: {e.strerror or type(e).__name__}")

    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(timeout)
    return answer[0] if answer else f"{host}:{port}: no answer within {timeout:g} s"


@contextlib.contextmanager
def _forced_offline(enabled: bool = True) -> Iterator[None]:
    """Make datasets/huggingface_hub refuse all network access for a while.

    Both libraries read these module globals at call time (datasets:
    ``config.HF_HUB_OFFLINE`` in ``_raise_if_offline_mode_is_enabled`` and
    ``increase_load_count``; huggingface_hub: ``constants.is_offline_mode()``
    in its HTTP hook), while the environment variables are read only once, at
    import.
    """
    if not enabled:
        yield
        return
    import datasets.config as dconfig
    import huggingface_hub.constants as hconst

    saved = (dconfig.HF_HUB_OFFLINE, getattr(dconfig, "HF_DATASETS_OFFLINE", None), hconst.HF_HUB_OFFLINE)
    dconfig.HF_HUB_OFFLINE = True
    if hasattr(dconfig, "HF_DATASETS_OFFLINE"):
        dconfig.HF_DATASETS_OFFLINE = True
    hconst.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        dconfig.HF_HUB_OFFLINE = saved[0]
        if saved[1] is not None:
            dconfig.HF_DATASETS_OFFLINE = saved[1]
        hconst.HF_HUB_OFFLINE = saved[2]


def _find_local(spec: HubSpec, folder: Path) -> dict[str, Optional[Path]]:
    """split -> file (or None); {} when the folder holds no split file at all."""
    if not folder.is_dir():
        return {}
    wanted = {"train": ("train",), "test": ("test",) + ((spec.test_split,) if spec.test_split != "test" else ())}
    found: dict[str, Optional[Path]] = {}
    for split, stems in wanted.items():
        hits = [folder / f"{stem}{ext}" for stem in stems for ext in LOCAL_FORMATS if (folder / f"{stem}{ext}").is_file()]
        found[split] = hits[0] if hits else None
    return found if any(found.values()) else {}


def _labels_to_int(values: list, classes: list[str], where: str, spec: HubSpec) -> list[int]:
    index = {c: i for i, c in enumerate(classes)}
    index.update({c.lower(): i for i, c in enumerate(classes)})
    out: list[int] = []
    for row, v in enumerate(values):
        if v is None:
            raise HFTextError(f"{where}: row {row}: label is empty, not an integer or class name")
        if isinstance(v, bool):
            raise HFTextError(f"{where}: row {row}: label {v!r} is not a class index or name")
        if isinstance(v, str):
            key = v.strip()
            if key in index or key.lower() in index:
                out.append(index.get(key, index.get(key.lower())))
                continue
            try:
                v = int(key)
            except ValueError:
                raise HFTextError(
                    f"{where}: row {row}: label {v!r} is neither an integer nor one of {classes}"
                ) from None
        if isinstance(v, float):
            if v != v or not v.is_integer():
                raise HFTextError(f"{where}: row {row}: label {v!r} is not an integer (empty cell?)")
            v = int(v)
        if not isinstance(v, int):
            raise HFTextError(f"{where}: row {row}: label {v!r} has unsupported type {type(v).__name__}")
        if v == -1:
            hint = " (the Hub's sst2 test split is unlabelled; use its validation split as test)" if spec.name == "sst2" else ""
            raise HFTextError(f"{where}: row {row}: label -1 means unlabelled{hint}")
        if not 0 <= v < len(classes):
            raise HFTextError(f"{where}: row {row}: label {v} is outside 0..{len(classes) - 1} ({len(classes)} classes)")
        out.append(v)
    return out


def _extract(ds: Any, spec: HubSpec, where: str, classes: list[str]) -> tuple[list[str], list[int]]:
    cols = list(ds.column_names)
    missing = [c for c in (spec.text_column, spec.label_column) if c not in cols]
    if missing:
        raise HFTextError(
            f"{where}: missing column(s) {', '.join(missing)} (found: {', '.join(map(str, cols)) or 'none'}); "
            f"{spec.name} needs columns {spec.text_column},{spec.label_column}"
        )
    texts = list(ds[spec.text_column])
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise HFTextError(
            f"{where}: column {spec.text_column} has {len(bad)} non-text value(s), first at row {bad[0]}: "
            f"{texts[bad[0]]!r} (empty cell or garbled file?)"
        )
    labels = _labels_to_int(list(ds[spec.label_column]), classes, where, spec)
    if not texts:
        raise HFTextError(f"{where}: no rows")
    return texts, labels


def _classes_from(ds: Any, spec: HubSpec, where: str) -> list[str]:
    feat = getattr(ds, "features", {}).get(spec.label_column) if hasattr(ds, "features") else None
    names = getattr(feat, "names", None)
    if names:
        names = list(names)
        if len(names) != len(spec.classes):
            raise HFTextError(
                f"{where}: column {spec.label_column} has {len(names)} classes {names}, "
                f"expected {len(spec.classes)} for {spec.name}"
            )
        return names
    return list(spec.classes)


# --------------------------------------------------------------------------- local files


def _load_local(spec: HubSpec, folder: Path, files: dict[str, Optional[Path]], root: Path) -> TextData:
    import datasets

    for split, path in files.items():
        if path is None:
            tried = ", ".join(f"{s}{e}" for s in ((split,) if split == "train" else ("test", spec.test_split)) for e in LOCAL_FORMATS)
            other = next(p for p in files.values() if p is not None)
            raise HFTextError(
                f"data={spec.name}: found {other} but no {split} file in {folder} (looked for {tried}); "
                f"add it, or remove {folder} to use the Hugging Face copy"
            )
    out: dict[str, tuple[list[str], list[int]]] = {}
    classes: Optional[list[str]] = None
    used: dict[str, str] = {}
    for split in ("train", "test"):
        path = files[split]
        assert path is not None
        where = f"data={spec.name}: {path}"
        builder = LOCAL_FORMATS[path.suffix.lower()]
        try:
            with _forced_offline():  # local files need no network (not even download counts)
                ds = datasets.load_dataset(
                    builder, data_files={split: str(path)}, split=split, cache_dir=str(root)
                )
        except HFTextError:
            raise
        except Exception as e:  # DatasetGenerationError, ArrowInvalid, ValueError, EmptyDataError, ...
            raise HFTextError(f"{where}: cannot read as {builder}: {_describe(e)}", e) from None
        if classes is None:
            classes = _classes_from(ds, spec, where)
        out[split] = _extract(ds, spec, where, classes)
        used[split] = str(path)
    assert classes is not None
    test_split = files["test"].stem if files["test"] is not None else "test"
    return TextData(spec.name, out["train"], out["test"], classes, f"local:{folder}", test_split, used)


# --------------------------------------------------------------------------- hub


def _missing_message(spec: HubSpec, root: Path, why: str) -> str:
    return (
        f"data={spec.name}: not in {root} and {why}; run once with network and data.download=true, "
        f"or copy the Hugging Face cache folder {spec.cache_folder} to {root}, "
        f"or put train/test .csv/.jsonl/.parquet files with columns "
        f"{spec.text_column},{spec.label_column} in {root / spec.name}"
    )


def _call_hub(spec: HubSpec, root: Path, offline: bool, revision: Optional[str] = None) -> Any:
    import datasets

    kwargs: dict[str, Any] = dict(
        cache_dir=str(root),
        # also keep the small files fetched while resolving the repo (yaml,
        # dataset_infos) under root instead of ~/.cache/huggingface/datasets
        download_config=datasets.DownloadConfig(cache_dir=str(root / "downloads")),
    )
    if revision is not None:
        kwargs["revision"] = revision
    with _forced_offline(offline):
        return datasets.load_dataset(spec.hub_id, spec.hub_config, **kwargs)


def _load_hub(spec: HubSpec, root: Path, download: bool) -> TextData:
    offline = (not download) or _env_offline()
    why = "data.download=false" if not download else "offline (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set)"
    unreachable = None if offline else hub_unreachable()
    if unreachable is not None:  # the cache is all there is: read it offline, or say so now
        offline, why = True, f"the Hugging Face Hub cannot be reached ({unreachable})"
        if not (root / spec.cache_folder).is_dir():
            raise HFTextError(_missing_message(spec, root, why))
    try:
        try:
            dd = _call_hub(spec, root, offline)
        except RuntimeError as e:
            if _SCRIPT_ERROR in str(e) and spec.script_fallback_revision and not offline:
                dd = _call_hub(spec, root, offline, spec.script_fallback_revision)
            else:
                raise
    except HFTextError:
        raise
    except Exception as e:
        desc = _describe(e)
        name = type(e).__name__
        if offline:
            cache = root / spec.cache_folder
            if not cache.is_dir():
                raise HFTextError(_missing_message(spec, root, why) + f" ({desc})", e) from None
            # folder there but unreadable: wrong config folder, truncated arrow, bad json, ...
            raise HFTextError(
                f"data={spec.name}: cache {cache} for {spec.hub_id} is unusable offline ({desc}); "
                f"re-download with data.download=true or copy a clean {spec.cache_folder} folder to {root}",
                e,
            ) from None
        if isinstance(e, ConnectionError):
            raise HFTextError(
                f"data={spec.name}: cannot reach the Hugging Face Hub for {spec.hub_id} and it is not cached in {root} "
                f"({desc}); check the network/proxy, or copy the Hugging Face cache folder {spec.cache_folder} to {root} "
                f"and use data.download=false",
                e,
            ) from None
        if name in ("DatasetNotFoundError", "DataFilesNotFoundError") or isinstance(e, FileNotFoundError):
            raise HFTextError(f"data={spec.name}: {spec.hub_id} not found on the Hub ({desc})", e) from None
        raise HFTextError(f"data={spec.name}: loading {spec.source} into {root} failed ({desc})", e) from None

    out: dict[str, tuple[list[str], list[int]]] = {}
    classes: Optional[list[str]] = None
    for key, split in (("train", spec.train_split), ("test", spec.test_split)):
        where = f"data={spec.name}: {spec.source} split {split}"
        if split not in dd:
            raise HFTextError(f"{where} is missing (splits: {', '.join(dd.keys())})")
        if classes is None:
            classes = _classes_from(dd[split], spec, where)
        out[key] = _extract(dd[split], spec, where, classes)
    assert classes is not None
    return TextData(spec.name, out["train"], out["test"], classes, spec.source, spec.test_split)


# --------------------------------------------------------------------------- entry point


def load_hf_text(name: str, *, root: str | os.PathLike, download: bool) -> TextData:
    """Load ``ag_news`` / ``sst2`` / ``trec`` as lists; see the module docstring."""
    spec = resolve_name(name)
    root_path = Path(root).expanduser().resolve()
    try:
        import datasets  # noqa: F401  (imported lazily: ~0.7 s)
    except ImportError as e:
        raise HFTextError(f"data={spec.name}: the 'datasets' package is not installed ({e}); pip install datasets", e) from None
    folder = root_path / spec.name
    files = _find_local(spec, folder)
    if files:
        return _load_local(spec, folder, files, root_path)
    return _load_hub(spec, root_path, download)
