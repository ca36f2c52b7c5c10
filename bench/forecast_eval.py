"""Run `foreshard forecast-eval` on the shared traces at 15 min and 1 h; keep table and JSON.

    .venv/bin/python bench/forecast_eval.py [--traces build/traces] [--out bench/results]

Writes forecast_eval_<horizon>.txt (the table) and forecast_eval_<horizon>.json (the last
line) for each horizon, and prints one JSON object with both summaries (without per-series
detail) as the last line.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path

from foreshard.cli import main as cli

HORIZONS = ("15m", "1h")


def run(traces: Path, horizon: str, out: Path) -> dict[str, object]:
    buffer = io.StringIO()
    started = time.process_time()
    with contextlib.redirect_stdout(buffer):
        code = cli(["forecast-eval", "--traces", str(traces), "--horizon", horizon, "--json"])
    if code != 0:
        raise SystemExit(f"forecast-eval --horizon {horizon} exited with {code}")
    text = buffer.getvalue()
    table, last = text.rstrip().rsplit("\n", 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"forecast_eval_{horizon}.txt").write_text(table + "\n")
    (out / f"forecast_eval_{horizon}.json").write_text(last + "\n")
    summary: dict[str, object] = json.loads(last)
    summary["cpu_s"] = round(time.process_time() - started, 1)
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=Path, default=Path("build/traces"))
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    summaries = {}
    for horizon in HORIZONS:
        summary = run(args.traces, horizon, args.out)
        summary.pop("per_series")
        summaries[horizon] = summary
        print(f"{horizon}: {json.dumps(summary)}", file=sys.stderr)
    print(json.dumps(summaries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
