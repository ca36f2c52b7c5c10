"""`foreshard cluster up|down|status`: the local control plane (and Prometheus) as a long-lived service."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from foreshard.localcluster.cluster import LocalCluster, stop_recorded
from foreshard.localcluster.process import StartError
from foreshard.localcluster.toolchain import ToolchainError

DEFAULT_WORKDIR = Path("build/cluster")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("cluster", help="start or stop the local Kubernetes control plane")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, func, text in (
        ("up", _up, "build (first time) and start etcd, apiserver, controllers, scheduler and kwok"),
        ("down", _down, "stop every process of the local cluster"),
        ("status", _status, "show what runs and how to reach it"),
    ):
        sub = verbs.add_parser(verb, help=text)
        sub.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="state, logs and kubeconfig")
        sub.add_argument("--json", action="store_true", help="print one JSON object")
        sub.set_defaults(func=func)


def _up(args: argparse.Namespace) -> int:
    if (args.workdir / "state.json").exists():
        print(f"a cluster already runs from {args.workdir}; `foreshard cluster down` first")
        return 1
    cluster = LocalCluster(args.workdir.resolve())
    started = time.monotonic()
    try:
        cluster.start()
    except (StartError, ToolchainError) as error:
        print(f"cluster up failed: {error}")
        return 1
    return _print_state(args, extra={"ready_s": round(time.monotonic() - started, 1)})


def _down(args: argparse.Namespace) -> int:
    stopped = stop_recorded(args.workdir)
    if args.json:
        print(json.dumps({"stopped": stopped}))
    else:
        print("stopped " + ", ".join(stopped) if stopped else "no cluster was running")
    return 0


def _status(args: argparse.Namespace) -> int:
    if not (args.workdir / "state.json").exists():
        print(json.dumps({"running": False}) if args.json else "no cluster is running")
        return 1
    return _print_state(args)


def _print_state(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> int:
    state = {**json.loads((args.workdir / "state.json").read_text()), **(extra or {})}
    if args.json:
        print(json.dumps(state))
        return 0
    print(f"Local control plane at {state['server']}")
    for name, pid in state["pids"].items():
        print(f"  {name:24s} pid {pid}")
    if "admin_token_file" in state:
        print(f"\n  brokers' admin token:   {state['admin_token_file']}")
        print(f"  broker scrape targets:  {state['scrape_targets_dir']}/*.json")
    print(f"\n  export KUBECONFIG={state['kubeconfig']}")
    print("  kubectl get nodes")
    print("\nStop it with `make down` (or `foreshard cluster down`).")
    return 0
