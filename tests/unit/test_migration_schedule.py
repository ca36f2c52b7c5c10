"""Typed status.migrations items, and turning a placement into admitted migrations."""

from __future__ import annotations

import numpy as np
import pytest

from foreshard.api.migration import Item, Migration, Phase
from foreshard.core.migration.schedule import (
    MigrationLimits,
    admit,
    copy_bytes_per_pass,
    impossible,
    migration_id,
    plan,
)
from foreshard.core.planning.placement import Move, Placement

pytestmark = pytest.mark.unit
NOW = 1_800_000_000.0


def placement(moves: list[Move], unsplittable: tuple[str, ...] = (), within: bool = True) -> Placement:
    return Placement(np.zeros(8, dtype=np.int64), {}, np.zeros(3), tuple(moves), unsplittable, within)


MOVES = [Move(f"slot/{n}", n % 3, 2, float(n)) for n in range(6)] + [Move("key/vip", 0, 1, 9.0)]


def test_a_migration_round_trips_through_its_status_item() -> None:
    m = Migration(
        "m-1", Item(key="vip"), 0, 2, Phase.SWITCH, 7, 1234, 2, NOW, NOW - 5, 12.5, "fenced", 1, 4096, 3.5
    )
    body = m.to_status()
    assert body["key"] == "vip" and "slot" not in body and body["phaseSince"].endswith("Z")
    assert (body["copiedBytes"], body["copyMs"]) == (4096, 3.5)
    assert Migration.from_status(body) == m


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"slot": 1, "key": "k"}, "exactly one slot or one pinned key"),
        ({}, "exactly one slot or one pinned key"),
        ({"slot": -1}, "negative"),
        ({"key": ""}, "must not be empty"),
    ],
    ids=["both a slot and a key", "neither", "a negative slot", "an empty key"],
)
def test_a_status_item_that_names_no_single_item_is_refused_with_a_sentence(
    body: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Migration.from_status({"id": "m", "source": 0, "target": 1, "phase": "Prepare", **body})


def test_an_impossible_plan_gives_a_message_and_no_move_at_all() -> None:
    too_hot = placement(MOVES, unsplittable=("vip",))
    assert "vip alone exceed one shard's capacity" in (impossible(too_hot) or "")
    assert plan(too_hot, {}, MigrationLimits()) is None
    over = placement(MOVES, within=False)
    assert "raise maxShards" in (impossible(over) or "") and plan(over, {}, MigrationLimits()) is None


def test_admission_respects_max_concurrent_moves_and_the_moves_in_flight() -> None:
    limits = MigrationLimits(max_concurrent=3)
    schedule = plan(placement(MOVES), {}, limits)
    assert schedule is not None
    running = Migration("other", Item(slot=2), 2, 0, Phase.FENCE)
    first = admit(schedule, [running], limits, "plan-a", NOW, NOW)
    assert len(first) == 2, "three at once, one already running"
    assert "slot/2" not in {str(m.item) for m in first}, "an item already moving is not admitted twice"
    assert all(m.phase is Phase.PREPARE and m.phase_since_s == NOW for m in first)
    again = admit(schedule, [running, *first], limits, "plan-a", NOW, NOW + 1)
    assert again == [], "no free slot"


def test_the_same_plan_admitted_again_names_the_same_migrations() -> None:
    limits = MigrationLimits(max_concurrent=2)
    schedule = plan(placement(MOVES), {}, limits)
    assert schedule is not None
    ids = [m.id for m in admit(schedule, [], limits, "plan-a", NOW, NOW)]
    assert ids == [m.id for m in admit(schedule, [], limits, "plan-a", NOW, NOW + 60)]
    assert ids[0] == migration_id("plan-a", schedule.moves[0].move)
    done = [Migration(i, Item(slot=99), 0, 1, Phase.DONE) for i in ids]
    assert not {m.id for m in admit(schedule, done, limits, "plan-a", NOW, NOW)} & set(ids), "done stays done"


def test_moves_wait_for_the_predicted_trough_when_peaks_are_avoided() -> None:
    limits = MigrationLimits(max_concurrent=4, avoid_peaks=True)
    schedule = plan(placement(MOVES), {}, limits, deadline_s=3600, trough_s=600)
    assert schedule is not None and schedule.moves[0].start_s == 600
    assert admit(schedule, [], limits, "p", NOW, NOW + 599) == []
    assert len(admit(schedule, [], limits, "p", NOW, NOW + 600)) == 4
    eager = plan(placement(MOVES), {}, MigrationLimits(max_concurrent=4), deadline_s=3600, trough_s=600)
    assert eager is not None and eager.moves[0].start_s == 0


def test_scale_in_moves_off_the_highest_ordinals_first() -> None:
    schedule = plan(placement(MOVES), {}, MigrationLimits(max_concurrent=1))
    assert schedule is not None
    assert [s.move.source for s in schedule.moves][:2] == [2, 2]


def test_the_copy_throttle_is_shared_by_the_concurrent_moves() -> None:
    assert copy_bytes_per_pass(MigrationLimits(max_concurrent=4, bytes_per_s=40e6), 2.0) == 20_000_000
