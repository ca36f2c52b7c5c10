"""`foreshard forecast-eval`: rolling-origin evaluation of the forecaster on a trace directory.

Reads a canonical trace directory (DESIGN.md §8, any step), evaluates Foreshard's forecaster
and the naive, seasonal-naive and SES baselines over the last 20 % of every series, prints a
table and, with --json, one JSON object as the last line. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

from foreshard import traces
from foreshard.core.forecasting import evaluation
from foreshard.core.forecasting.evaluation import BASELINES, FORESHARD, SeriesResult
from foreshard.core.forecasting.types import InsufficientHistory
from foreshard.core.series import Series

UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0}


def parse_duration(text: str) -> float:
    """'15m', '1h', '90s', '2d' or plain seconds -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 15m, 1h or 900")
    return float(match.group(1)) * UNITS.get(match.group(2) or "s", 1.0)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("forecast-eval", help="backtest the forecaster against simple baselines")
    parser.add_argument(
        "--traces", type=Path, required=True, help="canonical trace directory (searched recursively)"
    )
    parser.add_argument("--horizon", type=parse_duration, default=parse_duration("15m"), help="e.g. 15m, 1h")
    parser.add_argument("--json", action="store_true", help="end with one JSON object on the last line")
    parser.add_argument("--plot", type=Path, help="PNG with forecast, p90 band and actuals for --keys")
    parser.add_argument("--keys", default="", help="comma-separated keys to plot (default: the first three)")
    parser.add_argument("--max-origins", type=int, default=200, help="forecast origins per series")
    parser.add_argument("--refits", type=int, default=20, help="staggered refits per series")
    parser.add_argument("--test-share", type=float, default=0.2, help="share of each series held out")
    parser.add_argument(
        "--dev",
        action="store_true",
        help="tuning split: drop each series' test region first, so the scored window is the one before it",
    )
    parser.add_argument("--only", default="", help="comma-separated keys to evaluate (default: all)")
    parser.set_defaults(func=run)


def horizon_steps(horizon_s: float, step_s: float) -> int:
    return max(1, math.ceil(horizon_s / step_s - 1e-9))


def run(args: argparse.Namespace) -> int:
    try:
        series = traces.read_directory(args.traces)
    except traces.TraceFormatError as error:
        print(f"forecast-eval: {error}", file=sys.stderr)
        return 2
    if args.only:
        series = [s for s in series if s.key in set(args.only.split(","))]
    if args.dev:
        series = [evaluation.development_split(s, args.test_share) for s in series]
    results = []
    for number, item in enumerate(series, start=1):
        started = time.process_time()
        try:
            result = evaluation.evaluate(
                item, horizon_steps(args.horizon, item.step_s), args.test_share, args.max_origins, args.refits
            )
        except InsufficientHistory as error:
            print(f"[{number}/{len(series)}] skipped: {error}", file=sys.stderr, flush=True)
            continue
        results.append(result)
        print(
            f"[{number}/{len(series)}] {item.key}: ratio {result.ratio_vs_best_baseline:.3f} "
            f"({time.process_time() - started:.1f} s CPU)",
            file=sys.stderr,
            flush=True,
        )
    if not results:
        print("forecast-eval: no series long enough to evaluate", file=sys.stderr)
        return 2
    summary = evaluation.summarise(results, args.horizon)
    print(table(results, summary))
    if args.plot:
        plot(series, args, args.plot)
    if args.json:
        print(json.dumps(summary))
    return 0


def table(results: list[SeriesResult], summary: dict[str, Any]) -> str:
    methods = [*BASELINES, FORESHARD]
    header = f"{'series':28s} {'h':>3s} " + " ".join(f"{m:>14s}" for m in methods) + "  ratio   cov90  model"
    lines = [header, "-" * len(header)]
    for r in results:
        cells = " ".join(f"{r.mase[m]:14.3f}" if m in r.mase else f"{'-':>14s}" for m in methods)
        model = r.models[-1] if r.models else ""
        lines.append(
            f"{r.key[:28]:28s} {r.horizon_steps:3d} {cells}  {r.ratio_vs_best_baseline:5.3f}  "
            f"{r.coverage_p90:5.3f}  {model[:60]}"
        )
    lines.append("-" * len(header))
    lines.append(
        f"mean ratio vs best baseline {summary['ratio_vs_best_baseline']:.3f}, "
        f"worst {summary['worst_series_ratio_vs_best_baseline']:.3f}, "
        f"ratio vs seasonal naive {summary['ratio_vs_seasonal_naive'] or float('nan'):.3f}, "
        f"p90 coverage {summary['coverage_p90']:.3f}"
    )
    return "\n".join(lines)


def plot(series: list[Series], args: argparse.Namespace, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; never a display
    import matplotlib.pyplot as plt

    wanted = [k for k in args.keys.split(",") if k] or [s.key for s in series[:3]]
    chosen = [s for s in series if s.key in wanted]
    figure, axes = plt.subplots(len(chosen) or 1, 1, figsize=(12, 3.2 * max(1, len(chosen))), squeeze=False)
    for ax, item in zip(axes[:, 0], chosen, strict=False):
        steps = horizon_steps(args.horizon, item.step_s)
        paths = evaluation.evaluate_paths(item, steps, args.test_share, args.max_origins, args.refits)
        y = item.cleaned().values
        first = int(paths.origins[0])
        ax.plot(range(first, len(y)), y[first:], color="black", linewidth=0.7, label="actual")
        for row, origin in enumerate(paths.origins):
            span = range(int(origin), int(origin) + steps)
            ax.plot(span, paths.points[FORESHARD][row], color="tab:blue", linewidth=0.8)
            ax.fill_between(
                span, paths.points[FORESHARD][row], paths.upper[row], color="tab:blue", alpha=0.15
            )
        ax.set_title(f"{item.key}: forecast (blue), up to p90 (shaded), actual (black)")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=90)
    plt.close(figure)
