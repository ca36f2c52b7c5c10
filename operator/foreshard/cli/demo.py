"""`foreshard demo`: the main job on the embedded default, watched live and reported.

Starts (or reuses) the local control plane with its pod runner, the operator as its own
ServiceAccount and a Prometheus; creates a queue whose history is a week of a real trace from the
repository (NYC taxi by default), backfilled on a compressed clock so the operator forecasts from
its first pass; then replays the next stretch of the trace live (a day in about ten minutes)
through SDK producers and a consumer group with the prefetch agent, while the operator forecasts,
scales ahead and moves slots. A live view shows it; a report (PNG plots, summary, report.html)
is written at the end. Everything keeps running; `make down` stops it all.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from foreshard import traces
from foreshard.cli.replayview import ReplayView
from foreshard.localcluster import replayreport, replayrun
from foreshard.localcluster.devenv import DevEnv

NAMESPACE = "demo"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo", help="replay a real trace through live shards: forecast, scale ahead, migrate; report"
    )
    parser.add_argument("--workdir", type=Path, default=Path("build/cluster"))
    parser.add_argument("--trace", default="nyc_taxi", help="a bundled trace (data/traces), by queue name")
    parser.add_argument("--traces", type=Path, help="or a canonical trace directory (one CSV per key)")
    parser.add_argument("--hours", type=float, default=24.0, help="trace hours replayed live")
    parser.add_argument("--speed", type=float, default=144.0, help="trace seconds per wall second")
    parser.add_argument("--report", type=Path, default=Path("build/demo-report"))
    parser.add_argument("--json", action="store_true", help="print one JSON object at the end")
    parser.set_defaults(func=_demo)


def trace_directory(workdir: Path, name: str, given: Path | None) -> Path:
    if given is not None:
        return given.resolve()
    queues = traces.prepare_queues(traces.BUNDLED, workdir / "traces")
    if name not in queues:
        raise SystemExit(f"no bundled trace {name!r}; choose one of {', '.join(sorted(queues))}")
    return queues[name]


def _demo(args: argparse.Namespace) -> int:
    workdir = args.workdir.resolve()
    env = DevEnv(workdir, NAMESPACE, preferred_ports=True, operator_env=replayrun.OPERATOR_ENV)
    with ReplayView() as view:
        env.up(view.progress)
        settings = replayrun.Settings(
            traces=trace_directory(workdir, args.trace, args.traces),
            hours=args.hours,
            speed=args.speed,
            namespace=NAMESPACE,
        )
        outcome = replayrun.run(env, settings, view.update, view.progress)
    written = replayreport.write(outcome, args.report.resolve())
    summary = {**outcome.summary(), "report": str(written["html"]), "clean": outcome.clean}
    if args.json:
        print(json.dumps(summary))
    else:
        _print(env, summary, written)
    return 0 if outcome.clean else 1


def _print(env: DevEnv, summary: dict[str, Any], written: dict[str, Path]) -> None:
    print(replayreport.table(summary))
    print(f"\nReport: {written['html']}  (plots beside it: {', '.join(replayreport.PLOTS)}.png)")
    cluster = env.kube
    print(f"Control plane   {cluster.server}")
    if env.prometheus is not None:
        print(f"Prometheus      {env.prometheus.url}  (try: foreshard_messages_published_total)")
    print(f"Operator        logs in {env.workdir / 'logs' / 'operator.log'}")
    print("\nUse kubectl against it:")
    print(f"  export KUBECONFIG={cluster.kubeconfig}")
    print(f"  alias kubectl={cluster.toolchain.path('kubectl')}")
    print(f"  kubectl get shalloc -n {NAMESPACE}; kubectl foreshard status -n {NAMESPACE}")
    print("\nStop everything with `make down`.", file=sys.stdout)
