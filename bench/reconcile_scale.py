"""One forecast + scaling pass of a queue with 10k keys against a real Prometheus holding their history.

    .venv/bin/python bench/reconcile_scale.py [--keys 10000] [--days 1] [--passes 8]

The history (heavy-tailed key volumes with a daily wave, 5-minute steps) is backfilled into a real
Prometheus with promtool. The operator side runs in a child process (so its memory is the
operator's, not the generator's): the forecast cycle (reconcile/forecasts.py: rank the keys, read
the tracked keys' history incrementally, refit a share, roll the rest forward, OPF statuses, the
published demand) followed by the scaling pass (reconcile/shardallocation.py, which reads the
published demand instead of fitting). The first pass is cold (every tracked series read and
fitted); each later pass runs one step later, so it sees exactly one new interval, as the operator
does in steady state.

Reported per pass: wall time, the cycle's forecasting CPU, time spent in Prometheus queries, and
the child's peak RSS. The JSON line's `pass_wall_s`, `forecast_cpu_s` and `query_s` are medians
over the steady passes; the cold pass is reported beside them. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

STEP = 300.0
QUEUE = "orders"


def histories(keys: int, days: int, end_s: float, seed: int = 11) -> list[Any]:
    from foreshard.core.series import Series

    rng = np.random.default_rng(seed)
    steps = days * 288
    t = np.arange(steps)
    # Zipf-like volumes: a few keys carry most of the traffic, most keys are quiet
    level = 200.0 / (1 + np.arange(keys)) ** 0.9
    phase = rng.uniform(0, 2 * np.pi, keys)
    start = end_s - steps * STEP
    out = []
    for k in range(keys):
        rate = level[k] * (1 + 0.6 * np.sin(2 * np.pi * t / 288 + phase[k]))
        out.append(Series(f"key-{k:05d}", start, STEP, rng.poisson(rate).astype(np.float64)))
    return out


def body(url: str, days: int) -> dict[str, Any]:
    return {
        "apiVersion": "foreshard.io/v1alpha1",
        "kind": "ShardAllocation",
        "metadata": {"name": QUEUE, "namespace": "bench", "uid": "bench-uid", "generation": 1},
        "spec": {
            "minShards": 1,
            "maxShards": 64,
            "capacity": {"messagesPerSecond": 50},
            "forecast": {
                "prometheusURL": url,
                "lookback": f"{days}d",
                "step": "5m",
                "longHorizon": "1h",
                "shortHorizon": "15m",
            },
            "scaling": {"mode": "DryRun"},
        },
    }


class TimedReader:
    """The real Prometheus reader, timing every query."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.seconds = inner, 0.0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - began

        return timed


class Kube:
    """The scaling pass's KubePort and the cycle's ForecastPort, in memory (the API server is not
    what this measures)."""

    def __init__(self) -> None:
        from foreshard.core.queue_status import Observed

        self.objects: dict[str, dict[str, Any]] = {}
        self.observed = Observed(replicas=1, ready_replicas=1)

    def apply(self, manifest: dict[str, Any]) -> None:
        if manifest["kind"] == "StatefulSet":
            from foreshard.core.queue_status import Observed

            replicas = int(manifest["spec"]["replicas"])
            self.observed = Observed(replicas=replicas, ready_replicas=replicas)

    def observe_stateful_set(self, namespace: str, name: str) -> Any:
        return self.observed

    def shard_pods(self, namespace: str, queue: str) -> list[Any]:
        return []  # no brokers: the routing step waits, and costs this benchmark nothing

    def shard_allocation(self, namespace: str, name: str) -> dict[str, Any] | None:
        return None

    def list_forecasts(self, namespace: str) -> list[dict[str, Any]]:
        return list(self.objects.values())

    def create_forecast(self, manifest: dict[str, Any]) -> None:
        self.objects[manifest["metadata"]["name"]] = manifest

    def delete_forecast(self, namespace: str, name: str) -> None:
        self.objects.pop(name, None)

    def patch_forecast_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        if name in self.objects:
            self.objects[name] = {**self.objects[name], "status": status}

    def read_scale(self, namespace: str, ref: Any) -> int | None:
        return None

    def patch_scale(self, namespace: str, ref: Any, replicas: int) -> None:
        pass


