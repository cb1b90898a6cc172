"""Where a data set's files came from: the Debian package that installed them, and its version.

A loader whose files a Debian package provides declares it with :class:`Source` (its ``source``
attribute): the files it reads for a given ``data.root`` and the package's name. ``load_dataset``
then records :func:`debian_package` of those files beside the fingerprints (``dataset.package``), so a
run says not only which examples it saw but which release of the packaged data set they came from.

The answer comes from dpkg's own database, never from the path alone: ``dpkg-query -S`` names the
installed package that owns each file, ``dpkg-query -W`` its version. Files a package did not install
(a folder of your own, a download) give None, as does a machine without dpkg. One exception, because
``scripts/setup.sh`` fetches Jane Austen's novels that way: files inside a ``dpkg -x`` unpacking of the
declared package (no dpkg database entry, but the package's own ``usr/share/doc/<name>/changelog.Debian.gz``
beside them) are recorded with the version that changelog names and ``"unpacked": true``.
"""
from __future__ import annotations

import functools
import gzip
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

__all__ = ["Source", "debian_package", "source_package"]

_DPKG_TIMEOUT_S = 10.0
# dpkg-query -S reads these as a glob pattern, not a path; such a path is not looked up at all.
_GLOB_CHARS = re.compile(r"[*?\[\]\\]")
# The first line of a Debian changelog: "source (version) distribution; urgency=...".
_CHANGELOG_HEAD = re.compile(r"^[a-z0-9][a-z0-9+.-]* \(([^()\s]+)\)")


@dataclass(frozen=True)
class Source:
    """What a loader reads: ``files(root)`` gives the files it takes its data from with that ``data.root``
    (None where it found none, e.g. before a download); ``debian_package`` names the Debian package
    that provides them where it is installed (or unpacked)."""

    files: Callable[[str | None], Iterable[Path] | None]
    debian_package: str | None = None


def source_package(loader: object, root: str | None) -> dict[str, object] | None:
    """:func:`debian_package` of the files ``loader`` declares (its ``source``, a :class:`Source`) for
    ``root``; None for a loader that declares none. Never raises: provenance is a record, not a check."""
    source = getattr(loader, "source", None)
    if not isinstance(source, Source):
        return None
    try:
        files = source.files(root)
    except (OSError, ValueError):
        return None
    return None if files is None else debian_package(files, name=source.debian_package)


def debian_package(paths: Iterable[str | os.PathLike[str]], *, name: str | None = None) -> dict[str, object] | None:
    """``{"name": package, "version": its Debian version}`` when dpkg's database says one installed
    package owns every file in ``paths``; else, with ``name`` given, ``{"name": name, "version": ...,
    "unpacked": True}`` when every file lies in a ``dpkg -x`` tree of that package (its
    ``usr/share/doc/<name>/changelog.Debian.gz`` names the version); else None (no files, no dpkg, files
    of no package or of several, a package not installed). dpkg is asked once per set of files and
    package (the answers are cached for the process)."""
    files = tuple(os.path.abspath(p) for p in paths)
    if not files:
        return None
    owner = _owner(files)
    if owner is not None:
        version = _installed_version(owner)
        if version is not None:
            return {"name": owner, "version": version}
    if name is not None:
        versions = {_unpacked_version(str(Path(f).resolve()), name) for f in files}
        if len(versions) == 1 and (version := versions.pop()) is not None:
            return {"name": name, "version": version, "unpacked": True}
    return None


def _run(*args: str) -> subprocess.CompletedProcess[str] | None:
    """dpkg-query with ``args`` in the C locale; None where it is missing or does not answer in time."""
    exe = shutil.which("dpkg-query")
    if exe is None:
        return None
    try:
        return subprocess.run([exe, *args], capture_output=True, text=True, timeout=_DPKG_TIMEOUT_S,
                              env={**os.environ, "LC_ALL": "C"}, check=False)
    except (OSError, subprocess.SubprocessError):
        return None


@functools.lru_cache(maxsize=256)
def _owner(files: tuple[str, ...]) -> str | None:
    """The one package dpkg says owns every file (each asked as given and with links resolved: dpkg lists a
    file under the path its package ships, which a link may hide); None if any file is owned by none, or
    by another package than the rest."""
    asked = {f: {f, str(Path(f).resolve())} for f in files}
    paths = sorted({p for ps in asked.values() for p in ps if not _GLOB_CHARS.search(p)})
    done = _run("-S", *paths) if paths else None
    if done is None:
        return None
    owners: dict[str, set[str]] = {}
    for line in done.stdout.splitlines():
        if line.startswith("diversion by ") or ": " not in line:
            continue
        packages, path = line.split(": ", 1)
        # "pkg:arch" on multi-arch systems; a directory shared by several packages lists them all
        owners.setdefault(path, set()).update(p.split(":")[0].strip() for p in packages.split(","))
    found = {frozenset(set().union(*(owners.get(p, set()) for p in ps))) for ps in asked.values()}
    if len(found) != 1:
        return None
    (names,) = found
    return next(iter(names)) if len(names) == 1 else None


@functools.lru_cache(maxsize=64)
def _installed_version(package: str) -> str | None:
    """``package``'s version if dpkg has it installed (status "?i": installed or on hold), else None."""
    done = _run("-W", "-f=${db:Status-Abbrev}\t${Version}", package)
    if done is None or done.returncode != 0 or "\t" not in done.stdout:
        return None
    status, version = done.stdout.split("\t", 1)
    if status[1:2] != "i":
        return None
    return version.strip() or None


@functools.lru_cache(maxsize=256)
def _unpacked_version(path: str, package: str) -> str | None:
    """The version of ``package`` if ``path`` lies below ``<tree>/usr`` of a ``dpkg -x`` tree holding that
    package's ``usr/share/doc/<package>/changelog.Debian.gz`` (the first line names the version). Not the
    system's own tree: below ``/`` only dpkg's database says which files a package installed."""
    for tree in Path(path).parents[:-1]:
        changelog = tree / "usr" / "share" / "doc" / package / "changelog.Debian.gz"
        if Path(path).is_relative_to(tree / "usr") and changelog.is_file():
            try:
                with gzip.open(changelog, "rt", encoding="utf-8") as f:
                    head = f.readline()
            except (OSError, EOFError, UnicodeDecodeError):
                return None
            match = _CHANGELOG_HEAD.match(head)
            return match.group(1) if match else None
    return None
