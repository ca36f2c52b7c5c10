"""`kubectl foreshard`: a kubectl plugin (the console script `kubectl-foreshard`) for Foreshard's queues.

    kubectl foreshard status [QUEUE] [-A]       shards, routing epoch, migrations, forecast trust
    kubectl foreshard plan QUEUE                the pending plan with its moves and evidence
    kubectl foreshard approve QUEUE --plan ID   approve the plan you reviewed (refused if it changed)
    kubectl foreshard forecast KEY [--plot F]   an OrderParamForecast's points, or a PNG of them

Every command takes `--json`, `-n/--namespace`, `--context` and `--kubeconfig` as kubectl does.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from foreshard.adapters import resources
from foreshard.cli import kubectl_views as views

Connect = Callable[[argparse.Namespace], tuple[resources.ResourcePort, str]]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubectl foreshard", description=__doc__.split("\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-n", "--namespace", help="namespace (default: the context's)")
    common.add_argument("--context", help="kubeconfig context")
    common.add_argument("--kubeconfig", help="kubeconfig file")
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    status = commands.add_parser(
        "status", parents=[common], help="queues: shards, epoch, migrations, forecast"
    )
    status.add_argument("queue", nargs="?", help="one queue (default: every queue in the namespace)")
    status.add_argument("-A", "--all-namespaces", action="store_true")
    status.set_defaults(func=_status)
    shown = commands.add_parser("plan", parents=[common], help="the pending plan with moves and evidence")
    shown.add_argument("queue")
    shown.set_defaults(func=_plan)
    approve = commands.add_parser("approve", parents=[common], help="approve the queue's plan (Approve mode)")
    approve.add_argument("queue")
    approve.add_argument(
        "--plan", dest="plan_id", required=True, help="the plan id you reviewed (kubectl foreshard plan)"
    )
    approve.set_defaults(func=_approve)
    forecast = commands.add_parser("forecast", parents=[common], help="an OrderParamForecast's points")
    forecast.add_argument("key", help="the forecast key (spec.key) or the object's name")
    forecast.add_argument("--queue", help="the queue, when several forecast the same key")
    forecast.add_argument("--plot", type=Path, metavar="PNG", help="also draw the points to this PNG")
    forecast.set_defaults(func=_forecast)
    return parser


def connect(args: argparse.Namespace) -> tuple[resources.ResourcePort, str]:
    api, namespace = resources.load(args.kubeconfig, args.context)
    return resources.KubeResources(api), args.namespace or namespace


def main(argv: Sequence[str] | None = None, connect: Connect = connect) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace, resources.ResourcePort, str], Any] = args.func
    try:
        port, namespace = connect(args)
        shown = func(args, port, namespace)
    except (views.Refused, resources.NotFound, resources.Conflict) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if shown is not None:
        print(json.dumps(shown[0], indent=2, sort_keys=True) if args.json else shown[1])
    return 0


def _status(args: argparse.Namespace, port: resources.ResourcePort, namespace: str) -> tuple[Any, str]:
    if args.queue:
        bodies = [port.get_queue(namespace, args.queue)]
    else:
        bodies = port.list_queues(None if args.all_namespaces else namespace)
    queues = [views.queue_status(body) for body in bodies]
    return {"queues": queues}, views.status_text(queues)


def _plan(args: argparse.Namespace, port: resources.ResourcePort, namespace: str) -> tuple[Any, str]:
    shown = views.plan(port.get_queue(namespace, args.queue))
    return shown, views.plan_text(shown)


def _approve(args: argparse.Namespace, port: resources.ResourcePort, namespace: str) -> tuple[Any, str]:
    """Annotate only the version whose plan was checked: a plan that changes in between is refused."""
    for _attempt in range(3):
        body = port.get_queue(namespace, args.queue)
        plan_id, annotations = views.approval(body, args.plan_id)
        try:
            port.annotate_queue(namespace, args.queue, annotations, body["metadata"]["resourceVersion"])
        except resources.Conflict:
            continue  # the object changed (often only status): check the plan id again
        shown = {"queue": args.queue, "namespace": namespace, "approved": plan_id}
        return shown, f"Approved plan {plan_id} of {namespace}/{args.queue}."
    raise resources.Conflict(f"{namespace}/{args.queue} kept changing; try again")


def _forecast(args: argparse.Namespace, port: resources.ResourcePort, namespace: str) -> tuple[Any, str]:
    shown = views.forecast(views.find_forecast(port.list_forecasts(namespace), args.key, args.queue))
    text = views.forecast_text(shown)
    if args.plot:
        plot(shown, args.plot)
        text += f"\nPlot: {args.plot}"
    return shown, text


def plot(shown: dict[str, Any], path: Path) -> None:
    """The point forecast of every horizon (by time) with its p90 and the p50-p99 band, to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.dates import date2num

    points = sorted(shown["points"], key=lambda p: str(p["time"]))
    if not points:
        raise views.Refused(f"{shown['name']} has no forecast points to plot yet")
    times = [float(date2num(parse_time(p["time"]))) for p in points]  # type: ignore[no-untyped-call]
    figure, axes = plt.subplots(figsize=(9, 4))
    axes.fill_between(
        times,
        [p.get("p50", p["mean"]) for p in points],
        [p.get("p99", p["mean"]) for p in points],
        alpha=0.15,
        label="p50-p99",
    )
    axes.plot(times, [p.get("p90", p["mean"]) for p in points], linestyle="--", label="p90")
    axes.plot(times, [p["mean"] for p in points], label="mean")
    axes.xaxis_date()
    axes.set_title(f"{shown['queue']}/{shown['key']} ({shown['model']})")
    axes.set_ylabel(f"messages per {shown.get('stepSeconds') or '?'} s")
    axes.legend()
    figure.autofmt_xdate()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def parse_time(value: object) -> datetime:
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
