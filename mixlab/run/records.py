"""Run records: atomic files, the per-epoch metrics log, checkpoints, provenance, RNG state.

Every write goes to a temporary file in the destination's directory, is flushed and fsynced,
and then renamed over the destination with ``os.replace`` (atomic on POSIX and Windows when
both paths are on one file system, which a shared directory guarantees). A run killed at any
moment therefore leaves either the old file or the new one, never a torn one.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import secrets
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

__all__ = [
    "MetricsLog",
    "RunLock",
    "UnreadableCheckpoint",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "git_info",
    "loaded_git",
    "load_checkpoint",
    "read_json",
    "remove_stale_temps",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "versions",
]

PathLike = str | os.PathLike[str]

_GIT_TIMEOUT_S = 5.0
# Variables that would make git look at some other repository than the one containing `cwd`
# (they are set, for example, when code runs inside a git hook).
_GIT_LOCATION_VARS = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR", "GIT_OBJECT_DIRECTORY")


# ----------------------------------------------------------------------------- atomic writes


def _fsync_dir(directory: Path) -> None:
    """Persist a rename by fsyncing its directory; a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# `.<destination name>.<12 hex digits>.tmp`: the temp files of atomic_write.
_TEMP_NAME = re.compile(r"\..+\.[0-9a-f]{12}\.tmp")


def atomic_write(path: PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(f)`` on a fresh temp file next to ``path``, fsync it, then ``os.replace`` it onto ``path``:
    e.g. ``atomic_write(p, lambda f: save_image(grid, f, format="png"))``.

    On any error the temp file is removed and the error re-raised; ``path`` is untouched.
    Parent directories are created as needed. Only SIGKILL (or a power cut) can leave the temp
    file behind; :func:`remove_stale_temps` clears those.
    """
    if not callable(write):
        raise ValueError(f"write: expected a callable taking a binary file, got {type(write).__name__}")
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(6)}.tmp")
    # os.open with mode 0o666 lets the umask decide the final permissions, as for a plain
    # open(); tempfile.mkstemp would leave the result readable by its owner only.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        # BaseException too: a KeyboardInterrupt mid-write must not leave the temp file behind.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(dest.parent)


def remove_stale_temps(directory: PathLike) -> list[Path]:
    """Delete the temp files that writes killed before their rename left in ``directory``; return them.

    Call it only where no other process is writing into ``directory`` at the same time (a run
    directory belongs to one run), since it cannot tell a dead writer's temp file from a live one's.
    A missing directory has none.
    """
    try:
        entries = list(Path(directory).iterdir())
    except FileNotFoundError:
        return []
    removed = []
    for p in entries:
        if _TEMP_NAME.fullmatch(p.name) and p.is_file() and not p.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: the file holds either its old content or all of ``data``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"data: expected bytes, got {type(data).__name__}")
    atomic_write(path, lambda f: f.write(data))


def _json_safe(obj: Any) -> Any:
    """Copy of ``obj`` that strict JSON accepts: non-finite floats -> None, tuples -> lists,
    tensors and NumPy values -> their Python equivalents (``tolist``)."""
    if isinstance(obj, (torch.Tensor, np.ndarray, np.generic)):
        obj = obj.tolist()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _dumps(obj: Any, indent: int | None) -> str:
    # allow_nan=False after sanitising: a NaN that slipped through is a bug to hear about,
    # not an invalid "NaN" token that strict JSON readers reject.
    return json.dumps(_json_safe(obj), indent=indent, allow_nan=False)


def atomic_write_json(path: PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON (indent 2, trailing newline) atomically; NaN and ±inf are written as null."""
    text = _dumps(obj, indent=2) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def read_json(path: PathLike) -> dict[str, Any] | None:
    """The JSON object stored at ``path``, or None if the file does not exist."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    obj = json.loads(text)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object at the top level, got {type(obj).__name__}")
    return obj


# ----------------------------------------------------------------------------- metrics log


class MetricsLog:
    """``metrics.jsonl``: one JSON object per line, one line per epoch, each with an ``"epoch"`` key.

    Every :meth:`append` rewrites the whole file atomically: a killed run never leaves half a
    line, and the cost (a few hundred short lines) is negligible next to an epoch.
    Non-finite floats are stored as null, as in :func:`atomic_write_json`.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)

    def rows(self) -> list[dict[str, Any]]:
        """All rows in file order ([] if the file does not exist yet)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        rows = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{self.path}:{lineno}: expected a JSON object, got unparsable text ({e})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{self.path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
        return rows

    def _write(self, rows: list[dict[str, Any]]) -> None:
        text = "".join(_dumps(row, indent=None) + "\n" for row in rows)
        atomic_write_bytes(self.path, text.encode("utf-8"))

    def append(self, row: Mapping[str, Any]) -> None:
        """Add one epoch's row (must contain ``"epoch"``, which :meth:`truncate` relies on)."""
        if not isinstance(row, Mapping):
            raise ValueError(f"row: expected a dict, got {type(row).__name__}")
        if "epoch" not in row:
            raise ValueError(f"row: expected an 'epoch' key, got keys {sorted(map(str, row))}")
        self._write([*self.rows(), dict(row)])

    def truncate(self, n_epochs: int) -> None:
        """Keep only rows with ``epoch <= n_epochs`` (resuming from the checkpoint of epoch ``n_epochs``)."""
        rows = self.rows()
        for i, row in enumerate(rows):
            if not isinstance(row.get("epoch"), (int, float)):
                raise ValueError(f"{self.path}: row {i}: expected a numeric 'epoch', got {row.get('epoch')!r}")
        kept = [row for row in rows if row["epoch"] <= n_epochs]
        if len(kept) != len(rows):  # nothing to drop: leave the file (and its mtime) alone
            self._write(kept)


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: PathLike, state: dict[str, Any]) -> None:
    """``torch.save(state)`` atomically (temp file in the same directory, fsync, ``os.replace``).

    To be loadable by :func:`load_checkpoint`, ``state`` must hold only what
    ``torch.load(weights_only=True)`` accepts: tensors, containers, numbers, strings, None.
    """
    atomic_write(path, lambda f: torch.save(state, f))


