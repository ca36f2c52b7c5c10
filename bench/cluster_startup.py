"""How long the local control plane takes to build and to start, and what it weighs.

    python bench/cluster_startup.py [--runs 3] [--cold]

A warm start is `LocalCluster.start()` with the binaries cached: PKI, etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, kwok and three Ready fake nodes. `--cold` also rebuilds
every binary into an empty binary cache and an empty Go build cache (the module cache is kept:
downloads are not the cost being measured); without it the cold build is read from the cache's
record of its first build. Prints a table; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

from foreshard.localcluster.cluster import LocalCluster
from foreshard.localcluster.toolchain import Toolchain, cache_root

RESULTS = Path(__file__).resolve().parent / "results"


def cold_build() -> float:
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as gocache:
        os.environ["FORESHARD_CACHE"], os.environ["GOCACHE"] = cache, gocache
        try:
            started = time.monotonic()
            Toolchain.default().ensure()
            return time.monotonic() - started
        finally:
            del os.environ["FORESHARD_CACHE"], os.environ["GOCACHE"]


def recorded_build() -> float | None:
    record = Toolchain.default().record
    return round(sum(json.loads(record.read_text()).values()), 1) if record.exists() else None


def warm_start() -> dict[str, float]:
    with tempfile.TemporaryDirectory() as workdir:
        cluster = LocalCluster(Path(workdir), preferred_ports=False)
        cluster.start()
        try:
            rss = sum(psutil.Process(m.pid).memory_info().rss for m in cluster.processes) / 2**20
            return {
                "ready_s": cluster.timings["nodes"],
                "apiserver_s": cluster.timings["apiserver"],
                "rss_mb": rss,
            }
        finally:
            cluster.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cold", action="store_true", help="rebuild every binary from an empty build cache")
    args = parser.parse_args()

    Toolchain.default().ensure()  # a warm start needs the binaries; build them first if missing
    cold = round(cold_build(), 1) if args.cold else recorded_build()
    runs = []
    for i in range(args.runs):
        runs.append(warm_start())
        print(f"run {i + 1}/{args.runs}: ready in {runs[-1]['ready_s']:.1f} s", file=sys.stderr)
    figures = {
        "cold_build_s": cold,
        "cold_build_source": "measured" if args.cold else f"record in {cache_root()}",
        "warm_start_s": round(statistics.median(r["ready_s"] for r in runs), 2),
        "apiserver_ready_s": round(statistics.median(r["apiserver_s"] for r in runs), 2),
        "rss_mb": round(statistics.median(r["rss_mb"] for r in runs), 1),
        "runs": args.runs,
        "target_warm_start_s": 30,
    }
    print(f"{'figure':22s} {'value':>10s}")
    for name in ("cold_build_s", "warm_start_s", "apiserver_ready_s", "rss_mb"):
        print(f"{name:22s} {figures[name]!s:>10s}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cluster_startup.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
