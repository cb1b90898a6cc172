"""The study's work queue on an Optuna storage (mixlab/study/queue.py): claims, takeovers, refusals."""
from __future__ import annotations

import subprocess
import time
import sys

import optuna
import pytest

from mixlab.run.config import ConfigError
from mixlab.study.queue import Item, Queue, open_storage


def items(n: int) -> list[Item]:
    dist = optuna.distributions.FloatDistribution(0.1, 4.0, log=True)
    return [Item(f"trial_{k}", params={"lam.alpha": 0.5 + k}, attrs={"k": k}, distributions={"lam.alpha": dist})
            for k in range(n)]


@pytest.fixture(params=["sqlite", "journal"])
def url(request, tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'optuna.db'}" if request.param == "sqlite" else f"journal:{tmp_path / 'journal.log'}"


def test_every_item_is_claimed_once_across_two_queues_on_one_storage(url):
    a = Queue(open_storage(url), "s/beta", "h1", items(5))
    b = Queue(open_storage(url), "s/beta", "h1", items(5))  # a second process: it loads what the first queued
    got = a.claim(2) + b.claim(2) + a.claim(2) + b.claim(2)
    assert sorted(it.key for it in got) == [f"trial_{k}" for k in range(5)]
    for it in got:
        (a if it in got[:2] else b).finish(it, 0.5 + it.attrs["k"] / 10)
    done = a.done()
    assert sorted(done) == [f"trial_{k}" for k in range(5)] and not a.others()
    # what optuna-dashboard shows: each trial's params and value
    trials = optuna.load_study(study_name="s/beta", storage=open_storage(url)).get_trials()
    assert [(t.params, t.value) for t in trials] == [({"lam.alpha": 0.5 + k}, 0.5 + k / 10) for k in range(5)]


def test_a_claim_whose_process_is_gone_is_taken_over_and_one_held_by_a_live_one_is_waited_for(url):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    storage = open_storage(url)
    q = Queue(storage, "s/comparison", "h1", [Item("a"), Item("b")])
    first, second = q.claim(2)
    tid = storage.get_trial_id_from_study_id_trial_number(q.study_id, first.attrs["_number"])
    worker = storage.get_trial(tid).user_attrs["worker"]
    storage.set_trial_user_attr(tid, "worker", {**worker, "pid": dead_pid})  # as if its process was killed
    other = Queue(open_storage(url), "s/comparison", "h1", [Item("a"), Item("b")])
    other.pid = -1  # another process on this host
    assert [it.key for it in other.claim(5)] == ["a"]  # taken over; "b" is still ours, alive
    assert other.others() == [f"b ({worker['host']} pid {worker['pid']} since {worker['since']})"]
    q.finish(second, 1.0)
    other.finish(other.items["a"], 1.0)
    assert not other.others() and sorted(other.done()) == ["a", "b"]
    states = [t.state.name for t in optuna.load_study(study_name="s/comparison", storage=storage).get_trials()]
    assert states == ["FAIL", "COMPLETE", "COMPLETE"]  # the dead claim stays visible as failed


def test_a_failed_item_is_queued_again_by_the_next_command_unless_its_runs_completed_since(url):
    q = Queue(open_storage(url), "s/controls", "h1", [Item("a"), Item("b")])
    a, b = q.claim(2)
    q.finish(a, None)
    q.finish(b, None)
    again = Queue(open_storage(url), "s/controls", "h1", [Item("a"), Item("b")])
    again.retry_failed(lambda key: key == "b")  # b's run completed after all (e.g. by hand)
    assert [it.key for it in again.claim(5)] == ["a"]


def test_a_storage_holding_another_plans_study_is_refused_in_one_line(url):
    Queue(open_storage(url), "s/beta", "h1", items(2))
    with pytest.raises(ConfigError, match=r"study.storage: 's/beta' there belongs to plan h1, not h2"):
        Queue(open_storage(url), "s/beta", "h2", items(2))


def test_a_claim_from_another_host_that_stops_beating_is_taken_over_and_a_beating_one_is_not(url):
    """A lost node (its process can't be asked from here): its claim stops beating, and after
    ``stale_after_s`` of no beat, by the watcher's clock, the watcher takes it over (1 s here, beats every 0.1 s)."""
    lost = Queue(open_storage(url), "s/comparison", "h1", [Item("a"), Item("b"), Item("c")], stale_after_s=1.0)
    lost.host = "node-lost"
    live = Queue(open_storage(url), "s/comparison", "h1", [Item("a"), Item("b"), Item("c")], stale_after_s=1.0)
    live.host = "node-live"
    here = Queue(open_storage(url), "s/comparison", "h1", [Item("a"), Item("b"), Item("c")], stale_after_s=1.0)
    (a,), (b,) = lost.claim(1), live.claim(1)
    with live.holding([b]):  # b's jobs run for 2.5 s, beating; a's holder is gone and beats no more
        seen = []
        for _ in range(25):
            seen += [it.key for it in here.claim(5)]
            time.sleep(0.1)
    assert seen == ["c", "a"]  # c at once; a once it had not beaten for 1 s; b never
    assert here.taken_over == [f"a (node-lost pid {lost.pid} since {a_since(url)}): no beat for 1 s "
                               "(study.stale_after_s)"]
    lost.finish(a, 1.0)  # the lost process comes back and finishes: its claim was failed, the new one stands
    live.finish(b, 1.0)
    for it in (here.items["a"], here.items["c"]):
        here.finish(it, 1.0)
    states = sorted((t.user_attrs["key"], t.state.name)
                    for t in optuna.load_study(study_name="s/comparison", storage=open_storage(url)).get_trials())
    assert states == [("a", "COMPLETE"), ("a", "FAIL"), ("b", "COMPLETE"), ("c", "COMPLETE")]


def a_since(url: str) -> str:
    trials = optuna.load_study(study_name="s/comparison", storage=open_storage(url)).get_trials()
    return next(t.user_attrs["worker"]["since"] for t in trials if t.user_attrs["key"] == "a")


def test_with_stale_after_s_null_a_silent_claim_from_another_host_is_waited_for(url):
    lost = Queue(open_storage(url), "s/controls", "h1", [Item("a")], stale_after_s=None)
    lost.host = "node-lost"
    lost.claim(1)
    here = Queue(open_storage(url), "s/controls", "h1", [Item("a")], stale_after_s=None)
    for _ in range(3):
        assert here.claim(5) == [] and len(here.others()) == 1
        time.sleep(0.2)


@pytest.mark.parametrize("value", ["soon", 0, 5, True])
def test_a_bad_stale_after_s_is_refused_in_one_line(value):
    from omegaconf import OmegaConf

    from mixlab.run.config import validate

    cfg = OmegaConf.create({"study": {"stale_after_s": value}})
    with pytest.raises(ConfigError, match=rf"^study.stale_after_s={value!r}: expected null, or seconds \(a number >= 10\)"):
        validate(cfg)
    validate(OmegaConf.create({"study": {"stale_after_s": None}}))
    validate(OmegaConf.create({"study": {"stale_after_s": 30}}))