class UnreadableCheckpoint(ValueError):
    """A checkpoint file that exists but cannot be loaded (truncated, damaged, not a checkpoint)."""


def load_checkpoint(path: PathLike, map_location: Any = "cpu") -> dict[str, Any] | None:
    """The checkpoint at ``path`` loaded with ``weights_only=True``, or None if the file does not exist.

    ``weights_only`` refuses to unpickle arbitrary objects, so a tampered or foreign checkpoint cannot
    run code. A file that cannot be loaded for any reason (truncated, damaged, tampered, not a dict)
    raises ``UnreadableCheckpoint``, one line naming the file and the two ways on.
    """
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        return None
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, UnpicklingError, EOFError, ... for bad bytes
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UnreadableCheckpoint(_unreadable(path, why)) from None
    if not isinstance(state, dict):
        raise UnreadableCheckpoint(_unreadable(path, f"it holds a {type(state).__name__}, not a checkpoint"))
    return state


def _unreadable(path: PathLike, why: str) -> str:
    return (f"{path}: cannot be read ({why}); expected a checkpoint written by mixlab: restore it from a copy, "
            f"or delete it to start the run over (its records are left as they are)")


# ----------------------------------------------------------------------------- one writer per folder

LOCK_NAME = ".mixlab.lock"


class RunLock:
    """One writer per run folder: an exclusive ``flock`` on ``<folder>/.mixlab.lock``, held while a run
    writes there. The kernel releases it when its process ends however it ends (SIGKILL, a crash, a
    power cut), so a dead writer never leaves the folder stuck; a live one is named in the refusal
    (pid, host, start, command: the lock file's text). The file itself is never removed while the
    folder holds anything else (removing a lock file lets two processes lock two different files).

    ``acquire`` returns None, or the one-line refusal (naming ``folder_key``, what to change); ``announce``
    writes the holder's pid, host, start and command once its run has passed its checks; ``release`` unlocks and, with ``discard``,
    removes the folder again where nothing but the lock file is in it (a refused run leaves no folder), unless
    the folder is the working directory (``hydra.run.dir=.``): that one is the user's, and stays.
    Where ``fcntl`` is missing (Windows) there is no lock: one writer is then the user's to keep.
    """

    def __init__(self, folder: PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self, folder_key: str = "hydra.run.dir") -> str | None:
        try:
            import fcntl
        except ImportError:
            return None
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = self.holder()
            os.close(fd)
            return (f"{self.folder}: in use by another mixlab run ({holder}); one run writes to a folder at a time: "
                    f"expected another {folder_key}, or wait for that run to end")
        self._fd = fd
        return None

    def announce(self) -> None:
        """Say who holds the lock, in its file, for a refused writer to name: called once the run has passed
        its checks (a run refused before writes nothing, not even this)."""
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": shlex.join(getattr(sys, "orig_argv", sys.argv))[:300]}
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, (json.dumps(me) + "\n").encode(), 0)

    def holder(self) -> str:
        """Who holds the lock, as its file says; a holder still checking its run has not said so yet."""
        try:
            who = json.loads(self.path.read_text(encoding="utf-8"))
            if who["host"] == socket.gethostname():
                os.kill(who["pid"], 0)  # the last announcer may be gone: then the holder has not announced yet
            return f"pid {who['pid']} on {who['host']} since {who['since']}: {who['command']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "a process that is checking its run"

    def release(self, *, discard: bool = False) -> None:
        if self._fd is None:
            return
        if discard and [p.name for p in self.folder.iterdir()] == [LOCK_NAME]:
            with contextlib.suppress(OSError):
                self.path.unlink()
                if self.folder.resolve() != Path.cwd().resolve():  # the user's working directory stays
                    self.folder.rmdir()
        os.close(self._fd)  # closing the last descriptor releases the flock
        self._fd = None


