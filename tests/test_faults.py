"""Fault tier (issue 6): SIGKILL at any moment, bad data files, batches of size 1, W&B failures.

Kill at any moment
    A run of the real CLI entry point (``mixlab.__main__.main`` with ``python -m mixlab``'s argv) is
    killed with SIGKILL at a point drawn at random with a fixed seed: after training step k, during
    evaluation, part-way through writing a record or the checkpoint (N bytes of it reached the disk),
    after a record's temporary file is complete but before its rename, or right after the rename.
    The same command is then run again on the same run directory and must end with exactly the
    records of one uninterrupted run (timing fields aside); right after each kill every record on
    disk must be whole (parsable JSON, loadable checkpoint, at most one row ahead of the checkpoint).
    Some points are double kills: the re-run is itself killed at a second random point.

    Each run is a fork of a "zygote" process that imported torch, Hydra and mixlab once, so a run
    costs its training, not ten seconds of imports; the code path from ``main()`` on is the one
    ``python -m mixlab`` takes. ``test_kill_and_rerun_with_the_real_command`` checks one kill with
    fresh interpreters end to end, and that it matches the forked reference.

    The kill helper intercepts file writes at ``open``/``os.fdopen`` and renames at
    ``os.replace``/``os.rename``, not inside mixlab, so a non-atomic write (straight to the
    destination) would be caught as a torn record rather than slip past the patch.
"""
from __future__ import annotations

import gzip
import json
import os
import random
import re
import shlex
import signal
import subprocess
import tempfile
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from mixlab.data import images as D
from mixlab.data import load_dataset
from mixlab.engine.lam import LAMBDAS
from mixlab.engine.mixing import MIXERS
from mixlab.engine.pairing import PAIRINGS
from mixlab.run.records import MetricsLog, load_checkpoint, read_json, remove_stale_temps
from mixlab.run.train import train

from .test_config import compose_cfg
from .test_data import _pickle, write_idx, write_tiny_fashion

ROOT = Path(__file__).resolve().parent.parent
TIMING = {"seconds", "train_seconds", "images_per_second"}

# ----------------------------------------------------------------------------- kill at any moment

# 72 examples in batches of 32: three steps an epoch, the last one odd (8).
KILL_RUN = ("data=digits", "data.train_subset=72", "data.batch_size=32", "model=mlp", "model.hidden=[16]",
            "model.dropout=0.1", "lambda=loss", "lam.per_sample=true", "trainer.epochs=3", "device=cpu",
            "trainer.progress=false", "optim=sgd")
EPOCHS = 3
KILL_SEED = 6
# More points, opt-in (about 2 s a kill here): MIXLAB_KILL_POINTS=120 pytest tests/test_faults.py -m slow
N_KILLS_SLOW = int(os.environ.get("MIXLAB_KILL_POINTS", "0"))
N_DOUBLE_SLOW = N_KILLS_SLOW // 4
RECORDS = ("last.pt", "metrics.jsonl", "last_epoch.json", "summary.json")
# (what, file): "step" after optimizer step n; "eval" at the n-th forward of evaluation; "write" with
# `limit` bytes of the n-th write of `file` on disk (all of them if it is shorter); "rename" with the
# n-th temp file of `file` complete, before its rename; "after" right after that rename.
KINDS = (("step", None), ("eval", None),
         *((what, f) for what in ("write", "rename", "after") for f in RECORDS))
N_KILLS = len(KINDS)  # runs killed at random points in the default tier (each kind once; more: MIXLAB_KILL_POINTS) ...
N_DOUBLE = 4  # ... of which this many are killed again in their re-run: N_KILLS + N_DOUBLE kills

