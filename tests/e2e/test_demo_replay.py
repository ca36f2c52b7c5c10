"""The main job end to end, as `make demo` runs it, on a short stretch of the bundled NYC taxi trace.

Real parts only: the session's control plane and pod runner (real brokers in shard pods), the
operator as its ServiceAccount, a real Prometheus holding a week of the trace (compressed 150x)
and scraping the brokers, the SDK producers and a consumer group with the prefetch agent. Five
trace hours from 04:00 (the morning ramp) take about two minutes. Asserted: a scale-out met by
shards Ready before its ramp, slot moves, a clean per-key checker, the report with its plots, and
report.html rendered by headless Chromium.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from foreshard import traces
from foreshard.localcluster import replayreport, replayrun
from foreshard.localcluster.cluster import LocalCluster
from foreshard.localcluster.devenv import DevEnv

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def replayed(
    local_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    workdir = tmp_path_factory.mktemp("replay")
    taxi = traces.prepare_queues(traces.BUNDLED, workdir / "traces")["nyc_taxi"]
    env = DevEnv(workdir, "e2e", operator_env=replayrun.OPERATOR_ENV, cluster=local_cluster)
    settings = replayrun.Settings(traces=taxi, hours=5.0, speed=144.0, start_hour=4.0, namespace="e2e")
    lines: list[str] = []
    try:
        env.up(lines.append)
        outcome = replayrun.run(env, settings, progress=lines.append)
        written = replayreport.write(outcome, workdir / "report")
        yield {"outcome": outcome, "written": written, "workdir": workdir}
    finally:
        local_cluster.kubectl(
            "delete", "shardallocation", settings.queue, "-n", "e2e", "--wait=false", check=False
        )
        env.down()


def test_the_replay_scales_out_ahead_of_a_ramp_moves_slots_and_loses_nothing(
    replayed: dict[str, Any],
) -> None:
    outcome = replayed["outcome"]
    summary = outcome.summary()
    print("e2e-replay:", json.dumps(summary))
    assert summary["messages"] > 10_000, summary
    assert summary["ramps_scaled_ahead"] >= 1, summary
    assert summary["moves"] >= 1, summary
    assert outcome.verdict["drained"] and outcome.verdict["failed"] == 0, outcome.verdict
    assert summary["lost"] == summary["duplicated"] == summary["reordered"] == 0, summary
    # the operator forecast from the start (history backfilled) and scaled beyond one shard
    assert any(s.forecast is not None for s in outcome.samples[:10]), outcome.samples[:10]
    assert summary["max_shards"] >= 3, summary


def test_the_report_holds_its_plots_summary_and_timeline(replayed: dict[str, Any]) -> None:
    written = replayed["written"]
    for name in replayreport.PLOTS:
        with Image.open(written[name]) as image:
            assert image.width > 400 and image.height > 200
            assert len(image.convert("L").getcolors(maxcolors=1 << 16) or []) > 10, f"{name}.png is blank"
    summary = json.loads(written["summary"].read_text())
    assert summary["lost"] == 0 and summary["keys"] > 1
    timeline = (written["summary"].parent / "timeline.csv").read_text().splitlines()
    assert len(timeline) > 60 and timeline[0].startswith("t,desired,ready")


def chromium() -> str:
    found = shutil.which("chromium-headless-shell") or shutil.which("chromium")
    assert found, "headless Chromium is missing: `make bootstrap` installs chromium-headless-shell"
    return found


def test_report_html_renders_every_plot_in_headless_chromium(
    replayed: dict[str, Any], tmp_path: Path
) -> None:
    page = replayed["written"]["html"].as_uri()
    common = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run(
        [*common, "--virtual-time-budget=5000", "--dump-dom", page],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert f'data-plots-rendered="{len(replayreport.PLOTS)}"' in dom.stdout, (
        dom.stdout[-2000:] + dom.stderr[-2000:]
    )
    shot = tmp_path / "report.png"
    subprocess.run(
        [*common, f"--screenshot={shot}", "--window-size=1200,2400", page],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    with Image.open(shot) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 50, "the screenshot shows no plots"