# ----------------------------------------------------------------------------- provenance


def _git(args: list[str], cwd: Path) -> str | None:
    """stdout of ``git <args>`` in ``cwd``, or None on any failure (no git, no repo, timeout)."""
    env = {k: v for k, v in os.environ.items() if k not in _GIT_LOCATION_VARS}
    try:
        proc = subprocess.run(
            # --no-optional-locks: `status` would otherwise refresh the index under a lock and
            # could collide with a git command the user runs at the same time.
            ["git", "--no-optional-locks", *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def git_info(start: PathLike | None = None) -> dict[str, Any]:
    """``{"commit": HEAD sha or None, "dirty": bool or None}`` of the git repo containing ``start``.

    ``start`` defaults to the mixlab package directory (a file path means its directory).
    ``dirty`` counts modified, staged and untracked (not ignored) files. Never raises: a
    missing git executable, no repository or a timeout give None values.
    """
    if start is None:
        cwd = Path(__file__).resolve().parent
    else:
        cwd = Path(start)
        if cwd.is_file():
            cwd = cwd.parent
    sha = _git(["rev-parse", "--verify", "HEAD"], cwd)
    status = _git(["status", "--porcelain"], cwd)
    return {
        "commit": sha.strip() if sha else None,
        "dirty": None if status is None else bool(status.strip()),
    }


_LOADED: dict[str, Any] | None = None


def loaded_git() -> dict[str, Any]:
    """``git_info()`` of mixlab's checkout as this process first read it, which is the code the process loaded.
    A study or a sweep trains many runs in one process while the checkout may move on, so each run records that
    first state. Where HEAD or the dirty flag has changed since, ``now`` holds this call's ``git_info()``: a
    module the process imports later (the report's, say) comes from that newer state."""
    global _LOADED
    now = git_info()
    if _LOADED is None:
        _LOADED = now
    return {**_LOADED, **({"now": now} if now != _LOADED else {})}


def _dist_version(name: str) -> str | None:
    # Read installed metadata instead of importing: importing wandb alone takes seconds.
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    """Versions of Python and the main packages (None for a package that is not installed)."""
    import mixlab

    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "torchvision": _dist_version("torchvision"),
        "mixlab": getattr(mixlab, "__version__", None),
        "hydra": _dist_version("hydra-core"),
        "wandb": _dist_version("wandb"),
    }


# ----------------------------------------------------------------------------- RNG state


def rng_state(generators: Mapping[str, torch.Generator]) -> dict[str, Any]:
    """Snapshot of torch's global RNGs and of named generators, loadable with ``weights_only=True``.

    Returns ``{"torch": ByteTensor, "cuda": [ByteTensor per device] ([] without CUDA),
    "generators": {name: ByteTensor}}``: only tensors, lists, dicts and strings.
    """
    for name, g in generators.items():
        if not isinstance(g, torch.Generator):
            raise ValueError(f"generators[{name!r}]: expected a torch.Generator, got {type(g).__name__}")
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {name: g.get_state() for name, g in generators.items()},
    }


def set_rng_state(state: Mapping[str, Any], generators: Mapping[str, torch.Generator]) -> None:
    """Restore a :func:`rng_state` snapshot into torch's global RNGs and into ``generators``.

    Every name in ``generators`` must be in the snapshot (extra names in the snapshot are
    ignored). CUDA states are restored for the devices present in both the snapshot and this
    machine. States may have been loaded onto any device; generators need them on the CPU.
    """
    missing = [k for k in ("torch", "generators") if k not in state]
    if missing:
        raise ValueError(f"state: expected keys 'torch', 'cuda', 'generators', got {sorted(state)}")
    saved = state["generators"]
    absent = sorted(set(generators) - set(saved))
    if absent:
        raise ValueError(
            f"state: expected generator states for {sorted(generators)}, got {sorted(saved)} (missing {absent})"
        )
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        for device, s in enumerate(cuda_states[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s.cpu(), device)
    for name, g in generators.items():
        g.set_state(saved[name].cpu())
