"""`foreshard run`: the operator process (kopf), with /metrics and a liveness endpoint."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from prometheus_client import start_http_server


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("run", help="run the operator against the current kubeconfig")
    parser.add_argument(
        "--namespace", action="append", default=[], help="watch only this namespace (repeatable)"
    )
    parser.add_argument("--metrics-port", type=int, default=8080, help="Prometheus /metrics port (0: off)")
    parser.add_argument("--liveness-port", type=int, default=8081, help="kopf liveness endpoint port")
    parser.add_argument("--verbose", action="store_true")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import kopf

    import foreshard.handlers.shardallocation
    import foreshard.handlers.startup  # noqa: F401

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(message)s"
    )
    if args.metrics_port:
        start_http_server(args.metrics_port, addr="0.0.0.0")
    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        standalone=True,
        liveness_endpoint=f"http://0.0.0.0:{args.liveness_port}/healthz",
    )
    return 0
