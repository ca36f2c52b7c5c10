"""The main job end to end on any canonical trace: history backfilled, the next stretch replayed live
through the operator's shards on a compressed clock, judged per key and against the HPA formula.

    bench/e2e_replay.py --traces DIR --hours H --speed X [--json] [--report DIR]

    DevEnv (local control plane, pod runner, the operator as its ServiceAccount, Prometheus)
      -> replayrun.run: the trace's history ends at the replay's start; SDK producers publish each
         key's arrivals at the trace's rates (scaled so the peak needs several shards), a consumer
         group with the prefetch agent reads along; the operator forecasts, scales and moves slots
      -> figures: ramps (steps where the actual need rises to a level not seen for 30 trace minutes)
         met by shards Ready before the ramp, moves and their pauses, the checker's verdict,
         shard-hours beside the HPA formula replayed on the same arrivals

Prints a table, then ONE JSON line (the last line). `--report DIR` also writes the PNGs and
report.html there (default: bench/results/e2e_replay-<trace>/). Everything it starts is stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from foreshard import traces
from foreshard.cli.replayview import ReplayView
from foreshard.localcluster import replayreport, replayrun
from foreshard.localcluster.devenv import DevEnv

RESULTS = Path(__file__).resolve().parent / "results"


def progress(text: str) -> None:
    print(f"-- {text}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--traces", type=Path, help="canonical trace directory (default: the bundled taxi)")
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--speed", type=float, default=144.0)
    parser.add_argument("--start-hour", type=float, default=4.0, help="trace hour of day to start at")
    parser.add_argument("--history-days", type=float, default=7.0)
    parser.add_argument("--report", type=Path, help="default: bench/results/e2e_replay-<trace name>")
    parser.add_argument("--json", action="store_true", help="(the JSON line is always printed last)")
    args = parser.parse_args(argv)
    if args.traces is None:
        args.traces = traces.prepare_queues(traces.BUNDLED, Path(tempfile.mkdtemp()) / "traces")["nyc_taxi"]
    settings = replayrun.Settings(
        traces=args.traces.resolve(),
        hours=args.hours,
        speed=args.speed,
        start_hour=args.start_hour,
        history_days=args.history_days,
        namespace="bench",
    )
    report_dir = args.report or RESULTS / f"e2e_replay-{args.traces.resolve().name}"
    with tempfile.TemporaryDirectory(prefix="foreshard-e2e-replay-") as tmp:
        env = DevEnv(Path(tmp) / "cluster", "bench", operator_env=replayrun.OPERATOR_ENV)
        try:
            env.up(progress)
            view = ReplayView(live=False)  # a progress line every 10 s on stderr
            outcome = replayrun.run(env, settings, view.update, progress)
        finally:
            env.down()
    replayreport.write(outcome, report_dir)
    summary = {**outcome.summary(), "clean": outcome.clean}
    summary["trace"] = args.traces.resolve().name  # no machine paths in results
    text = replayreport.table(summary)
    print(text)
    print(f"report: {report_dir / 'report.html'}", file=sys.stderr)
    if args.report is None:  # the standard results, beside the other benchmarks'
        name = f"e2e_replay-{summary['trace']}"
        (RESULTS / f"{name}.txt").write_text(text + "\n")
        (RESULTS / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return 0 if outcome.clean else 1


if __name__ == "__main__":
    sys.exit(main())
