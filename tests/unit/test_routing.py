"""The operator's routing decision: first placement, record before push, re-push, never lose an owner."""

from __future__ import annotations

import pytest

from foreshard.api import routing as status
from foreshard.core import routing
from foreshard.core.routing import Broker, PushFailure
from foreshard_broker.routing import RoutingTable, validate

pytestmark = pytest.mark.unit

SLOTS = 1024


def brokers(epochs: dict[int, int | None], port: int = 7000) -> dict[int, Broker]:
    return {s: Broker(s, f"10.0.0.{s}:{port}", e) for s, e in epochs.items()}


def test_initial_owners_are_contiguous_equal_runs() -> None:
    owners = routing.initial_owners(SLOTS, 3)
    sizes = [owners.count(s) for s in range(3)]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == SLOTS
    assert list(owners) == sorted(owners)  # one run per shard
    assert len(status.ranges(owners)) == 3


def test_nothing_is_recorded_until_every_initial_shard_has_an_endpoint() -> None:
    seen = {0: Broker(0, "a:1", 0), 1: Broker(1, None, None)}
    decision = routing.decide(None, SLOTS, 3, seen)
    assert decision.table is None and not decision.record
    assert decision.waiting == (1, 2)
    assert routing.report(decision, {}).reason == "WaitingForBrokers"


def test_the_first_table_is_recorded_and_not_pushed_in_the_same_pass() -> None:
    decision = routing.decide(None, SLOTS, 3, brokers({0: 0, 1: 0, 2: 0}))
    assert decision.record and decision.push == ()
    assert decision.table is not None and decision.table.epoch == 1
    validate(decision.table, SLOTS)  # what the brokers will check
    assert routing.report(decision, {}).reason == "RoutingRecorded"


def test_the_first_epoch_is_above_any_epoch_a_broker_already_serves() -> None:
    decision = routing.decide(None, SLOTS, 2, brokers({0: 7, 1: 0}))
    assert decision.table is not None and decision.table.epoch == 8


def test_the_recorded_table_is_pushed_to_brokers_behind_it_only() -> None:
    table = routing.decide(None, SLOTS, 3, brokers({0: 0, 1: 0, 2: 0})).table
    assert table is not None
    decision = routing.decide(table, SLOTS, 3, brokers({0: 1, 1: 0, 2: 0}))
    assert not decision.record and decision.push == (1, 2) and decision.table == table
    done = routing.report(decision, {})
    assert (done.status, done.reason) == ("True", "BrokersRouted")


def test_an_unreachable_broker_is_reported_lagging_by_shard() -> None:
    table = routing.decide(None, SLOTS, 3, brokers({0: 0, 1: 0, 2: 0})).table
    decision = routing.decide(table, SLOTS, 3, brokers({0: 1, 1: None, 2: 1}))
    assert decision.unreachable == (1,) and decision.push == ()
    condition = routing.report(decision, {})
    assert condition.reason == "BrokersLagging" and "Shards 1 " in condition.message


def test_a_refused_push_is_reported_with_the_brokers_reason() -> None:
    table = routing.decide(None, SLOTS, 2, brokers({0: 0, 1: 0})).table
    decision = routing.decide(table, SLOTS, 2, brokers({0: 0, 1: 0}))
    failures = {0: PushFailure("UNAUTHENTICATED: bad token", refused=True)}
    condition = routing.report(decision, failures)
    assert condition.reason == "RoutingRefused" and "bad token" in condition.message


def test_a_changed_endpoint_is_recorded_under_a_new_epoch_with_the_same_owners() -> None:
    table = routing.decide(None, SLOTS, 2, brokers({0: 0, 1: 0})).table
    assert table is not None
    moved = routing.decide(table, SLOTS, 2, {**brokers({0: 1}), 1: Broker(1, "10.0.0.9:7000", 0)})
    assert moved.record and moved.table is not None
    assert moved.table.epoch == 2 and moved.table.slot_owners == table.slot_owners
    assert moved.table.endpoints[1] == "10.0.0.9:7000"


def test_a_broker_ahead_of_status_makes_a_newer_epoch_with_the_same_owners() -> None:
    table = routing.decide(None, SLOTS, 2, brokers({0: 0, 1: 0})).table
    assert table is not None
    decision = routing.decide(table, SLOTS, 2, brokers({0: 5, 1: 1}))
    assert decision.record and decision.table is not None and decision.table.epoch == 6
    assert decision.table.slot_owners == table.slot_owners


def test_scale_out_lists_new_shards_owning_nothing() -> None:
    table = routing.decide(None, SLOTS, 2, brokers({0: 0, 1: 0})).table
    assert table is not None
    grown = routing.decide(table, SLOTS, 4, brokers({0: 1, 1: 1, 2: 0, 3: 0}))
    assert grown.record and grown.table is not None
    assert sorted(grown.table.endpoints) == [0, 1, 2, 3]
    assert set(grown.table.slot_owners) == {0, 1}  # no data moves here
    validate(grown.table, SLOTS)


def test_an_owner_keeps_its_endpoint_while_its_pod_is_away() -> None:
    table = routing.decide(None, SLOTS, 2, brokers({0: 0, 1: 0})).table
    assert table is not None
    decision = routing.decide(table, SLOTS, 2, brokers({0: 1}))
    assert not decision.record and decision.waiting == (1,)
    assert decision.table is not None and decision.table.endpoints == table.endpoints


def test_the_floor_is_the_highest_owner_plus_one() -> None:
    table = RoutingTable(3, 8, (0, 0, 1, 1, 2, 2, 2, 2), {"hot": 4}, {})
    assert routing.floor(table) == 5 and routing.floor(None) == 0


def test_status_round_trip_keeps_owners_pins_and_endpoints() -> None:
    table = RoutingTable(4, 8, (0, 0, 1, 1, 1, 0, 2, 2), {"vip": 2}, {0: "a:1", 1: "b:1", 2: "c:1", 3: "d:1"})
    recorded = status.to_status(table)
    assert recorded["slotRanges"][2] == {"start": 5, "end": 5, "shard": 0}
    assert status.from_status(recorded, 8) == table
    assert status.from_status({}, 8) is None and status.from_status({"epoch": 0}, 8) is None


def test_ranges_that_leave_a_slot_unowned_are_refused() -> None:
    with pytest.raises(ValueError, match="slot 3"):
        status.owners([{"start": 0, "end": 2, "shard": 0}], 4)
    with pytest.raises(ValueError, match="outside"):
        status.owners([{"start": 0, "end": 9, "shard": 0}], 4)
