"""Tests of mixlab.records: atomic writes, the metrics log, checkpoints, provenance and RNG state."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from mixlab.run import records
from mixlab.run.records import (
    MetricsLog,
    UnreadableCheckpoint,
    atomic_write_bytes,
    atomic_write_json,
    git_info,
    load_checkpoint,
    read_json,
    rng_state,
    save_checkpoint,
    set_rng_state,
    versions,
)


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ----------------------------------------------------------------------------- atomic writes


def test_atomic_write_bytes_roundtrip_and_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "blob.bin"  # parent directories are created
    atomic_write_bytes(path, b"first")
    atomic_write_bytes(path, b"second")
    assert path.read_bytes() == b"second"
    assert _listing(path.parent) == ["blob.bin"]


def test_atomic_write_uses_umask_permissions(tmp_path: Path) -> None:
    if os.name != "posix":
        pytest.skip("POSIX permissions")
    path = tmp_path / "x.json"
    atomic_write_json(path, {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_failed_replace_leaves_old_content_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.json"
    atomic_write_json(path, {"version": 1})
    before = path.read_bytes()

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk went away")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk went away"):
        atomic_write_json(path, {"version": 2})
    with pytest.raises(OSError):
        atomic_write_bytes(path, b"garbage")
    assert path.read_bytes() == before
    assert _listing(tmp_path) == ["config.json"]


def test_failed_serialisation_leaves_old_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.json"
    atomic_write_json(path, {"version": 1})
    before = path.read_bytes()

    def broken_dumps(*args: object, **kwargs: object) -> str:
        raise RuntimeError("serialiser crashed")

    monkeypatch.setattr(json, "dumps", broken_dumps)
    with pytest.raises(RuntimeError, match="serialiser crashed"):
        atomic_write_json(path, {"version": 2})
    monkeypatch.undo()
    # Not serialisable: fails before anything touches the directory.
    with pytest.raises(TypeError):
        atomic_write_json(path, {"obj": object()})
    assert path.read_bytes() == before
    assert _listing(tmp_path) == ["config.json"]


def test_failure_midway_through_the_write_removes_temp(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"w": torch.ones(3)})

    class Unpicklable:
        def __reduce__(self) -> tuple:
            raise RuntimeError("cannot pickle")

    # torch.save has already written part of the archive when the object fails.
    with pytest.raises(RuntimeError, match="cannot pickle"):
        save_checkpoint(path, {"w": torch.zeros(1000), "bad": Unpicklable()})
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(3))
    assert _listing(tmp_path) == ["ckpt.pt"]


def test_json_nan_and_inf_become_null(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    obj = {
        "nan": float("nan"),
        "inf": float("inf"),
        "ninf": -math.inf,
        "ok": 0.5,
        "nested": [1.0, float("nan"), {"deep": (math.inf, 2)}],
        "np": np.float32("nan"),
        "np_ok": np.float64(0.25),
        "tensor": torch.tensor([1.0, float("nan")]),
        "none": None,
        "s": "NaN stays a string",
    }
    atomic_write_json(path, obj)
    text = path.read_text()
    assert "NaN" not in text.replace("NaN stays a string", "")
    assert "Infinity" not in text
    assert text.endswith("\n") and '\n  "nan"' in text  # indent=2
    back = read_json(path)
    assert back == {
        "nan": None,
        "inf": None,
        "ninf": None,
        "ok": 0.5,
        "nested": [1.0, None, {"deep": [None, 2]}],
        "np": None,
        "np_ok": 0.25,
        "tensor": [1.0, None],
        "none": None,
        "s": "NaN stays a string",
    }
    # Strict readers accept it.
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard constant {c}"))


def test_read_json_missing_and_non_object(tmp_path: Path) -> None:
    assert read_json(tmp_path / "absent.json") is None
    atomic_write_json(tmp_path / "list.json", [1, 2])
    with pytest.raises(ValueError, match="JSON object"):
        read_json(tmp_path / "list.json")


# ----------------------------------------------------------------------------- metrics log


def test_metrics_log_append_rows_truncate(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "metrics.jsonl")
    assert log.rows() == []
    for epoch in range(1, 6):
        log.append({"epoch": epoch, "acc": epoch / 10, "loss": float("nan") if epoch == 3 else 1.0 / epoch})
    rows = log.rows()
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[2]["loss"] is None and rows[1]["acc"] == 0.2
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 5 and all(json.loads(line)["epoch"] == i + 1 for i, line in enumerate(lines))

    log.truncate(3)  # resume from the checkpoint of epoch 3
    assert [r["epoch"] for r in log.rows()] == [1, 2, 3]
    log.append({"epoch": 4, "acc": 0.99})
    assert [r["epoch"] for r in MetricsLog(tmp_path / "metrics.jsonl").rows()] == [1, 2, 3, 4]
    log.truncate(10)
    assert len(log.rows()) == 4
    log.truncate(0)
    assert log.rows() == []
    assert _listing(tmp_path) == ["metrics.jsonl"]


def test_metrics_log_requires_epoch_and_keeps_file_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = MetricsLog(tmp_path / "metrics.jsonl")
    with pytest.raises(ValueError, match="'epoch'"):
        log.append({"acc": 0.5})
    log.append({"epoch": 1, "acc": 0.5})
    before = log.path.read_bytes()
    def killed(src: str, dst: str) -> None:
        raise OSError("killed before the rename")

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(OSError):
        log.append({"epoch": 2, "acc": 0.6})
    assert log.path.read_bytes() == before
    assert _listing(tmp_path) == ["metrics.jsonl"]


def test_metrics_log_reports_corrupt_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1}\n{"epoch": 2, "acc"\n')
    with pytest.raises(ValueError, match=":2:"):
        MetricsLog(path).rows()


# ----------------------------------------------------------------------------- checkpoints


def _small_training_state(gen: torch.Generator) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randn(16, 4, generator=gen)
    y = torch.randint(0, 3, (16,), generator=gen)
    for _ in range(2):  # populate Adam's moment buffers and step counters
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, opt


def test_checkpoint_roundtrip_restores_model_optimizer_and_random_draws(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(1234)
    model, opt = _small_training_state(gen)
    torch.randn(5, generator=gen)  # advance past the seed state

    path = tmp_path / "last.pt"
    save_checkpoint(
        path,
        {"epoch": 7, "model": model.state_dict(), "optimizer": opt.state_dict(), "rng": rng_state({"data": gen})},
    )
    first_global = torch.rand(6)
    first_gen = torch.randn(6, generator=gen)
    first_perm = torch.randperm(10, generator=gen)
    torch.rand(100)  # more draws that the restore must undo
    torch.randn(100, generator=gen)

    ckpt = load_checkpoint(path)  # weights_only=True inside
    assert ckpt is not None and ckpt["epoch"] == 7
    fresh_gen = torch.Generator().manual_seed(0)
    set_rng_state(ckpt["rng"], {"data": fresh_gen})
    assert torch.equal(torch.rand(6), first_global)
    assert torch.equal(torch.randn(6, generator=fresh_gen), first_gen)
    assert torch.equal(torch.randperm(10, generator=fresh_gen), first_perm)

    model2, opt2 = _small_training_state(torch.Generator().manual_seed(99))
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["optimizer"])
    for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert s1.keys() == s2.keys()
    for k in s1:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(s1[k][name], s2[k][name])


def test_checkpoint_is_loaded_with_weights_only_explicitly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"x": torch.arange(3)})
    seen: dict[str, object] = {}
    real_load = torch.load

    def spy(*args: object, **kwargs: object) -> object:
        seen.update(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    assert torch.equal(load_checkpoint(path)["x"], torch.arange(3))
    assert seen["weights_only"] is True and seen["map_location"] == "cpu"


def test_load_missing_checkpoint_is_none(tmp_path: Path) -> None:
    assert load_checkpoint(tmp_path / "nope.pt") is None


class _Payload:
    """An arbitrary Python object: unpickling it would mean running code from the file."""

    def __init__(self) -> None:
        self.value = 42


def test_checkpoint_with_arbitrary_object_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(2)}, "payload": _Payload()})
    with pytest.raises(UnreadableCheckpoint, match=f"{path}: cannot be read .*Weights only load failed"):
        load_checkpoint(path)
    # The same file does load when the caller opts out of the safety (proving it was well formed).
    assert torch.load(path, weights_only=False)["payload"].value == 42


def test_rng_state_contains_only_weights_only_types() -> None:
    state = rng_state({"a": torch.Generator().manual_seed(1), "b": torch.Generator().manual_seed(2)})
    assert set(state) == {"torch", "cuda", "generators"}
    assert isinstance(state["torch"], torch.Tensor) and isinstance(state["cuda"], list)
    assert set(state["generators"]) == {"a", "b"}
    assert all(isinstance(t, torch.Tensor) for t in state["generators"].values())
    with pytest.raises(ValueError, match="torch.Generator"):
        rng_state({"a": 3})  # type: ignore[dict-item]


def test_set_rng_state_missing_generator_is_an_error() -> None:
    state = rng_state({"a": torch.Generator()})
    with pytest.raises(ValueError, match=r"missing \['b'\]"):
        set_rng_state(state, {"a": torch.Generator(), "b": torch.Generator()})
    set_rng_state(state, {})  # extra saved generators are simply not restored


# ----------------------------------------------------------------------------- provenance


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


@pytest.fixture
def isolated_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    # Keep git from finding a repository above tmp_path or reading the user's configuration.
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def _one_commit_repo(root: Path) -> tuple[Path, str]:
    """A git repo under ``root`` with a.txt committed once; returns it and the commit's sha."""
    repo = root / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.txt").write_text("one\n")
    _git(repo, "add", "a.txt")
    _git(repo, "commit", "-q", "-m", "init")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True)
    return repo, head.stdout.strip()


