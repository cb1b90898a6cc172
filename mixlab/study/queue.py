"""The work of a study shared between the processes running it, through its Optuna storage.

Each phase is an Optuna study in the storage (``<study>/<arm>`` for an arm's tuning trials, so
``optuna-dashboard`` shows them as they finish; ``<study>/comparison``, ``<study>/controls`` and
``<study>/report`` for the rest), whose items are enqueued once, by the process that created it, and
claimed one at a time: Optuna's WAITING → RUNNING transition succeeds for exactly one process in its
RDB storages (SQLite, PostgreSQL, MySQL) and its journal storage. So several processes — on one machine,
or on several against a server or a journal file on a shared file system — split a phase between them,
no item runs twice, and each arm's trials are exactly its budget.

A claim records its process (host, pid). A claim whose process is gone — a Ctrl-C, a killed job — is
taken over by the next process on that host (the item is marked failed and enqueued again under the
same key). A process on another host cannot be asked whether it still runs, so a holder beats instead:
while its jobs run it counts up the item's ``beat`` every ``stale_after_s / 10`` seconds, and a watcher
that sees no new beat for ``stale_after_s`` by its own clock takes the claim over the same way (a node
lost mid-job, a SLURM job killed without a signal). Optuna's own heartbeat (``RDBStorage(heartbeat_
interval=…)``) is not used: the journal storage has none, and it compares against the database's clock.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from ..run.config import ConfigError

# how long a process waits for the process that created a phase's items to finish enqueueing them
QUEUE_WAIT_S = 60.0
POLL_S = 2.0
BEATS_PER_TIMEOUT = 10  # a holder beats this many times in stale_after_s


@dataclass
class Item:
    key: str  # what the item is: "trial_3", a run folder
    params: dict = field(default_factory=dict)  # a tuning trial's values inside its search space (the dashboard's)
    attrs: dict = field(default_factory=dict)  # kept with the item (a trial's k, its values)
    distributions: dict = field(default_factory=dict)


def open_storage(url: str) -> Any:
    """An Optuna storage from ``study.storage``: an RDB URL (``sqlite:///DIR/optuna.db`` by default,
    ``postgresql://…``), or ``journal:PATH`` for a journal file (Optuna's choice for a shared file system)."""
    import optuna

    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url[len("journal:"):]))
    # SQLite: wait for another process's write instead of failing at once; two processes creating the
    # tables at once: the later one finds them made (an IntegrityError on the schema version), and retries
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else {}
    return _retry(lambda: optuna.storages.RDBStorage(url, engine_kwargs=kwargs),
                  errors=("OperationalError", "IntegrityError"))


def _retry(fn: Callable[[], Any], tries: int = 20, errors: tuple[str, ...] = ("OperationalError",)) -> Any:
    """``fn()``, again after a pause while the database is locked by another process's write (SQLite)."""
    for attempt in range(tries):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - only sqlalchemy's errors named in ``errors`` are retried
            if type(e).__name__ not in errors or attempt == tries - 1:
                raise
            time.sleep(0.05 * (attempt + 1))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder(t: Any) -> str:
    """A trial's item and who holds it: "key (host pid N since T)", or "key (waiting)"."""
    w = t.user_attrs.get("worker") or {}
    key = t.user_attrs.get("key")
    return f"{key} ({w.get('host')} pid {w.get('pid')} since {w.get('since')})" if w else f"{key} (waiting)"


