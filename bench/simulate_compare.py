"""The issue's acceptance sweep: every shared queue, lead times 120 s and 300 s, all policies.

`predictive` is the operator's own decision function (`foreshard.core.decision.decide`, the
object the reconcile pass calls) fed by a replay of the forecast loop (refit every 12 cycles,
rolled forward in between). Prepares the canonical queues if needed, runs each queue (both leads,
sharing one forecast replay) in a pool of two processes, prints a table, writes
bench/results/simulate_compare.json, .md and one PNG of curves per lead, and prints the summary
as JSON on the last line. `--queues a,b` runs a subset (the files are then not rewritten).
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from foreshard import traces
from foreshard.core.simulation.compare import compare_queue
from foreshard.core.simulation.engine import SimConfig
from foreshard.core.simulation.planner import ForecastReplay, ReplaySettings
from foreshard.core.simulation.workload import workload_from_series

ROOT = Path(__file__).resolve().parents[1]
QUEUES = ("nyc_taxi", "taylor", "tweets", "elb", "azure_llm")
SEASONAL = ("nyc_taxi", "elb", "taylor")
LEADS = (120.0, 300.0)
RESULTS = ROOT / "bench" / "results"


def run_queue(queue: str, directory: str) -> list[dict[str, Any]]:
    """Both lead times of one queue; the forecast loop's replay does not depend on the lead."""
    workload = workload_from_series(queue, traces.read_directory(Path(directory)))
    forecasts = ForecastReplay(workload, ReplaySettings())
    rows = []
    for lead in LEADS:
        started = time.perf_counter()
        config = SimConfig(workload.default_capacity(), lead_s=lead)
        _, body = compare_queue(workload, config, forecasts=forecasts)
        seconds = round(time.perf_counter() - started, 1)
        rows.append({**body, "queue": queue, "lead_s": lead, "capacity": config.capacity, "seconds": seconds})
    return rows


def _within(value: float | None, limit: float) -> bool:
    return value is not None and value <= limit  # None: a failed ratio (zero denominator)


def verdict(row: dict[str, Any]) -> bool:
    """The issue's targets; the LLM log is held only to the shard-hour and scale-event ones."""
    limit = 0.4 if row["queue"] in SEASONAL else 1.0
    violations_ok = row["queue"] == "azure_llm" or _within(row["violation_ratio_vs_reactive_hpa"], limit)
    return (
        violations_ok
        and _within(row["shard_hours_ratio_vs_reactive_hpa"], 1.0)
        and _within(row["scale_events_ratio_vs_reactive_hpa"], 0.5)
    )


def _cell(value: float | None, width: int) -> str:
    return f"{value:{width}.3f}" if value is not None else f"{'FAILED':>{width}s}"


def span_s(directory: Path) -> float:
    first = traces.read_directory(directory)[0]
    return first.end_s - first.start_s


def main(argv: list[str]) -> int:
    build = ROOT / "build" / "traces"
    if not all((build / q).is_dir() for q in QUEUES):
        traces.prepare_queues(traces.BUNDLED, build)
    chosen = argv[argv.index("--queues") + 1].split(",") if "--queues" in argv else list(QUEUES)
    started = time.perf_counter()
    rows = []
    # the shortest replays first, each queue's rows on stderr as it finishes: on a busy machine
    # the short ones report while the seven months of NYC taxi still run
    order = sorted(chosen, key=lambda q: span_s(build / q))
    with ProcessPoolExecutor(max_workers=2) as pool:
        futures = {pool.submit(run_queue, q, str(build / q)): q for q in order}
        for future in as_completed(futures):
            rows += future.result()
            print(f"done {futures[future]}: {json.dumps(rows[-len(LEADS) :])}", file=sys.stderr, flush=True)
    rows.sort(key=lambda r: (QUEUES.index(r["queue"]), r["lead_s"]))
    print_table(rows)
    if set(chosen) == set(QUEUES):
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "simulate_compare.json").write_text(json.dumps(rows, indent=1) + "\n")
        plot_curves(rows)
        (RESULTS / "simulate_compare.md").write_text(markdown(rows))
    summary = {"seconds": round(time.perf_counter() - started, 1), "all_pass": all(r["pass"] for r in rows)}
    decisions = sorted({str(r.get("decision")) for r in rows})
    print(
        json.dumps(
            {
                **summary,
                "decision": decisions[0] if len(decisions) == 1 else decisions,
                "ratios": ratios(rows),
            }
        )
    )
    return 0


def ratios(rows: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    names = (
        "violation_ratio_vs_reactive_hpa",
        "shard_hours_ratio_vs_reactive_hpa",
        "scale_events_ratio_vs_reactive_hpa",
    )
    return {
        f"{r['queue']}@{r['lead_s']:g}s": {k: (round(r[k], 3) if r[k] is not None else None) for k in names}
        for r in rows
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    """The comparison table for docs: ratios, then every policy's curve per queue and lead."""
    lines = [
        "| queue | lead | violation ratio | shard-hours ratio | scale-events ratio | targets met |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [_cell(row[k], 1).strip() for k in ratios([row])[f"{row['queue']}@{row['lead_s']:g}s"]]
        met = "yes" if row["pass"] else "no"
        lines.append(f"| {row['queue']} | {row['lead_s']:g} s | {' | '.join(cells)} | {met} |")
    lines += [
        "",
        "| queue | lead | policy | knob: (shard-hours, violation minutes, scale events) |",
        "|---|---|---|---|",
    ]
    for row in rows:
        for name, points in row["policies"].items():
            curve = "; ".join(
                f"{p['knob']:g}: ({p['shard_hours']:.0f}, {p['slo_violation_minutes']:g}, "
                f"{p['scale_events']})"
                for p in points
            )
            lines.append(f"| {row['queue']} | {row['lead_s']:g} s | {name} | {curve} |")
    return "\n".join(lines) + "\n"


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'queue':10s} {'lead':>5s} {'viol.ratio':>10s} {'sh.ratio':>9s} {'events':>7s}  pass")
    for row in rows:
        row["pass"] = verdict(row)
        print(
            f"{row['queue']:10s} {row['lead_s']:5.0f} {_cell(row['violation_ratio_vs_reactive_hpa'], 10)} "
            f"{_cell(row['shard_hours_ratio_vs_reactive_hpa'], 9)} "
            f"{_cell(row['scale_events_ratio_vs_reactive_hpa'], 7)}  {'yes' if row['pass'] else 'NO'}"
        )


def plot_curves(rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for lead in LEADS:
        chosen = [r for r in rows if r["lead_s"] == lead]
        figure, axes = plt.subplots(1, len(chosen), figsize=(4.2 * len(chosen), 3.8))
        for axis, row in zip(axes, chosen, strict=True):
            for name, points in row["policies"].items():
                ordered = sorted(points, key=lambda p: p["shard_hours"])
                axis.plot(
                    [p["shard_hours"] for p in ordered],
                    [p["slo_violation_minutes"] for p in ordered],
                    marker="o",
                    label=name,
                )
            axis.set_title(f"{row['queue']} (lead {lead:g}s)")
            axis.set_xlabel("shard-hours")
            axis.set_ylabel("SLO-violation minutes")
            axis.set_xscale("log")
            axis.set_yscale("symlog", linthresh=1)
        axes[0].legend(fontsize=7)
        figure.tight_layout()
        figure.savefig(RESULTS / f"simulate_curves_lead{lead:g}.png", dpi=110)
        plt.close(figure)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
