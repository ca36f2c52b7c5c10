"""The replay's report: PNG plots, a summary table, the timeline as CSV, and one self-contained HTML.

<dir>/forecast.png   the operator's forecast (point and interval) against the replayed arrivals
<dir>/shards.png     shards desired and Ready, next to the HPA formula replayed on the same trace
<dir>/moves.png      slot moves over time and the histogram of their pauses
<dir>/consumer.png   the group's backlog and the prefetch agent's buffer against a fixed 1000
<dir>/summary.json   the figures (the same object `--json` prints); summary.txt the table
<dir>/timeline.csv   one row per sample
<dir>/moves.json     every move as the operator last recorded it (phase, pauseMs, fenceMs, settleMs...)
<dir>/report.html    all of the above in one file (plots inlined as data: URIs)
"""

from __future__ import annotations

import base64
import csv
import html
import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from foreshard.core.simulation import replay
from foreshard.localcluster.replayrun import Outcome, Sample

PLOTS = ("forecast", "shards", "moves", "consumer")
FIXED_PREFETCH = 1000


def write(outcome: Outcome, directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    summary = outcome.summary()
    paths = {name: directory / f"{name}.png" for name in PLOTS}
    _forecast(outcome, paths["forecast"])
    _shards(outcome, paths["shards"])
    _moves(outcome, paths["moves"])
    _consumer(outcome, paths["consumer"])
    (directory / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (directory / "summary.txt").write_text(table(summary) + "\n")
    moves = sorted(outcome.moves.values(), key=lambda m: float(m.get("firstSeen", 0.0)))
    (directory / "moves.json").write_text(json.dumps(moves, indent=1) + "\n")
    with (directory / "timeline.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([f.name for f in fields(Sample)])
        for sample in outcome.samples:
            writer.writerow(list(asdict(sample).values()))
    (directory / "report.html").write_text(page(summary, paths))
    return {**paths, "summary": directory / "summary.json", "html": directory / "report.html"}


ROWS = (
    ("trace", "trace"),
    ("trace hours replayed", "hours"),
    ("speed (trace s per wall s)", "speed"),
    ("replay wall seconds", "replay_wall_s"),
    ("messages acknowledged", "messages"),
    ("keys", "keys"),
    ("peak rate (msg/s)", "peak_rate"),
    ("ramps needing a scale-out", "ramps"),
    ("  met by shards Ready before the ramp", "ramps_scaled_ahead"),
    ("  fraction", "ramps_scaled_ahead_fraction"),
    ("lost / duplicated / reordered", ("lost", "duplicated", "reordered")),
    ("slot moves done / rolled back", ("moves", "rolled_back")),
    ("  moves the operator counted done", "moves_counted_by_operator"),
    ("pause p50 / p99 ms", ("pause_p50_ms", "pause_p99_ms")),
    ("  fence (incl. settle, delta import) p50 / p99 ms", ("pause_fence_p50_ms", "pause_fence_p99_ms")),
    ("  settle (in-flight deliveries acked) p50 / p99 ms", ("pause_settle_p50_ms", "pause_settle_p99_ms")),
    ("  switch (record + table pushes) p50 / p99 ms", ("pause_switch_p50_ms", "pause_switch_p99_ms")),
    ("most shards Ready", "max_shards"),
    ("shard-hours (trace time)", "shard_hours"),
    ("HPA formula: shard-hours", "hpa_shard_hours"),
    ("HPA formula: SLO violation minutes", "hpa_violation_minutes"),
)


def rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    def value(key: str | tuple[str, ...]) -> str:
        keys = key if isinstance(key, tuple) else (key,)
        return " / ".join(str(summary.get(k)) for k in keys)

    return [(name, value(key)) for name, key in ROWS]


def table(summary: dict[str, Any]) -> str:
    found = rows(summary)
    width = max(len(name) for name, _ in found)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in found)


def page(summary: dict[str, Any], plots: dict[str, Path]) -> str:
    images = "\n".join(
        f'<figure><img alt="{name}" src="data:image/png;base64,'
        f'{base64.b64encode(path.read_bytes()).decode()}"><figcaption>{name}</figcaption></figure>'
        for name, path in plots.items()
    )
    verdict = (
        "clean"
        if summary.get("lost") == summary.get("duplicated") == summary.get("reordered") == 0
        else "NOT clean"
    )
    cells = "\n".join(
        f"<tr><th>{html.escape(name)}</th><td>{html.escape(value)}</td></tr>" for name, value in rows(summary)
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Foreshard replay report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}img{{max-width:100%}}
th{{text-align:left;padding-right:2em}}figure{{margin:1em 0}}</style></head>
<body><h1>Foreshard replay: {html.escape(str(summary.get("trace", "")))}</h1>
<p>Per-key order check: <strong id="verdict">{verdict}</strong>
({summary.get("lost")} lost, {summary.get("duplicated")} duplicated,
{summary.get("reordered")} reordered).</p>
<table id="summary">{cells}</table>
{images}
<script>
// how many plots decoded: a headless browser's dumped DOM shows it (the report test reads it)
window.addEventListener("load", () => {{
  const shown = [...document.images].filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.plotsRendered = String(shown);
}});
</script>
</body></html>
"""


def _hours(outcome: Outcome, wall_s: np.ndarray) -> np.ndarray:
    return np.asarray(wall_s) * outcome.plan.clock.scale / 3600.0


def _columns(outcome: Outcome, name: str) -> np.ndarray:
    return np.array(
        [np.nan if getattr(s, name) is None else float(getattr(s, name)) for s in outcome.samples]
    )


def _forecast(outcome: Outcome, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(10, 4))
    plan = outcome.plan
    steps = np.arange(plan.steps + 1) * plan.clock.wall_step_s
    ax.step(
        _hours(outcome, steps),
        np.append(plan.rates, plan.rates[-1]),
        where="post",
        label="trace (replayed rate)",
        color="black",
    )
    t = _hours(outcome, _columns(outcome, "t"))
    if outcome.samples:
        ax.plot(t, _columns(outcome, "published_rate"), label="published (measured)", color="grey", alpha=0.5)
        ax.fill_between(
            t, _columns(outcome, "lower"), _columns(outcome, "upper"), alpha=0.25, label="forecast interval"
        )
        ax.plot(t, _columns(outcome, "forecast"), label="operator forecast", color="tab:blue")
    ax.set_xlabel("trace hours since the replay began")
    ax.set_ylabel("messages/s (wall clock)")
    ax.set_title("Forecast vs actual arrivals")
    ax.legend(loc="upper left")
    _save(fig, path)


def _shards(outcome: Outcome, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(10, 4))
    settings = outcome.settings
    plan = outcome.plan
    need = replay.needed_shards(plan.rates, settings["capacity"], settings["headroom"])
    steps = np.arange(plan.steps + 1) * plan.clock.wall_step_s
    ax.step(
        _hours(outcome, steps),
        np.append(need, need[-1]),
        where="post",
        label="needed by the actual rate",
        color="black",
        linestyle=":",
    )
    if outcome.samples:
        t = _hours(outcome, _columns(outcome, "t"))
        ax.step(t, _columns(outcome, "desired"), where="post", label="Foreshard desired", color="tab:orange")
        ax.step(
            t,
            _columns(outcome, "ready"),
            where="post",
            label="Foreshard Ready",
            color="tab:blue",
            linewidth=2,
        )
    j = outcome.judgement
    if j is not None:
        hpa_t = np.arange(len(j.hpa_ready)) * j.hpa_step_s
        ax.step(
            _hours(outcome, hpa_t),
            j.hpa_ready,
            where="post",
            label="HPA formula (same trace)",
            color="tab:red",
            alpha=0.7,
        )
        for ramp in j.ramp_times_s:
            ax.axvline(_hours(outcome, np.array([ramp]))[0], color="green", alpha=0.3)
    ax.set_xlabel("trace hours since the replay began (green: ramps)")
    ax.set_ylabel("shards")
    ax.set_title("Shards over time")
    ax.legend(loc="upper left")
    _save(fig, path)


def _moves(outcome: Outcome, path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    if outcome.samples:
        left.step(
            _hours(outcome, _columns(outcome, "t")),
            _columns(outcome, "moves_in_flight"),
            where="post",
            label="moves in flight",
        )
    done = sorted(float(m["firstSeen"]) for m in outcome.moves.values() if m.get("phase") == "Done")
    if done:
        twin = left.twinx()
        twin.plot(
            _hours(outcome, np.array(done)),
            np.arange(1, len(done) + 1),
            color="tab:green",
            label="moves done",
        )
        twin.set_ylabel("moves done (cumulative)")
    left.set_xlabel("trace hours since the replay began")
    left.set_ylabel("moves in flight")
    left.set_title("Slot moves")
    pauses = [float(m["pauseMs"]) for m in outcome.moves.values() if "pauseMs" in m]
    right.hist(pauses or [0.0], bins=20, color="tab:purple")
    right.set_xlabel("pause per move (ms)")
    right.set_ylabel("moves")
    right.set_title(f"Pause histogram ({len(pauses)} moves)")
    _save(fig, path)


def _consumer(outcome: Outcome, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(10, 4))
    if outcome.samples:
        t = _hours(outcome, _columns(outcome, "t"))
        ax.plot(t, _columns(outcome, "backlog"), label="backlog (acked, not yet consumed)")
        ax.plot(t, _columns(outcome, "buffered"), label="prefetch buffer (agent)")
        ax.plot(t, _columns(outcome, "prefetch_target"), label="agent target", alpha=0.6)
    ax.axhline(FIXED_PREFETCH, color="tab:red", linestyle="--", label=f"fixed prefetch {FIXED_PREFETCH}")
    ax.set_xlabel("trace hours since the replay began")
    ax.set_ylabel("messages")
    ax.set_title("Consumer group: backlog and prefetch buffer")
    ax.legend(loc="upper right")
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
