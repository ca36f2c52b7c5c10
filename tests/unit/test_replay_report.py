"""The replay's report and spec, from a recorded-shape outcome (no processes): plots, summary, HTML."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from foreshard.api.shardallocation import ForecastSettings, ScalingPolicy, seconds
from foreshard.core.series import Series
from foreshard.core.simulation import replay
from foreshard.localcluster import replayreport, replayrun

DAY = 86_400.0


def outcome() -> replayrun.Outcome:
    t = np.arange(round(4 * DAY / 1800)) * 1800.0
    series = [Series("taxi", 0.0, 1800.0, 1000 * (1.5 + np.sin(2 * np.pi * t / DAY)))]
    clock = replay.clock_for(1800.0, 144.0)
    plan = replay.plan(series, clock, 2 * DAY, 2 * DAY, DAY / 2, fanout=4, peak_rate=400.0)
    settings = replayrun.Settings(traces=Path("/data/nyc_taxi"), hours=12)
    result = replayrun.Outcome({**vars(settings), "traces": "nyc_taxi"}, plan)
    need = replay.needed_shards(plan.rates, settings.capacity, settings.headroom)
    for i in range(plan.steps * 12):
        ready = int(need[min(plan.steps - 1, i // 12 + 1)])  # a step ahead of the need
        rate = float(plan.rates[min(plan.steps - 1, i // 12)])
        result.samples.append(
            replayrun.Sample(
                float(i),
                ready,
                ready,
                3 + i // 40,
                i % 7 == 0,
                "Fence" if i % 7 == 0 else "",
                rate * 1.1,
                rate * 0.8,
                rate * 1.4,
                rate,
                rate,
                rate,
                5,
                40 + i % 30,
                64.0,
                0,
                0.0,
            )
        )
    result.moves = {f"m{i}": {"phase": "Done", "pauseMs": 20.0 + i, "firstSeen": 3.0 * i} for i in range(30)}
    result.verdict = {
        "messages": 1234,
        "lost": 0,
        "duplicated": 0,
        "reordered": 0,
        "failed": 0,
        "drained": True,
    }
    times = np.array([s.t for s in result.samples])
    result.judgement = replay.judge(
        plan,
        settings.capacity,
        settings.headroom,
        settings.lead_s,
        times,
        np.array([s.ready for s in result.samples]),
    )
    return result


def test_the_summary_carries_the_figures_the_bench_and_ci_read() -> None:
    summary = outcome().summary()
    for key in (
        "messages",
        "keys",
        "ramps",
        "ramps_scaled_ahead_fraction",
        "lost",
        "duplicated",
        "reordered",
    ):
        assert key in summary
    assert summary["moves"] == 30 and summary["pause_p99_ms"] == 49.0 and summary["pause_p50_ms"] == 34.5
    assert summary["ramps"] >= 1 and summary["ramps_scaled_ahead_fraction"] == 1.0
    assert summary["shard_hours"] > 0 and summary["hpa_shard_hours"] > 0
    assert summary["trace"] == "nyc_taxi" and summary["keys"] == 4


def test_the_report_writes_four_plots_a_summary_a_timeline_and_one_self_contained_page(
    tmp_path: Path,
) -> None:
    written = replayreport.write(outcome(), tmp_path)
    for name in replayreport.PLOTS:
        assert written[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = written["html"].read_text()
    assert page.count('src="data:image/png;base64,') == len(replayreport.PLOTS)
    assert 'id="verdict">clean<' in page and "plotsRendered" in page
    assert json.loads(written["summary"].read_text())["messages"] == 1234
    assert len((tmp_path / "timeline.csv").read_text().splitlines()) == 1 + 12 * 24
    assert len(json.loads((tmp_path / "moves.json").read_text())) == 30


def test_the_compressed_spec_keeps_every_horizon_within_the_crd_bounds_on_the_queue_clock() -> None:
    settings = replayrun.Settings(traces=Path("x"))
    for trace_step, short_expected in ((300.0, True), (1800.0, False)):
        clock = replay.clock_for(trace_step, settings.speed)
        spec = replayrun.forecast_spec(settings, clock, "http://127.0.0.1:9090")
        forecast = ForecastSettings.from_spec(spec["forecast"])
        scale = forecast.time_scale
        assert scale == 150 and forecast.day_s == 576.0 and forecast.step_s == clock.wall_step_s
        assert 3600 <= forecast.long_horizon_s * scale <= 86400
        assert (forecast.short_horizon_s is not None) == short_expected
        if forecast.short_horizon_s is not None:
            assert 300 <= forecast.short_horizon_s * scale <= 900
            assert forecast.step_s <= forecast.short_horizon_s
        assert forecast.lookback_s * scale == 7 * DAY
        scaling = ScalingPolicy.from_spec(spec["scaling"])
        assert scaling.lead_s == settings.lead_s and scaling.stabilization_s == 12.0
        assert seconds(spec["scaling"]["leadTime"]) == settings.lead_s


def test_the_live_view_shows_shards_epoch_forecast_moves_backlog_and_the_checker() -> None:
    from rich.console import Console

    from foreshard.cli import replayview

    result = outcome()
    sample = result.samples[100]
    console = Console(record=True, width=140)
    console.print(replayview.panel(result, sample))
    text = console.export_text()
    for shown in (
        "Ready",
        "routing epoch",
        "forecast",
        "band",
        "moves",
        "backlog",
        "prefetch",
        "clean so far",
    ):
        assert shown in text, text
    line = replayview.line(result, sample)
    assert line.startswith("-- 100/") and "epoch 5" in line and "30 done" in line


def test_the_summary_breaks_the_pause_into_fence_settle_and_switch_over_done_moves() -> None:
    result = outcome()
    result.moves = {
        f"m{i}": {"phase": "Done", "pauseMs": 100.0 + i, "fenceMs": 10.0 + i, "settleMs": float(i)}
        for i in range(100)
    }
    result.moves["rolled"] = {"phase": "RolledBack", "pauseMs": 9999.0, "fenceMs": 9999.0, "settleMs": 9999}
    summary = result.summary()
    assert (summary["pause_p50_ms"], summary["pause_p99_ms"]) == (149.5, 198.0)
    assert (summary["pause_fence_p50_ms"], summary["pause_fence_p99_ms"]) == (59.5, 108.0)
    assert (summary["pause_settle_p50_ms"], summary["pause_settle_p99_ms"]) == (49.5, 98.0)
    assert (summary["pause_switch_p50_ms"], summary["pause_switch_p99_ms"]) == (90.0, 90.0)
    assert "fence (incl. settle" in replayreport.table(summary)


def test_a_finished_move_the_operator_drops_from_status_stays_collected() -> None:
    from foreshard.localcluster.movewatch import MoveWatch

    watch = MoveWatch(None, "ns", "q", t0=100.0)  # type: ignore[arg-type]  # not started: no API calls
    watch.record([{"id": "a", "phase": "Fence"}], now=101.0)
    watch.record([{"id": "a", "phase": "Done", "pauseMs": 80.0}, {"id": "b", "phase": "Copy"}], now=102.0)
    watch.record([{"id": "b", "phase": "Done", "pauseMs": 90.0}], now=103.0)  # "a" dropped from status
    moves = watch.moves()
    assert moves["a"] == {"id": "a", "phase": "Done", "pauseMs": 80.0, "firstSeen": 1.0}
    assert moves["b"]["phase"] == "Done" and moves["b"]["firstSeen"] == 2.0


def test_failed_publishes_are_counted_by_their_error() -> None:
    from foreshard.localcluster.livereplay import failure_reason

    reason = failure_reason(TimeoutError("no answer within 10 s\nmore"))
    assert reason == "TimeoutError: no answer within 10 s"
    assert failure_reason(None) == "cancelled"
    assert len(failure_reason(RuntimeError("x" * 500))) == len("RuntimeError: ") + 100
