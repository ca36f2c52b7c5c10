"""When a pass plans moves, and the recorder that writes them before anything acts."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from foreshard.adapters.kube import KEPT_FINISHED, MAX_MIGRATIONS, StatusConflict, StatusRecorder, kept
from foreshard.api.migration import Item, Migration, Phase
from foreshard.core import routing
from foreshard.core.migration import rebalance, schedule
from foreshard.core.migration.rebalance import Loads
from foreshard.reconcile import migrations
from foreshard_broker.routing import RoutingTable

pytestmark = pytest.mark.unit
NOW = 1_800_000_000.0


def table(owners: tuple[int, ...], shards: int) -> RoutingTable:
    return RoutingTable(3, len(owners), owners, {}, {s: f"10.0.0.{s}:7000" for s in range(shards)})


def test_scale_out_and_scale_in_trigger_a_plan_and_a_settled_table_does_not() -> None:
    two = table(routing.initial_owners(16, 2), 4)
    assert rebalance.trigger(two, 4) == "shards 2, 3 own nothing yet"
    assert rebalance.trigger(two, 2) is None
    four = table(routing.initial_owners(16, 4), 4)
    assert rebalance.trigger(four, 2) == "shards 2, 3 are to be removed and still own slots"


def test_scale_out_moves_the_surplus_of_each_old_shard_and_nothing_else() -> None:
    two = table(routing.initial_owners(16, 2), 4)
    placement = rebalance.propose(two, 4, Loads(), None, [], NOW)
    assert len(placement.moves) == 8 and {m.source for m in placement.moves} == {0, 1}
    assert sorted(placement.shard_load.tolist()) == [4.0, 4.0, 4.0, 4.0], "uniform without load"


def test_scale_in_empties_the_highest_ordinals_even_of_items_moved_recently() -> None:
    four = table(routing.initial_owners(16, 4), 4)
    recent = [
        Migration("m", Item(slot=8), 0, 2, Phase.DONE, phase_since_s=NOW - 5),
        Migration("n", Item(slot=0), 1, 0, Phase.DONE, phase_since_s=NOW - 5),
    ]
    placement = rebalance.propose(four, 2, Loads(), None, recent, NOW)
    assert {m.source for m in placement.moves} == {2, 3} and len(placement.moves) == 8
    assert "slot/8" in {m.item for m in placement.moves}, "its shard goes: it moves again"


def test_a_recent_move_is_not_undone_by_the_next_wave() -> None:
    owners = list(routing.initial_owners(16, 2))
    owners[0] = owners[1] = 2  # both moved to shard 2 a moment ago; then they turned hot
    three = table(tuple(owners), 3)
    recent = [Migration("m", Item(slot=1), 0, 2, Phase.DONE, phase_since_s=NOW - 5)]
    hot = Loads({0: 30.0, 1: 30.0, **{s: 1.0 for s in range(2, 16)}})
    undoing = rebalance.propose(three, 3, hot, None, [], NOW)
    kept_moves = rebalance.propose(three, 3, hot, None, recent, NOW)
    assert [m.item for m in undoing.moves] == ["slot/1"]
    assert not kept_moves.moves, "slot/1 stays where it went until it settled"
    later = rebalance.propose(three, 3, hot, None, recent, NOW + rebalance.SETTLE_S)
    assert [m.item for m in later.moves] == ["slot/1"]


def test_a_load_over_every_shard_is_impossible_and_plans_no_move() -> None:
    two = table(routing.initial_owners(16, 2), 4)
    placement = rebalance.propose(two, 4, Loads({s: 100.0 for s in range(16)}), 50.0, [], NOW)
    assert "raise maxShards" in (schedule.impossible(placement) or "")
    assert schedule.plan(placement, {}, schedule.MigrationLimits()) is None


class Versioned:
    """An API server's resourceVersion check for status writes."""

    def __init__(self) -> None:
        self.version = 7
        self.status: dict[str, Any] = {}

    def write_status(self, namespace: str, name: str, status: dict[str, Any], resource_version: str) -> str:
        if resource_version != str(self.version):
            raise StatusConflict(f"at {self.version}, not {resource_version}")
        self.status.update(status)
        self.version += 1
        return str(self.version)


