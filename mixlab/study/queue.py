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
same key); a claim from another host is waited for, and named while it is.
"""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..run.config import ConfigError

# how long a process waits for the process that created a phase's items to finish enqueueing them
QUEUE_WAIT_S = 60.0
POLL_S = 2.0


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


class Queue:
    """One phase's items in the storage (see the module's docstring)."""

    def __init__(self, storage: Any, name: str, plan: str, items: list[Item], *, direction: str = "maximize") -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.storage, self.name, self.host, self.pid = storage, name, socket.gethostname(), os.getpid()
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
            it = self.items[t.user_attrs["key"]]
            for k, v in it.params.items():
                dist = it.distributions[k]
                self.storage.set_trial_param(tid, k, dist.to_internal_repr(v), dist)
            it.attrs["_number"] = t.number
            mine.append(it)
        return mine

    def finish(self, it: Item, value: float | None, **attrs: Any) -> None:
        """The item done: COMPLETE with ``value``, or FAIL when it has none."""
        from optuna.trial import TrialState

        tid = self._id(it.attrs["_number"])
        for k, v in attrs.items():
            self.storage.set_trial_user_attr(tid, k, v)
        if value is None:
            _retry(lambda: self.storage.set_trial_state_values(tid, TrialState.FAIL))
        else:
            _retry(lambda: self.storage.set_trial_state_values(tid, TrialState.COMPLETE, [float(value)]))

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

    def _take_over_stale(self) -> None:
        """A RUNNING item claimed on this host by a process that no longer runs: failed, and queued again."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        for t in self._trials(TrialState.RUNNING):
            worker = t.user_attrs.get("worker") or {}
            if worker.get("host") != self.host or worker.get("pid") in (None, self.pid) or _alive(worker["pid"]):
                continue
            try:  # only the process whose FAIL lands re-enqueues it
                _retry(lambda: self.storage.set_trial_state_values(self._id(t.number), TrialState.FAIL))
            except UpdateFinishedTrialError:
                continue
            self._enqueue(self.items[t.user_attrs["key"]], retry_of=t.number)

    def others(self) -> list[str]:
        """The items still claimed by other processes, as "key (host pid since)"; [] when the phase is done
        but for this process's own."""
        from optuna.trial import TrialState

        self._take_over_stale()
        out = []
        for t in self._trials(TrialState.RUNNING, TrialState.WAITING):
            w = t.user_attrs.get("worker") or {}
            if t.state == TrialState.WAITING or w.get("pid") != self.pid or w.get("host") != self.host:
                out.append(f"{t.user_attrs.get('key')} ({w.get('host')} pid {w.get('pid')} since {w.get('since')})"
                           if w else f"{t.user_attrs.get('key')} (waiting)")
        return out

    def done(self) -> dict[str, Any]:
        """Each key's last finished trial (COMPLETE or FAIL), as Optuna's FrozenTrial."""
        from optuna.trial import TrialState

        return {t.user_attrs["key"]: t for t in self._trials(TrialState.COMPLETE, TrialState.FAIL)}
