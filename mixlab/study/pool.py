"""Runs of a study, several at a time on one machine: each in a process of its own (spawned, so no
CUDA or OpenMP state is inherited) with its share of the CPU threads. ``tune`` and ``controls`` use it."""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence


@contextmanager
def _workers_stop_with_me(pool: Any) -> Iterator[None]:
    """SIGTERM or Ctrl-C to the parent stops its workers too: each gets SIGTERM, so its run records
    itself as interrupted (re-running the same command resumes it) instead of running on, orphaned,
    into folders a new parent would also write."""
    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, stop) if threading.current_thread() is threading.main_thread() else None
    try:
        yield
    except BaseException:
        for process in list(getattr(pool, "_processes", {}).values()):
            process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def run_all(fn: Callable[..., Any], calls: Sequence[tuple], jobs: int = 1) -> list[Any]:
    """``[fn(*c) for c in calls]``, ``jobs`` at a time (``fn`` a module-level function, its arguments
    picklable); results in the order of ``calls``."""
    if jobs == 1 or len(calls) <= 1:
        return [fn(*c) for c in calls]
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                             initargs=(threads,)) as pool, _workers_stop_with_me(pool):
        return list(pool.map(fn, *zip(*calls)))