def test_the_recorder_chains_its_versions_and_stops_at_a_foreign_write() -> None:
    kube = Versioned()
    m = Migration("m-1", Item(slot=3), 0, 2, phase_since_s=NOW, started_at_s=NOW)
    recorder = StatusRecorder(kube, "ns", "q", "7", [])  # type: ignore[arg-type]
    asyncio.run(recorder.admit([m]))
    switched = table(routing.initial_owners(16, 2), 4)
    asyncio.run(recorder.record(m.entering(Phase.SWITCH, NOW + 1, epoch=4), switched))
    assert kube.status["migrations"][0]["phase"] == "Switch" and kube.status["routing"]["epoch"] == 3
    kube.version += 1  # someone else wrote
    with pytest.raises(StatusConflict):
        asyncio.run(recorder.record(m.entering(Phase.RESUME, NOW + 2), None))
    assert kube.status["migrations"][0]["phase"] == "Switch", "the conflicting write changed nothing"
    assert recorder.migrations["m-1"].phase is Phase.SWITCH, "the recorder remembers only what was written"


def test_finished_moves_make_room_oldest_first_and_moves_in_flight_always_stay() -> None:
    done = [
        Migration(f"d{n}", Item(slot=n), 0, 1, Phase.DONE, phase_since_s=NOW + n)
        for n in range(MAX_MIGRATIONS)
    ]
    active = Migration("a", Item(slot=999), 0, 1, Phase.PREPARE, phase_since_s=NOW)
    left = kept([*done, active])
    assert len(left) == KEPT_FINISHED + 1 and active in left
    assert left[:-1] == done[-KEPT_FINISHED:], "the newest finished moves stay, in their order"


def test_moves_in_flight_fill_the_list_before_any_finished_move() -> None:
    done = [Migration(f"d{n}", Item(slot=n), 0, 1, Phase.DONE, phase_since_s=NOW + n) for n in range(8)]
    active = [
        Migration(f"a{n}", Item(slot=100 + n), 0, 1, Phase.PREPARE, phase_since_s=NOW)
        for n in range(MAX_MIGRATIONS - 4)
    ]
    left = kept([*done, *active])
    assert len(left) == MAX_MIGRATIONS and set(active) <= set(left)
    assert [m for m in left if m.terminal] == done[-4:]


def test_a_recent_item_still_moves_on_to_a_shard_that_owns_nothing_yet() -> None:
    # Scale-out 3 -> 4, one move a wave on measured load: shard 3 is still empty, but the only
    # surplus is on shard 2, which just received slots 0 and 1. Holding them back would leave
    # shard 3 empty for SETTLE_S (seen in the fault bench: Migrating Idle with a shard owning nothing).
    owners = [0] * 8 + [1] * 8
    owners[0] = owners[1] = 2
    four = table(tuple(owners), 4)
    recent = [Migration(f"m{s}", Item(slot=s), 0, 2, Phase.DONE, phase_since_s=NOW - 5) for s in (0, 1)]
    hot = Loads({0: 30.0, 1: 30.0, **{s: 1.0 for s in range(2, 16)}})
    placement = rebalance.propose(four, 4, hot, None, recent, NOW)
    assert any(m.target == 3 and m.item in ("slot/0", "slot/1") for m in placement.moves), placement.moves
    assert rebalance.trigger(four, 4) is not None


def test_moves_that_left_status_still_hold_planning_back_for_settle_s() -> None:
    # A wave of 20 moves: status keeps the 16 newest finished, the process remembers all 20, so
    # the first four are not planned straight back (the churn seen at the end of a taxi replay).
    wave = [Migration(f"w{n}", Item(slot=n), 0, 1, Phase.DONE, phase_since_s=NOW - 60 + n) for n in range(20)]
    finished: dict[str, Migration] = {}
    held = migrations.remembered(wave, finished, NOW)
    assert len(held) == 20
    in_status = kept(wave)
    assert len(in_status) == KEPT_FINISHED
    held = migrations.remembered(in_status, finished, NOW + 1)
    assert {m.id for m in held} == {m.id for m in wave}, "the process remembers what status let go"
    moving = Migration("live", Item(slot=30), 0, 1, Phase.FENCE, phase_since_s=NOW)
    again = migrations.remembered([*in_status, moving], finished, NOW + 2)
    assert sum(m.id == "live" for m in again) == 1 and len(again) == 21
    later = migrations.remembered(in_status, finished, NOW + rebalance.SETTLE_S + 1)
    assert {m.id for m in later} == {m.id for m in in_status}, "older than SETTLE_S: forgotten"
    assert all(m.id not in finished for m in wave[:4])
