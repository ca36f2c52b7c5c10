"""The forecast loop's fits in a child process (adapters/fitprocess.py): the same answers as in
the operator's own thread, a child that dies is replaced, and a child outlives no operator."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from foreshard.adapters.fitprocess import FIT_NICENESS, FitProcess
from foreshard.core import demand
from foreshard.core.series import Series


def turns() -> dict[str, demand.Turn]:
    rng = np.random.default_rng(7)
    n = 600
    daily = 100 + 40 * np.sin(np.arange(n) * 2 * np.pi / 144) + rng.normal(0, 4, n)
    return {
        "busy": demand.Turn(None, Series("busy", 0.0, 60.0, np.maximum(daily, 0)), 30, True),
        "short": demand.Turn(None, Series("short", 0.0, 60.0, np.array([1.0, 2.0])), 30, True),
    }


COMMON = demand.Common((0.1, 0.5, 0.9), now_s=600 * 60.0)


@pytest.fixture
def fits() -> FitProcess:
    process = FitProcess()
    yield process
    process.close()


def test_the_child_gives_the_states_the_thread_gives_and_says_why_a_series_cannot_be_fitted(
    fits: FitProcess,
) -> None:
    here = demand.refresh_all(turns(), COMMON)
    there = fits(turns(), COMMON, time.perf_counter)
    assert set(there) == {"busy", "short"}
    assert isinstance(there["short"], str) and there["short"] == here["short"]
    busy, expected = there["busy"], here["busy"]
    assert isinstance(busy, demand.FitState) and isinstance(expected, demand.FitState)
    assert busy.fitted.name == expected.fitted.name
    assert busy.forecast is not None and expected.forecast is not None
    np.testing.assert_allclose(busy.forecast.mean, expected.forecast.mean)
    assert busy.fit_seconds > 0, "the child timed its fit with the stopwatch it was given"
    (pid,) = fits.pids()
    assert pid != os.getpid()
    assert os.getpriority(os.PRIO_PROCESS, pid) >= min(19, os.getpriority(os.PRIO_PROCESS, 0) + FIT_NICENESS)


def test_a_child_that_died_is_replaced_on_the_next_cycle(fits: FitProcess) -> None:
    fits(turns(), COMMON, time.perf_counter)
    (first,) = fits.pids()
    os.kill(first, signal.SIGKILL)
    time.sleep(0.5)
    again = fits(turns(), COMMON, time.perf_counter)
    assert isinstance(again["busy"], demand.FitState)
    assert fits.pids() and fits.pids()[0] != first


PARENT = """
import sys, time
from foreshard.adapters.fitprocess import FitProcess
from foreshard.core import demand
from foreshard.core.series import Series
import numpy as np
fits = FitProcess()
fits({"k": demand.Turn(None, Series("k", 0.0, 60.0, np.arange(300.0)), 10, True)},
     demand.Common((0.5,), now_s=300 * 60.0), time.perf_counter)
print(fits.pids()[0], flush=True)
time.sleep(600)
"""


def test_the_child_ends_when_the_operator_is_killed() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and _alive(child):
            time.sleep(0.1)
        assert not _alive(child), "the fit process outlived the operator SIGKILLed"
    finally:
        if parent.poll() is None:
            parent.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_where_no_child_can_start_the_fits_run_in_the_callers_thread(
    fits: FitProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse() -> None:
        raise OSError("no semaphores here")

    monkeypatch.setattr(fits, "pool", refuse)
    there = fits(turns(), COMMON, time.perf_counter)
    assert isinstance(there["busy"], demand.FitState) and isinstance(there["short"], str)
    assert fits.pids() == []
