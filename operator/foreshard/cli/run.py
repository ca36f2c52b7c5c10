"""`foreshard run`: the operator process (kopf), with /metrics and a liveness endpoint.

Standalone by default (one process, as in tests and the demo); `--peering NAME` makes replicas
elect one active operator through kopf peering, each with a random priority unless given one.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import socket
from collections.abc import Mapping
from typing import Any

from prometheus_client import start_http_server

from foreshard.api.names import ADMIN_TOKEN_FILE


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("run", help="run the operator against the current kubeconfig")
    parser.add_argument(
        "--namespace", action="append", default=[], help="watch only this namespace (repeatable)"
    )
    parser.add_argument("--metrics-port", type=int, default=8080, help="Prometheus /metrics port (0: off)")
    parser.add_argument("--liveness-port", type=int, default=8081, help="kopf liveness endpoint port")
    parser.add_argument(
        "--peering",
        default=os.environ.get("FORESHARD_PEERING", ""),
        metavar="NAME",
        help="elect one active replica through the kopf peering object NAME (default: standalone)",
    )
    parser.add_argument(
        "--priority",
        type=int,
        default=None,
        help="peering priority (default: random; replicas with equal priorities would all pause)",
    )
    parser.add_argument(
        "--broker-endpoints",
        choices=["dns", "annotation"],
        default=os.environ.get("FORESHARD_BROKER_ENDPOINTS", "dns"),
        help="how the operator finds a shard's broker: the headless Service's pod DNS (a real "
        "cluster), or the pod's foreshard.io/broker-endpoint annotation (the local cluster)",
    )
    parser.add_argument(
        "--admin-token-file",
        default=os.environ.get("FORESHARD_ADMIN_TOKEN_FILE", ADMIN_TOKEN_FILE),
        help="the brokers' Admin API bearer token (the foreshard-broker-admin Secret's `token`)",
    )
    parser.add_argument("--verbose", action="store_true")
    parser.set_defaults(func=_run)


def peering_priority(given: int | None) -> int:
    # kopf pauses every replica when two share a priority, so each picks its own at random
    # (a collision between two replicas has a chance of one in 2**31).
    return given if given is not None else random.SystemRandom().randint(1, 2**31 - 1)


def peering_identity(environ: Mapping[str, str], host: str, pid: int) -> str:
    """This replica's name in the peering object: the pod's name when the Deployment gives it.

    kopf's own default starts with the user name from the passwd database, and a pod whose
    runAsUser has no entry in the image's /etc/passwd makes that raise (KeyError) in kopf.run:
    the operator would crash at start on a real cluster. Host and pid are unique on one machine.
    """
    return environ.get("POD_ID") or f"{host}/{pid}"


def _run(args: argparse.Namespace) -> int:
    import kopf

    import foreshard.handlers.orderparamforecast
    import foreshard.handlers.shardallocation
    import foreshard.handlers.startup  # noqa: F401

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(message)s"
    )
    if args.metrics_port:
        start_http_server(args.metrics_port, addr="0.0.0.0")
    peering: dict[str, Any] = (
        {"peering_name": args.peering, "priority": peering_priority(args.priority), "standalone": False}
        if args.peering
        else {"standalone": True}
    )
    kopf.run(
        # kopf's Identity is a NewType of str that kopf does not export
        identity=peering_identity(os.environ, socket.gethostname(), os.getpid()),  # type: ignore[arg-type]
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=f"http://0.0.0.0:{args.liveness_port}/healthz",
        memo=kopf.Memo(
            namespaces=list(args.namespace),
            broker_endpoints=args.broker_endpoints,
            admin_token_file=args.admin_token_file,
        ),
        **peering,
    )
    return 0