HELPER = r'''
"""Run mixlab's CLI and SIGKILL it at a chosen moment. `serve`: read jobs (JSON lines) on stdin,
run each in a fork of this process, answer {"rc": exit status}; `once JOB`: run one job here."""
import io, json, os, signal, sys, time, traceback
from pathlib import Path

RECORDS = ("last.pt", "metrics.jsonl", "last_epoch.json", "summary.json", "mixed_examples.png")
COUNTS = {"steps": 0, "eval": 0, "sizes": {}, "renames": {}}
SPEC = {}


def die():
    for s in (sys.stdout, sys.stderr):
        try:
            s.flush()
        except Exception:
            pass
    os.kill(os.getpid(), signal.SIGKILL)


def record_of(path):
    name = Path(os.fsdecode(path)).name  # ".last.pt.<hex>.tmp" is a write of last.pt
    for r in RECORDS:
        if name == r or name.startswith("." + r + ".") or name.startswith(r + "."):
            return r
    return None


def hit(what, record, count):
    return SPEC.get("what") == what and SPEC.get("file") in (None, record) and SPEC.get("n") == count


class Watched:
    """A file being written: counts its bytes; dies once `limit` bytes are on disk (or at its end)."""

    def __init__(self, f, record, limit):
        self._f, self._record, self._limit, self._n, self._done = f, record, limit, 0, False

    def write(self, b):
        if not isinstance(b, str):
            b = memoryview(b).cast("B")
        if self._limit is not None and self._n + len(b) >= self._limit:
            self._f.write(b[: self._limit - self._n])
            self._sync_and_die()
        self._n += len(b)
        return self._f.write(b)

    def _sync_and_die(self):
        self._f.flush()
        os.fsync(self._f.fileno())
        die()

    def close(self):
        if not self._done:
            self._done = True
            COUNTS["sizes"].setdefault(self._record, []).append(self._n)
            if self._limit is not None:  # the data ended before the limit: die with all of it written
                self._sync_and_die()
        return self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __getattr__(self, name):
        return getattr(self._f, name)


def watch(f, path, mode):
    record = record_of(path) if any(c in str(mode) for c in "wax+") else None
    if record is None:
        return f
    n = len(COUNTS["sizes"].get(record, ())) + 1
    return Watched(f, record, SPEC.get("limit") if hit("write", record, n) else None)


def install():
    import builtins, torch
    from torch.nn.modules.module import register_module_forward_hook
    from torch.optim.optimizer import register_optimizer_step_post_hook

    def step_hook(opt, args, kwargs):
        COUNTS["steps"] += 1
        if hit("step", None, COUNTS["steps"]):
            die()

    def forward_hook(module, args, out):
        if not module.training and not torch.is_grad_enabled():
            COUNTS["eval"] += 1
            if hit("eval", None, COUNTS["eval"]):
                die()

    register_optimizer_step_post_hook(step_hook)
    register_module_forward_hook(forward_hook)

    real_open, real_fdopen = builtins.open, os.fdopen

    def open_(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return watch(f, file, mode) if isinstance(file, (str, bytes, os.PathLike)) else f

    def fdopen(fd, mode="r", *args, **kwargs):
        return watch(real_fdopen(fd, mode, *args, **kwargs), os.readlink(f"/proc/self/fd/{fd}"), mode)

    builtins.open = io.open = open_
    os.fdopen = fdopen

    def renamer(real):
        def rename(src, dst, *args, **kwargs):
            record = record_of(dst)
            if record is None:
                return real(src, dst, *args, **kwargs)
            n = COUNTS["renames"][record] = COUNTS["renames"].get(record, 0) + 1
            if hit("rename", record, n):
                die()
            out = real(src, dst, *args, **kwargs)
            if hit("after", record, n):
                die()
            return out
        return rename

    os.replace, os.rename = renamer(os.replace), renamer(os.rename)


def run(job):
    SPEC.clear()
    SPEC.update(job.get("kill") or {})
    install()
    sys.argv = ["mixlab", *job["argv"]]
    from mixlab.__main__ import main
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    if job.get("counts"):
        with open(job["counts"], "w") as f:
            json.dump(COUNTS, f)
    return code


def serve():
    import mixlab.__main__, sklearn.datasets  # noqa: F401 - the imports every run would pay for
    while True:
        line = sys.stdin.readline()
        if not line:
            return
        job = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                code = run(job)
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        deadline = time.monotonic() + job.get("timeout", 120)
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                rc = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                rc = "timeout"
                break
            time.sleep(0.005)
        print(json.dumps({"rc": rc}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve()
    else:
        sys.exit(run(json.loads(sys.argv[2])))
'''


def _env() -> dict[str, str]:
    # One intra-op thread: the same reductions in every run (and no oversubscribed cores); W&B off.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled",
            "HYDRA_FULL_ERROR": "1"}


class Zygote:
    """The helper in `serve` mode: runs jobs as forks of one process that has done the imports."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.helper = workdir / "killer.py"
        self.helper.write_text(HELPER)
        self.proc = subprocess.Popen([sys.executable, str(self.helper), "serve"], cwd=workdir, env=_env(),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.jobs = 0

    def run(self, run_dir: Path, kill: dict | None = None, counts: Path | None = None) -> int:
        """Run KILL_RUN into `run_dir` (killed as `kill` says); the exit status, -9 if killed."""
        rc, _ = self.cli([*KILL_RUN, f"hydra.run.dir={run_dir}"], kill=kill, counts=counts)
        assert rc in (0, -signal.SIGKILL), f"kill point {kill}: ended with {rc}"
        return rc

    def cli(self, argv: list[str], kill: dict | None = None, counts: Path | None = None) -> tuple[int | str, str]:
        """``python -m mixlab *argv`` as a fork of the zygote: (exit status, stdout and stderr)."""
        self.jobs += 1
        log = self.workdir / f"job{self.jobs}.log"
        job = {"argv": argv, "kill": kill, "log": str(log), "counts": str(counts) if counts else None}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the kill helper died (exit {self.proc.poll()})"
        out = log.read_text() if log.exists() else ""
        rc = json.loads(line)["rc"]
        assert rc != 70, f"uncaught exception in {argv}:\n{out[-3000:]}"
        return rc, out

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    if not sys.platform.startswith("linux"):
        pytest.skip("the kill helper forks and reads /proc/self/fd")
    z = Zygote(tmp_path_factory.mktemp("zygote"))
    yield z
    z.close()


def read_records(run_dir: Path) -> dict:
    rows = MetricsLog(run_dir / "metrics.jsonl").rows()
    ckpt = load_checkpoint(run_dir / "last.pt")
    return {"rows": [{k: v for k, v in r.items() if k not in TIMING} for r in rows],
            "summary": read_json(run_dir / "summary.json"), "last_epoch": read_json(run_dir / "last_epoch.json"),
            "ckpt": ckpt}


@pytest.fixture(scope="module")
def reference(zygote, tmp_path_factory):
    """One uninterrupted run, with how many steps, evaluation forwards, writes and renames it made."""
    d = tmp_path_factory.mktemp("reference")
    assert zygote.run(d / "run", counts=d / "counts.json") == 0
    counts = json.loads((d / "counts.json").read_text())
    assert counts["steps"] == EPOCHS * 3 and counts["eval"] > 0
    assert [len(counts["sizes"][r]) for r in RECORDS] == [EPOCHS, EPOCHS, EPOCHS, 1]
    return {"records": read_records(d / "run"), "counts": counts,
            "png": (d / "run" / "mixed_examples.png").read_bytes()}


def assert_whole(run_dir: Path) -> int:
    """Every record on disk parses; the metrics are at most one epoch ahead of the checkpoint.
    Returns the checkpoint's epoch (0 without one)."""
    rec = read_records(run_dir)  # raises on a torn JSON line or file, or an unloadable checkpoint
    done = 0 if rec["ckpt"] is None else int(rec["ckpt"]["epoch"])
    epochs = [r["epoch"] for r in rec["rows"]]
    assert epochs == list(range(1, len(epochs) + 1)) and done <= len(epochs) <= done + 1, (epochs, done)
    for p in run_dir.iterdir():  # the only leftovers: temp files of writes killed before their rename
        assert not p.name.endswith(".tmp") or re.fullmatch(r"\.(.+)\.[0-9a-f]{12}\.tmp", p.name), p.name
    return done


