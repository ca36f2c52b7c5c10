"""The timer's migration step over in-memory brokers and status: waves until the placement is met."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import pytest

from foreshard.adapters.kube import StatusConflict
from foreshard.api import conditions
from foreshard.api import routing as routing_status
from foreshard.api.migration import Phase
from foreshard.api.shardallocation import QueueSpec
from foreshard.core import routing
from foreshard.core.migration.actions import Action, Fence, PushRouting, Switch
from foreshard.core.migration.machine import Result
from foreshard.core.migration.rebalance import Loads
from foreshard.reconcile import migrations, shardallocation
from foreshard_broker.routing import RoutingTable

pytestmark = pytest.mark.unit


class Brokers:
    """Brokers that do what they are asked and serve the epoch they were last pushed."""

    def __init__(self, epoch: int, shards: int) -> None:
        self.epoch = dict.fromkeys(range(shards), epoch)
        self.loads = Loads()
        self.results: dict[str, Result] = {}  # the operator process's memory of action results

    async def epochs(self, shards: Iterable[int]) -> dict[int, int | None]:
        return {s: self.epoch.get(s) for s in shards}

    async def perform(self, action: Action) -> Result:
        if isinstance(action, Switch):
            self.epoch[action.source] = self.epoch[action.target] = action.table.epoch
        if isinstance(action, PushRouting):
            for shard in action.shards:
                self.epoch[shard] = action.table.epoch
        return Result(True, pause_ms=2.0 if isinstance(action, Fence) else 0.0)

    async def load(self) -> Loads:
        return self.loads

    @asynccontextmanager
    async def session(self, endpoints: Mapping[int, str]) -> AsyncIterator[Any]:
        yield Session(self)


class Session:
    def __init__(self, brokers: Brokers) -> None:
        self.brokers = brokers

    async def epochs(self, shards: Iterable[int]) -> dict[int, int | None]:
        return await self.brokers.epochs(shards)

    async def perform(self, action: Action) -> Result:
        return await self.brokers.perform(action)

    async def loads(self) -> Loads:
        return await self.brokers.load()


class Kube:
    """Status with a resourceVersion check, as the API server keeps it."""

    def __init__(self, status: dict[str, Any]) -> None:
        self.version, self.status = 1, status

    def write_status(self, namespace: str, name: str, status: dict[str, Any], resource_version: str) -> str:
        if resource_version != str(self.version):
            raise StatusConflict("changed")
        self.status.update(status)
        self.version += 1
        return str(self.version)


def spec(max_concurrent: int = 4, capacity: float | None = None) -> QueueSpec:
    body = {
        "metadata": {"name": "q", "namespace": "ns"},
        "spec": {
            "minShards": 4,
            "maxShards": 4,
            "slots": 16,
            "migration": {"maxConcurrentMoves": max_concurrent},
            **({"capacity": {"messagesPerSecond": capacity}} if capacity else {}),
        },
    }
    return QueueSpec.from_body(body)


def one_pass(queue: QueueSpec, kube: Kube, brokers: Brokers, aimed: int) -> migrations.Migrated:
    table = routing_status.from_status(kube.status["routing"], 16)
    assert table is not None
    body = {"metadata": {"resourceVersion": str(kube.version)}, "status": kube.status}
    inputs = migrations.Inputs(queue, body, table, aimed, settled=True)
    out = migrations.migrate(inputs, kube, brokers, brokers.results, 1.0)  # type: ignore[arg-type]
    if out.condition is not None:  # what kopf's patch would merge after the pass
        kube.status["conditions"] = conditions.merge(kube.status.get("conditions", []), out.condition, "t", 1)
    return out


def start(shards: int, owners: int) -> tuple[Kube, Brokers]:
    table = RoutingTable(
        3, 16, routing.initial_owners(16, owners), {}, {s: f"10.0.0.{s}:7000" for s in range(shards)}
    )
    return Kube({"routing": routing_status.to_status(table)}), Brokers(3, shards)


def test_scale_out_runs_wave_after_wave_staying_moving_between_them_until_idle() -> None:
    kube, brokers = start(shards=4, owners=2)
    reasons, events = [], []
    for _ in range(30):
        out = one_pass(spec(max_concurrent=3), kube, brokers, aimed=4)
        reasons.append(out.condition.reason if out.condition else None)
        events += [e.reason for e in out.events]
        if reasons[-1] == "Idle":
            break
    table = routing_status.from_status(kube.status["routing"], 16)
    assert table is not None and sorted(table.slot_owners.count(s) for s in range(4)) == [4, 4, 4, 4]
    done = [m for m in kube.status["migrations"] if m["phase"] == str(Phase.DONE)]
    assert len(done) == 8 and events.count("MoveStarted") == 8 and events.count("MoveDone") == 8
    assert reasons[-1] == "Idle" and set(reasons[:-1]) == {"Moving"}, reasons
    # three waves (3 + 3 + 2 moves), two passes each: admit and copy ahead; fence through Done
    assert len(reasons) == 3 * 2 + 1, reasons
    assert set(brokers.epoch.values()) == {table.epoch} == {3 + 8}, "one epoch per switch, served by all"


def test_scale_in_moves_everything_off_the_highest_ordinals() -> None:
    kube, brokers = start(shards=4, owners=4)
    for _ in range(30):
        out = one_pass(spec(), kube, brokers, aimed=2)
        if out.condition is not None and out.condition.reason == "Idle":
            break
    table = routing_status.from_status(kube.status["routing"], 16)
    assert table is not None and set(table.slot_owners) == {0, 1}
    assert {m["source"] for m in kube.status["migrations"]} == {2, 3}


def test_an_impossible_plan_is_a_condition_and_not_a_single_move() -> None:
    kube, brokers = start(shards=4, owners=2)
    brokers.loads = Loads({s: 100.0 for s in range(16)})  # 1600 msg/s over 4 shards of 50
    out = one_pass(spec(capacity=50.0), kube, brokers, aimed=4)
    assert out.condition is not None and out.condition.reason == "PlanImpossible"
    assert "raise maxShards" in out.condition.message and not kube.status.get("migrations")


def test_a_plan_held_back_lists_its_moves_with_sizes_and_pause_and_moves_nothing() -> None:
    kube, brokers = start(shards=2, owners=2)  # DryRun or awaiting approval: replicas stay at 2
    brokers.loads = Loads({s: 10.0 for s in range(16)}, {s: 1000.0 * (s + 1) for s in range(16)})
    table = routing_status.from_status(kube.status["routing"], 16)
    assert table is not None
    body = {"metadata": {"resourceVersion": str(kube.version)}, "status": kube.status}
    inputs = migrations.Inputs(spec(max_concurrent=3), body, table, aimed=2, settled=True, planned=4)
    out = migrations.migrate(inputs, kube, brokers, brokers.results, 1.0)  # type: ignore[arg-type]
    assert not kube.status.get("migrations"), "held back: nothing moves"
    preview = out.preview
    assert preview is not None and preview["moves"] == 8 and len(preview["moveList"]) == 8
    assert {m["target"] for m in preview["moveList"]} == {2, 3} and preview["waves"] == 3
    assert preview["movedBytes"] == sum(m["bytes"] for m in preview["moveList"]) > 0
    assert preview["expectedPauseMs"] == 500.0, "no move measured yet: the pause budget"
    assert "shards 2, 3 own nothing yet" in preview["movesWhy"]


def test_an_impossible_plan_lists_no_moves_and_says_why() -> None:
    kube, brokers = start(shards=4, owners=2)
    brokers.loads = Loads({s: 100.0 for s in range(16)})
    table = routing_status.from_status(kube.status["routing"], 16)
    assert table is not None
    body = {"metadata": {"resourceVersion": str(kube.version)}, "status": kube.status}
    inputs = migrations.Inputs(spec(capacity=50.0), body, table, aimed=4, settled=True, planned=4)
    out = migrations.migrate(inputs, kube, brokers, brokers.results, 1.0)  # type: ignore[arg-type]
    assert out.preview is not None and out.preview["moves"] == 0 and out.preview["moveList"] == []
    assert out.preview["movesWhy"].startswith("impossible: ") and "raise maxShards" in out.preview["movesWhy"]


def approve_spec(plan_id: str) -> QueueSpec:
    body = {
        "metadata": {"name": "q", "namespace": "ns", "annotations": {"foreshard.io/approve-plan": plan_id}},
        "spec": {"minShards": 4, "maxShards": 4, "slots": 16, "scaling": {"mode": "Approve"}},
    }
    return QueueSpec.from_body(body)


def test_an_approved_plan_carries_out_exactly_its_listed_moves_and_no_other() -> None:
    kube, brokers = start(shards=4, owners=2)
    listed = [
        {"slot": 0, "source": 0, "target": 2, "wave": 0},
        {"slot": 15, "source": 1, "target": 3, "wave": 0},
    ]
    kube.status["plan"] = {"id": "now", "approved": {"id": "p-1", "moves": 2, "moveList": listed}}
    reasons = []
    for _ in range(10):
        out = one_pass(approve_spec("p-1"), kube, brokers, aimed=4)
        reasons.append(out.condition.reason if out.condition else None)
        if reasons[-1] == "Idle":
            break
    # the placement would have moved 8 slots; the approved list names 2, and only they move
    assert sorted((m["slot"], m["target"]) for m in kube.status["migrations"]) == [(0, 2), (15, 3)]
    assert all(m["phase"] == str(Phase.DONE) for m in kube.status["migrations"])
    assert reasons[-1] == "Idle", reasons


def test_an_approved_list_overtaken_by_the_table_moves_nothing_else_and_says_a_new_plan_is_needed() -> None:
    kube, brokers = start(shards=4, owners=2)
    listed = [{"slot": 0, "source": 0, "target": 2, "wave": 0}]
    kube.status["plan"] = {"id": "now", "approved": {"id": "p-1", "moves": 1, "moveList": listed}}
    for _ in range(6):
        out = one_pass(approve_spec("p-1"), kube, brokers, aimed=4)
    assert [m["slot"] for m in kube.status["migrations"]] == [0]
    assert out.condition is not None and out.condition.reason == "PlanImpossible"
    assert "approved plan p-1 is carried out, yet shards 3 own nothing yet" in out.condition.message


def test_a_plan_awaiting_approval_keeps_the_list_it_showed_and_approval_takes_that_list() -> None:
    shown = {"id": "p-1", "targetShards": 4, "moves": 1, "moveList": [{"slot": 3, "source": 0, "target": 2}]}
    fresh = {"moves": 1, "moveList": [{"slot": 7, "source": 0, "target": 3}]}
    plan = {"id": "p-1", "targetShards": 4}
    waiting = shardallocation.with_moves(plan, fresh, shown, approve_spec("other"), awaiting=True)
    assert waiting is not None and waiting["moveList"] == shown["moveList"] and "approved" not in waiting
    applied = shardallocation.with_moves(plan, fresh, shown, approve_spec("p-1"))
    assert applied is not None and applied["moveList"] == fresh["moveList"], "no longer held: fresh"
    assert applied["approved"] == {"id": "p-1", "moves": 1, "moveList": shown["moveList"]}
    later = shardallocation.with_moves({"id": "p-2"}, None, applied, approve_spec("p-1"))
    assert later is not None and later["approved"]["id"] == "p-1", "carried while the annotation names it"
