"""What the forecast loop's fits do to the migration pass's broker round trips, side by side:
no fits, fits in a thread of the same process (the operator before adapters/fitprocess.py), and
fits in the child process the operator now uses.

    one real broker process on loopback
    <- an asyncio loop in its own thread (as the migration pass runs) times GetRouting round trips
       while the fits run: nowhere (idle), in another thread here (GIL shared), in FitProcess (child)

The fits are the forecast loop's own (`demand.refresh_all`, statsmodels candidates included: each
series is fitted twice, the second fit being the statsmodels one, as in the loop) over 8 daily
series, repeated for as long as the round trips are timed. A move's pause is several such round
trips and a status write, so the ratio is what matters. The machine is shared and noisy: each
mode runs ROUNDS times, interleaved, and the table gives medians over all its trips.

Prints a table, then ONE JSON line; writes bench/results/fit_isolation.{json,txt}.
Environment: BENCH_TRIPS (300 per round), BENCH_ROUNDS (3).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from benchio import keep

from foreshard.adapters.fitprocess import FitProcess
from foreshard.core import demand
from foreshard.core.series import Series
from foreshard_broker.client.broker_client import AdminClient
from foreshard_broker.testing import BrokerProcess

TRIPS = int(os.environ.get("BENCH_TRIPS", "300"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
MODES = ("idle", "thread", "child")
Fits = Callable[[dict[str, demand.Turn], demand.Common, Callable[[], float]], dict[str, object]]


def series(n: int = 8, length: int = 1440) -> dict[str, Series]:
    rng = np.random.default_rng(11)
    t = np.arange(length)
    daily = [50 + 30 * np.sin(t * 2 * np.pi / 288 + i) + rng.normal(0, 4, length) for i in range(n)]
    return {f"k{i}": Series(f"k{i}", 0.0, 60.0, np.maximum(values, 0)) for i, values in enumerate(daily)}


def keep_fitting(fits: Fits, stop: threading.Event, done: list[int]) -> None:
    """The forecast loop's work, again and again: a cold fit, then the statsmodels refit."""
    history = series()
    common = demand.Common((0.1, 0.5, 0.9), now_s=1440 * 60.0)
    while not stop.is_set():
        cold = {sid: demand.Turn(None, s, 60, True) for sid, s in history.items()}
        states = fits(cold, common, time.perf_counter)
        warm = {
            sid: demand.Turn(state, history[sid], 60, True)
            for sid, state in states.items()
            if isinstance(state, demand.FitState)
        }
        fits(warm, common, time.perf_counter)
        done[0] += 2 * len(warm)


async def round_trips(endpoint: str, token: str | None) -> list[float]:
    admin = AdminClient(endpoint, token=token)
    try:
        await admin.get_routing()
        out = []
        for _ in range(TRIPS):
            began = time.perf_counter()
            await admin.get_routing()
            out.append((time.perf_counter() - began) * 1000)
            await asyncio.sleep(0.005)
        return out
    finally:
        await admin.close()


def timed(endpoint: str, token: str | None) -> list[float]:
    """In a thread of its own with its own loop, as the operator's migration pass runs."""
    box: list[list[float]] = []
    runner = threading.Thread(target=lambda: box.append(asyncio.run(round_trips(endpoint, token))))
    runner.start()
    runner.join()
    return box[0]


def run() -> dict[str, object]:
    trips: dict[str, list[float]] = {mode: [] for mode in MODES}
    fitted: dict[str, int] = dict.fromkeys(MODES, 0)
    child = FitProcess()
    with tempfile.TemporaryDirectory(prefix="foreshard-bench-fits-") as tmp:
        broker = BrokerProcess(Path(tmp)).start()
        try:
            child(
                {"warm": demand.Turn(None, series(1)["k0"], 10, True)},
                demand.Common((0.5,), now_s=1440 * 60.0),
                time.perf_counter,
            )  # the child's start (imports) is not what is measured
            for round_ in range(ROUNDS):
                for mode in MODES:
                    print(f"-- round {round_ + 1}/{ROUNDS}: {mode}", file=sys.stderr, flush=True)
                    stop, done = threading.Event(), [0]
                    fits: Fits | None = {"idle": None, "thread": demand.refresh_all, "child": child}[mode]
                    worker = threading.Thread(target=keep_fitting, args=(fits, stop, done)) if fits else None
                    if worker is not None:
                        worker.start()
                        time.sleep(1.0)  # fitting in earnest before the first trip
                    trips[mode] += timed(broker.endpoint, broker.admin_token)
                    stop.set()
                    if worker is not None:
                        worker.join()
                    fitted[mode] += done[0]
        finally:
            child.close()
            broker.kill()
    return summary(trips, fitted)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def summary(trips: dict[str, list[float]], fitted: dict[str, int]) -> dict[str, object]:
    out: dict[str, object] = {"trips_per_mode": len(trips["idle"]), "rounds": ROUNDS}
    for mode in MODES:
        out[f"{mode}_p50_ms"] = round(statistics.median(trips[mode]), 2)
        out[f"{mode}_p90_ms"] = pct(trips[mode], 0.90)
        out[f"{mode}_p99_ms"] = pct(trips[mode], 0.99)
        out[f"{mode}_fits"] = fitted[mode]
    for q in ("p50", "p99"):
        child, thread = float(out[f"child_{q}_ms"]), float(out[f"thread_{q}_ms"])  # type: ignore[arg-type]
        out[f"child_over_thread_{q}"] = round(child / thread, 2) if thread else None
    out["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return out


def table(result: dict[str, object]) -> str:
    lines = [f"{'fits run':<28}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'fits made':>11}"]
    names = {"idle": "nowhere (idle)", "thread": "in a thread (GIL shared)", "child": "in the child process"}
    for mode in MODES:
        lines.append(
            f"{names[mode]:<28}{result[f'{mode}_p50_ms']:>10}{result[f'{mode}_p90_ms']:>10}"
            f"{result[f'{mode}_p99_ms']:>10}{result[f'{mode}_fits']:>11}"
        )
    lines.append(
        f"child / thread: p50 {result['child_over_thread_p50']}x, p99 {result['child_over_thread_p99']}x "
        f"({result['trips_per_mode']} GetRouting round trips a mode, load average {result['load_avg_1m']})"
    )
    return "\n".join(lines)


def main() -> None:
    result = run()
    keep("fit_isolation", table(result), result)


if __name__ == "__main__":
    main()