def assert_same_as_reference(run_dir: Path, reference: dict) -> None:
    got, want = read_records(run_dir), reference["records"]
    assert got["rows"] == want["rows"]
    assert got["summary"]["status"] == "completed" and got["summary"]["final"] == want["summary"]["final"]
    assert got["summary"]["epochs_done"] == EPOCHS and got["last_epoch"] == want["last_epoch"]
    assert got["ckpt"]["epoch"] == EPOCHS
    for k, v in want["ckpt"]["model"].items():
        assert torch.equal(got["ckpt"]["model"][k], v), k
    assert not list(run_dir.glob(".*.tmp")), "the re-run leaves no temp file of a killed write behind"


def draw_kill(rng: random.Random, kind: tuple[str, str | None], counts: dict, done: int) -> dict:
    """A random point of `kind` in a run that starts after epoch `done` (so has EPOCHS - done left)."""
    what, record = kind
    left = EPOCHS - done
    if what == "step":
        return {"what": "step", "n": rng.randint(1, counts["steps"] * left // EPOCHS)}
    if what == "eval":
        return {"what": "eval", "n": rng.randint(1, counts["eval"] * left // EPOCHS)}
    n = 1 if record == "summary.json" else rng.randint(1, left)
    kill = {"what": what, "file": record, "n": n}
    if what == "write":
        size = counts["sizes"][record][done + n - 1 if record != "summary.json" else 0]
        kill["limit"] = rng.randint(0, size)  # bytes on disk when it dies; `size`: the whole temp file
    return kill


def kill_plan(n_kills: int, n_double: int, seed: int = KILL_SEED) -> list[tuple[tuple, tuple | None]]:
    """`n_kills` (first kind, second kind or None): every kind in turn, doubles spread among them."""
    rng = random.Random(seed)
    firsts = [KINDS[i % len(KINDS)] for i in range(n_kills)]
    doubles = set(rng.sample([i for i, k in enumerate(firsts) if k[1] != "summary.json"], n_double))
    return [(k, rng.choice(KINDS) if i in doubles else None) for i, k in enumerate(firsts)]


def run_kill_plan(zygote: Zygote, reference: dict, tmp_path: Path, n_kills: int, n_double: int) -> list[list[dict]]:
    rng = random.Random(KILL_SEED)
    done_points = []
    for i, (first, second) in enumerate(kill_plan(n_kills, n_double)):
        run_dir, points, done = tmp_path / f"k{i}", [], 0
        for kind in (first, second):
            if kind is None:
                break
            if done == EPOCHS:  # only the summary is left to write
                kind = (kind[0] if kind[0] in ("write", "rename", "after") else "write", "summary.json")
            kill = draw_kill(rng, kind, reference["counts"], done)
            points.append(kill)
            print(f"kill point {i}: {kill} (after epoch {done})")
            assert zygote.run(run_dir, kill=kill) == -signal.SIGKILL, f"{kill} was never reached"
            done = assert_whole(run_dir)
        assert zygote.run(run_dir) == 0
        assert_same_as_reference(run_dir, reference)
        assert_whole(run_dir)
        done_points.append(points)
    return done_points


def test_kill_plan_is_reproducible_and_covers_every_kind():
    plan = kill_plan(N_KILLS, N_DOUBLE)
    assert plan == kill_plan(N_KILLS, N_DOUBLE)
    assert {first for first, _ in plan} == set(KINDS)
    assert sum(second is not None for _, second in plan) == N_DOUBLE


def test_sigkill_at_random_points_resumes_to_identical_records(zygote, reference, tmp_path):
    points = run_kill_plan(zygote, reference, tmp_path, N_KILLS, N_DOUBLE)
    assert sum(len(p) for p in points) == N_KILLS + N_DOUBLE


@pytest.mark.slow
@pytest.mark.skipif(N_KILLS_SLOW < 1, reason="set MIXLAB_KILL_POINTS=N to try N more random kill points")
def test_sigkill_at_many_random_points(zygote, reference, tmp_path):
    points = run_kill_plan(zygote, reference, tmp_path, N_KILLS_SLOW, N_DOUBLE_SLOW)
    assert sum(len(p) for p in points) == N_KILLS_SLOW + N_DOUBLE_SLOW


def test_kill_and_rerun_with_the_real_command(zygote, reference, tmp_path):
    """Fresh interpreters end to end: killed half-way through epoch 2's checkpoint, then the very
    same `python -m mixlab` command; ends where the forked runs do."""
    run_dir = tmp_path / "run"
    argv = [*KILL_RUN, f"hydra.run.dir={run_dir}"]
    limit = reference["counts"]["sizes"]["last.pt"][1] // 2
    job = {"argv": argv, "kill": {"what": "write", "file": "last.pt", "n": 2, "limit": limit}}
    r = subprocess.run([sys.executable, str(zygote.helper), "once", json.dumps(job)], cwd=tmp_path, env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert assert_whole(run_dir) == 1 and any(p.name.startswith(".last.pt.") for p in run_dir.iterdir())
    r = subprocess.run([sys.executable, "-m", "mixlab", *argv], cwd=tmp_path, env=_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and "resuming after epoch 1" in r.stderr, r.stderr[-2000:]
    assert_same_as_reference(run_dir, reference)


class TornImage(AssertionError):
    pass


def test_kill_while_writing_the_example_image(zygote, reference, tmp_path):
    run_dir = tmp_path / "run"
    assert zygote.run(run_dir, kill={"what": "write", "file": "mixed_examples.png", "n": 1, "limit": 20}) == -9
    assert_whole(run_dir)
    assert zygote.run(run_dir) == 0
    assert_same_as_reference(run_dir, reference)
    png = run_dir / "mixed_examples.png"
    if not png.is_file() or png.read_bytes() != reference["png"]:
        raise TornImage(f"{png}: {png.stat().st_size if png.is_file() else 'no'} bytes after the re-run, "
                        f"expected the {len(reference['png'])} of an uninterrupted run")


def test_remove_stale_temps_removes_only_temp_files(tmp_path):
    temps = [tmp_path / ".last.pt.0123456789ab.tmp", tmp_path / ".metrics.jsonl.a1b2c3d4e5f6.tmp"]
    keep = [tmp_path / "last.pt", tmp_path / "notes.tmp", tmp_path / ".last.pt.xyz.tmp", tmp_path / ".hidden",
            tmp_path / "a.0123456789ab.tmp"]
    for p in temps + keep:
        p.write_bytes(b"x")
    (tmp_path / ".sub.0123456789ab.tmp").mkdir()  # not a file: left alone
    assert sorted(remove_stale_temps(tmp_path)) == sorted(temps)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in temps)
    assert remove_stale_temps(tmp_path / "absent") == []


def test_atomic_write_with_a_writer_function(tmp_path):
    from mixlab.run.records import atomic_write

    atomic_write(tmp_path / "a.bin", lambda f: f.write(b"abc"))
    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "a.bin", lambda f: (f.write(b"partial"), (_ for _ in ()).throw(RuntimeError("x"))))
    assert (tmp_path / "a.bin").read_bytes() == b"abc" and [p.name for p in tmp_path.iterdir()] == ["a.bin"]
    with pytest.raises(ValueError, match="callable"):
        atomic_write(tmp_path / "a.bin", b"abc")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- bad data


def _gunzipped(p: Path) -> bytes:
    return gzip.decompress(p.read_bytes())


GARBAGE = np.random.default_rng(0).bytes(5000)  # fixed bytes: neither gzip nor a pickle that loads
# name: (file, how to break it, what the message must say). Files: 5 train and 3 test examples.
# test_data.py has label 10, too few labels, and truncated / over-long / bad-magic plain idx files.
FASHION_CASES = {
    "missing file": ("train-labels-idx1-ubyte.gz", lambda p: p.unlink(), r"no such file"),
    "empty file": ("train-images-idx3-ubyte.gz", lambda p: p.write_bytes(b""), r"empty file \(0 bytes\)"),
    "empty gzip stream": ("t10k-labels-idx1-ubyte.gz", lambda p: p.write_bytes(gzip.compress(b"")),
                          r"empty after gunzip"),
    "truncated gzip": ("train-images-idx3-ubyte.gz", lambda p: p.write_bytes(p.read_bytes()[:200]),
                       r"not a valid gzip file"),
    "garbage, not gzip": ("t10k-images-idx3-ubyte.gz", lambda p: p.write_bytes(GARBAGE),
                          r"not a valid gzip file"),
    "truncated idx in an intact gzip": ("t10k-images-idx3-ubyte.gz",
                                        lambda p: p.write_bytes(gzip.compress(_gunzipped(p)[:-100])), r"truncated"),
    "trailing bytes": ("train-labels-idx1-ubyte.gz",
                       lambda p: p.write_bytes(gzip.compress(_gunzipped(p) + b"\0\0")), r"trailing bytes"),
    "wrong magic (labels where images belong)": ("train-images-idx3-ubyte.gz",
                                                 lambda p: write_idx(p, np.zeros(5, np.uint8)),
                                                 r"bad magic number 0x00000801; expected 0x00000803"),
    "wrong element type (int32 images)": ("t10k-images-idx3-ubyte.gz",
                                          lambda p: write_idx(p, np.zeros((3, 28, 28)), type_code=0x0C),
                                          r"bad magic number 0x00000c03; expected 0x00000803"),
    "27x28 images": ("t10k-images-idx3-ubyte.gz", lambda p: write_idx(p, np.zeros((3, 27, 28), np.uint8)),
                     r"images are 27x28; expected 28x28"),
    "more labels than images": ("t10k-labels-idx1-ubyte.gz", lambda p: write_idx(p, np.zeros(4, np.uint8)),
                                r"4 labels but .*t10k-images-idx3-ubyte\.gz has 3 images"),
    "label 255": ("t10k-labels-idx1-ubyte.gz", lambda p: write_idx(p, np.array([0, 255, 1], np.uint8)),
                  r"label 255 at position 1 is out of range 0\.\.9"),
}


def write_cifar10(root: Path) -> Path:
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        _pickle(folder / f"data_batch_{i}", {"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), "labels": [i, 9]})
    _pickle(folder / "test_batch", {"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8), "labels": [9, 0, 4]})
    _pickle(folder / "batches.meta", {"label_names": [f"c{k}" for k in range(10)]})
    return folder


def _batch(labels: object, shape: tuple = (2, 3072), key: str = "labels") -> dict:
    return {"data": np.zeros(shape, np.uint8), key: labels}


# name: (file in cifar-10-batches-py, how to break it, what the message must say). 2 images a batch.
CIFAR_CASES = {
    "missing batch": ("data_batch_3", lambda p: p.unlink(), r"lacks \['data_batch_3'\]"),
    "missing meta": ("batches.meta", lambda p: p.unlink(), r"lacks \['batches.meta'\]"),
    "empty file": ("data_batch_2", lambda p: p.write_bytes(b""), r"empty file"),
    "truncated pickle": ("data_batch_4", lambda p: p.write_bytes(p.read_bytes()[:1000]),
                         r"not a readable CIFAR batch, truncated or corrupted"),
    "garbage bytes": ("test_batch", lambda p: p.write_bytes(GARBAGE),
                      r"not a readable CIFAR batch, truncated or corrupted"),
    "not a dict of data and labels": ("data_batch_1", lambda p: _pickle(p, [1, 2, 3]),
                                      r"expected a dict with keys 'data' and 'labels'"),
    "wrong image shape": ("data_batch_5", lambda p: _pickle(p, _batch([0, 1], (2, 3000))),
                          r"'data' is uint8 of shape \(2, 3000\); expected uint8 \(N, 3072\)"),
    "more labels than images": ("test_batch", lambda p: _pickle(p, _batch([0, 1, 2])), r"3 labels .* for 2 images"),
    "label 10 of 10 classes": ("data_batch_1", lambda p: _pickle(p, _batch([3, 10])),
                               r"label 10 at position 1 is out of range 0\.\.9"),
    "negative label": ("test_batch", lambda p: _pickle(p, _batch([-1, 0])), r"label -1 at position 0 is out of range"),
    "a pickle that runs code": ("data_batch_2", lambda p: _pickle(p, _RunsCode()), r"refuses to load posix\.system"),
}


class _RunsCode:
    """Unpickling this calls os.system: what a malicious data file could do to a plain ``pickle.load``."""

    def __reduce__(self):
        import os

        return os.system, (f"touch {RAN_CODE}",)


RAN_CODE = Path(tempfile.gettempdir()) / "mixlab-unpickled-code-ran"
# Cases detected at load, each naming the file: the two tables, a CIFAR-100 label out of range and a
# CIFAR file that parses but fails the published checksum (test_data.py has more for read_idx).
N_BAD_DATA_CASES = len(FASHION_CASES) + len(CIFAR_CASES) + 2


def assert_names_file_and_problem(err: BaseException, path: Path, what: str) -> None:
    msg = str(err)
    assert "\n" not in msg and str(path) in msg and re.search(what, msg), msg


@pytest.mark.parametrize("case", FASHION_CASES)
def test_corrupted_fashion_mnist_is_detected_at_load(case, tmp_path, monkeypatch):
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "debian")  # a full copy that must not stand in
    write_tiny_fashion(tmp_path / "debian", n_train=7, gz=True)
    write_tiny_fashion(tmp_path / "root", gz=True)
    load_dataset("fashion_mnist", root=str(tmp_path / "root"), download=False)  # intact: loads
    name, corrupt, what = FASHION_CASES[case]
    corrupt(tmp_path / "root" / name)
    with pytest.raises(ValueError) as info:
        load_dataset("fashion_mnist", root=str(tmp_path / "root"), download=False)
    assert_names_file_and_problem(info.value, tmp_path / "root" / name.removesuffix(".gz"), what)


def test_missing_fashion_file_is_also_a_file_not_found_error(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "nowhere")
    write_tiny_fashion(tmp_path / "root" / "FashionMNIST" / "raw", gz=True)
    (tmp_path / "root" / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"FashionMNIST/raw/t10k-labels-idx1-ubyte\[\.gz\]: no such file"):
        load_dataset("fashion_mnist", root=str(tmp_path / "root"), download=False)


@pytest.mark.parametrize("case", CIFAR_CASES)
def test_corrupted_cifar_is_detected_at_load(case, tmp_path, no_md5):
    folder = write_cifar10(tmp_path)
    assert load_dataset("cifar10", root=str(tmp_path), download=False).n_train == 10  # intact: loads
    name, corrupt, what = CIFAR_CASES[case]
    corrupt(folder / name)
    RAN_CODE.unlink(missing_ok=True)
    with pytest.raises(ValueError) as info:
        load_dataset("cifar10", root=str(tmp_path), download=False)
    assert_names_file_and_problem(info.value, folder if case.startswith("missing") else folder / name, what)
    assert not RAN_CODE.exists()  # nothing executes code from a data file


def test_cifar100_label_out_of_range(tmp_path, no_md5):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    _pickle(folder / "train", _batch([99, 100], key="fine_labels"))
    _pickle(folder / "test", _batch([0, 1], key="fine_labels"))
    _pickle(folder / "meta", {"fine_label_names": []})
    with pytest.raises(ValueError) as info:
        load_dataset("cifar100", root=str(tmp_path), download=False)
    assert_names_file_and_problem(info.value, folder / "train", r"label 100 at position 1 is out of range 0\.\.99")


def test_cifar_file_that_parses_but_is_not_the_published_one(tmp_path):
    folder = write_cifar10(tmp_path)  # well-formed, but no file has the published md5
    with pytest.raises(ValueError) as info:
        load_dataset("cifar10", root=str(tmp_path), download=False)
    assert_names_file_and_problem(info.value, folder / "data_batch_1", r"corrupted or not the published file")


TINY_CLI = ("model=mlp", "model.hidden=[16]", "device=cpu", "trainer.epochs=1", "trainer.progress=false",
            "optim=sgd", "data.download=false")


@pytest.mark.parametrize("case", ["truncated gzip", "missing file", "label 255", "cifar: garbage bytes"])
def test_cli_reports_bad_data_in_one_line(case, zygote, tmp_path):
    """`python -m mixlab data.root=...` on a broken file: exit 2 and one line naming it, no traceback."""
    root = tmp_path / "root"
    if case.startswith("cifar: "):
        folder = write_cifar10(root)
        name, corrupt, what = CIFAR_CASES[case.removeprefix("cifar: ")]
        path, data = folder / name, "data=cifar10"
    else:
        write_tiny_fashion(root, gz=True)
        name, corrupt, what = FASHION_CASES[case]
        path, data = root / name, "data=fashion_mnist"
    corrupt(path)
    rc, out = zygote.cli([data, f"data.root={root}", *TINY_CLI, f"hydra.run.dir={tmp_path / 'run'}"])
    lines = out.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "Traceback" not in out, out
    assert lines[0].startswith(f"mixlab: error: data: {str(path).removesuffix('.gz')}") and re.search(what, out)
    assert not (tmp_path / "run").exists()  # refused before the first step: nothing written


# ----------------------------------------------------------------------------- batches of size 1


SMALL = ("data=digits", "model=mlp", "model.hidden=[16,16]", "device=cpu", "trainer.epochs=1",
         "trainer.progress=false", "optim=sgd")
# 9 examples in batches of 4: 4, 4 and a last batch of 1 (n % batch_size == 1); then batch_size=1 throughout.
BATCHINGS = {"odd last batch of 1": ("data.train_subset=9", "data.batch_size=4"),
             "batch_size=1": ("data.train_subset=3", "data.batch_size=1")}
COMPONENTS = ([f"lambda={n}" for n in LAMBDAS.names()] + [f"pairing={n}" for n in PAIRINGS.names()]
              + [f"mixer={n}" for n in MIXERS.names()]
              + ["lambda=distance lam.space=feature", "lambda=sk lam.space=feature",
                 "pairing=optimal pairing.space=feature", "pairing=optimal pairing.solver=sinkhorn",
                 "mixer=manifold lambda=distance lam.space=feature",
                 "data=diabetes lambda=distance", "data=moons pairing=nearest lambda=sk"])


@pytest.mark.parametrize("batching", BATCHINGS)
@pytest.mark.parametrize("component", COMPONENTS)
def test_batches_of_one_train(component, batching, tmp_path):
    overrides = [*SMALL, *BATCHINGS[batching], *component.split()]
    train(compose_cfg(*overrides), tmp_path)
    summary = read_json(tmp_path / "summary.json")
    (row,) = MetricsLog(tmp_path / "metrics.jsonl").rows()
    n = int(BATCHINGS[batching][0].split("=")[1])
    assert summary["status"] == "completed" and summary["dataset"]["n_train"] == n
    assert all(isinstance(row[k], float) and np.isfinite(row[k]) for k in ("train_loss", "lam_mean", "pair_distance"))
    assert 0.0 <= row["lam_min"] <= row["lam_max"] <= 1.0 and sum(row["lam_hist"]) == n


# ----------------------------------------------------------------------------- W&B failures


class FakeRun:
    """Stands in for a wandb run (no network, no wandb process); raises where `fail` says."""

    def __init__(self, fail: str | None) -> None:
        self.fail, self.logged, self.finished = fail, [], False
        outer = self

        class Summary(dict):
            def update(self, *args, **kwargs):
                if outer.fail == "summary":
                    raise RuntimeError("summary upload failed")
                super().update(*args, **kwargs)

        self.summary = Summary()

    def log(self, data: dict, step: int | None = None) -> None:
        if self.fail == "log" or (self.fail == "log_images" and "mixed_examples" in data):
            raise ConnectionError("network is unreachable")
        self.logged.append((step, sorted(data)))

    def finish(self) -> None:
        if self.fail == "finish":
            raise TimeoutError("wandb finish timed out")
        self.finished = True


def _usage_error():
    import wandb

    return wandb.errors.UsageError("api_key not configured (no-tty). call wandb.login(key=[your_api_key])")


# name: (what fails, the warning, how W&B is broken)
WANDB_CASES = {
    "init: no network": ("W&B init failed", lambda: ConnectionError("no network")),
    "init: no key": ("W&B init failed", _usage_error),
    "init: exits": ("W&B init failed", lambda: SystemExit(1)),
    "init: not installed": ("W&B init failed", None),
    "log": ("W&B log failed", "log"),
    "log_images": ("W&B log failed", "log_images"),
    "summary": ("W&B summary failed", "summary"),
    "finish": ("W&B finish failed", "finish"),
}


@pytest.mark.parametrize("case", WANDB_CASES)
def test_wandb_failure_warns_and_the_run_completes(case, tmp_path, monkeypatch):
    import wandb

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    warning, how = WANDB_CASES[case]
    runs: list[FakeRun] = []

    def init(**kwargs):
        if callable(how):
            raise how()
        runs.append(FakeRun(how))
        return runs[-1]

    monkeypatch.setattr(wandb, "init", init)
    if how is None:
        monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(compose_cfg(*SMALL, "data.train_subset=64", "data.batch_size=32", "trainer.epochs=2",
                          "logger=wandb", "logger.mode=offline"), tmp_path)
    messages = [str(w.message) for w in caught if "W&B" in str(w.message)]
    assert len(messages) == 1 and messages[0].startswith(warning), messages
    summary = read_json(tmp_path / "summary.json")
    assert summary["status"] == "completed" and "error" not in summary and summary["epochs_done"] == 2
    assert [r["epoch"] for r in MetricsLog(tmp_path / "metrics.jsonl").rows()] == [1, 2]
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 2 and (tmp_path / "last_epoch.json").is_file()
    if how == "summary":  # a failed summary upload does not keep the run from being finished
        assert runs[0].finished


# ----------------------------------------------------------------------------- one writer; every stop honoured
# Issue 23, each case as a user types it: `python -m mixlab ...` in a fresh process. The stops are caused by
# a plugin of the user's own (`plugins=[stopper]`) at an exact moment: a model that sends its process SIGINT
# at its n-th evaluation forward, and a Hydra callback that sends it right after a sweep job ends.

STOPPER = '''
import os
import signal

from hydra.experimental.callback import Callback

from mixlab import MODELS


@MODELS.register("stop_in_eval")
def stop_in_eval(*, in_shape, num_classes, at: int = 1):
    """The mlp, sending SIGINT to its own process at its `at`-th forward in eval mode."""
    model = MODELS.get("mlp")(in_shape=in_shape, num_classes=num_classes, hidden=[16])
    seen = [0]

    def hook(module, args):
        if not module.training:
            seen[0] += 1
            if seen[0] == at:
                os.kill(os.getpid(), signal.SIGINT)

    model.register_forward_pre_hook(hook)
    return model


class StopAfterJob(Callback):
    """SIGINT right after a sweep's job ends: between two jobs."""

    def on_job_end(self, config, job_return, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
'''
DIGITS = ("data=digits", "device=cpu", "trainer.progress=false", "optim=sgd")


def user_folder(tmp_path: Path) -> Path:
    """A user's working folder with the stopper plugin and its model's YAML."""
    (tmp_path / "my_conf" / "model").mkdir(parents=True, exist_ok=True)
    (tmp_path / "stopper.py").write_text(STOPPER)
    (tmp_path / "my_conf" / "model" / "stop_in_eval.yaml").write_text("name: stop_in_eval\nat: 1\n")
    return tmp_path


def cli(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**_env(), "PYTHONPATH": os.pathsep.join([str(ROOT), str(cwd)])}
    env.pop("HYDRA_FULL_ERROR")
    return subprocess.run([sys.executable, "-m", "mixlab", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def one_error_line(r: subprocess.CompletedProcess) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("mixlab: error: "), r.stderr[-3000:]
    return lines[0]


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_second_writer_is_refused_and_the_first_run_is_untouched(tmp_path):
    """Before: the same command twice both wrote one folder; another configuration was refused only once the
    first checkpoint existed, and rewrote .hydra/ (the race of the issue: interleaved rows, summary of the last)."""
    first_args = (*DIGITS, "model=mlp", "lambda=beta", "trainer.epochs=150", "hydra.run.dir=runs/race")
    env = {**_env(), "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen([sys.executable, "-m", "mixlab", *first_args], cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    folder = tmp_path / "runs" / "race"
    deadline = time.time() + 120
    while time.time() < deadline and not (folder / "metrics.jsonl").exists():
        time.sleep(0.05)
    hydra_before = files_of(folder / ".hydra")
    for args in (first_args, (*first_args[:-2], "lambda=none", *first_args[-1:])):  # the same command; another
        line = one_error_line(cli(*args, cwd=tmp_path))
        assert first.poll() is None, "the first run must still be running for this test to mean anything"
        assert str(folder) in line and f"pid {first.pid}" in line and "hydra.run.dir" in line, line
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    assert files_of(folder / ".hydra") == hydra_before
    rows = MetricsLog(folder / "metrics.jsonl").rows()
    assert [row["epoch"] for row in rows] == list(range(1, 151)) and all(row["lam_mean"] < 0.99 for row in rows)
    assert read_json(folder / "summary.json")["config"]["lam"]["name"] == "beta"


def test_a_killed_writer_leaves_no_lock_behind(tmp_path):
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from mixlab.run.records import RunLock; "
                               f"lock = RunLock({str(folder)!r}); print(lock.acquire(), flush=True); lock.announce(); "
                               "time.sleep(600)"],
                              env={**_env(), "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "None"
    from mixlab.run.records import RunLock
    deadline = time.time() + 60
    while time.time() < deadline and f"{holder.pid}" not in (folder / ".mixlab.lock").read_text():
        time.sleep(0.01)  # announced right after the lock
    refused = RunLock(folder).acquire()
    assert refused and f"pid {holder.pid}" in refused
    holder.kill()
    holder.wait()
    lock = RunLock(folder)
    assert lock.acquire() is None
    lock.release()


@pytest.mark.parametrize("where,args,at,recorded", [
    ("validation of the first epoch", ("trainer.epochs=2",), 1, 0),
    ("validation of the last epoch", ("trainer.epochs=2",), 5, 1),
    ("the test set after the last epoch", ("trainer.epochs=2",), 8, 1),
])
def test_a_stop_during_evaluation_is_honoured(where, args, at, recorded, tmp_path):
    """digits: 300 validation and 360 test images, 3 evaluation batches each. Before: a stop during the last
    epoch's evaluation was never read (the run ended 'completed', exit 0)."""
    cwd = user_folder(tmp_path)
    run = ("plugins=[stopper]", "hydra.searchpath=[file://my_conf]", *DIGITS, "model=stop_in_eval",
           f"model.at={at}", *args, "hydra.run.dir=run")
    r = cli(*run, cwd=cwd)
    assert r.returncode == 130 and "while evaluating epoch" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert read_json(cwd / "run" / "summary.json")["status"] == "interrupted"
    assert len(MetricsLog(cwd / "run" / "metrics.jsonl").rows()) == recorded
    assert (load_checkpoint(cwd / "run" / "last.pt") or {"epoch": 0})["epoch"] == recorded
    resume = next(line for line in r.stderr.splitlines() if line.startswith("mixlab: to resume"))
    assert resume.endswith("hydra.run.dir=run")


@pytest.mark.slow
@pytest.mark.parametrize("where,at", [("a corrupted test set", 40 + 79 + 3), ("the OOD set", 40 + 79 + 60 + 1)])
def test_a_stop_during_corrupted_and_ood_evaluation_is_honoured(where, at, tmp_path):
    """Fashion-MNIST (5 000 validation and 10 000 test images: 40 and 79 batches), then 60 corrupted sets of
    64 images (a batch each), then the OOD set. Before: the run went on to the end and exited 0."""
    cwd = user_folder(tmp_path)
    r = cli("plugins=[stopper]", "hydra.searchpath=[file://my_conf]", "data=fashion_mnist", "data.train_subset=64",
            f"data.root={tmp_path / 'data'}", "device=cpu", "trainer.progress=false", "model=stop_in_eval",
            f"model.at={at}", "trainer.epochs=1", "eval.corruptions=true", "eval.corruption_samples=64",
            "eval.ood=digits", "hydra.run.dir=run", cwd=cwd, timeout=600)
    assert r.returncode == 130 and "while evaluating epoch 1" in r.stderr, r.stderr[-3000:]
    assert read_json(cwd / "run" / "summary.json")["status"] == "interrupted"
    assert not (cwd / "run" / "metrics.jsonl").exists() or not MetricsLog(cwd / "run" / "metrics.jsonl").rows()


def job(folder: Path) -> str:
    """A sweep job's folder name up to its λ policy and seed (the rest: the overrides the jobs share)."""
    return ",".join(folder.name.split(",")[:2])


def test_a_stop_between_sweep_jobs_stops_the_sweep_and_the_printed_command_resumes_it(tmp_path):
    """Before: the signal between two jobs was lost (or a traceback) and the sweep ran every job, exit 0."""
    cwd = user_folder(tmp_path)
    sweep = ("-m", "plugins=[stopper]", *DIGITS, "model=mlp", "model.hidden=[16]", "trainer.epochs=1",
             "lambda=none,beta", "seed=0", "hydra.sweep.dir=sweep")
    r = cli(*sweep, "+hydra.callbacks.stop._target_=stopper.StopAfterJob", cwd=cwd)
    assert r.returncode == 130 and "before this run started" in r.stderr and "Traceback" not in r.stderr, r.stderr
    done = sorted(job(p.parent) for p in (cwd / "sweep").glob("*/summary.json"))
    assert done == ["lambda=none,seed=0"]  # the job after the stop wrote nothing, not even its folder
    assert sorted(job(p) for p in (cwd / "sweep").iterdir() if p.is_dir()) == done
    resume = next(line for line in r.stderr.splitlines() if line.startswith("mixlab: to resume"))
    tokens = shlex.split(resume.split(": ", 2)[2])
    assert tokens[-1] == "hydra.sweep.dir=sweep" and "+hydra.callbacks.stop._target_=stopper.StopAfterJob" in tokens
    rest = [t for t in tokens[3:] if not t.startswith("+hydra.callbacks")]
    r = cli(*rest, cwd=cwd)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(job(p.parent) for p in (cwd / "sweep").glob("*/summary.json")) == [
        "lambda=beta,seed=0", "lambda=none,seed=0"]


def test_a_damaged_checkpoint_is_one_line_and_the_status_stays(tmp_path):
    """Before: a 19-line traceback (PytorchStreamReader failed reading zip archive), exit 1, status 'failed'."""
    cwd = user_folder(tmp_path)
    run = ("plugins=[stopper]", "hydra.searchpath=[file://my_conf]", *DIGITS, "model=stop_in_eval", "model.at=5",
           "trainer.epochs=2", "hydra.run.dir=run")
    assert cli(*run, cwd=cwd).returncode == 130
    with open(cwd / "run" / "last.pt", "r+b") as f:
        f.truncate(1000)
    summary = (cwd / "run" / "summary.json").read_bytes()
    line = one_error_line(cli(*run, cwd=cwd))
    assert f"{cwd / 'run' / 'last.pt'}: cannot be read" in line and "restore it from a copy" in line \
        and "delete it to start the run over" in line, line
    assert (cwd / "run" / "summary.json").read_bytes() == summary


def test_a_refused_run_whose_folder_is_the_working_directory_leaves_it(tmp_path, monkeypatch):
    """hydra.run.dir=<the working directory>, refused after its folder was locked: the lock file goes, the
    folder (the user's working directory) stays, and tidying up after it does not fail. Before: release removed
    the working directory and ``_remove_if_empty`` then raised FileNotFoundError from ``Path.cwd()`` (a traceback
    and exit 1 where one line and exit 2 were due; seen in the config fuzz)."""
    from mixlab.__main__ import _remove_if_empty
    from mixlab.run.records import LOCK_NAME, RunLock

    monkeypatch.chdir(tmp_path)
    lock = RunLock(tmp_path)
    assert lock.acquire() is None and (tmp_path / LOCK_NAME).exists()
    lock.release(discard=True)
    assert tmp_path.is_dir() and list(tmp_path.iterdir()) == []
    _remove_if_empty(str(tmp_path))
    assert tmp_path.is_dir()
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()  # the working directory removed under the process
    _remove_if_empty(str(gone / "run"))  # nothing to tidy, and no error
