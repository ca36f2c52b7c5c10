"""The forecast loop's fits in a child process, so they never hold the operator's GIL.

A statsmodels fit is up to a second or two of mostly-Python CPU. In a thread of the operator it
holds the GIL, and the migration pass's thread gets it back only in slices: measured on this
project's dev machine, an admin round trip from an asyncio loop took a median of 8-11 ms instead
of 2, and a p99 of 100-190 ms instead of 25, while one thread fitted. A move's pause is several
such round trips plus a status write. So the fits run in one child process:

    forecast loop (thread) --turns of one cycle, pickled--> child: demand.refresh_all
                           <--new fit states, or why not---

* spawned, not forked: the operator has gRPC and kopf threads, which a fork would copy mid-flight;
* niced (FIT_NICENESS): the kernel lets the brokers, the API server and the pass go first;
* one trip per cycle; the states stay the parent's (QueueMemo), the child keeps nothing, so a
  child that dies (OOM killer, a crash) is replaced on the next call and loses no state;
* it ends with the operator: the child checks every second that its parent is still there.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from foreshard.core import demand

log = logging.getLogger(__name__)

FIT_NICENESS = 10
PARENT_CHECK_S = 1.0


def _start_child(parent: int) -> None:
    # where not permitted, fits compete at normal priority, which is slower but still correct
    with contextlib.suppress(OSError):
        os.nice(FIT_NICENESS)
    threading.Thread(target=_end_with, args=(parent,), name="end-with-operator", daemon=True).start()


def _end_with(parent: int) -> None:
    """Exit once the operator is gone. A spawned worker holds both ends of its call queue, so a
    SIGKILLed operator would leave it waiting forever (a test caught that)."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    os._exit(0)


class FitProcess:
    """A `demand.RefreshAll` that runs in a child process; callable from any thread."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def __call__(
        self, turns: Mapping[str, demand.Turn], common: demand.Common, stopwatch: Callable[[], float]
    ) -> dict[str, demand.FitState | str]:
        if not turns:
            return {}
        for _ in range(2):  # a child that died is replaced once per cycle
            try:
                return self._submit(turns, common, stopwatch)
            except (BrokenProcessPool, OSError) as error:
                log.warning("the forecast fit process failed (%s); starting a new one", error)
                self.close()
        # no child can start here: forecasting goes on in this thread, at the cost the child avoids
        log.error("no forecast fit process could start; fitting in the operator's own thread")
        return demand.refresh_all(turns, common, stopwatch)

    def _submit(
        self, turns: Mapping[str, demand.Turn], common: demand.Common, stopwatch: Callable[[], float]
    ) -> dict[str, demand.FitState | str]:
        return self.pool().submit(demand.refresh_all, dict(turns), common, stopwatch).result()

    def pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    max_workers=1,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start_child,
                    initargs=(os.getpid(),),
                )
            return self._pool

    def pids(self) -> list[int]:
        """The child's pid once it runs (for tests and diagnostics)."""
        pool = self._pool
        return sorted((getattr(pool, "_processes", None) or {}).keys()) if pool is not None else []

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
