"""`foreshard simulate`: replay a trace directory against scaling policies (issues 6 and 13).

    foreshard simulate --traces DIR [--policy NAME | --compare] [--capacity MSGS_PER_S]
                       [--slo 30s] [--lead-time 120s] [--json] [--plot out.png]

`predictive` is the operator's own decision function (`decision` in the JSON names it), fed by a
replay of the forecast loop. With `--json` the last line of stdout is one JSON object; progress
goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from foreshard import traces
from foreshard.core.simulation.compare import (
    HPA_REFERENCE,
    POLICIES,
    PREDICTIVE_DEFAULT,
    compare_queue,
    make_policy,
)
from foreshard.core.simulation.engine import SimConfig, SimResult, oldest_age, simulate
from foreshard.core.simulation.planner import DECIDE, dotted_path
from foreshard.core.simulation.workload import Workload, workload_from_series

DEFAULT_KNOB = {
    "predictive": PREDICTIVE_DEFAULT,
    "reactive-hpa": HPA_REFERENCE,
    "keda-lag": 0.7,
    "static-peak": 1.0,
}
UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration(text: str) -> float:
    """`30s`, `2m`, `1h` or plain seconds."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 30s, 2m or 1h")
    return float(match.group(1)) * UNITS[match.group(2)]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("simulate", help="replay traces against scaling policies and compare them")
    parser.add_argument("--traces", type=Path, required=True, help="canonical trace directory: one queue")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--policy", choices=POLICIES, default="predictive")
    mode.add_argument("--compare", action="store_true", help="sweep every policy's knob grid and compare")
    parser.add_argument("--knob", type=float, help="the policy's knob (default: its documented default)")
    parser.add_argument("--capacity", type=float, help="messages/s per shard (default: p99 total rate / 16)")
    parser.add_argument("--slo", type=duration, default=30.0, help="oldest-message age SLO (default 30s)")
    parser.add_argument(
        "--lead-time", type=duration, default=120.0, help="pod start to serving (default 120s)"
    )
    parser.add_argument("--json", action="store_true", help="last line of stdout: one JSON object")
    parser.add_argument("--plot", type=Path, help="write curves and load/capacity over time to this PNG")
    parser.set_defaults(func=run)


def _progress(name: str, knob: float, result: SimResult) -> None:
    print(
        f"  {name:12s} knob {knob:<5g} violations {result.slo_violation_minutes:>8g} min  "
        f"shard-hours {result.shard_hours:>10.1f}  events {result.scale_events}",
        file=sys.stderr,
    )


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    workload = workload_from_series(args.traces.name, traces.read_directory(args.traces))
    capacity = args.capacity if args.capacity is not None else workload.default_capacity()
    config = SimConfig(capacity, lead_s=args.lead_time, slo_s=args.slo)
    print(
        f"{workload.name}: {len(workload.keys)} keys, {workload.duration_s / 3600:.1f} h, "
        f"capacity {capacity:.3f} msg/s per shard",
        file=sys.stderr,
    )
    if args.compare:
        results, body = compare_queue(workload, config, progress=_progress)
    else:
        results, body = _single(workload, config, args)
    body.update(queue=workload.name, capacity=capacity, lead_s=args.lead_time, slo_s=args.slo)
    body["seconds"] = round(time.perf_counter() - started, 2)
    if args.plot is not None:
        plot(results, workload, config, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    _print(body, args.json)
    return 0


def _single(
    workload: Workload, config: SimConfig, args: argparse.Namespace
) -> tuple[dict[str, list[SimResult]], dict[str, Any]]:
    knob = args.knob if args.knob is not None else DEFAULT_KNOB[args.policy]
    result = simulate(workload, make_policy(args.policy, knob, workload, config), config)
    _progress(args.policy, knob, result)
    body: dict[str, Any] = {"policies": {args.policy: [result.summary()]}}
    if args.policy == "predictive":
        body["decision"] = dotted_path(DECIDE)
    return {args.policy: [result]}, body


def _print(body: dict[str, Any], as_json: bool) -> None:
    for name, points in body["policies"].items():
        for p in points:
            print(
                f"{name:12s} knob {p['knob']:<5g} violation-min {p['slo_violation_minutes']:>8g} "
                f"shard-hours {p['shard_hours']:>10.1f} events {p['scale_events']:>6d} moves {p['moves']}"
            )
    for key in (
        "violation_ratio_vs_reactive_hpa",
        "shard_hours_ratio_vs_reactive_hpa",
        "scale_events_ratio_vs_reactive_hpa",
    ):
        if key in body:
            print(f"{key}: {body[key]:.3f}")
    if as_json:
        print(json.dumps(body))


def _at_default(runs: list[SimResult]) -> SimResult:
    return min(runs, key=lambda r: abs(r.knob - DEFAULT_KNOB[r.policy]))


def _draw_curves(axis: Any, results: dict[str, list[SimResult]]) -> None:
    for name, runs in results.items():
        ordered = sorted(runs, key=lambda r: r.shard_hours)
        axis.plot(
            [r.shard_hours for r in ordered],
            [r.slo_violation_minutes for r in ordered],
            marker="o",
            label=name,
        )
    axis.set_xlabel("shard-hours")
    axis.set_ylabel("SLO-violation minutes")
    axis.set_yscale("symlog", linthresh=1)
    axis.legend(fontsize=8)


def plot(results: dict[str, list[SimResult]], workload: Workload, config: SimConfig, path: Path) -> None:
    """Left: each policy's (shard-hours, violation minutes) curve. Right: load, capacity and
    violation periods over time at the default knobs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (curves, timeline) = plt.subplots(1, 2, figsize=(13, 4.5), width_ratios=(1, 2))
    _draw_curves(curves, results)
    # the last week of replay: months of 15 s steps would be an unreadable band
    shown = slice(
        max(0, len(workload.arrivals) - round(7 * 86_400 / workload.step_s)), len(workload.arrivals)
    )
    hours = workload.step_s * (1 + np.arange(len(workload.arrivals)))[shown] / 3600.0
    timeline.plot(
        hours, workload.arrivals[shown] / workload.step_s, color="0.5", lw=0.7, label="arrivals msg/s"
    )
    for name, runs in results.items():
        run = _at_default(runs)
        capacity = run.trajectory.ready[shown] * config.capacity
        timeline.plot(hours, capacity, lw=0.8, label=f"{name} capacity (knob {run.knob:g})")
        late = (oldest_age(run.trajectory, workload.step_s) > config.slo_s)[shown]
        timeline.fill_between(hours, 0, 1, where=late, transform=timeline.get_xaxis_transform(), alpha=0.15)
    timeline.set_xlabel("replay hours")
    timeline.set_ylabel("messages/s")
    timeline.set_title("last week: load, ready capacity, SLO violations (shaded), default knobs", fontsize=9)
    timeline.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
