"""Run `foreshard forecast-eval` on the shared traces at 15 min and 1 h; keep table and JSON.

    .venv/bin/python bench/forecast_eval.py [--traces build/traces] [--out bench/results] [--dev]

Writes forecast_eval_<horizon>.txt (the table) and forecast_eval_<horizon>.json (the last
line) for each horizon, and prints one JSON object with both summaries (without per-series
detail) as the last line.

`--oracle KEY` instead prints how far a forecaster that sees the future could get on one
series: a centred moving average of the actuals (width w, so it contains the target itself)
scored like the forecaster, as a ratio to the best baseline. A target below that bound is out
of reach of any causal forecaster.
"""

from __future__ import annotations

import os

# before numpy loads: OpenBLAS threads on the statsmodels fits' small matrices cost several times
# the CPU they save (measured), and this machine's cores are shared
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

from foreshard import traces
from foreshard.cli import main as cli
from foreshard.cli.forecast_eval import horizon_steps, parse_duration
from foreshard.core.forecasting import evaluation, models

HORIZONS = ("15m", "1h")


def run(traces: Path, horizon: str, out: Path, dev: bool = False) -> dict[str, object]:
    buffer = io.StringIO()
    started = time.process_time()
    with contextlib.redirect_stdout(buffer):
        extra = ["--dev"] if dev else []
        code = cli(["forecast-eval", "--traces", str(traces), "--horizon", horizon, "--json", *extra])
    if code != 0:
        raise SystemExit(f"forecast-eval --horizon {horizon} exited with {code}")
    text = buffer.getvalue()
    table, last = text.rstrip().rsplit("\n", 1)
    out.mkdir(parents=True, exist_ok=True)
    name = f"forecast_eval_dev_{horizon}" if dev else f"forecast_eval_{horizon}"
    (out / f"{name}.txt").write_text(table + "\n")
    (out / f"{name}.json").write_text(last + "\n")
    summary: dict[str, object] = json.loads(last)
    summary["cpu_s"] = round(time.process_time() - started, 1)
    return summary


def oracle(trace_dir: Path, key: str, horizon: str) -> dict[str, float]:
    """Ratio to the best baseline of centred moving averages of the actuals (they see the future)."""
    series = next(s for s in traces.read_directory(trace_dir) if s.key == key)
    steps = horizon_steps(parse_duration(horizon), series.step_s)
    y = series.cleaned().values
    origins = evaluation.origins_for(len(y), 0.2, 200)
    targets = models.target_index(origins, steps)
    actual = np.where(targets < len(y), y[np.clip(targets, 0, len(y) - 1)], np.nan)
    baselines = evaluation.baseline_paths(y, int(origins[0]), series.step_s, origins, steps)
    best = min(float(np.nanmean(np.abs(p - actual))) for p in baselines.values())
    out = {}
    for width in (3, 7, 13, 25):
        smooth = np.convolve(y, np.ones(width) / width, mode="same")
        guess = np.where(targets < len(y), smooth[np.clip(targets, 0, len(y) - 1)], np.nan)
        out[f"centred_mean_{width}"] = round(float(np.nanmean(np.abs(guess - actual))) / best, 3)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=Path, default=Path("build/traces"))
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--oracle", metavar="KEY", help="print the look-ahead bound for one series instead")
    parser.add_argument("--horizons", default=",".join(HORIZONS), help="comma-separated, e.g. 15m,1h")
    parser.add_argument(
        "--dev", action="store_true", help="the tuning split (forecast-eval --dev): forecast_eval_dev_*"
    )
    args = parser.parse_args()
    if args.oracle:
        print(json.dumps({h: oracle(args.traces, args.oracle, h) for h in HORIZONS}))
        return 0
    summaries = {}
    for horizon in args.horizons.split(","):
        summary = run(args.traces, horizon, args.out, args.dev)
        summary.pop("per_series")
        summaries[horizon] = summary
        print(f"{horizon}: {json.dumps(summary)}", file=sys.stderr)
    print(json.dumps(summaries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