def peak_rss_mb() -> float:
    """This program's peak RSS (VmHWM). Not ru_maxrss: Linux carries that across fork+exec, so the
    child reported the parent's high-water mark from the backfill (953 MB) as its own."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def operator(url: str, days: int, end_s: float, passes: int) -> None:
    """The child: `passes` forecast + scaling passes, one JSON line per pass."""
    import foreshard.handlers.shardallocation  # noqa: F401 - the operator's imports count (kopf, kubernetes)
    from foreshard.adapters.brokers import AnnotationEndpoints, GrpcBrokers
    from foreshard.adapters.prometheus import connect
    from foreshard.reconcile import forecasts
    from foreshard.reconcile.shardallocation import Ports, reconcile

    kube, memo = Kube(), forecasts.QueueMemo()
    ports = Ports(kube, AnnotationEndpoints(), GrpcBrokers(token=None))
    reader = TimedReader(connect(url, timeout_s=120, retries=0))
    queue = body(url, days)
    first_now = end_s - passes * STEP + 10.0
    for index in range(passes):
        now = first_now + index * STEP
        reader.seconds = 0.0
        cpu, began = time.process_time(), time.perf_counter()
        result = forecasts.cycle(queue, kube, memo, now, lambda _: reader)
        outcome = reconcile(queue, ports, now)
        wall = time.perf_counter() - began
        rss = peak_rss_mb()
        plan = outcome.status.get("plan") or {}
        print(
            json.dumps(
                {
                    "pass": index,
                    "wall_s": wall,
                    "cpu_s": time.process_time() - cpu,
                    "forecast_cpu_s": result.timings["forecast_cpu_s"],
                    "query_s": reader.seconds,
                    "fits": result.fits,
                    "opfs": len(kube.objects),
                    "rss_mb": rss,
                    "target": plan.get("targetShards"),
                    "forecasting": outcome.status["conditions"][1]["reason"]
                    if len(outcome.status["conditions"]) > 1
                    else "",
                }
            ),
            flush=True,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=1)
    parser.add_argument("--passes", type=int, default=8)
    parser.add_argument("--child", nargs=3, metavar=("URL", "END", "PASSES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        operator(args.child[0], args.days, float(args.child[1]), int(args.child[2]))
        return 0
    from foreshard.localcluster.prometheus import PrometheusServer, backfill

    end_s = time.time() // STEP * STEP
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        began = time.perf_counter()
        backfill({QUEUE: histories(args.keys, args.days, end_s)}, work / "data", end_at_s=end_s)
        backfill_s = time.perf_counter() - began
        with PrometheusServer(work) as server:
            child = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--days",
                    str(args.days),
                    "--child",
                    server.url,
                    str(end_s),
                    str(args.passes),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
    if child.returncode != 0:
        print(child.stderr[-4000:], file=sys.stderr)
        return 1
    rows = [json.loads(line) for line in child.stdout.splitlines() if line.startswith("{")]
    print(f"{args.keys} keys, {args.days} d of 5-minute history, backfilled in {backfill_s:.0f} s")
    columns = ("pass", "wall_s", "cpu_s", "forecast_cpu_s", "query_s", "fits", "opfs", "rss_mb", "target")
    print(" ".join(f"{c:>14}" for c in columns), "forecasting")
    for r in rows:
        print(
            " ".join(f"{r[c]:>14.3f}" if isinstance(r[c], float) else f"{r[c]!s:>14}" for c in columns),
            r["forecasting"],
        )
    steady = rows[1:]
    summary = {
        "keys": args.keys,
        "history_days": args.days,
        "tracked_series": rows[0]["opfs"],
        "pass_wall_s": round(statistics.median(r["wall_s"] for r in steady), 3),
        "forecast_cpu_s": round(statistics.median(r["forecast_cpu_s"] for r in steady), 3),
        "query_s": round(statistics.median(r["query_s"] for r in steady), 3),
        "operator_rss_mb": round(max(r["rss_mb"] for r in rows), 1),
        "cold_pass_wall_s": round(rows[0]["wall_s"], 3),
        "cold_forecast_cpu_s": round(rows[0]["forecast_cpu_s"], 3),
        "cold_query_s": round(rows[0]["query_s"], 3),
        "steady_passes": len(steady),
        "targets": {"pass_wall_s": 2.0, "operator_rss_mb": 200.0},
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