class Queue:
    """One phase's items in the storage (see the module's docstring)."""

    def __init__(self, storage: Any, name: str, plan: str, items: list[Item], *, direction: str = "maximize",
                 stale_after_s: float | None = 600.0) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.storage, self.name, self.host, self.pid = storage, name, socket.gethostname(), os.getpid()
        self.stale_after_s = stale_after_s
        self._seen: dict[int, tuple[Any, float]] = {}  # another host's claim: (its last beat, when first seen here)
        self.taken_over: list[str] = []  # the stale claims this process failed and queued again, and why
        self.items = {it.key: it for it in items}
        try:
            self.study = _retry(lambda: optuna.create_study(study_name=name, storage=storage, direction=direction))
        except optuna.exceptions.DuplicatedStudyError:
            self.study = _retry(lambda: optuna.load_study(study_name=name, storage=storage))
            self._wait_until_queued(plan)
        else:
            for it in items:
                self._enqueue(it)
            _retry(lambda: self.study.set_user_attr("plan", plan))
            _retry(lambda: self.study.set_user_attr("queued", len(items)))
        self.study_id = self.storage.get_study_id_from_name(name)

    def _enqueue(self, it: Item, **extra: Any) -> None:
        _retry(lambda: self.study.enqueue_trial({}, user_attrs={"key": it.key, **it.attrs, **extra}))

    def _wait_until_queued(self, plan: str) -> None:
        deadline = time.monotonic() + QUEUE_WAIT_S
        while "queued" not in self.study.user_attrs:
            if time.monotonic() > deadline:
                raise ConfigError(f"study.storage: {self.name!r} there was never filled (the process creating it "
                                  "stopped first); expected it deleted (optuna delete-study), or another storage")
            time.sleep(POLL_S / 4)
        theirs = self.study.user_attrs.get("plan")
        if theirs != plan:
            raise ConfigError(f"study.storage: {self.name!r} there belongs to plan {theirs}, not {plan}; expected "
                              "a storage (or study folder name) of its own for each plan")

    # ------------------------------------------------------------------------- claims

    def _trials(self, *states: Any) -> list:
        return _retry(lambda: self.study.get_trials(deepcopy=False, states=states or None))

    def _id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def claim(self, n: int) -> list[Item]:
        """Up to ``n`` waiting items, now this process's (in the order they were enqueued)."""
        from optuna.trial import TrialState

        self._take_over_stale()
        mine: list[Item] = []
        for t in self._trials(TrialState.WAITING):
            if len(mine) == n:
                break
            tid = self._id(t.number)
            if not _retry(lambda: self.storage.set_trial_state_values(tid, TrialState.RUNNING)):
                continue  # another process took it first
            self.storage.set_trial_user_attr(tid, "worker", {"host": self.host, "pid": self.pid,
                                                             "since": time.strftime("%Y-%m-%dT%H:%M:%S")})
            self.storage.set_trial_user_attr(tid, "beat", 0)
            it = self.items[t.user_attrs["key"]]
            for k, v in it.params.items():
                dist = it.distributions[k]
                self.storage.set_trial_param(tid, k, dist.to_internal_repr(v), dist)
            it.attrs["_number"] = t.number
            mine.append(it)
        return mine

    @contextmanager
    def holding(self, items: list[Item]) -> Iterator[None]:
        """While the block runs (the items' jobs), beat for each item so that no other host takes it over."""
        if self.stale_after_s is None or not items:
            yield
            return
        stop = threading.Event()
        tids = [self._id(it.attrs["_number"]) for it in items]

        def beat() -> None:
            n = 0
            while not stop.wait(self.stale_after_s / BEATS_PER_TIMEOUT):
                n += 1
                for tid in tids:
                    try:
                        _retry(lambda: self.storage.set_trial_user_attr(tid, "beat", n))
                    except Exception:  # noqa: BLE001 - taken over meanwhile (finished), or the storage away for now
                        pass

        thread = threading.Thread(target=beat, name=f"mixlab-beat-{self.name}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def finish(self, it: Item, value: float | None, **attrs: Any) -> None:
        """The item done: COMPLETE with ``value``, or FAIL when it has none. An item another process took
        over meanwhile (no beat reached it in time) is left to that process: its jobs read the runs back."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        tid = self._id(it.attrs["_number"])
        try:
            for k, v in attrs.items():
                self.storage.set_trial_user_attr(tid, k, v)
            if value is None:
                _retry(lambda: self.storage.set_trial_state_values(tid, TrialState.FAIL))
            else:
                _retry(lambda: self.storage.set_trial_state_values(tid, TrialState.COMPLETE, [float(value)]))
        except UpdateFinishedTrialError:
            pass

    def retry_failed(self, completed: Callable[[str], bool]) -> None:
        """Queue again each item whose last try failed and whose runs have not all ``completed`` since (a
        re-run of the study command retries what failed, as a re-run of a sweep does)."""
        from optuna.trial import TrialState

        last: dict[str, Any] = {}
        for t in self._trials():
            last[t.user_attrs.get("key")] = t
        for key, t in last.items():
            if t.state == TrialState.FAIL and key in self.items and not completed(key):
                self._enqueue(self.items[key], retry_of=t.number)

    def _stale(self, t: Any) -> str | None:
        """Why the RUNNING trial ``t``'s claim is another process's that no longer runs (None while it may run):
        on this host, its pid is gone; on another, its beat has not moved for ``stale_after_s`` by this clock."""
        worker = t.user_attrs.get("worker") or {}
        if worker.get("host") == self.host:
            gone = worker.get("pid") not in (None, self.pid) and not _alive(worker["pid"])
            return "its process is gone" if gone else None
        if self.stale_after_s is None:
            return None
        beat, now = t.user_attrs.get("beat"), time.monotonic()
        last, since = self._seen.get(t.number, (None, now))
        if t.number not in self._seen or beat != last:
            self._seen[t.number] = (beat, now)
            return None
        if now - since <= self.stale_after_s:
            return None
        return f"no beat for {self.stale_after_s:g} s (study.stale_after_s)"

    def _take_over_stale(self) -> None:
        """A RUNNING item whose claim is stale (see ``_stale``): failed, and queued again."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        for t in self._trials(TrialState.RUNNING):
            why = self._stale(t)
            if why is None:
                continue
            try:  # only the process whose FAIL lands re-enqueues it
                _retry(lambda: self.storage.set_trial_state_values(self._id(t.number), TrialState.FAIL))
            except UpdateFinishedTrialError:
                continue
            self._enqueue(self.items[t.user_attrs["key"]], retry_of=t.number)
            self.taken_over.append(f"{_holder(t)}: {why}")

    def others(self) -> list[str]:
        """The items still claimed by other processes, as "key (host pid since)"; [] when the phase is done
        but for this process's own."""
        from optuna.trial import TrialState

        self._take_over_stale()
        out = []
        for t in self._trials(TrialState.RUNNING, TrialState.WAITING):
            w = t.user_attrs.get("worker") or {}
            if t.state == TrialState.WAITING or w.get("pid") != self.pid or w.get("host") != self.host:
                out.append(_holder(t))
        return out

    def done(self) -> dict[str, Any]:
        """Each key's last finished trial (COMPLETE or FAIL), as Optuna's FrozenTrial."""
        from optuna.trial import TrialState

        return {t.user_attrs["key"]: t for t in self._trials(TrialState.COMPLETE, TrialState.FAIL)}
