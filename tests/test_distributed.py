"""DDP tier: two CPU processes on the gloo backend, in-process (``mp.spawn``) and under ``torchrun``."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mixlab.run.config import ConfigError, validate
from mixlab.data import Batches, Dataset
from mixlab.run.distributed import Dist, setup
from mixlab.engine.mixing import Mix
from mixlab.run.records import load_checkpoint
import mixlab.run.train as train_module
from mixlab.run.train import Interrupted, build, train

from .test_config import ROOT, compose_cfg
from .test_train import FAST, without_timing

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="needs torch.distributed with gloo")


def images(n: int) -> Dataset:
    x = torch.rand(n, 1, 5, 4, generator=torch.Generator().manual_seed(0))
    y = torch.arange(n) % 3
    return Dataset("synthetic", "classification", x, y, x[:2], y[:2], 3, (0.0,), (1.0,))


def test_batches_split_each_global_batch_between_the_processes():
    kw = dict(batch_size=10, crop_padding=1, hflip=True)

    def epoch(ds, rank, world):
        return list(Batches(ds, generator=torch.Generator().manual_seed(3), rank=rank, world_size=world, **kw))

    ds = images(36)
    whole, r0, r1 = epoch(ds, 0, 1), epoch(ds, 0, 2), epoch(ds, 1, 2)
    assert len(whole) == len(r0) == len(r1) == 4
    for w, a, b in zip(whole, r0, r1):  # same rows, same augmentation: shares of the one global batch
        for i in range(3):
            assert torch.equal(w[i], torch.cat([a[i], b[i]]))
    ds = images(37)  # padded by wrapping around: equal shares at every step, every sample seen
    r0, r1 = epoch(ds, 0, 2), epoch(ds, 1, 2)
    assert [len(b[2]) for b in r0] == [len(b[2]) for b in r1] == [5, 5, 5, 4]
    seen = torch.cat([b[2] for b in r0 + r1])
    assert len(seen) == 38 and set(seen.tolist()) == set(range(37))
    with pytest.raises(ValueError, match=r"^batch_size=9: expected a multiple of the 2 processes"):
        Batches(ds, batch_size=9, generator=torch.Generator(), rank=0, world_size=2)


def test_pairing_scope_is_validated():
    with pytest.raises(ConfigError, match=r"^trainer.pairing_scope='everywhere': expected local \| global"):
        validate(compose_cfg(*FAST, "trainer.pairing_scope=everywhere"))
    with pytest.raises(ConfigError, match=r"^trainer.pairing_scope='global': not supported with mixer=manifold"):
        build(compose_cfg(*FAST, "trainer.pairing_scope=global", "mixer=manifold"))


# A run with per-sample state (loss-based λ), dropout and 8 steps an epoch.
RUN = (*FAST, "trainer.epochs=5", "lambda=loss", "lam.per_sample=true", "model.dropout=0.2")


def _check_mix(d: Dist) -> None:
    """Global pairing: one pairing over both processes' rows, each process mixing its own rows."""
    rank, b = d.rank, 8
    index = torch.arange(b) + b * rank
    y = index.clone()  # each sample its own class: the soft targets show who was mixed with whom
    x = torch.randn(b, 3, generator=torch.Generator().manual_seed(rank)).requires_grad_()
    mix = Mix(lam="beta", pairing="random", num_classes=2 * b, generator=torch.Generator().manual_seed(d.seed(0)),
              gather=d.gather, rank=rank, scope="global", shared_generator=torch.Generator().manual_seed(0))
    reference = Mix(lam="beta", pairing="random", generator=torch.Generator().manual_seed(0))
    xs, ys = d.gather(x.detach()), d.gather(y)
    from_other = 0
    for _ in range(3):
        x_mix, y_mix = mix(x, y, index=index)
        partner, lam = mix.last.partner, mix.last.lam
        # every process drew the same global pairing and λ: its rows of the one reference draw
        want_partner, want_lam = reference.sample(xs, ys, index=d.gather(index))
        assert torch.equal(d.gather(partner), want_partner) and torch.equal(d.gather(lam), want_lam)
        assert torch.allclose(x_mix, lam[:, None] * x + (1 - lam[:, None]) * xs[partner], atol=1e-6)
        rows, self_pair = torch.arange(b), partner == index
        assert torch.allclose(y_mix[rows, index], torch.where(self_pair, 1.0, lam))
        assert torch.allclose(y_mix[rows, ys[partner]], torch.where(self_pair, 1.0, 1 - lam))
        from_other += int((partner // b != rank).sum())
        x.grad = None
        x_mix.sum().backward()  # the gradient reaches the own rows only, weighted by their λ
        assert torch.allclose(x.grad, lam[:, None].expand(b, 3))
    assert from_other > 0  # partners come from the other process too

    # a loss-based policy observes every process's losses: the same per-sample state everywhere
    for signal in ("ce", "excess"):
        loss_mix = Mix(lam="loss", lam_kwargs={"per_sample": True, "signal": signal}, num_classes=2 * b,
                       generator=torch.Generator().manual_seed(d.seed(0)), gather=d.gather, rank=rank)
        loss_mix.setup(num_samples=2 * b)
        loss_mix(x.detach(), y, index=index)
        loss_mix.observe(index.float() + 10, index)
        # excess: each process's own mixed targets' entropy travels with its losses
        floor = loss_mix.target_entropy() if signal == "excess" else torch.zeros(b)
        assert torch.allclose(loss_mix.lam_policy.seen, d.gather(index.float() + 10 - floor))
        assert torch.equal(loss_mix.lam_policy.seen, d.gather(loss_mix.lam_policy.seen[index]))  # same everywhere


def _interrupt_twice_and_resume(d: Dist, run_dir: Path) -> None:
    """SIGTERM to rank 1 alone mid-epoch 2, then to rank 0 alone after epoch 3: both processes stop
    together each time, and the run resumes."""
    real_loss, real_save, calls = train_module.loss_per_sample, train_module.save_checkpoint, []

    def signal_rank_1(*args):
        calls.append(1)
        if d.rank == 1 and len(calls) == 10:  # epoch 2, step 2 (8 steps an epoch)
            os.kill(os.getpid(), signal.SIGTERM)
        return real_loss(*args)

    def signal_rank_0(path, state):
        real_save(path, state)
        if state["epoch"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    cfg = compose_cfg(*RUN)
    for patch, where, done in ((("loss_per_sample", signal_rank_1), "epoch 2 after step 8", 1),
                              (("save_checkpoint", signal_rank_0), "after epoch 3", 3)):
        setattr(train_module, *patch)
        try:
            with pytest.raises(Interrupted, match=where):
                train(cfg, run_dir)
        finally:
            train_module.loss_per_sample, train_module.save_checkpoint = real_loss, real_save
        if d.main:
            assert load_checkpoint(run_dir / "last.pt")["epoch"] == done and len(metrics(run_dir)) == done
            assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"
        d.any(False)  # rank 0 has checked before anyone goes on
    train(cfg, run_dir)


def _two_processes(rank: int, tmp: str) -> None:
    """One of two spawned processes, as torchrun would start it."""
    torch.set_num_threads(1)  # as under torchrun: the same float results as the CLI run
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=2,
                            timeout=timedelta(seconds=120))
    try:
        d = setup()
        assert d == Dist(rank=rank, world=2, local_rank=rank)
        _check_mix(d)
        tmp_dir = Path(tmp)
        cfg = compose_cfg(*FAST, "trainer.epochs=1", "trainer.pairing_scope=global", "lambda=loss",
                          "lam.per_sample=true")
        acc = train(cfg, tmp_dir / f"global{rank}")  # rank 0's directory is everybody's
        assert acc == json.loads((tmp_dir / "global0" / "summary.json").read_text())["objective"]
        train(compose_cfg(*RUN), tmp_dir / "full")
        _interrupt_twice_and_resume(d, tmp_dir / "resumed")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def in_process(tmp_path_factory) -> Path:
    """Two spawned processes on gloo (no torchrun): Mix across processes, a run with global pairing,
    a run, and the same run interrupted twice and resumed."""
    tmp = tmp_path_factory.mktemp("ddp")
    mp.spawn(_two_processes, args=(str(tmp),), nprocs=2, join=True)
    return tmp


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_pair_globally_and_resume_exactly(in_process, tmp_path):
    summary = json.loads((in_process / "global0" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["world_size"] == 2
    assert summary["config"]["trainer"]["pairing_scope"] == "global"
    assert sum(metrics(in_process / "global0")[0]["lam_hist"]) == 256  # λ of both processes' samples
    assert not (in_process / "global1").exists()

    resumed = json.loads((in_process / "resumed" / "summary.json").read_text())
    assert resumed["status"] == "completed"
    assert without_timing(metrics(in_process / "resumed")) == without_timing(metrics(in_process / "full"))

    single = tmp_path / "single"  # a 2-process checkpoint does not resume in one process
    single.mkdir()
    shutil.copy(in_process / "full" / "last.pt", single / "last.pt")
    with pytest.raises(ConfigError, match="written by 2 process"):
        train(compose_cfg(*RUN), single)


def test_torchrun_cli_writes_records_once_and_matches_the_in_process_run(in_process, tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mixlab",
           *RUN, f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["world_size"] == 2 and summary["epochs_done"] == 5
    assert [row["epoch"] for row in metrics(run_dir)] == [1, 2, 3, 4, 5]  # written once, by rank 0
    assert r.stdout.count("epoch 1/5 ") == 1 and r.stderr.count("mixlab: data=") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no second (rank 1) Hydra directory
    # the same run twice, launched two ways: identical metrics (per-process seeds, not chance)
    assert without_timing(metrics(run_dir)) == without_timing(metrics(in_process / "full"))