def test_git_info_in_a_temp_repo(isolated_git: Path) -> None:
    repo, sha = _one_commit_repo(isolated_git)
    info = git_info(repo)
    assert info == {"commit": sha, "dirty": False}
    (repo / "a.txt").write_text("two\n")
    assert git_info(repo) == {"commit": sha, "dirty": True}
    (repo / "sub").mkdir()
    assert git_info(str(repo / "a.txt")) == {"commit": sha, "dirty": True}  # a file means its directory


def test_git_info_untracked_file_is_dirty(isolated_git: Path) -> None:
    repo, _ = _one_commit_repo(isolated_git)
    assert git_info(repo)["dirty"] is False
    (repo / "new.py").write_text("")
    assert git_info(repo)["dirty"] is True


def test_git_info_outside_any_repo(isolated_git: Path) -> None:
    outside = isolated_git / "plain"
    outside.mkdir()
    assert git_info(outside) == {"commit": None, "dirty": None}
    assert git_info(isolated_git / "does-not-exist") == {"commit": None, "dirty": None}


def test_git_info_without_git_never_raises(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable on PATH
    assert git_info(tmp_path) == {"commit": None, "dirty": None}

    def slow(*args: object, **kwargs: object) -> None:
        raise subprocess.TimeoutExpired(cmd="git", timeout=5)

    monkeypatch.setattr(records.subprocess, "run", slow)
    assert git_info() == {"commit": None, "dirty": None}


def test_git_info_default_is_the_package_repo() -> None:
    info = git_info()
    assert set(info) == {"commit", "dirty"}
    assert info["commit"] is None or len(info["commit"]) == 40


def test_versions() -> None:
    import mixlab

    v = versions()
    assert set(v) == {"python", "torch", "torchvision", "mixlab", "hydra", "wandb"}
    assert v["torch"] == torch.__version__ and type(v["torch"]) is str
    assert v["mixlab"] == mixlab.__version__
    assert all(x is None or isinstance(x, str) for x in v.values())
    json.dumps(v)


def test_runs_of_one_process_record_the_code_it_loaded_and_a_checkout_that_moved_on(monkeypatch, tmp_path):
    # A study trains many runs in one process; a commit made meanwhile changes the checkout, not the code that
    # process runs. Its runs name the commit it started from, and the newer one as "now".
    from mixlab.run.train import train

    from .test_config import compose_cfg

    first, later = {"commit": "a" * 40, "dirty": False}, {"commit": "b" * 40, "dirty": True}
    checkout = {"state": first}
    monkeypatch.setattr(records, "git_info", lambda start=None: dict(checkout["state"]))
    monkeypatch.setattr(records, "_LOADED", None, raising=False)
    cfg = compose_cfg("data=digits", "data.train_subset=64", "data.batch_size=32", "model=mlp", "model.hidden=[8]",
                      "device=cpu", "trainer.epochs=1", "trainer.progress=false", "eval.test=false")
    train(cfg, tmp_path / "one")
    checkout["state"] = later
    train(cfg, tmp_path / "two")
    one, two = (json.loads((tmp_path / d / "summary.json").read_text())["git"] for d in ("one", "two"))
    assert one == first
    assert two == {**first, "now": later}
