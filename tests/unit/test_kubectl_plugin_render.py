"""`kubectl foreshard` over recorded API bodies: what it prints, what it patches, what it refuses."""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

import pytest

from foreshard.adapters import resources
from foreshard.cli import kubectl

pytestmark = pytest.mark.unit

DATA = Path(__file__).parent / "data" / "kubectl"


def recorded(name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((DATA / name).read_text())
    return body


class RecordedCluster:
    """The plugin's port over recorded bodies; records every annotation patch it is asked for."""

    def __init__(self, *queues: dict[str, Any], forecasts: list[dict[str, Any]] | None = None) -> None:
        self.queues = {(q["metadata"]["namespace"], q["metadata"]["name"]): q for q in queues}
        self.forecasts = forecasts or []
        self.patches: list[tuple[str, str, dict[str, str], str]] = []
        self.change_before_patch: dict[str, Any] | None = None

    def get_queue(self, namespace: str, name: str) -> dict[str, Any]:
        if (namespace, name) not in self.queues:
            raise resources.NotFound(f"ShardAllocation {namespace}/{name} not found")
        return copy.deepcopy(self.queues[(namespace, name)])

    def list_queues(self, namespace: str | None) -> list[dict[str, Any]]:
        return [copy.deepcopy(q) for (ns, _), q in sorted(self.queues.items()) if namespace in (None, ns)]

    def list_forecasts(self, namespace: str) -> list[dict[str, Any]]:
        return [f for f in self.forecasts if f["metadata"]["namespace"] == namespace]

    def annotate_queue(
        self, namespace: str, name: str, annotations: dict[str, str], resource_version: str
    ) -> dict[str, Any]:
        queue = self.queues[(namespace, name)]
        if self.change_before_patch is not None:  # someone else writes between our read and our patch
            queue["status"]["plan"].update(self.change_before_patch)
            queue["metadata"]["resourceVersion"] = str(int(queue["metadata"]["resourceVersion"]) + 1)
            self.change_before_patch = None
        if resource_version != queue["metadata"]["resourceVersion"]:
            raise resources.Conflict("changed")
        self.patches.append((namespace, name, annotations, resource_version))
        queue["metadata"].setdefault("annotations", {}).update(annotations)
        return queue


def run(cluster: RecordedCluster, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    def connect(args: argparse.Namespace) -> tuple[resources.ResourcePort, str]:
        return cluster, args.namespace or "shop"

    code = kubectl.main(list(argv), connect=connect)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def cluster() -> RecordedCluster:
    return RecordedCluster(
        recorded("shardallocation-approve.json"),
        recorded("shardallocation-reactive.json"),
        forecasts=recorded("orderparamforecasts.json")["items"],
    )


def test_status_json_reports_shards_epoch_in_flight_migrations_and_forecast_trust(
    cluster: RecordedCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(cluster, capsys, "status", "orders", "--json")
    assert code == 0
    (queue,) = json.loads(out)["queues"]
    assert queue["shards"] == {"desired": 2, "ready": 2}
    assert queue["epoch"] == 7
    assert [m["id"] for m in queue["migrations"]] == ["m-12"], "Done moves are not in flight"
    assert queue["forecast"]["trusted"] is True and queue["forecast"]["mase"] == 0.62
    assert queue["ready"] == "True"


def test_status_table_lists_every_queue_and_says_why_a_forecast_is_untrusted(
    cluster: RecordedCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(cluster, capsys, "status")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAMESPACE", "QUEUE", "READY", "SHARDS", "EPOCH", "MIGRATIONS", "FORECAST"]
    audit = next(line for line in lines if " audit " in line)
    assert "0/1" in audit and "untrusted (NoPrometheus)" in audit
    orders = next(line for line in lines if " orders " in line)
    assert "2/2" in orders and " 7 " in orders and "trusted, MASE 0.62" in orders


def test_status_of_one_queue_shows_its_migrations_and_conditions(
    cluster: RecordedCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = run(cluster, capsys, "status", "orders")
    assert "Migrations in flight:" in out and "m-12" in out and "0 -> 1" in out and "Fence" in out
    assert "AwaitingApproval" in out


def test_status_of_a_missing_queue_fails_with_its_name(
    cluster: RecordedCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(cluster, capsys, "status", "nope")
    assert code == 1 and "shop/nope not found" in err


def test_plan_shows_target_moves_and_the_evidence_and_how_to_approve(
    cluster: RecordedCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(cluster, capsys, "plan", "orders", "--json")
    shown = json.loads(out)
    assert code == 0
    assert (shown["id"], shown["currentShards"], shown["targetShards"], shown["moveCount"]) == (
        "3f2a9c1e7b44", 2, 4, 2,
    )  # fmt: skip
    assert shown["evidence"]["forecastPeak"] == 3410.5 and "q0.9 peak" in shown["evidence"]["why"]
    assert shown["approved"] is False
    _, text, _ = run(cluster, capsys, "plan", "orders")
    assert "2 -> 4 shards" in text and "kubectl foreshard approve orders --plan 3f2a9c1e7b44" in text
    assert [m["slot"] for m in shown["moves"]] == [3, 9] and shown["evidence"]["expectedPauseMs"] == 38.5
    row = next(line for line in text.splitlines() if line.split()[:3] == ["3", "0", "2"])
    assert row.split()[-1] == "4096", "each move with its wave and size"


def test_a_queue_without_a_plan_says_so(cluster: RecordedCluster, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(cluster, capsys, "plan", "audit")
    assert code == 1 and "audit has no plan yet" in err


def test_approve_annotates_the_version_whose_plan_id_it_checked(
    cluster: RecordedCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(cluster, capsys, "approve", "orders", "--plan", "3f2a9c1e7b44", "--json")
    assert code == 0 and json.loads(out)["approved"] == "3f2a9c1e7b44"
    assert cluster.patches == [("shop", "orders", {"foreshard.io/approve-plan": "3f2a9c1e7b44"}, "4711")]


def test_approve_refuses_a_plan_id_that_is_no_longer_the_plan(
    cluster: RecordedCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(cluster, capsys, "approve", "orders", "--plan", "0123456789ab")
    assert code == 1 and "is now 3f2a9c1e7b44, not 0123456789ab" in err
    assert cluster.patches == []


def test_approve_refuses_when_the_plan_changes_between_reading_and_patching(
    cluster: RecordedCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster.change_before_patch = {"id": "aaaaaaaaaaaa", "targetShards": 6}
    code, _, err = run(cluster, capsys, "approve", "orders", "--plan", "3f2a9c1e7b44")
    assert code == 1 and "is now aaaaaaaaaaaa" in err
    assert cluster.patches == []


def test_approve_retries_when_only_status_changed_in_between(
    cluster: RecordedCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster.change_before_patch = {"expectedUtilisation": 0.72}  # same plan id, newer version
    code, _, _ = run(cluster, capsys, "approve", "orders", "--plan", "3f2a9c1e7b44")
    assert code == 0
    assert [p[3] for p in cluster.patches] == ["4712"]


def test_forecast_prints_the_points_of_every_horizon_of_the_key_for_its_queue(
    cluster: RecordedCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(cluster, capsys, "forecast", "checkout", "--queue", "orders", "--json")
    shown = json.loads(out)
    assert code == 0 and shown["model"] == "ets" and shown["trusted"] is True
    assert [p["horizon"] for p in shown["points"]] == ["short", "short", "short", "long"]
    assert shown["points"][1] == {
        "horizon": "short",
        "time": "2026-12-02T09:25:00Z",
        "mean": 1350.5,
        "p10": 1147.9,
        "p50": 1340.0,
        "p90": 1600.0,
        "p99": 1820.0,
    }
    _, text, _ = run(cluster, capsys, "forecast", "orders-checkout")
    assert text.splitlines()[1].split() == ["HORIZON", "TIME", "MEAN", "P10", "P50", "P90", "P99"]
    assert "1350.5" in text and "long" in text.splitlines()[-1]


def test_forecast_of_a_key_several_queues_track_asks_for_the_queue(
    cluster: RecordedCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(cluster, capsys, "forecast", "checkout")
    assert code == 1 and "several queues (audit, orders): pass --queue" in err


def test_forecast_plot_writes_a_png(
    cluster: RecordedCluster, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    png = tmp_path / "checkout.png"
    code, out, _ = run(cluster, capsys, "forecast", "checkout", "--queue", "orders", "--plot", str(png))
    assert code == 0 and f"Plot: {png}" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_forecast_without_points_cannot_be_plotted(
    cluster: RecordedCluster, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(cluster, capsys, "forecast", "audit-checkout", "--plot", str(tmp_path / "x.png"))
    assert code == 1 and "no forecast points to plot yet" in err


def test_approve_without_the_reviewed_plan_id_is_a_usage_error(
    cluster: RecordedCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        run(cluster, capsys, "approve", "orders")
    assert exited.value.code == 2 and "--plan" in capsys.readouterr().err
    assert cluster.patches == []
